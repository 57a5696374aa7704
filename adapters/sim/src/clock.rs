//! Injectable time, so simulated devices behave the same in every test run.
//!
//! Devices integrate energy and state of charge over the time elapsed between calls, and
//! the sun and load curves follow the time of day, so a test that controls the [`Clock`]
//! (shared with the virtual RM engine, in `s2gw_core::clock`) controls the whole
//! simulation. [`ManualClock`] is the simulation's own: a clock that moves only when told.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use s2gw_core::clock::{Clock, SystemClock, TokioClock};

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

/// Seconds since the Unix epoch as a float; times before the epoch count as the epoch,
/// since no simulation starts there.
pub(crate) fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
