//! The appliance tables of an MQTT device's profile: a task in one of several programmes
//! (`[mqtt.task]` and `[[mqtt.programmes]]`, S2 PPBC: a dishwasher) and actuators meeting
//! a demand (`[mqtt.demand]` and `[[mqtt.actuators]]`, S2 DDBC: a hybrid heat pump).
//!
//! A task's state arrives as the appliance's own strings (`"Run"`, `"Pause"`), mapped by
//! the profile to waiting / running / paused / finished (or no task). What S2 needs and
//! appliances rarely publish is derived, and said so in the profile schema: the task's
//! window starts when its state became waiting, the time it ran is counted from its state
//! changes when no elapsed or remaining time is read.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use s2gw_core::device::{
    ActuatorSpec, ControlCapability, Fuel, PhaseSpec, ProgrammeSpec, SupplyModeSpec,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::device::{CommandMap, ReadingMap};

/// A reading whose value is a string (a state, a programme, a mode), or a number or a
/// boolean taken as its JSON text (`8196`, `true`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextMap {
    /// The topic; `{device}` is replaced by the device's `device` key.
    pub topic: String,
    /// Dot-separated path into the JSON payload; empty when the payload is the bare value.
    #[serde(default)]
    pub path: String,
}

/// What an appliance's own state string means for its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStep {
    /// No task: off, door open, nothing loaded.
    None,
    /// Loaded and waiting to start (a delayed start counts: the appliance waits).
    Waiting,
    /// Running a programme.
    Running,
    /// Paused in a programme.
    Paused,
    /// Done.
    Finished,
}

/// The task's state reading and the map from the appliance's strings to [`TaskStep`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateMap {
    /// The topic; `{device}` is replaced by the device's `device` key.
    pub topic: String,
    /// Dot-separated path into the JSON payload; empty when the payload is the bare value.
    #[serde(default)]
    pub path: String,
    /// The appliance's state strings, each to `none`, `waiting`, `running`, `paused` or
    /// `finished`. A string not listed is logged and ignored (the last state holds).
    pub map: BTreeMap<String, TaskStep>,
}

/// What Release (the fail-safe) does to a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRelease {
    /// Resume a paused programme (the appliance then finishes on its own); nothing
    /// otherwise: a waiting appliance starts by itself.
    #[default]
    Resume,
    /// Nothing.
    Nothing,
}

/// `[mqtt.task]`: how an appliance's task is read and commanded (S2 PPBC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMap {
    /// The task's state (required).
    pub state: StateMap,
    /// The programme selected or running, as the appliance names it (matched against the
    /// programmes' `values`). Without it, the programme is the one last started through
    /// the gateway, else the first (the appliance's own).
    #[serde(default)]
    pub programme: Option<TextMap>,
    /// Seconds the programme has run (scaled). Exclusive with `remaining`; without
    /// either, the gateway counts the time the state was running.
    #[serde(default)]
    pub elapsed: Option<ReadingMap>,
    /// Seconds the programme has left (scaled): elapsed is its duration minus this.
    #[serde(default)]
    pub remaining: Option<ReadingMap>,
    /// When it must be done, as seconds from the message (scaled; a "finish in" value).
    /// Zero or absent: `ready_by`, else `window_h`.
    #[serde(default)]
    pub finish_in: Option<ReadingMap>,
    /// When it must be done, as Unix time in seconds (scaled; 0.001 for milliseconds).
    /// Zero or absent: `window_h`.
    #[serde(default)]
    pub ready_by: Option<ReadingMap>,
    /// Hours from when the state became waiting until it must be done, when no
    /// `finish_in` or `ready_by` value says (default 8).
    #[serde(default = "window_h")]
    pub window_h: f64,
    /// When the appliance starts by itself, as seconds from the message (scaled; a
    /// "start in" value). Zero or absent: as late as its own (first) programme still
    /// ends in time.
    #[serde(default)]
    pub start_in: Option<ReadingMap>,
    /// Starts a programme now; `{programme}` is the programme's first value.
    pub start: CommandMap,
    /// Pauses the running programme (required when a programme is interruptible).
    #[serde(default)]
    pub pause: Option<CommandMap>,
    /// Resumes the paused programme (required when a programme is interruptible).
    #[serde(default)]
    pub resume: Option<CommandMap>,
    /// What Release does: `resume` (default) or `nothing`.
    #[serde(default)]
    pub on_release: OnRelease,
}

