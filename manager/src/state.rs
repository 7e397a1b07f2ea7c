//! The manager's live state: every task and node, held in memory, and every
//! rule about how they change.
//!
//! `State` is the only place that writes a task's desired state, binds a task
//! to a node, or accepts a worker's report. Each method mutates memory, queues
//! the matching store writes (in order, through the [`Committer`]) and pushes
//! messages to the affected worker sessions, all while the caller holds the
//! state lock; none of them awaits or does I/O, so the lock is never held
//! across I/O. Callers that must answer "durable" await the returned
//! [`Durable`] after releasing the lock.
//!
//! It owns the node snapshots the scheduler reads (`nodes`), kept up to date
//! incrementally, so a scheduling decision never rebuilds them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use orch::task_state::{self, TransitionError};
use orch::time::{duration, timestamp};
use orch::v1::{
    Assignments, DesiredState, Event, HealthState, ManagerMessage, Node, NodeEvent, NodeMetrics,
    NodeState, RegisterRequest, RegisterResponse, Task, TaskAssignment, TaskEvent, TaskSpec,
    TaskState, TaskStatus, TaskStop, event, manager_message,
};
use orch::validate;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tonic::Status;
use uuid::Uuid;

use crate::Error;
use crate::persist::{Committer, Durable};
use crate::reconciler;
use crate::scheduler::{Demand, NodeSnapshot, Resources, Scheduler};
use crate::store::{Snapshot, Write};

/// What a session's stream carries to its worker.
pub type SessionTx = mpsc::UnboundedSender<Result<ManagerMessage, Status>>;

/// How many events a slow `WatchEvents` client may fall behind before it is cut off.
const EVENT_BUFFER: usize = 65_536;

/// Liveness settings.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// How often workers send heartbeats.
    pub heartbeat_period: Duration,
    /// A node is down once this many periods pass without a heartbeat.
    pub missed_heartbeats: u32,
}

impl Liveness {
    /// How long a node may stay silent before it is declared down.
    pub fn deadline(&self) -> Duration {
        self.heartbeat_period * self.missed_heartbeats
    }
}

/// What the manager knows of a node beyond its scheduling snapshot.
struct NodeEntry {
    /// The node as stored and listed (its `allocated` and `task_count` are
    /// filled in from the snapshot when listed).
    node: Node,
    /// Active tasks placed on the node.
    tasks: HashSet<Uuid>,
    /// The open session, if the worker is connected.
    session: Option<(Uuid, SessionTx)>,
    /// A session id handed out by `Register` and not yet opened.
    registered_session: Option<Uuid>,
    /// When the worker was last heard from (tokio's clock, so tests can pause it).
    last_seen: Instant,
}

/// The live state. See the module documentation.
pub struct State {
    cluster_id: String,
    tasks: BTreeMap<Uuid, Box<Task>>,
    /// Tasks waiting for a node, in submission order (v7 ids sort by time).
    pending: BTreeSet<Uuid>,
    /// Restarts waiting out their backoff, by when they are due.
    delayed: BTreeSet<(Instant, Uuid)>,
    /// Tasks moving off a draining node: the old attempt keeps running on
    /// its node (index), until the new attempt runs or ends, then it is
    /// told to stop (with this grace).
    handoffs: HashMap<Uuid, (usize, u64, Duration)>,
    /// Each restarting task's backoff streak (see `reconciler`). Kept in
    /// memory only: after a manager restart backoffs start over.
    streaks: HashMap<Uuid, u32>,
    /// Scheduling snapshots, one per node, in registration order.
    nodes: Vec<NodeSnapshot>,
    /// The rest of each node, same index as `nodes`.
    entries: Vec<NodeEntry>,
    node_index: HashMap<Uuid, usize>,
    scheduler: Scheduler,
    last_event: u64,
    events: broadcast::Sender<Event>,
    committer: Committer,
    liveness: Liveness,
}

fn now() -> prost_types::Timestamp {
    timestamp(SystemTime::now())
}

fn demand_of(task: &Task) -> Demand {
    task.spec.as_ref().map(Demand::of).unwrap_or_default()
}

fn task_uuid(task: &Task) -> Uuid {
    Uuid::parse_str(&task.id).unwrap_or_default()
}

fn is_active(task: &Task) -> bool {
    task_state::is_active(task.state())
}

