//! Bits every simulated device shares: time of day, energy integration, device facts.

use s2gw_core::device::{DeviceInfo, DeviceKind};

/// Seconds in a day.
const DAY_S: f64 = 86_400.0;

/// Nominal phase voltage, used to turn charging current into power.
pub(crate) const VOLTS: f64 = 230.0;

/// The local hour of day `[0, 24)` at Unix time `t`.
pub(crate) fn local_hour(t: f64, utc_offset_min: i32) -> f64 {
    (t + f64::from(utc_offset_min) * 60.0).rem_euclid(DAY_S) / 3600.0
}

/// A finite positive value, or the default; `build` never fails, it falls back.
pub(crate) fn positive_or(v: Option<f64>, default: f64) -> f64 {
    v.filter(|x| x.is_finite() && *x > 0.0).unwrap_or(default)
}

/// A finite value within `[lo, hi]`, or the default.
pub(crate) fn within_or(v: Option<f64>, lo: f64, hi: f64, default: f64) -> f64 {
    v.filter(|x| x.is_finite() && (lo..=hi).contains(x))
        .unwrap_or(default)
}

/// The facts every simulated device shares.
pub(crate) fn info(id: &str, kind: DeviceKind, model: &str) -> DeviceInfo {
    DeviceInfo {
        kind,
        manufacturer: Some("s2gw".to_string()),
        model: Some(model.to_string()),
        serial: Some(format!("SIM-{id}")),
        firmware: Some(env!("CARGO_PKG_VERSION").to_string()),
        three_phase: false,
        control: Vec::new(),
    }
}

/// A lifetime energy counter: the energy through the device's terminals, counted
/// positive whichever way it flows, so it only ever grows.
#[derive(Debug, Clone)]
pub(crate) struct EnergyCounter {
    last: f64,
    wh: f64,
}

/// Integration step: the curves change over minutes, not seconds.
const STEP_S: f64 = 60.0;
/// Bounds the work of one read after a long pause (a week of minutes).
const MAX_STEPS: f64 = 10_080.0;

impl EnergyCounter {
    /// A counter at zero, starting to count at `t`.
    pub(crate) fn new(t: f64) -> Self {
        Self { last: t, wh: 0.0 }
    }

    /// The energy counted so far.
    pub(crate) fn wh(&self) -> f64 {
        self.wh
    }

    /// Counts the energy from the last call to `now` under `power`, by the midpoint rule;
    /// a clock stepping backwards counts nothing.
    pub(crate) fn advance(&mut self, now: f64, power: impl Fn(f64) -> f64) {
        let dt = now - self.last;
        if dt > 0.0 {
            let n = (dt / STEP_S).ceil().clamp(1.0, MAX_STEPS);
            let h = dt / n;
            let steps = n as u32;
            let sum: f64 = (0..steps)
                .map(|i| power(self.last + (f64::from(i) + 0.5) * h).abs())
                .sum();
            self.wh += sum * h / 3600.0;
        }
        self.last = now;
    }
}
