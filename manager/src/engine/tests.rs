//! Unit tests for the [`Engine`]: plain data in, worker messages and store writes out.
//!
//! Each test builds an `Engine` over a [`MemoryStore`], plays the workers through
//! `register`, `open_session` and `report`, and reads back exactly what the
//! manager pushed down each session's channel and what became durable. There is
//! no network and no Docker, and no test sleeps: liveness tests pause tokio's
//! clock and advance it.

use std::sync::Arc;
use std::time::Duration;

use orch::time::duration;
use orch::v1::{
    Assignments, DesiredState, HealthState, Node, NodeMetrics, NodeState, RegisterRequest,
    Resources, Task, TaskSpec, TaskState, TaskStatus, TaskStop, event,
};
use prost_types::Timestamp;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::{Instant, advance};
use uuid::Uuid;

use super::Engine;
use crate::Error;
use crate::dispatcher::sessions::{Liveness, Push};
use crate::persist::Committer;
use crate::scheduler::{Scheduler, Strategy};
use crate::store::{FaultyStore, MemoryStore, Snapshot, Store, Write};

/// One heartbeat a second, down after three missed: a 3s deadline.
pub(super) const LIVENESS: Liveness = Liveness {
    heartbeat_period: Duration::from_secs(1),
    missed_heartbeats: 3,
};

/// A manager's state over an in-memory store the test can read back.
pub(super) struct Fixture {
    pub(super) state: Engine,
    pub(super) store: Arc<MemoryStore>,
}

/// One worker's end of a session: what the manager pushed to it.
pub(super) struct Worker {
    pub(super) node: Uuid,
    pub(super) session: Uuid,
    pub(super) rx: crate::dispatcher::sessions::SessionRx,
}

impl Fixture {
    pub(super) fn new() -> Self {
        Self::over(Arc::new(MemoryStore::new()))
    }

    /// A state restored from whatever `store` holds, as a (re)started
    /// manager builds it.
    pub(super) fn over(store: Arc<MemoryStore>) -> Self {
        let snapshot = store.load().expect("load the store");
        let state = Engine::restore(
            snapshot,
            Scheduler::with_seed(Strategy::Spread, 1),
            Committer::start(store.clone()),
            LIVENESS,
        );
        Self { state, store }
    }

    /// Waits until every write queued so far is committed, then reads the
    /// store back.
    pub(super) async fn durable(&self) -> Snapshot {
        self.state.committer().flush().await.expect("flush");
        self.store.load().expect("load the store")
    }

    /// Submits tasks as the API does: created in the store first, then admitted.
    /// (A status written for a task the store never saw created would make
    /// the store corrupt, and `durable` would fail.)
    fn submit(&mut self, specs: Vec<TaskSpec>) -> Vec<Task> {
        let tasks = Engine::new_tasks(specs, self.state.clock().now().wall);
        let created = tasks
            .iter()
            .cloned()
            .map(|t| Write::TaskCreated(Box::new(t)))
            .collect();
        self.state.committer().queue(created);
        self.state.admit(tasks)
    }

    pub(super) fn submit_one(&mut self, spec: TaskSpec) -> Task {
        self.submit(vec![spec]).remove(0)
    }

    /// Registers a worker (`node_id` may be empty) offering `milli_cpus`;
    /// returns its node and session ids.
    pub(super) fn register(&mut self, node_id: &str, name: &str, milli_cpus: i64) -> (Uuid, Uuid) {
        let (reply, _durable) = self.state.register(RegisterRequest {
            node_id: node_id.to_owned(),
            name: name.to_owned(),
            capacity: Some(Resources {
                milli_cpus,
                ..Default::default()
            }),
            ..Default::default()
        });
        (
            reply.node_id.parse().expect("node id"),
            reply.session_id.parse().expect("session id"),
        )
    }

    pub(super) fn open(&mut self, node: Uuid, session: Uuid) -> Worker {
        let (tx, rx) = crate::dispatcher::sessions::channel();
        self.state
            .open_session(node, session, tx)
            .expect("open_session");
        Worker { node, session, rx }
    }

    /// A new node that registers and connects. Its full set is left unread.
    pub(super) fn join(&mut self, name: &str, milli_cpus: i64) -> Worker {
        let (node, session) = self.register("", name, milli_cpus);
        self.open(node, session)
    }

    pub(super) fn report(&mut self, worker: &Worker, task: &Task, state: TaskState) -> bool {
        self.report_status(worker, status(task, state))
    }

    pub(super) fn report_status(&mut self, worker: &Worker, status: TaskStatus) -> bool {
        self.state.report(worker.node, worker.session, vec![status])
    }

    /// A heartbeat from `worker`, as a sign of life.
    pub(super) fn heartbeat(&mut self, worker: &Worker) -> bool {
        self.state
            .heartbeat(worker.node, worker.session, NodeMetrics::default())
    }

    /// The task as the state holds it now.
    pub(super) fn task(&self, task: &Task) -> Task {
        self.state.task(id(task)).cloned().expect("task exists")
    }

    /// The node as `ListNodes` shows it now.
    pub(super) fn node(&self, node: Uuid) -> Node {
        self.state
            .list_nodes()
            .into_iter()
            .find(|n| n.id == node.to_string())
            .expect("node exists")
    }
}

impl Worker {
    /// The next message, which must be an `Assignments`.
    pub(super) fn next(&mut self) -> Assignments {
        match self.rx.try_recv() {
            Ok(Push::Assignments { assignments: a, .. }) => a,
            other => panic!("node {}: expected assignments, got {other:?}", self.node),
        }
    }

    /// The full set a session opens with, as task ids in any order, sorted;
    /// it must stop nothing.
    pub(super) fn full_set(&mut self) -> Vec<String> {
        let (ids, stops) = self.full_set_and_stops();
        assert!(stops.is_empty(), "expected no stops: {stops:?}");
        ids
    }

    /// The full set a session opens with, as task ids sorted, and the stops
    /// it carries (the attempts told to stop that are still active).
    pub(super) fn full_set_and_stops(&mut self) -> (Vec<String>, Vec<TaskStop>) {
        let a = self.next();
        assert!(a.full, "expected a full set, got {a:?}");
        for run in &a.run {
            assert!(run.spec.is_some(), "a run carries its spec: {run:?}");
        }
        let mut ids: Vec<String> = a.run.into_iter().map(|r| r.task_id).collect();
        ids.sort();
        (ids, a.stop)
    }

    /// The next message must be an incremental `run` of `task` alone.
    fn expect_run(&mut self, task: &Task) {
        let a = self.next();
        assert!(!a.full && a.stop.is_empty(), "expected a run, got {a:?}");
        assert_eq!(a.run.len(), 1, "{a:?}");
        assert_eq!(a.run[0].task_id, task.id);
        assert_eq!(a.run[0].attempt, task.attempt);
        assert_eq!(a.run[0].spec, task.spec);
    }

    /// The next message must be an incremental `stop` of one task.
    fn expect_stop(&mut self) -> TaskStop {
        let mut a = self.next();
        assert!(!a.full && a.run.is_empty(), "expected a stop, got {a:?}");
        assert_eq!(a.stop.len(), 1, "{a:?}");
        a.stop.remove(0)
    }

    /// Nothing more was pushed, and the session is still open.
    pub(super) fn expect_quiet(&mut self) {
        match self.rx.try_recv() {
            Err(TryRecvError::Empty) => {}
            other => panic!("node {}: expected nothing, got {other:?}", self.node),
        }
    }
}

fn id(task: &Task) -> Uuid {
    task.id.parse().expect("task id")
}

pub(super) fn spec(name: &str) -> TaskSpec {
    TaskSpec {
        name: name.to_owned(),
        image: "busybox".to_owned(),
        ..Default::default()
    }
}

fn cpu_spec(name: &str, milli_cpus: i64) -> TaskSpec {
    TaskSpec {
        milli_cpus: Some(milli_cpus),
        ..spec(name)
    }
}

