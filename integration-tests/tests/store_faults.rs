//! A failing store under a real manager over real gRPC: the manager
//! acknowledges nothing and its health says `NOT_SERVING` until the store
//! works again, and then nothing it kept is lost. No worker, no Docker.

use std::sync::Arc;
use std::time::Duration;

use orch::v1::cluster_client::ClusterClient;
use orch::v1::{DesiredState, GetTaskRequest, StopTaskRequest, SubmitTaskRequest, TaskSpec};
use orch_manager::store::{FaultyStore, MemoryStore, Store};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DEADLINE: Duration = Duration::from_secs(30);

fn stop(id: &str) -> StopTaskRequest {
    StopTaskRequest { id: id.into() }
}

fn spec() -> TaskSpec {
    TaskSpec {
        image: "orch-test/none:latest".into(),
        ..Default::default()
    }
}

/// Follows the health of `service` until it reports `want`.
async fn wait_health(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
    want: ServingStatus,
) {
    let mut watch = health
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("watch health")
        .into_inner();
    let seen = tokio::time::timeout(DEADLINE, async {
        while let Some(status) = watch.next().await {
            if status.expect("health status").status() == want {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "{service} never turned {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_stops_acknowledgements_and_health_until_it_works_again() {
    let memory = Arc::new(MemoryStore::new());
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (halt, stopped) = oneshot::channel::<()>();
    // Without TLS (`--insecure`): what is tested is the store, not the transport.
    let manager = tokio::spawn(orch_manager::run_with_store(
        orch_manager::Config {
            tls: false,
            ..orch_manager::Config::default()
        },
        faulty.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut client = ClusterClient::new(channel.clone());
    let mut health = HealthClient::new(channel);

    let task = client
        .submit_task(SubmitTaskRequest { spec: Some(spec()) })
        .await
        .expect("submit while healthy")
        .into_inner()
        .task
        .expect("task");

    faulty.fail_commits(usize::MAX);
    let err = client
        .stop_task(stop(&task.id))
        .await
        .expect_err("not acknowledged while the store fails");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("injected failure"), "{err}");
    for service in ["orch.v1.Cluster", "orch.v1.Dispatcher"] {
        wait_health(&mut health, service, ServingStatus::NotServing).await;
    }
    let err = client
        .submit_task(SubmitTaskRequest { spec: Some(spec()) })
        .await
        .expect_err("no new task while the store fails");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("nothing was stored"), "{err}");
    // The task is stopped in memory, but that is not durable: a second stop
    // needs no write of its own and still is not acknowledged.
    let err = client
        .stop_task(stop(&task.id))
        .await
        .expect_err("a stop resting on an undurable change");
    assert_eq!(err.code(), Code::Unavailable, "{err}");

    faulty.fail_commits(0);
    for service in ["orch.v1.Cluster", "orch.v1.Dispatcher"] {
        wait_health(&mut health, service, ServingStatus::Serving).await;
    }
    let again = client
        .stop_task(stop(&task.id))
        .await
        .expect("acknowledged again")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(again.desired_state(), DesiredState::Stopped);
    client
        .get_task(GetTaskRequest {
            id: task.id.clone(),
        })
        .await
        .expect("get");

    let _ = halt.send(());
    manager.await.expect("join").expect("manager ran");
    let stored = memory.load().expect("load");
    assert_eq!(
        stored.tasks.len(),
        1,
        "only the acknowledged task: {stored:?}"
    );
    assert_eq!(stored.tasks[0].id, task.id);
    assert_eq!(
        stored.tasks[0].desired_state(),
        DesiredState::Stopped,
        "the stop made while the store failed was kept"
    );
}
