//! The command line, as clap reads it. Values people type (sizes, cpus,
//! ports, `K=V` pairs) are parsed here, so a typo is refused before anything
//! is sent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use orch::quantity;
use orch_manager::scheduler::Strategy;

/// orch: a container orchestrator. Run tasks as containers on a cluster of workers.
#[derive(Debug, Parser)]
#[command(
    name = "orchctl",
    version,
    about = "orch: a container orchestrator. Run tasks as containers on a cluster of workers.",
    propagate_version = true
)]
pub struct Cli {
    /// The manager's URL (default: the client configuration's, else
    /// https://127.0.0.1:7070). Several managers (on etcd): their URLs
    /// separated by commas; a client uses the first that answers, a worker
    /// finds the one that leads.
    #[arg(long, global = true, env = "ORCH_MANAGER")]
    pub manager: Option<String>,

    /// The cluster's CA certificate (PEM file) to verify the manager against
    /// (default: the client configuration's).
    #[arg(long, global = true, env = "ORCH_CA")]
    pub ca: Option<PathBuf>,

    /// The client token (default: the client configuration's).
    #[arg(long, global = true, env = "ORCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Plain HTTP, no TLS: only with a manager (and workers) started with
    /// --insecure, on a network you trust.
    #[arg(long, global = true)]
    pub insecure: bool,

    /// Output format of read commands.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// Log format of the daemons (`dev`, `manager`, `worker`); which logs,
    /// by `ORCH_LOG` (default `info`; for example `ORCH_LOG=debug` or
    /// `ORCH_LOG=orch_manager=debug,info`).
    #[arg(long, global = true, env = "ORCH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// Stable JSON for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a manager and one local worker in one process (redb store in ./orch-data).
    Dev(DevArgs),
    /// Start the manager.
    Manager(ManagerArgs),
    /// Start a worker that registers with the manager (--manager) and runs tasks with Docker.
    Worker(WorkerArgs),
    /// Submit a task and print its id.
    Run(RunArgs),
    /// Stop a task: SIGTERM, then SIGKILL after its grace period.
    Stop(StopArgs),
    /// List tasks, or show one.
    #[command(visible_alias = "ps")]
    Status(StatusArgs),
    /// List nodes with capacity, allocation and usage.
    Nodes,
    /// List the managers of the cluster: which one leads, since when.
    Managers,
    /// Drain or activate a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Follow task, node and service changes as they happen; reconnects and
    /// resumes (with no gap) if the manager restarts.
    Events(EventsArgs),
    /// Print a task's output (stdout and stderr), or every replica's of a service.
    Logs(LogsArgs),
    /// Create or update services from a YAML file, and follow their rollouts.
    Apply(ApplyArgs),
    /// Create, list, inspect, scale, roll back and remove services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Print a shell completion script: `source <(orchctl completion bash)`.
    Completion(CompletionArgs),
    /// Create, list and revoke client tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print, rotate or make the token workers join with (admin).
    JoinToken(JoinTokenArgs),
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// How the daemons write their logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// First print the kept events after this sequence number (the last one
    /// you saw; 0 for every event kept), then follow.
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
    /// Only this task's events (an id, a unique id prefix or a name).
    #[arg(long)]
    pub task: Option<String>,
    /// Only this service's events and its tasks'.
    #[arg(long)]
    pub service: Option<String>,
    /// Only this node's events and those of the tasks on it (an id, a unique
    /// id prefix or a name).
    #[arg(long)]
    pub node: Option<String>,
    /// Only events of this kind; repeat for more.
    #[arg(long = "kind", value_enum)]
    pub kinds: Vec<EventKindArg>,
    /// How long to keep trying to reconnect to a manager that went away
    /// before giving up (0s: do not reconnect).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub reconnect_for: Duration,
}

