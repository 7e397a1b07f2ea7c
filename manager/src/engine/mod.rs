//! The engine: the manager's one lock, where every API and dispatcher call
//! lands and where the components' decisions are applied.
//!
//! It holds the live objects ([`State`]), the workers' sessions
//! ([`Sessions`]), the [`Scheduler`] and the orchestrator's bookkeeping
//! (restart backoffs, drain handoffs). Each operation reads the clock once
//! ([`Clock`]), asks the pure components what to do (the scheduler where a
//! task goes, `orchestrator::restart` whether it restarts, `orchestrator::drain`
//! what moves), changes the state accordingly, pushes the resulting
//! assignments onto session channels, and queues the state's writes on the
//! [`Committer`] in order. None of it awaits or does I/O, so the lock is never
//! held across I/O; callers that must answer "durable" await the returned
//! [`Durable`] after releasing the lock.
//!
//! It updates the manager's metrics as it acts (`crate::metrics`: placements,
//! how long each decision took, submission to running), never awaiting.
//!
//! The operations are grouped by who calls them: `tasks` (the API's task
//! calls), `nodes` (drain and activate), `workers` (the dispatcher's calls
//! and liveness).

mod logs;
mod nodes;
mod plans;
mod services;
mod tasks;
mod workers;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use orch::time::{duration, timestamp};
use orch::v1::{
    Assignments, DesiredState, HealthState, Task, TaskAssignment, TaskSpec, TaskState, TaskStatus,
    TaskStop,
};
use orch::validate;
use uuid::Uuid;

use crate::clock::{Clock, Now, Stopwatch};
use crate::dispatcher::sessions::{Liveness, Sessions};
use crate::logs::LogRequests;
use crate::metrics::Metrics;
use crate::orchestrator::drain::Handoffs;
use crate::orchestrator::restart::{self, Backoffs};
use crate::persist::{Committer, Durable};
use crate::scheduler::{Scheduler, Unplaceable};
use crate::state::State;
use crate::store::Snapshot;

/// See the module documentation.
pub struct Engine {
    state: State,
    sessions: Sessions,
    scheduler: Scheduler,
    backoffs: Backoffs,
    handoffs: Handoffs,
    committer: Committer,
    clock: Clock,
    /// The time of the operation under way (set by `begin`).
    now: Now,
    /// Services to reconcile before the operation ends.
    dirty: HashSet<String>,
    /// When services want to be reconciled again by themselves (a new
    /// task's monitor ends, an update's delay passes).
    timers: BTreeSet<(tokio::time::Instant, String)>,
    /// Each service's one entry in `timers`.
    wakes: HashMap<String, tokio::time::Instant>,
    /// The log requests in flight.
    logs: LogRequests,
    /// The manager's metrics.
    metrics: Metrics,
    /// How many jobs the engine has queued on the committer: each one's
    /// number (`Committer::queue_marked`).
    jobs: u64,
    /// Whether a push waits for the next job (`Engine::gate`), so that it is
    /// queued even with no writes.
    gated: bool,
    /// Set by `Engine::close_streams`: sessions stop waiting for pushes
    /// to become durable.
    closing: tokio::sync::watch::Sender<bool>,
}

pub use self::logs::OpenLogs;
pub use self::plans::MAX_PLANNED_SLOTS;
pub use self::services::How;

impl Engine {
    /// Rebuilds the manager from what the store holds (see [`State::restore`]).
    /// Every node gets a whole liveness deadline, from now, for its worker to
    /// come back.
    pub fn restore(
        snapshot: Snapshot,
        scheduler: Scheduler,
        committer: Committer,
        liveness: Liveness,
    ) -> Self {
        Self::restore_measured(snapshot, scheduler, committer, liveness, Metrics::new())
    }

