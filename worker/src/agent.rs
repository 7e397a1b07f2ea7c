//! The agent: the worker's side of the `Dispatcher` protocol.
//!
//! It registers, keeps one `Session` stream open, sends heartbeats at the
//! period the manager chose, forwards the manager's assignments to the
//! [`Executor`] and sends the executor's reports back in batches. When the
//! stream breaks it reconnects with exponential backoff (capped at the
//! heartbeat period, so it is back before the manager gives up on it),
//! registering again under the node id it keeps in its data directory. It decides nothing about
//! tasks itself. With `Config::metrics_listen` it also serves the worker's
//! metrics ([`Telemetry`]) for as long as it runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use orch::v1::dispatcher_client::DispatcherClient;
use orch::v1::{
    Heartbeat, NodeMetrics, RegisterRequest, RegisterResponse, Resources, SessionOpen, StatusBatch,
    TaskStatus, WorkerMessage, manager_message, worker_message,
};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use uuid::Uuid;

use crate::executor::{Command, Executor, FullSet};
use crate::identity::{self, Identity};
use crate::logs::LogStreams;
use crate::metrics::Meter;
use crate::runtime::Runtime;
use crate::telemetry::Telemetry;

/// Most reports in one batch.
const MAX_BATCH: usize = 1_000;
/// The file in the data directory that keeps the node id.
pub const NODE_ID_FILE: &str = "node-id";
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The manager's URL, for example `https://127.0.0.1:7070`, or several
    /// managers' URLs separated by commas (managers on etcd): the worker
    /// finds the one that leads.
    pub manager: String,
    /// The node's name; by default the host name.
    pub name: String,
    /// An address people can reach this host at (informational).
    pub address: String,
    /// Labels for node selectors.
    pub labels: HashMap<String, String>,
    /// Overrides of the machine's capacity.
    pub milli_cpus: Option<i64>,
    /// Overrides of the machine's memory.
    pub memory_bytes: Option<i64>,
    /// Overrides of the machine's disk.
    pub disk_bytes: Option<i64>,
    /// Where the node id and certificate are kept; `None` makes a new node
    /// on every start.
    pub data_dir: Option<PathBuf>,
    /// The join token, for a worker that has no node certificate yet.
    pub join_token: Option<String>,
    /// Speak plaintext to a manager started with `--insecure`: no TLS, no
    /// node certificate.
    pub insecure: bool,
    /// How long the containers (and so the output) of ended attempts are kept.
    pub retention: crate::retention::Retention,
    /// Where to serve the worker's Prometheus metrics (`GET /metrics`, plain
    /// HTTP, its own port); `None` serves none.
    pub metrics_listen: Option<SocketAddr>,
}

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manager URL is not a URL.
    #[error("invalid manager URL {url:?}: {reason}")]
    ManagerUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The data directory cannot be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The manager refused the registration for good.
    #[error("the manager refused the registration: {0}")]
    Refused(String),
    /// The worker cannot prove who it is: no certificate and no token, or
    /// a certificate that expired while the worker was off.
    #[error("{0}")]
    NotJoined(String),
    /// Joining the cluster, or renewing the node certificate, failed.
    #[error("{0}")]
    Join(String),
    /// The manager could not be reached (yet).
    #[error("{0}")]
    Unreachable(String),
    /// The metrics port could not be bound.
    #[error(transparent)]
    Metrics(#[from] orch_metrics::BindError),
}

/// Where heartbeat metrics come from.
enum Metrics {
    /// This host, measured.
    Host(Box<Meter>),
    /// A simulated machine of this capacity: idle, and never measured.
    Simulated(Resources),
}

impl Metrics {
    fn capacity(&self) -> Resources {
        match self {
            Metrics::Host(m) => m.capacity(),
            Metrics::Simulated(c) => *c,
        }
    }

    fn sample(&mut self) -> NodeMetrics {
        match self {
            Metrics::Host(m) => m.sample(),
            Metrics::Simulated(c) => NodeMetrics {
                memory_total_bytes: c.memory_bytes,
                disk_free_bytes: c.disk_bytes,
                ..NodeMetrics::default()
            },
        }
    }
}

/// Exponential backoff with jitter, owned clock (tokio time).
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: BACKOFF_START,
            max: BACKOFF_MAX,
        }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }

    /// Caps the wait at `max` (at least the first wait, at most [`BACKOFF_MAX`]).
    fn limit(&mut self, max: Duration) {
        self.max = max.clamp(BACKOFF_START, BACKOFF_MAX);
        self.next = self.next.min(self.max);
    }

    /// The next wait before jitter; doubles the one after, up to the cap.
    fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    async fn wait(&mut self) {
        let jitter = rand::rng().random_range(0.5..1.0);
        tokio::time::sleep(self.step().mul_f64(jitter)).await;
    }
}

