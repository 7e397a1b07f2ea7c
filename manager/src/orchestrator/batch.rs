//! The batch reconciler: run tasks until `completions` of them exit with
//! code 0, at most `parallelism` at once.
//!
//! Slots `1..=completions` each stand for one completion. A slot is done
//! once its task completed, running while its task should run and has not
//! ended (including one waiting out a restart's backoff: failures are retried
//! by the restart reconciler, under the task's restart policy), and failed
//! when its task failed with no restart left. Free slots get a task, lowest
//! first, while fewer than `parallelism` run. One failed slot fails the job:
//! its other tasks are stopped.

use orch::v1::{JobState, TaskState};

use super::{Plan, SlotKey, SlotTask, Slots};

/// What a batch service needs now, and how the job stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchPlan {
    /// Tasks to create and to stop.
    pub plan: Plan,
    /// The job's state.
    pub job: JobState,
    /// Slots done.
    pub completed: u32,
    /// Slots failed.
    pub failed: u32,
    /// Tasks running (or about to) after the plan.
    pub active: u32,
}

fn is_done(tasks: &[SlotTask]) -> bool {
    tasks.iter().any(|t| t.state == TaskState::Completed)
}

fn is_failed(tasks: &[SlotTask]) -> bool {
    tasks
        .iter()
        .any(|t| t.dead() && t.state != TaskState::Completed)
}

fn is_running(tasks: &[SlotTask]) -> bool {
    tasks.iter().any(|t| t.occupies() && !t.dead())
}

/// What a batch service of `completions` and `parallelism` needs now.
pub fn reconcile(completions: u32, parallelism: u32, slots: &Slots) -> BatchPlan {
    let tasks_of = |slot: u32| {
        slots
            .get(&SlotKey::Slot(slot))
            .map_or(&[][..], Vec::as_slice)
    };
    let mut out = BatchPlan::default();
    let mut free = Vec::new();
    for slot in 1..=completions {
        let tasks = tasks_of(slot);
        if is_done(tasks) {
            out.completed += 1;
        } else if is_failed(tasks) {
            out.failed += 1;
        } else if is_running(tasks) {
            out.active += 1;
        } else {
            free.push(slot);
        }
    }
    if out.failed > 0 {
        out.job = JobState::Failed;
        for tasks in slots.values() {
            out.plan
                .stop
                .extend(tasks.iter().filter(|t| t.wanted && !t.dead()).map(|t| t.id));
        }
        out.active = 0;
        return out;
    }
    if out.completed >= completions {
        out.job = JobState::Completed;
        return out;
    }
    out.job = JobState::Running;
    let room = parallelism.saturating_sub(out.active) as usize;
    for slot in free.into_iter().take(room) {
        out.plan.create.push(SlotKey::Slot(slot));
        out.active += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::{ids, slots, task};
    use super::*;

    /// `reconcile` as (slots created, tasks stopped, job, completed, active).
    fn check(
        (completions, parallelism): (u32, u32),
        given: Slots,
        create: &[u32],
        stop: &[u128],
        job: JobState,
        (completed, active): (u32, u32),
    ) {
        let out = reconcile(completions, parallelism, &given);
        let created: Vec<SlotKey> = create.iter().map(|&n| SlotKey::Slot(n)).collect();
        assert_eq!(
            (
                out.plan.create,
                out.plan.stop,
                out.job,
                out.completed,
                out.active
            ),
            (created, ids(stop), job, completed, active)
        );
    }

    use JobState::*;

    #[test]
    fn a_new_job_starts_parallelism_tasks() {
        check((5, 2), slots(vec![]), &[1, 2], &[], Running, (0, 2));
        check((1, 4), slots(vec![]), &[1], &[], Running, (0, 1));
    }

    #[test]
    fn a_completion_frees_room_for_the_next_slot() {
        let given = slots(vec![
            (1, vec![task(1, 1, "done")]),
            (2, vec![task(2, 1, "run")]),
        ]);
        check((5, 2), given, &[3], &[], Running, (1, 2));
    }

    #[test]
    fn a_task_waiting_to_retry_still_counts_as_running() {
        let given = slots(vec![
            (1, vec![task(1, 1, "pending")]),
            (2, vec![task(2, 1, "run")]),
        ]);
        check((5, 2), given, &[], &[], Running, (0, 2));
    }

    #[test]
    fn a_stopped_slot_is_run_again() {
        let given = slots(vec![
            (1, vec![task(1, 1, "gone")]),
            (2, vec![task(2, 1, "done")]),
        ]);
        check((2, 2), given, &[1], &[], Running, (1, 1));
    }

    #[test]
    fn the_job_completes_with_its_last_completion() {
        let given = slots(vec![
            (1, vec![task(1, 1, "done")]),
            (2, vec![task(2, 1, "done")]),
        ]);
        check((2, 2), given, &[], &[], Completed, (2, 0));
    }

    #[test]
    fn a_failure_with_no_restart_left_fails_the_job_and_stops_the_rest() {
        let given = slots(vec![
            (1, vec![task(1, 1, "done")]),
            (2, vec![task(2, 1, "dead")]),
            (3, vec![task(3, 1, "run")]),
        ]);
        check((5, 3), given, &[], &[3], Failed, (1, 0));
    }
}
