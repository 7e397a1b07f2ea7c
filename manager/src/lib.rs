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
//! - [`clock`]: the one place that reads the time;
//! - [`auth`]: the cluster's CA, client and join tokens, and the layer that
//!   checks every client call.
//! - [`limits`]: the limits on load (message sizes, requests per
//!   connection, timeouts, the rate of `Register`) and the tower layer
//!   enforcing them.
//! - [`metrics`]: the Prometheus metrics, served on `Config::metrics_listen`.
//! - `replica` (the `etcd` feature): several managers on one etcd store,
//!   each following until elected, then leading until its term ends.

pub mod api;
pub mod auth;
pub mod clock;
pub mod dispatcher;
pub mod engine;
mod error;
#[cfg(test)]
mod fuzz_tests;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod orchestrator;
pub mod persist;
#[cfg(feature = "etcd")]
pub mod replica;
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
use tonic::server::NamedService;
use tonic_health::ServingStatus;

use crate::auth::{Auth, Ca};
use crate::dispatcher::sessions::Liveness;
use crate::engine::Engine;
pub use crate::error::Error;
use crate::persist::{Committer, StoreHealth};
use crate::scheduler::{Scheduler, Strategy};
pub use crate::store::DEFAULT_EVENTS_KEPT;
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
    /// TLS on the manager's port, the default. `false` serves plaintext
    /// (`--insecure`) on a network the user trusts: workers need no
    /// certificate and clients no token.
    pub tls: bool,
    /// Host names and addresses clients reach the manager at, written into
    /// its certificate (besides the loopback names and the listen address).
    pub advertise: Vec<String>,
    /// How long a node certificate is valid.
    pub node_cert_lifetime: Duration,
    /// When this start makes an admin token for the local client
    /// configuration ([`Manager::client`]).
    pub admin_token: AdminToken,
    /// The limits on load: requests per connection, timeout, `Register`'s rate.
    pub limits: limits::Limits,
    /// Where to serve the Prometheus metrics (`GET /metrics`, plain HTTP, its
    /// own port); `None`, the default, serves none. [`Manager::registry`]
    /// is there to serve them some other way.
    pub metrics_listen: Option<SocketAddr>,
    /// How many of the newest events the store keeps for `WatchEvents` to
    /// replay (at least one); applies to the store [`start`] opens.
    pub events_kept: u64,
    /// The etcd cluster holding the state, `etcd://HOST:PORT[,...][/PREFIX]`
    /// (`--store`), instead of the redb file in `data_dir`; its cluster's CA
    /// is there too. Needs the crate's `etcd` feature; such a manager starts
    /// with `replica::start`.
    pub etcd: Option<String>,
    /// On etcd: how the manager reaches it, over TLS and as a user.
    pub etcd_client: EtcdClientConfig,
    /// On etcd: how long a manager's lease lasts, the longest a dead leader
    /// holds the cluster before another is elected (whole seconds, at least 2).
    pub leader_lease: Duration,
    /// On etcd: how long a new leader gives every worker to open a session
    /// with it before declaring its node down (at least the liveness
    /// deadline): the workers first have to find it.
    pub failover_grace: Duration,
}

/// How a manager on etcd reaches it (`orchctl manager --etcd-*`). etcd
/// holds the whole cluster, its CA's key included, so a manager speaks TLS
/// to it unless every member is on loopback or `plaintext` says the
/// network is trusted. The files are read at start: one that is missing or
/// holds no PEM is an error there, naming it.
#[derive(Debug, Clone, Default)]
pub struct EtcdClientConfig {
    /// etcd's CA (PEM): speak TLS, trusting members whose certificates it
    /// signed (`--etcd-ca`).
    pub ca_file: Option<PathBuf>,
    /// The manager's client certificate and its key (PEM), for an etcd
    /// that checks clients (`--etcd-cert`, `--etcd-key`).
    pub cert_file: Option<PathBuf>,
    /// The key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// A user of etcd's authentication (`--etcd-user`)...
    pub user: Option<String>,
    /// ...and the file holding its password, its first line
    /// (`--etcd-password-file`).
    pub password_file: Option<PathBuf>,
    /// Speak plain HTTP to members that are not on loopback
    /// (`--etcd-plaintext`), on a network the operator trusts.
    pub plaintext: bool,
}

