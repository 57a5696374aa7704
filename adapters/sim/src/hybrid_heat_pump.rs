//! A hybrid heat pump: a heat pump and a gas boiler serving one heat demand. On its own
//! it runs the heat pump first and the boiler for what the heat pump cannot cover; an
//! actuator the CEM set keeps its setting until released, and the other one covers the
//! rest of the demand.

use std::f64::consts::TAU;
use std::sync::Arc;

use async_trait::async_trait;
use s2gw_core::device::{
    ActuatorSpec, ActuatorState, ControlCapability, DemandState, DeviceInfo, DeviceKind, Fuel,
    SupplyModeSpec, Watts,
};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Readings};

use crate::clock::{Clock, unix_secs};
use crate::common::{self, EnergyCounter};
use crate::config::SimConfig;
use crate::noise;

const DEFAULT_DEMAND_W: f64 = 5000.0;
const DEFAULT_COP: f64 = 3.5;
const HEAT_PUMP_MIN_W: f64 = 1500.0;
const HEAT_PUMP_MAX_W: f64 = 6000.0;
const BOILER_MIN_W: f64 = 3000.0;
const BOILER_MAX_W: f64 = 20_000.0;
/// Heat out per unit of gas heat in.
const BOILER_EFFICIENCY: f64 = 0.95;
const DEFAULT_MIN_ON_S: u64 = 300;
/// The demand ahead, hour by hour.
const FORECAST_STEP_S: u64 = 3600;
const FORECAST_STEPS: u64 = 6;
/// The boiler's circulation pump and controls draw this electricity while it burns.
const BOILER_AUX_W: Watts = 40.0;

/// What one actuator does: a mode and a factor.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Setting {
    on: bool,
    factor: f64,
}

/// A simulated hybrid heat pump.
pub struct HybridHeatPump {
    id: String,
    demand_w: f64,
    cop: f64,
    min_on_s: u64,
    seed: u64,
    /// What the CEM set, per actuator (heat pump, boiler); `None` runs on its own.
    commanded: [Option<Setting>; 2],
    /// When the heat pump last changed mode (compressor protection).
    heat_pump_since: Option<f64>,
    heat_pump_on: bool,
    active: Option<Command>,
    clock: Arc<dyn Clock>,
    energy: EnergyCounter,
}

impl HybridHeatPump {
    /// A hybrid heat pump from the `hybrid_heat_pump` parameters of `config`.
    pub fn new(id: &str, config: &SimConfig, clock: Arc<dyn Clock>) -> Self {
        let now = unix_secs(clock.now());
        Self {
            id: id.to_string(),
            demand_w: common::positive_or(config.heat_demand_w, DEFAULT_DEMAND_W),
            cop: common::positive_or(config.cop, DEFAULT_COP),
            min_on_s: config.min_on_s.unwrap_or(DEFAULT_MIN_ON_S),
            seed: noise::seed_from(id),
            commanded: [None, None],
            heat_pump_since: None,
            heat_pump_on: true,
            active: None,
            clock,
            energy: EnergyCounter::new(now),
        }
    }

    /// The heat demand at `t`: colder at night, with a little wander.
    fn demand_at(&self, t: f64) -> f64 {
        let day = (TAU * (t % 86_400.0) / 86_400.0).cos();
        let wander = 0.1 * (2.0 * noise::smooth(self.seed, t, 1800.0) - 1.0);
        (self.demand_w * (1.0 + 0.3 * day + wander)).max(0.0)
    }

    /// Both actuators' settings at `t`: the CEM's where it set one; the device's own
    /// rule for the other, covering what is left of the demand (heat pump first, the
    /// boiler for the rest).
    fn settings(&self, t: f64) -> [Setting; 2] {
        let demand = self.demand_at(t);
        let boiler_set = self.commanded[1].map_or(0.0, |s| supply_of(1, s));
        let heat_pump = self.commanded[0].unwrap_or_else(|| own_setting(0, demand - boiler_set));
        let boiler =
            self.commanded[1].unwrap_or_else(|| own_setting(1, demand - supply_of(0, heat_pump)));
        [heat_pump, boiler]
    }

    fn electric_w(&self, t: f64) -> Watts {
        let [heat_pump, boiler] = self.settings(t);
        let aux = if boiler.on { BOILER_AUX_W } else { 0.0 };
        supply_of(0, heat_pump) / self.cop + aux
    }

    fn advance(&mut self) -> f64 {
        let now = unix_secs(self.clock.now());
        let this = &*self;
        let mut energy = this.energy.clone();
        energy.advance(now, |t| this.electric_w(t));
        self.energy = energy;
        let on = self.settings(now)[0].on;
        if on != self.heat_pump_on {
            self.heat_pump_on = on;
            self.heat_pump_since = Some(now);
        }
        now
    }

