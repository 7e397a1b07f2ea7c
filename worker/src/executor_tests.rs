//! Executor tests over a fake runtime behind the same `Runtime` trait: the
//! test decides what the engine says (exits, lists) and sees every report.

use std::collections::HashMap;
use std::sync::Mutex;

use futures::stream::BoxStream;
use orch::v1::{TaskSpec, TaskStop};
use tokio::sync::mpsc::error::TryRecvError;

use super::*;
use crate::runtime::RuntimeError;

/// A container engine in memory. Exits are delivered only when the test
/// sends them, so a test can also lose one.
#[derive(Default)]
struct Fake {
    containers: Mutex<HashMap<String, ContainerInfo>>,
    exits: Mutex<Option<mpsc::UnboundedReceiver<Exit>>>,
    stopped: Mutex<Vec<String>>,
    next: Mutex<u32>,
    /// How many of the next stop calls fail, as with an unreachable engine.
    fail_stops: Mutex<usize>,
    /// Every stop call, failed or not.
    stop_calls: Mutex<usize>,
    /// Woken by every stop call that removed its container.
    stopped_one: tokio::sync::Notify,
}

impl Runtime for Fake {
    async fn start(&self, req: &StartRequest) -> Result<String, RuntimeError> {
        if req.spec.image == "missing" {
            return Err(RuntimeError::ImagePull {
                image: "missing".into(),
                reason: "not found".into(),
            });
        }
        let mut next = self.next.lock().unwrap();
        *next += 1;
        let id = format!("c{next}");
        self.containers.lock().unwrap().insert(
            id.clone(),
            ContainerInfo {
                container_id: id.clone(),
                task_id: req.task_id,
                attempt: req.attempt,
                running: true,
                exit_code: None,
            },
        );
        Ok(id)
    }

    async fn stop(&self, container_id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        *self.stop_calls.lock().unwrap() += 1;
        {
            let mut failing = self.fail_stops.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(RuntimeError::Engine("the engine is unreachable".into()));
            }
        }
        self.containers.lock().unwrap().remove(container_id);
        self.stopped.lock().unwrap().push(container_id.to_string());
        self.stopped_one.notify_one();
        Ok(())
    }

    async fn remove(&self, container_id: &str) -> Result<(), RuntimeError> {
        self.containers.lock().unwrap().remove(container_id);
        Ok(())
    }

    async fn list(&self, _cluster: &str, _node: Uuid) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(self.containers.lock().unwrap().values().cloned().collect())
    }

    fn exits(&self, _cluster: &str, _node: Uuid) -> BoxStream<'static, Exit> {
        let rx = self.exits.lock().unwrap().take().expect("exits taken once");
        Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
    }
}

struct Harness {
    runtime: Arc<Fake>,
    exits: mpsc::UnboundedSender<Exit>,
    executor: Executor,
    reports: mpsc::UnboundedReceiver<TaskStatus>,
    telemetry: crate::telemetry::Telemetry,
}

impl Harness {
    fn new() -> Self {
        let runtime = Arc::new(Fake::default());
        let (exits, rx) = mpsc::unbounded_channel();
        *runtime.exits.lock().unwrap() = Some(rx);
        let (tx, reports) = mpsc::unbounded_channel();
        let telemetry = crate::telemetry::Telemetry::new();
        let executor = Executor::start_measured(
            runtime.clone(),
            "cluster".into(),
            Uuid::now_v7(),
            tx,
            Retention::default(),
            telemetry.clone(),
        );
        Self {
            runtime,
            exits,
            executor,
            reports,
            telemetry,
        }
    }

    /// The container of attempt 1 of `task` exits with `code`.
    fn exit(&self, task: Uuid, container_id: &str, code: i32) {
        self.exits
            .send(Exit {
                container_id: container_id.to_owned(),
                task_id: task,
                attempt: 1,
                exit_code: code,
            })
            .unwrap();
    }

    /// One sample of the worker's metrics, by name and labels.
    fn sample(&self, name: &str) -> f64 {
        let text = orch_metrics::render(&[self.telemetry.registry()]);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
    }

    fn assign(&self, a: Assignments) {
        assert!(self.executor.send(Command::Assign(a)));
    }

    fn run(&self, task: Uuid, attempt: u64, image: &str) {
        self.assign(Assignments {
            full: false,
            run: vec![TaskAssignment {
                task_id: task.to_string(),
                attempt,
                spec: Some(TaskSpec {
                    image: image.into(),
                    ..Default::default()
                }),
            }],
            stop: vec![],
            more: false,
        });
    }

