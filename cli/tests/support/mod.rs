//! A process harness: orch's own binary (`orchctl manager`, `orchctl worker`)
//! run as real child processes, or as containers on a private Docker network,
//! so tests can really `kill -9` them, restart them on the same data
//! directory, and cut them off the network.
//!
//! ```ignore
//! let mut cluster = Procs::start(Options::default(), 3).await;
//! cluster.kill_worker(0).await;   // SIGKILL; its containers keep running
//! cluster.restart_worker(0);      // same data dir: the same node comes back
//! ```
//!
//! Waiting is event-driven: on the manager's `WatchEvents` stream (re-reading
//! the tasks and nodes after each event) and on Docker's event stream, each
//! with a deadline; nothing sleeps and checks.
//!
//! Every process writes its stderr to a log file in the cluster's temporary
//! directory. When a test panics, dropping the cluster prints where the logs
//! are and their last lines, and keeps the directory. Dropping it always
//! kills the processes and removes this cluster's containers (task
//! containers of its nodes, worker containers) and its network.
//!
//! Every cluster is secured as a user's is: the manager's first start writes
//! the client configuration (CA and admin token) into the cluster's
//! directory, where every orchctl it runs reads it (`ORCH_CONFIG`), and each
//! worker joins with the join token.
//!
//! Shared by `tests/failures.rs`, `tests/lifecycle.rs`, `tests/services.rs`,
//! `tests/service_failures.rs`, `tests/security.rs`, `tests/python_client.rs`,
//! `tests/logs.rs`, `tests/startup.rs`, `tests/metrics.rs` and
//! `benches/recovery.rs`; each uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use orch::auth::Client;
use orch::v1::cluster_client::ClusterClient;
use orch::v1::{
    Event, ListNodesRequest, ListTasksRequest, Node, NodeState, SubmitTaskRequest, Task, TaskSpec,
    TaskState, WatchEventsRequest,
};
use orch_integration_tests::{containers, images};
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tonic::Streaming;

/// How long a test waits for something before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The orchctl binary under test.
pub const ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");

/// The tag of the image that runs orchctl in a container.
pub const ORCHCTL_IMAGE: &str = "orch-test/orchctl:latest";

/// How the manager and workers are started.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--heartbeat-period` of the manager.
    pub heartbeat_period: String,
    /// `--missed-heartbeats` of the manager.
    pub missed_heartbeats: u32,
    /// Listen on 0.0.0.0 rather than loopback, so workers in containers
    /// can reach the manager through their network's gateway.
    pub listen_all: bool,
    /// `--cpus` of every worker.
    pub worker_cpus: String,
    /// `--memory` of every worker.
    pub worker_memory: String,
    /// More arguments of `orchctl manager`.
    pub manager_args: Vec<String>,
    /// More arguments of every `orchctl worker`.
    pub worker_args: Vec<String>,
    /// Serve metrics: every manager and every worker process get
    /// `--metrics-listen` on a free loopback port of their own
    /// ([`Procs::manager_metrics`], [`Procs::manager_metrics_of`],
    /// [`Procs::worker_metrics`]).
    pub metrics: bool,
    /// How many managers (more than one needs `--store etcd://...` in
    /// `manager_args`): manager 0 starts first, the others once it serves.
    pub managers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            heartbeat_period: "500ms".into(),
            missed_heartbeats: 3,
            listen_all: false,
            worker_cpus: "2".into(),
            worker_memory: "2Gi".into(),
            manager_args: Vec::new(),
            worker_args: Vec::new(),
            metrics: false,
            managers: 1,
        }
    }
}

/// One worker: a child process, or a container running orchctl.
enum Worker {
    /// A child process; `None` while it is killed.
    Process(Option<Child>),
    /// A container, by name.
    Container(String),
}

/// A task spec; stops wait at most 1 s (busybox `sleep` as PID 1 ignores
/// SIGTERM, so a longer grace period only makes the tests slower).
pub fn spec(image: &str, command: &[&str]) -> TaskSpec {
    TaskSpec {
        image: image.to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
        stop_grace_period: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A task that sleeps for 300 s: longer than any test.
pub fn sleeper(image: &str) -> TaskSpec {
    spec(image, &["sleep", "300"])
}

/// A container of one of this cluster's tasks, as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TaskContainer {
    pub task_id: String,
    pub attempt: u64,
    pub node_id: String,
    pub container_id: String,
}

/// What the manager says at one moment.
#[derive(Debug, Default)]
pub struct View {
    pub tasks: Vec<Task>,
    pub nodes: Vec<Node>,
}

impl View {
    /// The task with this id.
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// How many nodes are ready.
    pub fn ready_nodes(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.state() == NodeState::Ready)
            .count()
    }

    /// The node with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

/// A manager and workers as separate processes (or containers).
pub struct Procs {
    /// The temporary directory: data dirs and logs. Taken (kept) on failure.
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    /// A short unique word naming this cluster's Docker objects.
    pub name: String,
    /// The manager's port.
    pub port: u16,
    options: Options,
    manager: Option<Child>,
    /// Managers 1.. (`Options::managers`): each one's port and process
    /// (`None` while killed).
    others: Vec<(u16, Option<Child>)>,
    workers: Vec<Worker>,
    /// The private network and its gateway address, once created.
    network: Option<(String, String)>,
    /// The Docker engine.
    pub docker: Docker,
    /// The worker join token, read once the manager first started.
    join_token: String,
    /// The metrics ports of the manager and of each worker process, by
    /// index, with [`Options::metrics`].
    manager_metrics: Vec<u16>,
    worker_metrics: HashMap<usize, u16>,
}

/// The endpoint of a manager at `url`, verified against the cluster's `ca`.
pub fn endpoint(url: String, ca: &str) -> tonic::transport::Endpoint {
    tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect_timeout(Duration::from_secs(2))
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .domain_name(orch::auth::MANAGER_SERVER_NAME)
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )
        .expect("tls")
}

