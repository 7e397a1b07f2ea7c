//! The dispatcher's operations (register, sessions, heartbeats, reports) and
//! liveness: what the manager does with what workers say, and with their
//! silence.

use orch::task_state::{self, TransitionError};
use orch::v1::{
    Assignments, DesiredState, HealthState, Node, NodeMetrics, NodeState, RegisterRequest,
    RegisterResponse, TaskState, TaskStatus, TaskStop,
};
use tokio::time::Instant;
use uuid::Uuid;

use super::{Engine, assignment, status_of, stop_order, unhealthy_stop};
use crate::Error;
use crate::clock::Now;
use crate::dispatcher::sessions::SessionTx;
use crate::persist::Durable;
use crate::scheduler::Resources;

impl Engine {
    /// Registers a worker, new or returning, and hands out a new session.
    /// Returns the reply and a [`Durable`] for the node's record.
    pub fn register(&mut self, req: RegisterRequest) -> (RegisterResponse, Durable) {
        let now = self.begin();
        let asked = Uuid::parse_str(&req.node_id).ok();
        let i = match asked.and_then(|id| self.state.node_index(id)) {
            Some(i) => i,
            None => self.state.add_node(Node {
                id: asked.unwrap_or_else(Uuid::now_v7).to_string(),
                state: NodeState::Down as i32,
                registered_at: Some(self.state.stamp()),
                ..Default::default()
            }),
        };
        let capacity = req.capacity.unwrap_or_default();
        let (node, snapshot) = self.state.node_mut(i);
        node.name = req.name;
        node.address = req.address;
        node.labels = req.labels;
        node.capacity = Some(capacity);
        snapshot.name = node.name.clone();
        snapshot.labels = node.labels.clone();
        snapshot.capacity = Resources::from(&capacity);
        let node_id = node.id.clone();
        self.state.node_written(i);
        // Its labels may have changed: global services look again.
        self.nodes_touched();
        let session_id = self.sessions.register(self.state.node_id(i), now.at);
        let reply = RegisterResponse {
            node_id,
            session_id: session_id.to_string(),
            heartbeat_period: Some(orch::time::duration(
                self.sessions.liveness().heartbeat_period,
            )),
            cluster_id: self.state.cluster_id().to_owned(),
        };
        (reply, self.flush_durable())
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
        let now = self.begin();
        let stale =
            |e: crate::dispatcher::sessions::StaleSession| Error::FailedPrecondition(e.to_string());
        let i = self.state.node_index(node_id).ok_or_else(|| {
            stale(crate::dispatcher::sessions::StaleSession {
                node: node_id,
                session: session_id,
            })
        })?;
        // Replacing the sender closes a previous session's stream.
        self.sessions
            .open(node_id, session_id, tx, now.at)
            .map_err(stale)?;
        let mut run = Vec::new();
        // The attempts told to stop that are still active here: their stop,
        // or their `stopped` report, may have been lost with the old stream.
        // The full set alone would stop their containers but never bring
        // the report, and the node would keep their reservation; stopped
        // again, the worker reports each one (at once if it has ended).
        let mut stop = Vec::new();
        for task in self
            .state
            .tasks_on(i)
            .into_iter()
            .filter_map(|id| self.state.task(id))
        {
            if task.desired_state() == DesiredState::Running {
                run.push(assignment(task));
            } else if task_state::is_active(task.state()) {
                stop.push(stop_order(&status_of(task), task.spec.as_ref()));
            }
        }
        // One push, however large: the dispatcher cuts it into messages
        // (`Assignments.more`). A fresh channel has room for it. It goes out
        // once what it says is durable.
        let after = self.gate();
        self.sessions.push(
            node_id,
            Assignments {
                full: true,
                run,
                stop,
                more: false,
            },
            after,
        );
        let live = self.live_state(i);
        self.set_node_state(i, live, "worker connected");
        self.retry_pending();
        self.flush();
        Ok(())
    }

    /// The session's stream ended: if it is still the node's current
    /// session, the node has until the liveness deadline (counted from when it
    /// was last heard from) to open a new one before it is declared down.
    /// Meanwhile it takes no new tasks.
    pub fn close_session(&mut self, node_id: Uuid, session_id: Uuid) {
        if self.sessions.close(node_id, session_id) {
            self.logs_node_gone(node_id, "disconnected: its session closed");
            if let Some(i) = self.state.node_index(node_id) {
                self.refresh_placeable(i);
            }
        }
    }

