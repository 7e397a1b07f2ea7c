//! The manager's clock: one place that reads the time, so that every
//! decision gets its time handed in.
//!
//! Both halves of [`Now`] come from tokio's monotonic clock: the wall time is
//! the wall time read once at start-up plus the monotonic time elapsed since.
//! So a test that pauses and advances tokio's clock moves the wall time the
//! manager stamps and reasons with too (a backoff reset after 30 s of stable
//! running is tested by advancing 30 s), and a step of the system clock
//! (an NTP jump) never makes a task's times go backwards.
//!
//! [`Stopwatch`] reads the machine's own monotonic clock, for metrics
//! only: how long a decision took is measured, never decided on.

use std::time::SystemTime;

use tokio::time::Instant;

/// A moment, as both clocks read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// For timers: deadlines and backoffs.
    pub at: Instant,
    /// For what people and the store see: `created_at`, `started_at`, events.
    pub wall: SystemTime,
}

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    started: Instant,
    started_wall: SystemTime,
}

impl Clock {
    /// A clock that reads the wall time once, now.
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            started_wall: SystemTime::now(),
        }
    }

    /// The time now.
    pub fn now(&self) -> Now {
        self.at(Instant::now())
    }

    /// The moment `at`, with its wall time.
    pub fn at(&self, at: Instant) -> Now {
        Now {
            at,
            wall: self.started_wall + at.saturating_duration_since(self.started),
        }
    }
}

/// Measures how long something took, on the machine's monotonic clock
/// (not tokio's: a paused test clock would make everything take no time).
/// For metrics only: nothing is decided on what it reads.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    /// Starts measuring.
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }

    /// The time since [`Stopwatch::start`].
    pub fn elapsed(&self) -> std::time::Duration {
        self.0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_wall_time_moves_with_tokios_clock() {
        let clock = Clock::start();
        let before = clock.now();
        tokio::time::advance(Duration::from_secs(30)).await;
        let after = clock.now();
        assert_eq!(after.at - before.at, Duration::from_secs(30));
        assert_eq!(
            after.wall.duration_since(before.wall).ok(),
            Some(Duration::from_secs(30))
        );
    }
}
