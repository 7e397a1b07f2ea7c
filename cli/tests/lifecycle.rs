//! A task's life with real processes and real Docker: orchctl's manager and
//! workers run as separate processes, and the tests drive them as a person
//! would, through the `orchctl` binary where it has a command for it (`run`,
//! `status`, `node drain`, `node activate`). A crashing task is restarted
//! after growing delays and then given up on; an unhealthy one is replaced
//! per its restart policy; a drained node hands its tasks to the others and
//! takes no new ones until it is activated. Each test ends by checking,
//! through the Docker API, the exact set of running task containers.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use orch::v1::{HealthState, NodeState, Task, TaskState};
use orch_integration_tests::events::{Timed, task_events_until};
use orch_integration_tests::workloads::httpd;
use serde_json::Value;
use support::{DEADLINE, Options, Procs, sleeper};

/// The id in the JSON that `orchctl -o json run` printed.
fn id_of(printed: &Value) -> String {
    printed["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {printed}"))
        .to_string()
}

/// When the manager recorded the first event of `attempt` in `state`.
fn time_of(seen: &[Timed], attempt: u64, state: TaskState) -> SystemTime {
    seen.iter()
        .find(|e| e.task.attempt == attempt && e.task.state() == state)
        .unwrap_or_else(|| panic!("no event of attempt {attempt} {state:?} in {seen:#?}"))
        .time
}

