//! Services end to end: a real manager and real workers (the in-process
//! harness) over the real Docker engine. Replicas run one per node and are
//! replaced in their slot when their container is killed; scaling changes
//! exactly how many containers run; a start-first rolling update keeps every
//! replica healthy while it replaces them; a version whose health check
//! fails is rolled back by itself and leaves no container behind.
//!
//! Every wait follows the manager's events with the harness's deadline, and
//! every test ends by checking the running containers through the Docker API.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bollard::query_parameters::KillContainerOptions;
use orch::time::duration;
use orch::v1::health_check::Probe;
use orch::v1::{
    ApplyServiceRequest, DesiredState, GetServiceRequest, HealthState, HttpProbe, ListTasksRequest,
    ReplicatedMode, RolloutState, ScaleServiceRequest, Service, ServiceChange, ServiceSpec, Task,
    TaskSpec, TaskState, UpdateConfig, UpdateOrder, WatchEventsRequest, service_spec,
};
use orch_integration_tests::cluster::{Cluster, DEADLINE};
use orch_integration_tests::workloads::{fast_check, httpd};

fn replicated(name: &str, replicas: u32, task: TaskSpec) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
            replicas: Some(replicas),
        })),
        task: Some(task),
        update: Some(UpdateConfig {
            monitor: Some(duration(Duration::from_secs(1))),
            ..UpdateConfig::default()
        }),
        ..ServiceSpec::default()
    }
}

fn sleeper(image: &str) -> TaskSpec {
    TaskSpec {
        image: image.to_owned(),
        command: vec!["sleep".into(), "3600".into()],
        stop_grace_period: Some(duration(Duration::from_millis(500))),
        ..TaskSpec::default()
    }
}

/// httpd whose health endpoint answers `status`, checked every 300 ms.
fn web(image: &str, status: &str, version: &str) -> TaskSpec {
    TaskSpec {
        image: image.to_owned(),
        command: httpd(80, status),
        env: HashMap::from([("VERSION".to_owned(), version.to_owned())]),
        health_check: Some(fast_check(Probe::Http(HttpProbe {
            port: 80,
            path: "/cgi-bin/health".into(),
        }))),
        // httpd, as PID 1, ignores SIGTERM: do not wait 10 s for it.
        stop_grace_period: Some(duration(Duration::from_millis(300))),
        ..TaskSpec::default()
    }
}

async fn apply(client: &mut orch::auth::Client, spec: ServiceSpec) -> ServiceChange {
    client
        .apply_service(ApplyServiceRequest { spec: Some(spec) })
        .await
        .expect("apply")
        .into_inner()
        .change()
}

async fn service(client: &mut orch::auth::Client, name: &str) -> Service {
    client
        .get_service(GetServiceRequest { name: name.into() })
        .await
        .expect("get service")
        .into_inner()
        .service
        .expect("a service")
}

async fn tasks(client: &mut orch::auth::Client, name: &str) -> Vec<Task> {
    client
        .list_tasks(ListTasksRequest {
            service: name.into(),
            page_size: 10_000,
            ..ListTasksRequest::default()
        })
        .await
        .expect("list tasks")
        .into_inner()
        .tasks
}

/// The service's tasks that should run.
fn wanted(tasks: &[Task]) -> Vec<&Task> {
    tasks
        .iter()
        .filter(|t| t.desired_state() == DesiredState::Running)
        .collect()
}

/// Follows the manager's events until `done` holds of the service and its
/// tasks (checked at every event), and returns them then; fails at the
/// deadline. `each` sees every state on the way.
async fn wait_service(
    cluster: &Cluster,
    name: &str,
    mut each: impl FnMut(&Service, &[Task]),
    done: impl Fn(&Service, &[Task]) -> bool,
) -> (Service, Vec<Task>) {
    let mut client = cluster.client().await;
    let mut events = client
        .watch_events(WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let s = service(&mut client, name).await;
        let t = tasks(&mut client, name).await;
        each(&s, &t);
        if done(&s, &t) {
            return (s, t);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "service {name} never got there: {s:#?} {t:#?}"
        );
        let _ = tokio::time::timeout_at(deadline, events.message()).await;
    }
}

fn rollout(s: &Service) -> RolloutState {
    s.rollout
        .as_ref()
        .map_or(RolloutState::Unspecified, |r| r.state())
}

/// The running containers of a service, as (task id, node id) from their labels.
async fn service_containers(cluster: &Cluster, name: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = cluster
        .containers(false)
        .await
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels?;
            (labels.get(orch::labels::SERVICE)? == name).then(|| {
                (
                    labels
                        .get(orch::labels::TASK_ID)
                        .cloned()
                        .unwrap_or_default(),
                    labels
                        .get(orch::labels::NODE_ID)
                        .cloned()
                        .unwrap_or_default(),
                )
            })
        })
        .collect();
    out.sort();
    out
}

