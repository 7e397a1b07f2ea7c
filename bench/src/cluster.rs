//! A simulated cluster: a real manager on loopback and any number of real
//! workers over [`SimRuntime`], all speaking real gRPC.
//!
//! ```no_run
//! # async fn example() -> Result<(), orch_bench::Error> {
//! use orch_bench::cluster::SimCluster;
//! let cluster = SimCluster::builder().workers(100).start().await?;
//! let mut client = cluster.client().await?;
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Each worker runs the production worker code (`orch_worker::run`) with its
//! own registration, its own connection and its own `Session` stream; only the
//! container engine below it is simulated, and one [`SimRuntime`] serves them
//! all. The manager runs either in this process or, so that its cpu time and
//! memory can be measured apart from the workers', as a child process
//! (`orchctl manager`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use orch::auth::{Bearer, Client};
use orch::v1::cluster_client::ClusterClient;
use orch::v1::{GetJoinTokenRequest, ListManagersRequest, NodeState, WatchEventsRequest, event};
use orch_worker::runtime::sim::{SimConfig, SimRuntime};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::Error;
use crate::measure::{Pid, ProcStats, proc_stats};

/// How long the cluster may take to come up, and a client to connect.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// How many workers register at once before the next wave starts. Opening
/// thousands of connections at the same instant overflows the listen backlog
/// and turns into connect retries with backoff; waves keep start-up smooth.
const WAVE: usize = 500;
/// Messages larger than tonic's 4 MiB default: a page of 10,000 tasks.
const MAX_MESSAGE: usize = 64 << 20;

/// Where the manager runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagerKind {
    /// In this process, on the same tokio runtime as the workers. Its cpu
    /// time and memory cannot be told apart from theirs.
    InProcess,
    /// As a child process running this `orchctl` binary (`orchctl manager`),
    /// measured on its own.
    Child(PathBuf),
}

/// How a client reaches the manager: its URL and, with TLS, the cluster's
/// CA and an admin token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `http://...` without TLS (`--insecure`), `https://...` with it.
    pub url: String,
    /// The CA to verify the manager against (PEM), with TLS.
    pub ca: Option<String>,
    /// The client token sent with every call, with TLS.
    pub token: Option<String>,
}

impl Access {
    /// A manager without TLS or tokens at `url`.
    pub fn insecure(url: String) -> Self {
        Self {
            url,
            ca: None,
            token: None,
        }
    }

    /// The manager's endpoint, TLS verified against the CA if there is one.
    ///
    /// # Errors
    /// If the URL or the CA is unusable.
    pub fn endpoint(&self) -> Result<Endpoint, Error> {
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| Error::Manager(format!("bad URL: {e}")))?;
        match &self.ca {
            None => Ok(endpoint),
            Some(ca) => endpoint
                .tls_config(
                    ClientTlsConfig::new()
                        .domain_name(orch::auth::MANAGER_SERVER_NAME)
                        .ca_certificate(Certificate::from_pem(ca)),
                )
                .map_err(|e| Error::Manager(format!("TLS settings: {e}"))),
        }
    }

    /// A client over `channel` that sends the token.
    ///
    /// # Errors
    /// If the token cannot be sent as a header.
    pub fn client(&self, channel: Channel) -> Result<Client, Error> {
        let bearer = Bearer::new(self.token.as_deref()).map_err(Error::Manager)?;
        Ok(ClusterClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

/// Builds a [`SimCluster`].
#[derive(Debug, Clone)]
pub struct Builder {
    workers: usize,
    manager: ManagerKind,
    heartbeat_period: Duration,
    missed_heartbeats: u32,
    sim: SimConfig,
    tls: bool,
    events_kept: u64,
    manager_args: Vec<String>,
}

struct Worker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), orch_worker::Error>>,
}

enum Manager {
    InProcess {
        stop: oneshot::Sender<()>,
        task: JoinHandle<Result<(), orch_manager::ServeError>>,
    },
    Child(tokio::process::Child),
}

/// A manager and its simulated workers. See the module documentation.
pub struct SimCluster {
    /// The manager's address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    manager: Manager,
    workers: Vec<Worker>,
    /// The engine every worker runs its "containers" on.
    pub runtime: Arc<SimRuntime>,
    access: Access,
    /// The join token workers join with, with TLS.
    join_token: Option<String>,
}

impl Builder {
    /// How many simulated workers to start (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Where the manager runs (default: in this process).
    pub fn manager(mut self, kind: ManagerKind) -> Self {
        self.manager = kind;
        self
    }

    /// How often workers send heartbeats (default 1 s). Large clusters want
    /// longer: every heartbeat takes the manager's state lock.
    pub fn heartbeat_period(mut self, period: Duration) -> Self {
        self.heartbeat_period = period;
        self
    }

