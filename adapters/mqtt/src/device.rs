//! MQTT devices: a [`Device`] whose readings are values at JSON paths of topics and whose
//! commands are payload templates published to topics, as a profile's `[mqtt]` table
//! (merged with the device's `[device.mqtt]`) describes.
//!
//! A value older than `stale_after_s` is not a measurement any more: the device then
//! reads as `Unavailable` and nothing is made up.
//!
//! Appliances (a task in programmes, S2 PPBC) and demand-driven devices (actuators meeting
//! a demand, S2 DDBC) add the tables of [`crate::appliance`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use s2gw_core::device::{
    ActuatorState, ControlCapability, DemandState, DeviceInfo, ModeSpec, TaskProgress, TaskState,
};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Problems, Readings};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::MqttError;
use crate::appliance::{
    self, ActuatorMap, DemandMap, OnRelease, ProgrammeMap, TaskMap, TaskStep, TaskTracker,
};
use crate::client::MqttHandle;

/// Where one reading comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingMap {
    /// The topic; `{device}` is replaced by the device's `device` key.
    pub topic: String,
    /// Dot-separated path into the JSON payload (`aenergy.total`, `StatusSNS.ENERGY.Power`,
    /// array indexes as numbers); empty when the payload is the bare number.
    #[serde(default)]
    pub path: String,
    /// Multiplier to the gateway's unit (W, Wh, %): e.g. 1000 for kWh.
    #[serde(default = "one")]
    pub scale: f64,
}

fn one() -> f64 {
    1.0
}

/// One command: a topic and a payload template.
///
/// Placeholders: `{device}` (both), and `{amps}`, `{phases}`, `{mode}`, `{programme}`,
/// `{actuator}`, `{value}`, `{factor}`, `{percent}` as the command provides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMap {
    /// The topic to publish to (QoS 1, never retained).
    pub topic: String,
    /// The payload template.
    pub payload: String,
}

/// One operation mode of a switching device (S2 OMBC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeMap {
    /// Short stable name (`on`, `off`).
    pub name: String,
    /// For people.
    #[serde(default)]
    pub label: Option<String>,
    /// Power range of the mode, W.
    pub min_w: f64,
    /// Power range of the mode, W.
    pub max_w: f64,
    /// Whether this is the device's own default (what Release returns to).
    #[serde(default)]
    pub default: bool,
    /// What enters the mode.
    pub command: CommandMap,
}

/// A charger's settable current (S2 OMBC current steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrentMap {
    /// Lowest charging current, A (6 for IEC 61851).
    pub min_a: f64,
    /// Highest charging current, A.
    pub max_a: f64,
    /// Phases wired, 1 or 3.
    pub phases: u8,
    /// Volts per phase, for the power of each step (default 230).
    #[serde(default = "volts")]
    pub volts: f64,
    /// Sets the current (`{amps}`, `{phases}`).
    pub set: CommandMap,
    /// Stops charging (current 0).
    pub off: CommandMap,
}

fn volts() -> f64 {
    230.0
}

/// The `[mqtt]` table of a profile, merged with the device's `[device.mqtt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttDeviceConfig {
    /// Replaces `{device}` in topics and payloads (the device's MQTT id or topic).
    #[serde(default)]
    pub device: Option<String>,
    /// Values older than this many seconds make the device unavailable (default 60).
    #[serde(default = "stale")]
    pub stale_after_s: u64,
    /// Active power, W (required).
    pub power: ReadingMap,
    /// Energy, Wh.
    #[serde(default)]
    pub energy: Option<ReadingMap>,
    /// State of charge, %.
    #[serde(default)]
    pub soc: Option<ReadingMap>,
    /// Returns the device to its own behaviour (S2 fail-safe). Required when the device
    /// can be controlled.
    #[serde(default)]
    pub release: Option<CommandMap>,
    /// Operation modes (switches, relays).
    #[serde(default)]
    pub modes: Vec<ModeMap>,
    /// Settable charging current.
    #[serde(default)]
    pub current: Option<CurrentMap>,
    /// An appliance's task (S2 PPBC), with `programmes`.
    #[serde(default)]
    pub task: Option<TaskMap>,
    /// The task's programmes, the appliance's own choice first.
    #[serde(default)]
    pub programmes: Vec<ProgrammeMap>,
    /// The demand a demand-driven device meets (S2 DDBC), with `actuators`.
    #[serde(default)]
    pub demand: Option<DemandMap>,
    /// The actuators meeting the demand.
    #[serde(default)]
    pub actuators: Vec<ActuatorMap>,
}

