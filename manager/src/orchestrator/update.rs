//! The update reconciler: a rolling update's next step.
//!
//! A rollout moves every slot in scope (`1..=replicas`, or the eligible nodes
//! of a global service) to the rollout's `to_version`. Per slot:
//! - **done**: its task of the new version is up (running, and healthy if it
//!   has a health check) and has been for the update's `monitor`;
//! - **in flight**: its new task is not done yet, or the slot is empty or its
//!   old task is still stopping (the replicated or global reconciler fills it
//!   with a new task once nothing holds it);
//! - **to do**: it holds only tasks of other versions.
//!
//! While fewer than `parallelism` slots are in flight (and `delay` has
//! passed since the last slot was done), the next slots to do start: with
//! `stop-first` their old tasks are stopped (and the slot refilled once they
//! are gone), with `start-first` a new task is created beside the old one,
//! which is stopped once the new one is up. So a start-first update never
//! runs fewer tasks than slots.
//!
//! A new task that was restarted, turned unhealthy or ended for good is a
//! failure. When failures exceed `max_failure_ratio` of the new tasks, the
//! `failure_action` is taken: `pause` stops starting slots, `rollback` turns
//! the rollout around (the engine makes the old version the service's again
//! and the same steps replace the new tasks), `continue` counts the failed
//! slot as done. A rollback that fails, or a failure with no earlier version
//! to go back to, pauses. Everything is derived from the tasks and the
//! stored rollout, so a manager restarted mid-rollout carries on.

use std::time::SystemTime;

use super::{Plan, SlotKey, SlotTask, Slots};
use orch::service::UpdateSettings;
use orch::time::timestamp;
use orch::v1::{FailureAction, HealthState, Rollout, RolloutState, UpdateOrder};

/// The rollout's next step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// Tasks to create (at the rollout's `to_version`) and to stop.
    pub plan: Plan,
    /// The rollout after this step (the same record if nothing changed).
    pub rollout: Rollout,
    /// True when the rollout turned into a rollback: `rollout.to_version`
    /// is now the old version, which the service must be switched back to.
    pub rollback: bool,
    /// When to look again if nothing else happens: a new task's monitor
    /// ends, or the delay before the next slot passes.
    pub next_check: Option<SystemTime>,
}

/// Whether a rollout in `state` still has work to do.
pub fn is_active(state: RolloutState) -> bool {
    matches!(state, RolloutState::RollingOut | RolloutState::RollingBack)
}

/// How a slot stands in the rollout.
enum Standing<'a> {
    /// Its new task counts.
    Done(Option<SystemTime>),
    /// Its new task is not done yet, or it waits to be filled.
    InFlight,
    /// Only old tasks hold it; these are the ones that should run.
    Todo(Vec<&'a SlotTask>),
}

/// Whether a task of the new version failed: restarted, unhealthy, or ended
/// with no restart coming.
fn failed(task: &SlotTask) -> bool {
    task.restarts > 0 || task.health == HealthState::Unhealthy || task.dead()
}

