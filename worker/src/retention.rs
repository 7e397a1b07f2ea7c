//! How long a worker keeps the containers of ended attempts, so that their
//! output outlives them (`orchctl logs --attempt N` after a restart): a pure
//! decision over each task's kept attempts and a time handed in. The
//! executor applies it (it removes what [`expired`] names); nothing here
//! touches a runtime.

use std::time::Duration;

use tokio::time::Instant;

/// What a worker keeps of ended attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The ended attempts kept per task, the newest ones; 0 removes each
    /// container as soon as its attempt ends.
    pub keep_attempts: usize,
    /// The longest an ended attempt's container is kept.
    pub max_age: Duration,
}

impl Default for Retention {
    /// The last 3 attempts of each task, for at most an hour.
    fn default() -> Self {
        Self {
            keep_attempts: 3,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// One ended attempt whose container is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// The attempt.
    pub attempt: u64,
    /// Its container.
    pub container_id: String,
    /// When it ended (or, for a container found at start-up, when this
    /// worker found it: its age counts from then).
    pub ended_at: Instant,
}

/// The indexes in `kept` (one task's ended attempts, in any order) of the
/// containers to remove at `now`: every one ended `max_age` ago or more,
/// and every one but the `keep_attempts` newest attempts.
pub fn expired(kept: &[Kept], now: Instant, retention: Retention) -> Vec<usize> {
    let mut newest: Vec<usize> = (0..kept.len()).collect();
    newest.sort_by(|&a, &b| kept[b].attempt.cmp(&kept[a].attempt));
    let mut out: Vec<usize> = newest
        .into_iter()
        .enumerate()
        .filter(|&(rank, i)| {
            rank >= retention.keep_attempts
                || now.saturating_duration_since(kept[i].ended_at) >= retention.max_age
        })
        .map(|(_, i)| i)
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(attempt: u64, ended_at: Instant) -> Kept {
        Kept {
            attempt,
            container_id: format!("c{attempt}"),
            ended_at,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn only_the_newest_attempts_are_kept() {
        let now = Instant::now();
        let all = [
            kept(2, now),
            kept(5, now),
            kept(1, now),
            kept(4, now),
            kept(3, now),
        ];
        let r = Retention::default();
        let gone: Vec<u64> = expired(&all, now, r)
            .iter()
            .map(|&i| all[i].attempt)
            .collect();
        assert_eq!(gone, vec![2, 1], "attempts 5, 4 and 3 stay");
        assert!(expired(&all[..3], now, r).is_empty());
        let none = Retention {
            keep_attempts: 0,
            ..r
        };
        assert_eq!(expired(&all, now, none), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn an_attempt_goes_once_its_age_reaches_the_limit() {
        let start = Instant::now();
        let all = [kept(1, start), kept(2, start + Duration::from_secs(600))];
        let r = Retention::default();
        assert!(expired(&all, start + HOUR - Duration::from_secs(1), r).is_empty());
        assert_eq!(expired(&all, start + HOUR, r), vec![0]);
        assert_eq!(
            expired(&all, start + HOUR + Duration::from_secs(600), r),
            vec![0, 1]
        );
        // A time before the end (a clock handed in late) keeps it.
        assert!(expired(&all, start, r).is_empty());
    }
}
