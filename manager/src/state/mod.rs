//! The manager's live objects, in memory, with their change feed: every task
//! and node, the queue of tasks waiting for a node, the per-node snapshots the
//! scheduler reads, and the numbered events.
//!
//! `State` decides nothing: it holds the objects, keeps its indexes (tasks by
//! node, pending tasks, node snapshots) consistent, and turns every change it
//! is told about into the matching store [`Write`]s and [`Event`]s. Writes pile
//! up until the engine takes them ([`State::take_writes`]) and queues them on
//! the committer, in order; events are broadcast at once to `WatchEvents`.
//! Each change of a task's observed state goes through
//! [`State::set_task_state`], which refuses any move the transition table
//! (`orch::task_state::TRANSITIONS`) does not list, whether a worker reported
//! it or the manager made it itself.
//!
//! Services live here too (`services`): each one's record, kept versions
//! and the index of its tasks.
//!
//! It does no I/O and reads no clock: the time it stamps on changes is set by
//! the engine ([`State::set_time`]) at the start of each operation. It keeps
//! the metrics of tasks and nodes by state (`crate::metrics::ByState`) as
//! their states change, which is why a node's state changes only through
//! [`State::set_node_state`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::SystemTime;

use orch::task_state::{self, TransitionError};
use orch::time::timestamp;
use orch::v1::{
    Event, HealthChange, HealthState, Node, NodeEvent, NodeState, Task, TaskAttempt, TaskEvent,
    TaskState, event,
};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::metrics::ByState;
use crate::scheduler::{Demand, NodeSnapshot, Resources};
use crate::store::{ATTEMPTS_KEPT, Snapshot, Write};

mod services;

pub use self::services::{ServiceEntry, VERSIONS_KEPT};

/// How many events a slow `WatchEvents` client may fall behind before it is cut off.
const EVENT_BUFFER: usize = 65_536;

/// What the manager keeps of a node beside its scheduling snapshot.
pub struct NodeRecord {
    /// The node as stored and listed (its `allocated` and `task_count` are
    /// filled in from the snapshot when listed).
    pub node: Node,
    /// Active tasks placed on the node.
    pub tasks: HashSet<Uuid>,
}

/// The live objects. See the module documentation.
pub struct State {
    cluster_id: String,
    tasks: BTreeMap<Uuid, Box<Task>>,
    /// Tasks waiting for a node, in submission order (v7 ids sort by time).
    pending: BTreeSet<Uuid>,
    /// Scheduling snapshots, one per node, in registration order.
    snapshots: Vec<NodeSnapshot>,
    /// The rest of each node, same index as `snapshots`.
    records: Vec<NodeRecord>,
    node_index: HashMap<Uuid, usize>,
    last_event: u64,
    events: broadcast::Sender<Event>,
    /// Set at shutdown ([`State::close_events`]): a subscription from then
    /// on is closed at once, so a watch that catches up cannot hold the
    /// shutdown up.
    events_closed: bool,
    /// Changes not yet handed to the committer, in the order they were made.
    writes: Vec<Write>,
    /// The time stamped on changes.
    now: SystemTime,
    /// Every service, by name.
    services: BTreeMap<String, ServiceEntry>,
    /// The last scheduler group handed to a service.
    next_group: u32,
    /// Each task's newest attempts (at most [`ATTEMPTS_KEPT`]), oldest
    /// first; the last one is the current attempt.
    attempts: HashMap<Uuid, VecDeque<TaskAttempt>>,
    /// Tasks by observed state, for the metrics.
    task_counts: ByState,
    /// Nodes by state, for the metrics.
    node_counts: ByState,
}