fn stale() -> u64 {
    60
}

impl MqttDeviceConfig {
    /// Every problem as `(key, reason)`; empty when usable.
    pub fn validate(&self) -> Problems {
        let mut problems = Vec::new();
        let mut push = |k: &str, r: &str| problems.push((k.to_string(), r.to_string()));
        if !(1..=86_400).contains(&self.stale_after_s) {
            push("stale_after_s", "must be 1 to 86400");
        }
        let mut topics = vec![("power.topic".to_string(), self.power.topic.as_str())];
        if let Some(e) = &self.energy {
            topics.push(("energy.topic".to_string(), &e.topic));
        }
        if let Some(s) = &self.soc {
            topics.push(("soc.topic".to_string(), &s.topic));
        }
        topics.extend(appliance::topics(
            self.task.as_ref(),
            self.demand.as_ref(),
            &self.actuators,
        ));
        for (key, topic) in topics {
            if topic.is_empty() {
                push(&key, "must not be empty");
            }
            if topic.contains("{device}") && self.device.is_none() {
                push("device", "the topics use {device}: set it in [device.mqtt]");
            }
        }
        let controllable = !self.modes.is_empty() || self.current.is_some();
        if controllable && self.release.is_none() {
            push(
                "release",
                "a controllable device needs a release command (the fail-safe)",
            );
        }
        if !self.modes.is_empty() && self.modes.iter().filter(|m| m.default).count() != 1 {
            push("modes", "exactly one mode must be the default");
        }
        if let Some(c) = &self.current
            && !(c.min_a > 0.0 && c.max_a >= c.min_a && matches!(c.phases, 1 | 3))
        {
            push("current", "needs 0 < min_a <= max_a and phases 1 or 3");
        }
        problems.extend(appliance::validate(
            self.task.as_ref(),
            &self.programmes,
            self.demand.as_ref(),
            &self.actuators,
            self.release.is_some(),
        ));
        problems
    }

    fn fill(&self, template: &str) -> String {
        template.replace("{device}", self.device.as_deref().unwrap_or(""))
    }
}

/// One reading's latest value.
#[derive(Debug, Clone)]
enum Sample {
    Number(f64),
    Text(String),
    List(Vec<f64>),
}

/// A value with when it came (monotonic, for staleness; wall clock, for "finish in").
#[derive(Debug, Clone)]
struct Entry {
    sample: Sample,
    at: Instant,
    wall: SystemTime,
}

/// The latest value of each reading, and what the task's state changes said.
#[derive(Default)]
struct Latest {
    values: BTreeMap<String, Entry>,
    task: TaskTracker,
}

/// How a reading's payload is read.
#[derive(Debug, Clone)]
enum Kind {
    /// A number, scaled.
    Number(f64),
    /// A string (numbers and booleans as their JSON text).
    Text,
    /// A JSON array of numbers, each scaled.
    List(f64),
    /// The task's state: a string through the profile's map into the task tracker.
    TaskState(BTreeMap<String, TaskStep>),
}

/// One subscription: which reading, on which topic, read how.
struct Follow {
    name: String,
    topic: String,
    path: String,
    kind: Kind,
}

const TASK_STATE: &str = "task.state";
const TASK_PROGRAMME: &str = "task.programme";
const DEMAND: &str = "demand.present";
const FORECAST: &str = "demand.forecast";

fn actuator_key(actuator: &str, what: &str) -> String {
    format!("actuator.{actuator}.{what}")
}