fn ids(tasks: &[&Task]) -> Vec<String> {
    let mut ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_run_one_per_node_are_replaced_in_their_slot_and_scale_exactly() {
    let cluster = Cluster::builder().workers(3).start().await;
    let image = cluster.busybox().await;
    let mut client = cluster.client().await;
    assert_eq!(
        apply(&mut client, replicated("web", 3, sleeper(&image))).await,
        ServiceChange::Created
    );
    let (s, t) = wait_service(
        &cluster,
        "web",
        |_, _| {},
        |s, _| rollout(s) == RolloutState::Completed,
    )
    .await;
    assert_eq!((s.desired, s.running, s.version), (3, 3, 1));
    let running = wanted(&t);
    assert_eq!(
        cluster.wait_running_tasks(&ids(&running)).await,
        ids(&running)
    );
    let containers = service_containers(&cluster, "web").await;
    let nodes: BTreeSet<&String> = containers.iter().map(|c| &c.1).collect();
    assert_eq!(nodes.len(), 3, "one replica per node: {containers:?}");
    let slots: BTreeSet<u32> = running.iter().map(|t| t.slot).collect();
    assert_eq!(slots, BTreeSet::from([1, 2, 3]));

    // Kill one container: the same task comes back in its slot (attempt 2).
    let victim = running[0].clone();
    cluster
        .docker
        .kill_container(&victim.container_id, None::<KillContainerOptions>)
        .await
        .expect("kill");
    let (_, t) = wait_service(
        &cluster,
        "web",
        |_, _| {},
        |_, t| {
            t.iter()
                .any(|x| x.id == victim.id && x.attempt == 2 && x.state() == TaskState::Running)
        },
    )
    .await;
    let running = wanted(&t);
    assert_eq!(running.len(), 3);
    assert_eq!(
        cluster.wait_running_tasks(&ids(&running)).await,
        ids(&running)
    );

    // Scale 3 → 5 → 1: exactly that many containers each time.
    for n in [5u32, 1] {
        client
            .scale_service(ScaleServiceRequest {
                name: "web".into(),
                count: n,
            })
            .await
            .expect("scale");
        let (s, t) = wait_service(
            &cluster,
            "web",
            |_, _| {},
            |s, t| {
                s.running == n
                    && wanted(t).len() == n as usize
                    && t.iter().all(|x| {
                        x.desired_state() == DesiredState::Running
                            || orch::task_state::is_terminal(x.state())
                    })
            },
        )
        .await;
        assert_eq!(s.version, 1, "scaling is not a new version");
        let running = wanted(&t);
        assert_eq!(
            cluster.wait_running_tasks(&ids(&running)).await,
            ids(&running)
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_first_update_keeps_every_replica_healthy_and_a_failing_version_rolls_back() {
    let cluster = Cluster::builder().workers(3).start().await;
    let image = cluster.busybox().await;
    let mut client = cluster.client().await;
    let mut spec = replicated("web", 3, web(&image, "200 OK", "1"));
    if let Some(u) = spec.update.as_mut() {
        u.set_order(UpdateOrder::StartFirst);
    }
    apply(&mut client, spec.clone()).await;
    wait_service(
        &cluster,
        "web",
        |_, _| {},
        |s, _| rollout(s) == RolloutState::Completed,
    )
    .await;

    // v2: sampled at every event, never fewer than 3 healthy replicas.
    spec.task = Some(web(&image, "200 OK", "2"));
    assert_eq!(
        apply(&mut client, spec.clone()).await,
        ServiceChange::Updated
    );
    let mut fewest = usize::MAX;
    let (s, t) = wait_service(
        &cluster,
        "web",
        |_, t| {
            let healthy = t
                .iter()
                .filter(|x| x.state() == TaskState::Running && x.health() == HealthState::Healthy)
                .count();
            fewest = fewest.min(healthy);
        },
        |s, _| rollout(s) == RolloutState::Completed,
    )
    .await;
    assert!(fewest >= 3, "only {fewest} healthy replicas at one point");
    assert_eq!(s.version, 2);
    let running = wanted(&t);
    assert!(
        running.iter().all(|x| x.service_version == 2),
        "{running:#?}"
    );
    assert_eq!(
        cluster.wait_running_tasks(&ids(&running)).await,
        ids(&running)
    );

    // v3 answers 500 on its health endpoint: rolled back to v2 by itself.
    spec.task = Some(web(&image, "500 Internal Server Error", "3"));
    assert_eq!(apply(&mut client, spec).await, ServiceChange::Updated);
    let (s, t) = wait_service(
        &cluster,
        "web",
        |_, _| {},
        |s, _| rollout(s) == RolloutState::RolledBack,
    )
    .await;
    let r = s.rollout.clone().expect("rollout");
    assert_eq!((s.version, r.to_version, r.from_version), (2, 2, 3));
    assert!(r.reason.contains("new tasks failed"), "{r:?}");
    let running = wanted(&t);
    assert_eq!(running.len(), 3);
    assert!(
        running.iter().all(|x| x.service_version == 2),
        "{running:#?}"
    );
    // No v3 container is left: the running ones are exactly the v2 tasks.
    assert_eq!(
        cluster.wait_running_tasks(&ids(&running)).await,
        ids(&running)
    );
    cluster.shutdown().await;
}