/// The kinds of `orchctl events --kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EventKindArg {
    /// A task's state changes.
    Task,
    /// A node's state changes.
    Node,
    /// A service's changes and rollout steps.
    Service,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a client token and print it (once: the manager keeps only its hash).
    Create(TokenCreateArgs),
    /// List the client tokens.
    Ls,
    /// Revoke a client token: every call with it is refused from then on.
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// What the token may do: read-only (list, watch), operator (also submit,
    /// stop, services) or admin (also nodes and tokens).
    #[arg(long, value_parser = parse_role)]
    pub role: orch::auth::Role,
    /// How long it works, like 12h or 30d (default: until revoked).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// A name for people.
    #[arg(long, default_value = "")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// The token's id, as `orchctl token ls` shows it.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JoinRole {
    /// A worker node.
    Worker,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Who joins with it.
    #[arg(value_enum)]
    pub role: JoinRole,
    /// Replace the current token (and every extra one): they are refused from then on.
    #[arg(long)]
    pub rotate: bool,
    /// Make an extra token that works this long, like 1h.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Make an extra token that works this many times.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub uses: Option<u32>,
    /// Print the token only.
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_role(s: &str) -> Result<orch::auth::Role, String> {
    s.parse()
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse::<Strategy>().map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        // humantime's own words ("expected number at 0") mean nothing here.
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 1m"))
}

fn parse_bytes(s: &str) -> Result<i64, String> {
    quantity::parse_bytes(s).map_err(|e| e.to_string())
}

fn parse_cpus(s: &str) -> Result<i64, String> {
    quantity::parse_milli_cpus(s).map_err(|e| e.to_string())
}

/// A `K=V` pair.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// A published port: `HOST:CONTAINER` or `HOST:CONTAINER/udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub host: u32,
    pub container: u32,
    pub udp: bool,
}

fn parse_port(s: &str) -> Result<Port, String> {
    let bad = || format!("{s:?} is not HOST:CONTAINER[/tcp|/udp], for example 8080:80");
    let (ports, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, proto),
        None => (s, "tcp"),
    };
    let udp = match proto {
        "tcp" => false,
        "udp" => true,
        _ => return Err(bad()),
    };
    let (host, container) = ports.split_once(':').ok_or_else(bad)?;
    let port = |p: &str| {
        p.parse::<u32>()
            .ok()
            .filter(|p| (1..=65535).contains(p))
            .ok_or_else(|| format!("{p:?} in {s:?} is not a port (1-65535)"))
    };
    Ok(Port {
        host: port(host)?,
        container: port(container)?,
        udp,
    })
}

/// `--store`: an etcd URL (the manager checks the rest of it).
fn parse_store(s: &str) -> Result<String, String> {
    if s.starts_with("etcd://") {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a store: write etcd://HOST:PORT[,HOST:PORT...][/PREFIX], or leave --store out for the redb file in --data-dir"
        ))
    }
}

