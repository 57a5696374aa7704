//! Where the gateway and its simulated devices get the time of day from.
//!
//! s2-kit's sessions never read a clock: every call takes a `now`. The virtual RM engine
//! and the simulated devices read it from a [`Clock`] so that the same code runs on the
//! wall clock in the daemon and on tokio's pausable clock in tests, where an hour-long PEBC
//! envelope takes microseconds. Waiting is always done with tokio timers; [`TokioClock`]
//! keeps the time of day in step with them, which is what makes
//! `#[tokio::test(start_paused = true)]` tests exact.

use std::fmt::Debug;
use std::time::{Duration as StdDuration, SystemTime, UNIX_EPOCH};

use crate::s2::Timestamp;

/// A source of the time of day.
pub trait Clock: Send + Sync + Debug {
    /// The current time of day.
    fn now(&self) -> SystemTime;

    /// The current time as an S2 timestamp.
    fn timestamp(&self) -> Timestamp {
        to_timestamp(self.now())
    }
}

/// The wall clock, for the daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that follows tokio's time: a fixed time of day at creation, plus however much
/// tokio time has passed since. Under a paused runtime tokio time only moves when every
/// task is idle (or a test advances it), and this clock moves with it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: SystemTime,
    started: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `origin` now.
    pub fn starting_at(origin: SystemTime) -> Self {
        Self {
            origin,
            started: tokio::time::Instant::now(),
        }
    }

    /// A clock that reads the wall clock's time now and then follows tokio.
    pub fn new() -> Self {
        Self::starting_at(SystemTime::now())
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.origin + self.started.elapsed()
    }
}

/// An S2 timestamp for a time of day (times before 1970 clamp to the epoch: a clock that
/// wrong has bigger problems).
pub fn to_timestamp(time: SystemTime) -> Timestamp {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => Timestamp::from_unix(
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            since.subsec_nanos(),
        ),
        Err(_) => Timestamp::UNIX_EPOCH,
    }
}

/// `time` as RFC 3339 in UTC (`2025-01-01T12:00:00.123Z`), the format of every `updated`
/// the gateway publishes: what Home Assistant and people read.
pub fn rfc3339(time: SystemTime) -> String {
    to_timestamp(time).to_string()
}

/// A time of day for an S2 timestamp.
pub fn to_system_time(timestamp: Timestamp) -> SystemTime {
    let secs = timestamp.unix_secs();
    let nanos = StdDuration::from_nanos(u64::from(timestamp.subsec_nanos()));
    if secs >= 0 {
        UNIX_EPOCH + StdDuration::from_secs(secs.unsigned_abs()) + nanos
    } else {
        UNIX_EPOCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_with_paused_time() {
        let origin = UNIX_EPOCH + StdDuration::from_secs(1_700_000_000);
        let clock = TokioClock::starting_at(origin);
        assert_eq!(clock.now(), origin);
        tokio::time::sleep(StdDuration::from_secs(3600)).await;
        assert_eq!(clock.now(), origin + StdDuration::from_secs(3600));
        assert_eq!(clock.timestamp().unix_secs(), 1_700_003_600);
    }

    #[test]
    fn timestamps_round_trip() {
        let time = UNIX_EPOCH + StdDuration::from_millis(1_700_000_000_123);
        assert_eq!(to_system_time(to_timestamp(time)), time);
    }

    #[test]
    fn rfc3339_is_utc() {
        let t = UNIX_EPOCH + StdDuration::from_secs(1_700_000_000);
        assert!(rfc3339(t).starts_with("2023-11-14T22:13:20"));
    }
}