    /// As [`Engine::restore`], keeping `metrics` (whose counts by state
    /// start from zero).
    pub fn restore_measured(
        snapshot: Snapshot,
        scheduler: Scheduler,
        committer: Committer,
        liveness: Liveness,
        metrics: Metrics,
    ) -> Self {
        let clock = Clock::start();
        let now = clock.now();
        let state = State::restore_counted(
            snapshot,
            now.wall,
            metrics.tasks.clone(),
            metrics.nodes.clone(),
        );
        let mut sessions = Sessions::new(liveness);
        for i in 0..state.node_count() {
            sessions.track(state.node_id(i), now.at);
        }
        let dirty = state
            .services()
            .filter_map(|e| e.service.spec.as_ref().map(|s| s.name.clone()))
            .collect();
        let mut engine = Self {
            state,
            sessions,
            scheduler,
            backoffs: Backoffs::default(),
            handoffs: Handoffs::default(),
            committer,
            clock,
            now,
            dirty,
            timers: BTreeSet::new(),
            wakes: HashMap::new(),
            logs: LogRequests::default(),
            metrics,
            jobs: 0,
            gated: false,
            closing: tokio::sync::watch::Sender::new(false),
        };
        // Every service is reconciled once: a rollout carries on, a count
        // is restored.
        engine.flush();
        engine
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> &str {
        self.state.cluster_id()
    }

    /// The store writer.
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// The manager's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What a session's stream waits on before it sends an assignment.
    pub fn session_gate(&self) -> crate::dispatcher::Gate {
        crate::dispatcher::Gate {
            marks: self.committer.marks(),
            closing: self.closing.subscribe(),
        }
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<orch::v1::Event> {
        self.state.subscribe()
    }

    /// Where a `WatchEvents` stream joins: a receiver of every event from
    /// now on, the sequence of the newest event before it, and what resolves
    /// once the store holds every event up to that one (it queues any write
    /// not queued yet, then waits for everything queued before).
    pub fn watch_point(
        &mut self,
    ) -> (
        tokio::sync::broadcast::Receiver<orch::v1::Event>,
        u64,
        Durable,
    ) {
        let rx = self.state.subscribe();
        let durable = self.queue();
        (rx, self.state.last_event(), durable)
    }

    /// Reads the clock for an operation and stamps the state's changes with it.
    fn begin(&mut self) -> Now {
        let now = self.clock.now();
        self.begin_at(now);
        now
    }

    /// Starts an operation at `now`.
    fn begin_at(&mut self, now: Now) {
        self.now = now;
        self.state.set_time(now.wall);
    }

    /// Ends an operation: settles the services it touched, then queues its
    /// writes, in order; nobody waits for them.
    fn flush(&mut self) {
        self.settle();
        if self.gated || self.state.has_writes() {
            self.queue();
        }
    }

    /// As [`Engine::flush`], and returns what resolves once the writes are
    /// durable (with none, once everything queued before is).
    fn flush_durable(&mut self) -> Durable {
        self.settle();
        self.queue()
    }

    /// Queues the writes taken so far as the engine's next job, numbered,
    /// which releases the pushes gated on it (`Engine::gate`) once durable.
    fn queue(&mut self) -> Durable {
        self.jobs += 1;
        self.gated = false;
        self.committer
            .queue_marked(self.state.take_writes(), self.jobs)
    }

    /// The number of the job that will hold the writes made so far: what a
    /// push made now waits for before its session sends it, so that no
    /// worker acts on a decision that is not durable yet. Every operation
    /// that pushes ends by queueing that job (`Engine::flush`).
    fn gate(&mut self) -> u64 {
        self.gated = true;
        self.jobs + 1
    }

    /// Sends one node a change of assignments, once the writes made so far
    /// are durable. A session that falls behind is ended there (see
    /// `Sessions::push`), and its node takes no new tasks until its worker
    /// opens the next.
    fn push(&mut self, node: Uuid, run: Vec<TaskAssignment>, stop: Vec<TaskStop>) {
        let assignments = Assignments {
            full: false,
            run,
            stop,
            more: false,
        };
        let after = self.gate();
        if !self.sessions.push(node, assignments, after)
            && let Some(i) = self.state.node_index(node)
        {
            self.refresh_placeable(i);
        }
    }

    /// Tries to bind a pending task to a node; on failure it stays pending
    /// with the scheduler's reason. Returns whether it was placed.
    fn place(&mut self, id: Uuid) -> bool {
        let Some(task) = self.state.task(id) else {
            return false;
        };
        let demand = self.state.demand(task);
        let stopwatch = Stopwatch::start();
        // A global service's task runs on its own node or nowhere.
        let placed = match pinned_node(task).map(|n| self.state.node_index(n)) {
            None => self.scheduler.place(&demand, self.state.snapshots()),
            Some(Some(i)) => self
                .scheduler
                .check(&demand, &self.state.snapshots()[i])
                .map(|()| i),
            Some(None) => Err(Unplaceable {
                reason: "its node is no longer known".to_owned(),
            }),
        };
        self.metrics
            .placements
            .decided(placed.is_ok(), stopwatch.elapsed());
        match placed {
            Ok(i) => {
                if let Err(e) = self.state.set_task_state(id, TaskState::Scheduled) {
                    tracing::error!(task = %id, error = %e, "placement refused by the state table");
                    return false;
                }
                self.state.bind(i, id, &demand);
                let node = self.state.node_id(i);
                let Some(task) = self.state.task_mut(id) else {
                    return false;
                };
                task.node_id = node.to_string();
                task.message.clear();
                task.restart_at = None;
                let run = assignment(task);
                self.push(node, vec![run], vec![]);
                self.state.task_changed(id);
                true
            }
            Err(unplaceable) => {
                self.state.enqueue(id);
                let Some(task) = self.state.task_mut(id) else {
                    return false;
                };
                // A retry that finds the same reason changes nothing: no
                // write, no event.
                if task.message != unplaceable.reason {
                    task.message = unplaceable.reason;
                    self.state.task_changed(id);
                }
                false
            }
        }
    }

    /// Tries every pending task again, oldest first (after capacity freed up
    /// or a node became ready).
    fn retry_pending(&mut self) {
        if !self.state.has_pending() || !self.state.snapshots().iter().any(|n| n.ready) {
            return;
        }
        for id in self.state.pending() {
            self.place(id);
        }
    }

    /// Ends a task's current attempt in `state`, releasing its node's
    /// resources; then, if the task should still run, begins its next attempt:
    /// at once for a lost task, after the restart policy's backoff for one
    /// whose container ended.
    fn finish(&mut self, id: Uuid, state: TaskState, now: Now) {
        if let Err(e) = self.state.set_task_state(id, state) {
            tracing::error!(task = %id, error = %e, "end of attempt refused by the state table");
            return;
        }
        let stamp = timestamp(now.wall);
        let Some(task) = self.state.task(id) else {
            return;
        };
        let demand = self.state.demand(task);
        if let Some(i) = self.state.node_of(task) {
            self.state.release(i, id, &demand);
        }
        let Some(task) = self.state.task_mut(id) else {
            return;
        };
        task.finished_at = Some(stamp);
        task.restart_at = None;
        self.state.task_changed(id);
        self.task_touched(id, true);

        let Some(task) = self.state.task(id) else {
            return;
        };
        if task.desired_state() != DesiredState::Running {
            return;
        }
        let delay = if state == TaskState::Lost {
            Duration::ZERO
        } else {
            let ran_for = task
                .started_at
                .as_ref()
                .and_then(|s| now.wall.duration_since(orch::time::system_time(s)).ok());
            let Some(restart) = restart::after_exit(
                task.spec.as_ref().and_then(|s| s.restart.as_ref()),
                state,
                task.restart_count,
                self.backoffs.streak(id),
                ran_for,
            ) else {
                self.backoffs.forget(id);
                return;
            };
            self.backoffs.wait(id, restart, now.at + restart.delay);
            restart.delay
        };
        self.next_attempt(id, state, delay, now);
    }

    /// Begins a task's next attempt: pending, placed once `delay` has passed
    /// (the backoff, already recorded in `backoffs`).
    fn next_attempt(&mut self, id: Uuid, ended: TaskState, delay: Duration, now: Now) {
        let Some(task) = self.state.task(id) else {
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
        self.state.begin_attempt(id);
        let Some(task) = self.state.task_mut(id) else {
            return;
        };
        if ended != TaskState::Lost {
            task.restart_count += 1;
        }
        if delay.is_zero() {
            task.message = format!("rescheduling: {why}");
            self.state.task_changed(id);
            self.place(id);
        } else {
            task.message = format!("restarting in {}s: {why}", delay.as_secs_f64().ceil());
            task.restart_at = Some(timestamp(now.wall + delay));
            self.state.task_changed(id);
        }
    }

    /// Places the restarts whose backoff has passed by `now`.
    fn run_due_restarts(&mut self, now: Now) {
        while let Some(id) = self.backoffs.pop_due(now.at) {
            // A task stopped meanwhile is no longer waiting.
            let waiting = self
                .state
                .task_mut(id)
                .filter(|t| t.state() == TaskState::Pending && t.restart_at.is_some());
            if let Some(task) = waiting {
                task.restart_at = None;
                self.place(id);
            }
        }
    }
}

/// The node a task is bound to (a global service's task), if any.
fn pinned_node(task: &Task) -> Option<Uuid> {
    if task.pinned_node_id.is_empty() {
        return None;
    }
    // A pin that is not an id binds the task to no node at all.
    Some(Uuid::parse_str(&task.pinned_node_id).unwrap_or_default())
}

/// The assignment that runs a task's current attempt.
fn assignment(task: &Task) -> TaskAssignment {
    TaskAssignment {
        task_id: task.id.clone(),
        attempt: task.attempt,
        spec: task.spec.clone(),
    }
}

/// The stop that replaces a task's running, unhealthy attempt, if its
/// restart policy replaces it (see [`restart::replace_unhealthy`]).
fn unhealthy_stop(task: &Task) -> Option<TaskStop> {
    let replace = task.state() == TaskState::Running
        && task.desired_state() == DesiredState::Running
        && task.health() == HealthState::Unhealthy
        && restart::replace_unhealthy(
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
    stop_of(&status.task_id, status.attempt, grace)
}

/// The stop of one attempt, with a grace period.
fn stop_of(task: &str, attempt: u64, grace: Duration) -> TaskStop {
    TaskStop {
        task_id: task.to_owned(),
        attempt,
        grace_period: Some(duration(grace)),
    }
}

#[cfg(test)]
mod plans_tests;
#[cfg(test)]
mod services_tests;
#[cfg(test)]
mod tests;