fn window_h() -> f64 {
    8.0
}

/// One phase of a programme.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseMap {
    /// How long it lasts, s.
    pub duration_s: u64,
    /// The power it draws, W.
    pub power_w: f64,
}

/// `[[mqtt.programmes]]`: one programme of the task, the appliance's own choice first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgrammeMap {
    /// Short stable name (`eco`).
    pub name: String,
    /// For people.
    #[serde(default)]
    pub label: Option<String>,
    /// What the appliance calls it: read on `task.programme`; the first is `{programme}`
    /// in `task.start`. Default: the name.
    #[serde(default)]
    pub values: Vec<String>,
    /// Its phases, in order.
    pub phases: Vec<PhaseMap>,
    /// Whether it may be paused once started.
    #[serde(default)]
    pub interruptible: bool,
}

impl ProgrammeMap {
    /// The string the appliance uses for it.
    pub(crate) fn value(&self) -> &str {
        self.values.first().map_or(&self.name, String::as_str)
    }

    fn matches(&self, text: &str) -> bool {
        if self.values.is_empty() {
            self.name == text
        } else {
            self.values.iter().any(|v| v == text)
        }
    }

    fn duration_s(&self) -> u64 {
        self.phases.iter().map(|p| p.duration_s).sum()
    }
}

/// `[mqtt.demand]`: the demand the actuators meet (S2 DDBC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandMap {
    /// The demand now, in the actuators' supply unit (e.g. W thermal; scaled). A
    /// measurement: it goes stale after `stale_after_s` like the power.
    pub present: ReadingMap,
    /// The expected demand ahead: a JSON array of numbers at the path (each scaled), one
    /// per `forecast_step_s`.
    #[serde(default)]
    pub forecast: Option<ReadingMap>,
    /// How long each forecast value covers, s (default 3600).
    #[serde(default = "forecast_step")]
    pub forecast_step_s: u64,
}

fn forecast_step() -> u64 {
    3600
}

/// What an actuator runs on, as profiles spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FuelName {
    /// Electricity: power in W.
    Electricity,
    /// Natural gas: power is the gas's heat input in W.
    Gas,
}

/// One mode of an actuator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupplyModeMap {
    /// Short stable name (`on`), unique within the actuator.
    pub name: String,
    /// For people.
    #[serde(default)]
    pub label: Option<String>,
    /// Supply at factor 0 (the demand's unit).
    pub supply_min: f64,
    /// Supply at factor 1.
    pub supply_max: f64,
    /// Power of the actuator's fuel at factor 0, W.
    pub power_min_w: f64,
    /// Power at factor 1, W.
    pub power_max_w: f64,
    /// Whether the actuator runs in it on its own (exactly one per actuator).
    #[serde(default)]
    pub default: bool,
    /// The strings the device reports for it on the actuator's `mode` reading; the first
    /// is `{value}` in commands. Default: the name.
    #[serde(default)]
    pub values: Vec<String>,
    /// Enters the mode; default the actuator's `set`.
    #[serde(default)]
    pub command: Option<CommandMap>,
}

impl SupplyModeMap {
    fn value(&self) -> &str {
        self.values.first().map_or(&self.name, String::as_str)
    }

    fn matches(&self, text: &str) -> bool {
        if self.values.is_empty() {
            self.name == text
        } else {
            self.values.iter().any(|v| v == text)
        }
    }
}