/// Every reading the config maps.
fn follows(config: &MqttDeviceConfig) -> Vec<Follow> {
    let number = |name: &str, map: &ReadingMap| Follow {
        name: name.to_string(),
        topic: map.topic.clone(),
        path: map.path.clone(),
        kind: Kind::Number(map.scale),
    };
    let mut out = vec![number("power", &config.power)];
    out.extend(config.energy.as_ref().map(|m| number("energy", m)));
    out.extend(config.soc.as_ref().map(|m| number("soc", m)));
    if let Some(t) = &config.task {
        out.push(Follow {
            name: TASK_STATE.into(),
            topic: t.state.topic.clone(),
            path: t.state.path.clone(),
            kind: Kind::TaskState(t.state.map.clone()),
        });
        if let Some(p) = &t.programme {
            out.push(Follow {
                name: TASK_PROGRAMME.into(),
                topic: p.topic.clone(),
                path: p.path.clone(),
                kind: Kind::Text,
            });
        }
        for (key, map) in appliance::task_numbers(t) {
            out.push(number(&format!("task.{key}"), map));
        }
    }
    if let Some(d) = &config.demand {
        out.push(number(DEMAND, &d.present));
        if let Some(f) = &d.forecast {
            out.push(Follow {
                name: FORECAST.into(),
                topic: f.topic.clone(),
                path: f.path.clone(),
                kind: Kind::List(f.scale),
            });
        }
    }
    for a in &config.actuators {
        if let Some(m) = &a.mode {
            out.push(Follow {
                name: actuator_key(&a.name, "mode"),
                topic: m.topic.clone(),
                path: m.path.clone(),
                kind: Kind::Text,
            });
        }
        if let Some(f) = &a.factor {
            out.push(number(&actuator_key(&a.name, "factor"), f));
        }
    }
    out
}

/// What the gateway told the device, for readings the device does not publish.
#[derive(Debug, Default)]
struct Told {
    /// The programme last started.
    programme: Option<String>,
    /// Each actuator's mode and factor last set, by actuator name.
    actuators: BTreeMap<String, (String, f64)>,
}

/// A device on MQTT.
pub struct MqttDevice {
    handle: MqttHandle,
    id: String,
    config: MqttDeviceConfig,
    info: DeviceInfo,
    latest: Arc<Mutex<Latest>>,
    told: Told,
    started: Instant,
}

