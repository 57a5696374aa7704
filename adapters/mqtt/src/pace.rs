//! When a device's state is worth publishing: on a meaningful change (a deadband per
//! quantity) and at least every heartbeat, so Home Assistant's recorder stores what
//! matters instead of every wobble of a reading.
//!
//! The deadbands (documented in README and `config/s2gw.toml`):
//! - power: [`POWER_DEADBAND_W`] or [`POWER_DEADBAND_RATIO`] of the last published
//!   value, whichever is larger;
//! - state of charge: [`SOC_DEADBAND`] percentage points;
//! - the device's energy register: [`ENERGY_DEADBAND_WH`];
//! - anything else (availability, the CEM link, control type, active instruction, name,
//!   a value becoming known or unknown): every change.
//!
//! The integrated energy counters are not compared: they follow the power, which is, and
//! the heartbeat bounds how old their published value gets.

use std::time::Duration;

use tokio::time::Instant;

use crate::mirror::DeviceState;

/// The smallest power change published at once, in W.
pub const POWER_DEADBAND_W: f64 = 10.0;
/// The smallest relative power change published at once (2 %).
pub const POWER_DEADBAND_RATIO: f64 = 0.02;
/// The smallest change of state of charge published at once, in percentage points.
pub const SOC_DEADBAND: f64 = 0.5;
/// The smallest change of the device's energy register published at once, in Wh.
pub const ENERGY_DEADBAND_WH: f64 = 100.0;

/// Decides, state by state, which ones to publish.
#[derive(Debug)]
pub struct StatePacer {
    heartbeat: Duration,
    last: Option<(DeviceState, Instant)>,
}

impl StatePacer {
    /// A pacer publishing at least every `heartbeat`.
    pub fn new(heartbeat: Duration) -> Self {
        Self {
            heartbeat,
            last: None,
        }
    }

    /// Whether `state` should be published now: the first one, a meaningful change from
    /// the last published, or the heartbeat is due.
    pub fn due(&self, state: &DeviceState, now: Instant) -> bool {
        match &self.last {
            None => true,
            Some((last, at)) => {
                now.saturating_duration_since(*at) >= self.heartbeat || meaningful(last, state)
            }
        }
    }

    /// When the heartbeat is due next (now, before the first publish).
    pub fn next_heartbeat(&self) -> Instant {
        self.last
            .as_ref()
            .map_or_else(Instant::now, |(_, at)| *at + self.heartbeat)
    }

    /// `state` was published at `now`.
    pub fn published(&mut self, state: DeviceState, now: Instant) {
        self.last = Some((state, now));
    }
}

/// Beyond a deadband, or a change of something that is not a measurement.
fn meaningful(last: &DeviceState, now: &DeviceState) -> bool {
    let moved = |a: Option<f64>, b: Option<f64>, band: f64| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() >= band,
        (None, None) => false,
        _ => true,
    };
    let power_band = last.power_w.map_or(POWER_DEADBAND_W, |p| {
        (p.abs() * POWER_DEADBAND_RATIO).max(POWER_DEADBAND_W)
    });
    moved(last.power_w, now.power_w, power_band)
        || moved(last.soc, now.soc, SOC_DEADBAND)
        || moved(last.energy_wh, now.energy_wh, ENERGY_DEADBAND_WH)
        || last.available != now.available
        || last.cem_link != now.cem_link
        || last.control_type != now.control_type
        || last.active != now.active
        || last.name != now.name
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2gw_core::device::DeviceKind;

    fn state(power: Option<f64>) -> DeviceState {
        let mut s = DeviceState::new("m", "M", DeviceKind::Meter);
        s.power_w = power;
        s.available = true;
        s
    }

    #[test]
    fn small_changes_wait_for_the_heartbeat_big_ones_do_not() {
        let t0 = Instant::now();
        let mut pacer = StatePacer::new(Duration::from_secs(60));
        assert!(pacer.due(&state(Some(1000.0)), t0), "the first one");
        pacer.published(state(Some(1000.0)), t0);
        let t1 = t0 + Duration::from_secs(1);
        // 2 % of 1000 W is 20 W: 15 W is within the deadband, 25 W beyond it.
        assert!(!pacer.due(&state(Some(1015.0)), t1));
        assert!(pacer.due(&state(Some(1025.0)), t1));
        assert!(pacer.due(&state(None), t1), "a value becoming unknown");
        let mut link = state(Some(1000.0));
        link.cem_link = "connected".into();
        assert!(pacer.due(&link, t1), "a link change");
        assert_eq!(pacer.next_heartbeat(), t0 + Duration::from_secs(60));
        assert!(pacer.due(&state(Some(1001.0)), t0 + Duration::from_secs(60)));
    }

    #[test]
    fn near_zero_the_absolute_deadband_holds() {
        let t0 = Instant::now();
        let mut pacer = StatePacer::new(Duration::from_secs(60));
        pacer.published(state(Some(0.0)), t0);
        assert!(!pacer.due(&state(Some(9.0)), t0));
        assert!(pacer.due(&state(Some(-10.0)), t0));
        let mut soc = state(Some(0.0));
        soc.soc = Some(50.0);
        pacer.published(soc.clone(), t0);
        soc.soc = Some(50.4);
        assert!(!pacer.due(&soc, t0));
        soc.soc = Some(50.5);
        assert!(pacer.due(&soc, t0));
    }
}
