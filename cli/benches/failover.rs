//! orch-failover-bench: how long a cluster of managers on etcd is without a
//! leader after the leader is killed, and what the failover costs.
//!
//! Each run starts a three-member etcd (Debian's `etcd-server`, on
//! loopback), three managers and three workers as real processes, all with
//! their default settings (a 2 s leader lease, 1 s heartbeats), runs N
//! `sleep 3600` tasks, then `kill -9`s the leader and measures, from the
//! kill:
//! - **submit**: until a client that tries every manager in turn gets a
//!   task acknowledged (a new leader elected, its state loaded, serving);
//! - **workers**: until every node has a heartbeat newer than the kill
//!   (each worker found the new leader and opened its session);
//! - **restarts**: the task containers that are not the ones running before
//!   the kill (a failover should restart none).
//!
//! ```text
//! cargo bench -p orchctl --features etcd --bench failover -- [--runs 5] [--tasks 9]
//! ```
//!
//! A benchmark, not a test: it asserts nothing about the figures.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use orch::v1::{ListNodesRequest, SubmitTaskRequest};
use orch_manager::store::etcd::local::LocalEtcd;
use support::{Options, Procs, sleeper};

/// How long one run may take to fail over before the bench gives up.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

struct Args {
    runs: usize,
    tasks: usize,
}

fn args() -> Args {
    let mut args = Args { runs: 5, tasks: 9 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--runs" => args.runs = value("--runs").parse().expect("--runs N"),
            "--tasks" => args.tasks = value("--tasks").parse().expect("--tasks N"),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => panic!("unknown argument {other:?}: --runs N --tasks N"),
        }
    }
    args
}

/// What one run measured.
struct Run {
    submit: Duration,
    workers: Duration,
    restarted: usize,
}

async fn run(tasks: usize) -> Run {
    let etcd = LocalEtcd::start(3).expect("etcd");
    let options = Options {
        heartbeat_period: "1s".into(),
        manager_args: vec!["--store".into(), etcd.store_arg("")],
        managers: 3,
        ..Options::default()
    };
    let mut cluster = Procs::start(options, 3).await;
    let image = cluster.busybox().await;
    cluster
        .run_tasks((0..tasks).map(|_| sleeper(&image)).collect())
        .await;
    let containers = |all: Vec<support::TaskContainer>| -> BTreeSet<String> {
        all.into_iter().map(|c| c.container_id).collect()
    };
    let before = containers(cluster.running_task_containers().await);

    let killed_at = SystemTime::now();
    let killed = Instant::now();
    cluster.kill_manager_at(0).await;
    // Manager 0 leads: it started first and the others waited for it.
    let submit = loop {
        let mut client = cluster.client().await;
        let call = client.submit_task(SubmitTaskRequest {
            spec: Some(sleeper(&image)),
        });
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), call).await {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < RUN_DEADLINE, "no leader took submits");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let workers = loop {
        let mut client = cluster.client().await;
        let back = match client.list_nodes(ListNodesRequest {}).await {
            Ok(reply) => reply.into_inner().nodes.iter().all(|n| {
                n.last_heartbeat
                    .as_ref()
                    .is_some_and(|t| orch::time::system_time(t) > killed_at)
            }),
            Err(_) => false,
        };
        if back {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < RUN_DEADLINE,
            "the workers did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = containers(cluster.running_task_containers().await);
    Run {
        submit,
        workers,
        restarted: before.difference(&after).count(),
    }
}

fn median(mut all: Vec<Duration>) -> Duration {
    all.sort();
    all[all.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    println!(
        "failover: {} runs, 3 etcd members, 3 managers, 3 workers, {} tasks; kill -9 of the leader",
        args.runs, args.tasks
    );
    println!("run  submit accepted  workers back  containers restarted");
    let mut runs = Vec::new();
    for i in 1..=args.runs {
        let r = run(args.tasks).await;
        println!(
            "{i:>3}  {:>13.2?}  {:>12.2?}  {:>20}",
            r.submit, r.workers, r.restarted
        );
        runs.push(r);
    }
    println!(
        "median submit accepted {:.2?} (max {:.2?}); median workers back {:.2?} (max {:.2?}); containers restarted {}",
        median(runs.iter().map(|r| r.submit).collect()),
        runs.iter().map(|r| r.submit).max().unwrap_or_default(),
        median(runs.iter().map(|r| r.workers).collect()),
        runs.iter().map(|r| r.workers).max().unwrap_or_default(),
        runs.iter().map(|r| r.restarted).sum::<usize>(),
    );
}
