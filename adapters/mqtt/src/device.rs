//! MQTT devices: a [`Device`] whose readings are values at JSON paths of topics and whose
//! commands are payload templates published to topics, as a profile's `[mqtt]` table
//! (merged with the device's `[device.mqtt]`) describes.
//!
//! A value older than `stale_after_s` is not a measurement any more: the device then
//! reads as `Unavailable` and nothing is made up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use s2gw_core::device::{ControlCapability, DeviceInfo, ModeSpec};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Problems, Readings};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::MqttError;
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
/// Placeholders: `{device}` (both), and in the payload `{watts}`, `{min_w}`, `{max_w}`,
/// `{amps}`, `{phases}`, `{mode}` as the command provides them.
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
        let mut topics = vec![("power.topic", &self.power.topic)];
        if let Some(e) = &self.energy {
            topics.push(("energy.topic", &e.topic));
        }
        if let Some(s) = &self.soc {
            topics.push(("soc.topic", &s.topic));
        }
        for (key, topic) in topics {
            if topic.is_empty() {
                push(key, "must not be empty");
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
        problems
    }

    fn fill(&self, template: &str) -> String {
        template.replace("{device}", self.device.as_deref().unwrap_or(""))
    }
}

/// The latest value of each reading, with when it came.
#[derive(Default)]
struct Latest {
    values: BTreeMap<&'static str, (f64, Instant)>,
}

/// A device on MQTT.
pub struct MqttDevice {
    handle: MqttHandle,
    id: String,
    config: MqttDeviceConfig,
    info: DeviceInfo,
    latest: Arc<Mutex<Latest>>,
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
        let maps = [
            ("power", Some(&config.power)),
            ("energy", config.energy.as_ref()),
            ("soc", config.soc.as_ref()),
        ];
        for (name, map) in maps {
            let Some(map) = map else { continue };
            let rx = handle.subscribe(&config.fill(&map.topic), 1024).await?;
            tokio::spawn(follow(
                rx,
                name,
                map.clone(),
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
        let mut payload = self.config.fill(&map.payload);
        for (name, value) in vars {
            payload = payload.replace(&format!("{{{name}}}"), value);
        }
        debug!(device = %self.id, topic = %map.topic, "command");
        self.handle
            .publish(self.config.fill(&map.topic), payload)
            .await
            .map_err(|e| DeviceError::Unreachable(e.to_string()))
    }
}

/// Keep the latest value of one reading.
async fn follow(
    mut rx: crate::client::Subscription,
    name: &'static str,
    map: ReadingMap,
    latest: Arc<Mutex<Latest>>,
    device: String,
    shutdown: s2gw_core::CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = rx.recv() => match message { Some(m) => m, None => return },
        };
        match extract(&message.payload, &map.path) {
            Some(value) if (value * map.scale).is_finite() => {
                lock(&latest)
                    .values
                    .insert(name, (value * map.scale, Instant::now()));
            }
            _ => {
                warn!(%device, reading = name, topic = %message.topic, "no number at the configured path: ignored")
            }
        }
    }
}

/// The number at `path` in a JSON payload (numbers and numeric strings), or the bare
/// payload as a number when `path` is empty.
fn extract(payload: &[u8], path: &str) -> Option<f64> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    if path.is_empty() {
        return text.parse().ok();
    }
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
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// What the config lets the device do, for the virtual RM.
fn capabilities(config: &MqttDeviceConfig) -> Vec<ControlCapability> {
    let mut out = Vec::new();
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
        let fresh = |name: &str| {
            latest
                .values
                .get(name)
                .filter(|(_, at)| now.duration_since(*at) <= stale_after)
                .map(|(v, _)| *v)
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
            Command::Release => match self.config.release.clone() {
                Some(map) => self.send(&map, &[]).await,
                None => Ok(()), // nothing to release on a device that cannot be controlled
            },
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
            Command::StartProgramme { .. } | Command::Pause | Command::Resume => {
                refused("an appliance programme")
            }
            Command::SetActuator { .. } => refused("an actuator mode"),
        }
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
