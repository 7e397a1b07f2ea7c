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
    /// The manager's URL.
    #[arg(
        long,
        global = true,
        env = "ORCH_MANAGER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub manager: String,

    /// Output format of read commands.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

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
    /// Drain or activate a node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Follow task and node state changes as they happen.
    Events,
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse::<Strategy>().map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 10s or 500ms: {e}"))
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

#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where the manager keeps its state (a redb file).
    #[arg(long, default_value = "./orch-data")]
    pub data_dir: PathBuf,
    /// How tasks are placed on nodes: round-robin, epvm, best-fit or spread.
    #[arg(long, default_value = "spread", value_parser = parse_strategy)]
    pub scheduler: Strategy,
    /// How often workers send heartbeats.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub heartbeat_period: Duration,
    /// A node is down after this many heartbeat periods without one.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub missed_heartbeats: u32,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Restart {
    /// Never restart (the default, as with docker run).
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
    /// CPUs to reserve and limit to, like 0.5 or 250m (default: no limit).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<i64>,
    /// Memory to reserve and limit to, like 64Mi or 512m (default: no limit).
    #[arg(short, long, value_parser = parse_bytes)]
    pub memory: Option<i64>,
    /// Disk to reserve on the node, like 1Gi (placement only).
    #[arg(long, value_parser = parse_bytes)]
    pub disk: Option<i64>,
    /// When to restart the task after its container ends.
    #[arg(long, value_enum, default_value_t = Restart::Never)]
    pub restart: Restart,
    /// Restart at most this many times (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_restarts: u32,
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
        assert_eq!(run.cpus, Some(500));
        assert_eq!(run.memory, Some(64 << 20));
        assert_eq!(run.env, vec![("A".into(), "1".into())]);
        assert_eq!(run.ports.len(), 1);
        assert_eq!(run.restart, Restart::OnFailure);
        assert_eq!(run.image, "busybox");
        assert_eq!(run.command, vec!["sh", "-c", "echo hi"]);
    }

    #[test]
    fn health_checks() {
        let run = |args: &[&str]| {
            let mut all = vec!["orchctl", "run"];
            all.extend_from_slice(args);
            all.push("busybox");
            match Cli::try_parse_from(all).map(|c| c.command) {
                Ok(Command::Run(run)) => Ok(*run.health),
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
}