    /// How many heartbeat periods a node may miss before it is down (default 3).
    pub fn missed_heartbeats(mut self, n: u32) -> Self {
        self.missed_heartbeats = n.max(1);
        self
    }

    /// How the simulated containers behave (default: start at once, run forever).
    pub fn sim(mut self, config: SimConfig) -> Self {
        self.sim = config;
        self
    }

    /// Secure the cluster as a user's is by default (TLS, join tokens,
    /// client tokens); without, it runs as with `--insecure`, as every
    /// figure before security came was measured (default: without).
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// How many events the manager keeps for replay (default
    /// `orch_manager::DEFAULT_EVENTS_KEPT`); for a manager in this process.
    pub fn events_kept(mut self, kept: u64) -> Self {
        self.events_kept = kept;
        self
    }

    /// More arguments of a child manager (`--store etcd://...`).
    #[must_use]
    pub fn manager_args(mut self, args: Vec<String>) -> Self {
        self.manager_args = args;
        self
    }

    /// Starts the manager, then the workers in waves, and waits until every
    /// worker's node is ready.
    ///
    /// # Errors
    /// If the manager cannot start, or the workers are not ready in time.
    pub async fn start(self) -> Result<SimCluster, Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io(format!("temp dir: {e}")))?;
        let (listener, addr) = loopback_listener().await?;
        let data_dir = dir.path().join("manager");
        let http = format!("http://{addr}");
        let (manager, access) = match &self.manager {
            ManagerKind::InProcess => {
                let (stop, stopped) = oneshot::channel();
                let config = orch_manager::Config {
                    data_dir: Some(data_dir),
                    heartbeat_period: self.heartbeat_period,
                    missed_heartbeats: self.missed_heartbeats,
                    tls: self.tls,
                    events_kept: self.events_kept,
                    ..orch_manager::Config::default()
                };
                let manager = orch_manager::start(config, listener)
                    .await
                    .map_err(|e| Error::Manager(format!("the manager cannot start: {e}")))?;
                let client = manager.client().clone();
                let access = if self.tls {
                    Access {
                        url: client.url,
                        ca: Some(client.ca_pem),
                        token: client.admin_token,
                    }
                } else {
                    Access::insecure(http)
                };
                let task = tokio::spawn(manager.serve(async {
                    let _ = stopped.await;
                }));
                (Manager::InProcess { stop, task }, access)
            }
            ManagerKind::Child(orchctl) => {
                // The child binds the port this process just found free.
                drop(listener);
                let config = dir.path().join("config.toml");
                let child = Manager::Child(spawn_child(
                    orchctl,
                    addr,
                    &data_dir,
                    dir.path(),
                    self.heartbeat_period,
                    self.missed_heartbeats,
                    self.tls.then_some(config.as_path()),
                    &self.manager_args,
                )?);
                let access = if self.tls {
                    child_access(&config).await?
                } else {
                    Access::insecure(http)
                };
                (child, access)
            }
        };
        let mut cluster = SimCluster {
            addr,
            dir,
            manager,
            workers: Vec::with_capacity(self.workers),
            runtime: Arc::new(SimRuntime::new(self.sim.clone())),
            access,
            join_token: None,
        };
        if self.tls {
            let token = cluster
                .client()
                .await?
                .get_join_token(GetJoinTokenRequest::default())
                .await?
                .into_inner()
                .token;
            cluster.join_token = Some(token);
        }
        let mut client = cluster.client().await?;
        // Subscribe before any worker starts, so no node's ready event is missed.
        let mut events = client
            .watch_events(WatchEventsRequest::default())
            .await?
            .into_inner();
        let mut ready = std::collections::HashSet::new();
        let waited = tokio::time::timeout(START_DEADLINE, async {
            while cluster.workers.len() < self.workers {
                let wave_end = (cluster.workers.len() + WAVE).min(self.workers);
                while cluster.workers.len() < wave_end {
                    cluster.add_worker();
                }
                while ready.len() < wave_end {
                    let Some(e) = events.message().await? else {
                        return Err(Error::Manager("the event stream ended".into()));
                    };
                    if let Some(event::Kind::Node(n)) = e.kind {
                        if n.state() == NodeState::Ready {
                            ready.insert(n.node_id);
                        } else {
                            ready.remove(&n.node_id);
                        }
                    }
                }
            }
            Ok(())
        })
        .await;
        match waited {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Timeout(format!(
                    "{} of {} workers ready after {START_DEADLINE:?}",
                    ready.len(),
                    self.workers
                )));
            }
        }
        Ok(cluster)
    }
}

/// The watcher's HTTP/2 flow-control window, in bytes: with the default
/// 64 KiB the manager may have only ~600 events in flight before it waits
/// for a window update from this busy process.
const WATCH_WINDOW: u32 = 64 << 20;