#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where the manager keeps its state (a redb file) or, with --store
    /// etcd://..., what it keeps of its own (its server certificate and the
    /// id of the cluster it belongs to).
    #[arg(long, default_value = "./orch-data")]
    pub data_dir: PathBuf,
    /// Keep the cluster's state in etcd, etcd://HOST:PORT[,HOST:PORT...][/PREFIX],
    /// to run several managers on it (default: the redb file in --data-dir).
    /// Needs an orchctl built with `--features etcd`.
    #[arg(long, value_name = "URL", value_parser = parse_store)]
    pub store: Option<String>,
    /// With --store etcd://...: etcd's CA (PEM); the manager speaks TLS to
    /// etcd and trusts the members whose certificates it signed. Without
    /// it, plain HTTP, to members on loopback only (see --etcd-plaintext).
    #[arg(long, value_name = "FILE", requires = "store")]
    pub etcd_ca: Option<PathBuf>,
    /// With --etcd-ca: the manager's client certificate (PEM), for an etcd
    /// started with --client-cert-auth.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// With --etcd-cert: the certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// With --store etcd://...: the etcd user the manager is, where etcd
    /// has authentication on.
    #[arg(long, value_name = "NAME", requires_all = ["store", "etcd_password_file"])]
    pub etcd_user: Option<String>,
    /// With --etcd-user: a file whose first line is the user's password.
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// With --store etcd://...: speak plain HTTP to etcd members off
    /// loopback, on a network you trust (etcd holds the cluster's CA key).
    #[arg(long, requires = "store", conflicts_with = "etcd_ca")]
    pub etcd_plaintext: bool,
    /// With --store etcd://...: how long a manager's lease lasts, the
    /// longest a dead leader holds the cluster before another manager is
    /// elected (whole seconds, at least 2s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_lease: Duration,
    /// With --store etcd://...: how long a new leader gives each worker to
    /// come back to it before declaring its node down and moving its tasks.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub failover_grace: Duration,
    /// How tasks are placed on nodes: round-robin, epvm, best-fit or spread.
    #[arg(long, default_value = "spread", value_parser = parse_strategy)]
    pub scheduler: Strategy,
    /// How often workers send heartbeats.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_period: Duration,
    /// A node is down after this many heartbeat periods without one.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub missed_heartbeats: u32,
    /// A host name or address clients and workers reach this manager at, for
    /// its certificate; repeat for more (the loopback names, the listen
    /// address and the host name are always in it).
    #[arg(long)]
    pub advertise: Vec<String>,
    /// How long node certificates are valid (workers renew them at 50-80%).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub node_cert_ttl: Duration,
    /// Make a new admin token at this start and write the client
    /// configuration again (for one that was lost); older tokens keep working.
    #[arg(long)]
    pub new_admin_token: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics, like 127.0.0.1:9464
    /// (plain HTTP, no token: keep it off networks you do not trust). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// How many of the newest events the manager keeps for `orchctl events
    /// --since` (and for watchers that fell behind) to replay.
    #[arg(long, default_value_t = orch_manager::DEFAULT_EVENTS_KEPT, value_parser = clap::value_parser!(u64).range(1..))]
    pub events_kept: u64,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The task (id, id prefix or name) or the service (name).
    pub target: String,
    /// Keep printing new output. A task's ends when its attempt ends, and
    /// orchctl exits with the attempt's exit code (1 if it has none); a
    /// service's follows its replicas and their replacements until Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each attempt's output, of both streams (default: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub tail: u32,
    /// Only output written within this long back from now, like 10m.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Start each line with the time it was written (RFC 3339).
    #[arg(short, long)]
    pub timestamps: bool,
    /// The attempt of the task, from 1 (default: the current one).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub attempt: Option<u64>,
    /// Only what the container wrote to stderr.
    #[arg(long, conflicts_with = "stdout")]
    pub stderr: bool,
    /// Only what the container wrote to stdout.
    #[arg(long)]
    pub stdout: bool,
}

