//! Smoke-size runs of every scenario, so CI keeps the harness working. They
//! check that the scenarios complete (every task reaches running), never how
//! fast: timings on a shared CI machine mean nothing.

use std::time::Duration;

use orch_bench::cluster::ManagerKind;
use orch_bench::{control_plane, schedule};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_runs_every_task_at_smoke_size() {
    let params = control_plane::Params {
        tasks: 200,
        workers: 10,
        clients: 2,
        batch: 50,
        heartbeat_period: Duration::from_secs(1),
        manager: ManagerKind::InProcess,
        timeout: Duration::from_secs(60),
    };
    let report = control_plane::run(&params)
        .await
        .expect("control plane run");
    assert_eq!(report.tasks, 200);
    assert_eq!(report.workers, 10);
    assert!(report.latency.0 <= report.latency.1 && report.latency.1 <= report.latency.2);
    assert!(report.store_bytes > 0, "the manager kept a store");
    println!("{report}");
}

#[test]
fn schedule_measures_every_strategy_at_every_size() {
    let table = schedule::run(&[5, 50], 200);
    // Four strategies and the full scan, at two sizes each.
    assert_eq!(table.0.len(), 10);
    assert!(table.0.iter().all(|r| r.decisions == 200));
    println!("{table}");
}
