//! Services under failure, end to end, with orch's manager and workers as
//! separate `orchctl` processes on the real Docker engine (the process
//! harness in `support`): a replica of a killed worker runs elsewhere and
//! is not duplicated when the worker returns; a global service follows the
//! nodes as they join and are drained; a batch job never runs more tasks at
//! once than its parallelism; a manager killed mid-rollout resumes it; a
//! rollback goes to a version two back; bad input is one readable error and
//! stores nothing.
//!
//! The tests drive orch through the `orchctl` binary where it has a command
//! (`apply -f`, `service scale | ls | ps | history | rollback`, `node
//! drain`) and read its state through gRPC, waiting on the manager's events
//! with deadlines. Each test ends by checking, through the Docker API, the
//! exact set of running task containers.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;
use orch::v1::{
    ApplyServiceRequest, DesiredState, Event, GetServiceRequest, JobState, ListServicesRequest,
    ReplicatedMode, RolloutState, Service, ServiceSpec, Task, TaskSpec, TaskState, UpdateConfig,
    WatchEventsRequest, event, service_spec,
};
use orch_integration_tests::events::task_events_until;
use serde_json::Value;
use support::{DEADLINE, Options, Procs, event_time, runs, settled, tasks_of, write};
use tokio::time::Instant;
use tonic::Streaming;

/// How long a command that follows a rollout may take: starting a few
/// tasks and watching each for its monitor, on a loaded machine.
const ROLLOUT: Duration = Duration::from_secs(45);

/// How long a command that returns at once may take.
const QUICK: Duration = Duration::from_secs(30);

/// Liveness for tests in which no node should be declared down: 20 missed
/// 500 ms heartbeats (10 s), room enough for a loaded machine and for a
/// manager restart.
fn patient() -> Options {
    Options {
        missed_heartbeats: 20,
        ..Options::default()
    }
}

/// A replicated service `web` of `replicas` busybox sleepers, in the
/// manifest format: `VERSION=version` in their environment (so a new
/// `version` is a new template), stops that wait 1 s (busybox `sleep` as
/// PID 1 ignores SIGTERM), and the update config `update` (a flow mapping).
fn web(image: &str, replicas: u32, version: &str, update: &str) -> String {
    format!(
        "name: web\n\
         replicas: {replicas}\n\
         task:\n\
         \x20 image: {image}\n\
         \x20 command: [sleep, \"3600\"]\n\
         \x20 env: {{VERSION: {version}}}\n\
         \x20 stop_timeout: 1s\n\
         update: {update}\n"
    )
}

/// The `VERSION` in a task's environment.
fn env_version(t: &Task) -> &str {
    t.spec
        .as_ref()
        .and_then(|s| s.env.get("VERSION"))
        .map_or("", String::as_str)
}

/// Where each task's current attempt is: (id, attempt, node, container).
fn placement(tasks: &[Task]) -> Vec<(&str, u64, &str, &str)> {
    tasks
        .iter()
        .map(|t| {
            (
                t.id.as_str(),
                t.attempt,
                t.node_id.as_str(),
                t.container_id.as_str(),
            )
        })
        .collect()
}

/// Asserts that `tasks` are distinct tasks in distinct slots: no replica
/// is duplicated.
#[track_caller]
fn assert_distinct(tasks: &[Task]) {
    let ids: BTreeSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    let slots: BTreeSet<u32> = tasks.iter().map(|t| t.slot).collect();
    assert_eq!(
        (ids.len(), slots.len()),
        (tasks.len(), tasks.len()),
        "one task per slot: {tasks:#?}"
    );
}