/// What an attempt's record says of it: the task's message, or, for an
/// attempt that ended without one, how it ended.
fn attempt_message(task: &Task) -> String {
    if !task.message.is_empty() || !task_state::is_terminal(task.state()) {
        return task.message.clone();
    }
    match (task.state(), task.exit_code) {
        (_, Some(code)) => format!("exited with code {code}"),
        (TaskState::Stopped, None) => "stopped".to_owned(),
        (TaskState::Lost, None) => "lost with its node".to_owned(),
        (state, None) => task_state::name(state).to_owned(),
    }
}

/// A task's id as a UUID; the manager mints every id, so a bad one is a bug
/// that maps to the nil id rather than a panic.
pub fn task_uuid(task: &Task) -> Uuid {
    Uuid::parse_str(&task.id).unwrap_or_default()
}

/// A task's name (its spec's), empty if it has none.
pub fn task_name(task: &Task) -> String {
    task.spec
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

impl State {
    /// Rebuilds the objects from what the store holds. Nodes come back
    /// `down` until their workers reconnect (a write each, queued); pending
    /// tasks go back in the queue; active tasks reserve their resources again.
    pub fn restore(snapshot: Snapshot, now: SystemTime) -> Self {
        Self::restore_counted(snapshot, now, ByState::default(), ByState::default())
    }

    /// As [`State::restore`], keeping the counts of tasks and of nodes by
    /// state in these gauges (which start from zero).
    pub fn restore_counted(
        snapshot: Snapshot,
        now: SystemTime,
        task_counts: ByState,
        node_counts: ByState,
    ) -> Self {
        let mut writes = Vec::new();
        let cluster_id = snapshot.cluster_id.unwrap_or_else(|| {
            let id = Uuid::new_v4().to_string();
            writes.push(Write::ClusterId(id.clone()));
            id
        });
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let mut state = Self {
            cluster_id,
            tasks: BTreeMap::new(),
            pending: BTreeSet::new(),
            snapshots: Vec::new(),
            records: Vec::new(),
            node_index: HashMap::new(),
            last_event: snapshot.last_event_sequence,
            events,
            events_closed: false,
            writes,
            now,
            services: BTreeMap::new(),
            next_group: 0,
            attempts: HashMap::new(),
            task_counts,
            node_counts,
        };
        for (task, attempt) in snapshot.attempts {
            let history = state
                .attempts
                .entry(Uuid::parse_str(&task).unwrap_or_default())
                .or_default();
            history.push_back(attempt);
            if history.len() > ATTEMPTS_KEPT as usize {
                history.pop_front();
            }
        }
        let mut versions: HashMap<String, Vec<orch::v1::ServiceVersion>> = HashMap::new();
        for v in snapshot.service_versions {
            versions.entry(v.service.clone()).or_default().push(v);
        }
        for service in snapshot.services {
            let name = service
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            let kept = versions.remove(&name).unwrap_or_default();
            state.insert_service(service, kept);
        }
        for mut node in snapshot.nodes {
            if !matches!(node.state(), NodeState::Down | NodeState::Removed) {
                node.set_state(NodeState::Down);
                state.writes.push(Write::Node(Box::new(node.clone())));
            }
            state.add_node(node);
        }
        for task in snapshot.tasks {
            let id = task_uuid(&task);
            if task.state() == TaskState::Pending {
                // No worker runs it: an assignment goes out only once its
                // placement is stored (`Committer::marks`), so this one was
                // never sent, and it is placed again under its own number.
                state.pending.insert(id);
            } else if task_state::is_active(task.state())
                && let Some(i) = state.node_of(&task)
            {
                let demand = state.demand(&task);
                state.bind(i, id, &demand);
            }
            state.index_task(id, &task);
            state.task_counts.add(task.state);
            state.tasks.insert(id, Box::new(task));
        }
        state
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Sets the time stamped on the changes that follow.
    pub fn set_time(&mut self, now: SystemTime) {
        self.now = now;
    }

    /// The time stamped on changes, as a protobuf timestamp.
    pub fn stamp(&self) -> prost_types::Timestamp {
        timestamp(self.now)
    }

    /// The writes of every change since the last call, in order.
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }

    /// Whether changes wait to be taken by [`State::take_writes`].
    pub fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Queues a write of its own (one that is not a task or node change).
    pub fn write(&mut self, write: Write) {
        self.writes.push(write);
    }

    /// A receiver of every event from now on; after
    /// [`State::close_events`], one that is closed.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        if self.events_closed {
            return broadcast::channel(1).1;
        }
        self.events.subscribe()
    }

    /// The sequence of the newest event, or 0.
    pub fn last_event(&self) -> u64 {
        self.last_event
    }

    /// Ends every `WatchEvents` stream (at shutdown): dropping the sender
    /// closes them, and later subscriptions are closed from the start.
    pub fn close_events(&mut self) {
        self.events = broadcast::channel(EVENT_BUFFER).0;
        self.events_closed = true;
    }

    // ---- tasks ------------------------------------------------------------

    /// One task.
    pub fn task(&self, id: Uuid) -> Option<&Task> {
        self.tasks.get(&id).map(Box::as_ref)
    }

    /// One task, to change. The caller reports the change with
    /// [`State::task_changed`]; its observed state changes only through
    /// [`State::set_task_state`] or [`State::begin_attempt`].
    pub fn task_mut(&mut self, id: Uuid) -> Option<&mut Task> {
        self.tasks.get_mut(&id).map(Box::as_mut)
    }

    /// Adds a new task (already durable, or its creation queued first) as
    /// it is: pending, or whatever it was stored as. A service's task joins
    /// its service's index.
    pub fn insert_task(&mut self, task: Task) -> Uuid {
        let id = task_uuid(&task);
        if task.state() == TaskState::Pending {
            self.pending.insert(id);
        }
        self.index_task(id, &task);
        self.task_counts.add(task.state);
        self.tasks.insert(id, Box::new(task));
        self.record_attempt(id, false);
        id
    }

    /// A task's kept attempts, oldest first (the newest [`ATTEMPTS_KEPT`]);
    /// the last one is the current attempt.
    pub fn attempts(&self, id: Uuid) -> impl Iterator<Item = &TaskAttempt> {
        self.attempts.get(&id).into_iter().flatten()
    }

    /// Brings the record of a task's current attempt up to date with the
    /// task (a new record for a new attempt, the oldest dropped past
    /// [`ATTEMPTS_KEPT`]) and queues its write if it changed, or `always`
    /// (with the task's status: a store may keep the two in one record). A
    /// change of health is added to the attempt's health changes, stamped now.
    fn record_attempt(&mut self, id: Uuid, always: bool) {
        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        let now = self.stamp();
        let history = self.attempts.entry(id).or_default();
        if history.back().is_none_or(|a| a.attempt != task.attempt) {
            history.push_back(TaskAttempt {
                attempt: task.attempt,
                ..TaskAttempt::default()
            });
            if history.len() > ATTEMPTS_KEPT as usize {
                history.pop_front();
            }
        }
        let Some(record) = history.back_mut() else {
            return;
        };
        let mut next = TaskAttempt {
            attempt: task.attempt,
            node_id: task.node_id.clone(),
            container_id: task.container_id.clone(),
            started_at: task.started_at,
            finished_at: task.finished_at,
            exit_code: task.exit_code,
            message: attempt_message(task),
            state: task.state,
            health: std::mem::take(&mut record.health),
        };
        let last = next
            .health
            .last()
            .map_or(HealthState::Unspecified as i32, |h| h.health);
        if task.health != last {
            next.health.push(HealthChange {
                time: Some(now),
                health: task.health,
            });
        }
        let changed = *record != next;
        *record = next;
        if changed || always {
            let write = Write::Attempt {
                task_id: task.id.clone(),
                record: Box::new(record.clone()),
            };
            self.writes.push(write);
        }
    }

    /// What a task reserves on its node, and the group it spreads in (its
    /// service's, if the service still exists).
    pub fn demand(&self, task: &Task) -> Demand {
        let mut demand = task.spec.as_ref().map(Demand::of).unwrap_or_default();
        demand.group = self.service_of(task).map(|e| e.group);
        demand
    }

    /// Tasks after `after` (exclusive), in id order (submission order).
    pub fn tasks_after(&self, after: Option<Uuid>) -> impl Iterator<Item = &Task> {
        let range = match after {
            Some(a) => self
                .tasks
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.tasks.range(..),
        };
        range.map(|(_, t)| t.as_ref())
    }

    /// Moves a task's observed state within its attempt, if the transition
    /// table allows it. Leaving `pending` takes the task off the queue.
    ///
    /// # Errors
    /// [`TransitionError::NotAllowed`] if the table does not list the move;
    /// nothing changes then. A task that does not exist changes nothing either.
    pub fn set_task_state(&mut self, id: Uuid, to: TaskState) -> Result<(), TransitionError> {
        let Some(task) = self.tasks.get_mut(&id) else {
            return Ok(());
        };
        task_state::check_transition(task.state(), to)?;
        self.task_counts.moved(task.state, to as i32);
        task.set_state(to);
        if to != TaskState::Pending {
            self.pending.remove(&id);
        }
        Ok(())
    }

    /// Starts a task's next attempt: pending, on no node, with nothing
    /// observed yet. Every message about the old attempt is stale from here
    /// on. The caller releases the old attempt's reservation first, and
    /// queues the task ([`State::enqueue`]) once it may be placed: a restart
    /// waits out its backoff off the queue.
    pub fn begin_attempt(&mut self, id: Uuid) {
        // The old attempt's record as it ended, before the task forgets it.
        self.record_attempt(id, false);
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.attempt += 1;
        self.task_counts
            .moved(task.state, TaskState::Pending as i32);
        task.set_state(TaskState::Pending);
        task.node_id.clear();
        task.container_id.clear();
        task.exit_code = None;
        task.started_at = None;
        task.finished_at = None;
        task.health = HealthState::Unspecified as i32;
    }

    /// Queues a pending task for placement (retried whenever room appears).
    pub fn enqueue(&mut self, id: Uuid) {
        if self
            .task(id)
            .is_some_and(|t| t.state() == TaskState::Pending)
        {
            self.pending.insert(id);
        }
    }

    /// Whether a task waits in the queue for a node.
    pub fn is_pending(&self, id: Uuid) -> bool {
        self.pending.contains(&id)
    }

    /// Every queued task, oldest first.
    pub fn pending(&self) -> Vec<Uuid> {
        self.pending.iter().copied().collect()
    }

    /// Whether any task waits for a node.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Records a change of a task: stamps it, queues its write (without the
    /// spec, which the store never rewrites) and emits its event.
    pub fn task_changed(&mut self, id: Uuid) {
        let now = self.stamp();
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.updated_at = Some(now);
        let kind = event::Kind::Task(TaskEvent {
            task_id: task.id.clone(),
            attempt: task.attempt,
            state: task.state,
            desired_state: task.desired_state,
            node_id: task.node_id.clone(),
            message: task.message.clone(),
            health: task.health,
            service: task.service.clone(),
            slot: task.slot,
            name: task_name(task),
        });
        // No copy of the spec to make, queue and drop for every change of state.
        let spec = task.spec.take();
        self.writes
            .push(Write::TaskUpdated(Box::new(Task::clone(task))));
        task.spec = spec;
        // Every status goes with its current attempt (`Write::TaskUpdated`).
        self.record_attempt(id, true);
        self.emit(kind);
    }

    // ---- nodes ------------------------------------------------------------

    /// Every node's scheduling snapshot, in registration order.
    pub fn snapshots(&self) -> &[NodeSnapshot] {
        &self.snapshots
    }

    /// How many nodes there are.
    pub fn node_count(&self) -> usize {
        self.records.len()
    }

    /// The index of a node.
    pub fn node_index(&self, id: Uuid) -> Option<usize> {
        self.node_index.get(&id).copied()
    }

    /// The index of the node a task's current attempt is placed on.
    pub fn node_of(&self, task: &Task) -> Option<usize> {
        Uuid::parse_str(&task.node_id)
            .ok()
            .and_then(|n| self.node_index(n))
    }

    /// Node `i`'s record.
    pub fn record(&self, i: usize) -> &NodeRecord {
        &self.records[i]
    }

    /// Node `i`'s id.
    pub fn node_id(&self, i: usize) -> Uuid {
        self.snapshots[i].id
    }

    /// Node `i`'s name.
    pub fn node_name(&self, i: usize) -> &str {
        &self.snapshots[i].name
    }

    /// Node `i`'s record and snapshot, to change (with [`State::node_changed`]
    /// or [`State::node_written`] after); its state changes only through
    /// [`State::set_node_state`].
    pub fn node_mut(&mut self, i: usize) -> (&mut Node, &mut NodeSnapshot) {
        (&mut self.records[i].node, &mut self.snapshots[i])
    }

    /// Sets node `i`'s state; returns whether it changed. The caller
    /// reports the change ([`State::node_changed`]).
    pub fn set_node_state(&mut self, i: usize, state: NodeState) -> bool {
        let node = &mut self.records[i].node;
        let was = node.state;
        node.set_state(state);
        self.node_counts.moved(was, node.state);
        was != node.state
    }

    /// Adds a node and returns its index.
    pub fn add_node(&mut self, node: Node) -> usize {
        self.node_counts.add(node.state);
        let id = Uuid::parse_str(&node.id).unwrap_or_default();
        let capacity = node
            .capacity
            .as_ref()
            .map(Resources::from)
            .unwrap_or_default();
        self.snapshots.push(NodeSnapshot::new(
            id,
            node.name.clone(),
            node.labels.clone(),
            capacity,
        ));
        self.records.push(NodeRecord {
            node,
            tasks: HashSet::new(),
        });
        let i = self.records.len() - 1;
        self.node_index.insert(id, i);
        i
    }

    /// The active tasks placed on node `i`, in id order.
    pub fn tasks_on(&self, i: usize) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.records[i].tasks.iter().copied().collect();
        ids.sort();
        ids
    }

    /// Reserves `demand` for task `id` on node `i`.
    pub fn bind(&mut self, i: usize, id: Uuid, demand: &Demand) {
        if self.records[i].tasks.insert(id) {
            self.snapshots[i].reserve(demand);
        }
    }

    /// Gives back what task `id` reserved on node `i`, if it holds a reservation there.
    pub fn release(&mut self, i: usize, id: Uuid, demand: &Demand) {
        if self.records[i].tasks.remove(&id) {
            self.snapshots[i].release(demand);
        }
    }

    /// Queues the write of node `i`'s record, with no event (a change people
    /// need not see, such as the draining flag of a node that stays down).
    pub fn node_written(&mut self, i: usize) {
        let node = self.records[i].node.clone();
        self.writes.push(Write::Node(Box::new(node)));
    }

    /// Records a change of node `i`'s state: its write and an event saying `why`.
    pub fn node_changed(&mut self, i: usize, why: &str) {
        let node = &self.records[i].node;
        let kind = event::Kind::Node(NodeEvent {
            node_id: node.id.clone(),
            name: node.name.clone(),
            state: node.state,
            message: why.to_string(),
        });
        self.node_written(i);
        self.emit(kind);
    }

    /// Node `i` as `ListNodes` shows it.
    pub fn node_view(&self, i: usize) -> Node {
        let snap = &self.snapshots[i];
        let mut node = self.records[i].node.clone();
        node.allocated = Some(snap.allocated.into());
        node.task_count = snap.task_count;
        node
    }

    /// Every node, as `ListNodes` shows it.
    pub fn list_nodes(&self) -> Vec<Node> {
        (0..self.records.len())
            .filter(|&i| self.records[i].node.state() != NodeState::Removed)
            .map(|i| self.node_view(i))
            .collect()
    }

    // ---- events -----------------------------------------------------------

    fn emit(&mut self, kind: event::Kind) {
        self.last_event += 1;
        let e = Event {
            sequence: self.last_event,
            time: Some(self.stamp()),
            kind: Some(kind),
        };
        self.writes.push(Write::Event(Box::new(e.clone())));
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(e);
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test should fail loudly, where it fails"
)]
mod tests {
    use orch::v1::TaskSpec;