    /// Asks for one attempt to stop.
    fn stop(&self, task: Uuid, attempt: u64) {
        self.assign(Assignments {
            full: false,
            run: vec![],
            stop: vec![TaskStop {
                task_id: task.to_string(),
                attempt,
                grace_period: None,
            }],
            more: false,
        });
    }

    /// The next report, waiting for it (the actor runs on the same runtime).
    async fn next(&mut self) -> TaskStatus {
        tokio::time::timeout(Duration::from_secs(60), self.reports.recv())
            .await
            .expect("a report in time")
            .expect("executor alive")
    }

    /// The next report must be `state` for `task`/`attempt`.
    async fn expect(&mut self, task: Uuid, attempt: u64, state: TaskState) -> TaskStatus {
        let s = self.next().await;
        assert_eq!(
            (s.task_id.as_str(), s.attempt, s.state()),
            (task.to_string().as_str(), attempt, state),
            "{s:?}"
        );
        s
    }

    async fn running(&mut self, task: Uuid, attempt: u64) -> String {
        self.expect(task, attempt, TaskState::Starting).await;
        self.expect(task, attempt, TaskState::Running)
            .await
            .container_id
    }
}

#[tokio::test]
async fn a_task_starts_runs_and_its_exit_code_decides_the_end() {
    let mut h = Harness::new();
    let (ok, bad) = (Uuid::now_v7(), Uuid::now_v7());
    h.run(ok, 1, "img");
    let c_ok = h.running(ok, 1).await;
    h.run(bad, 1, "img");
    let c_bad = h.running(bad, 1).await;
    for (task, cid, code) in [(ok, &c_ok, 0), (bad, &c_bad, 3)] {
        h.exit(task, cid, code);
    }
    let done = h.expect(ok, 1, TaskState::Completed).await;
    assert_eq!(done.exit_code, Some(0));
    let failed = h.expect(bad, 1, TaskState::Failed).await;
    assert_eq!(failed.exit_code, Some(3));
    assert!(failed.message.contains("code 3"), "{}", failed.message);
}

#[tokio::test]
async fn a_failed_pull_fails_the_task_with_the_reason() {
    let mut h = Harness::new();
    let task = Uuid::now_v7();
    h.run(task, 1, "missing");
    h.expect(task, 1, TaskState::Starting).await;
    let failed = h.expect(task, 1, TaskState::Failed).await;
    assert!(
        failed.message.starts_with("pulling image missing"),
        "{}",
        failed.message
    );
}

#[tokio::test]
async fn a_stop_is_reported_once_the_container_is_gone() {
    let mut h = Harness::new();
    let task = Uuid::now_v7();
    h.run(task, 1, "img");
    let cid = h.running(task, 1).await;
    h.stop(task, 1);
    let stopped = h.expect(task, 1, TaskState::Stopped).await;
    assert_eq!(stopped.container_id, cid);
    assert_eq!(*h.runtime.stopped.lock().unwrap(), vec![cid.clone()]);
    assert!(h.runtime.containers.lock().unwrap().is_empty());
    // The die event the stop causes is not reported a second time.
    h.exits
        .send(Exit {
            container_id: cid,
            task_id: task,
            attempt: 1,
            exit_code: 137,
        })
        .unwrap();
    tokio::task::yield_now().await;
    assert_eq!(h.reports.try_recv().unwrap_err(), TryRecvError::Empty);
}

#[tokio::test]
async fn a_newer_attempt_replaces_the_old_container_and_a_full_set_stops_strays() {
    let mut h = Harness::new();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    h.run(a, 1, "img");
    let old = h.running(a, 1).await;
    h.run(b, 1, "img");
    let stray = h.running(b, 1).await;
    // Attempt 2 of `a` fences attempt 1 off; a full set without `b` stops it.
    h.run(a, 2, "img");
    // The old attempt is not reported again: the manager moved past it.
    h.running(a, 2).await;
    h.assign(Assignments {
        full: true,
        run: vec![TaskAssignment {
            task_id: a.to_string(),
            attempt: 2,
            spec: Some(TaskSpec {
                image: "img".into(),
                ..Default::default()
            }),
        }],
        stop: vec![],
        more: false,
    });
    loop {
        let s = h.next().await;
        if s.task_id == b.to_string() && s.state() == TaskState::Stopped {
            break;
        }
    }
    let stopped = h.runtime.stopped.lock().unwrap().clone();
    assert!(
        stopped.contains(&old) && stopped.contains(&stray),
        "{stopped:?}"
    );
    let left: Vec<ContainerInfo> = h
        .runtime
        .containers
        .lock()
        .unwrap()
        .values()
        .cloned()
        .collect();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].task_id, left[0].attempt), (a, 2));
}