/// Waits until `GetService(name)` satisfies `check`, looking again after
/// every event of the manager; returns the service as it was then. Survives
/// a manager restart (it connects again). Panics after `deadline` with
/// `what` and the service as last seen.
async fn wait_service(
    cluster: &Procs,
    name: &str,
    what: &str,
    deadline: Duration,
    mut check: impl FnMut(&Service) -> bool,
) -> Service {
    let until = Instant::now() + deadline;
    let mut last: Option<Service> = None;
    loop {
        // Subscribe first, then read: no change falls in between.
        let attempt = async {
            let mut client = cluster.client().await;
            let mut events = client
                .watch_events(WatchEventsRequest::default())
                .await?
                .into_inner();
            loop {
                let reply = client
                    .get_service(GetServiceRequest {
                        name: name.to_string(),
                    })
                    .await;
                match reply {
                    Ok(r) => {
                        if let Some(s) = r.into_inner().service {
                            if check(&s) {
                                return Ok::<_, tonic::Status>(s);
                            }
                            last = Some(s);
                        }
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(s),
                }
                if events.message().await?.is_none() {
                    return Err(tonic::Status::unavailable("event stream ended"));
                }
            }
        };
        match tokio::time::timeout_at(until, attempt).await {
            Ok(Ok(found)) => return found,
            // The manager went away (a test killed it): connect again.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => panic!(
                "service {name}: {what}: not within {deadline:?}; last seen {last:#?}; logs in {}",
                cluster.path().display()
            ),
        }
        if Instant::now() > until {
            panic!("service {name}: {what}: not within {deadline:?}; last seen {last:#?}");
        }
    }
}

/// A service's rollout state (unspecified without a rollout).
fn rollout_state(s: &Service) -> RolloutState {
    s.rollout
        .as_ref()
        .map_or(RolloutState::Unspecified, |r| r.state())
}

