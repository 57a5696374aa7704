//! A PV inverter following the sun, with an active-power limit.

use std::f64::consts::PI;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use s2gw_core::device::{ControlCapability, DeviceInfo, DeviceKind, Watts};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Readings};

use crate::clock::{Clock, unix_secs};
use crate::common::{self, EnergyCounter};
use crate::config::SimConfig;
use crate::noise;

/// Peak production when the config does not say.
pub(crate) const DEFAULT_RATED_W: f64 = 5000.0;
/// Local hour of sunrise when the config does not say.
pub(crate) const DEFAULT_SUNRISE_H: f64 = 6.0;
/// Local hour of sunset when the config does not say.
pub(crate) const DEFAULT_SUNSET_H: f64 = 18.0;
const DEFAULT_CLOUDINESS: f64 = 0.2;
/// How long a cloud takes to come and go, in seconds.
const CLOUD_PERIOD_S: f64 = 600.0;

/// The sun over the panels: what they could deliver at any moment.
#[derive(Debug, Clone)]
struct SunCurve {
    rated_w: Watts,
    sunrise_h: f64,
    sunset_h: f64,
    cloudiness: f64,
    utc_offset_min: i32,
    seed: u64,
}

impl SunCurve {
    /// Available power at Unix time `t`, negative (production).
    fn available_w(&self, t: f64) -> Watts {
        let h = common::local_hour(t, self.utc_offset_min);
        if h <= self.sunrise_h || h >= self.sunset_h {
            return 0.0;
        }
        let sun = (PI * (h - self.sunrise_h) / (self.sunset_h - self.sunrise_h)).sin();
        let clouds = 1.0 - self.cloudiness * noise::smooth(self.seed, t, CLOUD_PERIOD_S);
        -self.rated_w * sun * clouds
    }

    /// Delivered power under a limit: production never below `floor_w`.
    fn power_w(&self, t: f64, floor_w: Option<Watts>) -> Watts {
        let p = self.available_w(t);
        floor_w.map_or(p, |floor| p.max(floor))
    }
}

/// Local sunrise and sunset hours of `config`, with the same fallbacks as the inverter.
fn daylight(config: &SimConfig) -> (f64, f64) {
    let sunrise_h = common::within_or(config.sunrise_h, 0.0, 24.0, DEFAULT_SUNRISE_H);
    let sunset_h = common::within_or(config.sunset_h, 0.0, 24.0, DEFAULT_SUNSET_H);
    if sunrise_h >= sunset_h {
        (DEFAULT_SUNRISE_H, DEFAULT_SUNSET_H)
    } else {
        (sunrise_h, sunset_h)
    }
}

/// The `utc_offset_min` that puts local midday (halfway between sunrise and sunset, the
/// top of the sun curve) of the PV `config` at `at`, whatever the real time of day.
///
/// For demos: the sun curve stays the real one and only the clock face moves, so a PV
/// started with this offset produces near its peak for the next hours. Whole minutes in
/// `-720..720`, inside what [`SimConfig::validate`] accepts.
pub fn utc_offset_for_midday_at(config: &SimConfig, at: SystemTime) -> i32 {
    let (sunrise_h, sunset_h) = daylight(config);
    let midday_h = (sunrise_h + sunset_h) / 2.0;
    let utc_h = common::local_hour(unix_secs(at), 0);
    let offset_min = ((midday_h - utc_h) * 60.0).round() as i32;
    (offset_min + 720).rem_euclid(1440) - 720
}

/// A simulated PV inverter: production (negative power) follows a half-sine between
/// sunrise and sunset, dimmed by deterministic clouds, and curtailed by a limit.
pub struct PvInverter {
    id: String,
    sun: SunCurve,
    clock: Arc<dyn Clock>,
    /// The lower power bound (most production allowed) while a limit is active.
    floor_w: Option<Watts>,
    active: Option<Command>,
    energy: EnergyCounter,
}

impl PvInverter {
    /// A PV inverter from the `pv` parameters of `config`; nonsense falls back to defaults.
    pub fn new(id: &str, config: &SimConfig, clock: Arc<dyn Clock>) -> Self {
        let (sunrise_h, sunset_h) = daylight(config);
        let sun = SunCurve {
            rated_w: common::positive_or(config.rated_w, DEFAULT_RATED_W),
            sunrise_h,
            sunset_h,
            cloudiness: common::within_or(config.cloudiness, 0.0, 1.0, DEFAULT_CLOUDINESS),
            utc_offset_min: config.utc_offset_min.unwrap_or(0),
            seed: noise::seed_from(id),
        };
        let now = unix_secs(clock.now());
        Self {
            id: id.to_string(),
            sun,
            clock,
            floor_w: None,
            active: None,
            energy: EnergyCounter::new(now),
        }
    }

    /// Brings the energy counter up to now under the limit in force until now.
    fn advance(&mut self) -> f64 {
        let now = unix_secs(self.clock.now());
        let (sun, floor) = (&self.sun, self.floor_w);
        self.energy.advance(now, |t| sun.power_w(t, floor));
        now
    }

    fn set_limit(
        &mut self,
        command: &Command,
        min_w: Option<Watts>,
        max_w: Option<Watts>,
    ) -> Result<(), DeviceError> {
        if let Some(lo) = min_w
            && !(lo.is_finite() && lo <= 0.0)
        {
            return Err(DeviceError::Refused(format!(
                "a PV inverter can only curtail production: lower bound {lo} W must be 0 or less"
            )));
        }
        if let Some(hi) = max_w
            && !(hi.is_finite() && hi >= 0.0)
        {
            return Err(DeviceError::Refused(format!(
                "a PV inverter cannot be made to produce: upper bound {hi} W must be 0 or more"
            )));
        }
        self.floor_w = min_w;
        self.active = Some(command.clone());
        Ok(())
    }
}

#[async_trait]
impl Device for PvInverter {
    fn info(&self) -> DeviceInfo {
        let mut info = common::info(&self.id, DeviceKind::PvInverter, "Simulated PV inverter");
        info.control = vec![
            ControlCapability::NotControllable,
            ControlCapability::PowerEnvelope {
                min_w: -self.sun.rated_w,
                max_w: 0.0,
            },
        ];
        info
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        let now = self.advance();
        Ok(Readings {
            power_w: self.sun.power_w(now, self.floor_w),
            phase_power_w: None,
            energy_wh: Some(self.energy.wh()),
            soc: None,
            status: DeviceStatus::Ok,
            active: self.active.clone(),
            ..Readings::default()
        })
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        self.advance();
        tracing::debug!(device = %self.id, command = %command.summary(), "sim pv");
        match command {
            Command::Release => {
                self.floor_w = None;
                self.active = None;
                Ok(())
            }
            Command::LimitPower { min_w, max_w } => self.set_limit(command, *min_w, *max_w),
            other => Err(DeviceError::Refused(format!(
                "a PV inverter takes a power limit or release, not {}",
                other.summary()
            ))),
        }
    }
}
