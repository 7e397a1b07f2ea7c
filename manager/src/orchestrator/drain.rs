//! The drain reconciler: which tasks leave a drained node, and the handoffs
//! between the attempt that leaves and the one that replaces it.
//!
//! A drained node's tasks move as new attempts. Where the new attempt can be
//! placed elsewhere, the old container keeps running until the new one runs
//! (or ends), so a drain never leaves a task with no copy running while there
//! is room for one; [`Handoffs`] remembers each old attempt until then. Where
//! it cannot be placed, the old attempt is stopped at once and the task waits,
//! pending. [`moves`] decides; the engine places and stops.

use std::collections::HashMap;
use std::time::Duration;

use orch::v1::{DesiredState, Task};
use orch::validate;
use uuid::Uuid;

/// One task leaving a drained node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The task.
    pub task: Uuid,
    /// Its attempt on the drained node, which is to stop once replaced.
    pub attempt: u64,
    /// The stop grace period of that attempt.
    pub grace: Duration,
}

/// The tasks of a drained node that move: those that should still run, in
/// the order given. A task being stopped is left to end where it is, and so
/// is a task bound to the node (a global service's): it cannot move, and its
/// service's reconciler stops it.
pub fn moves<'a>(tasks: impl IntoIterator<Item = (Uuid, &'a Task)>) -> Vec<Move> {
    tasks
        .into_iter()
        .filter(|(_, t)| t.desired_state() == DesiredState::Running && t.pinned_node_id.is_empty())
        .map(|(id, t)| Move {
            task: id,
            attempt: t.attempt,
            grace: t
                .spec
                .as_ref()
                .map_or(validate::DEFAULT_STOP_GRACE, validate::stop_grace),
        })
        .collect()
}

/// An old attempt still running on a drained node while its replacement starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff {
    /// The drained node.
    pub node: Uuid,
    /// The old attempt.
    pub attempt: u64,
    /// Its stop grace period.
    pub grace: Duration,
}

/// The handoffs under way, by task.
#[derive(Debug, Default)]
pub struct Handoffs(HashMap<Uuid, Handoff>);

impl Handoffs {
    /// Remembers that `mv`'s old attempt on `node` runs until its task's new attempt does.
    pub fn begin(&mut self, node: Uuid, mv: Move) {
        self.0.insert(
            mv.task,
            Handoff {
                node,
                attempt: mv.attempt,
                grace: mv.grace,
            },
        );
    }

    /// The task's new attempt runs, ended or was stopped: the old attempt,
    /// if one is still handed off, is to stop now.
    pub fn end(&mut self, task: Uuid) -> Option<Handoff> {
        self.0.remove(&task)
    }
}

#[cfg(test)]
mod tests {
    use orch::v1::TaskSpec;

    use super::*;

    fn task(attempt: u64, desired: DesiredState, grace: Option<u64>) -> Task {
        Task {
            attempt,
            desired_state: desired as i32,
            spec: Some(TaskSpec {
                stop_grace_period: grace.map(|s| orch::time::duration(Duration::from_secs(s))),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn tasks_that_should_run_move_with_their_attempt_and_grace_and_stopping_or_bound_ones_stay() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let ta = task(3, DesiredState::Running, Some(30));
        let tb = task(1, DesiredState::Stopped, None);
        let tc = task(1, DesiredState::Running, None);
        let pinned = Task {
            pinned_node_id: Uuid::now_v7().to_string(),
            ..task(1, DesiredState::Running, None)
        };
        let got = moves([(a, &ta), (b, &tb), (c, &tc), (Uuid::now_v7(), &pinned)]);
        assert_eq!(
            got,
            vec![
                Move {
                    task: a,
                    attempt: 3,
                    grace: Duration::from_secs(30)
                },
                Move {
                    task: c,
                    attempt: 1,
                    grace: validate::DEFAULT_STOP_GRACE
                },
            ]
        );
    }

    #[test]
    fn a_handoff_ends_once() {
        let mut h = Handoffs::default();
        let node = Uuid::now_v7();
        let mv = Move {
            task: Uuid::now_v7(),
            attempt: 2,
            grace: Duration::from_secs(1),
        };
        h.begin(node, mv);
        assert_eq!(
            h.end(mv.task),
            Some(Handoff {
                node,
                attempt: 2,
                grace: Duration::from_secs(1)
            })
        );
        assert_eq!(h.end(mv.task), None);
    }
}
