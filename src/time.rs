//! Conversions between `std::time` and the protobuf well-known time types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Converts a wall-clock time to a protobuf `Timestamp`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf `Timestamp` back to a wall-clock time; times before the
/// Unix epoch map to the epoch.
pub fn system_time(ts: &prost_types::Timestamp) -> SystemTime {
    let secs = u64::try_from(ts.seconds).unwrap_or(0);
    let nanos = u32::try_from(ts.nanos).unwrap_or(0);
    UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
}

/// Converts a `Duration` to a protobuf `Duration`.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Converts a protobuf `Duration` to a `Duration`, or `None` if it is negative
/// or its nanoseconds are out of range.
pub fn std_duration(d: &prost_types::Duration) -> Option<Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    (nanos < 1_000_000_000).then(|| Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(system_time(&timestamp(t)), t);
    }

    #[test]
    fn negative_duration_is_refused() {
        let d = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(std_duration(&d), None);
        let d = prost_types::Duration {
            seconds: 2,
            nanos: 5,
        };
        assert_eq!(std_duration(&d), Some(Duration::new(2, 5)));
    }
}