/// `later - earlier`, which must not be negative.
fn gap(earlier: SystemTime, later: SystemTime) -> Duration {
    later
        .duration_since(earlier)
        .unwrap_or_else(|e| panic!("an event came {:?} before its cause", e.duration()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_task_restarts_after_growing_delays_then_fails_and_leaves_no_container() {
    // A worker that keeps no ended attempt's container (by default it
    // keeps the last 3, for their output: see tests/logs.rs).
    let options = Options {
        worker_args: vec!["--log-keep-attempts".into(), "0".into()],
        ..Options::default()
    };
    let cluster = Procs::start(options, 1).await;
    let image = cluster.busybox().await;
    let mut events = cluster.watch().await;
    let printed = cluster
        .orchctl_json(&[
            "run",
            "--restart",
            "on-failure",
            "--max-restarts",
            "2",
            "--stop-timeout",
            "1s",
            &image,
            "sh",
            "-c",
            "exit 3",
        ])
        .await;
    let id = id_of(&printed);
    assert_eq!(
        (&printed["attempt"], &printed["restart_count"]),
        (&Value::from(1), &Value::from(0)),
        "{printed}"
    );

    // Every attempt the manager shows has counted the restarts before it.
    let mut counts = BTreeSet::from([(1, 0)]);
    let failed = cluster
        .wait_for("the third attempt failed", |v| {
            let t = v.task(&id)?;
            counts.insert((t.attempt, t.restart_count));
            (t.attempt == 3 && t.state() == TaskState::Failed).then(|| t.clone())
        })
        .await;
    assert_eq!(
        counts,
        BTreeSet::from([(1, 0), (2, 1), (3, 2)]),
        "(attempt, restart_count) as the manager showed them"
    );
    assert_eq!(failed.exit_code, Some(3));
    assert_eq!(failed.restart_at, None, "no restart is left waiting");

    let seen = task_events_until(&mut events, &id, DEADLINE, |t| {
        t.attempt == 3 && t.state() == TaskState::Failed
    })
    .await;
    let restarts: Vec<&str> = seen
        .iter()
        .map(|e| e.task.message.as_str())
        .filter(|m| m.starts_with("restarting in"))
        .collect();
    assert_eq!(
        restarts,
        [
            "restarting in 1s: attempt 1 exited with code 3",
            "restarting in 2s: attempt 2 exited with code 3",
        ],
        "{seen:#?}"
    );
    // The waits, by the manager's clock, from an attempt's exit to the start
    // of the next (the worker's first report of it): never earlier than the
    // backoff, later by at most a housekeeping tick and a busy machine's
    // delay, and growing.
    let mut waits = Vec::new();
    for (exited, backoff) in [(1, Duration::from_secs(1)), (2, Duration::from_secs(2))] {
        let wait = gap(
            time_of(&seen, exited, TaskState::Failed),
            time_of(&seen, exited + 1, TaskState::Starting),
        );
        assert!(
            wait + Duration::from_millis(20) >= backoff && wait <= backoff + Duration::from_secs(1),
            "attempt {} started {wait:?} after attempt {exited} exited; the backoff is {backoff:?}",
            exited + 1
        );
        waits.push(wait);
    }
    eprintln!("waits between attempts: {waits:?}");
    assert!(waits[1] > waits[0], "the waits grow: {waits:?}");

    // It stays failed: nothing runs, and every attempt's container is gone.
    cluster.assert_exactly_running(&[]).await;
    cluster.assert_no_task_containers().await;
    let status = cluster.orchctl_json(&["status", &id]).await;
    assert_eq!(
        (
            &status["state"],
            &status["attempt"],
            &status["restart_count"]
        ),
        (&Value::from("failed"), &Value::from(3), &Value::from(2)),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_task_is_reported_and_replaced_per_its_restart_policy() {
    let cluster = Procs::start(Options::default(), 1).await;
    let image = cluster.busybox().await;
    let mut events = cluster.watch().await;
    // A server whose health endpoint answers 500, probed every 300 ms and
    // unhealthy after 2 failures. One restart only, so the test ends in a
    // steady state: attempt 2 is unhealthy too, and with no restarts left it
    // keeps running.
    let mut run = vec![
        "run",
        "--restart",
        "on-failure",
        "--max-restarts",
        "1",
        // httpd, as PID 1, ignores SIGTERM: do not wait 10 s for it.
        "--stop-timeout",
        "500ms",
        "--health-http",
        "8080/cgi-bin/health",
        "--health-interval",
        "300ms",
        "--health-timeout",
        "300ms",
        "--health-retries",
        "2",
        &image,
    ];
    let server = httpd(8080, "500 Internal Server Error");
    run.extend(server.iter().map(String::as_str));
    let id = id_of(&cluster.orchctl_json(&run).await);

    let second = cluster
        .wait_task(&id, |t| {
            t.attempt == 2
                && t.state() == TaskState::Running
                && t.health() == HealthState::Unhealthy
        })
        .await;
    assert_eq!(second.restart_count, 1);

    // What happened to attempt 1, from the event stream: it ran, became
    // unhealthy, was stopped and failed with the probe's reason, and the
    // restart said why.
    let seen = task_events_until(&mut events, &id, DEADLINE, |t| {
        t.attempt == 2 && t.health() == HealthState::Unhealthy
    })
    .await;
    let story: Vec<(u64, TaskState, HealthState, &str)> = seen
        .iter()
        .map(|e| {
            let t = &e.task;
            (t.attempt, t.state(), t.health(), t.message.as_str())
        })
        .collect();
    let reason = "unhealthy: HTTP 500 from /cgi-bin/health";
    for step in [
        (1, TaskState::Running, HealthState::Unhealthy, reason),
        (1, TaskState::Failed, HealthState::Unhealthy, reason),
        // A new attempt has no health until it runs.
        (
            2,
            TaskState::Pending,
            HealthState::Unspecified,
            "restarting in 1s: attempt 1 unhealthy: HTTP 500 from /cgi-bin/health",
        ),
        (2, TaskState::Running, HealthState::Unhealthy, reason),
    ] {
        assert!(story.contains(&step), "{step:?} missing from {story:#?}");
    }
    // Attempt 2 started only once attempt 1 had ended.
    assert!(
        time_of(&seen, 1, TaskState::Failed) <= time_of(&seen, 2, TaskState::Starting),
        "{seen:#?}"
    );

    let status = cluster.orchctl_json(&["status", &id]).await;
    assert_eq!(
        (&status["state"], &status["health"], &status["attempt"]),
        (
            &Value::from("running"),
            &Value::from("unhealthy"),
            &Value::from(2)
        ),
        "{status}"
    );
    cluster.assert_exactly_running(&[second]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_its_tasks_over_and_takes_new_work_only_once_activated() {
    // Three nodes of 2 cpus, and tasks of 1 cpu: four fill 4 of the 6 cpus,
    // and once one node is drained the other two are full.
    let cluster = Procs::start(Options::default(), 3).await;
    let image = cluster.busybox().await;
    let one_cpu = || {
        let mut s = sleeper(&image);
        s.milli_cpus = Some(1000);
        s
    };
    let tasks = cluster.run_tasks(vec![one_cpu(); 4]).await;
    cluster.assert_exactly_running(&tasks).await;
    // Drain the busiest node: its tasks fit on the other two exactly.
    let victim = tasks
        .iter()
        .map(|t| &t.node_id)
        .max_by_key(|n| tasks.iter().filter(|t| t.node_id == **n).count())
        .expect("a node with tasks")
        .clone();
    let name = format!("w{}", cluster.worker_of(&victim));

    let drained = cluster.orchctl_json(&["node", "drain", &name]).await;
    assert_eq!(
        (&drained["id"], &drained["state"], &drained["draining"]),
        (
            &Value::from(victim.as_str()),
            &Value::from("draining"),
            &Value::from(true)
        ),
        "{drained}"
    );
    // Its tasks run elsewhere as new attempts, the others stay as they were,
    // and the drained node's old containers are stopped.
    let moved = cluster.wait_moved(&tasks, &victim).await;
    cluster.assert_exactly_running(&moved).await;
    for t in &moved {
        assert_eq!(t.restart_count, 0, "a move is not a restart: {t:?}");
    }

    // A new task does not go to the drained node, though it is the only one
    // with room: it waits, and says why.
    let waiting = cluster.submit(one_cpu()).await;
    assert_eq!(
        (waiting.state(), waiting.node_id.as_str()),
        (TaskState::Pending, ""),
        "{waiting:?}"
    );
    assert!(
        waiting
            .message
            .contains("1 node down, draining or disconnected"),
        "{}",
        waiting.message
    );

    // Activated, the node is ready and eligible again: the waiting task
    // lands there.
    let activated = cluster.orchctl_json(&["node", "activate", &name]).await;
    assert_eq!(
        (&activated["state"], &activated["draining"]),
        (&Value::from("ready"), &Value::from(false)),
        "{activated}"
    );
    let placed = cluster
        .wait_task(&waiting.id, |t| t.state() == TaskState::Running)
        .await;
    assert_eq!(
        (placed.node_id.as_str(), placed.attempt),
        (victim.as_str(), 1)
    );
    let view = Procs::view(&mut cluster.client().await)
        .await
        .expect("view");
    assert_eq!(view.node(&victim).expect("node").state(), NodeState::Ready);
    let mut all: Vec<Task> = moved;
    all.push(placed);
    cluster.assert_exactly_running(&all).await;
}
