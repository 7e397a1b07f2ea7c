//! The orchestrator: one reconciler per concern, each a pure decision over
//! plain data and a time handed in, returning what to do; the engine applies
//! it. None of them reads a clock, takes a lock, awaits or touches the store,
//! the sessions or the scheduler.
//!
//! - [`restart`]: whether an ended or unhealthy attempt gets a new one, and
//!   after what backoff;
//! - [`drain`]: which tasks leave a drained node, and the handoffs that keep
//!   the old attempt running until the new one runs;
//! - [`replicated`], [`global`], [`batch`]: which tasks a service should
//!   have, slot by slot (Nomad's reconcile: buckets of tasks to create and
//!   to stop);
//! - [`update`]: a rolling update's next step, and whether it completed,
//!   failed, paused or rolls back.
//!
//! The service reconcilers see a service's tasks grouped by slot, as
//! [`SlotTask`]s: a slot number for replicated and batch services, a node for
//! a global one ([`SlotKey`]). A slot is *occupied* while it has a task that
//! should run or whose container may still be alive; a reconciler fills only
//! slots that are not, so an old task and its replacement never share a slot
//! unless a start-first update asks for it.

pub mod batch;
pub mod drain;
pub mod global;
pub mod replicated;
pub mod restart;
pub mod update;

use std::collections::BTreeMap;
use std::time::SystemTime;

use orch::task_state;
use orch::v1::{HealthState, TaskState};
use uuid::Uuid;

/// Where a service task belongs: a numbered slot, or a node (global services).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKey {
    /// Slot 1, 2, ... of a replicated or batch service.
    Slot(u32),
    /// The node of a global service's task.
    Node(Uuid),
}

/// A service's task as the reconcilers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotTask {
    /// The task.
    pub id: Uuid,
    /// The service version it runs.
    pub version: u64,
    /// Whether it should run (desired state running); false once it is
    /// being stopped.
    pub wanted: bool,
    /// Its current attempt's observed state.
    pub state: TaskState,
    /// Its current attempt's health.
    pub health: HealthState,
    /// Whether its spec has a health check.
    pub checked: bool,
    /// When its current attempt started running.
    pub started_at: Option<SystemTime>,
    /// How many times it was restarted (not counting moves after a lost node).
    pub restarts: u32,
    /// Its message, for people: why it failed.
    pub message: String,
}

impl SlotTask {
    /// Whether its container may be alive (placed, starting or running).
    pub fn alive(&self) -> bool {
        task_state::is_active(self.state)
    }

    /// Whether it holds its slot: it should run, or its container may still
    /// be alive. A slot is filled again only once no task holds it.
    pub fn occupies(&self) -> bool {
        self.wanted || self.alive()
    }

    /// Whether it should run but ended with no restart coming (its restart
    /// policy gave up): it keeps its slot, ended.
    pub fn dead(&self) -> bool {
        self.wanted && task_state::is_terminal(self.state)
    }

    /// Whether it runs and, if it has a health check, is healthy.
    pub fn up(&self) -> bool {
        self.state == TaskState::Running && (!self.checked || self.health == HealthState::Healthy)
    }
}

/// A service's tasks by slot.
pub type Slots = BTreeMap<SlotKey, Vec<SlotTask>>;

/// Whether a slot has a task that holds it.
pub fn occupied(tasks: &[SlotTask]) -> bool {
    tasks.iter().any(SlotTask::occupies)
}

/// The ids of a slot's tasks that should run, to stop.
pub fn wanted_ids(tasks: &[SlotTask]) -> impl Iterator<Item = Uuid> + '_ {
    tasks.iter().filter(|t| t.wanted).map(|t| t.id)
}

/// What a service reconciler decided: tasks to create (at the service's
/// version, in these slots) and tasks to stop.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Slots that get a new task.
    pub create: Vec<SlotKey>,
    /// Tasks to stop.
    pub stop: Vec<Uuid>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.stop.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Slots built from a few words, for the reconcilers' tests.

    use super::*;

    /// A task of `version` in `state`: "run" (running, wanted), "up"
    /// (running and healthy, with a check), "sick" (running, unhealthy),
    /// "pending", "stopping" (running, not wanted), "dead" (failed, wanted),
    /// "done" (completed, wanted), "gone" (stopped, not wanted).
    pub fn task(n: u128, version: u64, word: &str) -> SlotTask {
        let (state, wanted, health) = match word {
            "run" => (TaskState::Running, true, HealthState::Unspecified),
            "up" => (TaskState::Running, true, HealthState::Healthy),
            "sick" => (TaskState::Running, true, HealthState::Unhealthy),
            "starting" => (TaskState::Starting, true, HealthState::Unspecified),
            "pending" => (TaskState::Pending, true, HealthState::Unspecified),
            "stopping" => (TaskState::Running, false, HealthState::Unspecified),
            "dead" => (TaskState::Failed, true, HealthState::Unspecified),
            "done" => (TaskState::Completed, true, HealthState::Unspecified),
            "gone" => (TaskState::Stopped, false, HealthState::Unspecified),
            other => panic!("unknown task word {other}"),
        };
        SlotTask {
            id: Uuid::from_u128(n),
            version,
            wanted,
            state,
            health,
            checked: matches!(word, "up" | "sick"),
            started_at: (state == TaskState::Running).then_some(SystemTime::UNIX_EPOCH),
            restarts: 0,
            message: String::new(),
        }
    }

    /// Slots from `(slot, tasks)` pairs.
    pub fn slots(pairs: Vec<(u32, Vec<SlotTask>)>) -> Slots {
        pairs
            .into_iter()
            .map(|(slot, tasks)| (SlotKey::Slot(slot), tasks))
            .collect()
    }

    /// Task ids from numbers.
    pub fn ids(ns: &[u128]) -> Vec<Uuid> {
        ns.iter().map(|&n| Uuid::from_u128(n)).collect()
    }
}