#[tokio::test]
async fn an_ended_attempt_is_reported_again_not_rerun() {
    let mut h = Harness::new();
    let task = Uuid::now_v7();
    h.run(task, 1, "img");
    let cid = h.running(task, 1).await;
    h.exits
        .send(Exit {
            container_id: cid,
            task_id: task,
            attempt: 1,
            exit_code: 0,
        })
        .unwrap();
    h.expect(task, 1, TaskState::Completed).await;
    // A manager that missed the report assigns the attempt again.
    h.run(task, 1, "img");
    h.expect(task, 1, TaskState::Completed).await;
    assert_eq!(*h.runtime.next.lock().unwrap(), 1, "started only once");
}

#[tokio::test(start_paused = true)]
async fn an_exit_the_event_stream_lost_is_found_by_the_audit() {
    let mut h = Harness::new();
    let task = Uuid::now_v7();
    h.run(task, 1, "img");
    let cid = h.running(task, 1).await;
    // The container exits, but the engine's event never arrives.
    if let Some(c) = h.runtime.containers.lock().unwrap().get_mut(&cid) {
        c.running = false;
        c.exit_code = Some(7);
    }
    tokio::time::advance(AUDIT_PERIOD).await;
    let failed = h.expect(task, 1, TaskState::Failed).await;
    assert_eq!(failed.exit_code, Some(7));
}

