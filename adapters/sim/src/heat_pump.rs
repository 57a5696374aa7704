//! An SG-Ready heat pump: four states on two relays, with compressor protection timers.

use std::sync::Arc;

use async_trait::async_trait;
use s2gw_core::device::{ControlCapability, DeviceInfo, DeviceKind, ModeSpec, Watts};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Readings};

use crate::clock::{Clock, unix_secs};
use crate::common::{self, EnergyCounter};
use crate::config::SimConfig;
use crate::noise;

const DEFAULT_FORCED_W: f64 = 3500.0;
const DEFAULT_MIN_ON_S: u64 = 600;
const DEFAULT_MIN_OFF_S: u64 = 300;
/// How much the compressor's draw wanders around its nominal power.
const WOBBLE: f64 = 0.05;
const WOBBLE_PERIOD_S: f64 = 300.0;

/// The four SG-Ready states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SgState {
    Blocked,
    Normal,
    Recommended,
    Forced,
}

impl SgState {
    const ALL: [SgState; 4] = [
        SgState::Blocked,
        SgState::Normal,
        SgState::Recommended,
        SgState::Forced,
    ];

    fn name(self) -> &'static str {
        match self {
            SgState::Blocked => "blocked",
            SgState::Normal => "normal",
            SgState::Recommended => "recommended",
            SgState::Forced => "forced",
        }
    }

    fn label(self) -> &'static str {
        match self {
            SgState::Blocked => "SG-Ready 1: blocked by the utility",
            SgState::Normal => "SG-Ready 2: normal operation",
            SgState::Recommended => "SG-Ready 3: switch-on recommended",
            SgState::Forced => "SG-Ready 4: switch-on forced",
        }
    }

    /// Nominal power as a share of the "forced" power (1.5 / 2.5 / 3.5 kW by default).
    fn share(self) -> f64 {
        match self {
            SgState::Blocked => 0.0,
            SgState::Normal => 3.0 / 7.0,
            SgState::Recommended => 5.0 / 7.0,
            SgState::Forced => 1.0,
        }
    }

    fn parse(name: &str) -> Option<SgState> {
        SgState::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A simulated SG-Ready heat pump. A commanded state change inside the minimum on time
/// (or, from "blocked", the minimum off time) is refused, as the controller protects its
/// compressor; release returns to "normal" at once, because the fail-safe must not wait.
pub struct HeatPump {
    id: String,
    forced_w: Watts,
    min_on_s: u64,
    min_off_s: u64,
    seed: u64,
    state: SgState,
    /// When the current state was entered; `None` for the state found at start, which
    /// has been running long enough.
    since: Option<f64>,
    active: Option<Command>,
    clock: Arc<dyn Clock>,
    energy: EnergyCounter,
}

/// The draw in `state` at `t`, wobbling a little around the nominal power.
fn draw_w(state: SgState, forced_w: Watts, seed: u64, t: f64) -> Watts {
    let wobble = 1.0 + WOBBLE * (2.0 * noise::smooth(seed, t, WOBBLE_PERIOD_S) - 1.0);
    forced_w * state.share() * wobble
}

impl HeatPump {
    /// A heat pump from the `heat_pump` parameters of `config`; nonsense falls back to
    /// defaults.
    pub fn new(id: &str, config: &SimConfig, clock: Arc<dyn Clock>) -> Self {
        let now = unix_secs(clock.now());
        Self {
            id: id.to_string(),
            forced_w: common::positive_or(config.rated_w, DEFAULT_FORCED_W),
            min_on_s: config.min_on_s.unwrap_or(DEFAULT_MIN_ON_S),
            min_off_s: config.min_off_s.unwrap_or(DEFAULT_MIN_OFF_S),
            seed: noise::seed_from(id),
            state: SgState::Normal,
            since: None,
            active: None,
            clock,
            energy: EnergyCounter::new(now),
        }
    }

    fn advance(&mut self) -> f64 {
        let now = unix_secs(self.clock.now());
        let (state, forced_w, seed) = (self.state, self.forced_w, self.seed);
        self.energy
            .advance(now, |t| draw_w(state, forced_w, seed, t));
        now
    }

    /// Refuses leaving the current state before its minimum time is up.
    fn check_timer(&self, now: f64, to: SgState) -> Result<(), DeviceError> {
        let Some(since) = self.since else {
            return Ok(());
        };
        let (minimum, which) = if self.state == SgState::Blocked {
            (self.min_off_s, "off")
        } else {
            (self.min_on_s, "on")
        };
        let remaining = (minimum as f64 - (now - since)).ceil();
        if remaining > 0.0 {
            return Err(DeviceError::Refused(format!(
                "cannot switch from {} to {} for another {remaining:.0} s (minimum {which} time {minimum} s)",
                self.state.name(),
                to.name(),
            )));
        }
        Ok(())
    }

    fn enter(&mut self, now: f64, to: SgState) {
        if to != self.state {
            self.state = to;
            self.since = Some(now);
        }
    }

    fn set_mode(&mut self, now: f64, command: &Command, mode: &str) -> Result<(), DeviceError> {
        let to = SgState::parse(mode)
            .ok_or_else(|| DeviceError::Refused(format!("unknown SG-Ready state {mode:?}")))?;
        if to != self.state {
            self.check_timer(now, to)?;
        }
        self.enter(now, to);
        self.active = Some(command.clone());
        Ok(())
    }

    fn mode_spec(&self, s: SgState) -> ModeSpec {
        let nominal = self.forced_w * s.share();
        ModeSpec {
            name: s.name().to_string(),
            label: s.label().to_string(),
            min_w: nominal * (1.0 - WOBBLE),
            max_w: nominal * (1.0 + WOBBLE),
            command: Command::SetMode {
                mode: s.name().to_string(),
            },
            is_default: s == SgState::Normal,
        }
    }
}

#[async_trait]
impl Device for HeatPump {
    fn info(&self) -> DeviceInfo {
        let mut info = common::info(
            &self.id,
            DeviceKind::HeatPump,
            "Simulated SG-Ready heat pump",
        );
        info.control = vec![
            ControlCapability::NotControllable,
            ControlCapability::OperationModes {
                modes: SgState::ALL
                    .into_iter()
                    .map(|s| self.mode_spec(s))
                    .collect(),
                min_on_s: self.min_on_s,
                min_off_s: self.min_off_s,
            },
        ];
        info
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        let now = self.advance();
        Ok(Readings {
            power_w: draw_w(self.state, self.forced_w, self.seed, now),
            phase_power_w: None,
            energy_wh: Some(self.energy.wh()),
            soc: None,
            status: DeviceStatus::Ok,
            active: self.active.clone(),
            ..Readings::default()
        })
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        let now = self.advance();
        tracing::debug!(device = %self.id, command = %command.summary(), "sim heat pump");
        match command {
            Command::Release => {
                self.enter(now, SgState::Normal);
                self.active = None;
                Ok(())
            }
            Command::SetMode { mode } => self.set_mode(now, command, mode),
            other => Err(DeviceError::Refused(format!(
                "an SG-Ready heat pump takes a state or release, not {}",
                other.summary()
            ))),
        }
    }
}