/// A report about the task's current attempt.
pub(super) fn status(task: &Task, state: TaskState) -> TaskStatus {
    TaskStatus {
        task_id: task.id.clone(),
        attempt: task.attempt,
        state: state as i32,
        ..Default::default()
    }
}

/// What an event receiver says when nothing new was emitted.
fn broadcast_empty() -> tokio::sync::broadcast::error::TryRecvError {
    tokio::sync::broadcast::error::TryRecvError::Empty
}

fn allocated_cpu(node: &Node) -> i64 {
    node.allocated.expect("allocated is listed").milli_cpus
}

// ---- scheduling ----------------------------------------------------------

#[tokio::test]
async fn a_task_admitted_with_no_nodes_waits_with_a_reason_then_runs_once_a_node_connects() {
    let mut f = Fixture::new();
    let task = f.submit_one(spec("web"));
    assert_eq!(task.state(), TaskState::Pending);
    assert_eq!(task.message, "no nodes are registered");
    assert!(task.node_id.is_empty());
    let stored = f.durable().await;
    assert_eq!(stored.tasks.len(), 1);
    assert_eq!(stored.tasks[0].state(), TaskState::Pending);
    assert_eq!(stored.tasks[0].message, "no nodes are registered");

    // Registered but not connected, the node is down: the task still waits.
    let (node, session) = f.register("", "n1", 0);
    assert_eq!(f.task(&task).state(), TaskState::Pending);

    let mut worker = f.open(node, session);
    // The full set comes first (empty: nothing was placed here yet), then
    // the pending task, placed now that a node is ready.
    assert!(worker.full_set().is_empty());
    worker.expect_run(&task);
    worker.expect_quiet();
    let placed = f.task(&task);
    assert_eq!(placed.state(), TaskState::Scheduled);
    assert_eq!(placed.node_id, node.to_string());
    assert!(placed.message.is_empty(), "the old reason is cleared");
    let stored = f.durable().await;
    assert_eq!(stored.tasks, vec![placed]);
}

#[tokio::test]
async fn a_placement_reaches_its_worker_only_once_the_store_holds_it() {
    let memory = Arc::new(MemoryStore::new());
    let faulty = Arc::new(FaultyStore::new(memory.clone()));
    let mut f = Fixture {
        state: Engine::restore(
            memory.load().expect("load"),
            Scheduler::with_seed(Strategy::Spread, 1),
            Committer::start(faulty.clone()),
            LIVENESS,
        ),
        store: memory.clone(),
    };
    let mut worker = f.join("n1", 1000);
    worker.full_set();
    f.durable().await;
    let mut marks = f.state.committer().marks();

    faulty.fail_commits(usize::MAX);
    let task = f.submit_one(spec("web"));
    let after = match worker.rx.try_recv() {
        Ok(Push::Assignments { assignments, after }) => {
            assert_eq!(assignments.run[0].task_id, task.id);
            after
        }
        other => panic!("expected the assignment, got {other:?}"),
    };
    let mut health = f.state.committer().health();
    tokio::time::timeout(
        Duration::from_secs(30),
        health.wait_for(|h| *h != crate::persist::StoreHealth::Serving),
    )
    .await
    .expect("the store fails in time")
    .expect("writer alive");
    assert!(
        *marks.borrow() < after,
        "the push's job is not durable while the store fails"
    );
    assert!(
        memory.load().expect("load").tasks.is_empty(),
        "nor is the task stored"
    );

    // Once the store works again, the job is durable, and with it the
    // placement the worker is about to be sent.
    faulty.fail_commits(0);
    tokio::time::timeout(Duration::from_secs(30), marks.wait_for(|&m| m >= after))
        .await
        .expect("the retry in time")
        .expect("writer alive");
    let stored = memory.load().expect("load");
    assert_eq!(stored.tasks.len(), 1);
    assert_eq!(stored.tasks[0].state(), TaskState::Scheduled);
    assert_eq!(stored.tasks[0].node_id, worker.node.to_string());
}

#[tokio::test]
async fn open_session_sends_exactly_the_nodes_active_tasks_that_should_run() {
    let mut f = Fixture::new();
    let mut worker = f.join("n1", 0);
    assert!(worker.full_set().is_empty());
    let tasks = f.submit(vec![
        spec("keep"),
        spec("running"),
        spec("stopping"),
        spec("done"),
    ]);
    for task in &tasks {
        worker.expect_run(task);
    }
    let [keep, running, stopping, done] = <[Task; 4]>::try_from(tasks).expect("four tasks");
    assert!(f.report(&worker, &running, TaskState::Running));
    f.state.stop(id(&stopping)).expect("stop");
    worker.expect_stop();
    assert!(f.report(&worker, &done, TaskState::Completed));
    // A task on another node is not this node's business. Spread sends it to
    // the node with fewer tasks.
    let mut other = f.join("n2", 0);
    assert!(other.full_set().is_empty());
    let elsewhere = f.submit_one(spec("elsewhere"));
    other.expect_run(&elsewhere);

    // The worker reconnects under its id: register again, open the new session.
    let (node, session) = f.register(&worker.node.to_string(), "n1", 0);
    assert_eq!(node, worker.node);
    let mut again = f.open(node, session);
    let mut want = vec![keep.id, running.id];
    want.sort();
    let (runs, stops) = again.full_set_and_stops();
    assert_eq!(runs, want);
    // The task told to stop is not settled yet: it is stopped again.
    let stops: Vec<(String, u64)> = stops.into_iter().map(|s| (s.task_id, s.attempt)).collect();
    assert_eq!(stops, vec![(stopping.id.clone(), stopping.attempt)]);
    again.expect_quiet();
    // Replacing the session dropped the old stream's sender: it has ended.
    assert_eq!(
        worker.rx.try_recv().unwrap_err(),
        TryRecvError::Disconnected
    );
}

#[tokio::test]
async fn a_stop_whose_report_was_lost_with_the_session_is_sent_again_and_frees_the_node() {
    let mut f = Fixture::new();
    let mut worker = f.join("n1", 1000);
    assert!(worker.full_set().is_empty());
    let task = f.submit_one(cpu_spec("web", 1000));
    worker.expect_run(&task);
    assert!(f.report(&worker, &task, TaskState::Running));
    let (_, durable) = f.state.stop(id(&task)).expect("stop");
    durable.wait().await.expect("durable");
    let stop = worker.expect_stop();
    // The worker stops the container, but its `stopped` report is lost with
    // the broken stream; it registers again and opens a new session.
    f.state.close_session(worker.node, worker.session);
    let (node, session) = f.register(&worker.node.to_string(), "n1", 1000);
    let mut again = f.open(node, session);
    let (runs, stops) = again.full_set_and_stops();
    assert!(runs.is_empty(), "{runs:?}");
    assert_eq!(stops, vec![stop], "the same stop, grace period and all");
    assert_eq!(allocated_cpu(&f.node(node)), 1000, "still reserved");
    // The worker answers the stop of the attempt it no longer runs.
    assert!(f.report(&again, &task, TaskState::Stopped));
    assert_eq!(f.task(&task).state(), TaskState::Stopped);
    assert_eq!(
        allocated_cpu(&f.node(node)),
        0,
        "the reservation is released"
    );
    // Settled: the next session neither runs nor stops it.
    let (node, session) = f.register(&node.to_string(), "n1", 1000);
    assert_eq!(f.open(node, session).full_set_and_stops(), (vec![], vec![]));
}

