//! Smoke-size runs of every scenario, so CI keeps the harness working. They
//! check that the scenarios complete (every task reaches running), never how
//! fast: timings on a shared CI machine mean nothing.

use std::time::Duration;

use orch_bench::cluster::ManagerKind;
use orch_bench::engine::{self, System};
use orch_bench::{control_plane, schedule, service_plane};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_runs_every_task_at_smoke_size() {
    control_plane_at_smoke_size(false).await;
}

/// The same with TLS, join tokens and client tokens: every simulated worker
/// joins and gets its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_runs_every_task_at_smoke_size_with_tls() {
    control_plane_at_smoke_size(true).await;
}

async fn control_plane_at_smoke_size(tls: bool) {
    let params = control_plane::Params {
        tasks: 200,
        workers: 10,
        clients: 2,
        batch: 50,
        heartbeat_period: Duration::from_secs(1),
        manager: ManagerKind::InProcess,
        timeout: Duration::from_secs(60),
        tls,
        ..control_plane::Params::default()
    };
    let report = control_plane::run(&params)
        .await
        .expect("control plane run");
    assert_eq!(report.tasks, 200);
    assert_eq!(report.workers, 10);
    assert!(report.latency.0 <= report.latency.1 && report.latency.1 <= report.latency.2);
    assert!(report.store_bytes > 0, "the manager kept a store");
    // The watcher saw every task scheduled, starting and running.
    assert!(report.watched.0 >= 600, "{}", report.watched.0);
    assert!(report.watch_lagged.is_none(), "{:?}", report.watch_lagged);
    println!("{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_plane_runs_and_stops_every_replica_at_smoke_size() {
    let params = service_plane::Params {
        replicas: 200,
        workers: 10,
        heartbeat_period: Duration::from_secs(1),
        missed_heartbeats: 3,
        manager: ManagerKind::InProcess,
        timeout: Duration::from_secs(60),
    };
    let report = service_plane::run(&params)
        .await
        .expect("service plane run");
    assert_eq!((report.replicas, report.workers), (200, 10));
    // Each phase reached its goal (the run checks the counts through
    // GetService), and its call was answered before it ended.
    for phase in [&report.apply, &report.scale_down] {
        assert!(phase.replied <= phase.done, "{phase:?}");
    }
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

/// Held by each test of the real engine: they share its containers (each
/// run removes every container carrying the scenario's label) and its
/// swarm mode, so they must not run at the same time.
static ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether this engine is in a swarm, by `docker info`.
async fn in_swarm(docker: &bollard::Docker) -> bool {
    let info = docker.info().await.expect("docker info");
    info.swarm.and_then(|s| s.local_node_state) == Some(bollard::models::LocalNodeState::ACTIVE)
}

/// The real engine: two containers per system, one single-task pair. Swarm
/// is measured where `swarm init` works and skipped (with the reason) where
/// it does not; either way the engine is left in or out of a swarm as the
/// test found it, with none of the scenario's containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_starts_every_container_at_smoke_size() {
    let _engine = ENGINE.lock().await;
    let docker = bollard::Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("docker version");
    let swarm_before = in_swarm(&docker).await;
    let params = engine::Params {
        containers: vec![2],
        runs: 1,
        single_runs: 1,
        orch: ManagerKind::InProcess,
        swarm: true,
        settle: Duration::from_millis(100),
        timeout: Duration::from_secs(120),
        progress: true,
    };
    let report = engine::run(&params).await.expect("engine run");
    println!("{report}");

    let [row] = &report.rows[..] else {
        panic!("one row per container count: {:?}", report.rows);
    };
    let mut systems = vec![System::Orch, System::Direct];
    if report.swarm_skipped.is_none() {
        systems.push(System::Swarm);
    }
    for system in systems {
        let (_, samples) = row
            .samples
            .iter()
            .find(|(s, _)| *s == system)
            .unwrap_or_else(|| panic!("{} was measured", system.name()));
        assert_eq!(samples.len(), 1, "{}", system.name());
        assert_eq!(samples[0].starts.len(), 2, "{} started both", system.name());
    }
    let single = report.single.as_ref().expect("single-task runs");
    assert_eq!((single.orch.len(), single.bare.len()), (1, 1));

    assert_eq!(in_swarm(&docker).await, swarm_before, "swarm mode as found");
    let filters = std::collections::HashMap::from([("label", vec![engine::docker::LABEL])]);
    let left = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list containers");
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

/// The real engine's services: a service of two replicas created, and one
/// of two updated one task at a time, on orch and (where `swarm init`
/// works) on Swarm; the engine left as the test found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_create_and_update_every_replica_at_smoke_size() {
    let _engine = ENGINE.lock().await;
    let docker = bollard::Docker::connect_with_local_defaults()
        .expect("docker")
        .negotiate_version()
        .await
        .expect("docker version");
    let swarm_before = in_swarm(&docker).await;
    let params = engine::services::Params {
        replicas: 2,
        update_replicas: 2,
        parallelism: 1,
        runs: 1,
        orch: ManagerKind::InProcess,
        settle: Duration::from_millis(100),
        timeout: Duration::from_secs(120),
        progress: true,
        ..engine::services::Params::default()
    };
    let report = engine::services::run(&params).await.expect("services run");
    println!("{report}");

    assert_eq!(report.rows.len(), 2, "create and update");
    let mut systems = vec![System::Orch];
    if report.swarm_skipped.is_none() {
        systems.push(System::Swarm);
    }
    for row in &report.rows {
        for &system in &systems {
            let (_, samples) = row
                .samples
                .iter()
                .find(|(s, _)| *s == system)
                .unwrap_or_else(|| panic!("{} was measured", system.name()));
            assert_eq!(samples.len(), 1, "{}", system.name());
            assert_eq!(samples[0].starts.len(), 2, "{} started both", system.name());
            if row.scenario == engine::services::Scenario::Update {
                assert_eq!(samples[0].dies.len(), 2, "{} replaced both", system.name());
            }
        }
    }

    assert_eq!(in_swarm(&docker).await, swarm_before, "swarm mode as found");
    let filters = std::collections::HashMap::from([("label", vec![engine::docker::LABEL])]);
    let left = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .expect("list containers");
    assert!(left.is_empty(), "containers left behind: {left:?}");
}