/// `[[mqtt.actuators]]`: one actuator of a demand-driven device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActuatorMap {
    /// Short stable name (`heat_pump`), unique within the device.
    pub name: String,
    /// For people.
    #[serde(default)]
    pub label: Option<String>,
    /// `electricity` or `gas`.
    pub fuel: FuelName,
    /// Minimum time a mode must stay on, s (default 0).
    #[serde(default)]
    pub min_on_s: u64,
    /// Its mode as the device reports it (matched against the modes' `values`). Without
    /// it, the mode last set through the gateway, else the default.
    #[serde(default)]
    pub mode: Option<TextMap>,
    /// Its factor in `[0, 1]` (scaled; 0.01 for percent). Without it, the factor last
    /// set in the mode read, else 0.
    #[serde(default)]
    pub factor: Option<ReadingMap>,
    /// Puts it in a mode: `{actuator}`, `{mode}` (the name), `{value}` (the mode's first
    /// value), `{factor}` (0 to 1), `{percent}` (0 to 100). Needed unless every mode
    /// has its own `command`.
    #[serde(default)]
    pub set: Option<CommandMap>,
    /// Returns it to its own behaviour (published on Release, after `[mqtt] release`).
    #[serde(default)]
    pub release: Option<CommandMap>,
    /// Its modes.
    pub modes: Vec<SupplyModeMap>,
}