/// When a start makes an admin client token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminToken {
    /// Only when the cluster has no client token at all: its first start.
    FirstStart,
    /// At every start, revoking the one the previous start made
    /// (`orchctl dev`, whose configuration must always work).
    EveryStart,
    /// At this start, whatever exists (`orchctl manager --new-admin-token`,
    /// for a lost one): the older tokens keep working until revoked.
    ThisStart,
}

/// The name of the admin token [`AdminToken::FirstStart`] makes.
pub const FIRST_ADMIN_TOKEN: &str = "first admin";
/// The name of the admin token [`AdminToken::ThisStart`] makes.
pub const NEW_ADMIN_TOKEN: &str = "new admin";
/// The name of the admin token [`AdminToken::EveryStart`] makes.
pub const DEV_ADMIN_TOKEN: &str = "orchctl dev";

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: None,
            strategy: Strategy::default(),
            heartbeat_period: Duration::from_secs(1),
            missed_heartbeats: 3,
            tls: true,
            advertise: Vec::new(),
            node_cert_lifetime: auth::NODE_CERT_LIFETIME,
            admin_token: AdminToken::FirstStart,
            limits: limits::Limits::default(),
            metrics_listen: None,
            events_kept: store::DEFAULT_EVENTS_KEPT,
            etcd: None,
            etcd_client: EtcdClientConfig::default(),
            leader_lease: Duration::from_secs(2),
            failover_grace: Duration::from_secs(10),
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
    /// The cluster's CA or the server's certificate could not be made or read.
    #[error("the cluster's CA: {0}")]
    Ca(#[from] auth::ca::CaError),
    /// The stored credentials do not decode.
    #[error("the stored credentials: {0}")]
    Credentials(String),
    /// The metrics port could not be bound.
    #[error(transparent)]
    Metrics(#[from] orch_metrics::BindError),
    /// The store holds another cluster than the one the data directory
    /// belongs to, or cannot be used as asked.
    #[error("{0}")]
    Cluster(String),
}

/// The file in the data directory naming the cluster it belongs to, written
/// at the first start: a later start on a store of another cluster is
/// refused rather than mixing two clusters' state.
pub const CLUSTER_FILE: &str = "cluster-id";

/// The state shared by the gRPC services, behind one lock that is never held
/// across an await.
pub struct Shared {
    engine: Mutex<Engine>,
    /// The engine's clock, readable without the lock.
    clock: clock::Clock,
    /// The credentials, behind their own lock: checking a token never waits
    /// on the engine.
    auth: Mutex<Auth>,
    /// Whether the port speaks TLS (and workers must show certificates).
    tls: bool,
    /// Writes of credentials go through the same committer as the engine's.
    committer: Committer,
    /// The store, for reads that need not go through the engine: the kept
    /// events `WatchEvents` replays. Weak: the committer owns the store and
    /// closes it at shutdown, and a stream that outlives the server (until
    /// hyper drops its connection) must not hold the data directory's lock.
    store: std::sync::Weak<dyn Store>,
    /// Who the cluster's managers are, for `ListManagers`.
    managers: Arc<dyn Managers>,
}

/// Who the managers of the cluster are, and which one leads, for
/// `ListManagers`: this manager alone ([`Alone`]), or the records of the
/// managers on etcd (`replica`).
pub trait Managers: Send + Sync + 'static {
    /// Every manager, in the order they started.
    fn list(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<Vec<orch::v1::ManagerInfo>, Error>>;
}

/// A manager alone on its store: it lists itself, leading since it started.
pub struct Alone(orch::v1::ManagerInfo);

impl Managers for Alone {
    fn list(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<Vec<orch::v1::ManagerInfo>, Error>> {
        let me = self.0.clone();
        Box::pin(async move { Ok(vec![me]) })
    }
}

impl Shared {
    /// Locks the engine.
    ///
    /// A panic while the lock was held may have left the state half applied
    /// (a task bound but its reservation not taken, a write not queued), so
    /// the manager does not go on with it: it logs the error and aborts the
    /// process, and the restart rebuilds the state from the store. It aborts
    /// rather than panics because tokio catches a panic in a request's task
    /// and would keep serving.
    pub fn lock(&self) -> MutexGuard<'_, Engine> {
        match self.engine.lock() {
            Ok(guard) => guard,
            Err(_) => {
                tracing::error!(
                    "the manager's state lock was poisoned by a panic while it was held; \
                     aborting so that a restart recovers the state from the store"
                );
                eprintln!(
                    "orch manager: the state lock was poisoned by a panic; aborting (restart \
                     the manager: it recovers its state from the store)"
                );
                std::process::abort()
            }
        }
    }

    /// The time now, on the engine's clock.
    pub fn now(&self) -> clock::Now {
        self.clock.now()
    }

    /// Locks the credentials. A panic while they were held aborts, as for
    /// the engine's lock: they are restored from the store at the restart.
    pub fn auth(&self) -> MutexGuard<'_, Auth> {
        match self.auth.lock() {
            Ok(guard) => guard,
            Err(_) => {
                tracing::error!("the credentials' lock was poisoned by a panic; aborting");
                eprintln!("orch manager: the credentials' lock was poisoned by a panic; aborting");
                std::process::abort()
            }
        }
    }

    /// Whether workers must show node certificates.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Checks a `Cluster` call's `authorization` metadata against the role
    /// `method` needs.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` or `PERMISSION_DENIED`, see [`Auth::authorize`].
    pub fn authorize(
        &self,
        authorization: Option<&str>,
        needed: orch::auth::Role,
        method: &str,
    ) -> Result<auth::Caller, tonic::Status> {
        if !self.tls {
            // `--insecure` is the trusted-network mode of old: no TLS, and
            // no point in tokens that travel in the clear.
            return Ok(auth::Caller {
                token_id: String::new(),
                role: orch::auth::Role::Admin,
            });
        }
        self.auth()
            .authorize(authorization, needed, method, self.now().wall)
    }

    /// The cluster's managers.
    pub fn managers(&self) -> Arc<dyn Managers> {
        self.managers.clone()
    }

    /// Persists credential writes; resolves once they are durable.
    ///
    /// # Errors
    /// If the store failed.
    pub async fn persist(&self, writes: Vec<store::Write>) -> Result<(), Error> {
        if writes.is_empty() {
            return Ok(());
        }
        self.committer
            .queue_durable(writes)
            .wait()
            .await
            .map_err(Error::from)
    }
}

fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServeError> {
    let Some(dir) = &config.data_dir else {
        return Ok(Arc::new(
            MemoryStore::new().with_events_kept(config.events_kept),
        ));
    };
    let path = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|source| ServeError::DataDir {
        path: path.clone(),
        source,
    })?;
    let store = RedbStore::open(&dir.join(STORE_FILE))
        .map_err(|source| ServeError::Store { path, source })?
        .with_events_kept(config.events_kept);
    Ok(Arc::new(store))
}

/// How a client reaches the manager that just started: what `orchctl`
/// writes into its configuration.
#[derive(Debug, Clone)]
pub struct ClientAccess {
    /// The manager's URL, `https://...` (or `http://...` without TLS).
    pub url: String,
    /// The cluster's CA certificate, PEM.
    pub ca_pem: String,
    /// An admin token this start made, if it made one (see [`AdminToken`]).
    pub admin_token: Option<String>,
    /// The current worker join token.
    pub join_token: String,
}

/// A manager that has loaded its state and made its credentials, ready to
/// serve: [`start`], then [`Manager::serve`].
pub struct Manager {
    shared: Arc<Shared>,
    committer: Committer,
    listener: Arc<TcpListener>,
    liveness: Liveness,
    tls: Option<tonic::transport::ServerTlsConfig>,
    client: ClientAccess,
    limits: limits::Limits,
    metrics: metrics::Metrics,
    metrics_endpoint: Option<orch_metrics::Endpoint>,
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
    start(config, listener).await?.serve(shutdown).await
}