    /// A heartbeat from a session. Returns false if the session is not current.
    pub fn heartbeat(&mut self, node_id: Uuid, session_id: Uuid, metrics: NodeMetrics) -> bool {
        if !self.sessions.is_current(node_id, session_id) {
            return false;
        }
        let Some(i) = self.state.node_index(node_id) else {
            return false;
        };
        let now = self.begin();
        self.sessions.seen(node_id, now.at);
        let stamp = self.state.stamp();
        let (node, snapshot) = self.state.node_mut(i);
        snapshot.cpu_percent = metrics.cpu_percent;
        snapshot.memory_used_bytes = metrics.memory_used_bytes;
        snapshot.memory_total_bytes = metrics.memory_total_bytes;
        node.usage = Some(metrics);
        node.last_heartbeat = Some(stamp);
        // Heartbeats are not persisted: they change every second on every node
        // and mean nothing after a restart.
        true
    }

    /// A batch of status reports from a session. Reports about an attempt
    /// other than the task's current one, or about a task placed elsewhere,
    /// are ignored, and a container they say is still alive is told to stop.
    /// Returns false if the session is not current.
    pub fn report(&mut self, node_id: Uuid, session_id: Uuid, statuses: Vec<TaskStatus>) -> bool {
        if !self.sessions.is_current(node_id, session_id) {
            return false;
        }
        let now = self.begin();
        self.sessions.seen(node_id, now.at);
        let node = node_id.to_string();
        let mut fence = Vec::new();
        let mut freed = false;
        for status in statuses {
            let Ok(id) = Uuid::parse_str(&status.task_id) else {
                continue;
            };
            let reported = status.state();
            let Some(task) = self.state.task(id).filter(|t| t.node_id == node) else {
                if !task_state::is_terminal(reported) {
                    let spec = self.state.task(id).and_then(|t| t.spec.as_ref());
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
                fence.extend(self.health_report(id, &status));
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
            if self.accept(id, status, now, &mut fence) {
                freed = true;
            }
        }
        if !fence.is_empty() {
            self.push(node_id, vec![], fence);
        }
        if freed {
            self.retry_pending();
        }
        self.flush();
        true
    }

    /// Applies one accepted report (its attempt is current and its move is
    /// in the table). Returns whether the attempt ended, freeing its node's
    /// resources; stops to send go on `fence`.
    fn accept(
        &mut self,
        id: Uuid,
        status: TaskStatus,
        now: Now,
        fence: &mut Vec<TaskStop>,
    ) -> bool {
        let reported = status.state();
        let stamp = self.state.stamp();
        let Some(task) = self.state.task_mut(id) else {
            return false;
        };
        // The stop the manager sent an unhealthy attempt to replace it (see
        // `health_report`) has taken effect: the attempt failed.
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
            task.started_at = status.time.or(Some(stamp));
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
        if task_state::is_terminal(reported) {
            let ended = if unhealthy_end {
                TaskState::Failed
            } else {
                // Health is about a running container; this one ended.
                if let Some(task) = self.state.task_mut(id) {
                    task.health = HealthState::Unspecified as i32;
                }
                reported
            };
            self.finish(id, ended, now);
            return true;
        }
        if let Err(e) = self.state.set_task_state(id, reported) {
            tracing::error!(task = %id, error = %e, "accepted report refused by the state table");
            return false;
        }
        if reported == TaskState::Running {
            self.first_running(id, now);
        }
        self.task_touched(id, false);
        if let Some(task) = self.state.task(id) {
            if task.desired_state() == DesiredState::Stopped {
                // Level-triggered: a task that should stop and is still
                // reported alive is told again (the worker ignores repeats).
                fence.push(stop_order(&status_of(task), task.spec.as_ref()));
            }
            // A first `running` report may already say unhealthy (a resync
            // after the manager missed the change).
            fence.extend(unhealthy_stop(task));
        }
        self.state.task_changed(id);
        false
    }

    /// Measures submission to running, for a task's first attempt.
    fn first_running(&self, id: Uuid, now: Now) {
        let Some(task) = self.state.task(id).filter(|t| t.attempt == 1) else {
            return;
        };
        let waited = task
            .created_at
            .as_ref()
            .and_then(|c| now.wall.duration_since(orch::time::system_time(c)).ok());
        if let Some(waited) = waited {
            self.metrics.submit_to_running.observe(waited.as_secs_f64());
        }
    }

    /// A `running` report about a task whose current attempt is already
    /// running: records a new health (with an event), and returns the stop
    /// to send if the attempt is unhealthy and is to be replaced. The stop is
    /// returned again for every such report while the container lives
    /// (level-triggered; the worker ignores repeats). Once the worker reports
    /// the attempt stopped, `report` ends it as failed and the restart
    /// policy starts the next one after its backoff, so two attempts of one
    /// task never run at once. An unhealthy attempt that is not replaced (see
    /// `orchestrator::restart::replace_unhealthy`) keeps running.
    fn health_report(&mut self, id: Uuid, status: &TaskStatus) -> Option<TaskStop> {
        let task = self.state.task_mut(id)?;
        let health = status.health();
        // A report without a health says nothing about it.
        if health != HealthState::Unspecified && health != task.health() {
            task.set_health(health);
            task.message = match health {
                HealthState::Unhealthy => format!("unhealthy: {}", status.message),
                _ => String::new(),
            };
            tracing::info!(task = %id, attempt = task.attempt, health = ?health, message = %task.message, "task health");
            self.state.task_changed(id);
            self.task_touched(id, false);
        }
        unhealthy_stop(self.state.task(id)?)
    }

    /// Housekeeping, called at [`Engine::next_due`] (and at least a few
    /// times per heartbeat period): declares down every node not heard from
    /// within the liveness deadline (rescheduling its tasks), and places
    /// restarts whose backoff has passed. Returns how many nodes went down.
    pub fn tick(&mut self, at: Instant) -> usize {
        let now = self.clock.at(at);
        self.begin_at(now);
        self.wake_services(at);
        let silent: Vec<usize> = (0..self.state.node_count())
            .filter(|&i| self.liveness_deadline(i).is_some_and(|due| due <= at))
            .collect();
        // All of them are down before any of their tasks is placed again, so
        // no task is moved onto a node that is going down with them.
        for &i in &silent {
            self.node_down(i);
        }
        for &i in &silent {
            self.lose_tasks(i, now);
        }
        self.run_due_restarts(now);
        self.flush();
        silent.len()
    }

    /// Gives every node's worker `grace` from now to open a session before
    /// it is declared down (at least the liveness deadline, as at every
    /// start): after a failover, workers first have to find the new leader.
    pub fn hold_nodes(&mut self, grace: std::time::Duration) {
        let until = self.clock.now().at + grace;
        self.sessions.hold_until(until);
    }

    /// When node `i` is declared down unless it is heard from before then;
    /// `None` for a node with nothing left to lose. A node counts as silent
    /// whether its stream is still open (a hung worker) or already broken and
    /// not reopened in time; a node that is down but still holds tasks (as
    /// after a manager restart) too.
    fn liveness_deadline(&self, i: usize) -> Option<Instant> {
        let id = self.state.node_id(i);
        let record = self.state.record(i);
        let holds = self.sessions.connected(id)
            || !matches!(record.node.state(), NodeState::Down | NodeState::Removed)
            || !record.tasks.is_empty();
        if holds {
            self.sessions.deadline(id)
        } else {
            None
        }
    }

    /// The earliest moment [`Engine::tick`] has something to do: a node's
    /// liveness deadline or a restart's end of backoff. `None` if nothing is
    /// waiting.
    pub fn next_due(&self) -> Option<Instant> {
        (0..self.state.node_count())
            .filter_map(|i| self.liveness_deadline(i))
            .chain(self.backoffs.next_due())
            .chain(self.timers.first().map(|(due, _)| *due))
            .min()
    }

    /// A node stopped answering: it is down, and its session (if still open)
    /// ends. [`Engine::lose_tasks`] follows.
    fn node_down(&mut self, i: usize) {
        let why = "no heartbeat within the deadline";
        let node = self.state.node_id(i);
        self.sessions.end(node, &format!("{why}; register again"));
        self.logs_node_gone(node, &format!("is down: {why}"));
        self.set_node_state(i, NodeState::Down, why);
    }

    /// The tasks of a down node are lost and placed again elsewhere as new
    /// attempts. If its worker comes back, the full assignment set it gets no
    /// longer lists them, so it stops them.
    fn lose_tasks(&mut self, i: usize, now: Now) {
        let name = self.state.node_name(i).to_owned();
        for id in self.state.tasks_on(i) {
            if let Some(task) = self.state.task_mut(id) {
                task.message = format!("node {name} is down");
            }
            self.finish(id, TaskState::Lost, now);
        }
    }

    /// Ends every session, event stream and log stream, so a graceful server shutdown
    /// does not wait on streams that would otherwise never end. Workers see
    /// their session close and reconnect (to this manager's successor).
    pub fn close_streams(&mut self) {
        self.closing.send_replace(true);
        self.sessions.close_all();
        self.logs
            .close_all("the manager is shutting down; ask again once it is back");
        self.state.close_events();
    }
}
