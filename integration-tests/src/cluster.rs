//! A cluster harness: a real manager and real workers on loopback ports, with
//! the real Docker engine, in one test process.
//!
//! ```no_run
//! # async fn example() {
//! use orch_integration_tests::cluster::Cluster;
//! let cluster = Cluster::builder().workers(2).worker_cpus(1000).start().await;
//! let mut client = cluster.client().await;
//! cluster.shutdown().await;
//! # }
//! ```
//!
//! Every cluster has its own temporary data directory and therefore its own
//! cluster id, and `Cluster::shutdown` (or drop) removes the containers
//! labelled with it, so tests never see each other's containers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use orch::auth::{Bearer, Client};
use orch::v1::cluster_client::ClusterClient;
use orch::v1::dispatcher_client::DispatcherClient;
use orch::v1::{GetTaskRequest, ListNodesRequest, NodeState, Task, WatchEventsRequest};
use orch_manager::limits::Limits;
use orch_manager::scheduler::Strategy;
use orch_worker::runtime::docker::DockerRuntime;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::containers;

/// How long a test waits for something before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Builds a [`Cluster`].
pub struct Builder {
    workers: usize,
    milli_cpus: Option<i64>,
    memory_bytes: Option<i64>,
    strategy: Strategy,
    limits: Limits,
}

/// A running manager.
struct ManagerProc {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), orch_manager::ServeError>>,
}

/// A running worker.
pub struct WorkerProc {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), orch_worker::Error>>,
}

/// A manager and its workers.
pub struct Cluster {
    /// The manager's address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    strategy: Strategy,
    limits: Limits,
    manager: Option<ManagerProc>,
    /// The workers, in start order.
    pub workers: Vec<WorkerProc>,
    /// The Docker engine.
    pub docker: Docker,
    runtime: Arc<DockerRuntime>,
    worker_config: (Option<i64>, Option<i64>),
    /// The manager's CA, admin token and join token, from its first start.
    access: Option<orch_manager::ClientAccess>,
    /// Whether [`Cluster::shutdown`] ran, removing the containers.
    shut_down: bool,
}

impl Builder {
    /// How many workers to start (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The cpu every worker declares, in millicpus (default: the machine's).
    pub fn worker_cpus(mut self, milli: i64) -> Self {
        self.milli_cpus = Some(milli);
        self
    }

    /// The memory every worker declares (default: the machine's).
    pub fn worker_memory(mut self, bytes: i64) -> Self {
        self.memory_bytes = Some(bytes);
        self
    }

    /// The scheduling strategy (default: spread).
    pub fn strategy(mut self, s: Strategy) -> Self {
        self.strategy = s;
        self
    }

    /// The manager's limits on load (default: the manager's defaults).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Starts the manager, then the workers, and waits until every worker is ready.
    ///
    /// # Panics
    /// If anything fails to start: this is test set-up.
    pub async fn start(self) -> Cluster {
        init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = Arc::new(DockerRuntime::connect().await.expect("docker"));
        let docker = Docker::connect_with_local_defaults()
            .expect("docker")
            .negotiate_version()
            .await
            .expect("docker version");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut cluster = Cluster {
            addr,
            dir,
            strategy: self.strategy,
            limits: self.limits,
            manager: None,
            workers: Vec::new(),
            docker,
            runtime,
            worker_config: (self.milli_cpus, self.memory_bytes),
            access: None,
            shut_down: false,
        };
        cluster.manager = Some(cluster.spawn_manager(listener).await);
        for _ in 0..self.workers {
            cluster.add_worker();
        }
        cluster.wait_ready_nodes(self.workers).await;
        cluster
    }
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ORCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

impl Cluster {
    /// A builder with one worker, machine capacity, spread scheduling.
    pub fn builder() -> Builder {
        Builder {
            workers: 1,
            milli_cpus: None,
            memory_bytes: None,
            strategy: Strategy::Spread,
            limits: Limits::default(),
        }
    }

