//! End-to-end tests of health checks: a real manager and worker, real
//! containers (busybox `httpd` serving a static file or a CGI script), and
//! probes from the worker to the containers' bridge addresses.
//!
//! Every test waits on events with the harness's deadline, never sleeps, and
//! ends by checking through the Docker API exactly which task containers run.

use std::time::Duration;

use bollard::query_parameters::InspectContainerOptions;
use orch::time::duration;
use orch::v1::{
    ExecProbe, HealthCheck, HealthState, HttpProbe, RestartCondition, RestartPolicy, TaskSpec,
    TaskState, TcpProbe, WatchEventsRequest, health_check::Probe,
};
use orch_integration_tests::cluster::{Cluster, DEADLINE};
use orch_integration_tests::events::task_events_until;
use orch_integration_tests::workloads::{fast_check, httpd};

fn spec(
    image: &str,
    command: Vec<String>,
    check: HealthCheck,
    restart: RestartCondition,
) -> TaskSpec {
    TaskSpec {
        image: image.to_owned(),
        command,
        health_check: Some(check),
        restart: Some(RestartPolicy {
            condition: restart as i32,
            max_restarts: 0,
        }),
        // httpd, as PID 1, ignores SIGTERM: do not wait 10 s for it.
        stop_grace_period: Some(duration(Duration::from_millis(500))),
        ..Default::default()
    }
}

/// The attempt label of a container.
async fn running_attempt(cluster: &Cluster, container_id: &str) -> String {
    cluster
        .docker
        .inspect_container(container_id, None::<InspectContainerOptions>)
        .await
        .expect("inspect")
        .config
        .and_then(|c| c.labels)
        .and_then(|l| l.get(orch::labels::ATTEMPT).cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_task_is_restarted_on_failure() {
    let cluster = Cluster::builder().start().await;
    let image = cluster.busybox().await;
    let mut events = cluster
        .client()
        .await
        .watch_events(WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let probe = Probe::Http(HttpProbe {
        port: 8080,
        path: "/cgi-bin/health".into(),
    });
    let mut s = spec(
        &image,
        httpd(8080, "500 Internal Server Error"),
        fast_check(probe),
        RestartCondition::OnFailure,
    );
    // One restart only, so the test ends in a steady state: attempt 2 is
    // unhealthy too, and with no restarts left it keeps running.
    if let Some(r) = s.restart.as_mut() {
        r.max_restarts = 1;
    }
    let task = cluster.submit(s).await;

    let second = cluster
        .wait_task(&task.id, |t| {
            t.attempt == 2
                && t.state() == TaskState::Running
                && t.health() == HealthState::Unhealthy
        })
        .await;
    assert_eq!(second.restart_count, 1);

    // What happened to attempt 1, from the event stream: it ran, became
    // unhealthy, failed with the probe's reason, and the restart said why.
    let seen: Vec<_> = task_events_until(&mut events, &task.id, DEADLINE, |t| t.attempt == 2)
        .await
        .into_iter()
        .map(|e| {
            (
                e.task.attempt,
                e.task.state(),
                e.task.health(),
                e.task.message,
            )
        })
        .collect();
    let reason = "unhealthy: HTTP 500 from /cgi-bin/health";
    assert!(
        seen.contains(&(1, TaskState::Running, HealthState::Unhealthy, reason.into())),
        "{seen:#?}"
    );
    assert!(
        seen.contains(&(1, TaskState::Failed, HealthState::Unhealthy, reason.into())),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|(attempt, state, _, message)| *attempt == 2
            && *state == TaskState::Pending
            && message == "restarting in 1s: attempt 1 unhealthy: HTTP 500 from /cgi-bin/health"),
        "{seen:#?}"
    );

    // One container runs for the task: attempt 2's.
    assert_eq!(
        cluster
            .wait_running_tasks(std::slice::from_ref(&task.id))
            .await,
        vec![task.id.clone()]
    );
    assert_eq!(running_attempt(&cluster, &second.container_id).await, "2");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_check_answers_200_becomes_healthy() {
    let cluster = Cluster::builder().start().await;
    let image = cluster.busybox().await;
    let probe = Probe::Http(HttpProbe {
        port: 8080,
        path: "/index.html".into(),
    });
    let task = cluster
        .submit(spec(
            &image,
            httpd(8080, "200 OK"),
            fast_check(probe),
            RestartCondition::OnFailure,
        ))
        .await;
    let healthy = cluster
        .wait_task(&task.id, |t| t.health() == HealthState::Healthy)
        .await;
    assert_eq!((healthy.state(), healthy.attempt), (TaskState::Running, 1));
    assert_eq!(healthy.message, "");
    assert_eq!(
        cluster
            .wait_running_tasks(std::slice::from_ref(&task.id))
            .await,
        vec![task.id.clone()]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_against_a_listening_port_is_healthy() {
    let cluster = Cluster::builder().start().await;
    let image = cluster.busybox().await;
    let task = cluster
        .submit(spec(
            &image,
            httpd(9000, "200 OK"),
            fast_check(Probe::Tcp(TcpProbe { port: 9000 })),
            RestartCondition::OnFailure,
        ))
        .await;
    let healthy = cluster
        .wait_task(&task.id, |t| t.health() == HealthState::Healthy)
        .await;
    assert_eq!((healthy.state(), healthy.attempt), (TaskState::Running, 1));
    assert_eq!(
        cluster
            .wait_running_tasks(std::slice::from_ref(&task.id))
            .await,
        vec![task.id.clone()]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_check_that_fails_leaves_a_never_restart_task_running_unhealthy() {
    let cluster = Cluster::builder().start().await;
    let image = cluster.busybox().await;
    let probe = Probe::Exec(ExecProbe {
        command: vec!["test".into(), "-f".into(), "/ready".into()],
    });
    let task = cluster
        .submit(spec(
            &image,
            vec!["sleep".into(), "300".into()],
            fast_check(probe),
            RestartCondition::Never,
        ))
        .await;
    let unhealthy = cluster
        .wait_task(&task.id, |t| t.health() == HealthState::Unhealthy)
        .await;
    assert_eq!(
        (unhealthy.state(), unhealthy.attempt),
        (TaskState::Running, 1)
    );
    assert_eq!(
        unhealthy.message,
        "unhealthy: command `test -f /ready` exited with code 1"
    );

    // The file appears (a scratch image has no /tmp): the same container becomes healthy.
    let exec = cluster
        .docker
        .create_exec(
            &unhealthy.container_id,
            bollard::exec::CreateExecOptions {
                cmd: Some(vec!["touch", "/ready"]),
                ..Default::default()
            },
        )
        .await
        .expect("create exec");
    cluster
        .docker
        .start_exec(
            &exec.id,
            Some(bollard::exec::StartExecOptions {
                detach: true,
                ..Default::default()
            }),
        )
        .await
        .expect("start exec");
    let healthy = cluster
        .wait_task(&task.id, |t| t.health() == HealthState::Healthy)
        .await;
    assert_eq!(
        (healthy.attempt, healthy.container_id.as_str()),
        (1, unhealthy.container_id.as_str())
    );
    assert_eq!(
        cluster
            .wait_running_tasks(std::slice::from_ref(&task.id))
            .await,
        vec![task.id.clone()]
    );
    cluster.shutdown().await;
}