impl State {
    /// Rebuilds the state from what the store holds. Nodes come back `down`
    /// until their workers reconnect; pending tasks go back in the queue.
    pub fn restore(
        snapshot: Snapshot,
        scheduler: Scheduler,
        committer: Committer,
        liveness: Liveness,
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
            delayed: BTreeSet::new(),
            streaks: HashMap::new(),
            handoffs: HashMap::new(),
            nodes: Vec::new(),
            entries: Vec::new(),
            node_index: HashMap::new(),
            scheduler,
            last_event: snapshot.last_event_sequence,
            events,
            committer,
            liveness,
        };
        for mut node in snapshot.nodes {
            if node.state() != NodeState::Down {
                node.set_state(NodeState::Down);
                writes.push(Write::Node(Box::new(node.clone())));
            }
            state.add_node(node);
        }
        for task in snapshot.tasks {
            let id = task_uuid(&task);
            if task.state() == TaskState::Pending {
                state.pending.insert(id);
            } else if is_active(&task)
                && let Some(&i) = Uuid::parse_str(&task.node_id)
                    .ok()
                    .and_then(|n| state.node_index.get(&n))
            {
                state.bind_resources(i, id, &demand_of(&task));
            }
            state.tasks.insert(id, Box::new(task));
        }
        state.committer.queue(writes);
        state
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The store writer.
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn add_node(&mut self, node: Node) -> usize {
        let id = Uuid::parse_str(&node.id).unwrap_or_default();
        let capacity = node
            .capacity
            .as_ref()
            .map(Resources::from)
            .unwrap_or_default();
        self.nodes.push(NodeSnapshot {
            id,
            name: node.name.clone(),
            ready: node.state() == NodeState::Ready,
            labels: node.labels.clone(),
            capacity,
            allocated: Resources::default(),
            task_count: 0,
            ports_in_use: HashSet::new(),
            cpu_percent: 0.0,
            memory_used_bytes: 0,
            memory_total_bytes: 0,
        });
        self.entries.push(NodeEntry {
            node,
            tasks: HashSet::new(),
            session: None,
            registered_session: None,
            last_seen: Instant::now(),
        });
        let i = self.nodes.len() - 1;
        self.node_index.insert(id, i);
        i
    }

    fn bind_resources(&mut self, i: usize, task: Uuid, demand: &Demand) {
        let snap = &mut self.nodes[i];
        snap.allocated += demand.resources;
        snap.task_count += 1;
        snap.ports_in_use.extend(demand.ports.iter().copied());
        self.entries[i].tasks.insert(task);
    }

    fn release_resources(&mut self, i: usize, task: Uuid, demand: &Demand) {
        if !self.entries[i].tasks.remove(&task) {
            return;
        }
        let snap = &mut self.nodes[i];
        snap.allocated -= demand.resources;
        snap.task_count = snap.task_count.saturating_sub(1);
        for p in &demand.ports {
            snap.ports_in_use.remove(p);
        }
    }

    fn emit(&mut self, kind: event::Kind, writes: &mut Vec<Write>) {
        self.last_event += 1;
        let e = Event {
            sequence: self.last_event,
            time: Some(now()),
            kind: Some(kind),
        };
        writes.push(Write::Event(Box::new(e.clone())));
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(e);
    }

