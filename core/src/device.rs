//! The `Device` trait: what the virtual RM engine needs from a device, and nothing of S2.
//!
//! A device adapter (Modbus, MQTT, BLE, sim) turns its wire into [`Readings`] and carries
//! out [`Command`]s. It describes what it can do with [`ControlCapability`]s; the virtual
//! RM engine turns those into S2 descriptions and S2 instructions back into commands.

use async_trait::async_trait;
use serde::Serialize;

/// Power convention everywhere in s2gw: watts, consumption positive, production negative
/// (the S2 convention).
pub type Watts = f64;

/// The static facts about a device, read once.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// What kind of thing it is, for people and for discovery.
    pub kind: DeviceKind,
    /// Manufacturer, where the device says.
    pub manufacturer: Option<String>,
    /// Model name, where the device says.
    pub model: Option<String>,
    /// Serial number, where the device says.
    pub serial: Option<String>,
    /// Firmware version, where the device says.
    pub firmware: Option<String>,
    /// Whether power is reported per phase (three values) or as one total.
    pub three_phase: bool,
    /// Everything the device can be told to do, in order of preference.
    pub control: Vec<ControlCapability>,
}

/// A state of charge as a device reported it, if it is one: a value outside 0–100 % (a
/// garbled answer, an unimplemented point's filler under a wild scale factor) is no
/// reading, because S2 would be told a fill level outside the range the RM announced.
/// Found by the Modbus fuzz target (42,360 % from a SunSpec battery's ChaState).
pub fn plausible_soc(soc: Option<f64>) -> Option<f64> {
    soc.filter(|pct| (0.0..=100.0).contains(pct))
}

/// Kinds of devices, which pick the S2 role and the Home Assistant icons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A PV inverter: produces.
    PvInverter,
    /// An EV charger: consumes.
    EvCharger,
    /// A home battery: both.
    Battery,
    /// A heat pump: consumes.
    HeatPump,
    /// A meter: measures whatever is behind it.
    #[default]
    Meter,
    /// Any other consumer.
    Load,
}

/// One way a device can be controlled; each maps to an S2 control type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlCapability {
    /// Measurements only (S2 NOT_CONTROLABLE).
    NotControllable,
    /// A power envelope: the device can be limited anywhere in `[min_w, max_w]`
    /// (S2 PEBC). A PV inverter has `min_w` = -rated power and `max_w` = 0.
    PowerEnvelope {
        /// The most negative limit the device accepts (production).
        min_w: Watts,
        /// The most positive limit the device accepts (consumption).
        max_w: Watts,
    },
    /// A storage whose fill rate can be set (S2 FRBC): a battery.
    Storage {
        /// Usable capacity in watt-hours.
        capacity_wh: f64,
        /// Largest charging power (positive).
        max_charge_w: Watts,
        /// Largest discharging power (positive number, produced power).
        max_discharge_w: Watts,
        /// Lowest state of charge the device allows, in percent.
        min_soc: f64,
        /// Highest state of charge the device allows, in percent.
        max_soc: f64,
    },
    /// A task to be done within a window, in one of several programmes (S2 PPBC): a
    /// dishwasher, a washing machine. The window and progress come with the readings
    /// ([`Readings::task`]).
    PowerProfile {
        /// The programmes the user allows for the task, the appliance's own choice first
        /// (what it runs when it starts by itself).
        programmes: Vec<ProgrammeSpec>,
    },
    /// A demand that must be met, by one or more actuators that can each meet it their own
    /// way (S2 DDBC): a hybrid heat pump's heat pump and gas boiler. The demand and what
    /// each actuator does come with the readings ([`Readings::demand`]).
    DemandDriven {
        /// The actuators.
        actuators: Vec<ActuatorSpec>,
        /// How long each value of [`DemandState::forecast`] covers, in seconds.
        forecast_step_s: u64,
    },
    /// Discrete operation modes (S2 OMBC): SG-Ready states, charger current steps.
    OperationModes {
        /// The modes, the device's autonomous default marked.
        modes: Vec<ModeSpec>,
        /// Minimum time a mode must stay on before it may change, in seconds.
        min_on_s: u64,
        /// Minimum time after a switch before switching back, in seconds.
        min_off_s: u64,
    },
}

/// One discrete operation mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeSpec {
    /// A short stable name (`"normal"`, `"16A-3p"`), unique within the device.
    pub name: String,
    /// What a person reads.
    pub label: String,
    /// The power range the mode implies.
    pub min_w: Watts,
    /// The power range the mode implies.
    pub max_w: Watts,
    /// What the device is told to enter the mode.
    pub command: Command,
    /// Whether this is what the device does on its own.
    pub is_default: bool,
}