#[tokio::test]
async fn full_nodes_leave_a_task_pending_until_a_finished_task_makes_room() {
    let mut f = Fixture::new();
    let mut a = f.join("a", 1000);
    let mut b = f.join("b", 1000);
    a.full_set();
    b.full_set();
    let tasks = f.submit(vec![
        cpu_spec("t1", 1000),
        cpu_spec("t2", 1000),
        cpu_spec("t3", 1000),
    ]);
    let [first, second, third] = <[Task; 3]>::try_from(tasks).expect("three tasks");
    assert_eq!(first.state(), TaskState::Scheduled);
    assert_eq!(second.state(), TaskState::Scheduled);
    assert_ne!(first.node_id, second.node_id, "one task per node");
    assert_eq!(third.state(), TaskState::Pending);
    assert_eq!(third.message, "no node fits: insufficient cpu on 2 nodes");

    let (mut holder, mut other) = if first.node_id == a.node.to_string() {
        (a, b)
    } else {
        (b, a)
    };
    holder.expect_run(&first);
    other.expect_run(&second);

    assert!(f.report(&holder, &first, TaskState::Completed));
    holder.expect_run(&third);
    holder.expect_quiet();
    other.expect_quiet();
    let placed = f.task(&third);
    assert_eq!(placed.state(), TaskState::Scheduled);
    assert_eq!(placed.node_id, holder.node.to_string());
    for node in [holder.node, other.node] {
        let node = f.node(node);
        assert_eq!(
            (node.task_count, allocated_cpu(&node)),
            (1, 1000),
            "{node:?}"
        );
    }
}

// ---- reports ---------------------------------------------------------------

#[tokio::test]
async fn reports_move_a_task_forward_and_record_what_the_worker_saw() {
    let mut f = Fixture::new();
    let mut worker = f.join("n1", 2000);
    worker.full_set();
    let task = f.submit_one(cpu_spec("web", 500));
    worker.expect_run(&task);
    let node = f.node(worker.node);
    assert_eq!((node.task_count, allocated_cpu(&node)), (1, 500));

    assert!(f.report_status(
        &worker,
        TaskStatus {
            container_id: "c0ffee".to_owned(),
            ..status(&task, TaskState::Starting)
        }
    ));
    let now = f.task(&task);
    assert_eq!(now.state(), TaskState::Starting);
    assert_eq!(now.container_id, "c0ffee");
    assert_eq!(now.started_at, None);

    // The start time is the worker's observation, not the manager's clock; a
    // report without a container id keeps the one already known.
    let seen = Timestamp {
        seconds: 1_750_000_000,
        nanos: 0,
    };
    assert!(f.report_status(
        &worker,
        TaskStatus {
            time: Some(seen),
            ..status(&task, TaskState::Running)
        }
    ));
    let now = f.task(&task);
    assert_eq!(now.state(), TaskState::Running);
    assert_eq!(now.container_id, "c0ffee");
    assert_eq!(now.started_at, Some(seen));
    assert_eq!(now.finished_at, None);

    assert!(f.report_status(
        &worker,
        TaskStatus {
            exit_code: Some(0),
            message: "exited".to_owned(),
            ..status(&task, TaskState::Completed)
        }
    ));
    let now = f.task(&task);
    assert_eq!(now.state(), TaskState::Completed);
    assert_eq!(now.exit_code, Some(0));
    assert_eq!(now.message, "exited");
    assert!(now.finished_at.is_some());
    assert_eq!(now.started_at, Some(seen));
    let node = f.node(worker.node);
    assert_eq!((node.task_count, allocated_cpu(&node)), (0, 0));
    worker.expect_quiet();
    assert_eq!(f.durable().await.tasks, vec![now]);
}

#[tokio::test]
async fn a_report_about_an_older_attempt_is_ignored_and_a_live_container_is_told_to_stop() {
    // A task at its second attempt can only come from the store: seed it.
    let store = Arc::new(MemoryStore::new());
    let mut task =
        Engine::new_tasks(vec![cpu_spec("web", 100)], std::time::SystemTime::now()).remove(0);
    task.attempt = 2;
    store
        .commit(&[Write::TaskCreated(Box::new(task.clone()))])
        .expect("seed");
    let mut f = Fixture::over(store);
    let mut worker = f.join("n1", 1000);
    assert!(worker.full_set().is_empty());
    worker.expect_run(&task);
    let before = f.task(&task);

    // (what the first attempt's container reports, whether it must be stopped)
    for (reported, told_to_stop) in [
        (TaskState::Starting, true),
        (TaskState::Running, true),
        (TaskState::Failed, false),
        (TaskState::Completed, false),
    ] {
        let stale = TaskStatus {
            attempt: 1,
            ..status(&task, reported)
        };
        assert!(f.report_status(&worker, stale), "{reported:?}");
        assert_eq!(f.task(&task), before, "{reported:?} changed the task");
        if told_to_stop {
            let stop = worker.expect_stop();
            assert_eq!((stop.task_id.as_str(), stop.attempt), (task.id.as_str(), 1));
            assert_eq!(stop.grace_period, Some(duration(Duration::from_secs(10))));
        } else {
            worker.expect_quiet();
        }
    }
    // A stale terminal report released nothing.
    let node = f.node(worker.node);
    assert_eq!((node.task_count, allocated_cpu(&node)), (1, 100));
}

#[tokio::test]
async fn a_report_from_a_session_that_is_not_current_changes_nothing() {
    let mut f = Fixture::new();
    let (node, first) = f.register("", "n1", 0);
    let old = f.open(node, first);
    let task = f.submit_one(spec("web"));
    // The worker reconnects; the first session is superseded.
    let (_, second) = f.register(&node.to_string(), "n1", 0);
    let mut current = f.open(node, second);
    assert_eq!(current.full_set(), vec![task.id.clone()]);
    let before = f.task(&task);
    let mut events = f.state.subscribe();

    assert!(!f.report(&old, &task, TaskState::Running));
    assert!(!f.state.report(
        node,
        Uuid::new_v4(),
        vec![status(&task, TaskState::Running)]
    ));
    assert!(!f.state.report(
        Uuid::new_v4(),
        second,
        vec![status(&task, TaskState::Running)]
    ));
    assert!(!f.state.heartbeat(node, first, NodeMetrics::default()));
    assert_eq!(f.task(&task), before);
    current.expect_quiet();
    assert_eq!(events.try_recv().unwrap_err(), broadcast_empty());
}

#[tokio::test]
async fn a_report_about_a_task_placed_on_another_node_is_ignored() {
    let mut f = Fixture::new();
    let mut a = f.join("a", 1000);
    let mut b = f.join("b", 1000);
    a.full_set();
    b.full_set();
    let task = f.submit_one(cpu_spec("web", 500));
    let (mut holder, mut stranger) = if task.node_id == a.node.to_string() {
        (a, b)
    } else {
        (b, a)
    };
    holder.expect_run(&task);
    let before = f.task(&task);

    // A container the stranger says is alive is not the task's: stop it.
    assert!(f.report(&stranger, &task, TaskState::Running));
    assert_eq!(f.task(&task), before);
    let stop = stranger.expect_stop();
    assert_eq!((stop.task_id.as_str(), stop.attempt), (task.id.as_str(), 1));
    // An exit it reports does not end the task, nor free its node.
    assert!(f.report(&stranger, &task, TaskState::Completed));
    assert_eq!(f.task(&task), before);
    stranger.expect_quiet();
    holder.expect_quiet();
    assert_eq!(f.node(holder.node).task_count, 1);
}

#[tokio::test]
async fn a_backwards_report_is_ignored() {
    let mut f = Fixture::new();
    let mut worker = f.join("n1", 0);
    worker.full_set();
    let task = f.submit_one(spec("web"));
    worker.expect_run(&task);
    assert!(f.report(&worker, &task, TaskState::Running));
    let before = f.task(&task);
    let mut events = f.state.subscribe();

    // A late `starting` that arrives after `running` (and a duplicate).
    for late in [
        TaskState::Starting,
        TaskState::Scheduled,
        TaskState::Running,
    ] {
        assert!(f.report(&worker, &task, late), "{late:?}");
        assert_eq!(f.task(&task), before, "{late:?} moved the task");
    }
    worker.expect_quiet();
    assert_eq!(events.try_recv().unwrap_err(), broadcast_empty());
}

// ---- stop --------------------------------------------------------------------