/// Opens the store, loads the state, loads or makes the cluster's CA and
/// issues the server's certificate: everything that can fail before the
/// manager serves, so a caller can report it before saying it runs.
///
/// # Errors
/// If the store cannot be opened or read, or the CA cannot be made or read.
pub async fn start(config: Config, listener: TcpListener) -> Result<Manager, ServeError> {
    if let Some(url) = &config.etcd {
        // Managers on etcd take turns leading: see `replica`.
        return Err(open_etcd_unbuilt(url));
    }
    let store = open_store(&config)?;
    start_with_store(config, store, listener).await
}

/// Opens the etcd store at `url` and reads the cluster's CA from it, making
/// both the cluster and its CA if the store holds none yet.
#[cfg(feature = "etcd")]
async fn open_etcd(
    config: &Config,
    url: &str,
) -> Result<(Arc<store::etcd::EtcdStore>, Ca), ServeError> {
    use crate::store::etcd::{EtcdStore, EtcdUrl, Founding};
    let url = EtcdUrl::parse(url).map_err(|e| ServeError::Cluster(format!("--store: {e}")))?;
    let access = etcd_access(&config.etcd_client, &url).map_err(ServeError::Cluster)?;
    let events_kept = config.events_kept;
    let shown = url.to_string();
    let failed = move |source| ServeError::Store {
        path: shown.clone(),
        source,
    };
    // A manager that already belongs to a cluster never founds another: a
    // wrong URL or prefix must not start an empty cluster.
    let recorded = recorded_cluster(config)?;
    let proposal = match recorded {
        Some(_) => None,
        None => {
            let ca = Ca::create(std::time::SystemTime::now())?;
            Some(Founding {
                cluster_id: uuid::Uuid::new_v4().to_string(),
                ca_cert_pem: ca.cert_pem().to_owned(),
                ca_key_pem: ca.key_pem(),
            })
        }
    };
    // Connecting and founding block: off the runtime's threads.
    let (store, found) = tokio::task::spawn_blocking(move || {
        let store = EtcdStore::connect_with(&url, &access)?.with_events_kept(events_kept);
        let found = store.found(proposal)?;
        Ok((store, found))
    })
    .await
    .map_err(|e| ServeError::Cluster(format!("opening the etcd store: {e}")))?
    .map_err(failed)?;
    check_cluster(config, found.as_ref().map(|(f, _)| f.cluster_id.as_str()))?;
    let Some((founding, made)) = found else {
        // Only a manager of a recorded cluster proposes none, and
        // `check_cluster` refused it above if the store holds none.
        return Err(ServeError::Cluster(format!(
            "the store {} holds no cluster",
            store.url()
        )));
    };
    if made {
        tracing::info!(cluster = %founding.cluster_id, store = %store.url(), "made a new cluster in etcd");
    }
    record_cluster(config, &founding.cluster_id)?;
    let ca = Ca::from_pem(&founding.ca_cert_pem, &founding.ca_key_pem)?;
    Ok((Arc::new(store), ca))
}

/// How the store reaches the etcd at `url`, from `config`'s files.
///
/// # Errors
/// A sentence naming the flag or file at fault, or refusing plain HTTP to a
/// member off loopback without `--etcd-plaintext`.
#[cfg(feature = "etcd")]
fn etcd_access(
    config: &EtcdClientConfig,
    url: &store::etcd::EtcdUrl,
) -> Result<store::etcd::EtcdAccess, String> {
    use crate::store::etcd::EtcdAccess;
    let access = match &config.ca_file {
        Some(ca) => {
            EtcdAccess::from_files(ca, config.cert_file.as_deref(), config.key_file.as_deref())?
        }
        None if config.cert_file.is_some() || config.key_file.is_some() => {
            return Err(
                "--etcd-cert and --etcd-key need --etcd-ca, the CA that signed etcd's certificates"
                    .into(),
            );
        }
        None if config.plaintext || url.is_loopback() => EtcdAccess::default(),
        None => {
            return Err(format!(
                "--store {url} would reach etcd in plain HTTP off loopback, and etcd holds the cluster and its CA's key: give --etcd-ca (and --etcd-cert, --etcd-key where etcd checks clients), or --etcd-plaintext on a network you trust"
            ));
        }
    };
    match (&config.user, &config.password_file) {
        (Some(user), Some(file)) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("--etcd-password-file {}: {e}", file.display()))?;
            let password = text.lines().next().unwrap_or_default();
            if password.is_empty() {
                return Err(format!(
                    "--etcd-password-file {}: its first line, the password, is empty",
                    file.display()
                ));
            }
            Ok(access.with_user(user, password))
        }
        (None, None) => Ok(access),
        (Some(_), None) => {
            Err("--etcd-user needs --etcd-password-file, the file holding its password".into())
        }
        (None, Some(_)) => {
            Err("--etcd-password-file needs --etcd-user, whose password it holds".into())
        }
    }
}

