//! `orch-bench`: runs one benchmark scenario and prints its figures.
//!
//! ```text
//! cargo build --release -p orchctl -p orch-bench
//! target/release/orch-bench control-plane --tasks 100000 --workers 1000
//! target/release/orch-bench schedule --nodes 100,1000,10000
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use orch_bench::cluster::ManagerKind;
use orch_bench::{control_plane, measure, schedule};

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
    /// Where the manager runs.
    #[arg(long, value_enum, default_value_t = Where::Auto)]
    manager: Where,
    /// The orchctl binary for a child manager (default: next to this one).
    #[arg(long)]
    orchctl: Option<PathBuf>,
    /// Give up if not all tasks run within this time.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
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

fn manager_kind(args: &ControlPlaneArgs) -> Result<ManagerKind, String> {
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

async fn control(args: ControlPlaneArgs) -> Result<(), String> {
    // Each worker holds a socket, and an in-process manager the other end.
    let wanted = u64::try_from(args.workers * 2 + 4096).unwrap_or(u64::MAX);
    match measure::raise_open_files(wanted) {
        Ok(n) if n < wanted => eprintln!(
            "warning: open files limited to {n}; {} workers may need {wanted} (ulimit -n)",
            args.workers
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-file limit: {e}"),
    }
    let manager = manager_kind(&args)?;
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
    };
    let where_ = match &manager {
        ManagerKind::InProcess => "in process".to_string(),
        ManagerKind::Child(p) => format!("child process {}", p.display()),
    };
    println!(
        "control-plane: {} tasks, {} workers, {} clients, batches of {}, heartbeat {:?}, manager {where_}",
        args.tasks, args.workers, args.clients, args.batch, heartbeat_period
    );
    let report = control_plane::run(&params)
        .await
        .map_err(|e| e.to_string())?;
    print!("{report}");
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orch-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
