//! A household meter showing the base load over the day.

use std::sync::Arc;

use async_trait::async_trait;
use s2gw_core::device::{ControlCapability, DeviceInfo, DeviceKind, Watts};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Readings};

use crate::clock::{Clock, unix_secs};
use crate::common::{self, EnergyCounter};
use crate::config::SimConfig;
use crate::noise;

const DEFAULT_BASE_LOAD_W: f64 = 400.0;
const DEFAULT_NOISE: f64 = 0.15;
/// How fast the load wanders (kettles, fridges), in seconds.
const NOISE_PERIOD_S: f64 = 90.0;
/// The load never drops below this share of the base load: something is always on.
const FLOOR_SHARE: f64 = 0.2;

/// A bump of height 1 at local hour `centre`, `width` hours wide, wrapping midnight.
fn bump(h: f64, centre: f64, width: f64) -> f64 {
    let d = (h - centre).rem_euclid(24.0);
    let d = d.min(24.0 - d);
    (-0.5 * (d / width).powi(2)).exp()
}

/// The household load at `t`.
#[derive(Debug, Clone)]
struct LoadCurve {
    base_w: Watts,
    noise: f64,
    utc_offset_min: i32,
    seed: u64,
}

impl LoadCurve {
    /// A low night, a breakfast peak, a small lunch bump and the evening peak.
    fn shape(h: f64) -> f64 {
        0.6 + 0.6 * bump(h, 7.5, 1.0) + 0.3 * bump(h, 12.5, 1.5) + 1.4 * bump(h, 19.0, 1.8)
    }

    fn power_w(&self, t: f64) -> Watts {
        let h = common::local_hour(t, self.utc_offset_min);
        let wobble = 1.0 + self.noise * (2.0 * noise::smooth(self.seed, t, NOISE_PERIOD_S) - 1.0);
        (self.base_w * Self::shape(h) * wobble).max(self.base_w * FLOOR_SHARE)
    }
}

/// A simulated household meter: consumption only, nothing to control.
pub struct Meter {
    id: String,
    load: LoadCurve,
    clock: Arc<dyn Clock>,
    energy: EnergyCounter,
}

impl Meter {
    /// A meter from the `meter` parameters of `config`; nonsense falls back to defaults.
    pub fn new(id: &str, config: &SimConfig, clock: Arc<dyn Clock>) -> Self {
        let load = LoadCurve {
            base_w: common::positive_or(config.base_load_w, DEFAULT_BASE_LOAD_W),
            noise: common::within_or(config.noise, 0.0, 1.0, DEFAULT_NOISE),
            utc_offset_min: config.utc_offset_min.unwrap_or(0),
            seed: noise::seed_from(id),
        };
        let now = unix_secs(clock.now());
        Self {
            id: id.to_string(),
            load,
            clock,
            energy: EnergyCounter::new(now),
        }
    }
}

#[async_trait]
impl Device for Meter {
    fn info(&self) -> DeviceInfo {
        let mut info = common::info(&self.id, DeviceKind::Meter, "Simulated household meter");
        info.control = vec![ControlCapability::NotControllable];
        info
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        let now = unix_secs(self.clock.now());
        let load = &self.load;
        self.energy.advance(now, |t| load.power_w(t));
        Ok(Readings {
            power_w: self.load.power_w(now),
            phase_power_w: None,
            energy_wh: Some(self.energy.wh()),
            soc: None,
            status: DeviceStatus::Ok,
            active: None,
            ..Readings::default()
        })
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        match command {
            // The fail-safe goes to every device; for a meter there is nothing to undo.
            Command::Release => Ok(()),
            other => Err(DeviceError::Refused(format!(
                "a meter cannot be controlled ({})",
                other.summary()
            ))),
        }
    }
}