/// The error of [`start`] asked for a store on etcd.
fn open_etcd_unbuilt(url: &str) -> ServeError {
    if cfg!(feature = "etcd") {
        ServeError::Cluster(format!(
            "--store {url}: a manager on etcd starts with `replica::start`, which elects a leader"
        ))
    } else {
        ServeError::Cluster(format!(
            "--store {url}: this build has no etcd store; build orchctl with `cargo build --release -p orchctl --features etcd` (it needs protoc: Debian's protobuf-compiler)"
        ))
    }
}

/// The cluster the data directory belongs to, if a start recorded one
/// ([`CLUSTER_FILE`]).
fn recorded_cluster(config: &Config) -> Result<Option<String>, ServeError> {
    let Some(dir) = &config.data_dir else {
        return Ok(None);
    };
    let path = dir.join(CLUSTER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(recorded) => Ok(Some(recorded.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ServeError::DataDir {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The error of a store holding another cluster (`None`: none at all) than
/// the `recorded` one of the data directory.
fn cluster_mismatch(config: &Config, held: Option<&str>, recorded: &str) -> ServeError {
    let dir = config
        .data_dir
        .as_deref()
        .unwrap_or(std::path::Path::new("."));
    let store = config.etcd.as_deref().map_or_else(
        || format!("the store {}", dir.join(STORE_FILE).display()),
        |url| format!("the store {url}"),
    );
    let held = held.map_or_else(|| "no cluster".to_owned(), |id| format!("cluster {id}"));
    ServeError::Cluster(format!(
        "{store} holds {held}, but this manager's data directory {} belongs to cluster {recorded} ({}): point --store at that cluster's store, or start with a new --data-dir",
        dir.display(),
        dir.join(CLUSTER_FILE).display(),
    ))
}

/// Checks that the data directory belongs to the cluster the store holds
/// (`None`: the store holds none yet).
fn check_cluster(config: &Config, held: Option<&str>) -> Result<(), ServeError> {
    match (recorded_cluster(config)?, held) {
        (Some(recorded), held) if held != Some(recorded.as_str()) => {
            Err(cluster_mismatch(config, held, &recorded))
        }
        _ => Ok(()),
    }
}

/// Records in the data directory the cluster it belongs to, at its first
/// start.
fn record_cluster(config: &Config, cluster_id: &str) -> Result<(), ServeError> {
    let Some(dir) = &config.data_dir else {
        return Ok(());
    };
    if recorded_cluster(config)?.is_some() {
        return Ok(());
    }
    let path = dir.join(CLUSTER_FILE);
    let failed = |source| ServeError::DataDir {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    std::fs::write(&path, format!("{cluster_id}\n")).map_err(failed)
}

/// As [`run`], over a store opened by the caller (`config.data_dir` only
/// names it in errors): how tests put a [`store::FaultyStore`] under a real
/// server.
///
/// # Errors
/// If the store cannot be read or the server fails.
pub async fn run_with_store(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    start_with_store(config, store, listener)
        .await?
        .serve(shutdown)
        .await
}

/// As [`start`], over a store opened by the caller.
///
/// # Errors
/// If the store cannot be read, or the CA cannot be made or read.
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
) -> Result<Manager, ServeError> {
    start_inner(config, store, None, None, Arc::new(listener)).await
}

/// As [`start_with_store`], with the cluster's CA if the store holds it
/// (etcd); `None` loads or makes it in the data directory.
async fn start_inner(
    config: Config,
    store: Arc<dyn Store>,
    ca: Option<Ca>,
    managers: Option<Arc<dyn Managers>>,
    listener: Arc<TcpListener>,
) -> Result<Manager, ServeError> {
    let metrics_endpoint = match config.metrics_listen {
        Some(addr) => Some(orch_metrics::Endpoint::bind(addr).await?),
        None => None,
    };
    let metrics = metrics::Metrics::new();
    let path = config
        .data_dir
        .as_ref()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "memory".into());
    let mut snapshot = store
        .load()
        .map_err(|source| ServeError::Store { path, source })?;
    // Before anything is written: a store of another cluster stays as it is.
    check_cluster(&config, snapshot.cluster_id.as_deref())?;
    let wall = std::time::SystemTime::now();
    let ca = match (ca, &config.data_dir) {
        (Some(ca), _) => ca,
        (None, Some(dir)) => Ca::load_or_create(dir, wall)?,
        (None, None) => Ca::create(wall)?,
    };
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let tls = server_tls(&config, &ca, addr, wall)?;
    let credentials = std::mem::take(&mut snapshot.credentials);
    let (mut auth, mut auth_writes) =
        Auth::restore(ca, &credentials, config.node_cert_lifetime, wall)
            .map_err(ServeError::Credentials)?;
    let admin_token = match config.admin_token {
        AdminToken::FirstStart if auth.has_tokens() => None,
        AdminToken::FirstStart => Some(FIRST_ADMIN_TOKEN),
        AdminToken::EveryStart => {
            for token in auth.list_tokens() {
                if token.name == DEV_ADMIN_TOKEN {
                    auth_writes.extend(auth.revoke_token(&token.id).unwrap_or_default());
                }
            }
            Some(DEV_ADMIN_TOKEN)
        }
        AdminToken::ThisStart => Some(NEW_ADMIN_TOKEN),
    }
    .map(|name| {
        auth.create_token(orch::auth::Role::Admin, name, None, wall)
            .map(|(_, text, writes)| {
                auth_writes.extend(writes);
                text
            })
    })
    .transpose()
    .map_err(|s| ServeError::Credentials(s.message().to_owned()))?;
    let (join, writes) = auth
        .join_token(false, None, None, wall)
        .map_err(|s| ServeError::Credentials(s.message().to_owned()))?;
    auth_writes.extend(writes);
    let committer = Committer::start_measured(store.clone(), metrics.store.clone());
    committer
        .queue_durable(auth_writes)
        .wait()
        .await
        .map_err(|source| ServeError::Store {
            path: "credentials".into(),
            source,
        })?;
    let liveness = Liveness {
        heartbeat_period: config.heartbeat_period,
        missed_heartbeats: config.missed_heartbeats,
    };
    let tasks = snapshot.tasks.len();
    let engine = Engine::restore_measured(
        snapshot,
        Scheduler::new(config.strategy),
        committer.clone(),
        liveness,
        metrics.clone(),
    );
    record_cluster(&config, engine.cluster_id())?;
    // What the restore wrote (services reconciled) is durable before the
    // manager serves: a store that cannot take it is an error at start.
    committer
        .flush()
        .await
        .map_err(|source| ServeError::Store {
            path: "the restored state".into(),
            source,
        })?;
    tracing::info!(cluster = %engine.cluster_id(), tasks, strategy = %config.strategy, ca = %auth.ca().digest(), "manager state loaded");
    let host = match addr {
        Some(a) if a.ip().is_unspecified() => format!("127.0.0.1:{}", a.port()),
        Some(a) => a.to_string(),
        None => "127.0.0.1:7070".into(),
    };
    let client = ClientAccess {
        url: format!("{}://{host}", if config.tls { "https" } else { "http" }),
        ca_pem: auth.ca().cert_pem().to_owned(),
        admin_token,
        join_token: join.token,
    };
    if !config.tls {
        tracing::warn!(
            "serving without TLS or authentication (--insecure): anyone who can reach the port can read the traffic, register workers and submit or stop anything"
        );
    }
    let managers = managers.unwrap_or_else(|| {
        let now = Some(orch::time::timestamp(wall));
        Arc::new(Alone(orch::v1::ManagerInfo {
            id: uuid::Uuid::new_v4().to_string(),
            url: client.url.clone(),
            leader: true,
            started_at: now,
            leader_since: now,
        }))
    });
    let shared = Arc::new(Shared {
        clock: engine.clock(),
        engine: Mutex::new(engine),
        auth: Mutex::new(auth),
        tls: config.tls,
        committer: committer.clone(),
        store: Arc::downgrade(&store),
        managers,
    });
    Ok(Manager {
        shared,
        committer,
        listener,
        liveness,
        tls,
        client,
        limits: config.limits,
        metrics,
        metrics_endpoint,
    })
}

/// The server's certificate for the names it is reached at (the advertised
/// ones, the listen address, the host name), signed by `ca`, as the TLS
/// settings of its port; `None` without TLS.
fn server_tls(
    config: &Config,
    ca: &Ca,
    addr: Option<SocketAddr>,
    now: std::time::SystemTime,
) -> Result<Option<tonic::transport::ServerTlsConfig>, ServeError> {
    if !config.tls {
        return Ok(None);
    }
    let mut names = config.advertise.clone();
    if let Some(addr) = addr.filter(|a| !a.ip().is_unspecified()) {
        names.push(addr.ip().to_string());
    }
    names.extend(host_name());
    let identity = ca.issue_server(&names, now, config.data_dir.as_deref())?;
    Ok(Some(
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &identity.chain_pem,
                &identity.key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(ca.cert_pem()))
            // Clients carry tokens, not certificates; joining workers have
            // none yet. The Dispatcher refuses calls without one itself.
            .client_auth_optional(true),
    ))
}

/// The connections `listener` accepts, as a stream a server takes while
/// others may take the listener after it (a manager on etcd serves one
/// listener as a follower, then as the leader, and so on).
fn incoming(
    listener: Arc<TcpListener>,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

/// The machine's host name, for the server certificate.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl Manager {
    /// How a local client reaches this manager.
    pub fn client(&self) -> &ClientAccess {
        &self.client
    }

    /// Gives every node's worker `grace` to come back before it is
    /// declared down (a new leader's, after a failover).
    pub fn hold_nodes(&self, grace: Duration) {
        self.shared.lock().hold_nodes(grace);
    }

    /// The registry of the manager's metrics (`orch_manager_*`), for a
    /// caller that serves them itself (`orchctl dev`, with the worker's).
    pub fn registry(&self) -> Arc<prometheus_client::registry::Registry> {
        self.metrics.registry()
    }

    /// Where [`Config::metrics_listen`] serves the metrics, if it does.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint
            .as_ref()
            .and_then(|e| e.local_addr().ok())
    }

    /// Serves until `shutdown` resolves.
    ///
    /// # Errors
    /// If the server fails.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Manager {
            shared,
            committer,
            listener,
            liveness,
            tls,
            client: _,
            limits,
            metrics,
            metrics_endpoint,
        } = self;
        let liveness_task = tokio::spawn(housekeeping(shared.clone(), liveness));
        // The metrics port stops with the gRPC server's shutdown, or once the
        // server ended by itself (the sender dropped).
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics_task = metrics_endpoint.map(|endpoint| {
            tokio::spawn(endpoint.serve(vec![metrics.registry()], async {
                let _ = metrics_stopped.await;
            }))
        });

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        set_health(&health_reporter, ServingStatus::Serving).await;
        let store_health = tokio::spawn(report_store_health(
            committer.health(),
            health_reporter.clone(),
        ));
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
        tracing::info!(?addr, tls = tls.is_some(), "manager listening");
        let heartbeat_period = liveness.heartbeat_period;
        let keepalive = heartbeat_period.max(Duration::from_millis(500));
        let mut builder = limits::server(&limits);
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        let router = builder
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(keepalive))
            .http2_keepalive_timeout(Some(keepalive * liveness.missed_heartbeats.max(1)))
            .layer(auth::layer::AuthLayer::new(shared.clone()))
            .add_service(health_service)
            .add_service(limits::cluster(api::ClusterApi::new(shared.clone())))
            .add_service(limits::dispatcher(dispatcher::DispatcherApi::new(
                shared.clone(),
                &limits,
            )))
            .add_optional_service(reflection.ok())
            .add_optional_service(reflection_alpha.ok());
        let closing = shared.clone();
        let shutdown = async move {
            shutdown.await;
            let _ = stop_metrics.send(());
            closing.lock().close_streams();
        };
        let result = router
            .serve_with_incoming_shutdown(incoming(listener), shutdown)
            .await;
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        liveness_task.abort();
        store_health.abort();
        if let Err(e) = committer.close().await {
            tracing::error!(error = %e, "final store commit failed");
        }
        result.map_err(ServeError::from)
    }
}

