//! The engine's side of `Logs`: which attempt of a task, on which node, and
//! asking that node's worker over its session. The registry of requests in
//! flight ([`LogRequests`]) lives in the engine, so that a request is sent
//! only to a node whose session is open, and every request of a node ends
//! (naming it) in the operation that closes its session.

use std::time::Duration;

use orch::v1::{LogsResponse, Task, WorkerLogsRequest};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Engine;
use crate::Error;
use crate::dispatcher::sessions::Push;
use crate::logs::LogReceiver;

/// A request sent to a worker, and what the client's stream needs of it.
#[derive(Debug)]
pub struct OpenLogs {
    /// The worker's chunks, and why they may be cut off.
    pub rx: LogReceiver,
    /// The task fields every response of this stream carries.
    pub header: LogsResponse,
    /// The node, for errors: "worker-2 (id ...)".
    pub node: String,
}

impl Engine {
    /// The node where `attempt` of a task ran or runs (0: the current one,
    /// or the last placed one while the task waits for its next), as an id,
    /// from the task and its kept attempts; `None` if the task is unknown or
    /// that attempt was never placed (or is older than the kept history).
    pub fn attempt_node(&self, task_id: Uuid, attempt: u64) -> Option<String> {
        let task = self.state.task(task_id)?;
        let wanted = self.log_attempt(task_id, task, attempt);
        if wanted == task.attempt && !task.node_id.is_empty() {
            return Some(task.node_id.clone());
        }
        self.state
            .attempts(task_id)
            .find(|a| a.attempt == wanted && !a.node_id.is_empty())
            .map(|a| a.node_id.clone())
    }

    /// The attempt `asked` (0: the current one if it was placed, or else
    /// the last one that was).
    fn log_attempt(&self, task_id: Uuid, task: &Task, asked: u64) -> u64 {
        if asked != 0 || !task.node_id.is_empty() {
            return if asked == 0 { task.attempt } else { asked };
        }
        self.state
            .attempts(task_id)
            .filter(|a| !a.node_id.is_empty())
            .map(|a| a.attempt)
            .max()
            .unwrap_or(task.attempt)
    }