impl std::fmt::Debug for MqttDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttDevice")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn lock(latest: &Mutex<Latest>) -> MutexGuard<'_, Latest> {
    latest
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MqttDevice {
    /// Subscribe to the device's topics and start following them. `info` carries the
    /// profile's kind, manufacturer and model; its `control` is filled from the config.
    pub async fn start(
        handle: MqttHandle,
        id: impl Into<String>,
        config: MqttDeviceConfig,
        mut info: DeviceInfo,
    ) -> Result<MqttDevice, MqttError> {
        let problems = config.validate();
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|(k, r)| format!("{k}: {r}")).collect();
            return Err(MqttError::Config(text.join("; ")));
        }
        info.control = capabilities(&config);
        let id = id.into();
        let latest = Arc::new(Mutex::new(Latest::default()));
        for follow in follows(&config) {
            let rx = handle.subscribe(&config.fill(&follow.topic), 1024).await?;
            tokio::spawn(run_follow(
                rx,
                follow,
                latest.clone(),
                id.clone(),
                handle.shutdown_token(),
            ));
        }
        Ok(MqttDevice {
            handle,
            id,
            config,
            info,
            latest,
            told: Told::default(),
            started: Instant::now(),
        })
    }

    async fn send(&self, map: &CommandMap, vars: &[(&str, String)]) -> Result<(), DeviceError> {
        if !self.handle.status().borrow().connected {
            // A command queued now might run much later, after the CEM moved on.
            return Err(DeviceError::Unreachable(
                "the MQTT broker is not connected".into(),
            ));
        }
        let fill = |template: &str| {
            let mut text = self.config.fill(template);
            for (name, value) in vars {
                text = text.replace(&format!("{{{name}}}"), value);
            }
            text
        };
        let topic = fill(&map.topic);
        debug!(device = %self.id, %topic, "command");
        self.handle
            .publish(topic, fill(&map.payload))
            .await
            .map_err(|e| DeviceError::Unreachable(e.to_string()))
    }

    /// The task as the latest readings say, while there is one.
    fn task(&self, latest: &Latest, now: Instant) -> Option<TaskState> {
        let task = self.config.task.as_ref()?;
        let step = latest.task.step?;
        let number = |name: &str| match latest.values.get(name) {
            Some(Entry {
                sample: Sample::Number(v),
                wall,
                ..
            }) => Some((*v, *wall)),
            _ => None,
        };
        let own = self.config.programmes.first()?;
        let programme = match latest.values.get(TASK_PROGRAMME) {
            Some(Entry {
                sample: Sample::Text(text),
                ..
            }) => appliance::programme_named(&self.config.programmes, text),
            _ => None,
        }
        .or_else(|| {
            let told = self.told.programme.as_deref()?;
            self.config.programmes.iter().find(|p| p.name == told)
        })
        .unwrap_or(own);
        let duration = appliance::duration_of(programme) as f64;
        let elapsed_s = if let Some((v, _)) = number("task.elapsed") {
            v.clamp(0.0, duration)
        } else if let Some((v, _)) = number("task.remaining") {
            (duration - v).clamp(0.0, duration)
        } else {
            latest.task.elapsed_s(now)
        };
        let name = programme.name.clone();
        let progress = match step {
            TaskStep::None => return None,
            TaskStep::Waiting => TaskProgress::Waiting,
            TaskStep::Running => TaskProgress::Running {
                programme: name,
                elapsed_s,
            },
            TaskStep::Paused => TaskProgress::Paused {
                programme: name,
                elapsed_s,
            },
            TaskStep::Finished => TaskProgress::Finished { programme: name },
        };
        let earliest_start = latest.task.loaded_at;
        // A zero "finish in" or "ready by" is an appliance saying it has none set.
        let latest_end = number("task.finish_in")
            .filter(|(v, _)| *v > 0.0)
            .map(|(v, wall)| appliance::after(wall, v))
            .or_else(|| {
                number("task.ready_by")
                    .filter(|(v, _)| *v > 0.0)
                    .map(|(v, _)| appliance::after(SystemTime::UNIX_EPOCH, v))
            })
            .unwrap_or_else(|| appliance::after(earliest_start, task.window_h * 3600.0))
            .max(earliest_start);
        let own_start = number("task.start_in")
            .filter(|(v, _)| *v > 0.0)
            .map(|(v, wall)| appliance::after(wall, v))
            .unwrap_or_else(|| appliance::after(latest_end, -(appliance::duration_of(own) as f64)))
            .max(earliest_start);
        Some(TaskState {
            task_id: latest.task.task_id,
            earliest_start,
            latest_end,
            own_start,
            progress,
        })
    }

    /// The demand and what each actuator does, while the demand is a measurement.
    fn demand(&self, latest: &Latest, fresh: &dyn Fn(&str) -> Option<f64>) -> Option<DemandState> {
        self.config.demand.as_ref()?;
        let demand = fresh(DEMAND)?;
        let forecast = match latest.values.get(FORECAST) {
            Some(Entry {
                sample: Sample::List(values),
                at,
                ..
            }) if at.elapsed() <= Duration::from_secs(self.config.stale_after_s) => values.clone(),
            _ => Vec::new(),
        };
        let actuators = self
            .config
            .actuators
            .iter()
            .filter_map(|a| {
                let read = match latest.values.get(&actuator_key(&a.name, "mode")) {
                    Some(Entry {
                        sample: Sample::Text(text),
                        ..
                    }) => appliance::mode_named(a, text),
                    _ => None,
                };
                let told = self.told.actuators.get(&a.name);
                let mode = read
                    .or_else(|| {
                        let (name, _) = told?;
                        a.modes.iter().find(|m| &m.name == name)
                    })
                    .or_else(|| a.modes.iter().find(|m| m.default))?;
                let factor = fresh(&actuator_key(&a.name, "factor"))
                    .or_else(|| told.filter(|(m, _)| *m == mode.name).map(|(_, f)| *f))
                    .unwrap_or(0.0)
                    .clamp(0.0, 1.0);
                Some(ActuatorState {
                    actuator: a.name.clone(),
                    mode: mode.name.clone(),
                    factor,
                })
            })
            .collect();
        Some(DemandState {
            demand,
            forecast,
            actuators,
        })
    }
}

