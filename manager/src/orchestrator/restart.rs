//! The restart reconciler: what to do when a task's attempt ends (restart
//! it, and after how long), and the bookkeeping of restarts waiting out their
//! backoff.
//!
//! [`after_exit`] and [`replace_unhealthy`] are pure decisions over plain data
//! (no clock reads, no I/O, no state): the engine calls them when a worker
//! reports an attempt ended or unhealthy, with the time handed in as how long
//! the attempt ran, and applies the answer. Restarts wait out an exponential
//! backoff (1 s doubling to 60 s), so a crashing task does not spin; the
//! backoff starts over once an attempt has run stably for a while.
//! [`Backoffs`] only remembers: which restarts are due when, and each
//! restarting task's streak.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use orch::v1::{RestartCondition, RestartPolicy, TaskState};
use tokio::time::Instant;
use uuid::Uuid;

/// The first restart's delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest delay between restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// An attempt that ran at least this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// A restart to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    /// How long to wait before placing the new attempt.
    pub delay: Duration,
    /// The backoff streak to remember for the next exit.
    pub streak: u32,
}

/// Decides whether an attempt that ended in `state` is restarted.
///
/// `restarts` is how many times the task was restarted so far; `streak` how
/// many restarts in a row followed short-lived attempts; `ran_for` how long
/// the ended attempt ran (None if it never ran).
pub fn after_exit(
    policy: Option<&RestartPolicy>,
    state: TaskState,
    restarts: u32,
    streak: u32,
    ran_for: Option<Duration>,
) -> Option<Restart> {
    let policy = policy.copied().unwrap_or_default();
    let condition = RestartCondition::try_from(policy.condition).unwrap_or(RestartCondition::Never);
    let wanted = match condition {
        RestartCondition::Unspecified | RestartCondition::Never => false,
        RestartCondition::OnFailure => state == TaskState::Failed,
        RestartCondition::Always => matches!(state, TaskState::Completed | TaskState::Failed),
    };
    if !wanted || (policy.max_restarts > 0 && restarts >= policy.max_restarts) {
        return None;
    }
    let streak = if ran_for.is_some_and(|d| d >= STABLE_AFTER) {
        0
    } else {
        streak
    };
    let delay = BACKOFF_INITIAL
        .saturating_mul(1u32 << streak.min(16))
        .min(BACKOFF_MAX);
    Some(Restart {
        delay,
        streak: streak.saturating_add(1),
    })
}

/// Whether an attempt whose health check found it unhealthy is replaced: it
/// counts as failed, so it is under `on-failure` and `always` while restarts
/// are left. Otherwise (`never`, or no restarts left) it keeps running,
/// unhealthy, as Docker leaves such a container: stopping it with nothing to
/// replace it would turn a degraded task into none.
pub fn replace_unhealthy(policy: Option<&RestartPolicy>, restarts: u32) -> bool {
    after_exit(policy, TaskState::Failed, restarts, 0, None).is_some()
}

/// Restarts waiting out their backoff, and the backoff streak of each
/// restarting task. Kept in memory only: after a manager restart, backoffs
/// start over and a waiting restart is placed at once.
#[derive(Debug, Default)]
pub struct Backoffs {
    /// By when each restart is due.
    delayed: BTreeSet<(Instant, Uuid)>,
    streaks: HashMap<Uuid, u32>,
}

impl Backoffs {
    /// How many short-lived attempts in a row task `id` has had.
    pub fn streak(&self, id: Uuid) -> u32 {
        self.streaks.get(&id).copied().unwrap_or(0)
    }

    /// Remembers a restart decision: its streak, and that it is due at `due`.
    pub fn wait(&mut self, id: Uuid, restart: Restart, due: Instant) {
        self.streaks.insert(id, restart.streak);
        self.delayed.insert((due, id));
    }

    /// Task `id` will not restart again (for now): its streak is forgotten.
    pub fn forget(&mut self, id: Uuid) {
        self.streaks.remove(&id);
    }