impl ModeSpec {
    /// A mode entered by [`Command::SetMode`] with its own name: what every profile-driven
    /// adapter (Modbus, MQTT, BLE) declares from a profile's mode table.
    pub fn by_name(
        name: &str,
        label: Option<&str>,
        min_w: Watts,
        max_w: Watts,
        is_default: bool,
    ) -> Self {
        Self {
            name: name.to_string(),
            label: label.unwrap_or(name).to_string(),
            min_w,
            max_w,
            command: Command::SetMode {
                mode: name.to_string(),
            },
            is_default,
        }
    }
}

/// One programme of an appliance's task (PPBC).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgrammeSpec {
    /// A short stable name (`"eco"`), unique within the device.
    pub name: String,
    /// What a person reads.
    pub label: String,
    /// Its phases, in order.
    pub phases: Vec<PhaseSpec>,
    /// Whether it may be paused once started (an interruptible drying phase).
    pub interruptible: bool,
}

impl ProgrammeSpec {
    /// How long the whole programme takes, in seconds.
    pub fn duration_s(&self) -> u64 {
        self.phases.iter().map(|p| p.duration_s).sum()
    }
}

/// One phase of a programme: a power, for a while.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseSpec {
    /// How long it lasts, in seconds.
    pub duration_s: u64,
    /// The power it draws.
    pub power_w: Watts,
}

/// What an actuator of a demand-driven device uses to meet the demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fuel {
    /// Electricity (a heat pump): its power is in W.
    Electricity,
    /// Natural gas (a boiler): its power is the gas's heat input in W.
    Gas,
}

/// One actuator of a demand-driven device (DDBC).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActuatorSpec {
    /// A short stable name (`"heat_pump"`), unique within the device.
    pub name: String,
    /// What a person reads.
    pub label: String,
    /// What it runs on.
    pub fuel: Fuel,
    /// Its modes, the one it runs in on its own marked.
    pub modes: Vec<SupplyModeSpec>,
    /// Minimum time a mode must stay on before it may change, in seconds.
    pub min_on_s: u64,
}

/// One mode of a demand-driven actuator: what it supplies, and at what power, from factor
/// 0 to factor 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SupplyModeSpec {
    /// A short stable name (`"on"`), unique within the actuator.
    pub name: String,
    /// What a person reads.
    pub label: String,
    /// The supply at factor 0 (in the demand's unit, e.g. W thermal).
    pub supply_min: f64,
    /// The supply at factor 1.
    pub supply_max: f64,
    /// The power (of the actuator's fuel) at factor 0.
    pub power_min_w: Watts,
    /// The power at factor 1.
    pub power_max_w: Watts,
    /// Whether this is what the actuator does on its own.
    pub is_default: bool,
}

/// What the engine tells a device to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Back to autonomous behaviour: limit removed, default current, SG-Ready normal.
    /// The fail-safe: sent on link loss, deselection, terminate and expired validity.
    Release,
    /// Keep the power within these bounds (either may be open).
    LimitPower {
        /// Lower bound (most negative = most production allowed).
        min_w: Option<Watts>,
        /// Upper bound.
        max_w: Option<Watts>,
    },
    /// Run at this power (battery: positive charges, negative discharges).
    SetPower {
        /// The setpoint.
        watts: Watts,
    },
    /// Charge at this current per phase; 0 switches charging off.
    SetCurrent {
        /// Amperes per phase.
        amps: f64,
        /// Number of phases, 1 or 3.
        phases: u8,
    },
    /// Enter a named mode (see [`ModeSpec::name`]).
    SetMode {
        /// The mode.
        mode: String,
    },
    /// Start the task with this programme now (PPBC; see [`ProgrammeSpec::name`]).
    StartProgramme {
        /// The programme.
        programme: String,
    },
    /// Pause the running programme (PPBC interruption).
    Pause,
    /// Resume the paused programme.
    Resume,
    /// Put one actuator of a demand-driven device in a mode, at a factor (DDBC).
    SetActuator {
        /// The actuator ([`ActuatorSpec::name`]).
        actuator: String,
        /// The mode ([`SupplyModeSpec::name`]).
        mode: String,
        /// Where between the mode's factor 0 and 1, in `[0, 1]`.
        factor: f64,
    },
}

impl Command {
    /// A short human summary, for logs and the demo view.
    pub fn summary(&self) -> String {
        match self {
            Command::Release => "autonomous".to_string(),
            Command::LimitPower { min_w, max_w } => match (min_w, max_w) {
                (Some(lo), Some(hi)) => format!("limit {lo:.0}..{hi:.0} W"),
                (Some(lo), None) => format!("limit >= {lo:.0} W"),
                (None, Some(hi)) => format!("limit <= {hi:.0} W"),
                (None, None) => "no limit".to_string(),
            },
            Command::SetPower { watts } => format!("setpoint {watts:.0} W"),
            Command::SetCurrent { amps, phases } if *amps <= 0.0 => {
                format!("charging off ({phases}p)")
            }
            Command::SetCurrent { amps, phases } => format!("{amps:.0} A x {phases}p"),
            Command::SetMode { mode } => format!("mode {mode}"),
            Command::StartProgramme { programme } => format!("start {programme}"),
            Command::Pause => "paused".to_string(),
            Command::Resume => "resumed".to_string(),
            Command::SetActuator {
                actuator,
                mode,
                factor,
            } => format!("{actuator} {mode} at {:.0} %", factor * 100.0),
        }
    }
}