/// Keep the latest value of one reading.
async fn run_follow(
    mut rx: crate::client::Subscription,
    follow: Follow,
    latest: Arc<Mutex<Latest>>,
    device: String,
    shutdown: s2gw_core::CancellationToken,
) {
    let name = follow.name.as_str();
    // A device that keeps publishing what the profile cannot read must not fill the log.
    let mut dropped = s2gw_core::LogThrottle::default();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = rx.recv() => match message { Some(m) => m, None => return },
        };
        let (at, wall) = (Instant::now(), SystemTime::now());
        let sample = match &follow.kind {
            Kind::Number(scale) => extract(&message.payload, &follow.path)
                .map(|v| v * scale)
                .filter(|v| v.is_finite())
                .map(Sample::Number),
            Kind::List(scale) => {
                extract_list(&message.payload, &follow.path, *scale).map(Sample::List)
            }
            Kind::Text => extract_text(&message.payload, &follow.path).map(Sample::Text),
            Kind::TaskState(map) => {
                let Some(text) = extract_text(&message.payload, &follow.path) else {
                    dropped.warn("no state at the path", at.into_std(), || {
                        warn!(%device, reading = name, topic = %message.topic, "no state at the configured path: ignored");
                    });
                    continue;
                };
                let Some(step) = map.get(&text) else {
                    dropped.warn("unmapped task state", at.into_std(), || {
                        warn!(%device, state = %text, topic = %message.topic, "a task state the profile does not map: ignored");
                    });
                    continue;
                };
                lock(&latest).task.observe(*step, at, wall);
                Some(Sample::Text(text))
            }
        };
        match sample {
            Some(sample) => {
                lock(&latest)
                    .values
                    .insert(name.to_string(), Entry { sample, at, wall });
            }
            None => dropped.warn("no value at the path", at.into_std(), || {
                warn!(%device, reading = name, topic = %message.topic, "no value of the configured kind at the path: ignored");
            }),
        }
    }
}

/// The JSON value at `path` of a payload (`None` for an empty path: the payload is bare).
fn value_at(payload: &[u8], path: &str) -> Option<Value> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    let mut value: Value = serde_json::from_str(text).ok()?;
    for key in path.split('.') {
        value = match value {
            Value::Object(mut map) => map.remove(key)?,
            Value::Array(mut items) => {
                let index: usize = key.parse().ok()?;
                (index < items.len()).then(|| items.swap_remove(index))?
            }
            _ => return None,
        };
    }
    Some(value)
}