#[tokio::test]
async fn stopping_a_pending_task_ends_it_at_once_without_telling_any_worker() {
    let mut f = Fixture::new();
    let mut worker = f.join("n1", 1000);
    worker.full_set();
    let [placed, waiting] =
        <[Task; 2]>::try_from(f.submit(vec![cpu_spec("placed", 1000), cpu_spec("waiting", 1000)]))
            .expect("two tasks");
    worker.expect_run(&placed);
    assert_eq!(waiting.state(), TaskState::Pending);

    let (stopped, durable) = f.state.stop(id(&waiting)).expect("stop");
    durable.wait().await.expect("durable");
    assert_eq!(stopped.state(), TaskState::Stopped);
    assert_eq!(stopped.desired_state(), DesiredState::Stopped);
    assert!(stopped.finished_at.is_some());
    assert!(!stopped.message.is_empty(), "says why it never ran");
    assert_eq!(f.task(&waiting), stopped);
    worker.expect_quiet();
    assert!(f.store.load().expect("load").tasks.contains(&stopped));

    // It waits no more: room on the node does not bring it back.
    assert!(f.report(&worker, &placed, TaskState::Completed));
    worker.expect_quiet();
    assert_eq!(f.task(&waiting), stopped);
}

/// Stops a running task whose spec sets `grace` and checks the stop its
/// node receives carries `want`.
async fn check_stop_grace(grace: Option<Duration>, want: Duration) {
    let mut f = Fixture::new();
    let mut worker = f.join("n1", 1000);
    worker.full_set();
    let task = f.submit_one(TaskSpec {
        stop_grace_period: grace.map(duration),
        ..cpu_spec("web", 1000)
    });
    worker.expect_run(&task);
    assert!(f.report(&worker, &task, TaskState::Running));

    let (stopping, durable) = f.state.stop(id(&task)).expect("stop");
    durable.wait().await.expect("durable");
    // Only the worker says when the container is gone.
    assert_eq!(stopping.desired_state(), DesiredState::Stopped);
    assert_eq!(stopping.state(), TaskState::Running);
    let stop = worker.expect_stop();
    assert_eq!(
        stop,
        TaskStop {
            task_id: task.id.clone(),
            attempt: task.attempt,
            grace_period: Some(duration(want)),
        },
        "grace {grace:?}"
    );
    worker.expect_quiet();

    assert!(f.report(&worker, &task, TaskState::Stopped));
    assert_eq!(f.task(&task).state(), TaskState::Stopped);
    assert_eq!(f.node(worker.node).task_count, 0);
}

#[tokio::test]
async fn stopping_a_placed_task_tells_its_node_with_the_tasks_grace_period() {
    check_stop_grace(None, Duration::from_secs(10)).await;
    check_stop_grace(Some(Duration::from_secs(3)), Duration::from_secs(3)).await;
    check_stop_grace(
        Some(Duration::from_millis(1500)),
        Duration::from_millis(1500),
    )
    .await;
    check_stop_grace(Some(Duration::ZERO), Duration::ZERO).await;
}

#[tokio::test]
async fn stopping_twice_or_after_the_end_changes_nothing() {
    let mut f = Fixture::new();
    let mut worker = f.join("n1", 0);
    worker.full_set();
    let [done, stopping] =
        <[Task; 2]>::try_from(f.submit(vec![spec("done"), spec("stopping")])).expect("two");
    worker.expect_run(&done);
    worker.expect_run(&stopping);
    assert!(f.report(&worker, &done, TaskState::Completed));
    f.state.stop(id(&stopping)).expect("first stop");
    worker.expect_stop();
    let mut events = f.state.subscribe();

    for task in [&done, &stopping] {
        let before = f.task(task);
        let (after, durable) = f.state.stop(id(task)).expect("stop again");
        durable.wait().await.expect("nothing to wait for");
        assert_eq!(after, before);
        assert_eq!(f.task(task), before);
    }
    worker.expect_quiet();
    assert_eq!(events.try_recv().unwrap_err(), broadcast_empty());
}

#[tokio::test]
async fn stopping_an_unknown_task_is_not_found() {
    let mut f = Fixture::new();
    let result = f.state.stop(Uuid::now_v7());
    assert!(matches!(result, Err(Error::NotFound(_))));
}

// ---- registration and sessions ---------------------------------------------

#[tokio::test]
async fn register_keeps_a_valid_node_id_it_has_never_seen() {
    let mut f = Fixture::new();
    let asked = Uuid::new_v4();
    let (reply, durable) = f.state.register(RegisterRequest {
        node_id: asked.to_string(),
        name: "n1".to_owned(),
        ..Default::default()
    });
    durable.wait().await.expect("durable");
    assert_eq!(reply.node_id, asked.to_string());
    assert_eq!(reply.cluster_id, f.state.cluster_id());
    assert_eq!(
        reply.heartbeat_period,
        Some(duration(Duration::from_secs(1)))
    );
    let nodes = f.state.list_nodes();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].id, asked.to_string());
    // Not connected yet.
    assert_eq!(nodes[0].state(), NodeState::Down);
    let stored = f.store.load().expect("load");
    assert_eq!(stored.nodes.len(), 1);
    assert_eq!(stored.nodes[0].id, asked.to_string());
}

#[tokio::test]
async fn registering_twice_under_one_id_gives_one_node() {
    let mut f = Fixture::new();
    let (node, _) = f.register("", "old-name", 1000);
    let (again, _) = f.register(&node.to_string(), "new-name", 2000);
    assert_eq!(again, node);
    let nodes = f.state.list_nodes();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].name, "new-name");
    assert_eq!(nodes[0].capacity.expect("capacity").milli_cpus, 2000);
    // The store holds the node as registered; `allocated` is only filled in
    // when listed.
    let stored = f.durable().await.nodes;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].name.as_str(), stored[0].capacity),
        ("new-name", nodes[0].capacity)
    );
}

#[tokio::test]
async fn open_session_refuses_a_superseded_used_or_unknown_session() {
    let mut f = Fixture::new();
    let (node, first) = f.register("", "n1", 0);
    let (_, second) = f.register(&node.to_string(), "n1", 0);

    let (tx, mut rx) = crate::dispatcher::sessions::channel();
    let refused = f.state.open_session(node, first, tx);
    assert!(
        matches!(refused, Err(Error::FailedPrecondition(_))),
        "superseded"
    );
    // Nothing was sent, and the sender was not kept.
    assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
    assert_eq!(f.node(node).state(), NodeState::Down);

    let mut worker = f.open(node, second);
    worker.full_set();
    assert_eq!(f.node(node).state(), NodeState::Ready);

    for (node, session, case) in [
        (node, second, "already opened"),
        (Uuid::new_v4(), second, "unknown node"),
        (node, Uuid::new_v4(), "unknown session"),
    ] {
        let (tx, _rx) = crate::dispatcher::sessions::channel();
        let refused = f.state.open_session(node, session, tx);
        assert!(
            matches!(refused, Err(Error::FailedPrecondition(_))),
            "{case}"
        );
    }
    // The refusals left the open session alone.
    assert!(f.state.heartbeat(node, second, NodeMetrics::default()));
    worker.expect_quiet();
}

#[tokio::test]
async fn a_closed_session_takes_the_node_down_at_the_deadline_and_its_tasks_move() {
    tokio::time::pause();
    let mut f = Fixture::new();
    let mut gone = f.join("n1", 0);
    gone.full_set();
    let task = f.submit_one(spec("web"));
    gone.expect_run(&task);
    assert!(f.report(&gone, &task, TaskState::Running));
    let mut other = f.join("n2", 0);
    other.full_set();

    f.state.close_session(gone.node, gone.session);
    assert!(
        !f.state
            .heartbeat(gone.node, gone.session, NodeMetrics::default()),
        "a closed session is not current"
    );
    // A broken stream gets the liveness deadline to come back.
    assert_eq!(f.node(gone.node).state(), NodeState::Ready);
    tokio::time::advance(Duration::from_secs(3) + Duration::from_millis(1)).await;
    assert!(
        f.state
            .heartbeat(other.node, other.session, NodeMetrics::default())
    );
    assert_eq!(f.state.tick(Instant::now()), 1);
    assert_eq!(f.node(gone.node).state(), NodeState::Down);
    assert_eq!(f.durable().await.nodes[0].state(), NodeState::Down);

    // Its task was lost and placed again, as a new attempt, on the other node.
    let moved = f.task(&task);
    assert_eq!((moved.state(), moved.attempt), (TaskState::Scheduled, 2));
    assert_eq!(moved.node_id, other.node.to_string());
    assert_eq!(moved.restart_count, 0);
    let mut again = task.clone();
    again.attempt = 2;
    other.expect_run(&again);
    assert_eq!(f.node(gone.node).task_count, 0);
}