#[tokio::test(start_paused = true)]
async fn a_failed_stop_is_retried_until_the_container_is_gone_and_only_then_reported() {
    let mut h = Harness::new();
    let task = Uuid::now_v7();
    h.run(task, 1, "img");
    let cid = h.running(task, 1).await;
    *h.runtime.fail_stops.lock().unwrap() = 3;
    let asked = tokio::time::Instant::now();
    h.stop(task, 1);
    // The next report is the stop, and only once a try succeeded: three
    // failures, retried after 1 s, 2 s and 4 s.
    let stopped = h.expect(task, 1, TaskState::Stopped).await;
    assert_eq!(stopped.container_id, cid);
    assert_eq!(*h.runtime.stop_calls.lock().unwrap(), 4);
    assert!(h.runtime.containers.lock().unwrap().is_empty());
    assert!(
        asked.elapsed() >= Duration::from_secs(7),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_stop_of_a_replaced_attempt_is_retried_too() {
    let mut h = Harness::new();
    let task = Uuid::now_v7();
    h.run(task, 1, "img");
    let old = h.running(task, 1).await;
    *h.runtime.fail_stops.lock().unwrap() = 2;
    // Attempt 2 fences attempt 1 off; its stop fails twice.
    h.run(task, 2, "img");
    h.running(task, 2).await;
    tokio::time::timeout(Duration::from_secs(60), h.runtime.stopped_one.notified())
        .await
        .expect("the old container is stopped in the end");
    assert_eq!(*h.runtime.stopped.lock().unwrap(), vec![old.clone()]);
    assert!(!h.runtime.containers.lock().unwrap().contains_key(&old));
    assert_eq!(*h.runtime.stop_calls.lock().unwrap(), 3);
}

#[tokio::test]
async fn a_stop_of_an_attempt_that_ended_here_is_answered_with_its_final_report() {
    let mut h = Harness::new();
    let (stopped, exited) = (Uuid::now_v7(), Uuid::now_v7());
    h.run(stopped, 1, "img");
    let c_stopped = h.running(stopped, 1).await;
    h.run(exited, 1, "img");
    let c_exited = h.running(exited, 1).await;
    h.stop(stopped, 1);
    h.expect(stopped, 1, TaskState::Stopped).await;
    h.exits
        .send(Exit {
            container_id: c_exited.clone(),
            task_id: exited,
            attempt: 1,
            exit_code: 0,
        })
        .unwrap();
    h.expect(exited, 1, TaskState::Completed).await;
    // Both reports were lost with the session: the new one opens with a full
    // set that runs neither and stops both.
    let stop = |task: Uuid| TaskStop {
        task_id: task.to_string(),
        attempt: 1,
        grace_period: None,
    };
    h.assign(Assignments {
        full: true,
        run: vec![],
        stop: vec![stop(stopped), stop(exited)],
        more: false,
    });
    let mut seen = HashMap::new();
    while seen.len() < 2 {
        let s = h.next().await;
        seen.insert(s.task_id.clone(), s);
    }
    let again = &seen[&stopped.to_string()];
    assert_eq!(
        (again.state(), again.container_id.as_str()),
        (TaskState::Stopped, c_stopped.as_str())
    );
    let again = &seen[&exited.to_string()];
    assert_eq!(
        (again.state(), again.exit_code, again.container_id.as_str()),
        (TaskState::Completed, Some(0), c_exited.as_str()),
        "the truth, not a stop"
    );
    // An attempt never run here is answered as stopped.
    let never = Uuid::now_v7();
    h.stop(never, 1);
    let answered = loop {
        let s = h.next().await;
        if s.task_id == never.to_string() {
            break s;
        }
    };
    assert_eq!(answered.state(), TaskState::Stopped);
    assert_eq!(*h.runtime.next.lock().unwrap(), 2, "nothing started again");
}

fn assignment(task: &str) -> TaskAssignment {
    TaskAssignment {
        task_id: task.into(),
        attempt: 1,
        spec: None,
    }
}

#[test]
fn a_full_set_in_parts_reaches_the_executor_whole_and_only_whole() {
    let part = |tasks: &[&str], more| Assignments {
        full: true,
        run: tasks.iter().map(|t| assignment(t)).collect(),
        stop: vec![],
        more,
    };
    let change = Assignments {
        full: false,
        run: vec![assignment("c")],
        stop: vec![],
        more: false,
    };
    let mut set = FullSet::default();
    assert_eq!(set.add(change.clone()), Some(change));
    assert_eq!(set.add(part(&["a"], true)), None);
    assert_eq!(set.add(part(&["b"], true)), None);
    let whole = set.add(part(&["c", "d"], false)).expect("the whole set");
    assert!(whole.full && !whole.more);
    let ids: Vec<&str> = whole.run.iter().map(|r| r.task_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);
    // A set in one message passes as it is, and nothing of the last is left.
    assert_eq!(set.add(part(&["e"], false)), Some(part(&["e"], false)));
}

/// The fake's containers, by id, sorted.
fn containers(h: &Harness) -> Vec<String> {
    let mut ids: Vec<String> = h
        .runtime
        .containers
        .lock()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    ids.sort();
    ids
}

#[tokio::test(start_paused = true)]
async fn ended_attempts_are_kept_the_newest_three_for_an_hour() {
    let mut h = Harness::new();
    let task = Uuid::now_v7();
    for attempt in 1..=4 {
        h.run(task, attempt, "img");
        let cid = h.running(task, attempt).await;
        h.exits
            .send(Exit {
                container_id: cid,
                task_id: task,
                attempt,
                exit_code: 1,
            })
            .unwrap();
        h.expect(task, attempt, TaskState::Failed).await;
    }
    // A full set that no longer lists the task leaves its kept containers.
    h.assign(Assignments {
        full: true,
        ..Default::default()
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while containers(&h) != ["c2", "c3", "c4"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            containers(&h)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Past the hour, the next audit removes them all.
    tokio::time::advance(Duration::from_secs(3600 + 30)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !containers(&h).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            containers(&h)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn starts_failures_exits_and_running_containers_are_counted() {
    let mut h = Harness::new();
    let (ok, bad, stopped, missing) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    let mut cids = Vec::new();
    for task in [ok, bad, stopped] {
        h.run(task, 1, "img");
        cids.push(h.running(task, 1).await);
    }
    assert_eq!(h.sample("orch_worker_container_starts_total"), 3.0);
    assert_eq!(h.sample("orch_worker_containers_running"), 3.0);
    h.run(missing, 1, "missing");
    h.expect(missing, 1, TaskState::Starting).await;
    h.expect(missing, 1, TaskState::Failed).await;
    assert_eq!(
        h.sample("orch_worker_container_start_failures_total{reason=\"pull\"}"),
        1.0
    );
    assert_eq!(h.sample("orch_worker_container_starts_total"), 3.0);

    for (task, cid, code) in [(ok, &cids[0], 0), (bad, &cids[1], 3)] {
        h.exit(task, cid, code);
    }
    h.expect(ok, 1, TaskState::Completed).await;
    h.expect(bad, 1, TaskState::Failed).await;
    h.stop(stopped, 1);
    h.expect(stopped, 1, TaskState::Stopped).await;
    assert_eq!(
        h.sample("orch_worker_container_exits_total{outcome=\"completed\"}"),
        1.0
    );
    assert_eq!(
        h.sample("orch_worker_container_exits_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(
        h.sample("orch_worker_container_exits_total{outcome=\"stopped\"}"),
        1.0
    );
    assert_eq!(h.sample("orch_worker_containers_running"), 0.0);
}