/// `(key, reason)` problems of the appliance tables, keys relative to `[mqtt]`.
pub(crate) fn validate(
    task: Option<&TaskMap>,
    programmes: &[ProgrammeMap],
    demand: Option<&DemandMap>,
    actuators: &[ActuatorMap],
    has_release: bool,
) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut push = |k: String, r: &str| problems.push((k, r.to_string()));
    match (task, programmes.is_empty()) {
        (Some(_), true) => push(
            "programmes".into(),
            "a task needs at least one [[mqtt.programmes]]",
        ),
        (None, false) => push("task".into(), "programmes need a [mqtt.task] table"),
        _ => {}
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, p) in programmes.iter().enumerate() {
        let at = format!("programmes[{i}]");
        if p.name.trim().is_empty() {
            push(format!("{at}.name"), "must not be empty");
        } else if names.contains(&p.name.as_str()) {
            push(format!("{at}.name"), "is used by another programme");
        }
        names.push(&p.name);
        if p.phases.is_empty() {
            push(format!("{at}.phases"), "needs at least one phase");
        }
        for (j, phase) in p.phases.iter().enumerate() {
            if phase.duration_s == 0 || phase.duration_s > 86_400 {
                push(format!("{at}.phases[{j}].duration_s"), "must be 1 to 86400");
            }
            if !phase.power_w.is_finite() {
                push(format!("{at}.phases[{j}].power_w"), "must be a number");
            }
        }
        for v in &p.values {
            if programmes[..i].iter().any(|o| o.matches(v)) {
                push(
                    format!("{at}.values"),
                    "a value is already another programme's",
                );
            }
        }
    }
    if let Some(t) = task {
        if t.state.map.is_empty() {
            push("task.state.map".into(), "must map the appliance's states");
        }
        for needed in [TaskStep::Waiting, TaskStep::Running] {
            if !t.state.map.values().any(|s| *s == needed) {
                push(
                    "task.state.map".into(),
                    "must map at least one state to waiting and one to running",
                );
                break;
            }
        }
        if t.elapsed.is_some() && t.remaining.is_some() {
            push(
                "task.remaining".into(),
                "give elapsed or remaining, not both",
            );
        }
        if !(t.window_h > 0.0 && t.window_h <= 168.0) {
            push(
                "task.window_h".into(),
                "must be more than 0 and at most 168",
            );
        }
        if programmes.len() > 1 && !uses(&t.start, "{programme}") {
            push(
                "task.start".into(),
                "must say which programme: put {programme} in its topic or payload",
            );
        }
        if programmes.iter().any(|p| p.interruptible) {
            let why = "needed: a programme is interruptible";
            if t.pause.is_none() {
                push("task.pause".into(), why);
            }
            if t.resume.is_none() {
                push("task.resume".into(), why);
            }
        }
    }
    match (demand, actuators.is_empty()) {
        (Some(_), true) => push(
            "actuators".into(),
            "a demand needs at least one [[mqtt.actuators]]",
        ),
        (None, false) => push("demand".into(), "actuators need a [mqtt.demand] table"),
        _ => {}
    }
    if let Some(d) = demand
        && !(60..=86_400).contains(&d.forecast_step_s)
    {
        push("demand.forecast_step_s".into(), "must be 60 to 86400");
    }
    if !actuators.is_empty() && !has_release && actuators.iter().any(|a| a.release.is_none()) {
        push(
            "release".into(),
            "a demand-driven device needs a release command (the fail-safe): \
             [mqtt] release, or a release for every actuator",
        );
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, a) in actuators.iter().enumerate() {
        let at = format!("actuators[{i}]");
        if a.name.trim().is_empty() {
            push(format!("{at}.name"), "must not be empty");
        } else if names.contains(&a.name.as_str()) {
            push(format!("{at}.name"), "is used by another actuator");
        }
        names.push(&a.name);
        if a.min_on_s > 86_400 {
            push(format!("{at}.min_on_s"), "must be at most 86400");
        }
        if a.modes.is_empty() {
            push(format!("{at}.modes"), "needs at least one mode");
        } else if a.modes.iter().filter(|m| m.default).count() != 1 {
            push(
                format!("{at}.modes"),
                "exactly one mode must be the default",
            );
        }
        if a.set.is_none() && a.modes.iter().any(|m| m.command.is_none()) {
            push(
                format!("{at}.set"),
                "needed unless every mode has its own command",
            );
        }
        let mut modes: Vec<&str> = Vec::new();
        for (j, m) in a.modes.iter().enumerate() {
            let at = format!("{at}.modes[{j}]");
            if m.name.trim().is_empty() {
                push(format!("{at}.name"), "must not be empty");
            } else if modes.contains(&m.name.as_str()) {
                push(
                    format!("{at}.name"),
                    "is used by another mode of this actuator",
                );
            }
            modes.push(&m.name);
            let finite = [m.supply_min, m.supply_max, m.power_min_w, m.power_max_w]
                .iter()
                .all(|v| v.is_finite());
            if !finite || m.supply_min > m.supply_max {
                push(format!("{at}.supply_max"), "needs supply_min <= supply_max");
            }
            if !finite || m.power_min_w > m.power_max_w {
                push(
                    format!("{at}.power_max_w"),
                    "needs power_min_w <= power_max_w",
                );
            }
            for v in &m.values {
                if a.modes[..j].iter().any(|o| o.matches(v)) {
                    push(format!("{at}.values"), "a value is already another mode's");
                }
            }
        }
    }
    problems
}

fn uses(command: &CommandMap, placeholder: &str) -> bool {
    command.topic.contains(placeholder) || command.payload.contains(placeholder)
}

/// The topics of every appliance reading, with their keys, for the `{device}` and
/// emptiness checks.
pub(crate) fn topics<'a>(
    task: Option<&'a TaskMap>,
    demand: Option<&'a DemandMap>,
    actuators: &'a [ActuatorMap],
) -> Vec<(String, &'a str)> {
    let mut out = Vec::new();
    if let Some(t) = task {
        out.push(("task.state.topic".to_string(), t.state.topic.as_str()));
        if let Some(p) = &t.programme {
            out.push(("task.programme.topic".to_string(), p.topic.as_str()));
        }
        for (key, map) in task_numbers(t) {
            out.push((format!("task.{key}.topic"), map.topic.as_str()));
        }
    }
    if let Some(d) = demand {
        out.push(("demand.present.topic".to_string(), d.present.topic.as_str()));
        if let Some(f) = &d.forecast {
            out.push(("demand.forecast.topic".to_string(), f.topic.as_str()));
        }
    }
    for (i, a) in actuators.iter().enumerate() {
        if let Some(m) = &a.mode {
            out.push((format!("actuators[{i}].mode.topic"), m.topic.as_str()));
        }
        if let Some(f) = &a.factor {
            out.push((format!("actuators[{i}].factor.topic"), f.topic.as_str()));
        }
    }
    out
}