#[tokio::test]
async fn a_disconnected_node_takes_no_new_tasks_until_its_worker_reconnects() {
    tokio::time::pause();
    let mut f = Fixture::new();
    let mut old = f.join("n1", 0);
    old.full_set();
    f.state.close_session(old.node, old.session);
    // Within the deadline the node is still ready, but nothing is sent its way.
    assert_eq!(f.node(old.node).state(), NodeState::Ready);
    let task = f.submit_one(spec("web"));
    let waiting = f.task(&task);
    assert_eq!(waiting.state(), TaskState::Pending);
    assert_eq!(
        waiting.message,
        "no node is ready (1 node down, draining or disconnected)"
    );

    // The worker comes back in time: the task goes to it.
    let (node, session) = f.register(&old.node.to_string(), "n1", 0);
    assert_eq!(node, old.node);
    let mut back = f.open(node, session);
    assert!(back.full_set().is_empty());
    let placed = f.task(&task);
    assert_eq!(
        (placed.state(), placed.node_id.as_str()),
        (TaskState::Scheduled, node.to_string().as_str())
    );
    back.expect_run(&placed);
}

#[tokio::test]
async fn a_worker_that_falls_behind_loses_its_session_and_gets_everything_in_the_next() {
    use crate::dispatcher::sessions::SESSION_BUFFER;
    let mut f = Fixture::new();
    let mut slow = f.join("n1", 0);
    // The worker reads nothing: its full set and the pushes of the first
    // SESSION_BUFFER - 1 tasks fill its channel, the next push ends it.
    let tasks = f.submit(vec![spec("web"); SESSION_BUFFER]);
    assert!(tasks.iter().all(|t| t.state() == TaskState::Scheduled));
    // Cut off, the node takes no new task, though it stays ready within the
    // liveness deadline.
    let waiting = f.submit_one(spec("web"));
    assert_eq!(waiting.state(), TaskState::Pending);
    assert_eq!(f.node(slow.node).state(), NodeState::Ready);
    assert!(slow.full_set().is_empty());
    for _ in 1..SESSION_BUFFER {
        assert!(!slow.next().full);
    }
    match slow.rx.try_recv() {
        Ok(Push::End(why)) => assert!(why.contains("fell 65536 messages behind"), "{why}"),
        other => panic!("expected the end, got {other:?}"),
    }
    assert_eq!(slow.rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
    // Its next session gets everything, the task that waited included.
    let (node, session) = f.register(&slow.node.to_string(), "n1", 0);
    let mut back = f.open(node, session);
    assert_eq!(back.full_set().len(), SESSION_BUFFER);
    back.expect_run(&f.task(&waiting));
}

#[tokio::test]
async fn nodes_that_fall_silent_together_do_not_hand_their_tasks_to_each_other() {
    tokio::time::pause();
    let mut f = Fixture::new();
    // `busy` holds the tasks; `hung` is empty and roomy, so it would be the
    // scheduler's first choice for them, but it falls silent at the same
    // time (its stream stays open: a hung worker); `alive` has just room.
    let mut busy = f.join("busy", 4_000);
    busy.full_set();
    let tasks = f.submit(vec![cpu_spec("a", 1_000), cpu_spec("b", 1_000)]);
    for task in &tasks {
        busy.expect_run(task);
    }
    let mut hung = f.join("hung", 8_000);
    hung.full_set();
    let mut alive = f.join("alive", 2_000);
    alive.full_set();

    advance(Duration::from_secs(2)).await;
    assert!(
        f.state
            .heartbeat(alive.node, alive.session, NodeMetrics::default())
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(f.state.tick(Instant::now()), 2);

    for task in &tasks {
        let moved = f.task(task);
        assert_eq!(
            (moved.state(), moved.attempt, moved.node_id.as_str()),
            (TaskState::Scheduled, 2, alive.node.to_string().as_str()),
            "{} went straight to the live node",
            moved.spec.as_ref().map_or("", |s| s.name.as_str())
        );
    }
}

#[tokio::test]
async fn closing_a_superseded_session_changes_nothing() {
    let mut f = Fixture::new();
    let old = f.join("n1", 0);
    let (_, session) = f.register(&old.node.to_string(), "n1", 0);
    let mut current = f.open(old.node, session);
    current.full_set();
    let mut events = f.state.subscribe();

    f.state.close_session(old.node, old.session);
    assert_eq!(f.node(old.node).state(), NodeState::Ready);
    assert!(
        f.state
            .heartbeat(current.node, current.session, NodeMetrics::default())
    );
    current.expect_quiet();
    assert_eq!(events.try_recv().unwrap_err(), broadcast_empty());
}

// ---- liveness ------------------------------------------------------------------

/// Two nodes connect; 2s later `alive` shows a sign of life through `signal`.
/// 1ms before 3s `quiet` is still ready; at 3s it has been silent for the
/// whole deadline and is declared down, and `alive` (silent for only 1s) is not.
async fn check_liveness(signal: fn(&mut Engine, &Worker) -> bool) {
    tokio::time::pause();
    let mut f = Fixture::new();
    let mut quiet = f.join("quiet", 0);
    let mut alive = f.join("alive", 0);
    quiet.full_set();
    alive.full_set();

    advance(Duration::from_secs(2)).await;
    assert!(signal(&mut f.state, &alive));
    advance(Duration::from_secs(1) - Duration::from_millis(1)).await;
    assert_eq!(f.state.tick(Instant::now()), 0, "before the deadline");
    assert_eq!(
        f.state.next_due(),
        Some(Instant::now() + Duration::from_millis(1)),
        "the next thing due is quiet's deadline"
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(f.state.tick(Instant::now()), 1, "at the deadline");

    assert_eq!(f.node(quiet.node).state(), NodeState::Down);
    assert_eq!(f.node(alive.node).state(), NodeState::Ready);
    assert_eq!(
        f.state.next_due(),
        Some(Instant::now() + Duration::from_secs(2)),
        "a down node with nothing to lose has no deadline; alive's is 3s after its sign of life"
    );
    // The worker learns why its stream ended, then the stream ends.
    match quiet.rx.try_recv() {
        Ok(Push::End(why)) => assert!(why.contains("no heartbeat"), "{why}"),
        other => panic!("expected the end of the session, got {other:?}"),
    }
    assert_eq!(quiet.rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
    assert!(
        !f.state
            .heartbeat(quiet.node, quiet.session, NodeMetrics::default())
    );
    alive.expect_quiet();
    // Checking again finds nothing new.
    assert_eq!(f.state.tick(Instant::now()), 0);
    let stored = f.durable().await;
    let down = stored.nodes.iter().find(|n| n.id == quiet.node.to_string());
    assert_eq!(down.expect("stored").state(), NodeState::Down);
}

#[tokio::test]
async fn a_silent_node_is_declared_down_and_a_node_that_heartbeats_stays_ready() {
    check_liveness(|state, w| state.heartbeat(w.node, w.session, NodeMetrics::default())).await;
}

#[tokio::test]
async fn a_report_counts_as_a_sign_of_life() {
    check_liveness(|state, w| state.report(w.node, w.session, vec![])).await;
}

// ---- restore -------------------------------------------------------------------

#[tokio::test]
async fn a_restarted_manager_brings_nodes_back_down_and_keeps_tasks_and_allocations() {
    let store = Arc::new(MemoryStore::new());
    let mut before = Fixture::over(store.clone());
    let mut worker = before.join("n1", 1000);
    worker.full_set();
    let [running, waiting] = <[Task; 2]>::try_from(
        before.submit(vec![cpu_spec("running", 1000), cpu_spec("waiting", 1000)]),
    )
    .expect("two tasks");
    worker.expect_run(&running);
    assert!(before.report(&worker, &running, TaskState::Running));
    assert_eq!(before.task(&waiting).state(), TaskState::Pending);
    let cluster_id = before.state.cluster_id().to_owned();
    before.durable().await;
    drop(before);

    let mut after = Fixture::over(store);
    assert_eq!(after.state.cluster_id(), cluster_id);
    let node = after.node(worker.node);
    assert_eq!(node.state(), NodeState::Down, "until its worker reconnects");
    assert_eq!((node.task_count, allocated_cpu(&node)), (1, 1000));
    assert_eq!(after.task(&running).state(), TaskState::Running);
    assert_eq!(after.task(&waiting).state(), TaskState::Pending);
    // The task that waited keeps its attempt number: no worker was ever
    // sent it (a placement goes out only once stored).
    assert_eq!(after.task(&waiting).attempt, waiting.attempt);
    let stored = after.durable().await;
    assert_eq!(stored.nodes[0].state(), NodeState::Down);
    let kept = stored
        .tasks
        .iter()
        .find(|t| t.id == waiting.id)
        .expect("stored");
    assert_eq!(kept.attempt, waiting.attempt);
    assert_eq!(
        stored
            .tasks
            .iter()
            .find(|t| t.id == running.id)
            .map(|t| t.attempt),
        Some(running.attempt),
        "a running task keeps its attempt"
    );

    // A new node connects: the pending task is placed there.
    let mut fresh = after.join("n2", 1000);
    assert!(fresh.full_set().is_empty());
    fresh.expect_run(&waiting);
    // The old worker reconnects and is told to keep running its task; its
    // node is still full, so nothing else comes its way.
    let (node, session) = after.register(&worker.node.to_string(), "n1", 1000);
    let mut back = after.open(node, session);
    assert_eq!(back.full_set(), vec![running.id.clone()]);
    back.expect_quiet();
    fresh.expect_quiet();
}

// ---- events --------------------------------------------------------------------

#[tokio::test]
async fn events_are_numbered_in_order_and_durable() {
    let mut f = Fixture::new();
    let mut events = f.state.subscribe();
    let mut worker = f.join("n1", 0);
    worker.full_set();
    let task = f.submit_one(spec("web"));
    assert!(f.report(&worker, &task, TaskState::Running));
    assert!(f.report(&worker, &task, TaskState::Completed));

    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    let sequences: Vec<u64> = seen.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=4).collect::<Vec<_>>());
    let task_states: Vec<(TaskState, &str)> = seen
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::Task(t)) if t.task_id == task.id => {
                Some((t.state(), t.name.as_str()))
            }
            _ => None,
        })
        .collect();
    // Each names its task, for people reading `orchctl events`.
    assert_eq!(
        task_states,
        [
            (TaskState::Scheduled, "web"),
            (TaskState::Running, "web"),
            (TaskState::Completed, "web")
        ]
    );
    assert!(matches!(&seen[0].kind, Some(event::Kind::Node(n)) if n.state() == NodeState::Ready));

    let stored = f.durable().await;
    assert_eq!(stored.last_event_sequence, 4);
    assert_eq!(f.store.events_after(0, 100).expect("events"), seen);
}