    use super::*;

    fn state() -> State {
        State::restore(Snapshot::default(), SystemTime::UNIX_EPOCH)
    }

    /// A watch that subscribes again after shutdown began (to catch up)
    /// must not wait for events that will never come.
    #[test]
    fn a_subscription_after_close_events_is_closed() {
        let mut s = state();
        let mut before = s.subscribe();
        s.close_events();
        let mut after = s.subscribe();
        assert_eq!(
            before.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        );
        assert_eq!(
            after.try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        );
    }

    fn pending_task() -> Task {
        Task {
            id: Uuid::now_v7().to_string(),
            spec: Some(TaskSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            state: TaskState::Pending as i32,
            attempt: 1,
            ..Default::default()
        }
    }

    #[test]
    fn the_managers_own_moves_are_checked_by_the_transition_table() {
        let mut s = state();
        let id = s.insert_task(pending_task());
        assert!(s.is_pending(id));
        // A pending task cannot be lost or running: it is on no node.
        assert!(s.set_task_state(id, TaskState::Lost).is_err());
        assert!(s.set_task_state(id, TaskState::Running).is_err());
        assert_eq!(s.task(id).unwrap().state(), TaskState::Pending);
        assert!(s.is_pending(id), "a refused move changes nothing");
        s.set_task_state(id, TaskState::Scheduled).unwrap();
        assert!(!s.is_pending(id));
        s.set_task_state(id, TaskState::Lost).unwrap();
        // Nothing leaves a terminal state within the attempt.
        assert!(s.set_task_state(id, TaskState::Scheduled).is_err());
        // A new attempt starts over, pending, and waits off the queue
        // until it is queued.
        s.begin_attempt(id);
        let task = s.task(id).unwrap();
        assert_eq!((task.attempt, task.state()), (2, TaskState::Pending));
        assert!(!s.is_pending(id));
        s.enqueue(id);
        assert!(s.is_pending(id));
    }

    #[test]
    fn every_change_becomes_a_write_and_a_numbered_event() {
        let mut s = state();
        let mut events = s.subscribe();
        let id = s.insert_task(pending_task());
        s.set_task_state(id, TaskState::Scheduled).unwrap();
        s.task_changed(id);
        let i = s.add_node(Node {
            id: Uuid::now_v7().to_string(),
            ..Default::default()
        });
        s.node_changed(i, "worker connected");
        let writes = s.take_writes();
        assert!(matches!(
            &writes[..],
            [
                Write::ClusterId(_),
                Write::Attempt { record: first, .. },
                Write::TaskUpdated(t),
                Write::Attempt { record: scheduled, .. },
                Write::Event(_),
                Write::Node(_),
                Write::Event(_)
            ] if t.spec.is_none() && t.state() == TaskState::Scheduled
                && first.state() == TaskState::Pending
                && scheduled.state() == TaskState::Scheduled
        ));
        assert_eq!(events.try_recv().unwrap().sequence, 1);
        assert_eq!(events.try_recv().unwrap().sequence, 2);
        assert!(s.take_writes().is_empty());
    }

    /// Every attempt gets a record that follows it to its end, health
    /// changes included; only the newest `ATTEMPTS_KEPT` stay, and a
    /// restored state has them back.
    #[test]
    fn attempts_are_recorded_bounded_and_restored() {
        let mut s = state();
        let id = s.insert_task(pending_task());
        for n in 1..=25u64 {
            s.set_task_state(id, TaskState::Scheduled).unwrap();
            s.set_task_state(id, TaskState::Running).unwrap();
            let task = s.task_mut(id).unwrap();
            task.container_id = format!("c{n}");
            task.health = HealthState::Healthy as i32;
            s.task_changed(id);
            s.set_task_state(id, TaskState::Failed).unwrap();
            let task = s.task_mut(id).unwrap();
            task.exit_code = Some(i32::try_from(n).unwrap());
            task.health = HealthState::Unhealthy as i32;
            s.task_changed(id);
            s.begin_attempt(id);
            // As the engine does: the new attempt's change is recorded.
            s.task_changed(id);
        }
        let kept: Vec<TaskAttempt> = s.attempts(id).cloned().collect();
        assert_eq!(kept.len(), ATTEMPTS_KEPT as usize);
        assert_eq!(
            kept.iter().map(|a| a.attempt).collect::<Vec<_>>(),
            (7..=26).collect::<Vec<_>>(),
            "the newest, the current attempt last"
        );
        let a = &kept[0];
        assert_eq!(
            (a.state(), a.exit_code, a.container_id.as_str()),
            (TaskState::Failed, Some(7), "c7")
        );
        assert_eq!(a.message, "exited with code 7");
        assert_eq!(
            a.health.iter().map(|h| h.health()).collect::<Vec<_>>(),
            [HealthState::Healthy, HealthState::Unhealthy]
        );
        assert_eq!(kept[19].state(), TaskState::Pending);

        // The writes hold what the store needs to give them back.
        let store = crate::store::MemoryStore::new();
        use crate::store::Store;
        let mut writes = vec![Write::TaskCreated(Box::new(s.task(id).unwrap().clone()))];
        writes.extend(s.take_writes());
        store.commit(&writes).unwrap();
        let restored = State::restore(store.load().unwrap(), SystemTime::UNIX_EPOCH);
        assert_eq!(
            restored.attempts(id).cloned().collect::<Vec<_>>(),
            kept,
            "restored as they were"
        );
    }

    #[test]
    fn a_reservation_is_taken_and_given_back_once() {
        let mut s = state();
        let i = s.add_node(Node {
            id: Uuid::now_v7().to_string(),
            ..Default::default()
        });
        let task = Uuid::now_v7();
        let demand = Demand {
            resources: Resources {
                milli_cpus: 500,
                ..Default::default()
            },
            ..Default::default()
        };
        s.bind(i, task, &demand);
        s.bind(i, task, &demand);
        assert_eq!(s.snapshots()[i].allocated.milli_cpus, 500);
        assert_eq!(s.tasks_on(i), vec![task]);
        s.release(i, task, &demand);
        s.release(i, task, &demand);
        assert_eq!(s.snapshots()[i].allocated.milli_cpus, 0);
        assert_eq!(s.snapshots()[i].task_count, 0);
    }

    #[test]
    fn nodes_are_counted_by_state_as_they_are_added_restored_and_change() {
        let metrics = crate::metrics::Metrics::new();
        let node = |state: NodeState| Node {
            id: Uuid::now_v7().to_string(),
            state: state as i32,
            ..Default::default()
        };
        let snapshot = Snapshot {
            nodes: vec![node(NodeState::Ready), node(NodeState::Removed)],
            ..Default::default()
        };
        let mut s = State::restore_counted(
            snapshot,
            SystemTime::UNIX_EPOCH,
            metrics.tasks.clone(),
            metrics.nodes.clone(),
        );
        let count = |st: NodeState| metrics.nodes.get(st as i32);
        // A restored node is down until its worker connects.
        assert_eq!((count(NodeState::Down), count(NodeState::Removed)), (1, 1));
        let i = s.add_node(node(NodeState::Down));
        assert_eq!(count(NodeState::Down), 2);
        assert!(s.set_node_state(i, NodeState::Ready));
        assert!(!s.set_node_state(i, NodeState::Ready), "no change");
        assert_eq!((count(NodeState::Down), count(NodeState::Ready)), (1, 1));
        assert_eq!(s.record(i).node.state(), NodeState::Ready);
    }

    mod properties {
        use orch::task_state::{ALL, TRANSITIONS};
        use proptest::prelude::*;

        use super::*;

        /// One operation of the engine on a task's observed state.
        #[derive(Debug, Clone)]
        enum Op {
            Set(usize, TaskState),
            BeginAttempt(usize),
            Enqueue(usize),
        }

        fn op(tasks: usize) -> impl Strategy<Value = Op> {
            let task = 0..tasks;
            prop_oneof![
                6 => (task.clone(), prop::sample::select(ALL.to_vec()))
                    .prop_map(|(t, to)| Op::Set(t, to)),
                1 => task.clone().prop_map(Op::BeginAttempt),
                1 => task.prop_map(Op::Enqueue),
            ]
        }

        /// What a task should look like: its attempt, its state, and
        /// whether it waits in the queue, kept beside the `State` from the
        /// table alone.
        #[derive(Debug, Clone, Copy, PartialEq)]
        struct Model {
            attempt: u64,
            state: TaskState,
            queued: bool,
        }

        proptest! {
            /// `State::set_task_state` accepts exactly the moves
            /// `TRANSITIONS` lists, from whatever state the task reached,
            /// and a refused move changes nothing, not even the queue.
            #[test]
            fn set_task_state_refuses_exactly_what_the_table_refuses(
                ops in prop::collection::vec(op(3), 1..60),
            ) {
                let metrics = crate::metrics::Metrics::new();
                let mut s = State::restore_counted(
                    Snapshot::default(),
                    SystemTime::UNIX_EPOCH,
                    metrics.tasks.clone(),
                    metrics.nodes.clone(),
                );
                let ids: Vec<Uuid> = (0..3).map(|_| s.insert_task(pending_task())).collect();
                let mut models = [Model { attempt: 1, state: TaskState::Pending, queued: true }; 3];
                for op in ops {
                    match op {
                        Op::Set(t, to) => {
                            let m = &mut models[t];
                            let allowed = TRANSITIONS.contains(&(m.state, to));
                            let got = s.set_task_state(ids[t], to);
                            prop_assert_eq!(got.is_ok(), allowed, "{:?} -> {:?}: {:?}", m.state, to, got);
                            if allowed {
                                m.state = to;
                                m.queued &= to == TaskState::Pending;
                            }
                        }
                        Op::BeginAttempt(t) => {
                            s.begin_attempt(ids[t]);
                            let m = &mut models[t];
                            *m = Model { attempt: m.attempt + 1, state: TaskState::Pending, queued: m.queued };
                        }
                        Op::Enqueue(t) => {
                            s.enqueue(ids[t]);
                            let m = &mut models[t];
                            m.queued |= m.state == TaskState::Pending;
                        }
                    }
                    for (id, m) in ids.iter().zip(&models) {
                        let task = s.task(*id).expect("task");
                        prop_assert_eq!(
                            Model { attempt: task.attempt, state: task.state(), queued: s.is_pending(*id) },
                            *m
                        );
                    }
                    // The metric of tasks by state follows every move.
                    for st in ALL {
                        let held = models.iter().filter(|m| m.state == st).count();
                        prop_assert_eq!(metrics.tasks.get(st as i32), i64::try_from(held).unwrap(), "{:?}", st);
                    }
                }
                // A task the state does not hold changes nothing.
                prop_assert!(s.set_task_state(Uuid::now_v7(), TaskState::Running).is_ok());
            }
        }
    }
}