/// The task's number readings, by key.
pub(crate) fn task_numbers(t: &TaskMap) -> Vec<(&'static str, &ReadingMap)> {
    [
        ("elapsed", t.elapsed.as_ref()),
        ("remaining", t.remaining.as_ref()),
        ("finish_in", t.finish_in.as_ref()),
        ("ready_by", t.ready_by.as_ref()),
        ("start_in", t.start_in.as_ref()),
    ]
    .into_iter()
    .filter_map(|(k, m)| m.map(|m| (k, m)))
    .collect()
}

/// The PPBC capability of the programmes.
pub(crate) fn power_profile(programmes: &[ProgrammeMap]) -> ControlCapability {
    ControlCapability::PowerProfile {
        programmes: programmes
            .iter()
            .map(|p| ProgrammeSpec {
                name: p.name.clone(),
                label: p.label.clone().unwrap_or_else(|| p.name.clone()),
                phases: p
                    .phases
                    .iter()
                    .map(|ph| PhaseSpec {
                        duration_s: ph.duration_s,
                        power_w: ph.power_w,
                    })
                    .collect(),
                interruptible: p.interruptible,
            })
            .collect(),
    }
}

/// The DDBC capability of the actuators.
pub(crate) fn demand_driven(demand: &DemandMap, actuators: &[ActuatorMap]) -> ControlCapability {
    ControlCapability::DemandDriven {
        actuators: actuators
            .iter()
            .map(|a| ActuatorSpec {
                name: a.name.clone(),
                label: a.label.clone().unwrap_or_else(|| a.name.clone()),
                fuel: match a.fuel {
                    FuelName::Electricity => Fuel::Electricity,
                    FuelName::Gas => Fuel::Gas,
                },
                modes: a
                    .modes
                    .iter()
                    .map(|m| SupplyModeSpec {
                        name: m.name.clone(),
                        label: m.label.clone().unwrap_or_else(|| m.name.clone()),
                        supply_min: m.supply_min,
                        supply_max: m.supply_max,
                        power_min_w: m.power_min_w,
                        power_max_w: m.power_max_w,
                        is_default: m.default,
                    })
                    .collect(),
                min_on_s: a.min_on_s,
            })
            .collect(),
        forecast_step_s: demand.forecast_step_s,
    }
}

/// The programme an appliance's string names.
pub(crate) fn programme_named<'a>(
    programmes: &'a [ProgrammeMap],
    text: &str,
) -> Option<&'a ProgrammeMap> {
    programmes.iter().find(|p| p.matches(text))
}

/// The mode of `actuator` a device's string names.
pub(crate) fn mode_named<'a>(actuator: &'a ActuatorMap, text: &str) -> Option<&'a SupplyModeMap> {
    actuator.modes.iter().find(|m| m.matches(text))
}