#[tokio::test]
async fn event_numbers_continue_after_a_restart() {
    let store = Arc::new(MemoryStore::new());
    let mut before = Fixture::over(store.clone());
    before.submit_one(spec("web"));
    before.submit_one(spec("api"));
    assert_eq!(before.durable().await.last_event_sequence, 2);
    drop(before);

    let mut after = Fixture::over(store);
    let mut events = after.state.subscribe();
    after.submit_one(spec("db"));
    assert_eq!(events.try_recv().expect("an event").sequence, 3);
}

#[tokio::test]
async fn a_stale_attempt_is_stopped_with_the_tasks_grace_period() {
    let store = Arc::new(MemoryStore::new());
    let mut task = Engine::new_tasks(
        vec![TaskSpec {
            stop_grace_period: Some(duration(Duration::from_secs(60))),
            ..spec("db")
        }],
        std::time::SystemTime::now(),
    )
    .remove(0);
    task.attempt = 2;
    store
        .commit(&[Write::TaskCreated(Box::new(task.clone()))])
        .expect("seed");
    let mut f = Fixture::over(store);
    let mut worker = f.join("n1", 0);
    worker.full_set();
    worker.expect_run(&task);
    assert!(f.report_status(
        &worker,
        TaskStatus {
            attempt: 1,
            ..status(&task, TaskState::Running)
        }
    ));
    let stop = worker.expect_stop();
    assert_eq!(stop.grace_period, Some(duration(Duration::from_secs(60))));
}

// ---- drain ---------------------------------------------------------------------

#[tokio::test]
async fn draining_starts_the_new_attempt_elsewhere_before_stopping_the_old_one() {
    let mut f = Fixture::new();
    let mut a = f.join("a", 0);
    a.full_set();
    let task = f.submit_one(spec("web"));
    a.expect_run(&task);
    assert!(f.report(&a, &task, TaskState::Running));
    let mut b = f.join("b", 0);
    b.full_set();

    let (node, _) = f.state.drain(a.node).expect("drain");
    assert_eq!(node.state(), NodeState::Draining);
    assert!(node.draining);
    assert_eq!(node.task_count, 0);
    let moved = f.task(&task);
    assert_eq!((moved.state(), moved.attempt), (TaskState::Scheduled, 2));
    assert_eq!(moved.node_id, b.node.to_string());
    b.expect_run(&moved);
    // The old container runs on until the new one does.
    a.expect_quiet();
    assert!(f.report(&b, &moved, TaskState::Running));
    let stop = a.expect_stop();
    assert_eq!((stop.task_id.as_str(), stop.attempt), (task.id.as_str(), 1));

    // A drained node takes no new work, and keeps its flag through a restart.
    let other = f.submit_one(spec("other"));
    b.expect_run(&f.task(&other));
    assert!(f.durable().await.nodes[0].draining);
    let (node, _) = f.state.activate(a.node).expect("activate");
    assert_eq!(node.state(), NodeState::Ready);
    assert!(!node.draining);
}

#[tokio::test]
async fn draining_with_no_room_elsewhere_stops_the_task_and_leaves_it_pending() {
    let mut f = Fixture::new();
    let mut a = f.join("a", 1000);
    a.full_set();
    let task = f.submit_one(cpu_spec("big", 1000));
    a.expect_run(&task);
    assert!(f.report(&a, &task, TaskState::Running));

    f.state.drain(a.node).expect("drain");
    let stop = a.expect_stop();
    assert_eq!(stop.attempt, 1);
    let waiting = f.task(&task);
    assert_eq!((waiting.state(), waiting.attempt), (TaskState::Pending, 2));
    assert!(waiting.message.contains("draining"), "{}", waiting.message);

    // Activating the node lets the task come back.
    f.state.activate(a.node).expect("activate");
    a.expect_run(&f.task(&task));
    assert!(matches!(
        f.state.drain(Uuid::now_v7()),
        Err(crate::Error::NotFound(_))
    ));
}

// ---- health --------------------------------------------------------------------

/// A task with an HTTP health check and `condition` as its restart policy.
fn checked_spec(name: &str, condition: orch::v1::RestartCondition) -> TaskSpec {
    TaskSpec {
        restart: Some(orch::v1::RestartPolicy {
            condition: condition as i32,
            max_restarts: 0,
        }),
        health_check: Some(orch::v1::HealthCheck {
            probe: Some(orch::v1::health_check::Probe::Http(orch::v1::HttpProbe {
                port: 8080,
                path: "/health".to_owned(),
            })),
            ..Default::default()
        }),
        stop_grace_period: Some(duration(Duration::from_secs(2))),
        ..spec(name)
    }
}

/// A `running` report of the task's current attempt with `health`.
fn health(task: &Task, health: HealthState, message: &str) -> TaskStatus {
    TaskStatus {
        health: health as i32,
        message: message.to_owned(),
        ..status(task, TaskState::Running)
    }
}