/// The next step of `rollout` over the slots in scope, `desired`.
pub fn reconcile(
    settings: &UpdateSettings,
    rollout: &Rollout,
    slots: &Slots,
    desired: &[SlotKey],
    now: SystemTime,
) -> Step {
    let mut step = Step {
        rollout: rollout.clone(),
        ..Step::default()
    };
    let state = rollout.state();
    if !is_active(state) {
        return step;
    }
    let rolling_back = state == RolloutState::RollingBack;
    let target = rollout.to_version;
    let cont = settings.failure_action == FailureAction::Continue && !rolling_back;

    let (mut done, mut in_flight, mut with_new, mut failures) = (0u32, 0u32, 0u32, 0u32);
    let mut first_failure = String::new();
    let mut waiting = String::new();
    let mut last_done: Option<SystemTime> = None;
    let mut todo = Vec::new();
    for key in desired {
        let tasks = slots.get(key).map_or(&[][..], Vec::as_slice);
        let standing = match tasks.iter().find(|t| t.version == target && t.wanted) {
            Some(new) => {
                with_new += 1;
                if new.state == orch::v1::TaskState::Pending
                    && waiting.is_empty()
                    && !new.message.is_empty()
                {
                    waiting = new.message.clone();
                }
                let bad = failed(new);
                if bad {
                    failures += 1;
                    if first_failure.is_empty() {
                        first_failure = new.message.clone();
                    }
                }
                if new.up() {
                    // The new task runs: an old one beside it (start-first)
                    // makes way.
                    step.plan.stop.extend(
                        tasks
                            .iter()
                            .filter(|t| t.version != target && t.wanted)
                            .map(|t| t.id),
                    );
                }
                let done_at = new.started_at.map(|s| s + settings.monitor);
                if (bad && cont) || (!bad && new.up() && done_at.is_some_and(|d| d <= now)) {
                    Standing::Done(done_at)
                } else {
                    if !bad && new.up() {
                        step.next_check = earliest(step.next_check, done_at);
                    }
                    Standing::InFlight
                }
            }
            None => {
                let old: Vec<&SlotTask> = tasks
                    .iter()
                    .filter(|t| t.version != target && t.wanted)
                    .collect();
                if old.is_empty() {
                    Standing::InFlight
                } else {
                    Standing::Todo(old)
                }
            }
        };
        match standing {
            Standing::Done(at) => {
                done += 1;
                last_done = latest(last_done, at);
            }
            Standing::InFlight => in_flight += 1,
            Standing::Todo(old) => todo.push((*key, old)),
        }
    }
    let total = u32::try_from(desired.len()).unwrap_or(u32::MAX);
    let r = &mut step.rollout;
    r.updated = done;
    r.failed = failures;
    r.total = total;
    r.waiting = waiting;

    let too_many = failures > 0
        && !cont
        && f64::from(failures) / f64::from(with_new.max(1)) > settings.max_failure_ratio;
    if too_many {
        let reason = format!("{failures} of {with_new} new tasks failed: {first_failure}");
        if rolling_back || settings.failure_action == FailureAction::Pause || r.from_version == 0 {
            r.set_state(RolloutState::Paused);
            r.finished_at = Some(timestamp(now));
            r.message = if rolling_back {
                format!("rollback to version {target} paused")
            } else if r.from_version == 0 {
                format!("version {target} paused: there is no earlier version to roll back to")
            } else {
                format!("version {target} paused")
            };
            r.reason = reason;
            r.waiting.clear();
            step.plan = Plan::default();
            step.next_check = None;
        } else {
            let old = r.from_version;
            r.set_state(RolloutState::RollingBack);
            r.from_version = target;
            r.to_version = old;
            r.started_at = Some(timestamp(now));
            r.finished_at = None;
            r.updated = 0;
            r.failed = 0;
            r.message = format!("rolling back to version {old}");
            r.reason = reason;
            step.rollback = true;
            step.plan = Plan::default();
            step.next_check = None;
        }
        return step;
    }

    if todo.is_empty() && in_flight == 0 {
        r.set_state(if rolling_back {
            RolloutState::RolledBack
        } else {
            RolloutState::Completed
        });
        r.finished_at = Some(timestamp(now));
        r.waiting.clear();
        r.message = if rolling_back {
            format!("rolled back to version {target}")
        } else {
            format!("version {target} runs in all {total} slots")
        };
        step.next_check = None;
        return step;
    }

    let verb = if rolling_back {
        "rolling back to"
    } else {
        "rolling out"
    };
    r.message = format!("{verb} version {target}: {done} of {total} updated");
    let room = settings.parallelism.saturating_sub(in_flight) as usize;
    let not_before = if settings.delay.is_zero() {
        None
    } else {
        last_done.map(|d| d + settings.delay)
    };
    if room > 0 && !todo.is_empty() {
        match not_before {
            Some(t) if t > now => step.next_check = earliest(step.next_check, Some(t)),
            _ => {
                for (key, old) in todo.into_iter().take(room) {
                    match settings.order {
                        UpdateOrder::StartFirst => step.plan.create.push(key),
                        _ => step.plan.stop.extend(old.iter().map(|t| t.id)),
                    }
                }
            }
        }
    }
    step
}

fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn latest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The rollout that a change of template to `to` (from `from`, 0 for a new
/// service) begins at `now`, over `total` slots.
pub fn begin(from: u64, to: u64, total: u32, now: SystemTime) -> Rollout {
    let mut r = Rollout {
        from_version: from,
        to_version: to,
        started_at: Some(timestamp(now)),
        total,
        message: format!("rolling out version {to}: 0 of {total} updated"),
        ..Rollout::default()
    };
    r.set_state(RolloutState::RollingOut);
    r
}

/// The rollout that a rollback asked for (from `from` back to `to`) begins.
pub fn begin_rollback(from: u64, to: u64, total: u32, now: SystemTime) -> Rollout {
    let mut r = begin(from, to, total, now);
    r.set_state(RolloutState::RollingBack);
    r.message = format!("rolling back to version {to}: 0 of {total} updated");
    r.reason = format!("rollback to version {to} requested");
    r
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use uuid::Uuid;

    use super::super::testing::{ids as uuids, slots, task};
    use super::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn secs(s: u64) -> SystemTime {
        T0 + Duration::from_secs(s)
    }

    fn settings(order: UpdateOrder, parallelism: u32) -> UpdateSettings {
        UpdateSettings {
            parallelism,
            order,
            monitor: Duration::from_secs(5),
            ..UpdateSettings::default()
        }
    }

    fn rolling(from: u64, to: u64) -> Rollout {
        begin(from, to, 3, T0)
    }

    fn keys(n: u32) -> Vec<SlotKey> {
        (1..=n).map(SlotKey::Slot).collect()
    }

    /// A task of `version` running since `since` seconds.
    fn since(n: u128, version: u64, word: &str, since: u64) -> SlotTask {
        SlotTask {
            started_at: Some(secs(since)),
            ..task(n, version, word)
        }
    }

    /// The step's buckets and state as plain values.
    fn summary(step: &Step) -> (Vec<SlotKey>, Vec<Uuid>, RolloutState, u32, u32) {
        (
            step.plan.create.clone(),
            step.plan.stop.clone(),
            step.rollout.state(),
            step.rollout.updated,
            step.rollout.failed,
        )
    }

    use RolloutState::*;

    #[test]
    fn stop_first_stops_parallelism_old_tasks_at_a_time() {
        let given = slots(vec![
            (1, vec![task(1, 1, "run")]),
            (2, vec![task(2, 1, "run")]),
            (3, vec![task(3, 1, "run")]),
        ]);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 2),
            &rolling(1, 2),
            &given,
            &keys(3),
            secs(10),
        );
        assert_eq!(summary(&step), (vec![], uuids(&[1, 2]), RollingOut, 0, 0));
        assert!(!step.rollback);
    }

    #[test]
    fn start_first_creates_beside_the_old_and_stops_it_once_the_new_is_up() {
        let s = settings(UpdateOrder::StartFirst, 1);
        let given = slots(vec![
            (1, vec![task(1, 1, "up")]),
            (2, vec![task(2, 1, "up")]),
        ]);
        let step = reconcile(&s, &rolling(1, 2), &given, &keys(2), secs(10));
        assert_eq!(
            summary(&step),
            (vec![SlotKey::Slot(1)], vec![], RollingOut, 0, 0)
        );

        // The new one starts: nothing more until it is up (and healthy).
        let given = slots(vec![
            (1, vec![task(1, 1, "up"), task(11, 2, "starting")]),
            (2, vec![task(2, 1, "up")]),
        ]);
        let step = reconcile(&s, &rolling(1, 2), &given, &keys(2), secs(10));
        assert_eq!(summary(&step), (vec![], vec![], RollingOut, 0, 0));

        // Up: the old one stops; the monitor runs until 15 s.
        let given = slots(vec![
            (1, vec![task(1, 1, "up"), since(11, 2, "up", 10)]),
            (2, vec![task(2, 1, "up")]),
        ]);
        let step = reconcile(&s, &rolling(1, 2), &given, &keys(2), secs(12));
        assert_eq!(summary(&step), (vec![], uuids(&[1]), RollingOut, 0, 0));
        assert_eq!(step.next_check, Some(secs(15)));

        // Monitored: slot 1 counts and slot 2 starts.
        let given = slots(vec![
            (1, vec![task(1, 1, "gone"), since(11, 2, "up", 10)]),
            (2, vec![task(2, 1, "up")]),
        ]);
        let step = reconcile(&s, &rolling(1, 2), &given, &keys(2), secs(15));
        assert_eq!(
            summary(&step),
            (vec![SlotKey::Slot(2)], vec![], RollingOut, 1, 0)
        );
    }

    #[test]
    fn an_empty_or_stopping_slot_is_in_flight_and_holds_the_next_batch() {
        let given = slots(vec![
            (1, vec![task(1, 1, "stopping")]),
            (2, vec![task(2, 1, "run")]),
        ]);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 1),
            &rolling(1, 2),
            &given,
            &keys(2),
            secs(10),
        );
        assert_eq!(summary(&step), (vec![], vec![], RollingOut, 0, 0));
    }

    #[test]
    fn the_rollout_completes_when_every_slot_is_done() {
        let given = slots(vec![
            (1, vec![since(11, 2, "run", 0)]),
            (2, vec![task(2, 1, "gone"), since(12, 2, "run", 0)]),
        ]);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 1),
            &rolling(1, 2),
            &given,
            &keys(2),
            secs(5),
        );
        assert_eq!(summary(&step), (vec![], vec![], Completed, 2, 0));
        assert_eq!(step.rollout.finished_at, Some(timestamp(secs(5))));
        assert_eq!(step.next_check, None);
    }

    #[test]
    fn a_failed_new_task_rolls_back() {
        let mut sick = since(11, 2, "sick", 0);
        sick.message = "unhealthy: HTTP 500 from /".into();
        let given = slots(vec![(1, vec![sick]), (2, vec![task(2, 1, "up")])]);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 1),
            &rolling(1, 2),
            &given,
            &keys(2),
            secs(3),
        );
        assert!(step.rollback);
        assert_eq!(summary(&step), (vec![], vec![], RollingBack, 0, 0));
        assert_eq!((step.rollout.from_version, step.rollout.to_version), (2, 1));
        assert_eq!(
            step.rollout.reason,
            "1 of 1 new tasks failed: unhealthy: HTTP 500 from /"
        );

        // Rolling back: the v2 task is now the old one, replaced by v1 once
        // slot 2's v1 task has run for the monitor (it counts like any other).
        let back = step.rollout;
        let given = slots(vec![
            (1, vec![since(11, 2, "sick", 0)]),
            (2, vec![task(2, 1, "up")]),
        ]);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 1),
            &back,
            &given,
            &keys(2),
            secs(5),
        );
        assert_eq!(summary(&step), (vec![], uuids(&[11]), RollingBack, 1, 0));
        let given = slots(vec![
            (1, vec![task(11, 2, "gone"), since(21, 1, "up", 4)]),
            (2, vec![since(2, 1, "up", 0)]),
        ]);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 1),
            &back,
            &given,
            &keys(2),
            secs(9),
        );
        assert_eq!(summary(&step), (vec![], vec![], RolledBack, 2, 0));
        assert_eq!(step.rollout.message, "rolled back to version 1");
        assert!(step.rollout.reason.contains("HTTP 500"), "the reason stays");
    }

    #[test]
    fn a_restarted_new_task_is_a_failure_too() {
        let mut crashed = since(11, 2, "run", 0);
        crashed.restarts = 1;
        let given = slots(vec![(1, vec![crashed])]);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 1),
            &rolling(1, 2),
            &given,
            &keys(1),
            secs(9),
        );
        assert!(step.rollback);
    }

    #[test]
    fn failure_actions_pause_or_continue() {
        let given = slots(vec![
            (1, vec![since(11, 2, "sick", 0)]),
            (2, vec![task(2, 1, "run")]),
        ]);
        let pause = UpdateSettings {
            failure_action: FailureAction::Pause,
            ..settings(UpdateOrder::StopFirst, 1)
        };
        let step = reconcile(&pause, &rolling(1, 2), &given, &keys(2), secs(1));
        assert_eq!(summary(&step), (vec![], vec![], Paused, 0, 1));
        assert!(!step.rollback);

        let cont = UpdateSettings {
            failure_action: FailureAction::Continue,
            ..settings(UpdateOrder::StopFirst, 1)
        };
        // The failed slot counts as done, and the next one goes ahead.
        let step = reconcile(&cont, &rolling(1, 2), &given, &keys(2), secs(1));
        assert_eq!(summary(&step), (vec![], uuids(&[2]), RollingOut, 1, 1));
    }

    #[test]
    fn a_failure_ratio_tolerates_some_failures() {
        let s = UpdateSettings {
            max_failure_ratio: 0.5,
            ..settings(UpdateOrder::StopFirst, 2)
        };
        let given = slots(vec![
            (1, vec![since(11, 2, "sick", 0)]),
            (2, vec![since(12, 2, "run", 0)]),
            (3, vec![task(3, 1, "run")]),
        ]);
        // 1 of 2 failed: 0.5 is not more than 0.5.
        let step = reconcile(&s, &rolling(1, 2), &given, &keys(3), secs(9));
        assert_eq!(step.rollout.state(), RollingOut);
    }

    #[test]
    fn a_failing_rollback_or_a_new_service_pauses() {
        let given = slots(vec![(1, vec![since(11, 1, "sick", 0)])]);
        let first = begin(0, 1, 1, T0);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 1),
            &first,
            &given,
            &keys(1),
            secs(1),
        );
        assert_eq!(step.rollout.state(), Paused);
        assert!(step.rollout.message.contains("no earlier version"));

        let back = begin_rollback(2, 1, 1, T0);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 1),
            &back,
            &given,
            &keys(1),
            secs(1),
        );
        assert_eq!(step.rollout.state(), Paused);
        assert!(!step.rollback);
    }

    #[test]
    fn the_delay_holds_the_next_slot_after_one_is_done() {
        let s = UpdateSettings {
            delay: Duration::from_secs(10),
            ..settings(UpdateOrder::StopFirst, 1)
        };
        let given = slots(vec![
            (1, vec![since(11, 2, "run", 0)]),
            (2, vec![task(2, 1, "run")]),
        ]);
        // Slot 1 done at 5 s; slot 2 waits until 15 s.
        let step = reconcile(&s, &rolling(1, 2), &given, &keys(2), secs(6));
        assert_eq!(summary(&step), (vec![], vec![], RollingOut, 1, 0));
        assert_eq!(step.next_check, Some(secs(15)));
        let step = reconcile(&s, &rolling(1, 2), &given, &keys(2), secs(15));
        assert_eq!(summary(&step), (vec![], uuids(&[2]), RollingOut, 1, 0));
    }

    #[test]
    fn a_rollout_says_why_a_new_task_waits() {
        let mut pending = task(11, 2, "pending");
        pending.message = "no node fits: insufficient memory on 3 nodes".into();
        let given = slots(vec![(1, vec![pending]), (2, vec![task(2, 1, "run")])]);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 1),
            &rolling(1, 2),
            &given,
            &keys(2),
            secs(1),
        );
        assert_eq!(
            step.rollout.waiting,
            "no node fits: insufficient memory on 3 nodes"
        );
    }

    #[test]
    fn a_finished_rollout_does_nothing() {
        let mut done = rolling(1, 2);
        done.set_state(Completed);
        let given = slots(vec![(1, vec![task(1, 1, "run")])]);
        let step = reconcile(
            &settings(UpdateOrder::StopFirst, 1),
            &done,
            &given,
            &keys(1),
            secs(1),
        );
        assert_eq!(step.plan, Plan::default());
        assert_eq!(step.rollout, done);
    }
}