/// The command and placeholders that put `actuator` in `mode` at `factor`.
pub(crate) fn set_actuator(
    actuator: &ActuatorMap,
    mode: &SupplyModeMap,
    factor: f64,
) -> Option<(CommandMap, Vec<(&'static str, String)>)> {
    let command = mode.command.clone().or_else(|| actuator.set.clone())?;
    let vars = vec![
        ("actuator", actuator.name.clone()),
        ("mode", mode.name.clone()),
        ("value", mode.value().to_string()),
        ("factor", format!("{}", (factor * 1000.0).round() / 1000.0)),
        ("percent", format!("{:.0}", factor * 100.0)),
    ];
    Some((command, vars))
}

/// A programme's whole duration, s.
pub(crate) fn duration_of(programme: &ProgrammeMap) -> u64 {
    programme.duration_s()
}

/// What the task's state changes say: the task's number, when it was loaded, how long
/// it ran. Fed each state as it arrives, so "when it became waiting" is the message's
/// arrival, not a poll's.
#[derive(Debug, Clone)]
pub(crate) struct TaskTracker {
    /// The last state, once one arrived.
    pub(crate) step: Option<TaskStep>,
    /// Numbers the tasks: a new task each time the state becomes waiting, or running
    /// straight from no task.
    pub(crate) task_id: u64,
    /// When the current task was loaded (its state became waiting or running).
    pub(crate) loaded_at: SystemTime,
    /// Seconds it ran before the current stretch of running.
    ran_s: f64,
    /// Since when it runs, while it does.
    running_since: Option<Instant>,
}

impl Default for TaskTracker {
    fn default() -> Self {
        Self {
            step: None,
            task_id: 0,
            loaded_at: SystemTime::UNIX_EPOCH,
            ran_s: 0.0,
            running_since: None,
        }
    }
}

impl TaskTracker {
    /// A state arrived at `now` (`wall` on the system clock).
    pub(crate) fn observe(&mut self, step: TaskStep, now: Instant, wall: SystemTime) {
        let previous = self.step;
        if previous == Some(step) {
            return;
        }
        if let Some(since) = self.running_since.take() {
            self.ran_s += now.duration_since(since).as_secs_f64();
        }
        let new_task = match step {
            TaskStep::Waiting => true,
            TaskStep::Running | TaskStep::Paused => {
                matches!(previous, None | Some(TaskStep::None | TaskStep::Finished))
            }
            TaskStep::None | TaskStep::Finished => false,
        };
        if new_task {
            self.task_id += 1;
            self.loaded_at = wall;
            self.ran_s = 0.0;
        }
        if step == TaskStep::Running {
            self.running_since = Some(now);
        }
        self.step = Some(step);
    }

    /// Seconds run so far, pauses excluded.
    pub(crate) fn elapsed_s(&self, now: Instant) -> f64 {
        self.ran_s
            + self
                .running_since
                .map_or(0.0, |since| now.duration_since(since).as_secs_f64())
    }
}

/// `wall` moved by `secs` (clamped to the epoch), for "finish in" style values.
pub(crate) fn after(wall: SystemTime, secs: f64) -> SystemTime {
    if !secs.is_finite() {
        return wall;
    }
    if secs >= 0.0 {
        wall.checked_add(Duration::from_secs_f64(secs.min(1e10)))
            .unwrap_or(wall)
    } else {
        wall.checked_sub(Duration::from_secs_f64((-secs).min(1e10)))
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_numbered_and_timed_by_its_state_changes() {
        let mut t = TaskTracker::default();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        t.observe(TaskStep::Waiting, t0, wall);
        assert_eq!((t.task_id, t.loaded_at), (1, wall));
        t.observe(TaskStep::Running, t0 + Duration::from_secs(10), wall);
        t.observe(TaskStep::Paused, t0 + Duration::from_secs(70), wall);
        t.observe(TaskStep::Running, t0 + Duration::from_secs(100), wall);
        assert_eq!(t.task_id, 1, "a pause is the same task");
        assert_eq!(t.elapsed_s(t0 + Duration::from_secs(130)), 90.0);
        t.observe(TaskStep::Finished, t0 + Duration::from_secs(200), wall);
        t.observe(TaskStep::Running, t0 + Duration::from_secs(300), wall);
        assert_eq!(t.task_id, 2, "started at the machine without waiting");
        assert_eq!(t.elapsed_s(t0 + Duration::from_secs(300)), 0.0);
    }
}
