//! The API's task operations: admit new tasks, stop one, read them.

use std::time::SystemTime;

use orch::task_state;
use orch::time::timestamp;
use orch::v1::{DesiredState, Task, TaskSpec, TaskState};
use orch::validate;
use uuid::Uuid;

use super::{Engine, stop_of};
use crate::Error;
use crate::persist::Durable;

impl Engine {
    /// Builds new tasks from validated specs, created at `now`. They are not
    /// part of the state until [`Engine::admit`]; the caller makes them
    /// durable in between.
    pub fn new_tasks(specs: Vec<TaskSpec>, now: SystemTime) -> Vec<Task> {
        let created = timestamp(now);
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

    /// The engine's clock (a copy: it reads the same time).
    pub fn clock(&self) -> crate::clock::Clock {
        self.clock
    }

    /// Adds durable new tasks and schedules them. Returns them as they are now.
    pub fn admit(&mut self, tasks: Vec<Task>) -> Vec<Task> {
        self.begin();
        let ids: Vec<Uuid> = tasks
            .into_iter()
            .map(|task| {
                let id = self.state.insert_task(task);
                self.place(id);
                id
            })
            .collect();
        self.flush();
        ids.iter()
            .filter_map(|&id| self.state.task(id).cloned())
            .collect()
    }

    /// Asks for a task to stop. Returns the task and a [`Durable`] for the
    /// change of its desired state.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown task.
    pub fn stop(&mut self, id: Uuid) -> Result<(Task, Durable), Error> {
        let now = self.begin();
        let task = self
            .state
            .task_mut(id)
            .ok_or_else(|| Error::NotFound(format!("task {id} not found")))?;
        if task.desired_state() == DesiredState::Stopped || task_state::is_terminal(task.state()) {
            // Nothing to write, but the stop it answers may not be durable yet.
            let task = task.clone();
            return Ok((task, self.committer.queue_durable(Vec::new())));
        }
        self.stop_now(id, "", now);
        let task = self.state.task(id).cloned().unwrap_or_default();
        Ok((task, self.flush_durable()))
    }

    /// Stops a task that should run: its desired state becomes stopped; a
    /// pending one ends at once, a placed one is told to stop. `why`, if not
    /// empty, becomes its message. A task that is not to run is left alone.
    pub(super) fn stop_now(&mut self, id: Uuid, why: &str, now: crate::clock::Now) {
        let Some(task) = self.state.task_mut(id) else {
            return;
        };
        if task.desired_state() == DesiredState::Stopped || task_state::is_terminal(task.state()) {
            if task.desired_state() == DesiredState::Running {
                // Ended for good: it only stops counting as wanted.
                task.set_desired_state(DesiredState::Stopped);
                self.state.task_changed(id);
            }
            return;
        }
        task.set_desired_state(DesiredState::Stopped);
        if !why.is_empty() {
            task.message = format!("stopping: {why}");
        }
        if task.state() == TaskState::Pending {
            if why.is_empty() {
                task.message = "stopped before it was placed".into();
            }
            self.finish(id, TaskState::Stopped, now);
        } else {
            let grace = validate::stop_grace(task.spec.as_ref().unwrap_or(&TaskSpec::default()));
            let stop = stop_of(&task.id, task.attempt, grace);
            if let Some(i) = self.state.task(id).and_then(|t| self.state.node_of(t)) {
                self.push(self.state.node_id(i), vec![], vec![stop]);
            }
            // A task moving off a drained node stops there too.
            self.end_handoff(id);
            self.state.task_changed(id);
        }
    }

    /// One task.
    pub fn task(&self, id: Uuid) -> Option<&Task> {
        self.state.task(id)
    }

    /// Tasks after `after` (exclusive) in submission order that pass `keep`,
    /// at most `limit` and no more once they make `max_bytes` encoded
    /// (`limits::page`); and whether more follow.
    pub fn list_tasks(
        &self,
        after: Option<Uuid>,
        limit: usize,
        max_bytes: usize,
        keep: impl Fn(&Task) -> bool,
    ) -> (Vec<Task>, bool) {
        crate::limits::page(
            self.state.tasks_after(after).filter(|t| keep(t)),
            limit,
            max_bytes,
        )
    }

    /// Ends a drain handoff: the old attempt is told to stop.
    pub(super) fn end_handoff(&mut self, id: Uuid) {
        if let Some(h) = self.handoffs.end(id) {
            self.push(
                h.node,
                vec![],
                vec![stop_of(&id.to_string(), h.attempt, h.grace)],
            );
        }
    }
}