/// A node runs `spec`: submitted, placed, reported running with health
/// `starting`. Returns the fixture, the worker and the task.
fn running_checked(spec: TaskSpec) -> (Fixture, Worker, Task) {
    let mut f = Fixture::new();
    let mut worker = f.join("n1", 0);
    worker.full_set();
    let task = f.submit_one(spec);
    worker.expect_run(&task);
    assert!(f.report_status(&worker, health(&task, HealthState::Starting, "")));
    let now = f.task(&task);
    assert_eq!(
        (now.state(), now.health()),
        (TaskState::Running, HealthState::Starting)
    );
    (f, worker, task)
}

#[tokio::test]
async fn health_changes_of_a_running_attempt_are_recorded_with_an_event_and_repeats_are_not() {
    let (mut f, mut worker, task) =
        running_checked(checked_spec("web", orch::v1::RestartCondition::Never));
    let mut events = f.state.subscribe();

    assert!(f.report_status(&worker, health(&task, HealthState::Healthy, "")));
    let now = f.task(&task);
    assert_eq!(
        (now.state(), now.health(), now.attempt),
        (TaskState::Running, HealthState::Healthy, 1)
    );
    match events.try_recv().expect("an event").kind {
        Some(event::Kind::Task(e)) => {
            assert_eq!(
                (e.state(), e.health()),
                (TaskState::Running, HealthState::Healthy)
            );
        }
        other => panic!("expected a task event, got {other:?}"),
    }
    // The same health again, or a report without one, is no news.
    assert!(f.report_status(&worker, health(&task, HealthState::Healthy, "")));
    assert!(f.report(&worker, &task, TaskState::Running));
    assert_eq!(f.task(&task), now);
    assert_eq!(events.try_recv().unwrap_err(), broadcast_empty());
    worker.expect_quiet();
    assert_eq!(f.durable().await.tasks, vec![now]);
}

#[tokio::test]
async fn an_unhealthy_task_on_failure_is_stopped_then_restarted_as_a_failed_attempt() {
    tokio::time::pause();
    let (mut f, mut worker, task) =
        running_checked(checked_spec("web", orch::v1::RestartCondition::OnFailure));

    assert!(f.report_status(
        &worker,
        health(&task, HealthState::Unhealthy, "HTTP 500 from /health")
    ));
    // The attempt keeps running (and holding its node) until it is gone.
    let unhealthy = f.task(&task);
    assert_eq!(
        (unhealthy.state(), unhealthy.health(), unhealthy.attempt),
        (TaskState::Running, HealthState::Unhealthy, 1)
    );
    assert_eq!(unhealthy.message, "unhealthy: HTTP 500 from /health");
    assert_eq!(f.node(worker.node).task_count, 1);
    let stop = worker.expect_stop();
    assert_eq!(
        stop,
        TaskStop {
            task_id: task.id.clone(),
            attempt: 1,
            grace_period: Some(duration(Duration::from_secs(2))),
        }
    );
    worker.expect_quiet();
    // Level-triggered: while it is still reported running, it is told again.
    assert!(f.report_status(
        &worker,
        health(&task, HealthState::Unhealthy, "HTTP 500 from /health")
    ));
    assert_eq!(worker.expect_stop().attempt, 1);

    let mut events = f.state.subscribe();
    assert!(f.report_status(
        &worker,
        TaskStatus {
            exit_code: Some(137),
            ..status(&task, TaskState::Stopped)
        }
    ));
    // The attempt failed; the next one waits out the backoff.
    let failed = match events.try_recv().expect("an event").kind {
        Some(event::Kind::Task(e)) => e,
        other => panic!("expected a task event, got {other:?}"),
    };
    assert_eq!((failed.state(), failed.attempt), (TaskState::Failed, 1));
    assert_eq!(failed.message, "unhealthy: HTTP 500 from /health");
    let waiting = f.task(&task);
    assert_eq!(
        (waiting.state(), waiting.attempt, waiting.restart_count),
        (TaskState::Pending, 2, 1)
    );
    assert_eq!(waiting.health(), HealthState::Unspecified);
    assert_eq!(
        waiting.message,
        "restarting in 1s: attempt 1 unhealthy: HTTP 500 from /health"
    );
    assert!(waiting.restart_at.is_some());
    assert_eq!(
        f.state.next_due(),
        Some(Instant::now() + Duration::from_secs(1)),
        "housekeeping wakes when the backoff ends, before the node's deadline"
    );
    assert_eq!(f.node(worker.node).task_count, 0);
    worker.expect_quiet();

    advance(Duration::from_secs(1)).await;
    assert!(
        f.state
            .heartbeat(worker.node, worker.session, NodeMetrics::default())
    );
    f.state.tick(Instant::now());
    let again = f.task(&task);
    assert_eq!((again.state(), again.attempt), (TaskState::Scheduled, 2));
    worker.expect_run(&again);
}

#[tokio::test]
async fn an_unhealthy_task_that_never_restarts_keeps_running_unhealthy() {
    let (mut f, mut worker, task) =
        running_checked(checked_spec("web", orch::v1::RestartCondition::Never));

    assert!(f.report_status(
        &worker,
        health(
            &task,
            HealthState::Unhealthy,
            "connecting to 172.17.0.2:8080: refused"
        )
    ));
    let now = f.task(&task);
    assert_eq!(
        (now.state(), now.health(), now.desired_state()),
        (
            TaskState::Running,
            HealthState::Unhealthy,
            DesiredState::Running
        )
    );
    assert_eq!(
        now.message,
        "unhealthy: connecting to 172.17.0.2:8080: refused"
    );
    worker.expect_quiet();
    // It recovers: healthy again, and the reason is gone.
    assert!(f.report_status(&worker, health(&task, HealthState::Healthy, "")));
    let now = f.task(&task);
    assert_eq!(
        (now.health(), now.message.as_str()),
        (HealthState::Healthy, "")
    );
    worker.expect_quiet();
}

#[tokio::test]
async fn an_unhealthy_task_with_no_restarts_left_keeps_running() {
    // A task on its last allowed attempt can only come from the store: seed it.
    let store = Arc::new(MemoryStore::new());
    let mut spec = checked_spec("web", orch::v1::RestartCondition::OnFailure);
    if let Some(r) = spec.restart.as_mut() {
        r.max_restarts = 1;
    }
    let mut task = Engine::new_tasks(vec![spec], std::time::SystemTime::now()).remove(0);
    task.attempt = 2;
    task.restart_count = 1;
    store
        .commit(&[Write::TaskCreated(Box::new(task.clone()))])
        .expect("seed");
    let mut f = Fixture::over(store);
    let mut worker = f.join("n1", 0);
    worker.full_set();
    worker.expect_run(&task);
    assert!(f.report_status(&worker, health(&task, HealthState::Starting, "")));
    assert!(f.report_status(
        &worker,
        health(&task, HealthState::Unhealthy, "HTTP 500 from /health")
    ));
    let now = f.task(&task);
    assert_eq!(
        (now.state(), now.health()),
        (TaskState::Running, HealthState::Unhealthy)
    );
    worker.expect_quiet();
}

#[tokio::test]
async fn a_task_that_exits_while_unhealthy_ends_as_its_exit_says_and_without_health() {
    let (mut f, mut worker, task) =
        running_checked(checked_spec("web", orch::v1::RestartCondition::Never));
    assert!(f.report_status(
        &worker,
        health(&task, HealthState::Unhealthy, "HTTP 500 from /health")
    ));
    assert!(f.report_status(
        &worker,
        TaskStatus {
            exit_code: Some(3),
            message: "container exited with code 3".to_owned(),
            ..status(&task, TaskState::Failed)
        }
    ));
    let now = f.task(&task);
    assert_eq!(
        (now.state(), now.health(), now.exit_code),
        (TaskState::Failed, HealthState::Unspecified, Some(3))
    );
    assert_eq!(now.message, "container exited with code 3");
    worker.expect_quiet();
}

// ---- restart backoff -----------------------------------------------------