    fn actuators(&self) -> Vec<ActuatorSpec> {
        let mode = |name: &str, label: &str, supply: (f64, f64), power: (f64, f64), default| {
            SupplyModeSpec {
                name: name.to_string(),
                label: label.to_string(),
                supply_min: supply.0,
                supply_max: supply.1,
                power_min_w: power.0,
                power_max_w: power.1,
                is_default: default,
            }
        };
        vec![
            ActuatorSpec {
                name: "heat_pump".to_string(),
                label: "heat pump".to_string(),
                fuel: Fuel::Electricity,
                modes: vec![
                    mode("off", "heat pump off", (0.0, 0.0), (0.0, 0.0), false),
                    mode(
                        "on",
                        "heat pump on",
                        (HEAT_PUMP_MIN_W, HEAT_PUMP_MAX_W),
                        (HEAT_PUMP_MIN_W / self.cop, HEAT_PUMP_MAX_W / self.cop),
                        true,
                    ),
                ],
                min_on_s: self.min_on_s,
            },
            ActuatorSpec {
                name: "boiler".to_string(),
                label: "gas boiler".to_string(),
                fuel: Fuel::Gas,
                modes: vec![
                    mode("off", "boiler off", (0.0, 0.0), (0.0, 0.0), true),
                    mode(
                        "on",
                        "boiler on",
                        (BOILER_MIN_W, BOILER_MAX_W),
                        (
                            BOILER_MIN_W / BOILER_EFFICIENCY,
                            BOILER_MAX_W / BOILER_EFFICIENCY,
                        ),
                        false,
                    ),
                ],
                min_on_s: 0,
            },
        ]
    }

    fn demand_state(&self, now: f64) -> DemandState {
        let settings = self.settings(now);
        let state = |i: usize, name: &str| ActuatorState {
            actuator: name.to_string(),
            mode: if settings[i].on { "on" } else { "off" }.to_string(),
            factor: if settings[i].on {
                settings[i].factor
            } else {
                0.0
            },
        };
        // The forecast steps on whole hours, so it changes once an hour, not every read.
        let hour = (now / FORECAST_STEP_S as f64).floor() * FORECAST_STEP_S as f64;
        DemandState {
            demand: self.demand_at(now).round(),
            forecast: (0..FORECAST_STEPS)
                .map(|i| self.demand_at(hour + (i * FORECAST_STEP_S) as f64).round())
                .collect(),
            actuators: vec![state(0, "heat_pump"), state(1, "boiler")],
        }
    }

    fn set(
        &mut self,
        now: f64,
        actuator: &str,
        mode: &str,
        factor: f64,
    ) -> Result<(), DeviceError> {
        let index = match actuator {
            "heat_pump" => 0,
            "boiler" => 1,
            other => return Err(DeviceError::Refused(format!("no actuator {other:?}"))),
        };
        let on = match mode {
            "on" => true,
            "off" => false,
            other => return Err(DeviceError::Refused(format!("no mode {other:?}"))),
        };
        if !(0.0..=1.0).contains(&factor) {
            return Err(DeviceError::Refused(format!(
                "factor {factor} is outside 0..1"
            )));
        }
        if index == 0 && on != self.heat_pump_on {
            let ran = self
                .heat_pump_since
                .map_or(f64::INFINITY, |since| now - since);
            if ran < self.min_on_s as f64 {
                return Err(DeviceError::Refused(format!(
                    "the compressor must stay {} for another {:.0} s",
                    if self.heat_pump_on { "on" } else { "off" },
                    self.min_on_s as f64 - ran
                )));
            }
        }
        self.commanded[index] = Some(Setting { on, factor });
        Ok(())
    }
}

/// What an actuator does on its own to supply `heat` (off when nothing is left to do).
fn own_setting(actuator: usize, heat: f64) -> Setting {
    let (lo, hi) = range_of(actuator);
    Setting {
        on: heat > 0.0,
        factor: (heat.clamp(lo, hi) - lo) / (hi - lo),
    }
}

fn range_of(actuator: usize) -> (f64, f64) {
    if actuator == 0 {
        (HEAT_PUMP_MIN_W, HEAT_PUMP_MAX_W)
    } else {
        (BOILER_MIN_W, BOILER_MAX_W)
    }
}

/// The heat an actuator supplies with `setting`.
fn supply_of(actuator: usize, setting: Setting) -> f64 {
    let (lo, hi) = range_of(actuator);
    if setting.on {
        lo + (hi - lo) * setting.factor.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[async_trait]
impl Device for HybridHeatPump {
    fn info(&self) -> DeviceInfo {
        let mut info = common::info(&self.id, DeviceKind::HeatPump, "Simulated hybrid heat pump");
        info.control = vec![
            ControlCapability::DemandDriven {
                actuators: self.actuators(),
                forecast_step_s: FORECAST_STEP_S,
            },
            ControlCapability::NotControllable,
        ];
        info
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        let now = self.advance();
        Ok(Readings {
            power_w: self.electric_w(now),
            energy_wh: Some(self.energy.wh()),
            status: DeviceStatus::Ok,
            active: self.active.clone(),
            demand: Some(self.demand_state(now)),
            ..Readings::default()
        })
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        let now = self.advance();
        tracing::debug!(device = %self.id, command = %command.summary(), "sim hybrid heat pump");
        match command {
            Command::Release => {
                self.commanded = [None, None];
                self.active = None;
                Ok(())
            }
            Command::SetActuator {
                actuator,
                mode,
                factor,
            } => {
                self.set(now, actuator, mode, *factor)?;
                self.active = Some(command.clone());
                Ok(())
            }
            other => Err(DeviceError::Refused(format!(
                "a hybrid heat pump takes an actuator mode or release, not `{}`",
                other.summary()
            ))),
        }
    }
}