/// The client configuration a first start of the manager wrote.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClientConfig {
    pub manager: String,
    pub token: String,
    pub ca: String,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

async fn docker() -> Docker {
    Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("docker version")
}

/// Runs the docker CLI, returning its trimmed stdout; panics on failure.
pub async fn docker_cli(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Procs {
    /// Starts a manager and `workers` worker processes, and waits until
    /// every worker is ready.
    pub async fn start(options: Options, workers: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("orch-procs-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().to_path_buf();
        let name = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let mut cluster = Self {
            dir: Some(dir),
            path,
            name,
            port: free_port(),
            others: (1..options.managers).map(|_| (free_port(), None)).collect(),
            options,
            manager: None,
            workers: Vec::new(),
            network: None,
            docker: docker().await,
            join_token: String::new(),
            manager_metrics: Vec::new(),
            worker_metrics: HashMap::new(),
        };
        if cluster.options.metrics {
            cluster.manager_metrics = (0..cluster.options.managers.max(1))
                .map(|_| free_port())
                .collect();
        }
        cluster.start_manager();
        cluster.join_token = cluster
            .client()
            .await
            .get_join_token(orch::v1::GetJoinTokenRequest::default())
            .await
            .expect("join token")
            .into_inner()
            .token;
        for i in 1..cluster.options.managers {
            cluster.start_manager_at(i);
        }
        for _ in 0..workers {
            cluster.add_worker();
        }
        cluster.wait_ready(workers).await;
        cluster
    }

    /// The manager's URL from the host (manager 0's).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The URL of manager `i`.
    pub fn url_of(&self, i: usize) -> String {
        match i {
            0 => self.url(),
            i => format!("https://127.0.0.1:{}", self.others[i - 1].0),
        }
    }

    /// Every manager's URL, separated by commas, as `--manager` takes them.
    pub fn manager_urls(&self) -> String {
        (0..self.options.managers)
            .map(|i| self.url_of(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URLs of the managers that run (not killed).
    fn running_urls(&self) -> Vec<String> {
        (0..self.options.managers)
            .filter(|&i| match i {
                0 => self.manager.is_some(),
                i => self.others[i - 1].1.is_some(),
            })
            .map(|i| self.url_of(i))
            .collect()
    }

    /// Where the manager's first start wrote the client configuration, and
    /// where every orchctl of this cluster reads it (`ORCH_CONFIG`).
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }

    /// The client configuration, once the manager wrote it (waiting for it
    /// until the deadline: the manager writes it right after it starts).
    pub async fn client_config(&self) -> ClientConfig {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(text) = std::fs::read_to_string(self.config_path())
                && let Ok(config) = toml::from_str::<ClientConfig>(&text)
            {
                return config;
            }
            assert!(
                Instant::now() < deadline,
                "the manager wrote no client configuration within {DEADLINE:?}"
            );
            // Nothing to wait on but the file: look again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every node, as the manager lists them now.
    pub async fn nodes(&self) -> Vec<Node> {
        self.client()
            .await
            .list_nodes(ListNodesRequest {})
            .await
            .expect("list nodes")
            .into_inner()
            .nodes
    }

    /// Every service, as the manager lists them now (one page: tests make few).
    pub async fn services(&self) -> Vec<orch::v1::Service> {
        self.client()
            .await
            .list_services(orch::v1::ListServicesRequest::default())
            .await
            .expect("list services")
            .into_inner()
            .services
    }

    /// The worker join token.
    pub fn join_token(&self) -> &str {
        &self.join_token
    }

    /// The log file of process `name` (`manager`, `w0`, ...), as written so far.
    pub fn log_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.path.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Runs `orchctl worker` with `join_token` on a data directory of its
    /// own, as a person would, expecting it to give up: returns how it
    /// exited (panics if it still runs after `limit`).
    pub async fn worker_refused(&self, name: &str, join_token: &str, limit: Duration) -> Ran {
        let dir = self.path.join(name);
        let dir = dir.display().to_string();
        let url = self.url();
        orchctl_in(
            limit,
            &[
                "--manager",
                &url,
                "worker",
                "--data-dir",
                &dir,
                "--name",
                name,
                "--join-token",
                join_token,
            ],
            Some(&self.config_path()),
        )
        .await
    }

    /// The temporary directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn log(&self, name: &str) -> File {
        File::options()
            .create(true)
            .append(true)
            .open(self.path.join(format!("{name}.log")))
            .expect("log file")
    }

    fn worker_dir(&self, i: usize) -> PathBuf {
        self.path.join(format!("w{i}"))
    }

    /// Starts the manager on its port and data directory (again, after a kill).
    pub fn start_manager(&mut self) {
        assert!(self.manager.is_none(), "the manager is running");
        self.manager = Some(self.spawn_manager(0));
    }

    /// Starts manager `i` (0 is [`Procs::start_manager`]'s) on its port and
    /// data directory, again after a kill.
    pub fn start_manager_at(&mut self, i: usize) {
        if i == 0 {
            return self.start_manager();
        }
        assert!(self.others[i - 1].1.is_none(), "manager {i} is running");
        let child = self.spawn_manager(i);
        self.others[i - 1].1 = Some(child);
    }

    /// `kill -9` manager `i` and reap it; its data directory stays.
    pub async fn kill_manager_at(&mut self, i: usize) {
        if i == 0 {
            return self.kill_manager().await;
        }
        let mut child = self.others[i - 1].1.take().expect("the manager runs");
        child.start_kill().expect("SIGKILL the manager");
        child.wait().await.expect("reap the manager");
    }

    /// Sends `signal` (`STOP`, `CONT`) to manager `i`.
    pub async fn signal_manager(&self, i: usize, signal: &str) {
        let child = match i {
            0 => self.manager.as_ref(),
            i => self.others[i - 1].1.as_ref(),
        };
        let pid = child
            .and_then(Child::id)
            .expect("the manager runs")
            .to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid}: {sent}");
    }

    fn spawn_manager(&self, i: usize) -> Child {
        let host = if self.options.listen_all {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let (port, dir, log) = match i {
            0 => (self.port, "manager".to_owned(), "manager".to_owned()),
            i => (
                self.others[i - 1].0,
                format!("manager{i}"),
                format!("manager{i}"),
            ),
        };
        Command::new(ORCHCTL)
            .arg("manager")
            .arg("--listen")
            .arg(format!("{host}:{port}"))
            .arg("--data-dir")
            .arg(self.path.join(dir))
            .arg("--heartbeat-period")
            .arg(&self.options.heartbeat_period)
            .arg("--missed-heartbeats")
            .arg(self.options.missed_heartbeats.to_string())
            .args(&self.options.manager_args)
            .args(
                self.manager_metrics
                    .get(i)
                    .map(|p| ["--metrics-listen".to_string(), format!("127.0.0.1:{p}")])
                    .into_iter()
                    .flatten(),
            )
            .env("ORCH_CONFIG", self.config_path())
            .env_remove("ORCH_MANAGER")
            .env("ORCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(&log))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn orchctl manager")
    }

    /// Stops the manager as Ctrl-C does (SIGTERM: it commits what it holds
    /// and ends its streams) and reaps it; its data directory stays.
    pub async fn stop_manager(&mut self) {
        let mut child = self.manager.take().expect("the manager is running");
        let pid = child.id().expect("the manager's pid").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}: {sent}");
        tokio::time::timeout(DEADLINE, child.wait())
            .await
            .expect("the manager stops in time")
            .expect("reap the manager");
    }

    /// `kill -9` the manager and reap it; its data directory stays.
    pub async fn kill_manager(&mut self) {
        let mut child = self.manager.take().expect("the manager is running");
        child.start_kill().expect("SIGKILL the manager");
        child.wait().await.expect("reap the manager");
    }

    fn spawn_worker(&self, i: usize) -> Child {
        self.spawn_worker_with(i, &self.join_token)
    }

    fn spawn_worker_with(&self, i: usize, join_token: &str) -> Child {
        Command::new(ORCHCTL)
            .arg("--manager")
            .arg(self.manager_urls())
            .arg("worker")
            .arg("--data-dir")
            .arg(self.worker_dir(i))
            .arg("--name")
            .arg(format!("w{i}"))
            .arg("--cpus")
            .arg(&self.options.worker_cpus)
            .arg("--memory")
            .arg(&self.options.worker_memory)
            .arg("--join-token")
            .arg(join_token)
            .args(&self.options.worker_args)
            .args(
                self.worker_metrics
                    .get(&i)
                    .map(|p| ["--metrics-listen".to_string(), format!("127.0.0.1:{p}")])
                    .into_iter()
                    .flatten(),
            )
            .env_remove("ORCH_MANAGER")
            .env("ORCH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log(&format!("w{i}")))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn orchctl worker")
    }

    /// Starts one more worker process, named `wN`; returns N.
    pub fn add_worker(&mut self) -> usize {
        let i = self.workers.len();
        self.pick_worker_metrics(i);
        let child = self.spawn_worker(i);
        self.workers.push(Worker::Process(Some(child)));
        i
    }

    /// Starts one more worker process, named `wN`, that joins with
    /// `join_token`; returns N.
    pub fn add_worker_with(&mut self, join_token: &str) -> usize {
        let i = self.workers.len();
        self.pick_worker_metrics(i);
        let child = self.spawn_worker_with(i, join_token);
        self.workers.push(Worker::Process(Some(child)));
        i
    }

    /// With [`Options::metrics`], a metrics port for worker process `i`,
    /// kept across its restarts.
    fn pick_worker_metrics(&mut self, i: usize) {
        if self.options.metrics {
            self.worker_metrics.entry(i).or_insert_with(free_port);
        }
    }

    /// Where the manager serves its metrics ([`Options::metrics`]).
    pub fn manager_metrics(&self) -> std::net::SocketAddr {
        self.manager_metrics_of(0)
    }

    /// Where manager `i` serves its metrics ([`Options::metrics`]).
    pub fn manager_metrics_of(&self, i: usize) -> std::net::SocketAddr {
        let port = *self
            .manager_metrics
            .get(i)
            .expect("started with Options::metrics");
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Where worker process `i` serves its metrics ([`Options::metrics`]).
    pub fn worker_metrics(&self, i: usize) -> std::net::SocketAddr {
        let port = self.worker_metrics[&i];
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Waits (until `limit`) for worker process `i` to exit by itself;
    /// returns its exit code.
    pub async fn wait_worker_exit(&mut self, i: usize, limit: Duration) -> Option<i32> {
        let Worker::Process(slot) = &mut self.workers[i] else {
            panic!("worker {i} is a container");
        };
        let child = slot.as_mut().expect("worker is running");
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .unwrap_or_else(|_| panic!("worker {i} still runs after {limit:?}"))
            .expect("reap the worker");
        *slot = None;
        status.code()
    }

    /// `kill -9` worker `i` and reap it. Its containers keep running.
    pub async fn kill_worker(&mut self, i: usize) {
        let Worker::Process(slot) = &mut self.workers[i] else {
            panic!("worker {i} is a container");
        };
        let mut child = slot.take().expect("worker is running");
        child.start_kill().expect("SIGKILL the worker");
        child.wait().await.expect("reap the worker");
    }

    /// Starts worker `i` again on its data directory: the same node.
    pub fn restart_worker(&mut self, i: usize) {
        let child = self.spawn_worker(i);
        let Worker::Process(slot) = &mut self.workers[i] else {
            panic!("worker {i} is a container");
        };
        assert!(slot.is_none(), "worker {i} is running");
        *slot = Some(child);
    }

    /// Creates this cluster's private network (for container workers);
    /// returns the gateway address, through which containers reach the host.
    pub async fn create_network(&mut self) -> String {
        let net = format!("orch-test-{}", self.name);
        docker_cli(&["network", "create", &net]).await;
        let gateway = docker_cli(&[
            "network",
            "inspect",
            &net,
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .await;
        assert!(!gateway.is_empty(), "network {net} has no gateway");
        self.network = Some((net, gateway.clone()));
        gateway
    }

    /// Starts one more worker, as a container on the private network, running
    /// orchctl from [`orchctl_image`] with the Docker socket mounted; returns
    /// its index. Needs [`Options::listen_all`] and [`Procs::create_network`].
    pub async fn add_container_worker(&mut self) -> usize {
        assert!(
            self.options.listen_all,
            "the manager must listen on 0.0.0.0"
        );
        let (net, gateway) = self.network.clone().expect("create_network first");
        let image = orchctl_image().await;
        let i = self.workers.len();
        let data = self.worker_dir(i);
        std::fs::create_dir_all(&data).expect("worker data dir");
        let container = format!("orch-test-{}-w{i}", self.name);
        let manager = format!("https://{gateway}:{}", self.port);
        let volume = format!("{}:/data", data.display());
        docker_cli(&[
            "run",
            "-d",
            "--name",
            &container,
            "--network",
            &net,
            "--label",
            "orch-test.harness=procs",
            "-e",
            "ORCH_LOG=info",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &volume,
            &image,
            "--manager",
            &manager,
            "worker",
            "--data-dir",
            "/data",
            "--name",
            &format!("w{i}"),
            "--cpus",
            &self.options.worker_cpus,
            "--memory",
            &self.options.worker_memory,
            "--join-token",
            &self.join_token,
        ])
        .await;
        self.workers.push(Worker::Container(container));
        i
    }

    fn container(&self, i: usize) -> (&str, &str) {
        let Worker::Container(c) = &self.workers[i] else {
            panic!("worker {i} is not a container");
        };
        let (net, _) = self.network.as_ref().expect("network");
        (c, net)
    }

    /// `docker network disconnect`s container worker `i`: it keeps running,
    /// cut off from the manager.
    pub async fn disconnect(&self, i: usize) {
        let (c, net) = self.container(i);
        docker_cli(&["network", "disconnect", net, c]).await;
    }

    /// `docker network connect`s container worker `i` back.
    pub async fn connect(&self, i: usize) {
        let (c, net) = self.container(i);
        docker_cli(&["network", "connect", net, c]).await;
    }

    /// The node id worker `i` keeps in its data directory.
    pub fn node_id(&self, i: usize) -> String {
        let file = self.worker_dir(i).join(orch_worker::agent::NODE_ID_FILE);
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .to_string()
    }

    /// The node ids of every worker that has registered.
    pub fn node_ids(&self) -> Vec<String> {
        node_ids(&self.path, self.workers.len())
    }

    /// The index of the worker whose node is `node_id`.
    pub fn worker_of(&self, node_id: &str) -> usize {
        (0..self.workers.len())
            .find(|&i| self.node_id(i) == node_id)
            .unwrap_or_else(|| panic!("no worker has node {node_id}"))
    }

    /// A client of the manager with the admin token, waiting (until the
    /// deadline) for it to listen.
    pub async fn client(&self) -> Client {
        let config = self.client_config().await;
        self.client_with(Some(&config.token)).await
    }

    /// A client of the manager that sends `token` (or none).
    pub async fn client_with(&self, token: Option<&str>) -> Client {
        let config = self.client_config().await;
        let bearer = orch::auth::Bearer::new(token).expect("token");
        let deadline = Instant::now() + DEADLINE;
        // Any manager that runs serves a client (a follower forwards).
        loop {
            let mut failed = None;
            for url in self.running_urls() {
                match endpoint(url, &config.ca).connect().await {
                    Ok(c) => return ClusterClient::with_interceptor(c, bearer),
                    Err(e) => failed = Some(e),
                }
            }
            assert!(
                Instant::now() < deadline,
                "cannot connect to the manager: {failed:?}"
            );
            // Nothing to wait on but the port: retry shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Submits one task; returns it as the manager acknowledged it.
    pub async fn submit(&self, spec: TaskSpec) -> Task {
        self.client()
            .await
            .submit_task(SubmitTaskRequest { spec: Some(spec) })
            .await
            .expect("submit")
            .into_inner()
            .task
            .expect("task")
    }

    /// The busybox test image (see [`images::busybox`]), built if needed.
    pub async fn busybox(&self) -> String {
        images::busybox(&self.docker)
            .await
            .expect("build test image")
    }

    /// Submits `specs` one by one and waits until every task runs; returns
    /// them running, in order.
    pub async fn run_tasks(&self, specs: Vec<TaskSpec>) -> Vec<Task> {
        let n = specs.len();
        let mut ids = Vec::new();
        for spec in specs {
            ids.push(self.submit(spec).await.id);
        }
        self.wait_for(&format!("{n} tasks running"), |v| {
            ids.iter()
                .map(|id| {
                    v.task(id)
                        .filter(|t| t.state() == TaskState::Running)
                        .cloned()
                })
                .collect::<Option<Vec<Task>>>()
        })
        .await
    }

    /// Waits until every task in `all` that ran on node `from` runs as a
    /// new attempt on another node, and every other task still runs as
    /// before; returns every task as it is then.
    pub async fn wait_moved(&self, all: &[Task], from: &str) -> Vec<Task> {
        self.wait_for(
            &format!("the tasks of node {from} running elsewhere"),
            |v| {
                all.iter()
                    .map(|before| {
                        let now = v.task(&before.id)?;
                        let ok = if before.node_id == from {
                            now.state() == TaskState::Running
                                && now.attempt > before.attempt
                                && now.node_id != from
                        } else {
                            now.state() == TaskState::Running && now.attempt == before.attempt
                        };
                        ok.then(|| now.clone())
                    })
                    .collect::<Option<Vec<Task>>>()
            },
        )
        .await
    }

    /// A subscription to the manager's `WatchEvents`: every change from now on.
    pub async fn watch(&self) -> Streaming<Event> {
        self.client()
            .await
            .watch_events(WatchEventsRequest::default())
            .await
            .expect("watch events")
            .into_inner()
    }

    /// Runs the client `orchctl --manager <this manager> ARGS` as a person
    /// would; returns how it exited and what it printed. Panics if it has
    /// not exited within `limit`.
    pub async fn orchctl_within(&self, limit: Duration, args: &[&str]) -> Ran {
        // Several managers: every one that runs, as a person would list them.
        let url = self.running_urls().join(",");
        let mut all = vec!["--manager", url.as_str()];
        all.extend_from_slice(args);
        orchctl_in(limit, &all, Some(&self.config_path())).await
    }

    /// The command `orchctl --manager <this manager> ARGS` with this
    /// cluster's client configuration and none from the environment, its
    /// stdout and stderr piped, killed when dropped: for a test to start and
    /// read as it runs.
    pub fn orchctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(ORCHCTL);
        cmd.arg("--manager")
            .arg(self.running_urls().join(","))
            .args(args)
            .env("ORCH_CONFIG", self.config_path())
            .env_remove("ORCH_TOKEN")
            .env_remove("ORCH_CA")
            .env_remove("ORCH_MANAGER")
            .env_remove("ORCH_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs the client `orchctl --manager <this manager> -o json ARGS` as a
    /// person would, and returns what it printed, parsed. Panics unless it
    /// exits 0 within the deadline.
    pub async fn orchctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let mut cmd = self.orchctl_command(&all);
        let out = tokio::time::timeout(DEADLINE, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("orchctl {args:?} did not finish within {DEADLINE:?}"))
            .expect("run orchctl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "orchctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("orchctl {args:?} printed no JSON ({e}): {stdout}"))
    }

    /// Every task and node, as the manager lists them now.
    pub async fn view(client: &mut Client) -> Result<View, tonic::Status> {
        let mut tasks = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_tasks(ListTasksRequest {
                    page_size: 10_000,
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            tasks.extend(page.tasks);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let nodes = client
            .list_nodes(ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        Ok(View { tasks, nodes })
    }

    /// Waits until `check` returns something for the manager's view,
    /// re-reading the view after every event. Survives a manager restart
    /// (it reconnects). Panics after `deadline`, with `what` and the last view.
    pub async fn wait_for_within<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut check: impl FnMut(&View) -> Option<T>,
    ) -> T {
        let until = Instant::now() + deadline;
        let mut last = None;
        loop {
            // Subscribe first, then read: no change falls in between.
            let attempt = async {
                let mut client = self.client().await;
                let mut events = client
                    .watch_events(WatchEventsRequest::default())
                    .await?
                    .into_inner();
                loop {
                    let view = Self::view(&mut client).await?;
                    if let Some(found) = check(&view) {
                        return Ok::<_, tonic::Status>(found);
                    }
                    last = Some(view);
                    if events.message().await?.is_none() {
                        return Err(tonic::Status::unavailable("event stream ended"));
                    }
                }
            };
            match tokio::time::timeout_at(until, attempt).await {
                Ok(Ok(found)) => return found,
                // The manager went away (a test killed it): connect again.
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => panic!(
                    "{what}: not within {deadline:?}; the manager last said {last:#?}; logs in {}",
                    self.path.display()
                ),
            }
            if Instant::now() > until {
                panic!("{what}: not within {deadline:?}; last view: {last:#?}");
            }
        }
    }

    /// [`Procs::wait_for_within`] with the harness [`DEADLINE`].
    pub async fn wait_for<T>(&self, what: &str, check: impl FnMut(&View) -> Option<T>) -> T {
        self.wait_for_within(what, DEADLINE, check).await
    }

    /// Waits until at least `n` nodes are ready.
    pub async fn wait_ready(&self, n: usize) {
        self.wait_for(&format!("{n} ready nodes"), |v| {
            (v.ready_nodes() >= n).then_some(())
        })
        .await;
    }

    /// Waits until worker `i`'s node is ready.
    pub async fn wait_node_ready(&self, i: usize) {
        let node = self.node_id(i);
        self.wait_for(&format!("node {node} ready"), |v| {
            (v.node(&node)?.state() == NodeState::Ready).then_some(())
        })
        .await;
    }

    /// Waits until task `id` satisfies `done`; returns it.
    pub async fn wait_task(&self, id: &str, done: impl Fn(&Task) -> bool) -> Task {
        self.wait_for(&format!("task {id}"), |v| {
            v.task(id).filter(|t| done(t)).cloned()
        })
        .await
    }

    /// The running containers of this cluster's tasks (label `orch.task-id`,
    /// on this cluster's nodes), sorted.
    pub async fn running_task_containers(&self) -> Vec<TaskContainer> {
        running_task_containers(&self.docker, &self.node_ids()).await
    }

    /// Waits (on Docker's events, with the deadline) until the running task
    /// containers are exactly one per task in `tasks`, for the task's current
    /// attempt on its current node; then asserts it, so a failure shows both.
    pub async fn assert_exactly_running(&self, tasks: &[Task]) {
        let mut want: Vec<(String, u64, String)> = tasks
            .iter()
            .map(|t| (t.id.clone(), t.attempt, t.node_id.clone()))
            .collect();
        want.sort();
        let have = self.wait_containers(false, &want).await;
        assert_eq!(
            have,
            want,
            "running task containers (task, attempt, node) vs the tasks that should run; logs in {}",
            self.path.display()
        );
    }

    /// Waits (as [`Procs::assert_exactly_running`]) until this cluster's
    /// nodes have no task container at all, running or exited; then asserts it.
    pub async fn assert_no_task_containers(&self) {
        self.assert_task_containers(&[]).await;
    }

    /// Waits (as [`Procs::assert_exactly_running`]) until this cluster's
    /// task containers, running or exited (kept for their output), are
    /// exactly `want` as (task, attempt, node); then asserts it.
    pub async fn assert_task_containers(&self, want: &[(String, u64, String)]) {
        let mut want = want.to_vec();
        want.sort();
        let have = self.wait_containers(true, &want).await;
        assert_eq!(
            have,
            want,
            "task containers (task, attempt, node), running or not; logs in {}",
            self.path.display()
        );
    }

    /// Waits on Docker's events, until the deadline, for this cluster's task
    /// containers (`all`: exited ones too) to be `want`, as sorted (task,
    /// attempt, node); returns them as they were last.
    async fn wait_containers(
        &self,
        all: bool,
        want: &[(String, u64, String)],
    ) -> Vec<(String, u64, String)> {
        let filters = HashMap::from([("type", vec!["container".to_string()])]);
        let mut events = self.docker.events(Some(
            EventsOptionsBuilder::default().filters(&filters).build(),
        ));
        let until = Instant::now() + DEADLINE;
        loop {
            let have: Vec<(String, u64, String)> =
                task_containers(&self.docker, &self.node_ids(), all)
                    .await
                    .into_iter()
                    .map(|c| (c.task_id, c.attempt, c.node_id))
                    .collect();
            if have == want || Instant::now() > until {
                return have;
            }
            // The engine's list can lag its events a little: look again
            // after a short while even if no event comes.
            let _ = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
        }
    }
}

/// Starts `orchctl dev ARGS` with its client configuration in `dir` (never
/// the user's own) and waits until it says orch runs; returns it and that
/// line. Its stderr is read on to the end, so its logs never fill the pipe.
pub async fn start_dev(dir: &Path, args: &[&str]) -> (Child, String) {
    let mut dev = Command::new(ORCHCTL)
        .arg("dev")
        .args(args)
        .env("ORCH_CONFIG", dir.join("config.toml"))
        .env_remove("ORCH_MANAGER")
        .env_remove("ORCH_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn orchctl dev");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        dev.stderr.take().expect("stderr"),
    ));
    let running = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if line.contains("orch is running") {
                return line;
            }
        }
        panic!("orchctl dev ended without running");
    })
    .await
    .expect("orchctl dev runs in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (dev, running)
}

/// How one run of the orchctl client ended, and what it printed.
#[derive(Debug)]
pub struct Ran {
    /// The exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Asserts a zero exit; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "orchctl failed: {self:#?}");
        &self.stdout
    }

    /// Asserts the shape of every refusal: a non-zero exit, nothing on
    /// stdout, and exactly one line on stderr, starting `orchctl: `.
    /// Returns that line.
    #[track_caller]
    pub fn refused(&self) -> &str {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a non-zero exit: {self:#?}"
        );
        assert_eq!(self.stdout, "", "nothing on stdout when refused: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "exactly one line on stderr: {self:#?}");
        assert!(
            lines[0].starts_with("orchctl: "),
            "stderr starts with `orchctl: `: {self:#?}"
        );
        lines[0]
    }
}

/// Runs the client `orchctl ARGS`, without the orch variables of the
/// environment it runs in; panics if it has not exited within `limit`.
pub async fn orchctl_within(limit: Duration, args: &[&str]) -> Ran {
    orchctl_in(limit, args, None).await
}

/// Runs `orchctl ARGS` with `config` as its client configuration (none: a
/// file that does not exist, so the user's own is never read).
pub async fn orchctl_in(limit: Duration, args: &[&str], config: Option<&Path>) -> Ran {
    let mut cmd = Command::new(ORCHCTL);
    let none = std::env::temp_dir().join("orch-tests-no-config.toml");
    cmd.args(args)
        .env("ORCH_CONFIG", config.unwrap_or(&none))
        .env_remove("ORCH_TOKEN")
        .env_remove("ORCH_CA")
        .env_remove("ORCH_MANAGER")
        .env_remove("ORCH_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("orchctl {args:?} did not finish within {limit:?}"))
        .expect("run orchctl");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The node ids in the first `workers` worker data directories of `dir`.
fn node_ids(dir: &Path, workers: usize) -> Vec<String> {
    (0..workers)
        .filter_map(|i| {
            std::fs::read_to_string(
                dir.join(format!("w{i}"))
                    .join(orch_worker::agent::NODE_ID_FILE),
            )
            .ok()
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The running task containers on `nodes`, sorted.
pub async fn running_task_containers(docker: &Docker, nodes: &[String]) -> Vec<TaskContainer> {
    task_containers(docker, nodes, false).await
}

/// The task containers on `nodes` (`all`: exited ones too), sorted.
async fn task_containers(docker: &Docker, nodes: &[String], all: bool) -> Vec<TaskContainer> {
    let mut found: Vec<TaskContainer> = containers::on_nodes(docker, nodes, all)
        .await
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels?;
            Some(TaskContainer {
                task_id: labels.get(orch::labels::TASK_ID)?.clone(),
                attempt: labels.get(orch::labels::ATTEMPT)?.parse().ok()?,
                node_id: labels.get(orch::labels::NODE_ID)?.clone(),
                container_id: c.id?,
            })
        })
        .collect();
    found.sort();
    found
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Procs {
    /// Kills every process and removes this cluster's containers and
    /// network, whether the test passed or not. After a failure it prints
    /// where the logs are, and their tails, and keeps the directory.
    fn drop(&mut self) {
        let mut children: Vec<Child> = self.manager.take().into_iter().collect();
        children.extend(self.others.iter_mut().filter_map(|(_, c)| c.take()));
        let mut containers = Vec::new();
        for w in &mut self.workers {
            match w {
                Worker::Process(c) => children.extend(c.take()),
                Worker::Container(name) => containers.push(name.clone()),
            }
        }
        for child in &mut children {
            let _ = child.start_kill();
        }
        let failed = std::thread::panicking();
        let path = self.path.clone();
        let nodes = node_ids(&path, self.workers.len());
        let network = self.network.take().map(|(n, _)| n);
        // The test's runtime may be going down: clean up from a thread with
        // its own runtime.
        let cleanup_path = path.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                for mut child in children {
                    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                }
                for c in &containers {
                    if failed {
                        let logs = Command::new("docker")
                            .args(["logs", c])
                            .output()
                            .await
                            .map(|o| o.stderr)
                            .unwrap_or_default();
                        let name = c.rsplit('-').next().unwrap_or("worker");
                        let _ = std::fs::write(cleanup_path.join(format!("{name}.log")), logs);
                    }
                    let _ = Command::new("docker")
                        .args(["rm", "-f", c])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .await;
                }
                let docker = docker().await;
                containers::remove_on_nodes(&docker, &nodes).await;
                if let Some(net) = network {
                    let _ = Command::new("docker")
                        .args(["network", "rm", &net])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .await;
                }
            });
        })
        .join();
        if failed {
            eprintln!("--- orch process logs in {} (kept)", path.display());
            let mut logs: Vec<PathBuf> = std::fs::read_dir(&path)
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
            logs.sort();
            for log in logs {
                eprintln!("--- {} (last 40 lines)\n{}", log.display(), tail(&log, 40));
            }
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

static IMAGE: OnceCell<String> = OnceCell::const_new();

/// An image that runs orchctl: `FROM scratch` with the orchctl binary under
/// test and the shared libraries `ldd` says it needs, each at its path.
/// Built at most once per process, and not at all if the engine already has
/// it for this very binary (same size and modification time). Returns its tag.
pub async fn orchctl_image() -> String {
    IMAGE.get_or_init(build_orchctl_image).await.clone()
}

async fn build_orchctl_image() -> String {
    let meta = std::fs::metadata(ORCHCTL).expect("orchctl binary");
    let modified = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let stamp = format!("{}-{}", meta.len(), modified.as_nanos());
    let label = "orch-test.orchctl";
    let old = Command::new("docker")
        .args([
            "image",
            "inspect",
            "-f",
            &format!("{{{{.Id}}}} {{{{index .Config.Labels \"{label}\"}}}}"),
            ORCHCTL_IMAGE,
        ])
        .output()
        .await
        .expect("docker image inspect");
    let old = String::from_utf8_lossy(&old.stdout).trim().to_string();
    let old_id = old.split(' ').next().unwrap_or_default().to_string();
    if old.ends_with(&format!(" {stamp}")) {
        return ORCHCTL_IMAGE.to_string();
    }

    let ldd = Command::new("ldd")
        .arg(ORCHCTL)
        .output()
        .await
        .expect("ldd orchctl");
    let ldd = String::from_utf8_lossy(&ldd.stdout).to_string();
    // Lines look like `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`
    // or `/lib64/ld-linux-x86-64.so.2 (0x...)`; vdso has no file.
    let libs: Vec<PathBuf> = ldd
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p);
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    assert!(
        libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
        "ldd found no libc: {ldd}"
    );

    let context = tempfile::tempdir().expect("build context");
    let rootfs = context.path().join("rootfs");
    let mut lib_dirs = Vec::new();
    for lib in &libs {
        let target = rootfs.join(lib.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("lib dir");
        // Follows symlinks: the file lands at the path the loader asks for.
        std::fs::copy(lib, &target).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
        let dir = lib.parent().expect("parent").display().to_string();
        if !lib_dirs.contains(&dir) {
            lib_dirs.push(dir);
        }
    }
    std::fs::copy(ORCHCTL, rootfs.join("orchctl")).expect("copy orchctl");
    let dockerfile = format!(
        "FROM scratch\n\
         COPY rootfs/ /\n\
         ENV LD_LIBRARY_PATH={}\n\
         LABEL {label}=\"{stamp}\"\n\
         ENTRYPOINT [\"/orchctl\"]\n",
        lib_dirs.join(":")
    );
    std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    let context_path = context.path().display().to_string();
    docker_cli(&["build", "-q", "-t", ORCHCTL_IMAGE, &context_path]).await;
    // The image this one replaced is now untagged: remove it (unless a
    // container still uses it).
    if !old_id.is_empty() {
        let _ = Command::new("docker")
            .args(["rmi", &old_id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    ORCHCTL_IMAGE.to_string()
}

/// When `event` happened, by the manager's clock.
pub fn event_time(event: &Event) -> std::time::SystemTime {
    event
        .time
        .as_ref()
        .map(orch::time::system_time)
        .unwrap_or(std::time::UNIX_EPOCH)
}

// ---- services -------------------------------------------------------------

/// Writes `text` to `name` in `dir`; returns its path as text.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the manifest");
    path.display().to_string()
}

/// Whether a task runs and should.
pub fn runs(t: &Task) -> bool {
    t.state() == orch::v1::TaskState::Running
        && t.desired_state() == orch::v1::DesiredState::Running
}

/// The tasks of service `name`, in the order they were submitted.
pub fn tasks_of<'a>(v: &'a View, name: &str) -> Vec<&'a Task> {
    v.tasks.iter().filter(|t| t.service == name).collect()
}

/// The tasks of service `name` that run, if exactly `n` run (and should)
/// and every other task of it has ended; sorted by slot (then node).
pub fn settled(v: &View, name: &str, n: usize) -> Option<Vec<Task>> {
    let tasks = tasks_of(v, name);
    let mut running: Vec<Task> = tasks
        .iter()
        .filter(|t| runs(t))
        .map(|t| (*t).clone())
        .collect();
    let rest_ended = tasks
        .iter()
        .all(|t| runs(t) || orch::task_state::is_terminal(t.state()));
    running.sort_by(|a, b| (a.slot, &a.node_id).cmp(&(b.slot, &b.node_id)));
    (running.len() == n && rest_ended).then_some(running)
}

impl Procs {
    /// Waits until exactly `n` tasks of service `name` run and the rest have
    /// ended; then checks, on Docker, that exactly their containers run.
    /// Returns them, sorted by slot (then node).
    pub async fn wait_running(&self, name: &str, n: usize) -> Vec<Task> {
        let tasks = self
            .wait_for(&format!("exactly {n} tasks of {name} running"), |v| {
                settled(v, name, n)
            })
            .await;
        self.assert_exactly_running(&tasks).await;
        tasks
    }
}