/// What a worker keeps of its containers' output: the flags `orchctl
/// worker` and `orchctl dev` share.
#[derive(Debug, Args)]
pub struct LogKeepArgs {
    /// How many ended attempts of each task the worker keeps the container
    /// (and so the output) of; 0 removes a container as soon as it ends.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub log_keep_attempts: usize,
    /// The longest an ended attempt's container is kept.
    #[arg(long, value_name = "DUR", default_value = "1h", value_parser = parse_duration)]
    pub log_retention: Duration,
    /// The size at which a container's log file is rotated, like 10Mi.
    #[arg(long, value_name = "SIZE", default_value = "10Mi", value_parser = parse_bytes)]
    pub log_max_size: i64,
    /// How many log files a container keeps (so at most SIZE × N of output).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub log_max_files: u32,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The node's name (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Where the worker keeps its node id, so a restarted worker is the same node.
    #[arg(long, default_value = "./orch-worker")]
    pub data_dir: PathBuf,
    /// CPUs offered to tasks (default: every core).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<i64>,
    /// Memory offered to tasks, like 4Gi (default: all of it).
    #[arg(long, value_parser = parse_bytes)]
    pub memory: Option<i64>,
    /// Disk offered to tasks, like 100Gi (default: the size of Docker's disk).
    #[arg(long, value_parser = parse_bytes)]
    pub disk: Option<i64>,
    /// A node label, KEY=VALUE; repeat for more.
    #[arg(long = "label", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// An address people can reach this host at (informational).
    #[arg(long, default_value = "")]
    pub address: String,
    /// The join token (`orchctl join-token worker` prints it); needed only
    /// until the worker has its certificate in --data-dir.
    #[arg(long, env = "ORCH_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    #[command(flatten)]
    pub logs: LogKeepArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics, like 127.0.0.1:9465
    /// (plain HTTP, no token). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address the manager listens on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where state is kept: the manager's store and the worker's node id.
    #[arg(long, default_value = "./orch-data")]
    pub data_dir: PathBuf,
    /// How tasks are placed: round-robin, epvm, best-fit or spread.
    #[arg(long, default_value = "spread", value_parser = parse_strategy)]
    pub scheduler: Strategy,
    /// A label of the local worker's node, KEY=VALUE; repeat for more.
    #[arg(long = "label", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub logs: LogKeepArgs,
    /// Serve the manager's and the worker's Prometheus metrics at
    /// http://ADDR/metrics, like 127.0.0.1:9464 (plain HTTP, no token). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// How many of the newest events the manager keeps for replay.
    #[arg(long, default_value_t = orch_manager::DEFAULT_EVENTS_KEPT, value_parser = clap::value_parser!(u64).range(1..))]
    pub events_kept: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Restart {
    /// Never restart.
    Never,
    /// Restart when the container exits non-zero.
    OnFailure,
    /// Restart whenever the container ends, unless stopped.
    Always,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A name for the task.
    #[arg(long)]
    pub name: Option<String>,
    /// Submit nothing: show the node the task would go to, each feasible
    /// node's score and the filter that refuses each other node (exit
    /// status 1 if no node fits).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub task: TaskArgs,
}

/// What to run and how: the flags of `orchctl run` that make a task spec,
/// shared with `orchctl service create`, whose tasks are made from them.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// CPUs to reserve and limit to, like 0.5 or 250m (default: no limit).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<i64>,
    /// Memory to reserve and limit to, like 64Mi or 512m (default: no limit).
    #[arg(short, long, value_parser = parse_bytes)]
    pub memory: Option<i64>,
    /// Disk to reserve on the node, like 1Gi (placement only).
    #[arg(long, value_parser = parse_bytes)]
    pub disk: Option<i64>,
    /// When to restart the task after its container ends (default: never for
    /// a task; for a service's tasks always, or on-failure for --batch).
    #[arg(long, value_enum)]
    pub restart: Option<Restart>,
    /// Restart at most this many times (default 0: no limit; for --batch
    /// without --restart, 3).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// Publish a port: HOST:CONTAINER[/udp]; repeat for more.
    #[arg(short = 'p', long = "publish", value_parser = parse_port)]
    pub ports: Vec<Port>,
    /// An environment variable, KEY=VALUE; repeat for more.
    #[arg(short = 'e', long = "env", value_parser = parse_pair)]
    pub env: Vec<(String, String)>,
    /// A task label, KEY=VALUE; repeat for more.
    #[arg(short = 'l', long = "label", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// Only run on nodes with this label, KEY=VALUE; repeat for more.
    #[arg(long = "constraint", value_parser = parse_pair)]
    pub constraints: Vec<(String, String)>,
    /// How long a stop waits after SIGTERM before SIGKILL (default 10s).
    #[arg(long, value_parser = parse_duration)]
    pub stop_timeout: Option<Duration>,
    // Boxed: the health flags would make `Run` many times the size of the
    // other commands.
    #[command(flatten)]
    pub health: Box<HealthArgs>,
    /// The image to run.
    pub image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Take no new tasks on the node and move its tasks elsewhere.
    Drain(NodeArgs),
    /// Let a drained node take new tasks again.
    Activate(NodeArgs),
    /// Remove a node for good and revoke its certificate; its tasks move elsewhere.
    Rm(NodeArgs),
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node: its id, a unique prefix of it, or its name.
    pub node: String,
}

/// A health check for `orchctl run`: one probe, and its timings.
#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub probe: HealthProbeArgs,
    /// Time between health probes, like 10s (default 10s).
    #[arg(long, value_parser = parse_duration, requires = "health_probe")]
    pub health_interval: Option<Duration>,
    /// How long one probe may take (default 5s, or the interval if shorter).
    #[arg(long, value_parser = parse_duration, requires = "health_probe")]
    pub health_timeout: Option<Duration>,
    /// Failed probes in a row that make the task unhealthy (default 3).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), requires = "health_probe")]
    pub health_retries: Option<u32>,
    /// Failed probes this soon after the start do not count (default 0s).
    #[arg(long, value_parser = parse_duration, requires = "health_probe")]
    pub health_start_period: Option<Duration>,
}

