//! An EV charger with discrete current steps, one or three phases.

use std::sync::Arc;

use async_trait::async_trait;
use s2gw_core::device::{ControlCapability, DeviceInfo, DeviceKind, ModeSpec, Watts};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Readings};

use crate::clock::{Clock, unix_secs};
use crate::common::{self, EnergyCounter, VOLTS};
use crate::config::SimConfig;

/// The smallest charging current a car accepts (IEC 61851), in A.
pub(crate) const MIN_CURRENT_A: f64 = 6.0;
const DEFAULT_MAX_CURRENT_A: f64 = 16.0;
/// The current steps offered as modes, besides the charger's maximum.
const STEPS_A: [f64; 3] = [6.0, 10.0, 16.0];
/// Lets a float setpoint equal to the maximum pass despite rounding.
const AMPS_EPSILON: f64 = 1e-9;

/// What the charger is set to: current per phase (0 = off) and phases.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Setting {
    amps: f64,
    phases: u8,
}

impl Setting {
    fn power_w(self) -> Watts {
        VOLTS * self.amps * f64::from(self.phases)
    }

    fn name(self) -> String {
        if self.amps <= 0.0 {
            "off".to_string()
        } else {
            format!("{:.0}A-{}p", self.amps, self.phases)
        }
    }
}

/// When a car is plugged in.
#[derive(Debug, Clone)]
enum Plug {
    Always(bool),
    /// Local hour windows `[from, to]`; `from > to` runs over midnight.
    Hours(Vec<[f64; 2]>, i32),
}

impl Plug {
    fn plugged_at(&self, t: f64) -> bool {
        match self {
            Plug::Always(p) => *p,
            Plug::Hours(windows, offset) => {
                let h = common::local_hour(t, *offset);
                windows.iter().any(|&[from, to]| {
                    if from <= to {
                        (from..to).contains(&h)
                    } else {
                        h >= from || h < to
                    }
                })
            }
        }
    }
}

/// What the charger draws at `t`: nothing while no car is plugged in.
fn draw_w(plug: &Plug, setting: Setting, t: f64) -> Watts {
    if plug.plugged_at(t) {
        setting.power_w()
    } else {
        0.0
    }
}

/// A simulated EV charger: charges at its set current whenever a car is plugged in;
/// on its own (after release) at its maximum current on all its phases.
pub struct EvCharger {
    id: String,
    max_current_a: f64,
    phases: u8,
    plug: Plug,
    setting: Setting,
    active: Option<Command>,
    clock: Arc<dyn Clock>,
    energy: EnergyCounter,
}

impl EvCharger {
    /// A charger from the `ev` parameters of `config`; nonsense falls back to defaults.
    pub fn new(id: &str, config: &SimConfig, clock: Arc<dyn Clock>) -> Self {
        let max_current_a = config
            .max_current_a
            .filter(|a| a.is_finite() && *a >= MIN_CURRENT_A)
            .unwrap_or(DEFAULT_MAX_CURRENT_A);
        let phases = if config.phases == Some(1) { 1 } else { 3 };
        let plug = match &config.plugged_hours {
            Some(windows) => Plug::Hours(windows.clone(), config.utc_offset_min.unwrap_or(0)),
            None => Plug::Always(config.plugged.unwrap_or(true)),
        };
        let now = unix_secs(clock.now());
        Self {
            id: id.to_string(),
            max_current_a,
            phases,
            plug,
            setting: Setting {
                amps: max_current_a,
                phases,
            },
            active: None,
            clock,
            energy: EnergyCounter::new(now),
        }
    }

    /// Plugs a car in or out, overriding any plug schedule (for demos and tests).
    pub fn set_plugged(&mut self, plugged: bool) {
        self.advance();
        self.plug = Plug::Always(plugged);
    }

    /// The autonomous setting: full current on every phase.
    fn default_setting(&self) -> Setting {
        Setting {
            amps: self.max_current_a,
            phases: self.phases,
        }
    }

    /// Every setting offered as a mode, from least to most power, "off" first.
    fn steps(&self) -> Vec<Setting> {
        let mut amps: Vec<f64> = STEPS_A
            .iter()
            .copied()
            .filter(|a| *a < self.max_current_a)
            .collect();
        amps.push(self.max_current_a);
        let phase_set: &[u8] = if self.phases == 3 { &[1, 3] } else { &[1] };
        let mut steps = vec![Setting {
            amps: 0.0,
            phases: self.phases,
        }];
        for &phases in phase_set {
            steps.extend(amps.iter().map(|&amps| Setting { amps, phases }));
        }
        steps.sort_by(|a, b| a.power_w().total_cmp(&b.power_w()));
        steps
    }

    fn advance(&mut self) -> f64 {
        let now = unix_secs(self.clock.now());
        let (plug, setting) = (&self.plug, self.setting);
        self.energy.advance(now, |t| draw_w(plug, setting, t));
        now
    }

