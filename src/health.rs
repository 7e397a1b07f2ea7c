//! Health checks as the domain sees them: the defaults of a [`HealthCheck`]'s
//! unset fields, the settings a check means once they are filled in, and the
//! words for a [`HealthState`].
//!
//! The worker runs the probes and the manager acts on their results; both
//! read a check through [`settings`], so a default is written once. The
//! rules a check must follow are in [`crate::validate`].

use std::time::Duration;

use crate::v1::{HealthCheck, HealthState};

/// The interval of a check that does not set one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The timeout of a check that does not set one (or the interval, if shorter).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The failures in a row that make a container unhealthy, if not set.
pub const DEFAULT_RETRIES: u32 = 3;
/// The shortest interval: probes more often than this cost more than they tell.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The longest interval, and the longest start period.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// A health check's timings with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// From the start of one probe to the start of the next.
    pub interval: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
    /// Failures in a row that make the container unhealthy (at least 1).
    pub retries: u32,
    /// Failures this soon after the start do not count, until a success.
    pub start_period: Duration,
}

/// The settings `check` means. Fields that do not convert (which
/// validation refuses) read as unset.
pub fn settings(check: &HealthCheck) -> Settings {
    let interval = check
        .interval
        .as_ref()
        .and_then(crate::time::std_duration)
        .unwrap_or(DEFAULT_INTERVAL);
    let timeout = check
        .timeout
        .as_ref()
        .and_then(crate::time::std_duration)
        .unwrap_or(DEFAULT_TIMEOUT.min(interval));
    Settings {
        interval,
        timeout,
        retries: check.retries.unwrap_or(DEFAULT_RETRIES).max(1),
        start_period: check
            .start_period
            .as_ref()
            .and_then(crate::time::std_duration)
            .unwrap_or_default(),
    }
}

/// The lowercase word for a health, as `orchctl` prints it and its JSON
/// uses it; `None` for no health known.
pub fn name(health: HealthState) -> Option<&'static str> {
    match health {
        HealthState::Unspecified => None,
        HealthState::Starting => Some("starting"),
        HealthState::Healthy => Some("healthy"),
        HealthState::Unhealthy => Some("unhealthy"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::duration;

    #[test]
    fn unset_fields_take_the_defaults() {
        let s = settings(&HealthCheck::default());
        assert_eq!(
            s,
            Settings {
                interval: DEFAULT_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                retries: DEFAULT_RETRIES,
                start_period: Duration::ZERO,
            }
        );
    }

    #[test]
    fn the_default_timeout_never_exceeds_the_interval() {
        let s = settings(&HealthCheck {
            interval: Some(duration(Duration::from_secs(1))),
            ..Default::default()
        });
        assert_eq!(s.timeout, Duration::from_secs(1));
    }

    #[test]
    fn set_fields_are_kept() {
        let s = settings(&HealthCheck {
            interval: Some(duration(Duration::from_secs(2))),
            timeout: Some(duration(Duration::from_millis(300))),
            retries: Some(5),
            start_period: Some(duration(Duration::from_secs(7))),
            ..Default::default()
        });
        assert_eq!(
            s,
            Settings {
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(300),
                retries: 5,
                start_period: Duration::from_secs(7),
            }
        );
    }

    #[test]
    fn names() {
        assert_eq!(name(HealthState::Unspecified), None);
        assert_eq!(name(HealthState::Healthy), Some("healthy"));
        assert_eq!(name(HealthState::Unhealthy), Some("unhealthy"));
        assert_eq!(name(HealthState::Starting), Some("starting"));
    }
}
