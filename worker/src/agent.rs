//! The agent: the worker's side of the `Dispatcher` protocol.
//!
//! It registers, keeps one `Session` stream open, sends heartbeats at the
//! period the manager chose, forwards the manager's assignments to the
//! [`Executor`] and sends the executor's reports back in batches. When the
//! stream breaks it reconnects with exponential backoff (capped at the
//! heartbeat period, so it is back before the manager gives up on it),
//! registering again under the node id it keeps in its data directory. It decides nothing about
//! tasks itself.

use std::collections::HashMap;
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
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::executor::{Command, Executor, FullSet};
use crate::metrics::Meter;
use crate::runtime::Runtime;

/// Most reports in one batch.
const MAX_BATCH: usize = 1_000;
/// The file in the data directory that keeps the node id.
pub const NODE_ID_FILE: &str = "node-id";
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The manager's URL, for example `http://127.0.0.1:7070`.
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
    /// Where the node id is kept; `None` makes a new node on every start.
    pub data_dir: Option<PathBuf>,
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
    let endpoint = Endpoint::from_shared(config.manager.clone())
        .map_err(|e| Error::ManagerUrl {
            url: config.manager.clone(),
            reason: e.to_string(),
        })?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true);
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
    let mut node_id = load_node_id(&config)?;
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let mut executor: Option<(String, Executor)> = None;
    let mut backoff = Backoff::new();
    tokio::pin!(shutdown);
    loop {
        let attempt = async {
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
            Ok::<_, tonic::Status>((client, reply))
        };
        let registered = tokio::select! {
            r = attempt => r,
            () = &mut shutdown => return Ok(()),
        };
        let (client, reply) = match registered {
            Ok(ok) => ok,
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                return Err(Error::Refused(status.message().to_string()));
            }
            Err(status) => {
                tracing::warn!(manager = %config.manager, error = %status.message(), "registration failed; retrying");
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
                let exec = Executor::start(
                    runtime.clone(),
                    reply.cluster_id.clone(),
                    id,
                    reports_tx.clone(),
                );
                executor = Some((reply.cluster_id.clone(), exec.clone()));
                exec
            }
        };
        tracing::info!(node = %id, cluster = %reply.cluster_id, "registered");
        let ended = tokio::select! {
            r = session(client, &reply, id, &exec, &mut reports, &mut meter, &mut backoff) => r,
            () = &mut shutdown => return Ok(()),
        };
        tracing::warn!(reason = %ended, "session ended; reconnecting");
        tokio::select! {
            () = backoff.wait() => {}
            () = &mut shutdown => return Ok(()),
        }
    }
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

/// Runs one session until its stream ends; returns why it ended.
async fn session(
    mut client: DispatcherClient<Channel>,
    reply: &RegisterResponse,
    node_id: Uuid,
    executor: &Executor,
    reports: &mut mpsc::UnboundedReceiver<TaskStatus>,
    meter: &mut Metrics,
    backoff: &mut Backoff,
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
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let hb = WorkerMessage {
                    kind: Some(worker_message::Kind::Heartbeat(Heartbeat { metrics: Some(meter.sample()) })),
                };
                if out_tx.send(hb).await.is_err() {
                    return "outbound stream closed".into();
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    if let Some(manager_message::Kind::Assignments(a)) = m.kind
                        && let Some(a) = full_set.add(a)
                    {
                        executor.send(Command::Assign(a));
                    }
                }
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
}