/// The number at `path` in a JSON payload (numbers and numeric strings), or the bare
/// payload as a number when `path` is empty.
fn extract(payload: &[u8], path: &str) -> Option<f64> {
    if path.is_empty() {
        return std::str::from_utf8(payload).ok()?.trim().parse().ok();
    }
    match value_at(payload, path)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The string at `path` (numbers and booleans as their JSON text), or the bare payload
/// when `path` is empty.
fn extract_text(payload: &[u8], path: &str) -> Option<String> {
    if path.is_empty() {
        return Some(std::str::from_utf8(payload).ok()?.trim().to_string());
    }
    match value_at(payload, path)? {
        Value::String(s) => Some(s),
        v @ (Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

/// The array of numbers at `path` (the whole payload when `path` is empty), each
/// scaled; `None` unless every item is a finite number.
fn extract_list(payload: &[u8], path: &str, scale: f64) -> Option<Vec<f64>> {
    let value = if path.is_empty() {
        serde_json::from_slice(payload).ok()?
    } else {
        value_at(payload, path)?
    };
    let Value::Array(items) = value else {
        return None;
    };
    items
        .iter()
        .map(|v| v.as_f64().map(|v| v * scale).filter(|v| v.is_finite()))
        .collect()
}

/// What the config lets the device do, for the virtual RM.
fn capabilities(config: &MqttDeviceConfig) -> Vec<ControlCapability> {
    let mut out = Vec::new();
    if config.task.is_some() {
        out.push(appliance::power_profile(&config.programmes));
    }
    if let Some(demand) = &config.demand {
        out.push(appliance::demand_driven(demand, &config.actuators));
    }
    if let Some(c) = &config.current {
        out.push(ControlCapability::OperationModes {
            modes: current_steps(c),
            min_on_s: 0,
            min_off_s: 0,
        });
    }
    if !config.modes.is_empty() {
        let modes = config
            .modes
            .iter()
            .map(|m| ModeSpec {
                name: m.name.clone(),
                label: m.label.clone().unwrap_or_else(|| m.name.clone()),
                min_w: m.min_w,
                max_w: m.max_w,
                command: Command::SetMode {
                    mode: m.name.clone(),
                },
                is_default: m.default,
            })
            .collect();
        out.push(ControlCapability::OperationModes {
            modes,
            min_on_s: 0,
            min_off_s: 0,
        });
    }
    out.push(ControlCapability::NotControllable);
    out
}

/// Off, then whole amperes from the minimum to the maximum; "off" is not the default
/// (a charger left alone charges at its own setting: that is Release).
fn current_steps(c: &CurrentMap) -> Vec<ModeSpec> {
    let phases = f64::from(c.phases);
    let mut modes = vec![ModeSpec {
        name: "off".into(),
        label: "Charging off".into(),
        min_w: 0.0,
        max_w: 0.0,
        command: Command::SetCurrent {
            amps: 0.0,
            phases: c.phases,
        },
        is_default: false,
    }];
    let mut amps = c.min_a.ceil();
    while amps <= c.max_a {
        let watts = amps * c.volts * phases;
        modes.push(ModeSpec {
            name: format!("{amps:.0}A-{}p", c.phases),
            label: format!("{amps:.0} A x {}p", c.phases),
            min_w: watts,
            max_w: watts,
            command: Command::SetCurrent {
                amps,
                phases: c.phases,
            },
            is_default: amps >= c.max_a,
        });
        amps += 1.0;
    }
    modes
}

#[async_trait]
impl Device for MqttDevice {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        let stale_after = Duration::from_secs(self.config.stale_after_s);
        let now = Instant::now();
        let latest = lock(&self.latest);
        let fresh = |name: &str| match latest.values.get(name) {
            Some(Entry {
                sample: Sample::Number(v),
                at,
                ..
            }) if now.duration_since(*at) <= stale_after => Some(*v),
            _ => None,
        };
        let Some(power_w) = fresh("power") else {
            let why = if latest.values.contains_key("power") {
                format!(
                    "no power reading for more than {}s",
                    self.config.stale_after_s
                )
            } else {
                format!(
                    "no power reading yet ({}s since start)",
                    now.duration_since(self.started).as_secs()
                )
            };
            return Ok(Readings {
                status: DeviceStatus::Unavailable(why),
                ..Readings::default()
            });
        };
        Ok(Readings {
            power_w,
            phase_power_w: None,
            energy_wh: fresh("energy"),
            soc: fresh("soc"),
            status: DeviceStatus::Ok,
            task: self.task(&latest, now),
            demand: self.demand(&latest, &fresh),
            ..Readings::default()
        })
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        let refused = |what: &str| {
            Err(DeviceError::Refused(format!(
                "{what} is not mapped in this profile"
            )))
        };
        match command {
            Command::Release => self.release().await,
            Command::SetMode { mode } => {
                let Some(map) = self
                    .config
                    .modes
                    .iter()
                    .find(|m| &m.name == mode)
                    .map(|m| m.command.clone())
                else {
                    return refused(&format!("mode {mode:?}"));
                };
                self.send(&map, &[("mode", mode.clone())]).await
            }
            Command::SetCurrent { amps, phases } => {
                let Some(c) = self.config.current.clone() else {
                    return refused("a charging current");
                };
                if *amps <= 0.0 {
                    return self.send(&c.off, &[]).await;
                }
                if *amps < c.min_a || *amps > c.max_a {
                    return Err(DeviceError::Refused(format!(
                        "{amps} A is outside {}..{} A",
                        c.min_a, c.max_a
                    )));
                }
                let vars = [
                    ("amps", format!("{amps:.0}")),
                    ("phases", phases.to_string()),
                ];
                self.send(&c.set, &vars).await
            }
            Command::LimitPower { .. } => refused("a power limit"),
            Command::SetPower { .. } => refused("a power setpoint"),
            Command::StartProgramme { programme } => {
                let Some(task) = self.config.task.clone() else {
                    return refused("an appliance programme");
                };
                let Some(value) = self
                    .config
                    .programmes
                    .iter()
                    .find(|p| &p.name == programme)
                    .map(|p| p.value().to_string())
                else {
                    return refused(&format!("programme {programme:?}"));
                };
                self.send(&task.start, &[("programme", value)]).await?;
                self.told.programme = Some(programme.clone());
                Ok(())
            }
            Command::Pause | Command::Resume => {
                let map = self.config.task.as_ref().and_then(|t| {
                    if *command == Command::Pause {
                        t.pause.clone()
                    } else {
                        t.resume.clone()
                    }
                });
                match map {
                    Some(map) => self.send(&map, &[]).await,
                    None => refused(&format!("{} of a programme", command.summary())),
                }
            }
            Command::SetActuator {
                actuator,
                mode,
                factor,
            } => {
                let Some(a) = self.config.actuators.iter().find(|a| &a.name == actuator) else {
                    return refused(&format!("actuator {actuator:?}"));
                };
                let Some(m) = a.modes.iter().find(|m| &m.name == mode) else {
                    return refused(&format!("mode {mode:?} of {actuator}"));
                };
                if !(0.0..=1.0).contains(factor) {
                    return Err(DeviceError::Refused(format!(
                        "factor {factor} is outside 0..1"
                    )));
                }
                let Some((map, vars)) = appliance::set_actuator(a, m, *factor) else {
                    return refused(&format!("mode {mode:?} of {actuator}"));
                };
                self.send(&map, &vars).await?;
                self.told
                    .actuators
                    .insert(actuator.clone(), (mode.clone(), *factor));
                Ok(())
            }
        }
    }
}

impl MqttDevice {
    /// The fail-safe: `[mqtt] release`, then what the task's `on_release` says, then each
    /// actuator's own release; nothing for a device that cannot be controlled.
    async fn release(&mut self) -> Result<(), DeviceError> {
        if let Some(map) = self.config.release.clone() {
            self.send(&map, &[]).await?;
        }
        if let Some(task) = self.config.task.clone() {
            let paused = lock(&self.latest).task.step == Some(TaskStep::Paused);
            if task.on_release == OnRelease::Resume
                && paused
                && let Some(resume) = &task.resume
            {
                self.send(resume, &[]).await?;
            }
        }
        for a in self.config.actuators.clone() {
            if let Some(map) = &a.release {
                self.send(map, &[]).await?;
            }
        }
        // The device runs on its own again: what it was told no longer says what it does.
        self.told.actuators.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let shelly = br#"{"id":0,"apower":12.5,"aenergy":{"total":1234.5,"by_minute":[1,2,3]}}"#;
        assert_eq!(extract(shelly, "apower"), Some(12.5));
        assert_eq!(extract(shelly, "aenergy.total"), Some(1234.5));
        assert_eq!(extract(shelly, "aenergy.by_minute.1"), Some(2.0));
        assert_eq!(extract(shelly, "aenergy.by_minute.9"), None);
        assert_eq!(extract(shelly, "missing"), None);
        assert_eq!(extract(b" 42.5\n", ""), Some(42.5));
        assert_eq!(extract(br#"{"v":"7.5"}"#, "v"), Some(7.5));
        assert_eq!(extract(b"not json", "v"), None);
        assert_eq!(extract(&[0xff, 0xfe], ""), None);
    }

    #[test]
    fn current_steps_cover_the_range() {
        let c = CurrentMap {
            min_a: 6.0,
            max_a: 16.0,
            phases: 3,
            volts: 230.0,
            set: CommandMap {
                topic: "t".into(),
                payload: "{amps}".into(),
            },
            off: CommandMap {
                topic: "t".into(),
                payload: "0".into(),
            },
        };
        let steps = current_steps(&c);
        assert_eq!(steps.len(), 12);
        assert_eq!(steps[1].name, "6A-3p");
        assert_eq!(steps.iter().filter(|m| m.is_default).count(), 1);
    }
}
