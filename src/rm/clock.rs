//! Where the virtual RM gets the time of day from: the [`Clock`] the simulated devices
//! share, in `s2gw_core::clock`, plus the one conversion only the engine needs.

use std::time::Duration as StdDuration;

use s2gw_core::s2::Timestamp;

pub use s2gw_core::clock::{Clock, SystemClock, TokioClock, to_system_time};

/// How long from `now` until `deadline`; zero when it has passed.
pub fn until(now: Timestamp, deadline: Timestamp) -> StdDuration {
    StdDuration::from_millis(deadline.saturating_duration_since(now).as_millis())
}
