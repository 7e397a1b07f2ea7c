//! `orch-bench`: runs one benchmark scenario and prints its figures.
//!
//! ```text
//! cargo build --release -p orchctl -p orch-bench
//! target/release/orch-bench control-plane --tasks 100000 --workers 1000
//! target/release/orch-bench schedule --nodes 100,1000,10000
//! target/release/orch-bench engine --containers 50,100 --runs 3
//! target/release/orch-bench services --runs 3
//! target/release/orch-bench service-plane --replicas 100000 --workers 1000
//! target/release/orch-bench plot --workers 100,1000,10000 --out bench/plot.svg
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use orch_bench::cluster::ManagerKind;
use orch_bench::{control_plane, engine, measure, plot, schedule, service_plane};

#[derive(Debug, Parser)]
#[command(name = "orch-bench", about = "orch's benchmarks")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Submit tasks to simulated workers over real gRPC; time until all run.
    ControlPlane(ControlPlaneArgs),
    /// The cost of one scheduling decision at several cluster sizes (no network).
    Schedule(ScheduleArgs),
    /// orch vs the Docker API vs Docker Swarm starting the same containers
    /// on this machine's engine; one task's submit→running vs a bare
    /// create+start.
    Engine(EngineArgs),
    /// orch's services vs Docker Swarm's on this machine's engine: a
    /// service created until all its containers started, and a rolling
    /// update until every old container is replaced.
    Services(ServicesArgs),
    /// One service of many replicas on simulated workers over real gRPC:
    /// ApplyService until all run, then ScaleService to 0 until none does.
    ServicePlane(ServicePlaneArgs),
    /// Control-plane runs at several cluster sizes, drawn as an SVG of
    /// placements/s and submit→running latency against workers.
    Plot(PlotArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Where {
    /// A child `orchctl manager` if the binary is found, else in process.
    Auto,
    /// In this process, sharing cpu with the simulated workers.
    InProcess,
    /// A child `orchctl manager` process, measured apart.
    Child,
}

#[derive(Debug, clap::Args)]
struct ControlPlaneArgs {
    /// Tasks to submit.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Simulated workers.
    #[arg(long, default_value_t = 100)]
    workers: usize,
    /// Concurrent submitting clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Specs per SubmitTasks call (at most 10,000).
    #[arg(long, default_value_t = control_plane::MAX_BATCH)]
    batch: usize,
    /// Workers' heartbeat period; longer for large clusters, since every
    /// heartbeat takes the manager's state lock.
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_period: Option<Duration>,
    #[command(flatten)]
    manager: ManagerArgs,
    /// Give up if not all tasks run within this time.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Secure the cluster as orch is by default: TLS on every connection,
    /// workers joining with a join token and a node certificate, clients
    /// with a token (without: as with --insecure).
    #[arg(long)]
    tls: bool,
    /// How many events the manager keeps for replay (with --manager
    /// in-process only; default: the manager's default).
    #[arg(long)]
    events_kept: Option<u64>,
    /// Keep the manager's state on a local etcd of this many members (real
    /// `etcd` processes on loopback) instead of redb: needs --manager child
    /// and orch-bench built with `--features etcd`.
    #[arg(long, value_name = "MEMBERS")]
    etcd: Option<usize>,
    /// Start the local etcd's members with `--max-txn-ops N` (etcd's
    /// default: 128); the manager's transactions grow to what etcd takes,
    /// up to 1,024 operations.
    #[arg(long, value_name = "N", requires = "etcd")]
    etcd_max_txn_ops: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct ManagerArgs {
    /// Where the manager (and, for `engine`, the worker) runs.
    #[arg(long, value_enum, default_value_t = Where::Auto)]
    manager: Where,
    /// The orchctl binary for child processes (default: next to this one).
    #[arg(long)]
    orchctl: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct EngineArgs {
    /// Container counts, comma-separated; each is measured on every system.
    #[arg(long, value_delimiter = ',', default_value = "50,100")]
    containers: Vec<usize>,
    /// Rounds per count (each round measures orch, direct and swarm once).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Single-task measurements (0 skips them).
    #[arg(long, default_value_t = 20)]
    single_runs: usize,
    /// Do not measure Docker Swarm (no `swarm init`).
    #[arg(long)]
    no_swarm: bool,
    /// Pause after each clean-up, so the next measurement starts on a quiet engine.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    #[command(flatten)]
    manager: ManagerArgs,
    /// Give up on a measurement after this time.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, clap::Args)]
struct ServicesArgs {
    /// Replicas of the service created.
    #[arg(long, default_value_t = 50)]
    replicas: usize,
    /// Replicas of the service updated.
    #[arg(long, default_value_t = 20)]
    update_replicas: usize,
    /// Tasks the update replaces at once.
    #[arg(long, default_value_t = 5)]
    parallelism: u32,
    /// Rounds (each measures orch and Swarm once in both scenarios).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Every container's stop grace period, on both systems (`sleep` as
    /// the container's first process ignores SIGTERM, so a stop takes all of it).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    stop_grace: Duration,
    /// Do not measure Docker Swarm (no `swarm init`).
    #[arg(long)]
    no_swarm: bool,
    /// Pause after each clean-up, and before each timed update.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,
    #[command(flatten)]
    manager: ManagerArgs,
    /// Give up on a measurement after this time.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, clap::Args)]
struct ServicePlaneArgs {
    /// The service's replicas.
    #[arg(long, default_value_t = 100_000)]
    replicas: u32,
    /// Simulated workers.
    #[arg(long, default_value_t = 1_000)]
    workers: usize,
    /// Workers' heartbeat period (default 1 s, 5 s above 1,000 workers).
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_period: Option<Duration>,
    /// Heartbeat periods a node may miss before it is declared down.
    #[arg(long, default_value_t = 3)]
    missed_heartbeats: u32,
    #[command(flatten)]
    manager: ManagerArgs,
    /// Give up if a phase does not end within this time.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, clap::Args)]
struct PlotArgs {
    /// Cluster sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    workers: Vec<usize>,
    /// Tasks per worker.
    #[arg(long, default_value_t = 100)]
    tasks_per_worker: usize,
    /// Runs per size.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Draw from this CSV (written by an earlier run) instead of running.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Where to write the figures as CSV (default: the SVG's path with .csv).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Where to write the SVG.
    #[arg(long, default_value = "bench/plot.svg")]
    out: PathBuf,
    #[command(flatten)]
    manager: ManagerArgs,
}

#[derive(Debug, clap::Args)]
struct ScheduleArgs {
    /// Cluster sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    nodes: Vec<usize>,
    /// Decisions per strategy and size.
    #[arg(long, default_value_t = 100_000)]
    decisions: usize,
}

fn manager_kind(args: &ManagerArgs) -> Result<ManagerKind, String> {
    let path = match &args.orchctl {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this binary: {e}"))?
            .with_file_name("orchctl"),
    };
    match args.manager {
        Where::InProcess => Ok(ManagerKind::InProcess),
        Where::Child if path.is_file() => Ok(ManagerKind::Child(path)),
        Where::Child => Err(format!(
            "{} not found: build it (cargo build --release -p orchctl) or pass --orchctl",
            path.display()
        )),
        Where::Auto if path.is_file() => Ok(ManagerKind::Child(path)),
        Where::Auto => Ok(ManagerKind::InProcess),
    }
}

fn where_(kind: &ManagerKind) -> String {
    match kind {
        ManagerKind::InProcess => "in process".to_string(),
        ManagerKind::Child(p) => format!("child process {}", p.display()),
    }
}

/// Each simulated worker holds a socket, and an in-process manager the other end.
fn raise_open_files(workers: usize) {
    let wanted = u64::try_from(workers * 2 + 4096).unwrap_or(u64::MAX);
    match measure::raise_open_files(wanted) {
        Ok(n) if n < wanted => eprintln!(
            "warning: open files limited to {n}; {workers} workers may need {wanted} (ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
}

async fn control(args: ControlPlaneArgs) -> Result<(), String> {
    raise_open_files(args.workers);
    let manager = manager_kind(&args.manager)?;
    // One heartbeat per worker per period takes the state lock; at 10,000
    // workers a 1 s period is 10,000 lock takes a second for nothing.
    let heartbeat_period = args.heartbeat_period.unwrap_or(if args.workers > 1000 {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(1)
    });
    let params = control_plane::Params {
        tasks: args.tasks,
        workers: args.workers,
        clients: args.clients,
        batch: args.batch,
        heartbeat_period,
        manager: manager.clone(),
        timeout: args.timeout,
        tls: args.tls,
        events_kept: args
            .events_kept
            .unwrap_or(orch_manager::DEFAULT_EVENTS_KEPT),
        manager_args: Vec::new(),
    };
    if args.events_kept.is_some() && !matches!(manager, ManagerKind::InProcess) {
        return Err("--events-kept needs --manager in-process".into());
    }
    let etcd = local_etcd(args.etcd, args.etcd_max_txn_ops, &manager)?;
    let params = control_plane::Params {
        manager_args: etcd
            .as_ref()
            .map(|(_, args)| args.clone())
            .unwrap_or_default(),
        ..params
    };
    println!(
        "control-plane: {} tasks, {} workers, {} clients, batches of {}, heartbeat {:?}, manager {}, {}",
        args.tasks,
        args.workers,
        args.clients,
        args.batch,
        heartbeat_period,
        where_(&manager),
        if args.tls {
            "TLS and tokens"
        } else {
            "insecure"
        }
    );
    let report = control_plane::run(&params)
        .await
        .map_err(|e| e.to_string())?;
    print!("{report}");
    Ok(())
}

/// A local etcd of `members` for the manager, and the arguments that put the
/// manager's store on it; `None` without `--etcd`.
#[cfg(feature = "etcd")]
fn local_etcd(
    members: Option<usize>,
    max_txn_ops: Option<usize>,
    manager: &ManagerKind,
) -> Result<Option<(orch_manager::store::etcd::local::LocalEtcd, Vec<String>)>, String> {
    let Some(members) = members else {
        return Ok(None);
    };
    if !matches!(manager, ManagerKind::Child(_)) {
        return Err("--etcd needs --manager child".into());
    }
    let flags: Vec<String> = max_txn_ops
        .map(|n| format!("--max-txn-ops={n}"))
        .into_iter()
        .collect();
    let etcd = orch_manager::store::etcd::local::LocalEtcd::start_with(members, &flags)?;
    let args = vec!["--store".to_owned(), etcd.store_arg("")];
    println!(
        "etcd: {members} members, {}{}",
        etcd.store_arg(""),
        flags.first().map(|f| format!(", {f}")).unwrap_or_default()
    );
    Ok(Some((etcd, args)))
}

#[cfg(not(feature = "etcd"))]
fn local_etcd(
    members: Option<usize>,
    _: Option<usize>,
    _: &ManagerKind,
) -> Result<Option<((), Vec<String>)>, String> {
    match members {
        None => Ok(None),
        Some(_) => Err("--etcd needs orch-bench built with `--features etcd`".into()),
    }
}

async fn real_engine(args: EngineArgs) -> Result<(), String> {
    let orch = manager_kind(&args.manager)?;
    println!(
        "engine: containers {:?}, {} rounds, {} single-task runs, swarm {}, settle {:?}, orch manager and worker {}",
        args.containers,
        args.runs,
        args.single_runs,
        if args.no_swarm { "off" } else { "on" },
        args.settle,
        where_(&orch)
    );
    let params = engine::Params {
        containers: args.containers,
        runs: args.runs,
        single_runs: args.single_runs,
        orch,
        swarm: !args.no_swarm,
        settle: args.settle,
        timeout: args.timeout,
        progress: true,
    };
    let report = engine::run(&params).await.map_err(|e| e.to_string())?;
    print!("{report}");
    Ok(())
}

async fn services(args: ServicesArgs) -> Result<(), String> {
    let orch = manager_kind(&args.manager)?;
    println!(
        "services: create {} replicas, update {} replicas by {}, {} rounds, stop grace {}, swarm {}, settle {:?}, orch manager and worker {}",
        args.replicas,
        args.update_replicas,
        args.parallelism,
        args.runs,
        humantime::format_duration(args.stop_grace),
        if args.no_swarm { "off" } else { "on" },
        args.settle,
        where_(&orch)
    );
    let params = engine::services::Params {
        replicas: args.replicas,
        update_replicas: args.update_replicas,
        parallelism: args.parallelism,
        runs: args.runs,
        stop_grace: args.stop_grace,
        orch,
        swarm: !args.no_swarm,
        settle: args.settle,
        timeout: args.timeout,
        progress: true,
    };
    let report = engine::services::run(&params)
        .await
        .map_err(|e| e.to_string())?;
    print!("{report}");
    Ok(())
}

async fn service_plane(args: ServicePlaneArgs) -> Result<(), String> {
    raise_open_files(args.workers);
    let manager = manager_kind(&args.manager)?;
    let heartbeat_period = args.heartbeat_period.unwrap_or(if args.workers > 1000 {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(1)
    });
    println!(
        "service-plane: {} replicas, {} workers, heartbeat {:?} ({} missed = down), manager {}",
        args.replicas,
        args.workers,
        heartbeat_period,
        args.missed_heartbeats,
        where_(&manager)
    );
    let params = service_plane::Params {
        replicas: args.replicas,
        workers: args.workers,
        heartbeat_period,
        missed_heartbeats: args.missed_heartbeats,
        manager,
        timeout: args.timeout,
    };
    let report = service_plane::run(&params)
        .await
        .map_err(|e| e.to_string())?;
    print!("{report}");
    Ok(())
}

async fn draw(args: PlotArgs) -> Result<(), String> {
    let points = match &args.from {
        Some(csv) => {
            let text = std::fs::read_to_string(csv)
                .map_err(|e| format!("reading {}: {e}", csv.display()))?;
            plot::from_csv(&text).map_err(|e| e.to_string())?
        }
        None => {
            let manager = manager_kind(&args.manager)?;
            raise_open_files(args.workers.iter().copied().max().unwrap_or(0));
            let points = plot::sweep(&args.workers, args.tasks_per_worker, args.runs, manager)
                .await
                .map_err(|e| e.to_string())?;
            let csv = args
                .csv
                .clone()
                .unwrap_or_else(|| args.out.with_extension("csv"));
            std::fs::write(&csv, plot::to_csv(&points))
                .map_err(|e| format!("writing {}: {e}", csv.display()))?;
            println!("figures written to {}", csv.display());
            points
        }
    };
    std::fs::write(&args.out, plot::svg(&points))
        .map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    println!("plot written to {}", args.out.display());
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    let result = match Cli::parse().scenario {
        Scenario::ControlPlane(args) => control(args).await,
        Scenario::Schedule(args) => {
            println!(
                "schedule: {} decisions per row, nodes {:?}",
                args.decisions, args.nodes
            );
            print!("{}", schedule::run(&args.nodes, args.decisions));
            Ok(())
        }
        Scenario::Engine(args) => real_engine(args).await,
        Scenario::Services(args) => services(args).await,
        Scenario::ServicePlane(args) => service_plane(args).await,
        Scenario::Plot(args) => draw(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orch-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
