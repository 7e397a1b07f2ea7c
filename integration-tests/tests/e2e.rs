//! End-to-end tests: a real manager and real workers over gRPC on loopback,
//! running real containers on the Docker engine.

use std::collections::HashMap;

use bollard::query_parameters::InspectContainerOptions;
use orch::v1::{
    GetTaskRequest, ListNodesRequest, ListTasksRequest, NodeState, PortMapping, StopTaskRequest,
    SubmitTaskRequest, SubmitTasksRequest, Task, TaskSpec, TaskState,
};
use orch_integration_tests::cluster::{Cluster, DEADLINE};
use orch_integration_tests::events::task_events_until;
use tonic::Code;

fn spec(image: &str, command: &[&str]) -> TaskSpec {
    TaskSpec {
        image: image.to_string(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_as_a_container_with_its_limits_and_stops() {
    let cluster = Cluster::builder().start().await;
    let image = cluster.busybox().await;
    let mut s = spec(&image, &["sleep", "300"]);
    s.name = "sleeper".into();
    s.milli_cpus = Some(500);
    s.memory_bytes = Some(64 << 20);
    s.env = HashMap::from([("GREETING".into(), "hello orch".into())]);
    s.labels = HashMap::from([("team".into(), "core".into())]);
    s.ports = vec![PortMapping {
        host_port: 18000 + (std::process::id() % 1000),
        container_port: 80,
        protocol: 0,
    }];
    s.stop_grace_period = Some(prost_types::Duration {
        seconds: 1,
        nanos: 0,
    });
    let task = cluster.submit(s).await;
    assert_eq!(task.attempt, 1);

    let running = cluster.wait_state(&task.id, TaskState::Running).await;
    assert!(!running.container_id.is_empty());
    assert!(running.started_at.is_some());

    let c = cluster
        .docker
        .inspect_container(&running.container_id, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let host = c.host_config.expect("host config");
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    let bindings = host.port_bindings.expect("port bindings");
    assert!(bindings.contains_key("80/tcp"), "{bindings:?}");
    let config = c.config.expect("config");
    assert!(
        config
            .env
            .unwrap_or_default()
            .contains(&"GREETING=hello orch".to_string()),
        "env"
    );
    assert_eq!(
        config.cmd,
        Some(vec!["sleep".to_string(), "300".to_string()])
    );
    let labels = config.labels.expect("labels");
    assert_eq!(labels.get("orch.managed").map(String::as_str), Some("true"));
    assert_eq!(labels.get("orch.task-id"), Some(&task.id));
    assert_eq!(labels.get("orch.node-id"), Some(&running.node_id));
    assert_eq!(labels.get("orch.attempt").map(String::as_str), Some("1"));
    assert!(labels.contains_key("orch.cluster"));
    assert_eq!(labels.get("team").map(String::as_str), Some("core"));
    assert_eq!(
        cluster.running_task_containers().await,
        vec![task.id.clone()]
    );

    let stopped = cluster
        .client()
        .await
        .stop_task(StopTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("stop")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(stopped.desired_state(), orch::v1::DesiredState::Stopped);
    cluster.wait_state(&task.id, TaskState::Stopped).await;
    // Kept, exited, for its output (`orchctl logs`), until its retention ends.
    let kept = cluster
        .docker
        .inspect_container(&running.container_id, None::<InspectContainerOptions>)
        .await
        .expect("a stopped container is kept");
    assert_eq!(
        kept.state.and_then(|s| s.running),
        Some(false),
        "the container should have stopped"
    );
    assert!(cluster.running_task_containers().await.is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_decide_completed_or_failed() {
    let cluster = Cluster::builder().start().await;
    let image = cluster.busybox().await;
    let ok = cluster.submit(spec(&image, &["true"])).await;
    let bad = cluster.submit(spec(&image, &["sh", "-c", "exit 3"])).await;

    let ok = cluster.wait_state(&ok.id, TaskState::Completed).await;
    assert_eq!(ok.exit_code, Some(0));
    assert!(ok.finished_at.is_some());
    let bad = cluster.wait_state(&bad.id, TaskState::Failed).await;
    assert_eq!(bad.exit_code, Some(3));
    assert!(bad.message.contains('3'), "{}", bad.message);
    // A task that ended no longer reserves anything on its node.
    let nodes = cluster
        .client()
        .await
        .list_nodes(ListNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    assert_eq!(nodes[0].task_count, 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_the_task_with_the_pull_reason() {
    let cluster = Cluster::builder().start().await;
    let task = cluster.submit(spec("orch-test/no-such-image:1", &[])).await;
    let failed = cluster.wait_state(&task.id, TaskState::Failed).await;
    assert!(
        failed.message.contains("pulling image"),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("orch-test/no-such-image"),
        "{}",
        failed.message
    );
    assert_eq!(failed.exit_code, None);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_respects_capacity_and_a_waiting_task_starts_when_room_frees() {
    let cluster = Cluster::builder()
        .workers(2)
        .worker_cpus(1000)
        .worker_memory(256 << 20)
        .start()
        .await;
    let image = cluster.busybox().await;
    let big = |name: &str| {
        let mut s = spec(&image, &["sleep", "300"]);
        s.name = name.into();
        s.milli_cpus = Some(1000);
        s.memory_bytes = Some(64 << 20);
        s.stop_grace_period = Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        });
        s
    };
    let a = cluster.submit(big("a")).await;
    let b = cluster.submit(big("b")).await;
    let a = cluster.wait_state(&a.id, TaskState::Running).await;
    let b = cluster.wait_state(&b.id, TaskState::Running).await;
    assert_ne!(a.node_id, b.node_id, "each node has room for one such task");

    let c = cluster.submit(big("c")).await;
    assert_eq!(c.state(), TaskState::Pending);
    assert_eq!(c.message, "no node fits: insufficient cpu on 2 nodes");
    assert!(c.node_id.is_empty());

    cluster
        .client()
        .await
        .stop_task(StopTaskRequest { id: a.id.clone() })
        .await
        .expect("stop");
    let c = cluster.wait_state(&c.id, TaskState::Running).await;
    assert_eq!(c.node_id, a.node_id, "c takes the room a left");
    let mut want = vec![b.id.clone(), c.id.clone()];
    want.sort();
    assert_eq!(cluster.running_task_containers().await, want);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_clear_status_and_store_nothing() {
    let cluster = Cluster::builder().workers(0).start().await;
    let mut client = cluster.client().await;
    let cases: Vec<(TaskSpec, &str)> = vec![
        (spec("", &[]), "spec.image"),
        (
            TaskSpec {
                memory_bytes: Some(0),
                ..spec("busybox", &[])
            },
            "spec.memory_bytes",
        ),
        (
            TaskSpec {
                milli_cpus: Some(-5),
                ..spec("busybox", &[])
            },
            "spec.milli_cpus",
        ),
        (
            TaskSpec {
                env: HashMap::from([("A=B".into(), "c".into())]),
                ..spec("busybox", &[])
            },
            "spec.env",
        ),
        (
            TaskSpec {
                ports: vec![PortMapping {
                    host_port: 70000,
                    container_port: 80,
                    protocol: 0,
                }],
                ..spec("busybox", &[])
            },
            "spec.ports[0].host_port",
        ),
        (
            TaskSpec {
                restart: Some(orch::v1::RestartPolicy {
                    condition: 42,
                    max_restarts: 0,
                }),
                ..spec("busybox", &[])
            },
            "spec.restart.condition",
        ),
    ];
    for (s, field) in cases {
        let err = client
            .submit_task(SubmitTaskRequest { spec: Some(s) })
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    let err = client
        .submit_task(SubmitTaskRequest { spec: None })
        .await
        .expect_err("no spec");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("spec"));

    // A batch with one bad spec stores none of them.
    let err = client
        .submit_tasks(SubmitTasksRequest {
            specs: vec![spec("busybox", &[]), spec("", &[])],
        })
        .await
        .expect_err("bad batch");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("specs[1].image"),
        "{}",
        err.message()
    );

    let listed = client
        .list_tasks(ListTasksRequest::default())
        .await
        .expect("list")
        .into_inner()
        .tasks;
    assert!(listed.is_empty(), "nothing was stored: {listed:?}");

    let err = client
        .get_task(GetTaskRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .stop_task(StopTaskRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_task(GetTaskRequest { id: "nope".into() })
        .await
        .expect_err("malformed");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("id:"), "{}", err.message());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_a_manager_restart() {
    let mut cluster = Cluster::builder().start().await;
    let image = cluster.busybox().await;
    let long = {
        // `sleep` as PID 1 ignores SIGTERM: keep the grace short.
        let mut s = spec(&image, &["sleep", "300"]);
        s.stop_grace_period = Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        });
        cluster.submit(s).await
    };
    let done = cluster.submit(spec(&image, &["sh", "-c", "exit 3"])).await;
    let waiting = {
        let mut s = spec(&image, &["sleep", "300"]);
        s.node_selector = HashMap::from([("zone".into(), "nowhere".into())]);
        cluster.submit(s).await
    };
    let long = cluster.wait_state(&long.id, TaskState::Running).await;
    cluster.wait_state(&done.id, TaskState::Failed).await;

    cluster.restart_manager().await;
    let mut client = cluster.client().await;
    let tasks: HashMap<String, Task> = client
        .list_tasks(ListTasksRequest::default())
        .await
        .expect("list")
        .into_inner()
        .tasks
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    assert_eq!(tasks.len(), 3);
    assert_eq!(tasks[&long.id].state(), TaskState::Running);
    assert_eq!(tasks[&long.id].container_id, long.container_id);
    assert_eq!(tasks[&done.id].state(), TaskState::Failed);
    assert_eq!(tasks[&done.id].exit_code, Some(3));
    assert_eq!(tasks[&waiting.id].state(), TaskState::Pending);
    assert!(tasks[&waiting.id].message.contains("zone=nowhere"));

    // The worker comes back to the restarted manager and its task is still
    // the one running, not a second copy.
    cluster.wait_ready_nodes(1).await;
    let nodes = client
        .list_nodes(ListNodesRequest {})
        .await
        .expect("nodes")
        .into_inner()
        .nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].state(), NodeState::Ready);
    assert_eq!(nodes[0].task_count, 1);
    assert_eq!(
        cluster.running_task_containers().await,
        vec![long.id.clone()]
    );
    client
        .stop_task(StopTaskRequest {
            id: long.id.clone(),
        })
        .await
        .expect("stop");
    cluster.wait_state(&long.id, TaskState::Stopped).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let cluster = Cluster::builder().workers(0).start().await;
    // No token: health checks and reflection are open, as load balancers expect.
    let channel = cluster.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "orch.v1.Cluster", "orch.v1.Dispatcher"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection response")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("not a service list: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "orch.v1.Cluster",
        "orch.v1.Dispatcher",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_task_restarts_with_growing_delays_then_fails() {
    let cluster = Cluster::builder().start().await;
    let image = cluster.busybox().await;
    let mut s = spec(&image, &["sh", "-c", "exit 3"]);
    s.restart = Some(orch::v1::RestartPolicy {
        condition: orch::v1::RestartCondition::OnFailure as i32,
        max_restarts: 2,
    });
    let mut events = cluster
        .client()
        .await
        .watch_events(orch::v1::WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let task = cluster.submit(s).await;
    let failed = cluster
        .wait_task(&task.id, |t| {
            t.state() == TaskState::Failed && t.attempt == 3
        })
        .await;
    assert_eq!(failed.restart_count, 2);
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.restart_at, None);

    // The restarts waited 1 s, then 2 s: read the waits from the event stream.
    let waits: Vec<String> = task_events_until(&mut events, &task.id, DEADLINE, |t| {
        t.attempt == 3 && t.state() == TaskState::Pending
    })
    .await
    .into_iter()
    .map(|e| e.task.message)
    .filter(|m| m.starts_with("restarting in"))
    .collect();
    assert!(
        waits[0].starts_with("restarting in 1s: attempt 1 exited with code 3"),
        "{waits:?}"
    );
    assert!(
        waits[1].starts_with("restarting in 2s: attempt 2 exited with code 3"),
        "{waits:?}"
    );
    // No restart is left waiting and nothing runs.
    let again = cluster
        .client()
        .await
        .get_task(GetTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .task
        .expect("task");
    assert_eq!((again.state(), again.attempt), (TaskState::Failed, 3));
    assert_eq!(cluster.wait_running_tasks(&[]).await, Vec::<String>::new());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_tasks_move_and_its_stale_containers_stop_when_it_returns() {
    let mut cluster = Cluster::builder().workers(2).start().await;
    let image = cluster.busybox().await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut s = spec(&image, &["sleep", "300"]);
        s.stop_grace_period = Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        });
        ids.push(cluster.submit(s).await.id);
    }
    let mut placed = Vec::new();
    for id in &ids {
        placed.push(cluster.wait_state(id, TaskState::Running).await);
    }
    assert_ne!(
        placed[0].node_id, placed[1].node_id,
        "spread puts one on each node"
    );
    let node_ids = cluster.node_ids();
    let dying = node_ids
        .iter()
        .position(|n| *n == placed[0].node_id)
        .expect("worker of task 0");

    // The worker goes away; its container keeps running, unseen.
    cluster.stop_worker(dying).await;
    let moved = cluster
        .wait_task(&ids[0], |t| {
            t.attempt == 2 && t.state() == TaskState::Running
        })
        .await;
    assert_eq!(moved.node_id, placed[1].node_id);
    assert_eq!(moved.restart_count, 0, "a lost task is not a restart");

    // It comes back: the manager's full set no longer lists its old attempt,
    // so the worker stops that container. One container per task remains.
    cluster.restart_worker(dying);
    cluster.wait_ready_nodes(2).await;
    let mut want = ids.clone();
    want.sort();
    assert_eq!(cluster.wait_running_tasks(&ids).await, want);
    let t0 = cluster
        .client()
        .await
        .get_task(GetTaskRequest { id: ids[0].clone() })
        .await
        .expect("get")
        .into_inner()
        .task
        .expect("task");
    assert_eq!((t0.state(), t0.attempt), (TaskState::Running, 2));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_moves_its_tasks_and_it_takes_no_new_work() {
    let cluster = Cluster::builder().workers(2).start().await;
    let image = cluster.busybox().await;
    let sleeper = || {
        let mut s = spec(&image, &["sleep", "300"]);
        s.stop_grace_period = Some(prost_types::Duration {
            seconds: 0,
            nanos: 0,
        });
        s
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(cluster.submit(sleeper()).await.id);
    }
    let first = cluster.wait_state(&ids[0], TaskState::Running).await;
    let second = cluster.wait_state(&ids[1], TaskState::Running).await;
    assert_ne!(first.node_id, second.node_id);

    let mut client = cluster.client().await;
    let drained = client
        .drain_node(orch::v1::DrainNodeRequest {
            id: first.node_id.clone(),
        })
        .await
        .expect("drain")
        .into_inner()
        .node
        .expect("node");
    assert_eq!(drained.state(), NodeState::Draining);
    let moved = cluster
        .wait_task(&ids[0], |t| {
            t.attempt == 2 && t.state() == TaskState::Running
        })
        .await;
    assert_eq!(moved.node_id, second.node_id);
    let mut want = ids.clone();
    want.sort();
    assert_eq!(cluster.wait_running_tasks(&ids).await, want);

    // New work avoids the drained node until it is activated.
    let third = cluster.submit(sleeper()).await;
    assert_eq!(third.node_id, second.node_id);
    client
        .activate_node(orch::v1::ActivateNodeRequest {
            id: first.node_id.clone(),
        })
        .await
        .expect("activate");
    let fourth = cluster.submit(sleeper()).await;
    assert_eq!(
        fourth.node_id, first.node_id,
        "spread picks the empty node again"
    );
    // Let both starts finish, so shutdown finds every container to remove.
    cluster.wait_state(&third.id, TaskState::Running).await;
    cluster.wait_state(&fourth.id, TaskState::Running).await;
    let err = client
        .drain_node(orch::v1::DrainNodeRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("unknown node");
    assert_eq!(err.code(), Code::NotFound);
    cluster.shutdown().await;
}