    fn task_changed(&mut self, id: Uuid, writes: &mut Vec<Write>) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.updated_at = Some(now());
        let kind = event::Kind::Task(TaskEvent {
            task_id: task.id.clone(),
            attempt: task.attempt,
            state: task.state,
            desired_state: task.desired_state,
            node_id: task.node_id.clone(),
            message: task.message.clone(),
            health: task.health,
        });
        // The store never rewrites a spec, so the update leaves it out: no
        // copy of it to make, queue and drop for every change of state.
        let spec = task.spec.take();
        writes.push(Write::TaskUpdated(Box::new(Task::clone(task))));
        task.spec = spec;
        self.emit(kind, writes);
    }

    fn node_changed(&mut self, i: usize, message: &str, writes: &mut Vec<Write>) {
        let node = &self.entries[i].node;
        let kind = event::Kind::Node(NodeEvent {
            node_id: node.id.clone(),
            name: node.name.clone(),
            state: node.state,
            message: message.to_string(),
        });
        writes.push(Write::Node(Box::new(node.clone())));
        self.emit(kind, writes);
    }

    fn send(&self, i: usize, msg: Assignments) {
        if let Some((_, tx)) = &self.entries[i].session {
            let _ = tx.send(Ok(ManagerMessage {
                kind: Some(manager_message::Kind::Assignments(msg)),
            }));
        }
    }

    /// Builds new tasks from validated specs. They are not part of the state
    /// until [`State::admit`]; the caller makes them durable in between.
    pub fn new_tasks(specs: Vec<TaskSpec>) -> Vec<Task> {
        let created = now();
        specs
            .into_iter()
            .map(|spec| Task {
                id: Uuid::now_v7().to_string(),
                spec: Some(spec),
                desired_state: DesiredState::Running as i32,
                state: TaskState::Pending as i32,
                attempt: 1,
                created_at: Some(created),
                updated_at: Some(created),
                ..Default::default()
            })
            .collect()
    }

    /// Adds durable new tasks and schedules them. Returns them as they are now.
    pub fn admit(&mut self, tasks: Vec<Task>) -> Vec<Task> {
        let mut writes = Vec::new();
        let ids: Vec<Uuid> = tasks.iter().map(task_uuid).collect();
        for task in tasks {
            let id = task_uuid(&task);
            self.tasks.insert(id, Box::new(task));
            self.place(id, &mut writes);
        }
        self.committer.queue(writes);
        ids.iter()
            .filter_map(|id| self.tasks.get(id).map(|t| Task::clone(t)))
            .collect()
    }

    /// Tries to bind a pending task to a node; on failure it stays pending
    /// with the scheduler's reason.
    fn place(&mut self, id: Uuid, writes: &mut Vec<Write>) -> bool {
        let Some(task) = self.tasks.get(&id) else {
            return false;
        };
        let demand = demand_of(task);
        match self.scheduler.place(&demand, &self.nodes) {
            Ok(i) => {
                self.pending.remove(&id);
                self.bind_resources(i, id, &demand);
                let node_id = self.nodes[i].id.to_string();
                let Some(task) = self.tasks.get_mut(&id) else {
                    return false;
                };
                task.state = TaskState::Scheduled as i32;
                task.node_id = node_id;
                task.message.clear();
                let run = TaskAssignment {
                    task_id: task.id.clone(),
                    attempt: task.attempt,
                    spec: task.spec.clone(),
                };
                self.send(
                    i,
                    Assignments {
                        full: false,
                        run: vec![run],
                        stop: vec![],
                    },
                );
                self.task_changed(id, writes);
                true
            }
            Err(unplaceable) => {
                let newly_pending = self.pending.insert(id);
                let Some(task) = self.tasks.get_mut(&id) else {
                    return false;
                };
                // A retry that finds the same reason changes nothing: no
                // write, no event.
                if newly_pending || task.message != unplaceable.reason {
                    task.message = unplaceable.reason;
                    self.task_changed(id, writes);
                }
                false
            }
        }
    }

    /// Tries every pending task again, oldest first (after capacity freed up
    /// or a node became ready).
    fn retry_pending(&mut self, writes: &mut Vec<Write>) {
        if self.pending.is_empty() || !self.nodes.iter().any(|n| n.ready) {
            return;
        }
        let waiting: Vec<Uuid> = self.pending.iter().copied().collect();
        for id in waiting {
            self.place(id, writes);
        }
    }

    /// Ends a task's current attempt in `state`, releasing its node's
    /// resources; then, if the task should still run, begins its next attempt:
    /// at once for a lost task, after the restart policy's backoff for one
    /// whose container ended.
    fn finish(&mut self, id: Uuid, state: TaskState, writes: &mut Vec<Write>) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        task.state = state as i32;
        task.finished_at = Some(now());
        task.restart_at = None;
        let demand = demand_of(task);
        let node = Uuid::parse_str(&task.node_id).ok();
        self.pending.remove(&id);
        if let Some(&i) = node.as_ref().and_then(|n| self.node_index.get(n)) {
            self.release_resources(i, id, &demand);
        }
        self.task_changed(id, writes);

        let Some(task) = self.tasks.get(&id) else {
            return;
        };
        if task.desired_state() != DesiredState::Running {
            return;
        }
        let delay = if state == TaskState::Lost {
            Duration::ZERO
        } else {
            let ran_for = task.started_at.as_ref().and_then(|s| {
                SystemTime::now()
                    .duration_since(orch::time::system_time(s))
                    .ok()
            });
            let streak = self.streaks.get(&id).copied().unwrap_or(0);
            let Some(restart) = reconciler::after_exit(
                task.spec.as_ref().and_then(|s| s.restart.as_ref()),
                state,
                task.restart_count,
                streak,
                ran_for,
            ) else {
                self.streaks.remove(&id);
                return;
            };
            self.streaks.insert(id, restart.streak);
            restart.delay
        };
        self.next_attempt(id, state, delay, writes);
    }

    /// Begins a task's next attempt: pending, placed once `delay` has passed.
    fn next_attempt(
        &mut self,
        id: Uuid,
        ended: TaskState,
        delay: Duration,
        writes: &mut Vec<Write>,
    ) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let why = match (ended, task.exit_code) {
            (TaskState::Lost, _) => format!("attempt {} was lost with its node", task.attempt),
            // Stopped by the manager for failing its health check (see
            // `report`); the message holds the probe's reason.
            (TaskState::Failed, _) if task.health() == HealthState::Unhealthy => {
                format!("attempt {} {}", task.attempt, task.message)
            }
            (_, Some(code)) => format!("attempt {} exited with code {code}", task.attempt),
            _ => format!("attempt {} failed: {}", task.attempt, task.message),
        };
        begin_attempt(task);
        if ended != TaskState::Lost {
            task.restart_count += 1;
        }
        if delay.is_zero() {
            task.message = format!("rescheduling: {why}");
            self.task_changed(id, writes);
            self.place(id, writes);
        } else {
            task.message = format!("restarting in {}s: {why}", delay.as_secs_f64().ceil());
            task.restart_at = Some(timestamp(SystemTime::now() + delay));
            self.delayed.insert((Instant::now() + delay, id));
            self.task_changed(id, writes);
        }
    }

    /// Places the restarts whose backoff has passed.
    fn run_due_restarts(&mut self, now: Instant, writes: &mut Vec<Write>) {
        while let Some(&(due, id)) = self.delayed.first() {
            if due > now {
                break;
            }
            self.delayed.pop_first();
            // A task stopped meanwhile is no longer waiting.
            let waiting = self
                .tasks
                .get_mut(&id)
                .filter(|t| t.state() == TaskState::Pending && t.restart_at.is_some());
            if let Some(task) = waiting {
                task.restart_at = None;
                self.place(id, writes);
            }
        }
    }

    /// Asks for a task to stop. Returns the task and a [`Durable`] for the
    /// change of its desired state.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown task.
    pub fn stop(&mut self, id: Uuid) -> Result<(Task, Durable), Error> {
        let task = self
            .tasks
            .get_mut(&id)
            .ok_or_else(|| Error::NotFound(format!("task {id} not found")))?;
        if task.desired_state() == DesiredState::Stopped || task_state::is_terminal(task.state()) {
            return Ok((Task::clone(task), Durable::done()));
        }
        task.set_desired_state(DesiredState::Stopped);
        let mut writes = Vec::new();
        match task.state() {
            TaskState::Pending => {
                task.message = "stopped before it was placed".into();
                self.finish(id, TaskState::Stopped, &mut writes);
            }
            _ => {
                let stop = TaskStop {
                    task_id: task.id.clone(),
                    attempt: task.attempt,
                    grace_period: Some(duration(validate::stop_grace(
                        task.spec.as_ref().unwrap_or(&TaskSpec::default()),
                    ))),
                };
                let node = Uuid::parse_str(&task.node_id).ok();
                if let Some(&i) = node.as_ref().and_then(|n| self.node_index.get(n)) {
                    self.send(
                        i,
                        Assignments {
                            full: false,
                            run: vec![],
                            stop: vec![stop],
                        },
                    );
                }
                // A task moving off a drained node stops there too.
                self.end_handoff(id);
                self.task_changed(id, &mut writes);
            }
        }
        let task = self
            .tasks
            .get(&id)
            .map(|t| Task::clone(t))
            .unwrap_or_default();
        Ok((task, self.committer.queue_durable(writes)))
    }

    /// One task.
    pub fn task(&self, id: Uuid) -> Option<&Task> {
        self.tasks.get(&id).map(Box::as_ref)
    }

    /// Tasks after `after` (exclusive) in submission order that pass `keep`,
    /// at most `limit`; and whether more follow.
    pub fn list_tasks(
        &self,
        after: Option<Uuid>,
        limit: usize,
        keep: impl Fn(&Task) -> bool,
    ) -> (Vec<Task>, bool) {
        let range = match after {
            Some(a) => self
                .tasks
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.tasks.range(..),
        };
        let mut out = Vec::new();
        for task in range.map(|(_, t)| t).filter(|t| keep(t)) {
            if out.len() == limit {
                return (out, true);
            }
            out.push(Task::clone(task));
        }
        (out, false)
    }

    /// Every node, as `ListNodes` shows it.
    pub fn list_nodes(&self) -> Vec<Node> {
        (0..self.entries.len()).map(|i| self.node_view(i)).collect()
    }

    /// Node `i` as `ListNodes` shows it.
    fn node_view(&self, i: usize) -> Node {
        let snap = &self.nodes[i];
        let mut node = self.entries[i].node.clone();
        node.allocated = Some(snap.allocated.into());
        node.task_count = snap.task_count;
        node
    }

    fn node_by_id(&self, id: Uuid) -> Result<usize, Error> {
        self.node_index
            .get(&id)
            .copied()
            .ok_or_else(|| Error::NotFound(format!("node {id} not found")))
    }

    /// The state a live node shows: draining if drained, else ready.
    fn live_state(&self, i: usize) -> NodeState {
        if self.entries[i].node.draining {
            NodeState::Draining
        } else {
            NodeState::Ready
        }
    }

    /// Drains a node: no new tasks go there, and each of its tasks moves to
    /// another node as a new attempt. Where the new attempt can be placed,
    /// the old container keeps running until the new one runs (see
    /// `handoffs`); where it cannot, the old one is stopped now and the task
    /// waits, pending. Returns the node and a [`Durable`] for the change.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown node.
    pub fn drain(&mut self, node_id: Uuid) -> Result<(Node, Durable), Error> {
        let i = self.node_by_id(node_id)?;
        let mut writes = Vec::new();
        if !self.entries[i].node.draining {
            self.entries[i].node.draining = true;
            let state = match self.entries[i].node.state() {
                NodeState::Down => NodeState::Down,
                _ => NodeState::Draining,
            };
            // The flag is persisted even when the visible state does not change.
            writes.push(Write::Node(Box::new(self.entries[i].node.clone())));
            self.set_node_state(i, state, "drained", &mut writes);
            let mut moving: Vec<Uuid> = self.entries[i].tasks.iter().copied().collect();
            moving.sort();
            let name = self.nodes[i].name.clone();
            for id in moving {
                self.move_off(i, id, &name, &mut writes);
            }
        }
        Ok((self.node_view(i), self.committer.queue_durable(writes)))
    }

    /// Moves one task off draining node `i` (see [`State::drain`]).
    fn move_off(&mut self, i: usize, id: Uuid, node_name: &str, writes: &mut Vec<Write>) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        if task.desired_state() != DesiredState::Running {
            return;
        }
        let old = task.attempt;
        let grace = validate::stop_grace(task.spec.as_ref().unwrap_or(&TaskSpec::default()));
        let demand = demand_of(task);
        begin_attempt(task);
        task.message = format!("moving off drained node {node_name}");
        self.release_resources(i, id, &demand);
        self.task_changed(id, writes);
        if self.place(id, writes) {
            self.handoffs.insert(id, (i, old, grace));
        } else {
            self.send_stop(i, id, old, grace);
        }
    }

    fn send_stop(&self, i: usize, task: Uuid, attempt: u64, grace: Duration) {
        self.send(
            i,
            Assignments {
                full: false,
                run: vec![],
                stop: vec![TaskStop {
                    task_id: task.to_string(),
                    attempt,
                    grace_period: Some(duration(grace)),
                }],
            },
        );
    }

    /// Ends a drain handoff: the old attempt is told to stop.
    fn end_handoff(&mut self, id: Uuid) {
        if let Some((i, attempt, grace)) = self.handoffs.remove(&id) {
            self.send_stop(i, id, attempt, grace);
        }
    }

    /// Undoes [`State::drain`]: the node takes new tasks again, and pending
    /// tasks are tried on it.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown node.
    pub fn activate(&mut self, node_id: Uuid) -> Result<(Node, Durable), Error> {
        let i = self.node_by_id(node_id)?;
        let mut writes = Vec::new();
        if self.entries[i].node.draining {
            self.entries[i].node.draining = false;
            writes.push(Write::Node(Box::new(self.entries[i].node.clone())));
            if self.entries[i].node.state() == NodeState::Draining {
                self.set_node_state(i, NodeState::Ready, "activated", &mut writes);
            }
            self.retry_pending(&mut writes);
        }
        Ok((self.node_view(i), self.committer.queue_durable(writes)))
    }

    /// Registers a worker, new or returning, and hands out a new session.
    /// Returns the reply and a [`Durable`] for the node's record.
    pub fn register(&mut self, req: RegisterRequest) -> (RegisterResponse, Durable) {
        let mut writes = Vec::new();
        let asked = Uuid::parse_str(&req.node_id).ok();
        let i = match asked.and_then(|id| self.node_index.get(&id).copied()) {
            Some(i) => i,
            None => {
                let node = Node {
                    id: asked.unwrap_or_else(Uuid::now_v7).to_string(),
                    state: NodeState::Down as i32,
                    registered_at: Some(now()),
                    ..Default::default()
                };
                self.add_node(node)
            }
        };
        let capacity = req.capacity.unwrap_or_default();
        let entry = &mut self.entries[i];
        entry.node.name = req.name;
        entry.node.address = req.address;
        entry.node.labels = req.labels;
        entry.node.capacity = Some(capacity);
        let session_id = Uuid::new_v4();
        entry.registered_session = Some(session_id);
        let snap = &mut self.nodes[i];
        snap.name = entry.node.name.clone();
        snap.labels = entry.node.labels.clone();
        snap.capacity = Resources::from(&capacity);
        writes.push(Write::Node(Box::new(entry.node.clone())));
        let reply = RegisterResponse {
            node_id: entry.node.id.clone(),
            session_id: session_id.to_string(),
            heartbeat_period: Some(duration(self.liveness.heartbeat_period)),
            cluster_id: self.cluster_id.clone(),
        };
        (reply, self.committer.queue_durable(writes))
    }

    /// Opens the session Register handed out: the node becomes ready, gets the
    /// full set of tasks it should run, and pending tasks are tried again.
    ///
    /// # Errors
    /// [`Error::FailedPrecondition`] if the node or session is unknown or superseded.
    pub fn open_session(
        &mut self,
        node_id: Uuid,
        session_id: Uuid,
        tx: SessionTx,
    ) -> Result<(), Error> {
        let stale = || {
            Error::FailedPrecondition(format!(
                "session {session_id} of node {node_id} is unknown or superseded; register again"
            ))
        };
        let i = *self.node_index.get(&node_id).ok_or_else(stale)?;
        let entry = &mut self.entries[i];
        if entry.registered_session != Some(session_id) {
            return Err(stale());
        }
        entry.registered_session = None;
        // Replacing the sender closes a previous session's stream.
        entry.session = Some((session_id, tx));
        entry.last_seen = Instant::now();
        let run = entry
            .tasks
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .filter(|t| t.desired_state() == DesiredState::Running)
            .map(|t| TaskAssignment {
                task_id: t.id.clone(),
                attempt: t.attempt,
                spec: t.spec.clone(),
            })
            .collect();
        self.send(
            i,
            Assignments {
                full: true,
                run,
                stop: vec![],
            },
        );
        let mut writes = Vec::new();
        let live = self.live_state(i);
        self.set_node_state(i, live, "worker connected", &mut writes);
        self.retry_pending(&mut writes);
        self.committer.queue(writes);
        Ok(())
    }

    /// Whether the scheduler may place tasks on node `i`: it is `ready` (not
    /// down, not draining) and its worker is connected. A worker whose stream
    /// broke is most likely gone; tasks placed on it would wait out the
    /// liveness deadline, and when many nodes fail together they would be
    /// bounced from one dying node to the next.
    fn refresh_placeable(&mut self, i: usize) {
        let entry = &self.entries[i];
        self.nodes[i].ready = entry.node.state() == NodeState::Ready && entry.session.is_some();
    }

    /// Sets node `i`'s state and whether it takes tasks; a change of state is
    /// persisted and becomes an event. Whether it takes tasks can change with
    /// the state unchanged: a worker that reconnects within the deadline.
    fn set_node_state(&mut self, i: usize, state: NodeState, why: &str, writes: &mut Vec<Write>) {
        let changed = self.entries[i].node.state() != state;
        self.entries[i].node.set_state(state);
        self.refresh_placeable(i);
        if !changed {
            return;
        }
        tracing::info!(node = %self.nodes[i].id, name = %self.nodes[i].name, state = ?state, why, "node state");
        self.node_changed(i, why, writes);
    }

    /// The session's stream ended: if it is still the node's current
    /// session, the node has until the liveness deadline (counted from when it
    /// was last heard from) to open a new one before it is declared down.
    /// Meanwhile it takes no new tasks.
    pub fn close_session(&mut self, node_id: Uuid, session_id: Uuid) {
        let Some(&i) = self.node_index.get(&node_id) else {
            return;
        };
        if self.entries[i].session.as_ref().map(|s| s.0) == Some(session_id) {
            self.entries[i].session = None;
            self.refresh_placeable(i);
        }
    }

    fn current_session(&self, node_id: Uuid, session_id: Uuid) -> Option<usize> {
        let &i = self.node_index.get(&node_id)?;
        (self.entries[i].session.as_ref().map(|s| s.0) == Some(session_id)).then_some(i)
    }

    /// A heartbeat from a session. Returns false if the session is not current.
    pub fn heartbeat(&mut self, node_id: Uuid, session_id: Uuid, metrics: NodeMetrics) -> bool {
        let Some(i) = self.current_session(node_id, session_id) else {
            return false;
        };
        let snap = &mut self.nodes[i];
        snap.cpu_percent = metrics.cpu_percent;
        snap.memory_used_bytes = metrics.memory_used_bytes;
        snap.memory_total_bytes = metrics.memory_total_bytes;
        let entry = &mut self.entries[i];
        entry.last_seen = Instant::now();
        entry.node.usage = Some(metrics);
        entry.node.last_heartbeat = Some(now());
        // Heartbeats are not persisted: they change every second on every node
        // and mean nothing after a restart.
        true
    }

    /// A batch of status reports from a session. Reports about an attempt
    /// other than the task's current one, or about a task placed elsewhere,
    /// are ignored, and a container they say is still alive is told to stop.
    /// Returns false if the session is not current.
    pub fn report(&mut self, node_id: Uuid, session_id: Uuid, statuses: Vec<TaskStatus>) -> bool {
        let Some(i) = self.current_session(node_id, session_id) else {
            return false;
        };
        self.entries[i].last_seen = Instant::now();
        let node = node_id.to_string();
        let mut writes = Vec::new();
        let mut fence = Vec::new();
        let mut freed = false;
        for status in statuses {
            let Ok(id) = Uuid::parse_str(&status.task_id) else {
                continue;
            };
            let reported = status.state();
            let Some(task) = self.tasks.get_mut(&id).filter(|t| t.node_id == node) else {
                if !task_state::is_terminal(reported) {
                    let spec = self.tasks.get(&id).and_then(|t| t.spec.as_ref());
                    fence.push(stop_order(&status, spec));
                }
                continue;
            };
            if reported == TaskState::Running
                && task.state() == TaskState::Running
                && status.attempt == task.attempt
            {
                // Not a move of the state: the table refuses running →
                // running, rightly, since a repeat says nothing new. But it
                // may be news of the running attempt's health.
                if let Some(stop) = self.health_report(id, &status, &mut writes) {
                    fence.push(stop);
                }
                continue;
            }
            match task_state::accept_report(task.attempt, task.state(), status.attempt, reported) {
                Ok(()) => {}
                Err(TransitionError::StaleAttempt { .. }) => {
                    if !task_state::is_terminal(reported) {
                        fence.push(stop_order(&status, task.spec.as_ref()));
                    }
                    continue;
                }
                Err(e @ TransitionError::NotAllowed { .. }) => {
                    tracing::debug!(task = %id, error = %e, "report ignored");
                    continue;
                }
            }
            // The stop the manager sent an unhealthy attempt to replace it
            // (see `health_report`) has taken effect: the attempt failed.
            let unhealthy_end = reported == TaskState::Stopped && unhealthy_stop(task).is_some();
            if !status.container_id.is_empty() {
                task.container_id = status.container_id;
            }
            if status.exit_code.is_some() {
                task.exit_code = status.exit_code;
            }
            if !unhealthy_end {
                // Keeps the probe's reason for an unhealthy end.
                task.message = status.message;
            }
            if reported == TaskState::Running {
                task.started_at = status.time.or_else(|| Some(now()));
                task.health = status.health;
                if task.health() == HealthState::Unhealthy {
                    task.message = format!("unhealthy: {}", task.message);
                }
            }
            if reported == TaskState::Running || task_state::is_terminal(reported) {
                // A task moving off a drained node: the new attempt runs (or
                // ended), so the old one can go.
                self.end_handoff(id);
            }
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            if task_state::is_terminal(reported) {
                freed = true;
                let ended = if unhealthy_end {
                    TaskState::Failed
                } else {
                    // Health is about a running container; this one ended.
                    task.health = HealthState::Unspecified as i32;
                    reported
                };
                self.finish(id, ended, &mut writes);
            } else {
                task.state = reported as i32;
                if task.desired_state() == DesiredState::Stopped {
                    // Level-triggered: a task that should stop and is still
                    // reported alive is told again (the worker ignores repeats).
                    fence.push(stop_order(&status_of(task), task.spec.as_ref()));
                }
                // A first `running` report may already say unhealthy (a
                // resync after the manager missed the change).
                fence.extend(unhealthy_stop(task));
                self.task_changed(id, &mut writes);
            }
        }
        if !fence.is_empty() {
            self.send(
                i,
                Assignments {
                    full: false,
                    run: vec![],
                    stop: fence,
                },
            );
        }
        if freed {
            self.retry_pending(&mut writes);
        }
        self.committer.queue(writes);
        true
    }

    /// A `running` report about a task whose current attempt is already
    /// running: records a new health (with an event), and returns the stop
    /// to send if the attempt is unhealthy and is to be replaced. The stop is
    /// returned again for every such report while the container lives
    /// (level-triggered; the worker ignores repeats). Once the worker reports
    /// the attempt stopped, `report` ends it as failed and the restart
    /// policy starts the next one after its backoff, so two attempts of one
    /// task never run at once. An unhealthy attempt that is not replaced (see
    /// [`reconciler::replace_unhealthy`]) keeps running.
    fn health_report(
        &mut self,
        id: Uuid,
        status: &TaskStatus,
        writes: &mut Vec<Write>,
    ) -> Option<TaskStop> {
        let task = self.tasks.get_mut(&id)?;
        let health = status.health();
        // A report without a health says nothing about it.
        if health != HealthState::Unspecified && health != task.health() {
            task.set_health(health);
            task.message = match health {
                HealthState::Unhealthy => format!("unhealthy: {}", status.message),
                _ => String::new(),
            };
            tracing::info!(task = %id, attempt = task.attempt, health = ?health, message = %task.message, "task health");
            self.task_changed(id, writes);
        }
        unhealthy_stop(self.tasks.get(&id)?)
    }

    /// Housekeeping, called at [`State::next_due`] (and at least a few times
    /// per heartbeat period): declares down every node not heard from within
    /// the liveness deadline (rescheduling
    /// its tasks), and places restarts whose backoff has passed. Returns how
    /// many nodes went down.
    pub fn tick(&mut self, now: Instant) -> usize {
        let silent: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.liveness_deadline(i).is_some_and(|due| due <= now))
            .collect();
        let mut writes = Vec::new();
        // All of them are down before any of their tasks is placed again, so
        // no task is moved onto a node that is going down with them.
        for &i in &silent {
            self.node_down(i, &mut writes);
        }
        for &i in &silent {
            self.lose_tasks(i, &mut writes);
        }
        self.run_due_restarts(now, &mut writes);
        self.committer.queue(writes);
        silent.len()
    }

    /// When node `i` is declared down unless it is heard from before then;
    /// `None` for a node with nothing left to lose. A node counts as silent
    /// whether its stream is still open (a hung worker) or already broken and
    /// not reopened in time; a node that is down but still holds tasks (as
    /// after a manager restart) too.
    fn liveness_deadline(&self, i: usize) -> Option<Instant> {
        let e = &self.entries[i];
        let holds = e.session.is_some() || e.node.state() != NodeState::Down || !e.tasks.is_empty();
        holds.then(|| e.last_seen + self.liveness.deadline())
    }

    /// The earliest moment [`State::tick`] has something to do: a node's
    /// liveness deadline or a restart's end of backoff. `None` if nothing is
    /// waiting.
    pub fn next_due(&self) -> Option<Instant> {
        let restarts = self.delayed.first().map(|&(due, _)| due);
        (0..self.entries.len())
            .filter_map(|i| self.liveness_deadline(i))
            .chain(restarts)
            .min()
    }

    /// A node stopped answering: it is down, and its session (if still open)
    /// ends. [`State::lose_tasks`] follows.
    fn node_down(&mut self, i: usize, writes: &mut Vec<Write>) {
        if let Some((_, tx)) = self.entries[i].session.take() {
            let _ = tx.send(Err(Status::unavailable(
                "no heartbeat within the deadline; register again",
            )));
        }
        self.set_node_state(
            i,
            NodeState::Down,
            "no heartbeat within the deadline",
            writes,
        );
    }

    /// The tasks of a down node are lost and placed again elsewhere as new
    /// attempts. If its worker comes back, the full assignment set it gets no
    /// longer lists them, so it stops them.
    fn lose_tasks(&mut self, i: usize, writes: &mut Vec<Write>) {
        let mut lost: Vec<Uuid> = self.entries[i].tasks.iter().copied().collect();
        lost.sort();
        let name = self.nodes[i].name.clone();
        for id in lost {
            if let Some(task) = self.tasks.get_mut(&id) {
                task.message = format!("node {name} is down");
            }
            self.finish(id, TaskState::Lost, writes);
        }
    }

    /// Ends every session and event stream, so a graceful server shutdown
    /// does not wait on streams that would otherwise never end. Workers see
    /// their session close and reconnect (to this manager's successor).
    pub fn close_streams(&mut self) {
        for entry in &mut self.entries {
            entry.session = None;
        }
        // Dropping the sender ends every `WatchEvents` stream.
        self.events = broadcast::channel(EVENT_BUFFER).0;
    }
}