    /// When the first waiting restart is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.first().map(|&(due, _)| due)
    }

    /// The next restart due at `now` or before, taken off the queue.
    pub fn pop_due(&mut self, now: Instant) -> Option<Uuid> {
        let &(due, id) = self.delayed.first()?;
        (due <= now).then(|| {
            self.delayed.pop_first();
            id
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(condition: RestartCondition, max: u32) -> RestartPolicy {
        RestartPolicy {
            condition: condition as i32,
            max_restarts: max,
        }
    }

    /// `after_exit` for a short-lived attempt, as (delay in seconds, next streak).
    fn check(
        p: Option<RestartPolicy>,
        state: TaskState,
        restarts: u32,
        streak: u32,
        expected: Option<(u64, u32)>,
    ) {
        let got = after_exit(
            p.as_ref(),
            state,
            restarts,
            streak,
            Some(Duration::from_secs(1)),
        );
        assert_eq!(
            got.map(|r| (r.delay.as_secs(), r.streak)),
            expected,
            "{p:?} {state:?} restarts={restarts} streak={streak}"
        );
    }

    #[test]
    fn conditions() {
        use RestartCondition::*;
        use TaskState::*;
        check(None, Failed, 0, 0, None);
        check(Some(policy(Never, 0)), Failed, 0, 0, None);
        check(Some(policy(OnFailure, 0)), Failed, 0, 0, Some((1, 1)));
        check(Some(policy(OnFailure, 0)), Completed, 0, 0, None);
        check(Some(policy(Always, 0)), Completed, 0, 0, Some((1, 1)));
        check(Some(policy(Always, 0)), Failed, 0, 0, Some((1, 1)));
        // A stop is never undone by a restart.
        check(Some(policy(Always, 0)), Stopped, 0, 0, None);
        // An unknown condition (a newer client) is read as never.
        check(
            Some(RestartPolicy {
                condition: 99,
                max_restarts: 0,
            }),
            Failed,
            0,
            0,
            None,
        );
    }

    #[test]
    fn max_restarts() {
        use RestartCondition::*;
        check(
            Some(policy(Always, 3)),
            TaskState::Failed,
            2,
            2,
            Some((4, 3)),
        );
        check(Some(policy(Always, 3)), TaskState::Failed, 3, 3, None);
        // 0 means no limit.
        check(
            Some(policy(Always, 0)),
            TaskState::Failed,
            1000,
            3,
            Some((8, 4)),
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = Some(policy(RestartCondition::Always, 0));
        let delays: Vec<u64> = (0..9)
            .map(|streak| {
                after_exit(p.as_ref(), TaskState::Failed, streak, streak, None)
                    .map(|r| r.delay.as_secs())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // Huge streaks do not overflow.
        let r = after_exit(p.as_ref(), TaskState::Failed, 0, u32::MAX, None).expect("restart");
        assert_eq!(r.delay, BACKOFF_MAX);
    }

    #[test]
    fn an_unhealthy_attempt_is_replaced_when_a_failure_would_be() {
        use RestartCondition::*;
        assert!(!replace_unhealthy(None, 0));
        assert!(!replace_unhealthy(Some(&policy(Never, 0)), 0));
        assert!(replace_unhealthy(Some(&policy(OnFailure, 0)), 0));
        assert!(replace_unhealthy(Some(&policy(Always, 0)), 7));
        assert!(replace_unhealthy(Some(&policy(OnFailure, 2)), 1));
        assert!(!replace_unhealthy(Some(&policy(OnFailure, 2)), 2));
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let p = policy(RestartCondition::Always, 0);
        let r = after_exit(Some(&p), TaskState::Failed, 7, 7, Some(STABLE_AFTER)).expect("restart");
        assert_eq!((r.delay, r.streak), (BACKOFF_INITIAL, 1));
    }
}
