//! orch-recovery-bench: how long a dead worker's tasks take to run elsewhere.
//!
//! Each run starts a manager and three workers as real processes (the
//! manager with its default liveness: 1 s heartbeats, down after 3 missed),
//! runs N `sleep 300` tasks spread over them, `kill -9`s the worker holding
//! the most, and measures from the kill to the moment the last of its tasks
//! is reported running on another worker, by the timestamps of the manager's
//! `WatchEvents` stream. It also reports when the node was declared down, so
//! the time splits into detection and rescheduling plus container start.
//!
//! A real worker dies at a moment that has nothing to do with its
//! heartbeats, so by default the kill falls at a random point of a heartbeat
//! period after the tasks run (`--phase random`). `--phase worst` kills the
//! worker the moment its last report arrived, so the manager waits the whole
//! liveness deadline: the slowest possible detection.
//!
//! ```text
//! cargo bench -p orchctl --bench recovery -- [--runs 5] [--tasks 6] [--phase random|worst]
//! ```
//!
//! A benchmark, not a test: it asserts nothing about the figures.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use orch::v1::{NodeState, TaskState, event};
use support::{Options, Procs, event_time, sleeper};

/// How long one run may take to recover before the bench gives up.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

struct Args {
    runs: usize,
    tasks: usize,
    heartbeat_period: String,
    missed_heartbeats: u32,
    /// Kill at a random point of a heartbeat period (true) or at once.
    random_phase: bool,
}

fn args() -> Args {
    let mut args = Args {
        runs: 5,
        tasks: 6,
        heartbeat_period: "1s".into(),
        missed_heartbeats: 3,
        random_phase: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--runs" => args.runs = value("--runs").parse().expect("--runs N"),
            "--tasks" => args.tasks = value("--tasks").parse().expect("--tasks N"),
            "--heartbeat-period" => args.heartbeat_period = value("--heartbeat-period"),
            "--phase" => {
                args.random_phase = match value("--phase").as_str() {
                    "random" => true,
                    "worst" => false,
                    other => panic!("--phase is random or worst, not {other}"),
                }
            }
            "--missed-heartbeats" => {
                args.missed_heartbeats = value("--missed-heartbeats")
                    .parse()
                    .expect("--missed-heartbeats N");
            }
            // `cargo bench` passes `--bench`; other harness flags mean nothing here.
            _ => {}
        }
    }
    args
}

/// One run's figures.
struct Run {
    /// Tasks the killed worker held.
    moved: usize,
    /// From the kill to the node declared down.
    detected: Duration,
    /// From the kill to the last of its tasks running elsewhere.
    recovered: Duration,
}

fn since(kill: SystemTime, t: SystemTime) -> Duration {
    t.duration_since(kill).unwrap_or_default()
}

async fn one_run(args: &Args) -> Run {
    let options = Options {
        heartbeat_period: args.heartbeat_period.clone(),
        missed_heartbeats: args.missed_heartbeats,
        ..Options::default()
    };
    let mut cluster = Procs::start(options, 3).await;
    let image = cluster.busybox().await;
    let tasks = cluster.run_tasks(vec![sleeper(&image); args.tasks]).await;
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for t in &tasks {
        *per_node.entry(t.node_id.as_str()).or_default() += 1;
    }
    let (victim, _) = per_node
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("a node with tasks");
    let victim = victim.to_string();
    let mut waiting: HashSet<String> = tasks
        .iter()
        .filter(|t| t.node_id == victim)
        .map(|t| t.id.clone())
        .collect();
    let moved = waiting.len();

    let mut events = cluster.watch().await;
    let w = cluster.worker_of(&victim);
    if args.random_phase {
        let period = humantime::parse_duration(&args.heartbeat_period)
            .expect("--heartbeat-period is a duration");
        tokio::time::sleep(period.mul_f64(rand::random::<f64>())).await;
    }
    let kill = SystemTime::now();
    cluster.kill_worker(w).await;

    let mut detected = None;
    let mut last_running = kill;
    tokio::time::timeout(RUN_DEADLINE, async {
        while !waiting.is_empty() {
            let e = events
                .message()
                .await
                .expect("event stream")
                .expect("event stream open");
            match &e.kind {
                Some(event::Kind::Node(n))
                    if n.node_id == victim && n.state == NodeState::Down as i32 =>
                {
                    detected.get_or_insert(event_time(&e));
                }
                Some(event::Kind::Task(t))
                    if t.state == TaskState::Running as i32
                        && t.attempt > 1
                        && t.node_id != victim
                        && waiting.remove(&t.task_id) =>
                {
                    last_running = last_running.max(event_time(&e));
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the tasks did not recover within {RUN_DEADLINE:?}"));
    Run {
        moved,
        detected: since(kill, detected.expect("the node was declared down")),
        recovered: since(kill, last_running),
    }
}

/// The nearest-rank percentile `p` (0–100) of sorted values.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn median(sorted: &[Duration]) -> Duration {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    let args = args();
    assert!(
        args.runs > 0 && args.tasks > 0,
        "--runs and --tasks must be > 0"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "orch recovery: 3 workers, {} tasks, heartbeat {} x {} missed; kill -9 the worker holding the most, {}",
        args.tasks,
        args.heartbeat_period,
        args.missed_heartbeats,
        if args.random_phase {
            "at a random point of a heartbeat period"
        } else {
            "as soon as it reported its tasks running"
        }
    );
    let mut recovered = Vec::new();
    let mut detected = Vec::new();
    for i in 1..=args.runs {
        let run = rt.block_on(one_run(&args));
        println!(
            "run {i}: {} tasks moved; node down after {}; all running elsewhere after {} ({} after detection)",
            run.moved,
            secs(run.detected),
            secs(run.recovered),
            secs(run.recovered.saturating_sub(run.detected)),
        );
        recovered.push(run.recovered);
        detected.push(run.detected);
    }
    recovered.sort();
    detected.sort();
    println!(
        "kill -> all running elsewhere: median {}, p90 {} (min {}, max {}) over {} runs",
        secs(median(&recovered)),
        secs(percentile(&recovered, 90)),
        secs(recovered[0]),
        secs(recovered[recovered.len() - 1]),
        args.runs
    );
    println!(
        "kill -> node down: median {}, p90 {}",
        secs(median(&detected)),
        secs(percentile(&detected, 90)),
    );
}