/// Runs attempt after attempt of a task that always restarts; each one runs
/// for the given time (on the paused clock) and then fails. Returns the
/// backoff the manager chose after each, in seconds.
async fn backoffs_after_runs(runs: &[Duration]) -> Vec<u64> {
    tokio::time::pause();
    let mut f = Fixture::new();
    let mut worker = f.join("w", 1000);
    worker.full_set();
    let task = f.submit_one(TaskSpec {
        restart: Some(orch::v1::RestartPolicy {
            condition: orch::v1::RestartCondition::Always as i32,
            max_restarts: 0,
        }),
        ..spec("crashy")
    });
    let mut delays = Vec::new();
    for &ran in runs {
        let current = f.task(&task);
        worker.expect_run(&current);
        // No worker time: the manager stamps `started_at` on its own clock.
        assert!(f.report(&worker, &current, TaskState::Running));
        advance(ran).await;
        assert!(f.heartbeat(&worker));
        assert!(f.report_status(
            &worker,
            TaskStatus {
                exit_code: Some(1),
                ..status(&current, TaskState::Failed)
            }
        ));
        let waiting = f.task(&task);
        let due = waiting.restart_at.expect("a restart waits");
        let delay = orch::time::system_time(&due)
            .duration_since(orch::time::system_time(
                waiting.updated_at.as_ref().expect("stamped"),
            ))
            .expect("due after now");
        delays.push(delay.as_secs());
        advance(delay).await;
        assert!(f.heartbeat(&worker));
        f.state.tick(Instant::now());
    }
    delays
}

#[tokio::test]
async fn the_restart_backoff_doubles_for_short_runs_and_starts_over_after_a_stable_one() {
    let short = Duration::from_secs(2);
    let stable = crate::orchestrator::restart::STABLE_AFTER;
    assert_eq!(
        backoffs_after_runs(&[short, short, short, stable, short]).await,
        vec![1, 2, 4, 1, 2]
    );
}

#[tokio::test(start_paused = true)]
async fn a_log_request_goes_to_the_tasks_node_and_ends_naming_it_when_its_session_closes() {
    use orch::v1::WorkerLogsRequest;
    let mut f = Fixture::new();
    let mut w = f.join("worker-2", 1000);
    let task = f.submit_one(TaskSpec {
        image: "img".into(),
        ..Default::default()
    });
    let id = Uuid::parse_str(&task.id).unwrap();
    while w.rx.try_recv().is_ok() {}
    let ask = WorkerLogsRequest {
        follow: true,
        tail: 5,
        ..Default::default()
    };
    let opened = f.state.open_logs(id, ask.clone()).expect("open");
    assert_eq!(opened.header.attempt, 1);
    assert_eq!(opened.node, format!("worker-2 (id {})", w.node));
    match w.rx.try_recv() {
        Ok(Push::Logs(r)) => {
            assert_eq!(r.request_id, opened.rx.id.to_string());
            assert_eq!((r.task_id.as_str(), r.attempt), (task.id.as_str(), 1));
            assert!(r.follow && r.tail == 5);
        }
        other => panic!("{other:?}"),
    }
    // Only the node asked may answer, and once.
    assert!(
        f.state
            .claim_logs(opened.rx.id, Some(Uuid::new_v4()))
            .is_none()
    );
    assert!(f.state.claim_logs(opened.rx.id, Some(w.node)).is_some());
    assert!(f.state.claim_logs(opened.rx.id, Some(w.node)).is_none());

    // A client that goes away tells the worker to stop.
    let other = f.state.open_logs(id, ask.clone()).expect("open");
    let _ = w.rx.try_recv();
    f.state.end_logs(other.rx.id, true);
    assert_eq!(
        w.rx.try_recv(),
        Ok(Push::CancelLogs(other.rx.id.to_string()))
    );

    // The session closes: the stream ends, naming the node.
    f.state.close_session(w.node, w.session);
    let why = opened.rx.aborted.await.expect("a reason");
    assert_eq!(
        why,
        format!(
            "node worker-2 (id {}) disconnected: its session closed",
            w.node
        )
    );
    // Asked now, it is refused at once, saying since when it is silent.
    advance(Duration::from_secs(2)).await;
    match f.state.open_logs(id, ask) {
        Err(Error::Unavailable(m)) => assert_eq!(
            m,
            format!(
                "node worker-2 (id {}) is down: its last heartbeat was 2s ago",
                w.node
            )
        ),
        other => panic!("{other:?}"),
    }
    // An attempt that never was, or a task that is not, is not found.
    let never = WorkerLogsRequest {
        attempt: 2,
        ..Default::default()
    };
    assert!(matches!(
        f.state.open_logs(id, never),
        Err(Error::NotFound(_))
    ));
    let unknown = f
        .state
        .open_logs(Uuid::now_v7(), WorkerLogsRequest::default());
    assert!(matches!(unknown, Err(Error::NotFound(_))));
}

// ---- metrics -----------------------------------------------------------------

#[tokio::test]
async fn the_metrics_follow_placements_reports_and_lost_nodes() {
    tokio::time::pause();
    let mut f = Fixture::new();
    let metrics = f.state.metrics().clone();
    let sample = |name: &str| crate::metrics::sample(&metrics, name).unwrap_or(-1.0);
    let tasks = |state: &str| sample(&format!("orch_manager_tasks{{state=\"{state}\"}}"));
    let nodes = |state: &str| sample(&format!("orch_manager_nodes{{state=\"{state}\"}}"));
    let mut gone = f.join("n1", 1000);
    gone.full_set();
    assert_eq!(nodes("ready"), 1.0);

    let task = f.submit_one(cpu_spec("web", 500));
    gone.expect_run(&task);
    let too_big = f.submit_one(cpu_spec("big", 5000));
    assert_eq!(too_big.state(), TaskState::Pending);
    assert_eq!(sample("orch_manager_placements_total"), 1.0);
    assert_eq!(sample("orch_manager_placement_failures_total"), 1.0);
    assert_eq!(
        sample("orch_manager_scheduling_duration_seconds_count{result=\"placed\"}"),
        1.0
    );
    assert_eq!((tasks("scheduled"), tasks("pending")), (1.0, 1.0));

    // Two seconds from submission to running, on the manager's clock.
    advance(Duration::from_secs(2)).await;
    assert!(f.report(&gone, &task, TaskState::Running));
    assert_eq!((tasks("scheduled"), tasks("running")), (0.0, 1.0));
    let bucket = |le: &str| {
        sample(&format!(
            "orch_manager_submit_to_running_seconds_bucket{{le=\"{le}\"}}"
        ))
    };
    assert_eq!((bucket("1.0"), bucket("2.5")), (0.0, 1.0));
    assert!((sample("orch_manager_submit_to_running_seconds_sum") - 2.0).abs() < 0.01);

    // The node goes down; its task is lost and waits as a new attempt,
    // whose `running` is no first start.
    let mut other = f.join("n2", 1000);
    other.full_set();
    f.state.close_session(gone.node, gone.session);
    advance(Duration::from_secs(3) + Duration::from_millis(1)).await;
    assert!(f.heartbeat(&other));
    assert_eq!(f.state.tick(Instant::now()), 1);
    assert_eq!((nodes("ready"), nodes("down")), (1.0, 1.0));
    assert_eq!(
        (tasks("running"), tasks("scheduled"), tasks("lost")),
        (0.0, 1.0, 0.0)
    );
    let mut again = f.task(&task);
    assert_eq!(again.attempt, 2);
    other.expect_run(&again);
    again.attempt = 2;
    assert!(f.report(&other, &again, TaskState::Running));
    assert_eq!(sample("orch_manager_submit_to_running_seconds_count"), 1.0);
    assert_eq!(sample("orch_manager_placements_total"), 2.0);

    // The counts by state are those of the tasks the engine holds.
    let (listed, _) = f.state.list_tasks(None, 100, usize::MAX, |_| true);
    for state in orch::task_state::ALL.into_iter().skip(1) {
        let held = listed.iter().filter(|t| t.state() == state).count();
        assert_eq!(
            tasks(orch::task_state::name(state)),
            held as f64,
            "{state:?}"
        );
    }
}
