//! Injectable time, so simulated devices behave the same in every test run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a simulated device gets the time from.
///
/// Devices integrate energy and state of charge over the time elapsed between calls, and
/// the sun and load curves follow the time of day, so a test that controls the clock
/// controls the whole simulation.
pub trait Clock: Send + Sync {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The real clock, for the running daemon.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// A clock standing `secs` seconds after the Unix epoch (UTC).
    pub fn from_unix(secs: u64) -> Self {
        Self::new(UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// A shareable clock standing `secs` seconds after the Unix epoch, ready to be handed
    /// to [`crate::build`] (clone the `Arc` first to keep a handle for advancing it).
    pub fn shared_from_unix(secs: u64) -> Arc<Self> {
        Arc::new(Self::from_unix(secs))
    }

    /// Move the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now += by;
    }

    /// Put the clock at an arbitrary time; devices treat a step backwards as no time passing.
    pub fn set(&self, to: SystemTime) {
        *self.lock() = to;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SystemTime> {
        // A poisoned lock still holds a valid time; a test that panicked elsewhere must not
        // turn every later read into a second panic.
        self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.lock()
    }
}

/// A clock driven by tokio's time, so tests running with `tokio::time::pause()` (the
/// `test-util` feature) move simulated devices along with their virtual timers.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_wall: SystemTime,
    start_instant: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `start` now and runs with tokio's (possibly paused) time.
    pub fn new(start: SystemTime) -> Self {
        Self {
            start_wall: start,
            start_instant: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.start_wall + self.start_instant.elapsed()
    }
}

/// Seconds since the Unix epoch as a float; times before the epoch count as the epoch,
/// since no simulation starts there.
pub(crate) fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