    /// The manager's URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The manager's CA (PEM), an admin token and the worker join token.
    ///
    /// # Panics
    /// Before the manager first started.
    pub fn access(&self) -> &orch_manager::ClientAccess {
        self.access.as_ref().expect("the manager has started")
    }

    /// Worker `i`'s data directory (its node id, key and certificate).
    pub fn worker_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{i}"))
    }

    /// The manager's data directory.
    pub fn manager_dir(&self) -> PathBuf {
        self.dir.path().join("manager")
    }

    async fn spawn_manager(&mut self, listener: TcpListener) -> ManagerProc {
        let (stop, stopped) = oneshot::channel();
        let config = orch_manager::Config {
            data_dir: Some(self.manager_dir()),
            strategy: self.strategy,
            heartbeat_period: Duration::from_millis(500),
            missed_heartbeats: 3,
            limits: self.limits,
            ..orch_manager::Config::default()
        };
        let manager = orch_manager::start(config, listener)
            .await
            .expect("the manager starts");
        let access = manager.client().clone();
        match &mut self.access {
            // A restart makes no admin token: the first one still works.
            Some(kept) => kept.join_token = access.join_token,
            None => self.access = Some(access),
        }
        let task = tokio::spawn(async move {
            let result = manager
                .serve(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "manager failed");
            }
            result
        });
        ManagerProc { stop, task }
    }

    /// Starts one more worker, named `worker-N`.
    pub fn add_worker(&mut self) {
        let w = self.spawn_worker(self.workers.len());
        self.workers.push(w);
    }

    /// Starts worker `i` again after [`Cluster::stop_worker`], with the same
    /// data directory, so it comes back as the same node.
    pub fn restart_worker(&mut self, i: usize) {
        self.workers[i] = self.spawn_worker(i);
    }

    fn spawn_worker(&self, n: usize) -> WorkerProc {
        let (stop, stopped) = oneshot::channel();
        let config = orch_worker::Config {
            manager: self.url(),
            name: format!("worker-{n}"),
            address: String::new(),
            labels: [("index".to_string(), n.to_string())].into(),
            milli_cpus: self.worker_config.0,
            memory_bytes: self.worker_config.1,
            disk_bytes: None,
            data_dir: Some(self.worker_dir(n)),
            join_token: Some(self.access().join_token.clone()),
            insecure: false,
            retention: Default::default(),
            metrics_listen: None,
        };
        let task = tokio::spawn(orch_worker::run(config, self.runtime.clone(), async {
            let _ = stopped.await;
        }));
        WorkerProc {
            stop: Some(stop),
            task,
        }
    }

    /// Stops the manager (its state stays on disk) and starts it again on
    /// the same address and data directory.
    pub async fn restart_manager(&mut self) {
        self.stop_manager().await;
        // The port was just released; binding it again can race with the
        // kernel for a moment.
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.manager = Some(self.spawn_manager(listener).await);
    }

    /// Stops the manager and waits until it has let go of its store, which
    /// the test may then open ([`Cluster::manager_dir`]); the workers keep
    /// running. [`Cluster::restart_manager`] starts it again.
    ///
    /// # Panics
    /// If the manager failed.
    pub async fn stop_manager(&mut self) {
        if let Some(m) = self.manager.take() {
            let _ = m.stop.send(());
            m.task.await.expect("manager task").expect("manager run");
        }
    }

    /// A client of the manager, with the admin token.
    pub async fn client(&self) -> Client {
        let token = self.access().admin_token.clone();
        self.client_with(token.as_deref()).await
    }

    /// A client of the manager that sends `token` (or none).
    pub async fn client_with(&self, token: Option<&str>) -> Client {
        let bearer = Bearer::new(token).expect("token");
        ClusterClient::with_interceptor(self.channel().await, bearer)
    }

    /// A client of the manager's `Dispatcher` service over TLS, without a
    /// node certificate (see [`Cluster::worker_channel`] for a worker's).
    pub async fn dispatcher_client(&self) -> DispatcherClient<tonic::transport::Channel> {
        DispatcherClient::new(self.channel().await)
    }

    /// Joins the cluster as a new node, as a worker does (with the join
    /// token, keeping nothing on disk), and returns a mutual-TLS channel
    /// with its certificate and its node id: a worker a test plays itself.
    pub async fn join_node(&self) -> (tonic::transport::Channel, String) {
        let identity = orch_worker::identity::join(&self.url(), &self.access().join_token, None)
            .await
            .expect("join");
        let channel = tonic::transport::Endpoint::from_shared(self.url())
            .expect("url")
            .tls_config(identity.tls())
            .expect("tls")
            .connect()
            .await
            .expect("connect");
        (channel, identity.node_id.to_string())
    }

    /// A mutual-TLS channel with worker `i`'s key and certificate: what
    /// that worker itself speaks to the `Dispatcher` with.
    pub async fn worker_channel(&self, i: usize) -> tonic::transport::Channel {
        let dir = self.worker_dir(i);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("a worker file");
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("url")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .domain_name(orch::auth::MANAGER_SERVER_NAME)
                    .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.crt")))
                    .identity(tonic::transport::Identity::from_pem(
                        read("node.crt"),
                        read("node.key"),
                    )),
            )
            .expect("tls")
            .connect()
            .await
            .expect("connect")
    }

    /// A TLS channel to the manager, verified against its CA, without a
    /// token (health checks and reflection need none).
    pub async fn channel(&self) -> tonic::transport::Channel {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let endpoint = tonic::transport::Endpoint::from_shared(self.url())
            .expect("url")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .domain_name(orch::auth::MANAGER_SERVER_NAME)
                    .ca_certificate(tonic::transport::Certificate::from_pem(
                        &self.access().ca_pem,
                    )),
            )
            .expect("tls");
        loop {
            match endpoint.connect().await {
                Ok(c) => return c,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("cannot connect to the manager: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Waits until `n` nodes are ready, following the event stream.
    pub async fn wait_ready_nodes(&self, n: usize) {
        let mut client = self.client().await;
        let mut events = client
            .watch_events(WatchEventsRequest::default())
            .await
            .expect("watch")
            .into_inner();
        let ready = |c: &mut Client| {
            let mut c = c.clone();
            async move {
                c.list_nodes(ListNodesRequest {})
                    .await
                    .expect("list nodes")
                    .into_inner()
                    .nodes
                    .iter()
                    .filter(|n| n.state() == NodeState::Ready)
                    .count()
            }
        };
        tokio::time::timeout(DEADLINE, async {
            while ready(&mut client).await < n {
                events.message().await.expect("event stream");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{n} nodes not ready within {DEADLINE:?}"));
    }

    /// Waits until task `id` satisfies `done`, re-reading it after every
    /// event; returns it. Panics with the task's last state at the deadline.
    pub async fn wait_task(&self, id: &str, done: impl Fn(&Task) -> bool) -> Task {
        let mut client = self.client().await;
        let mut events = client
            .watch_events(WatchEventsRequest::default())
            .await
            .expect("watch")
            .into_inner();
        let mut last = None;
        let waited = tokio::time::timeout(DEADLINE, async {
            loop {
                let task = client
                    .get_task(GetTaskRequest { id: id.to_string() })
                    .await
                    .expect("get task")
                    .into_inner()
                    .task
                    .expect("task");
                if done(&task) {
                    return task;
                }
                last = Some(task);
                events.message().await.expect("event stream");
            }
        })
        .await;
        match waited {
            Ok(task) => task,
            Err(_) => {
                panic!("task {id} did not get there within {DEADLINE:?}; last seen: {last:?}")
            }
        }
    }

    /// Submits one task and returns it as the manager acknowledged it.
    ///
    /// # Panics
    /// If the manager refuses it: this is test set-up.
    pub async fn submit(&self, spec: orch::v1::TaskSpec) -> Task {
        self.client()
            .await
            .submit_task(orch::v1::SubmitTaskRequest { spec: Some(spec) })
            .await
            .expect("submit")
            .into_inner()
            .task
            .expect("task")
    }

    /// The local test image (see [`crate::images::busybox`]), built if needed.
    ///
    /// # Panics
    /// If it cannot be built.
    pub async fn busybox(&self) -> String {
        crate::images::busybox(&self.docker)
            .await
            .expect("build test image")
    }

    /// Waits until task `id` is in `state`.
    pub async fn wait_state(&self, id: &str, state: orch::v1::TaskState) -> Task {
        self.wait_task(id, |t| t.state() == state).await
    }

    /// This cluster's containers (`all`: exited ones too), as the engine lists them.
    pub async fn containers(&self, all: bool) -> Vec<bollard::models::ContainerSummary> {
        containers::on_nodes(&self.docker, &self.node_ids(), all).await
    }

    /// The task ids of this cluster's running containers, sorted.
    pub async fn running_task_containers(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .containers(false)
            .await
            .into_iter()
            .filter_map(|c| c.labels?.get(orch::labels::TASK_ID).cloned())
            .collect();
        ids.sort();
        ids
    }

    /// Waits until the running containers of this cluster are exactly one per
    /// task in `tasks`, re-checking on every Docker container event; returns
    /// the last list seen, so the caller can assert on it.
    pub async fn wait_running_tasks(&self, tasks: &[String]) -> Vec<String> {
        use futures::StreamExt;
        let mut want = tasks.to_vec();
        want.sort();
        let filters = [("type", vec!["container".to_string()])]
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>();
        let opts = bollard::query_parameters::EventsOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut events = self.docker.events(Some(opts));
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let running = self.running_task_containers().await;
            if running == want || tokio::time::Instant::now() > deadline {
                return running;
            }
            // The engine's own view can lag its events by a moment, so also
            // look again after a short while if no event comes.
            let _ = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
        }
    }

    /// Stops a worker like a crash would: its containers keep running.
    pub async fn stop_worker(&mut self, i: usize) {
        if let Some(stop) = self.workers[i].stop.take() {
            let _ = stop.send(());
        }
        let w = &mut self.workers[i];
        let _ = (&mut w.task).await;
    }

    /// Stops everything and removes this cluster's containers.
    pub async fn shutdown(mut self) {
        for i in 0..self.workers.len() {
            self.stop_worker(i).await;
        }
        if let Some(m) = self.manager.take() {
            let _ = m.stop.send(());
            let _ = m.task.await;
        }
        containers::remove_on_nodes(&self.docker, &self.node_ids()).await;
        self.shut_down = true;
    }

    /// The node ids the workers kept in their data directories.
    pub fn node_ids(&self) -> Vec<String> {
        (0..self.workers.len())
            .filter_map(|i| {
                std::fs::read_to_string(self.worker_dir(i).join(orch_worker::agent::NODE_ID_FILE))
                    .ok()
            })
            .map(|s| s.trim().to_string())
            .collect()
    }
}

impl Drop for Cluster {
    /// A test that panicked never reached `shutdown`: remove its containers
    /// anyway, from a thread with its own runtime (the test's runtime may be
    /// going down), so no test leaves containers behind.
    fn drop(&mut self) {
        if self.shut_down {
            return;
        }
        let nodes = self.node_ids();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(docker) = Docker::connect_with_local_defaults() else {
                    return;
                };
                let Ok(docker) = docker.negotiate_version().await else {
                    return;
                };
                containers::remove_on_nodes(&docker, &nodes).await;
            });
        })
        .join();
    }
}