/// The probe of a health check: at most one kind.
#[derive(Debug, Args)]
#[group(id = "health_probe", multiple = false)]
pub struct HealthProbeArgs {
    /// Check health by HTTP GET to the container: PORT/PATH, like 8080/health;
    /// healthy on status 200-399. An unhealthy task restarts per --restart.
    #[arg(long, value_name = "PORT/PATH", value_parser = parse_health_http)]
    pub health_http: Option<(u32, String)>,
    /// Check health by TCP connection to this container port.
    #[arg(long, value_name = "PORT", value_parser = parse_container_port)]
    pub health_tcp: Option<u32>,
    /// Check health by running this command in the container with `/bin/sh -c`
    /// (as docker run --health-cmd); healthy if it exits 0.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
}

fn parse_container_port(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| format!("{s:?} is not a port (1-65535)"))
}

/// `PORT/PATH` (or `PORT`, meaning path `/`).
fn parse_health_http(s: &str) -> Result<(u32, String), String> {
    let (port, path) = match s.split_once('/') {
        Some((port, path)) => (port, format!("/{path}")),
        None => (s, "/".to_owned()),
    };
    let port = parse_container_port(port)
        .map_err(|e| format!("{e}; expected PORT/PATH, for example 8080/health"))?;
    Ok((port, path))
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The task: its id, a unique prefix of it, or its name.
    pub task: String,
    /// Return at once instead of waiting until the task has stopped.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One task to show: its id, a unique prefix of it, or its name.
    pub task: Option<String>,
    /// Only tasks in this state (pending, running, failed...); repeat for more.
    #[arg(long = "state")]
    pub states: Vec<String>,
}

/// `orchctl apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The YAML file of the services, one per document (`---` between them);
    /// `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: String,
    /// Return once the services are applied, without following their rollouts.
    #[arg(long)]
    pub detach: bool,
    /// Apply nothing: show what each service would change and where the
    /// tasks it creates would go (exit status 1 if one fits nowhere).
    #[arg(long)]
    pub dry_run: bool,
}

/// `orchctl service ...`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service from flags (as `docker service create`) and follow its rollout.
    // Boxed: the task flags would make it many times the size of the others.
    Create(Box<ServiceCreateArgs>),
    /// List services: mode, version, running tasks, rollout.
    Ls,
    /// List a service's tasks, by slot.
    Ps(ServiceNameArgs),
    /// Show a service: its spec with defaults, version and rollout.
    Inspect(ServiceNameArgs),
    /// Change how many tasks a service runs: NAME=N.
    Scale(ScaleArgs),
    /// List a service's kept versions and what each changed.
    History(ServiceNameArgs),
    /// Go back to an earlier version (by default the one before) and follow the rollback.
    Rollback(RollbackArgs),
    /// Stop every task of a service and delete it.
    Rm(ServiceNameArgs),
}

/// A command about one service.
#[derive(Debug, Args)]
pub struct ServiceNameArgs {
    /// The service's name.
    pub name: String,
}

/// `orchctl service create`.
#[derive(Debug, Args)]
pub struct ServiceCreateArgs {
    /// The service's name: lowercase letters, digits and '-', starting with a letter.
    pub name: String,
    #[command(flatten)]
    pub mode: ModeArgs,
    // `requires` alone is waived when --batch conflicts with a present
    // --global or --replicas: the conflicts say it.
    /// With --batch: how many tasks must exit 0 for the job to complete (default 1).
    #[arg(long, value_name = "C", requires = "batch",
          conflicts_with_all = ["replicas", "global"],
          value_parser = clap::value_parser!(u32).range(1..))]
    pub completions: Option<u32>,
    /// With --batch: how many tasks may run at once (default 1).
    #[arg(long, value_name = "P", requires = "batch",
          conflicts_with_all = ["replicas", "global"],
          value_parser = clap::value_parser!(u32).range(1..))]
    pub parallelism: Option<u32>,
    #[command(flatten)]
    pub update: UpdateArgs,
    /// Return once the service is created, without following its rollout.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub task: TaskArgs,
}