/// Starts a task's next attempt: pending, on no node, with nothing observed
/// yet. Every message about the old attempt is stale from here on.
fn begin_attempt(task: &mut Task) {
    task.attempt += 1;
    task.state = TaskState::Pending as i32;
    task.node_id.clear();
    task.container_id.clear();
    task.exit_code = None;
    task.started_at = None;
    task.finished_at = None;
    task.health = HealthState::Unspecified as i32;
}

/// The stop that replaces a task's running, unhealthy attempt, if its
/// restart policy replaces it (see [`reconciler::replace_unhealthy`]).
fn unhealthy_stop(task: &Task) -> Option<TaskStop> {
    let replace = task.state() == TaskState::Running
        && task.desired_state() == DesiredState::Running
        && task.health() == HealthState::Unhealthy
        && reconciler::replace_unhealthy(
            task.spec.as_ref().and_then(|s| s.restart.as_ref()),
            task.restart_count,
        );
    replace.then(|| stop_order(&status_of(task), task.spec.as_ref()))
}

/// A status naming a task's current attempt.
fn status_of(task: &Task) -> TaskStatus {
    TaskStatus {
        task_id: task.id.clone(),
        attempt: task.attempt,
        ..Default::default()
    }
}

/// The stop for a container of an attempt that should not run, with
/// the task's own grace period when the task is known.
fn stop_order(status: &TaskStatus, spec: Option<&TaskSpec>) -> TaskStop {
    let grace = spec.map_or(validate::DEFAULT_STOP_GRACE, validate::stop_grace);
    TaskStop {
        task_id: status.task_id.clone(),
        attempt: status.attempt,
        grace_period: Some(duration(grace)),
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