/// Whether the device can be relied on right now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Reachable and reporting.
    #[default]
    Ok,
    /// Reachable but reporting a fault of its own.
    Fault(String),
    /// Not reachable, or its values are stale: no measurements are made up.
    Unavailable(String),
}

/// One poll's worth of values.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Readings {
    /// Total active power, consumption positive.
    pub power_w: Watts,
    /// Per-phase active power, where the device reports it.
    pub phase_power_w: Option<[Watts; 3]>,
    /// Lifetime (or session) energy in watt-hours, where known.
    pub energy_wh: Option<f64>,
    /// State of charge in percent, for storage.
    pub soc: Option<f64>,
    /// Whether the values can be trusted.
    pub status: DeviceStatus,
    /// The command the device is following, as far as it reports one.
    pub active: Option<Command>,
    /// An appliance's task (PPBC), while it has one.
    pub task: Option<TaskState>,
    /// A demand-driven device's demand and actuators (DDBC).
    pub demand: Option<DemandState>,
}

/// An appliance's task: its window and how far it got (PPBC).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskState {
    /// Numbers the task: a new number is a new task (the user loaded it again).
    pub task_id: u64,
    /// The earliest it may start.
    pub earliest_start: std::time::SystemTime,
    /// When it must be done.
    pub latest_end: std::time::SystemTime,
    /// When the appliance starts by itself, with its own programme, if nobody started it:
    /// its fail-safe (it always runs).
    pub own_start: std::time::SystemTime,
    /// How far it got.
    pub progress: TaskProgress,
}

/// How far a task got.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskProgress {
    /// Not started.
    Waiting,
    /// Running a programme.
    Running {
        /// Which.
        programme: String,
        /// For how long so far (pauses excluded), in seconds.
        elapsed_s: f64,
    },
    /// Paused in a programme.
    Paused {
        /// Which.
        programme: String,
        /// For how long it ran before the pause, in seconds.
        elapsed_s: f64,
    },
    /// Done.
    Finished {
        /// Which programme it ran.
        programme: String,
    },
}

/// A demand-driven device's state (DDBC).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemandState {
    /// The demand to meet now, in the actuators' supply unit (e.g. W thermal).
    pub demand: f64,
    /// The expected demand ahead, one value per `forecast_step_s` of the capability.
    pub forecast: Vec<f64>,
    /// What each actuator does now.
    pub actuators: Vec<ActuatorState>,
}

/// What one actuator does now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActuatorState {
    /// The actuator ([`ActuatorSpec::name`]).
    pub actuator: String,
    /// Its mode ([`SupplyModeSpec::name`]).
    pub mode: String,
    /// Where in the mode, in `[0, 1]`.
    pub factor: f64,
}

/// Why a device could not be read or commanded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    /// The device did not answer or the connection is down; worth retrying.
    #[error("device unreachable: {0}")]
    Unreachable(String),
    /// The device refused the command (out of range, not supported, exception).
    #[error("device refused: {0}")]
    Refused(String),
    /// The write went out but reading it back showed something else.
    #[error("write not confirmed: {0}")]
    NotConfirmed(String),
}

/// A device the virtual RM engine can drive.
///
/// Implementations own their connection and do their own retries below one call; a call
/// that fails returns an error rather than blocking, so one misbehaving device never stalls
/// the engine.
#[async_trait]
pub trait Device: Send {
    /// Static facts, known once the device was first reached.
    fn info(&self) -> DeviceInfo;

    /// Read the current values.
    async fn read(&mut self) -> Result<Readings, DeviceError>;

    /// Carry out a command; returns once the device confirmed it where it can.
    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError>;
}

#[cfg(test)]
mod tests {
    use super::plausible_soc;

    #[test]
    fn a_state_of_charge_outside_0_to_100_percent_is_no_reading() {
        assert_eq!(plausible_soc(Some(42.5)), Some(42.5));
        assert_eq!(plausible_soc(Some(0.0)), Some(0.0));
        assert_eq!(plausible_soc(Some(100.0)), Some(100.0));
        assert_eq!(plausible_soc(Some(42_360.0)), None);
        assert_eq!(plausible_soc(Some(-0.1)), None);
        assert_eq!(plausible_soc(Some(f64::NAN)), None);
        assert_eq!(plausible_soc(None), None);
    }
}