    /// Checks a current/phase setpoint the way a charger's firmware would.
    fn check(&self, amps: f64, phases: u8) -> Result<Setting, DeviceError> {
        if phases != 1 && phases != 3 {
            return Err(DeviceError::Refused(format!(
                "{phases} phases: must be 1 or 3"
            )));
        }
        if phases > self.phases {
            return Err(DeviceError::Refused(format!(
                "{phases} phases asked, the charger is wired for {}",
                self.phases
            )));
        }
        if !amps.is_finite() || amps < 0.0 {
            return Err(DeviceError::Refused(format!(
                "current {amps} A is not valid"
            )));
        }
        if amps > 0.0 && amps < MIN_CURRENT_A {
            return Err(DeviceError::Refused(format!(
                "current {amps} A is below the 6 A minimum (0 A switches off)"
            )));
        }
        if amps > self.max_current_a + AMPS_EPSILON {
            return Err(DeviceError::Refused(format!(
                "current {amps} A is above the maximum of {} A",
                self.max_current_a
            )));
        }
        Ok(Setting { amps, phases })
    }

    /// The most powerful step within `max_w`; "off" when not even 6 A fits.
    fn step_within(&self, max_w: Option<Watts>) -> Result<Setting, DeviceError> {
        let Some(max_w) = max_w else {
            return Ok(self.default_setting());
        };
        if max_w.is_nan() {
            return Err(DeviceError::Refused(
                "upper bound is not a number".to_string(),
            ));
        }
        let steps = self.steps();
        let fitting = steps.iter().rev().find(|s| s.power_w() <= max_w);
        Ok(fitting.copied().unwrap_or(Setting {
            amps: 0.0,
            phases: self.phases,
        }))
    }

    fn set_mode(&self, mode: &str) -> Result<Setting, DeviceError> {
        self.steps()
            .into_iter()
            .find(|s| s.name() == mode)
            .ok_or_else(|| DeviceError::Refused(format!("unknown charging mode {mode:?}")))
    }

    /// Works out the setting a command asks for, refusing what the charger cannot do.
    fn setting_for(&self, command: &Command) -> Result<Setting, DeviceError> {
        match command {
            Command::Release => Ok(self.default_setting()),
            Command::SetCurrent { amps, phases } => self.check(*amps, *phases),
            Command::SetMode { mode } => self.set_mode(mode),
            // A charger cannot make a car draw more, so only the upper bound matters.
            Command::LimitPower { max_w, .. } => self.step_within(*max_w),
            Command::SetPower { .. }
            | Command::StartProgramme { .. }
            | Command::Pause
            | Command::Resume
            | Command::SetActuator { .. } => Err(DeviceError::Refused(format!(
                "an EV charger takes a current, a mode or a power limit, not `{}`",
                command.summary()
            ))),
        }
    }

    fn mode_spec(&self, s: Setting) -> ModeSpec {
        let label = if s.amps <= 0.0 {
            "Charging off".to_string()
        } else {
            format!("{:.0} A on {} phase(s)", s.amps, s.phases)
        };
        ModeSpec {
            name: s.name(),
            label,
            min_w: s.power_w(),
            max_w: s.power_w(),
            command: Command::SetCurrent {
                amps: s.amps,
                phases: s.phases,
            },
            is_default: s == self.default_setting(),
        }
    }
}

#[async_trait]
impl Device for EvCharger {
    fn info(&self) -> DeviceInfo {
        let mut info = common::info(&self.id, DeviceKind::EvCharger, "Simulated EV charger");
        info.three_phase = self.phases == 3;
        info.control = vec![
            ControlCapability::NotControllable,
            ControlCapability::PowerEnvelope {
                min_w: 0.0,
                max_w: self.default_setting().power_w(),
            },
            ControlCapability::OperationModes {
                modes: self
                    .steps()
                    .into_iter()
                    .map(|s| self.mode_spec(s))
                    .collect(),
                min_on_s: 0,
                min_off_s: 0,
            },
        ];
        info
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        let now = self.advance();
        let power_w = draw_w(&self.plug, self.setting, now);
        let phase_power_w = if self.setting.phases == 3 {
            [power_w / 3.0; 3]
        } else {
            [power_w, 0.0, 0.0]
        };
        Ok(Readings {
            power_w,
            phase_power_w: Some(phase_power_w),
            energy_wh: Some(self.energy.wh()),
            soc: None,
            status: DeviceStatus::Ok,
            active: self.active.clone(),
            ..Readings::default()
        })
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        self.advance();
        tracing::debug!(device = %self.id, command = %command.summary(), "sim ev");
        self.setting = self.setting_for(command)?;
        self.active = match command {
            Command::Release => None,
            other => Some(other.clone()),
        };
        Ok(())
    }
}