/// Follows the store's health into the gRPC health service: the `Cluster`
/// and `Dispatcher` services are `NOT_SERVING` while commits fail (the
/// manager acknowledges nothing then), `SERVING` again once one succeeds.
async fn report_store_health(
    mut health: tokio::sync::watch::Receiver<StoreHealth>,
    reporter: tonic_health::server::HealthReporter,
) {
    loop {
        let now = health.borrow_and_update().clone();
        let status = match now {
            StoreHealth::Serving => {
                tracing::info!("store healthy: serving");
                ServingStatus::Serving
            }
            StoreHealth::Failing { reason } => {
                tracing::error!(%reason, "store failing: not serving until a commit succeeds");
                ServingStatus::NotServing
            }
        };
        set_health(&reporter, status).await;
        if health.changed().await.is_err() {
            return;
        }
    }
}

/// Sets the health of the `Cluster` and `Dispatcher` services.
async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    reporter
        .set_service_status(ClusterServer::<api::ClusterApi>::NAME, status)
        .await;
    reporter
        .set_service_status(DispatcherServer::<dispatcher::DispatcherApi>::NAME, status)
        .await;
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

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    use super::*;

    const CHILD: &str = "ORCH_TEST_POISONED_LOCK_CHILD";
    const SIGABRT: i32 = 6;

    /// The child half of the test below: poisons the lock, then locks again.
    fn poison_and_lock() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let committer = Committer::start(store.clone());
        let now = std::time::SystemTime::now();
        let ca = Ca::create(now).expect("a CA");
        let (auth, _) = Auth::restore(ca, &[], auth::NODE_CERT_LIFETIME, now).expect("auth");
        let engine = Engine::restore(
            store::Snapshot::default(),
            Scheduler::new(Strategy::default()),
            committer.clone(),
            Liveness {
                heartbeat_period: Duration::from_secs(1),
                missed_heartbeats: 3,
            },
        );
        let shared = Shared {
            clock: engine.clock(),
            engine: Mutex::new(engine),
            auth: Mutex::new(auth),
            tls: true,
            committer,
            store: Arc::downgrade(&store),
            managers: Arc::new(crate::Alone(orch::v1::ManagerInfo::default())),
        };
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = shared.lock();
            panic!("a bug while the state lock is held");
        }));
        assert!(panicked.is_err());
        drop(shared.lock());
        eprintln!("still running on a poisoned lock");
    }

    #[test]
    fn a_poisoned_state_lock_aborts_the_manager() {
        if std::env::var_os(CHILD).is_some() {
            poison_and_lock();
            return;
        }
        let exe = std::env::current_exe().expect("the test binary");
        let out = Command::new(exe)
            .args(["--exact", "tests::a_poisoned_state_lock_aborts_the_manager"])
            .args(["--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(SIGABRT), "{stderr}");
        assert!(stderr.contains("state lock was poisoned"), "{stderr}");
        assert!(!stderr.contains("still running"), "{stderr}");
    }
}
