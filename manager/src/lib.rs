//! The orch manager: accepts tasks, stores them, schedules them onto workers,
//! pushes work down the workers' sessions and tracks what they report.
//!
//! Components, from the edge inwards (data flows one way: API → engine →
//! state → store, and engine → sessions → workers; reports come back in
//! through the dispatcher):
//! - [`api`]: the `Cluster` gRPC service (clients);
//! - [`dispatcher`]: the `Dispatcher` gRPC service (workers), the only code
//!   that touches a worker's stream, and [`dispatcher::sessions`], the
//!   sessions and liveness deadlines;
//! - [`engine`]: the one lock; applies the components' decisions;
//! - [`scheduler`]: pure placement decisions over node snapshots;
//! - [`orchestrator`]: pure reconcilers (restart, drain);
//! - [`state`]: the live objects in memory and their change feed;
//! - [`persist`]: group commit of the state's changes to the [`store`];
//! - [`store`]: durable state (redb, or memory in unit tests);
//! - [`clock`]: the one place that reads the time.

pub mod api;
pub mod clock;
pub mod dispatcher;
pub mod engine;
mod error;
#[cfg(test)]
mod fuzz_tests;
pub mod orchestrator;
pub mod persist;
pub mod scheduler;
pub mod state;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use orch::v1::cluster_server::ClusterServer;
use orch::v1::dispatcher_server::DispatcherServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::dispatcher::sessions::Liveness;
use crate::engine::Engine;
pub use crate::error::Error;
use crate::persist::Committer;
use crate::scheduler::{Scheduler, Strategy};
use crate::store::{MemoryStore, RedbStore, Store, StoreError};

/// The redb file's name inside the data directory.
pub const STORE_FILE: &str = "manager.redb";

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store lives; `None` keeps everything in memory (tests only:
    /// nothing survives a restart).
    pub data_dir: Option<PathBuf>,
    /// How tasks are placed.
    pub strategy: Strategy,
    /// How often workers send heartbeats.
    pub heartbeat_period: Duration,
    /// How many heartbeat periods may pass in silence before a node is down.
    pub missed_heartbeats: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: None,
            strategy: Strategy::default(),
            heartbeat_period: Duration::from_secs(1),
            missed_heartbeats: 3,
        }
    }
}

/// Why the manager could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened or read.
    #[error("opening the store in {path}: {source}")]
    Store {
        /// The data directory.
        path: String,
        /// What failed.
        source: StoreError,
    },
    /// The data directory could not be created.
    #[error("creating the data directory {path}: {source}")]
    DataDir {
        /// The data directory.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The state shared by the gRPC services, behind one lock that is never held
/// across an await.
pub struct Shared {
    engine: Mutex<Engine>,
    /// The engine's clock, readable without the lock.
    clock: clock::Clock,
}

impl Shared {
    /// Locks the engine. A panic while the lock was held leaves the state as
    /// the panicking thread left it; the manager keeps going rather than wedge.
    pub fn lock(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The time now, on the engine's clock.
    pub fn now(&self) -> clock::Now {
        self.clock.now()
    }
}

fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    let Some(dir) = &config.data_dir else {
        return Ok(Arc::new(MemoryStore::new()));
    };
    let path = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|source| ServeError::DataDir {
        path: path.clone(),
        source,
    })?;
    let store = RedbStore::open(&dir.join(STORE_FILE))
        .map_err(|source| ServeError::Store { path, source })?;
    Ok(Arc::new(store))
}

/// Runs the manager on `listener` until `shutdown` resolves.
///
/// # Errors
/// If the store cannot be opened or the server fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = open_store(&config)?;
    let path = config
        .data_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "memory".into());
    let snapshot = store
        .load()
        .map_err(|source| ServeError::Store { path, source })?;
    let committer = Committer::start(store);
    let liveness = Liveness {
        heartbeat_period: config.heartbeat_period,
        missed_heartbeats: config.missed_heartbeats,
    };
    let tasks = snapshot.tasks.len();
    let engine = Engine::restore(
        snapshot,
        Scheduler::new(config.strategy),
        committer.clone(),
        liveness,
    );
    tracing::info!(cluster = %engine.cluster_id(), tasks, strategy = %config.strategy, "manager state loaded");
    let shared = Arc::new(Shared {
        clock: engine.clock(),
        engine: Mutex::new(engine),
    });

    let liveness_task = tokio::spawn(housekeeping(shared.clone(), liveness));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ClusterServer<api::ClusterApi>>()
        .await;
    health_reporter
        .set_serving::<DispatcherServer<dispatcher::DispatcherApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(orch::api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            tracing::error!(error = %e, "reflection service");
            e
        });
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(orch::api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha();

    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(?addr, "manager listening");
    let keepalive = config.heartbeat_period.max(Duration::from_millis(500));
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive * config.missed_heartbeats.max(1)))
        .add_service(health_service)
        .add_service(ClusterServer::new(api::ClusterApi::new(shared.clone())))
        .add_service(DispatcherServer::new(dispatcher::DispatcherApi::new(
            shared.clone(),
        )))
        .add_optional_service(reflection.ok())
        .add_optional_service(reflection_alpha.ok());
    let closing = shared.clone();
    let shutdown = async move {
        shutdown.await;
        closing.lock().close_streams();
    };
    let result = router
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    liveness_task.abort();
    if let Err(e) = committer.close().await {
        tracing::error!(error = %e, "final store commit failed");
    }
    result.map_err(ServeError::from)
}

/// Runs the state's housekeeping (liveness, due restarts) the moment
/// something falls due, so a dead node is declared down right at its deadline
/// rather than up to a polling period later. It also wakes a few times per
/// heartbeat period, which is how it notices deadlines and restarts added
/// since it last looked (none of them is due sooner than that: a deadline is
/// a whole heartbeat period or more away, a restart's backoff at least 1 s).
async fn housekeeping(shared: Arc<Shared>, liveness: Liveness) {
    let poll = (liveness.heartbeat_period / 4)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        let now = tokio::time::Instant::now();
        let next = match shared.lock().next_due() {
            Some(due) if due > now => due.min(now + poll),
            // Due already, right after a tick: something a tick cannot clear
            // must not turn this loop into a spin.
            Some(_) => now + Duration::from_millis(10),
            None => now + poll,
        };
        tokio::time::sleep_until(next).await;
        shared.lock().tick(tokio::time::Instant::now());
    }
}