/// Whether a watch stream ended because the manager could not feed it: the
/// events it needed are no longer kept (`OUT_OF_RANGE`), or, from a manager
/// that cuts slow watchers off, it fell behind (`RESOURCE_EXHAUSTED`).
pub fn watch_cut_off(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
    )
}

/// Subscribes to the manager's events on a thread of its own with its own
/// tokio runtime, and hands the stream to `watch` there; returns once
/// subscribed, with what `watch` will return. On the shared runtime the
/// watcher is one task among thousands of simulated workers' and falls
/// behind the stream; on its own thread the OS gives it a fair share of the
/// cpu.
///
/// # Errors
/// If the watcher cannot connect or subscribe.
pub async fn watch_apart<W, F, Fut>(
    access: Access,
    watch: F,
) -> Result<oneshot::Receiver<Result<W, Error>>, Error>
where
    W: Send + 'static,
    F: FnOnce(tonic::Streaming<orch::v1::Event>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<W, Error>>,
{
    let (subscribed_tx, subscribed) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let run = move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Io(format!("watcher runtime: {e}")))?;
        rt.block_on(async move {
            let channel = access
                .endpoint()?
                .initial_stream_window_size(Some(WATCH_WINDOW))
                .initial_connection_window_size(Some(WATCH_WINDOW))
                .connect()
                .await
                .map_err(|e| Error::Manager(format!("watcher cannot connect: {e}")))?;
            let events = access
                .client(channel)?
                .watch_events(WatchEventsRequest::default())
                .await?
                .into_inner();
            let _ = subscribed_tx.send(());
            watch(events).await
        })
    };
    std::thread::Builder::new()
        .name("bench-watch".into())
        .spawn(move || {
            let _ = done_tx.send(run());
        })
        .map_err(|e| Error::Io(format!("watcher thread: {e}")))?;
    if subscribed.await.is_err() {
        // The thread ended before subscribing; its result says why.
        return match done.await {
            Ok(Err(e)) => Err(e),
            _ => Err(Error::Manager("the watcher could not subscribe".into())),
        };
    }
    Ok(done)
}

/// How to reach a child manager that was started with TLS: what its first
/// start wrote into the client configuration at `path` (waited for).
async fn child_access(path: &Path) -> Result<Access, Error> {
    #[derive(serde::Deserialize)]
    struct File {
        manager: String,
        token: String,
        ca: String,
    }
    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(file) = toml::from_str::<File>(&text)
        {
            return Ok(Access {
                url: file.manager,
                ca: Some(file.ca),
                token: Some(file.token),
            });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Manager(format!(
                "the manager wrote no client configuration to {} in {START_DEADLINE:?}",
                path.display()
            )));
        }
        // Nothing to wait on but the file: look again shortly.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A listener on a free loopback port, and its address. A manager started
/// as a child process binds the same address once this listener is dropped.
///
/// # Errors
/// If no port can be bound.
pub(crate) async fn loopback_listener() -> Result<(TcpListener, SocketAddr), Error> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Io(format!("bind: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Io(format!("local address: {e}")))?;
    Ok((listener, addr))
}

/// Starts `orchctl manager` as a child process: with TLS if `config` names
/// where its first start writes the client configuration, else `--insecure`.
///
/// # Errors
/// If it cannot be started.
#[allow(
    clippy::too_many_arguments,
    reason = "each is one flag of `orchctl manager`, named where it is passed"
)]
pub(crate) fn spawn_child(
    orchctl: &Path,
    addr: SocketAddr,
    data_dir: &Path,
    log_dir: &Path,
    heartbeat_period: Duration,
    missed_heartbeats: u32,
    config: Option<&Path>,
    extra: &[String],
) -> Result<tokio::process::Child, Error> {
    let mut args: Vec<String> = Vec::new();
    if config.is_none() {
        args.push("--insecure".into());
    }
    args.extend([
        "manager".into(),
        "--listen".into(),
        addr.to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--heartbeat-period".into(),
        humantime::format_duration(heartbeat_period).to_string(),
        "--missed-heartbeats".into(),
        missed_heartbeats.to_string(),
    ]);
    args.extend(extra.iter().cloned());
    let mut child = orchctl_command(orchctl, &args, &log_dir.join("manager.log"))?;
    if let Some(config) = config {
        child.env("ORCH_CONFIG", config);
    }
    child
        .spawn()
        .map_err(|e| Error::Io(format!("cannot start {}: {e}", orchctl.display())))
}

/// Starts `orchctl` with `args` as a child process that logs warnings and
/// errors to `log` and is killed if dropped.
///
/// # Errors
/// If the log file cannot be created or the binary cannot be started.
pub(crate) fn orchctl_child(
    orchctl: &Path,
    args: &[String],
    log: &Path,
) -> Result<tokio::process::Child, Error> {
    orchctl_command(orchctl, args, log)?
        .spawn()
        .map_err(|e| Error::Io(format!("starting {}: {e}", orchctl.display())))
}