    /// Asks the worker of the node of `ask.attempt` of `task_id` (0 for the
    /// current one) for its output, with the rest of `ask` as it is.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown task or an attempt never placed;
    /// UNAVAILABLE, naming the node, if its worker is not connected.
    pub fn open_logs(
        &mut self,
        task_id: Uuid,
        mut ask: WorkerLogsRequest,
    ) -> Result<OpenLogs, Error> {
        let task = self
            .state
            .task(task_id)
            .ok_or_else(|| Error::NotFound(format!("task {task_id} not found")))?;
        if ask.attempt > task.attempt {
            return Err(Error::NotFound(format!(
                "attempt: task {task_id} has had {} attempts, not {}",
                task.attempt, ask.attempt
            )));
        }
        let attempt = self.log_attempt(task_id, task, ask.attempt);
        let header = LogsResponse {
            attempt,
            ..header_of(task)
        };
        let node = self
            .attempt_node(task_id, attempt)
            .and_then(|n| Uuid::parse_str(&n).ok())
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "attempt {attempt} of task {task_id} has not been placed on a node yet: it has no output"
                ))
            })?;
        let i = self.state.node_index(node).ok_or_else(|| {
            Error::NotFound(format!("node {node} of task {task_id} is no longer known"))
        })?;
        let name = format!("{} (id {node})", self.state.node_name(i));
        if !self.sessions.connected(node) {
            return Err(Error::Unavailable(self.unreachable(node, &name)));
        }
        let rx = self.logs.open(node);
        ask.request_id = rx.id.to_string();
        ask.task_id = task_id.to_string();
        ask.attempt = attempt;
        if !self.sessions.send(node, Push::Logs(ask)) {
            self.logs.remove(rx.id);
            return Err(Error::Unavailable(format!(
                "node {name} cannot take the request now (its session is full or closing); retry"
            )));
        }
        Ok(OpenLogs {
            rx,
            header,
            node: name,
        })
    }

    /// The task fields of a `LogsResponse` about `task_id` (its current
    /// attempt); only the id if the task is unknown.
    pub fn log_header(&self, task_id: Uuid) -> LogsResponse {
        match self.state.task(task_id) {
            Some(task) => header_of(task),
            None => LogsResponse {
                task_id: task_id.to_string(),
                ..Default::default()
            },
        }
    }

    /// Why node `name` cannot be asked: down, or disconnected, since when.
    fn unreachable(&self, node: Uuid, name: &str) -> String {
        let ago = self
            .sessions
            .last_seen(node)
            .map(|seen| self.clock.now().at.saturating_duration_since(seen));
        let since = match ago {
            Some(ago) => format!("its last heartbeat was {} ago", seconds(ago)),
            None => "it has not connected since the manager started".to_owned(),
        };
        format!("node {name} is down: {since}")
    }

    /// The channel a worker's `SendLogs` for request `id` feeds, once; see
    /// [`crate::logs::LogRequests::claim`].
    pub fn claim_logs(
        &mut self,
        id: Uuid,
        caller: Option<Uuid>,
    ) -> Option<mpsc::Sender<orch::v1::LogsChunk>> {
        self.logs.claim(id, caller)
    }

    /// A client's stream of request `id` ended. With `cancel` (the client
    /// went away before the worker was done), the worker is told to stop.
    pub fn end_logs(&mut self, id: Uuid, cancel: bool) {
        if let Some(node) = self.logs.remove(id)
            && cancel
        {
            self.sessions.send(node, Push::CancelLogs(id.to_string()));
        }
    }

    /// Every log request to `node` ends, saying `why` with the node named.
    pub(super) fn logs_node_gone(&mut self, node: Uuid, why: &str) {
        if self.logs.is_empty() {
            return;
        }
        let name = self
            .state
            .node_index(node)
            .map_or_else(String::new, |i| self.state.node_name(i).to_owned());
        self.logs
            .node_gone(node, &format!("node {name} (id {node}) {why}"));
    }

    /// The tasks of service `name` whose output `Logs` shows: in each slot
    /// (or node, for a global service), the newest task that should run;
    /// in a service none of whose tasks should run (a finished batch), the
    /// newest task of each slot.
    ///
    /// # Errors
    /// NOT_FOUND for an unknown service.
    pub fn log_tasks(&self, name: &str) -> Result<Vec<Uuid>, Error> {
        let entry = self
            .state
            .service(name)
            .ok_or_else(|| Error::NotFound(format!("service {name} not found")))?;
        let tasks: Vec<&Task> = entry
            .tasks
            .iter()
            .filter_map(|id| self.state.task(*id))
            .collect();
        let running = tasks
            .iter()
            .any(|t| t.desired_state() == orch::v1::DesiredState::Running);
        let mut newest: std::collections::BTreeMap<(u32, String), Uuid> = Default::default();
        for t in tasks {
            if running && t.desired_state() != orch::v1::DesiredState::Running {
                continue;
            }
            let Ok(id) = Uuid::parse_str(&t.id) else {
                continue;
            };
            // Ids are time-ordered (v7): the greatest is the newest.
            let slot = newest
                .entry((t.slot, t.pinned_node_id.clone()))
                .or_insert(id);
            *slot = (*slot).max(id);
        }
        Ok(newest.into_values().collect())
    }
}

/// The task fields of a `LogsResponse` about `task`'s current attempt.
fn header_of(task: &Task) -> LogsResponse {
    LogsResponse {
        task_id: task.id.clone(),
        attempt: task.attempt,
        service: task.service.clone(),
        slot: task.slot,
        name: crate::state::task_name(task),
        pinned_node_id: task.pinned_node_id.clone(),
        ..Default::default()
    }
}

/// A duration for people, in whole seconds (at least 1).
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}