fn load_node_id(config: &Config) -> Result<Option<Uuid>, Error> {
    let Some(dir) = &config.data_dir else {
        return Ok(None);
    };
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Uuid::parse_str(text.trim()).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::DataDir {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn save_node_id(config: &Config, id: Uuid) -> Result<(), Error> {
    let Some(dir) = &config.data_dir else {
        return Ok(());
    };
    let err = |source| Error::DataDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::write(dir.join(NODE_ID_FILE), format!("{id}\n")).map_err(err)
}

/// Runs the worker until `shutdown` resolves. Containers keep running when
/// the worker stops; the next start adopts them.
///
/// # Errors
/// If the configuration is unusable or the manager refuses the registration
/// (bad capacity, for example). A manager that is away is waited for.
pub async fn run<R: Runtime>(
    config: Config,
    runtime: Arc<R>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    run_measured(config, runtime, Telemetry::new(), shutdown).await
}

/// As [`run`], counting into `telemetry` (which a caller may serve itself,
/// as `orchctl dev` does with the manager's metrics).
///
/// # Errors
/// As [`run`], and if `Config::metrics_listen` cannot be bound.
pub async fn run_measured<R: Runtime>(
    config: Config,
    runtime: Arc<R>,
    telemetry: Telemetry,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    // Served until this function returns, whichever way: dropping the
    // sender stops the endpoint.
    let (_serving, stop_metrics) = tokio::sync::oneshot::channel::<()>();
    if let Some(addr) = config.metrics_listen {
        let endpoint = orch_metrics::Endpoint::bind(addr).await?;
        tokio::spawn(endpoint.serve(vec![telemetry.registry()], async {
            let _ = stop_metrics.await;
        }));
    }
    let mut identity = identify(&config).await?;
    // A simulated machine is not measured: with thousands of simulated
    // workers in one process, each refreshing sysinfo on every heartbeat
    // would cost more than the control plane being measured.
    let simulated = runtime.simulated_capacity();
    let mut meter = match simulated {
        Some(capacity) => Metrics::Simulated(capacity),
        None => Metrics::Host(Box::default()),
    };
    let machine = meter.capacity();
    let capacity = Resources {
        milli_cpus: config.milli_cpus.unwrap_or(machine.milli_cpus),
        memory_bytes: config.memory_bytes.unwrap_or(machine.memory_bytes),
        disk_bytes: config.disk_bytes.unwrap_or(machine.disk_bytes),
    };
    telemetry.capacity(&capacity);
    let mut node_id = match &identity {
        Some(identity) => Some(identity.node_id),
        None => load_node_id(&config)?,
    };
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let mut executor: Option<(String, Executor)> = None;
    let mut backoff = Backoff::new();
    let mut sessions = 0u64;
    let mut managers = Managers::new(&config.manager);
    tokio::pin!(shutdown);
    loop {
        let url = managers.current().to_owned();
        let attempt = async {
            let endpoint = manager_endpoint(&url, identity.as_ref())?;
            let channel = endpoint.connect().await.map_err(|e| {
                tonic::Status::unavailable(format!("cannot reach the manager: {e}"))
            })?;
            let mut client = DispatcherClient::new(channel);
            let reply = client
                .register(RegisterRequest {
                    node_id: node_id.map(|id| id.to_string()).unwrap_or_default(),
                    name: config.name.clone(),
                    address: config.address.clone(),
                    labels: config.labels.clone(),
                    capacity: Some(capacity),
                })
                .await?
                .into_inner();
            // Log output goes up on a connection of its own (see `logs`).
            let logs = endpoint.connect_lazy();
            Ok::<_, tonic::Status>((client, reply, logs))
        };
        let registered = tokio::select! {
            r = attempt => r,
            () = &mut shutdown => return Ok(()),
        };
        let (client, reply, logs_channel) = match registered {
            Ok(ok) => ok,
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                ) =>
            {
                return Err(Error::Refused(status.message().to_string()));
            }
            Err(status) => {
                tracing::warn!(manager = %url, error = %status.message(), "registration failed; retrying");
                if managers.after_failure(Some(&status)) {
                    continue;
                }
                tokio::select! {
                    () = backoff.wait() => continue,
                    () = &mut shutdown => return Ok(()),
                }
            }
        };
        let id = Uuid::parse_str(&reply.node_id).map_err(|_| {
            Error::Refused(format!(
                "the manager sent a bad node id {:?}",
                reply.node_id
            ))
        })?;
        managers.reached();
        if node_id != Some(id) {
            save_node_id(&config, id)?;
            node_id = Some(id);
        }
        // Once the session breaks, the manager declares this node down (and
        // moves its tasks) after a few heartbeat periods without news; after
        // its own restart, it counts them from when it came back. So never
        // wait longer than one period between attempts to come back: a
        // longer backoff would turn a manager restart into every task of
        // this node being rescheduled, and its running containers stopped.
        backoff.limit(heartbeat_period(&reply));
        let exec = match &executor {
            Some((cluster, exec)) if *cluster == reply.cluster_id => exec.clone(),
            _ => {
                let exec = Executor::start_measured(
                    runtime.clone(),
                    reply.cluster_id.clone(),
                    id,
                    reports_tx.clone(),
                    config.retention,
                    telemetry.clone(),
                );
                executor = Some((reply.cluster_id.clone(), exec.clone()));
                exec
            }
        };
        tracing::info!(node = %id, cluster = %reply.cluster_id, "registered");
        let logs = LogStreams::new(runtime.clone(), logs_channel, config.name.clone());
        sessions += 1;
        if sessions > 1 {
            telemetry.reconnects.inc();
        }
        telemetry.connected.set(1);
        let ended = tokio::select! {
            r = session(client, &reply, id, &exec, logs, &mut reports, &mut meter, &telemetry, &mut backoff, &mut identity, config.data_dir.as_deref()) => r,
            () = &mut shutdown => return Ok(()),
        };
        telemetry.connected.set(0);
        tracing::warn!(reason = %ended, "session ended; reconnecting");
        if managers.after_failure(None) {
            continue;
        }
        tokio::select! {
            () = backoff.wait() => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}

/// The managers a worker may open its session with, and which to try next.
struct Managers {
    urls: Vec<String>,
    /// The one to try next: one of `urls`, or where the last refusal said
    /// the leader is.
    next: String,
    /// The manager that last failed without naming a leader (unreachable,
    /// or its session ended): a follower that still names it as leader has
    /// not yet seen the new one.
    failed: Option<String>,
    /// Hops to a named leader since the last wait.
    hops: usize,
}

impl Managers {
    fn new(list: &str) -> Self {
        let urls = manager_urls(list);
        let next = urls.first().cloned().unwrap_or_default();
        Self {
            urls,
            next,
            failed: None,
            hops: 0,
        }
    }

    fn current(&self) -> &str {
        &self.next
    }

    /// The current manager took the registration.
    fn reached(&mut self) {
        self.failed = None;
        self.hops = 0;
    }

    /// After a failed registration or an ended session, picks the manager
    /// to try next: the leader that a follower's refusal named, unless it
    /// is the one that just failed; else the next in the list. Returns true
    /// if that is worth trying at once, without a backoff: a follower
    /// answered and named another manager (at most once per manager in a
    /// row, so that two with stale views cannot send a worker round in
    /// circles).
    fn after_failure(&mut self, status: Option<&tonic::Status>) -> bool {
        let named = status
            .and_then(|s| s.metadata().get(orch::api::LEADER_METADATA))
            .and_then(|v| v.to_str().ok())
            .filter(|url| url.starts_with("https://") || url.starts_with("http://"));
        let stale = named.is_some_and(|url| self.failed.as_deref() == Some(url));
        match named.filter(|_| !stale) {
            Some(leader) if leader != self.next => {
                tracing::info!(leader, "the manager named the leader; going there");
                leader.clone_into(&mut self.next);
                self.hops += 1;
                if self.hops <= self.urls.len() {
                    return true;
                }
            }
            Some(_) => {}
            None => {
                if named.is_none() {
                    self.failed = Some(self.next.clone());
                }
                if self.urls.len() > 1 {
                    let at = self.urls.iter().position(|u| *u == self.next);
                    let i = at.map_or(0, |i| (i + 1) % self.urls.len());
                    self.next.clone_from(&self.urls[i]);
                }
            }
        }
        self.hops = 0;
        false
    }
}

/// The URLs of `list`, separated by commas.
pub fn manager_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Where the manager is, with the node's TLS identity if it has one.
fn manager_endpoint(
    url: &str,
    identity: Option<&Identity>,
) -> Result<tonic::transport::Endpoint, tonic::Status> {
    let mut endpoint =
        identity::endpoint(url).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    if let Some(identity) = identity {
        endpoint = endpoint
            .tls_config(identity.tls())
            .map_err(|e| tonic::Status::invalid_argument(format!("TLS settings: {e}")))?;
    }
    Ok(endpoint)
}

/// The heartbeat period the manager asked for (1 s if it named none).
fn heartbeat_period(reply: &RegisterResponse) -> Duration {
    reply
        .heartbeat_period
        .as_ref()
        .and_then(orch::time::std_duration)
        .filter(|p| !p.is_zero())
        .unwrap_or(Duration::from_secs(1))
}

/// The node's certificate: the one kept in the data directory, or a new one
/// from joining with the token; `None` for an `--insecure` worker.
async fn identify(config: &Config) -> Result<Option<Identity>, Error> {
    let urls = manager_urls(&config.manager);
    if urls.is_empty() {
        return Err(Error::ManagerUrl {
            url: config.manager.clone(),
            reason: "no manager URL: give --manager https://HOST:PORT[,https://HOST:PORT...]"
                .into(),
        });
    }
    for url in &urls {
        let plaintext = url.starts_with("http://");
        if config.insecure && !plaintext {
            return Err(Error::ManagerUrl {
                url: url.clone(),
                reason: "--insecure speaks plaintext: use an http:// URL".into(),
            });
        }
        if !config.insecure && plaintext {
            return Err(Error::ManagerUrl {
                url: url.clone(),
                reason: "http:// is plaintext: use https://HOST:PORT, or --insecure on the manager and the worker".into(),
            });
        }
    }
    if config.insecure {
        tracing::warn!("--insecure: the session to the manager is plaintext and unauthenticated");
        return Ok(None);
    }
    let dir = config.data_dir.as_deref();
    if let Some(kept) = dir.map(Identity::load).transpose()?.flatten() {
        if kept.valid_at(std::time::SystemTime::now()) {
            if config.join_token.is_some() {
                tracing::info!(node = %kept.node_id, "already joined: the kept node certificate is used, the join token is not");
            }
            return Ok(Some(kept));
        }
        if config.join_token.is_none() {
            return Err(Error::NotJoined(format!(
                "the node certificate in {} expired at {}; join again with --join-token TOKEN",
                dir.map(|d| d.display().to_string()).unwrap_or_default(),
                humantime_like(kept.not_after)
            )));
        }
    }
    let Some(token) = &config.join_token else {
        return Err(Error::NotJoined(
            "this worker has not joined the cluster: start it with --join-token TOKEN (`orchctl join-token worker` prints one)".into(),
        ));
    };
    let mut backoff = Backoff::new();
    loop {
        for url in &urls {
            match identity::join(url, token, dir).await {
                Err(Error::Unreachable(why)) => {
                    tracing::warn!(manager = %url, error = %why, "cannot join yet; retrying");
                    backoff.wait().await;
                }
                other => return other.map(Some),
            }
        }
    }
}

/// Seconds since the epoch, for messages (the worker has no date crate).
fn humantime_like(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{secs} (seconds since 1970)")
}

/// How long until `identity` is to be renewed; far away without one.
fn renewal_in(identity: Option<&Identity>) -> Duration {
    identity.map_or(Duration::from_secs(365 * 24 * 3600), |i| {
        i.renew_at()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    })
}

/// Runs one session until its stream ends; returns why it ended. The node
/// certificate is renewed on the session's channel when its time comes.
/// The log requests the session brings are served by `logs`, and end with it.
#[allow(clippy::too_many_arguments)]
async fn session<R: Runtime>(
    mut client: DispatcherClient<Channel>,
    reply: &RegisterResponse,
    node_id: Uuid,
    executor: &Executor,
    mut logs: LogStreams<R>,
    reports: &mut mpsc::UnboundedReceiver<TaskStatus>,
    meter: &mut Metrics,
    telemetry: &Telemetry,
    backoff: &mut Backoff,
    identity: &mut Option<Identity>,
    dir: Option<&std::path::Path>,
) -> String {
    let (out_tx, out_rx) = mpsc::channel::<WorkerMessage>(64);
    let open = WorkerMessage {
        kind: Some(worker_message::Kind::Open(SessionOpen {
            node_id: node_id.to_string(),
            session_id: reply.session_id.clone(),
        })),
    };
    if out_tx.send(open).await.is_err() {
        return "outbound stream closed".into();
    }
    let mut inbound = match client.session(ReceiverStream::new(out_rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return format!("session refused: {}", status.message()),
    };
    backoff.reset();
    let mut full_set = FullSet::default();
    let mut tick = tokio::time::interval(heartbeat_period(reply));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let renewal = tokio::time::sleep(renewal_in(identity.as_ref()));
    tokio::pin!(renewal);
    loop {
        tokio::select! {
            () = &mut renewal, if identity.is_some() => {
                let next = match identity.as_ref() {
                    Some(current) => match identity::renew(&mut client, current, dir).await {
                        Ok(renewed) => {
                            tracing::info!(node = %node_id, "node certificate renewed");
                            *identity = Some(renewed);
                            renewal_in(identity.as_ref())
                        }
                        Err(e) => {
                            tracing::warn!(node = %node_id, error = %e, "renewing the node certificate failed; retrying in 10s");
                            Duration::from_secs(10)
                        }
                    },
                    None => Duration::from_secs(365 * 24 * 3600),
                };
                renewal.as_mut().reset(tokio::time::Instant::now() + next);
            }
            _ = tick.tick() => {
                let sample = meter.sample();
                telemetry.machine(&sample);
                let hb = WorkerMessage {
                    kind: Some(worker_message::Kind::Heartbeat(Heartbeat { metrics: Some(sample) })),
                };
                if out_tx.send(hb).await.is_err() {
                    return "outbound stream closed".into();
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.kind {
                    Some(manager_message::Kind::Assignments(a)) => {
                        if let Some(a) = full_set.add(a) {
                            executor.send(Command::Assign(a));
                        }
                    }
                    Some(manager_message::Kind::Logs(request)) => logs.start(request),
                    Some(manager_message::Kind::CancelLogs(c)) => logs.cancel(&c.request_id),
                    None => {}
                },
                Ok(None) => return "the manager closed the session".into(),
                Err(status) => return format!("session failed: {}", status.message()),
            },
            Some(first) = reports.recv() => {
                let mut statuses = vec![first];
                while statuses.len() < MAX_BATCH {
                    match reports.try_recv() {
                        Ok(s) => statuses.push(s),
                        Err(_) => break,
                    }
                }
                let batch = WorkerMessage {
                    kind: Some(worker_message::Kind::Status(StatusBatch { statuses })),
                };
                if out_tx.send(batch).await.is_err() {
                    return "outbound stream closed".into();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_heartbeat_period_once_known() {
        let mut b = Backoff::new();
        let waits: Vec<u128> = (0..8).map(|_| b.step().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);

        // Registered with a 500 ms period: never more than that, even mid-streak.
        b.limit(Duration::from_millis(500));
        assert_eq!(b.step(), Duration::from_millis(500));
        b.reset();
        let waits: Vec<u128> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);

        // A silly period is clamped to sane bounds.
        b.limit(Duration::from_secs(60));
        assert_eq!(b.max, BACKOFF_MAX);
        b.limit(Duration::ZERO);
        assert_eq!(b.max, BACKOFF_START);
    }

    fn refusal(leader: &str) -> tonic::Status {
        let mut status = tonic::Status::unavailable("this manager does not lead");
        status
            .metadata_mut()
            .insert(orch::api::LEADER_METADATA, leader.parse().expect("a URL"));
        status
    }

    #[test]
    fn a_worker_goes_at_once_where_a_follower_names_the_leader_but_not_back_to_one_that_failed() {
        let (a, b, c) = ("http://a:1", "http://b:1", "http://c:1");
        let mut m = Managers::new(&format!("{a}, {b},{c}"));
        assert_eq!(m.current(), a);
        // `a` is unreachable: the next one, after a wait.
        assert!(!m.after_failure(Some(&tonic::Status::unavailable("refused"))));
        assert_eq!(m.current(), b);
        // `b` still names `a`, which just failed: not there, but on.
        assert!(!m.after_failure(Some(&refusal(a))));
        assert_eq!(m.current(), c);
        // `c` names the new leader, `b`: at once.
        assert!(m.after_failure(Some(&refusal(b))));
        assert_eq!(m.current(), b);
        m.reached();

        // Followers with stale views naming each other: a few hops at
        // once, then a wait.
        let mut hops = 0;
        while m.after_failure(Some(&refusal(if m.current() == a { b } else { a }))) {
            hops += 1;
            assert!(hops <= 3, "round in circles");
        }
        assert_eq!(hops, 3);
        // A refusal naming the manager itself: a wait.
        let here = m.current().to_owned();
        assert!(!m.after_failure(Some(&refusal(&here))));
        assert_eq!(m.current(), here);
    }
}