/// The command of [`orchctl_child`], to add to before it starts.
fn orchctl_command(
    orchctl: &Path,
    args: &[String],
    log: &Path,
) -> Result<tokio::process::Command, Error> {
    let log = std::fs::File::create(log)
        .map_err(|e| Error::Io(format!("log file {}: {e}", log.display())))?;
    let mut command = tokio::process::Command::new(orchctl);
    command
        .args(args)
        // Info logs one line per worker registration and session.
        .env("ORCH_LOG", "warn")
        .env_remove("ORCH_MANAGER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    Ok(command)
}

/// Stops a child `orchctl` gracefully: SIGTERM, then SIGKILL if it has not
/// ended within 30 s.
pub(crate) async fn terminate(child: &mut tokio::process::Child) {
    // SIGTERM through kill(1): orch forbids the unsafe call, and tokio's own
    // kill is SIGKILL, which would skip the manager's final commit.
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// A client of the manager `access` names, on a connection of its own,
/// retrying until the manager answers: on etcd, until a manager leads (a
/// manager that has not been elected yet forwards to nobody).
///
/// # Errors
/// If the manager does not answer within two minutes.
pub async fn connect(access: &Access) -> Result<Client, Error> {
    let deadline = tokio::time::Instant::now() + START_DEADLINE;
    let endpoint = access.endpoint()?;
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                let mut client = access.client(channel)?;
                match client.list_managers(ListManagersRequest {}).await {
                    Err(e)
                        if e.code() == tonic::Code::Unavailable
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(Error::Manager(format!("the manager answers: {e}"))),
                    Ok(_) => return Ok(client),
                }
            }
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(Error::Manager(format!("cannot connect: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

impl SimCluster {
    /// A builder: one worker, manager in process, 1 s heartbeats.
    pub fn builder() -> Builder {
        Builder {
            workers: 1,
            manager: ManagerKind::InProcess,
            heartbeat_period: Duration::from_secs(1),
            missed_heartbeats: 3,
            sim: SimConfig::default(),
            tls: false,
            events_kept: orch_manager::DEFAULT_EVENTS_KEPT,
            manager_args: Vec::new(),
        }
    }

    /// The manager's URL.
    pub fn url(&self) -> String {
        self.access.url.clone()
    }

    /// How a client reaches the manager.
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// A client of the manager on a connection of its own, retrying until the
    /// manager answers.
    ///
    /// # Errors
    /// If the manager does not answer within two minutes.
    pub async fn client(&self) -> Result<Client, Error> {
        connect(&self.access).await
    }

    fn add_worker(&mut self) {
        let n = self.workers.len();
        let (stop, stopped) = oneshot::channel();
        let config = orch_worker::Config {
            manager: self.url(),
            name: format!("sim-{n}"),
            address: String::new(),
            labels: [("index".to_string(), n.to_string())].into(),
            milli_cpus: None,
            memory_bytes: None,
            disk_bytes: None,
            data_dir: None,
            join_token: self.join_token.clone(),
            insecure: self.join_token.is_none(),
            retention: Default::default(),
            metrics_listen: None,
        };
        let task = tokio::spawn(orch_worker::run(config, self.runtime.clone(), async {
            let _ = stopped.await;
        }));
        self.workers.push(Worker { stop, task });
    }

    /// How many workers were started.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The manager's own cpu time and peak memory, if it runs as a child;
    /// this whole process's (manager and workers together) if it does not.
    pub fn manager_stats(&self) -> Option<ProcStats> {
        match &self.manager {
            Manager::InProcess { .. } => proc_stats(Pid::This),
            Manager::Child(child) => proc_stats(Pid::Other(child.id()?)),
        }
    }

    /// Whether the manager runs in this process (so its figures include the workers').
    pub fn manager_in_process(&self) -> bool {
        matches!(self.manager, Manager::InProcess { .. })
    }

    /// The size of the manager's store file, in bytes.
    pub fn store_bytes(&self) -> u64 {
        let path = self
            .dir
            .path()
            .join("manager")
            .join(orch_manager::STORE_FILE);
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// Stops the workers, then the manager (gracefully, so its store closes).
    pub async fn shutdown(self) {
        let mut tasks = Vec::with_capacity(self.workers.len());
        for w in self.workers {
            let _ = w.stop.send(());
            tasks.push(w.task);
        }
        for t in tasks {
            let _ = t.await;
        }
        match self.manager {
            Manager::InProcess { stop, task } => {
                let _ = stop.send(());
                let _ = task.await;
            }
            Manager::Child(mut child) => terminate(&mut child).await,
        }
    }
}