/// `service ls -o json`, as an array.
async fn listed(cluster: &Procs) -> Vec<Value> {
    let list = cluster.orchctl_json(&["service", "ls"]).await;
    list.as_array()
        .unwrap_or_else(|| panic!("an array: {list}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_replica_runs_elsewhere_and_no_duplicate_when_it_returns() {
    // The node must be declared down: 4 missed 500 ms heartbeats (2 s).
    let options = Options {
        missed_heartbeats: 4,
        ..Options::default()
    };
    let mut cluster = Procs::start(options, 3).await;
    let image = cluster.busybox().await;
    let file = write(
        cluster.path(),
        "web.yaml",
        &web(&image, 3, "v1", "{monitor: 1s}"),
    );
    cluster
        .orchctl_within(ROLLOUT, &["apply", "-f", &file])
        .await
        .ok();
    let before = cluster.wait_running("web", 3).await;
    let nodes: BTreeSet<&str> = before.iter().map(|t| t.node_id.as_str()).collect();
    assert_eq!(nodes.len(), 3, "one replica per node: {before:#?}");

    let victim = before[0].node_id.clone();
    let w = cluster.worker_of(&victim);
    let killed = Instant::now();
    cluster.kill_worker(w).await;

    // Back to 3 running replicas: the lost one in its slot, the same task
    // as a new attempt on another node; the others as they were.
    let moved = cluster
        .wait_for("the lost replica running elsewhere", |v| {
            let now = settled(v, "web", 3)?;
            let ok = before.iter().zip(&now).all(|(b, n)| {
                n.id == b.id
                    && n.slot == b.slot
                    && if b.node_id == victim {
                        n.attempt == b.attempt + 1 && n.node_id != victim
                    } else {
                        n.attempt == b.attempt && n.node_id == b.node_id
                    }
            });
            ok.then_some(now)
        })
        .await;
    eprintln!(
        "the lost replica ran again {:?} after the kill",
        killed.elapsed()
    );
    let view = Procs::view(&mut cluster.client().await)
        .await
        .expect("view");
    assert_eq!(
        view.node(&victim).expect("victim node").state(),
        orch::v1::NodeState::Down
    );
    assert_eq!(
        tasks_of(&view, "web").len(),
        3,
        "no task was added: {view:#?}"
    );
    assert_eq!(moved[0].restart_count, 0, "a lost task is not a restart");
    // The dead worker's container still runs, unseen, beside its new attempt.
    let stale: Vec<_> = cluster
        .running_task_containers()
        .await
        .into_iter()
        .filter(|c| c.node_id == victim)
        .collect();
    assert_eq!(stale.len(), 1, "the dead worker's container still runs");
    assert_eq!(
        (stale[0].task_id.as_str(), stale[0].attempt),
        (before[0].id.as_str(), before[0].attempt)
    );

    // It comes back: its stale container stops, and exactly the service's
    // 3 replicas run, none twice and nothing moved back.
    cluster.restart_worker(w);
    cluster.wait_node_ready(w).await;
    cluster.assert_exactly_running(&moved).await;
    let after = cluster.wait_running("web", 3).await;
    assert_eq!(
        placement(&after),
        placement(&moved),
        "nothing moved back, nothing restarted"
    );
    assert_distinct(&after);
    let web = listed(&cluster).await;
    assert_eq!(
        (&web[0]["replicas"], &web[0]["running"]),
        (&Value::from(3), &Value::from(3)),
        "{web:?}"
    );
    cluster.assert_exactly_running(&after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_service_follows_the_nodes() {
    let mut cluster = Procs::start(patient(), 2).await;
    let image = cluster.busybox().await;
    let file = write(
        cluster.path(),
        "agent.yaml",
        &format!(
            "name: agent\n\
             mode: global\n\
             task:\n\
             \x20 image: {image}\n\
             \x20 command: [sleep, \"3600\"]\n\
             \x20 stop_timeout: 1s\n\
             update: {{monitor: 1s}}\n"
        ),
    );
    cluster
        .orchctl_within(ROLLOUT, &["apply", "-f", &file])
        .await
        .ok();

    // One task per node, each bound to its node.
    let on_nodes = |tasks: &[Task]| -> BTreeSet<String> {
        for t in tasks {
            assert_eq!(t.pinned_node_id, t.node_id, "bound to its node: {t:?}");
        }
        tasks.iter().map(|t| t.node_id.clone()).collect()
    };
    let two = cluster.wait_running("agent", 2).await;
    assert_eq!(
        on_nodes(&two),
        cluster.node_ids().into_iter().collect(),
        "one task on each node"
    );

    // A new node gets one; the others keep theirs.
    let w2 = cluster.add_worker();
    cluster.wait_ready(3).await;
    let three = cluster.wait_running("agent", 3).await;
    assert_eq!(
        on_nodes(&three),
        cluster.node_ids().into_iter().collect(),
        "one task on each node, the new one too"
    );
    for t in &two {
        assert!(
            three.iter().any(|n| n.id == t.id && n.attempt == t.attempt),
            "the old nodes keep their tasks: {t:?} in {three:#?}"
        );
    }
    let new_node = cluster.node_id(w2);
    let web = listed(&cluster).await;
    assert_eq!(
        (&web[0]["desired"], &web[0]["running"]),
        (&Value::from(3), &Value::from(3)),
        "{web:?}"
    );

    // Drained, a node's task is stopped, not moved: the two others run
    // as they were, nothing runs on the drained node, and no task is added.
    // Watched from before the drain: the manager's events of that task, and
    // Docker's `die` of its container.
    let leaving = three
        .iter()
        .find(|t| t.node_id == new_node)
        .expect("the new node's task")
        .clone();
    let mut events = cluster.watch().await;
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    let since = format!("{}.{:09}", since.as_secs(), since.subsec_nanos());
    let filters = HashMap::from([
        ("type", vec!["container".to_string()]),
        ("event", vec!["die".to_string()]),
        ("container", vec![leaving.container_id.clone()]),
    ]);
    let mut dies = cluster.docker.events(Some(
        EventsOptionsBuilder::default()
            .since(&since)
            .filters(&filters)
            .build(),
    ));
    let drained = cluster
        .orchctl_json(&["node", "drain", &format!("w{w2}")])
        .await;
    assert_eq!(
        (&drained["id"], &drained["state"]),
        (&Value::from(new_node.as_str()), &Value::from("draining")),
        "{drained}"
    );
    let left = cluster.wait_running("agent", 2).await;
    let kept: Vec<Task> = three
        .iter()
        .filter(|t| t.node_id != new_node)
        .cloned()
        .collect();
    assert_eq!(
        placement(&left),
        placement(&kept),
        "the other nodes' tasks run as they were"
    );
    let view = Procs::view(&mut cluster.client().await)
        .await
        .expect("view");
    let tasks = tasks_of(&view, "agent");
    assert_eq!(tasks.len(), 3, "no task was added: {tasks:#?}");
    let stopped = view.task(&leaving.id).expect("the drained node's task");
    assert_eq!(
        (stopped.desired_state(), stopped.state()),
        (DesiredState::Stopped, TaskState::Stopped),
        "the drained node's task is stopped: {stopped:#?}"
    );

    // Stopped where it ran: no new attempt was begun for it (a global task
    // is bound to its node), and the manager said it stopped only once its
    // container had (its `die`), not while the container was still within
    // its stop grace period.
    let seen = task_events_until(&mut events, &leaving.id, DEADLINE, |e| {
        e.state() == TaskState::Stopped
    })
    .await;
    let died = tokio::time::timeout(DEADLINE, dies.next())
        .await
        .expect("the drained node's container dies")
        .expect("docker event")
        .expect("docker event ok");
    let died_at = SystemTime::UNIX_EPOCH
        + Duration::from_nanos(u64::try_from(died.time_nano.unwrap_or_default()).unwrap_or(0));
    let stopped_at = seen.last().expect("the stopped event").time;
    assert!(
        stopped_at >= died_at,
        "the manager said the task stopped {:?} before its container died; its events: {seen:#?}",
        died_at.duration_since(stopped_at).unwrap_or_default()
    );
    assert_eq!(
        (stopped.attempt, stopped.node_id.as_str()),
        (leaving.attempt, new_node.as_str()),
        "stopped where it ran, as the same attempt; its events: {seen:#?}"
    );
    assert!(
        cluster
            .running_task_containers()
            .await
            .iter()
            .all(|c| c.node_id != new_node),
        "nothing runs on the drained node"
    );
    cluster.assert_exactly_running(&left).await;
}

/// Reads `events` until a `completed` event of `n` distinct tasks of
/// service `name` has come (within the deadline); returns, per task id, the
/// manager's time of its first `running` and first `completed` event.
async fn run_times(
    events: &mut Streaming<Event>,
    name: &str,
    n: usize,
) -> BTreeMap<String, (Option<SystemTime>, Option<SystemTime>)> {
    let mut times: BTreeMap<String, (Option<SystemTime>, Option<SystemTime>)> = BTreeMap::new();
    let read = async {
        while times.values().filter(|(_, c)| c.is_some()).count() < n {
            let e = events
                .message()
                .await
                .expect("event stream")
                .expect("event stream ended");
            let at = event_time(&e);
            let Some(event::Kind::Task(t)) = e.kind else {
                continue;
            };
            if t.service != name {
                continue;
            }
            let entry = times.entry(t.task_id.clone()).or_default();
            match t.state() {
                TaskState::Running => {
                    entry.0.get_or_insert(at);
                }
                TaskState::Completed => {
                    entry.1.get_or_insert(at);
                }
                _ => {}
            }
        }
    };
    if tokio::time::timeout(DEADLINE, read).await.is_err() {
        panic!("{n} tasks of {name} completed: not within {DEADLINE:?}; saw {times:#?}");
    }
    times
}

/// The most of `intervals` (each `[start, end)`) that overlap at any moment.
fn peak(intervals: &[(SystemTime, SystemTime)]) -> usize {
    // Ends before starts at the same instant: half-open intervals.
    let mut edges: Vec<(SystemTime, i32)> = intervals
        .iter()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_job_runs_five_completions_at_most_two_at_a_time() {
    // Workers that keep no ended attempt's container, so that none is left.
    let options = Options {
        worker_args: vec!["--log-keep-attempts".into(), "0".into()],
        ..patient()
    };
    let cluster = Procs::start(options, 2).await;
    let image = cluster.busybox().await;
    let file = write(
        cluster.path(),
        "job.yaml",
        &format!(
            "name: job\n\
             mode: batch\n\
             completions: 5\n\
             parallelism: 2\n\
             task:\n\
             \x20 image: {image}\n\
             \x20 command: [sh, -c, \"sleep 1\"]\n\
             \x20 stop_timeout: 1s\n"
        ),
    );
    // Subscribed before the job exists: every event of its tasks comes.
    let mut events = cluster.watch().await;
    let ran = cluster
        .orchctl_within(ROLLOUT, &["apply", "-f", &file])
        .await;
    assert_eq!(
        ran.ok().lines().next(),
        Some("service job created (version 1)"),
        "{ran:#?}"
    );
    // apply followed the job to its end.
    let job = wait_service(&cluster, "job", "job completed", DEADLINE, |s| {
        s.job_state() != JobState::Running
    })
    .await;
    assert_eq!(
        (job.job_state(), job.completed, job.failed),
        (JobState::Completed, 5, 0),
        "{job:#?}"
    );
    let shown = listed(&cluster).await;
    assert_eq!(
        (&shown[0]["job_state"], &shown[0]["completed"]),
        (&Value::from("completed"), &Value::from(5)),
        "{shown:?}"
    );

    // Five tasks, one per slot, each completed once.
    let view = Procs::view(&mut cluster.client().await)
        .await
        .expect("view");
    let tasks = tasks_of(&view, "job");
    let slots: Vec<u32> = tasks
        .iter()
        .map(|t| t.slot)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(slots, [1, 2, 3, 4, 5], "{tasks:#?}");
    assert!(
        tasks.len() == 5 && tasks.iter().all(|t| t.state() == TaskState::Completed),
        "five tasks, each completed: {tasks:#?}"
    );

    // By the manager's clock, never more than two ran at once (and two did).
    let times = run_times(&mut events, "job", 5).await;
    let intervals: Vec<(SystemTime, SystemTime)> = times
        .iter()
        .map(|(id, (r, c))| match (r, c) {
            (Some(r), Some(c)) if r <= c => (*r, *c),
            _ => panic!("task {id}: no running before completed: {times:#?}"),
        })
        .collect();
    assert_eq!(intervals.len(), 5, "{times:#?}");
    assert_eq!(
        peak(&intervals),
        2,
        "tasks running at once, at most the parallelism: {times:#?}"
    );

    cluster.assert_exactly_running(&[]).await;
    cluster.assert_no_task_containers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_killed_mid_rollout_resumes_it_and_leaves_no_duplicates() {
    let mut cluster = Procs::start(patient(), 3).await;
    let image = cluster.busybox().await;
    let update = "{parallelism: 1, monitor: 2s}";
    let v1 = write(cluster.path(), "v1.yaml", &web(&image, 3, "v1", update));
    cluster
        .orchctl_within(ROLLOUT, &["apply", "-f", &v1])
        .await
        .ok();
    let old = cluster.wait_running("web", 3).await;

    let v2 = write(cluster.path(), "v2.yaml", &web(&image, 3, "v2", update));
    let ran = cluster
        .orchctl_within(QUICK, &["apply", "--detach", "-f", &v2])
        .await;
    assert_eq!(ran.ok(), "service web updated to version 2\n", "{ran:#?}");

    // Under way: one slot updated, the others not yet.
    let midway = wait_service(&cluster, "web", "1 of 3 updated", DEADLINE, |s| {
        s.rollout.as_ref().is_some_and(|r| r.updated >= 1)
    })
    .await;
    let r = midway.rollout.clone().unwrap_or_default();
    assert_eq!(
        (r.state(), r.to_version, r.total),
        (RolloutState::RollingOut, 2, 3),
        "still rolling out: {midway:#?}"
    );
    assert!(r.updated < 3, "{midway:#?}");
    let view = Procs::view(&mut cluster.client().await)
        .await
        .expect("view");
    let updated: Vec<Task> = tasks_of(&view, "web")
        .into_iter()
        .filter(|t| t.service_version == 2 && runs(t))
        .cloned()
        .collect();
    assert!(!updated.is_empty(), "a new task runs: {view:#?}");

    cluster.kill_manager().await;
    cluster.start_manager();

    // It resumes the rollout where it was, and completes it.
    let done = wait_service(&cluster, "web", "rollout completed", DEADLINE, |s| {
        !matches!(
            rollout_state(s),
            RolloutState::RollingOut | RolloutState::Unspecified
        )
    })
    .await;
    let r = done.rollout.clone().unwrap_or_default();
    assert_eq!(
        (done.version, r.state(), r.updated, r.failed),
        (2, RolloutState::Completed, 3, 0),
        "{done:#?}"
    );
    let new = cluster.wait_running("web", 3).await;
    assert_distinct(&new);
    for t in &new {
        assert_eq!(
            (t.service_version, env_version(t)),
            (2, "v2"),
            "every running task is of version 2: {t:#?}"
        );
        assert!(old.iter().all(|o| o.id != t.id), "replaced: {t:#?}");
    }
    for t in &updated {
        assert!(
            new.iter().any(|n| n.id == t.id && n.attempt == t.attempt),
            "a slot updated before the kill was not redone: {t:#?} in {new:#?}"
        );
    }
    let view = Procs::view(&mut cluster.client().await)
        .await
        .expect("view");
    let tasks = tasks_of(&view, "web");
    let v2_tasks = tasks.iter().filter(|t| t.service_version == 2).count();
    assert_eq!(
        (tasks.len(), v2_tasks),
        (6, 3),
        "one new task per slot, none made twice: {tasks:#?}"
    );
    cluster.assert_exactly_running(&new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_a_version_two_back() {
    let cluster = Procs::start(patient(), 2).await;
    let image = cluster.busybox().await;
    let update = "{parallelism: 2, monitor: 1s}";
    for (n, version) in ["v1", "v2", "v3"].into_iter().enumerate() {
        let file = write(
            cluster.path(),
            &format!("{version}.yaml"),
            &web(&image, 2, version, update),
        );
        let ran = cluster
            .orchctl_within(ROLLOUT, &["apply", "-f", &file])
            .await;
        assert!(
            ran.ok()
                .lines()
                .any(|l| l.starts_with(&format!("web: completed version {}", n + 1))),
            "{ran:#?}"
        );
    }
    let v3 = cluster.wait_running("web", 2).await;
    assert!(v3.iter().all(|t| t.service_version == 3), "{v3:#?}");

    let back = cluster
        .orchctl_within(
            ROLLOUT,
            &["service", "rollback", "web", "--to-version", "1"],
        )
        .await;
    assert_eq!(
        back.ok().lines().next(),
        Some("service web rolling back to version 1"),
        "{back:#?}"
    );
    let web = listed(&cluster).await;
    assert_eq!(
        (&web[0]["version"], &web[0]["rollout_state"]),
        (&Value::from(1), &Value::from("rolled_back")),
        "{web:?}"
    );
    let v1 = cluster.wait_running("web", 2).await;
    assert_distinct(&v1);
    for t in &v1 {
        assert_eq!(
            (t.service_version, env_version(t)),
            (1, "v1"),
            "every running task is of version 1: {t:#?}"
        );
    }

    let history = cluster.orchctl_json(&["service", "history", "web"]).await;
    let versions: Vec<(Value, Value)> = history
        .as_array()
        .unwrap_or_else(|| panic!("an array: {history}"))
        .iter()
        .map(|v| (v["version"].clone(), v["current"].clone()))
        .collect();
    assert_eq!(
        versions,
        [
            (1.into(), true.into()),
            (2.into(), false.into()),
            (3.into(), false.into())
        ],
        "{history}"
    );
    cluster.assert_exactly_running(&v1).await;
}

/// A valid service `ok` of one sleeper, the first document of each bad
/// file: a file refused whole must not apply it.
fn valid_first(image: &str) -> String {
    format!(
        "name: ok\n\
         task: {{image: {image}, command: [sleep, \"3600\"], stop_timeout: 1s}}\n\
         ---\n"
    )
}

/// The `FILE:LINE:COL: ` a manifest error line starts with, after
/// `orchctl: `; returns (line, column) and the rest.
#[track_caller]
fn position<'a>(line: &'a str, file: &str) -> ((usize, usize), &'a str) {
    let rest = line
        .strip_prefix(&format!("orchctl: {file}:"))
        .unwrap_or_else(|| panic!("names the file: {line}"));
    let mut parts = rest.splitn(3, ':');
    let mut number = || -> usize {
        parts
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a line and a column: {line}"))
    };
    let at = (number(), number());
    let message = parts.next().unwrap_or_default().trim_start();
    (at, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_service_input_is_one_readable_error_and_stores_nothing() {
    let cluster = Procs::start(patient(), 1).await;
    let image = cluster.busybox().await;
    let first = valid_first(&image);
    // The bad document is the second: its lines count from 4.
    let cases = [
        (
            "broken.yaml",
            format!("{first}name: web\ntask: {{image: {image}\nreplicas: 1\n"),
        ),
        (
            "unknown.yaml",
            format!("{first}name: web\ntask: {{image: {image}, imagee: x}}\n"),
        ),
        (
            "negative.yaml",
            format!("{first}name: web\nreplicas: -1\ntask: {{image: {image}}}\n"),
        ),
        (
            "parallelism.yaml",
            format!("{first}name: web\ntask: {{image: {image}}}\nupdate: {{parallelism: 0}}\n"),
        ),
    ];
    let mut lines = Vec::new();
    for (name, text) in &cases {
        let file = write(cluster.path(), name, text);
        let ran = cluster.orchctl_within(QUICK, &["apply", "-f", &file]).await;
        let line = ran.refused().to_string();
        let (at, message) = position(&line, &file);
        lines.push((*name, at, message.to_string()));
    }
    let [broken, unknown, negative, parallelism] = &lines[..] else {
        unreachable!()
    };
    // The flow mapping opened on line 5 is not closed: the parser finds out
    // at the `:` of the next key.
    assert_eq!(broken.1, (6, 9), "{broken:?}");
    assert!(broken.2.contains("flow mapping"), "{broken:?}");
    assert_eq!(unknown.1, (5, 17 + image.len()), "{unknown:?}");
    assert!(
        unknown.2.starts_with("task.imagee: ") && unknown.2.contains("unknown field"),
        "{unknown:?}"
    );
    assert_eq!(negative.1, (5, 11), "{negative:?}");
    assert_eq!(
        negative.2, "replicas: -1 must not be negative",
        "{negative:?}"
    );
    assert_eq!(parallelism.1, (6, 23), "{parallelism:?}");
    assert!(
        parallelism.2.starts_with("update.parallelism: "),
        "{parallelism:?}"
    );

    // What the manager refuses: a service that does not exist.
    let scale = cluster
        .orchctl_within(QUICK, &["service", "scale", "nosuch=3"])
        .await;
    assert_eq!(scale.refused(), "orchctl: service nosuch not found");
    let rollback = cluster
        .orchctl_within(
            QUICK,
            &["service", "rollback", "nosuch", "--to-version", "1"],
        )
        .await;
    assert_eq!(rollback.refused(), "orchctl: service nosuch not found");
    let ps = cluster
        .orchctl_within(QUICK, &["service", "ps", "nosuch"])
        .await;
    assert_eq!(ps.refused(), "orchctl: service nosuch not found");

    // orchctl has no command that only updates; gRPC does: NOT_FOUND, and
    // a bad spec sent past orchctl's checks is INVALID_ARGUMENT naming the field.
    let mut client = cluster.client().await;
    let spec = |parallelism: Option<u32>| ServiceSpec {
        name: "nosuch".into(),
        mode: Some(service_spec::Mode::Replicated(ReplicatedMode {
            replicas: Some(1),
        })),
        task: Some(TaskSpec {
            image: image.clone(),
            command: vec!["sleep".into(), "3600".into()],
            ..Default::default()
        }),
        placement: None,
        update: parallelism.map(|p| UpdateConfig {
            parallelism: Some(p),
            ..Default::default()
        }),
    };
    let update = client
        .update_service(ApplyServiceRequest {
            spec: Some(spec(None)),
        })
        .await
        .expect_err("an update of a missing service");
    assert_eq!(update.code(), tonic::Code::NotFound, "{update:?}");
    let bad = client
        .apply_service(ApplyServiceRequest {
            spec: Some(spec(Some(0))),
        })
        .await
        .expect_err("parallelism 0");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("update.parallelism"), "{bad:?}");

    // Nothing stored: no service, no task, no container.
    assert_eq!(listed(&cluster).await, Vec::<Value>::new());
    let services = client
        .list_services(ListServicesRequest::default())
        .await
        .expect("list services")
        .into_inner()
        .services;
    assert!(services.is_empty(), "{services:#?}");
    let view = Procs::view(&mut client).await.expect("view");
    assert!(view.tasks.is_empty(), "no task: {:#?}", view.tasks);
    cluster.assert_exactly_running(&[]).await;
}