/// How many tasks a service runs: at most one of the three (default
/// replicated, 1 replica).
#[derive(Debug, Args)]
#[group(id = "mode", multiple = false)]
pub struct ModeArgs {
    /// Keep N tasks running, one per slot (replicated, the default; default 1).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// Run one task on every ready node that matches the constraints.
    #[arg(long)]
    pub global: bool,
    /// Run tasks to completion (a job): see --completions and --parallelism.
    #[arg(long)]
    pub batch: bool,
}

/// How a rolling update replaces a service's tasks; unset flags keep the
/// manager's defaults.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Tasks replaced at once (default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub update_parallelism: Option<u32>,
    /// Wait between batches of replaced tasks, like 10s (default 0s).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub update_delay: Option<Duration>,
    /// Stop the old task before starting the new one, or the other way round
    /// (default stop-first).
    #[arg(long, value_enum)]
    pub update_order: Option<UpdateOrderArg>,
    /// How long a new task must run (and be healthy) to count as updated (default 5s).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub update_monitor: Option<Duration>,
    /// What to do when too many new tasks fail (default rollback).
    #[arg(long, value_enum)]
    pub update_failure_action: Option<FailureActionArg>,
    /// The share of new tasks (0 to 1) that may fail before the failure action (default 0).
    #[arg(long, value_name = "R", value_parser = parse_ratio)]
    pub update_max_failure_ratio: Option<f64>,
}

/// `--update-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpdateOrderArg {
    /// Stop the old task, then start the new one.
    StopFirst,
    /// Start the new task, and stop the old one once the new one runs.
    StartFirst,
}

/// `--update-failure-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailureActionArg {
    /// Stop replacing tasks; the rollout stays paused.
    Pause,
    /// Go back to the version that ran before.
    Rollback,
    /// Go on as if nothing had failed.
    Continue,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| format!("{s:?} is not a ratio between 0 and 1, like 0.25"))
}

/// `orchctl service scale`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The service and its new count, like web=5.
    #[arg(value_name = "NAME=N", value_parser = parse_scale)]
    pub target: (String, u32),
}

/// `NAME=N`: a service name and a count.
fn parse_scale(s: &str) -> Result<(String, u32), String> {
    match s.split_once('=') {
        Some((name, n)) if !name.is_empty() => n
            .parse::<u32>()
            .map(|n| (name.to_string(), n))
            .map_err(|_| format!("{s:?}: {n:?} is not a count (a whole number, 0 or more)")),
        _ => Err(format!("{s:?} is not NAME=N, for example web=5")),
    }
}

