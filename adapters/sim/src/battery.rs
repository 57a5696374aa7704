//! A home battery whose state of charge follows the power it is told to run at.

use std::sync::Arc;

use async_trait::async_trait;
use s2gw_core::device::{ControlCapability, DeviceInfo, DeviceKind, Watts};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Readings};

use crate::clock::{Clock, unix_secs};
use crate::common;
use crate::config::SimConfig;

const DEFAULT_CAPACITY_WH: f64 = 10_000.0;
const DEFAULT_MAX_W: f64 = 5000.0;
/// Lowest state of charge when the config does not say, in percent.
pub(crate) const DEFAULT_MIN_SOC: f64 = 5.0;
/// Highest state of charge when the config does not say, in percent.
pub(crate) const DEFAULT_MAX_SOC: f64 = 95.0;
const DEFAULT_INITIAL_SOC: f64 = 50.0;

/// A simulated home battery: lossless, so the state of charge moves by exactly the
/// integrated energy, and it stops at its state-of-charge bounds.
pub struct Battery {
    id: String,
    capacity_wh: f64,
    max_charge_w: Watts,
    max_discharge_w: Watts,
    min_soc: f64,
    max_soc: f64,
    soc: f64,
    /// What it was told to run at; the bounds may hold it at 0 W anyway.
    setpoint_w: Watts,
    active: Option<Command>,
    clock: Arc<dyn Clock>,
    last: f64,
    energy_wh: f64,
}

impl Battery {
    /// A battery from the `battery` parameters of `config`; nonsense falls back to defaults.
    pub fn new(id: &str, config: &SimConfig, clock: Arc<dyn Clock>) -> Self {
        let mut min_soc = common::within_or(config.min_soc, 0.0, 100.0, DEFAULT_MIN_SOC);
        let mut max_soc = common::within_or(config.max_soc, 0.0, 100.0, DEFAULT_MAX_SOC);
        if min_soc >= max_soc {
            (min_soc, max_soc) = (DEFAULT_MIN_SOC, DEFAULT_MAX_SOC);
        }
        let initial = common::within_or(config.initial_soc, 0.0, 100.0, DEFAULT_INITIAL_SOC);
        let now = unix_secs(clock.now());
        Self {
            id: id.to_string(),
            capacity_wh: common::positive_or(config.capacity_wh, DEFAULT_CAPACITY_WH),
            max_charge_w: common::positive_or(config.max_charge_w, DEFAULT_MAX_W),
            max_discharge_w: common::positive_or(config.max_discharge_w, DEFAULT_MAX_W),
            min_soc,
            max_soc,
            soc: initial.clamp(min_soc, max_soc),
            setpoint_w: 0.0,
            active: None,
            clock,
            last: now,
            energy_wh: 0.0,
        }
    }

    /// The power actually flowing: the setpoint, unless a bound stops it.
    fn power_w(&self) -> Watts {
        let full = self.setpoint_w > 0.0 && self.soc >= self.max_soc;
        let empty = self.setpoint_w < 0.0 && self.soc <= self.min_soc;
        if full || empty { 0.0 } else { self.setpoint_w }
    }

    /// Moves the state of charge by the energy since the last call, stopping at a bound.
    fn advance(&mut self) {
        let now = unix_secs(self.clock.now());
        let dt = (now - self.last).max(0.0);
        self.last = now;
        let wanted_wh = self.power_w() * dt / 3600.0;
        let stored_wh = self.soc / 100.0 * self.capacity_wh;
        let lo_wh = self.min_soc / 100.0 * self.capacity_wh;
        let hi_wh = self.max_soc / 100.0 * self.capacity_wh;
        let moved_wh = wanted_wh.clamp(lo_wh - stored_wh, hi_wh - stored_wh);
        self.energy_wh += moved_wh.abs();
        // Land exactly on a bound when reaching it, so float dust cannot keep it creeping.
        self.soc = if moved_wh != wanted_wh && wanted_wh > 0.0 {
            self.max_soc
        } else if moved_wh != wanted_wh {
            self.min_soc
        } else {
            (stored_wh + moved_wh) / self.capacity_wh * 100.0
        };
    }

    fn set_power(&mut self, watts: Watts) -> Result<(), DeviceError> {
        if !watts.is_finite() {
            return Err(DeviceError::Refused(format!(
                "setpoint {watts} W is not a number"
            )));
        }
        self.setpoint_w = watts.clamp(-self.max_discharge_w, self.max_charge_w);
        // Report what it follows after clamping, as a real battery reads back.
        self.active = Some(Command::SetPower {
            watts: self.setpoint_w,
        });
        Ok(())
    }
}

#[async_trait]
impl Device for Battery {
    fn info(&self) -> DeviceInfo {
        let mut info = common::info(&self.id, DeviceKind::Battery, "Simulated home battery");
        info.control = vec![
            ControlCapability::NotControllable,
            ControlCapability::Storage {
                capacity_wh: self.capacity_wh,
                max_charge_w: self.max_charge_w,
                max_discharge_w: self.max_discharge_w,
                min_soc: self.min_soc,
                max_soc: self.max_soc,
            },
        ];
        info
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        self.advance();
        Ok(Readings {
            power_w: self.power_w(),
            phase_power_w: None,
            energy_wh: Some(self.energy_wh),
            soc: Some(self.soc),
            status: DeviceStatus::Ok,
            active: self.active.clone(),
            ..Readings::default()
        })
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        self.advance();
        tracing::debug!(device = %self.id, command = %command.summary(), "sim battery");
        match command {
            Command::Release => {
                self.setpoint_w = 0.0;
                self.active = None;
                Ok(())
            }
            Command::SetPower { watts } => self.set_power(*watts),
            other => Err(DeviceError::Refused(format!(
                "a battery takes a power setpoint or release, not {}",
                other.summary()
            ))),
        }
    }
}