/// `orchctl service rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The service's name.
    pub name: String,
    /// The kept version to go back to (default: the one before the current).
    #[arg(long, value_name = "V", value_parser = clap::value_parser!(u64).range(1..))]
    pub to_version: Option<u64>,
    /// Return once the rollback is asked for, without following it.
    #[arg(long)]
    pub detach: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(
            parse_port("8080:80"),
            Ok(Port {
                host: 8080,
                container: 80,
                udp: false
            })
        );
        assert_eq!(
            parse_port("53:53/udp"),
            Ok(Port {
                host: 53,
                container: 53,
                udp: true
            })
        );
        for bad in ["8080", "0:80", "8080:70000", "a:b", "80:80/sctp"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs() {
        assert_eq!(parse_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_pair("A="), Ok(("A".into(), String::new())));
        assert!(parse_pair("=x").is_err());
        assert!(parse_pair("novalue").is_err());
    }

    #[test]
    fn run_takes_docker_habits() {
        let cli = Cli::try_parse_from([
            "orchctl",
            "run",
            "--name",
            "web",
            "--cpus",
            "0.5",
            "--memory",
            "64Mi",
            "-e",
            "A=1",
            "-p",
            "8080:80",
            "--restart",
            "on-failure",
            "busybox",
            "sh",
            "-c",
            "echo hi",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.task.cpus, Some(500));
        assert_eq!(run.task.memory, Some(64 << 20));
        assert_eq!(run.task.env, vec![("A".into(), "1".into())]);
        assert_eq!(run.task.ports.len(), 1);
        assert_eq!(run.task.restart, Some(Restart::OnFailure));
        assert_eq!(run.task.image, "busybox");
        assert_eq!(run.task.command, vec!["sh", "-c", "echo hi"]);
    }

    #[test]
    fn health_checks() {
        let run = |args: &[&str]| {
            let mut all = vec!["orchctl", "run"];
            all.extend_from_slice(args);
            all.push("busybox");
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Command::Run(run)) => Ok(*run.task.health),
                Ok(other) => panic!("not run: {other:?}"),
                Err(e) => Err(e),
            }
        };
        let h = run(&[
            "--health-http",
            "8080/health/live",
            "--health-interval",
            "2s",
            "--health-timeout",
            "500ms",
            "--health-retries",
            "5",
            "--health-start-period",
            "30s",
        ])
        .expect("parses");
        assert_eq!(h.probe.health_http, Some((8080, "/health/live".into())));
        assert_eq!(h.health_interval, Some(Duration::from_secs(2)));
        assert_eq!(h.health_timeout, Some(Duration::from_millis(500)));
        assert_eq!(h.health_retries, Some(5));
        assert_eq!(h.health_start_period, Some(Duration::from_secs(30)));
        let h = run(&["--health-http", "80"]).expect("parses");
        assert_eq!(h.probe.health_http, Some((80, "/".into())));
        let h = run(&["--health-tcp", "6379"]).expect("parses");
        assert_eq!(h.probe.health_tcp, Some(6379));
        let h = run(&["--health-cmd", "test -f /tmp/ok"]).expect("parses");
        assert_eq!(h.probe.health_cmd.as_deref(), Some("test -f /tmp/ok"));
        let h = run(&[]).expect("parses");
        assert_eq!(h.probe.health_http, None);

        for bad in [
            // Two probes, or timings without one.
            &["--health-tcp", "80", "--health-cmd", "true"][..],
            &["--health-interval", "2s"],
            &["--health-http", "0/health"],
            &["--health-http", "web/health"],
            &["--health-tcp", "70000"],
            &["--health-tcp", "80", "--health-retries", "0"],
            &["--health-tcp", "80", "--health-interval", "soon"],
        ] {
            assert!(run(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            vec!["orchctl", "run", "--memory", "lots", "busybox"],
            vec!["orchctl", "run", "--cpus", "-1", "busybox"],
            vec!["orchctl", "run", "-p", "99999:80", "busybox"],
            vec!["orchctl", "run", "--restart", "sometimes", "busybox"],
            vec!["orchctl", "manager", "--scheduler", "random"],
            vec!["orchctl", "-o", "yaml", "nodes"],
        ] {
            assert!(Cli::try_parse_from(&args).is_err(), "{args:?}");
        }
    }

    /// `orchctl service create ARGS... busybox`, parsed.
    fn create(args: &[&str]) -> Result<ServiceCreateArgs, clap::Error> {
        let mut all = vec!["orchctl", "service", "create"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).map(|c| c.command) {
            Ok(Command::Service(ServiceCommand::Create(a))) => Ok(*a),
            Ok(other) => panic!("not service create: {other:?}"),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn service_create_takes_a_name_an_image_and_a_command() {
        let a = create(&[
            "--replicas",
            "3",
            "--constraint",
            "zone=a",
            "-e",
            "A=1",
            "web",
            "busybox",
            "sh",
            "-c",
            "echo hi",
        ])
        .expect("parses");
        assert_eq!(a.name, "web");
        assert_eq!(a.mode.replicas, Some(3));
        assert!(!a.mode.global && !a.mode.batch);
        assert_eq!(a.task.image, "busybox");
        assert_eq!(a.task.command, vec!["sh", "-c", "echo hi"]);
        assert_eq!(a.task.constraints, vec![("zone".into(), "a".into())]);
        assert!(!a.detach);
        // The image is required, and so is the name.
        assert!(create(&["web"]).is_err());
        assert!(create(&[]).is_err());
    }

    #[test]
    fn service_modes_are_mutually_exclusive() {
        for ok in [
            &["web", "img"][..],
            &["--replicas", "0", "web", "img"],
            &["--global", "web", "img"],
            &["--batch", "web", "img"],
            &[
                "--batch",
                "--completions",
                "5",
                "--parallelism",
                "2",
                "web",
                "img",
            ],
        ] {
            assert!(create(ok).is_ok(), "{ok:?}");
        }
        let b = create(&[
            "--batch",
            "--completions",
            "5",
            "--parallelism",
            "2",
            "j",
            "img",
        ])
        .expect("parses");
        assert_eq!((b.completions, b.parallelism), (Some(5), Some(2)));
        for bad in [
            &["--replicas", "2", "--global", "web", "img"][..],
            &["--global", "--batch", "web", "img"],
            &["--replicas", "1", "--batch", "web", "img"],
            // Counts of a job need --batch, and are at least 1.
            &["--completions", "2", "web", "img"],
            &["--parallelism", "2", "web", "img"],
            &["--global", "--completions", "2", "web", "img"],
            &["--batch", "--completions", "0", "web", "img"],
            &["--batch", "--parallelism", "0", "web", "img"],
            &["--replicas", "many", "web", "img"],
        ] {
            assert!(create(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn update_flags_are_read() {
        let a = create(&[
            "--update-parallelism",
            "2",
            "--update-delay",
            "10s",
            "--update-order",
            "start-first",
            "--update-monitor",
            "500ms",
            "--update-failure-action",
            "pause",
            "--update-max-failure-ratio",
            "0.25",
            "--detach",
            "web",
            "img",
        ])
        .expect("parses");
        let u = &a.update;
        assert_eq!(u.update_parallelism, Some(2));
        assert_eq!(u.update_delay, Some(Duration::from_secs(10)));
        assert_eq!(u.update_order, Some(UpdateOrderArg::StartFirst));
        assert_eq!(u.update_monitor, Some(Duration::from_millis(500)));
        assert_eq!(u.update_failure_action, Some(FailureActionArg::Pause));
        assert_eq!(u.update_max_failure_ratio, Some(0.25));
        assert!(a.detach);
        for bad in [
            &["--update-parallelism", "0"][..],
            &["--update-order", "random"],
            &["--update-failure-action", "retry"],
            &["--update-max-failure-ratio", "1.5"],
            &["--update-max-failure-ratio", "-0.1"],
            &["--update-max-failure-ratio", "NaN"],
            &["--update-delay", "soon"],
        ] {
            let mut args = bad.to_vec();
            args.extend(["web", "img"]);
            assert!(create(&args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scale_takes_name_equals_count() {
        let scale = |arg: &str| match Cli::try_parse_from(["orchctl", "service", "scale", arg])
            .map(|c| c.command)
        {
            Ok(Command::Service(ServiceCommand::Scale(a))) => Ok(a.target),
            Ok(other) => panic!("not service scale: {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(scale("web=5").expect("parses"), ("web".into(), 5));
        assert_eq!(scale("web=0").expect("parses"), ("web".into(), 0));
        for bad in ["web", "web=x", "=3", "web=", "web=-1", "web=1.5", ""] {
            assert!(scale(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_scale("a=b=1").map_err(|_| ()), Err(()));
    }

    #[test]
    fn apply_and_the_other_service_commands_parse() {
        let parse = |args: &[&str]| {
            let mut all = vec!["orchctl"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(|c| c.command)
        };
        match parse(&["apply", "-f", "web.yaml", "--detach"]) {
            Ok(Command::Apply(a)) => assert_eq!((a.file.as_str(), a.detach), ("web.yaml", true)),
            other => panic!("{other:?}"),
        }
        match parse(&["apply", "-f", "-"]) {
            Ok(Command::Apply(a)) => assert_eq!((a.file.as_str(), a.detach), ("-", false)),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["apply"]).is_err(), "apply needs -f");
        match parse(&["service", "rollback", "web", "--to-version", "2"]) {
            Ok(Command::Service(ServiceCommand::Rollback(a))) => {
                assert_eq!(
                    (a.name.as_str(), a.to_version, a.detach),
                    ("web", Some(2), false)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["service", "rollback", "web", "--to-version", "0"]).is_err());
        for ok in [
            &["service", "ls"][..],
            &["service", "ps", "web"],
            &["service", "inspect", "web", "-o", "json"],
            &["service", "history", "web"],
            &["service", "rm", "web"],
        ] {
            assert!(parse(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            &["service", "ps"][..],
            &["service", "inspect"],
            &["service", "rm"],
            &["service", "create", "--name", "x", "web", "img"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
