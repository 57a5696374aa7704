//! The state mirror: per-device retained state and availability, Home Assistant
//! device-based discovery, and the "CEM control allowed" switch.
//!
//! The daemon feeds it [`DeviceState`]s; it owns everything MQTT about them. Discovery of
//! devices that left the config is found again at every connect by reading the
//! gateway's own retained discovery topics back (recognised by origin `s2gw` and the
//! gateway's identifier prefix) and cleared, so nothing needs to be stored on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use s2gw_core::device::DeviceKind;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::client::{Inbound, MqttHandle, Subscription};

/// How long the read-back of retained discovery may take before it is cut short.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(5);

/// One device's state as the daemon sees it (built from the virtual RM's view).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceState {
    /// The device id from the config (a topic level).
    pub device_id: String,
    /// For people.
    pub name: String,
    /// What kind of device it is.
    pub kind: DeviceKind,
    /// Manufacturer, for the discovery device block.
    pub manufacturer: Option<String>,
    /// Model, for the discovery device block.
    pub model: Option<String>,
    /// Active power in W, consumption positive; `None` when unknown (never made up).
    pub power_w: Option<f64>,
    /// Energy in Wh, where the device reports it.
    pub energy_wh: Option<f64>,
    /// State of charge in percent, for storage.
    pub soc: Option<f64>,
    /// The S2 control type the CEM selected (`PEBC`, …).
    pub control_type: Option<String>,
    /// The active instruction or limit, for people.
    pub active: Option<String>,
    /// The CEM link: `down`, `handshaking` or `connected`.
    pub cem_link: String,
    /// Whether the device is reachable and its values fresh.
    pub available: bool,
    /// When anything in it last changed.
    pub updated: SystemTime,
}

impl DeviceState {
    /// A state with nothing known yet: unavailable, link down.
    pub fn new(device_id: impl Into<String>, name: impl Into<String>, kind: DeviceKind) -> Self {
        Self {
            device_id: device_id.into(),
            name: name.into(),
            kind,
            manufacturer: None,
            model: None,
            power_w: None,
            energy_wh: None,
            soc: None,
            control_type: None,
            active: None,
            cem_link: "down".to_string(),
            available: false,
            updated: SystemTime::now(),
        }
    }
}

struct Entry {
    last: Option<DeviceState>,
    control: watch::Sender<bool>,
    /// A command changed the switch since start: the retained value read back loses.
    commanded: bool,
    /// The discovery payload last published, to re-send only on change.
    discovery: Option<Bytes>,
}

impl Entry {
    fn new() -> Self {
        let (control, _) = watch::channel(true);
        Self {
            last: None,
            control,
            commanded: false,
            discovery: None,
        }
    }
}

struct Inner {
    devices: BTreeMap<String, Entry>,
}

/// The state mirror; cheap to clone.
#[derive(Clone)]
pub struct StateMirror {
    handle: MqttHandle,
    inner: Arc<Mutex<Inner>>,
    /// Set once the first read-back of the retained states is done. Until then no state
    /// is published: it would overwrite the switch positions the read-back restores.
    swept: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for StateMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMirror").finish_non_exhaustive()
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StateMirror {
    /// Start the mirror for the devices in the config (`device_ids`): discovery of any
    /// other device this gateway published before is removed at the next connect.
    /// The task ends with the client's shutdown.
    pub fn start(handle: MqttHandle, device_ids: Vec<String>) -> (StateMirror, JoinHandle<()>) {
        let devices = device_ids
            .into_iter()
            .map(|id| (id, Entry::new()))
            .collect();
        let mirror = StateMirror {
            handle,
            inner: Arc::new(Mutex::new(Inner { devices })),
            swept: Arc::new(watch::channel(false).0),
        };
        let task = tokio::spawn(mirror.clone().run());
        (mirror, task)
    }

    /// The "CEM control allowed" switch of a device: `true` until someone turns it off
    /// on `<base>/<device_id>/set`. The daemon hands it to the device's virtual RM.
    pub fn control_allowed(&self, device_id: &str) -> watch::Receiver<bool> {
        lock(&self.inner)
            .devices
            .entry(device_id.to_string())
            .or_insert_with(Entry::new)
            .control
            .subscribe()
    }

    /// Publish a device's state (retained) and availability, and its discovery when new
    /// or changed.
    ///
    /// Waits for the first read-back of the retained states after start, so the first
    /// state published carries the switch position of the previous run.
    pub async fn publish_state(&self, state: DeviceState) {
        if crate::topic::level_problem(&state.device_id).is_some() {
            warn!(device = %state.device_id, "device id cannot be a topic level: not mirrored");
            return;
        }
        // An error means the mirror task is gone (shutdown): publish what can be.
        let _ = self.swept.subscribe().wait_for(|swept| *swept).await;
        let (payload, discovery) = {
            let mut inner = lock(&self.inner);
            let entry = inner
                .devices
                .entry(state.device_id.clone())
                .or_insert_with(Entry::new);
            let payload = state_json(&state, *entry.control.borrow());
            let discovery = self.discovery_payload(&state);
            let fresh = discovery.filter(|d| entry.discovery.as_ref() != Some(d));
            if let Some(d) = &fresh {
                entry.discovery = Some(d.clone());
            }
            entry.last = Some(state.clone());
            (payload, fresh)
        };
        let id = &state.device_id;
        let availability = if state.available { "online" } else { "offline" };
        let mut outcome = self
            .handle
            .publish_retained(self.handle.topic(id), payload)
            .await;
        outcome = outcome.and(
            self.handle
                .publish_retained(
                    self.handle.topic(&format!("{id}/availability")),
                    json!({ "state": availability }).to_string(),
                )
                .await,
        );
        if let Some(discovery) = discovery {
            outcome = outcome.and(
                self.handle
                    .publish_retained(self.discovery_topic(id), discovery)
                    .await,
            );
        }
        if outcome.is_err() {
            debug!(device = %id, "the client stopped: state not published");
        }
    }

    /// `s2gw_<base with / as _>`: what every identifier of this gateway starts with.
    fn gateway_id(&self) -> String {
        format!("s2gw_{}", self.handle.base().replace('/', "_"))
    }

    fn object_id(&self, device_id: &str) -> String {
        format!("{}_{device_id}", self.gateway_id())
    }

    fn discovery_topic(&self, device_id: &str) -> String {
        format!(
            "{}/device/{}/config",
            self.handle.discovery_prefix(),
            self.object_id(device_id)
        )
    }

    /// The device-based discovery payload, or `None` with discovery off.
    fn discovery_payload(&self, state: &DeviceState) -> Option<Bytes> {
        if !self.handle.discovery_enabled() {
            return None;
        }
        let ids = DiscoveryIds {
            object_id: self.object_id(&state.device_id),
            state_topic: self.handle.topic(&state.device_id),
            bridge_state: self.handle.topic("bridge/state"),
        };
        Some(Bytes::from(discovery_json(&ids, state).to_string()))
    }

    async fn run(self) {
        let shutdown = self.handle.shutdown_token();
        let subscribed = async {
            let ha = self
                .handle
                .subscribe(&format!("{}/status", self.handle.discovery_prefix()), 64)
                .await?;
            let set = self
                .handle
                .subscribe(&self.handle.topic("+/set"), 1024)
                .await?;
            Ok::<_, crate::MqttError>((ha, set))
        };
        let Ok((mut ha, mut set)) = subscribed.await else {
            return;
        };
        let mut status = self.handle.status();
        let mut seen_connects = 0;
        let first = *status.borrow_and_update();
        if first.connected {
            seen_connects = first.connects;
            self.sweep().await;
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(message) = ha.recv() => self.on_ha_status(&message).await,
                Some(message) = set.recv() => self.on_set(&message).await,
                changed = status.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = *status.borrow_and_update();
                    if now.connected && now.connects > seen_connects {
                        seen_connects = now.connects;
                        self.sweep().await;
                    }
                }
            }
        }
    }

    /// Home Assistant came (back) online: it forgot nothing retained, but it may have
    /// started after the broker lost discovery; send it all again.
    async fn on_ha_status(&self, message: &Inbound) {
        if message.payload.as_ref() != b"online" {
            return;
        }
        let topics: Vec<(String, Bytes)> = lock(&self.inner)
            .devices
            .iter()
            .filter_map(|(id, e)| e.discovery.clone().map(|d| (self.discovery_topic(id), d)))
            .collect();
        info!(
            devices = topics.len(),
            "Home Assistant is online: re-sending discovery"
        );
        for (topic, payload) in topics {
            if self.handle.publish_retained(topic, payload).await.is_err() {
                return;
            }
        }
    }

    async fn on_set(&self, message: &Inbound) {
        let Some(device_id) = message
            .topic
            .strip_prefix(&format!("{}/", self.handle.base()))
            .and_then(|rest| rest.strip_suffix("/set"))
        else {
            return;
        };
        let Some(allowed) = parse_control(&message.payload) else {
            warn!(device = %device_id, bytes = message.payload.len(), "command is not {{\"cem_control\":\"ON\"|\"OFF\"}}: ignored");
            return;
        };
        if message.retained {
            warn!(device = %device_id, "retained command ignored (commands must not be retained)");
            return;
        }
        let last = {
            let mut inner = lock(&self.inner);
            let Some(entry) = inner.devices.get_mut(device_id) else {
                warn!(device = %device_id, "command for an unknown device: ignored");
                return;
            };
            entry.commanded = true;
            entry.control.send_replace(allowed);
            entry.last.clone()
        };
        info!(device = %device_id, allowed, "CEM control switched");
        if let Some(state) = last {
            self.publish_state(state).await;
        }
    }

    /// Read the gateway's retained discovery and device states back: clear discovery of
    /// devices no longer configured, restore the control switches.
    async fn sweep(&self) {
        self.read_back().await;
        self.swept.send_replace(true);
    }

    async fn read_back(&self) {
        let marker = self.handle.topic("bridge/sync");
        let disc_filter = format!("{}/device/+/config", self.handle.discovery_prefix());
        let state_filter = self.handle.topic("+");
        let retained = async {
            let mut sync = self.handle.subscribe(&marker, 16).await?;
            let mut disc = self.handle.subscribe(&disc_filter, 100_000).await?;
            let mut states = self.handle.subscribe(&state_filter, 100_000).await?;
            let nonce = uuid::Uuid::new_v4().to_string();
            self.handle.publish(marker.clone(), nonce.clone()).await?;
            // Messages are dispatched in arrival order: once the marker is here, every
            // retained message the subscriptions brought is already queued.
            let wait = async {
                while let Some(m) = sync.recv().await {
                    if m.payload.as_ref() == nonce.as_bytes() {
                        return;
                    }
                }
            };
            if tokio::time::timeout(SWEEP_TIMEOUT, wait).await.is_err() {
                warn!("the discovery read-back timed out: sweeping what arrived");
            }
            Ok::<_, crate::MqttError>((drain(&mut disc), drain(&mut states)))
        };
        let outcome = retained.await;
        for filter in [&marker, &disc_filter, &state_filter] {
            let _ = self.handle.unsubscribe(filter).await;
        }
        let Ok((discovery, states)) = outcome else {
            return;
        };
        self.restore_switches(&states);
        self.clear_stale(&discovery).await;
    }

    fn restore_switches(&self, states: &[Inbound]) {
        let prefix = format!("{}/", self.handle.base());
        let mut inner = lock(&self.inner);
        for message in states.iter().filter(|m| m.retained) {
            let Some(id) = message.topic.strip_prefix(&prefix) else {
                continue;
            };
            let Some(entry) = inner.devices.get_mut(id) else {
                continue;
            };
            let saved = serde_json::from_slice::<Value>(&message.payload)
                .ok()
                .and_then(|v| {
                    v.get("cem_control")
                        .and_then(Value::as_str)
                        .map(|s| s == "ON")
                });
            if let (false, Some(allowed)) = (entry.commanded, saved) {
                entry.control.send_replace(allowed);
            }
        }
    }

    async fn clear_stale(&self, discovery: &[Inbound]) {
        if !self.handle.discovery_enabled() {
            return;
        }
        let known: BTreeSet<String> = lock(&self.inner)
            .devices
            .keys()
            .map(|id| self.object_id(id))
            .collect();
        let own_prefix = format!("{}_", self.gateway_id());
        for message in discovery
            .iter()
            .filter(|m| m.retained && !m.payload.is_empty())
        {
            let Some(object_id) = message.topic.split('/').rev().nth(1) else {
                continue;
            };
            if known.contains(object_id) || !object_id.starts_with(&own_prefix) {
                continue;
            }
            if !is_own_discovery(&message.payload, object_id) {
                continue;
            }
            info!(topic = %message.topic, "removing discovery of a device no longer configured");
            if self
                .handle
                .clear_retained(message.topic.clone())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

fn drain(rx: &mut Subscription) -> Vec<Inbound> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(m);
    }
    out
}

/// Published by an s2gw (origin) for this very object id.
fn is_own_discovery(payload: &[u8], object_id: &str) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(payload) else {
        return false;
    };
    let origin = value.pointer("/o/name").and_then(Value::as_str) == Some("s2gw");
    let ids = value
        .pointer("/dev/ids")
        .and_then(Value::as_array)
        .is_some_and(|ids| ids.iter().any(|i| i.as_str() == Some(object_id)));
    origin && ids
}

/// `{"cem_control":"ON"|"OFF"}` (also `true`/`false`, any case).
fn parse_control(payload: &[u8]) -> Option<bool> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    match value.get("cem_control")? {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("on") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("off") => Some(false),
        _ => None,
    }
}

fn state_json(state: &DeviceState, control_allowed: bool) -> Bytes {
    let body = json!({
        "name": state.name,
        "kind": state.kind,
        "power_w": state.power_w,
        "energy_wh": state.energy_wh,
        "soc": state.soc,
        "control_type": state.control_type,
        "active": state.active,
        "cem_link": state.cem_link,
        "cem_control": if control_allowed { "ON" } else { "OFF" },
        "available": state.available,
        "updated": crate::time::rfc3339(state.updated),
    });
    Bytes::from(body.to_string())
}

struct DiscoveryIds {
    object_id: String,
    state_topic: String,
    bridge_state: String,
}

fn discovery_json(ids: &DiscoveryIds, state: &DeviceState) -> Value {
    let oid = &ids.object_id;
    let sensor = |key: &str, name: &str, class: &str, state_class: &str, unit: &str| {
        json!({
            "p": "sensor",
            "unique_id": format!("{oid}_{key}"),
            "name": name,
            "device_class": class,
            "state_class": state_class,
            "unit_of_measurement": unit,
            "state_topic": ids.state_topic,
            "value_template": format!("{{{{ value_json.{key} }}}}"),
        })
    };
    let mut cmps = serde_json::Map::new();
    cmps.insert(
        "power_w".into(),
        sensor("power_w", "Power", "power", "measurement", "W"),
    );
    if state.energy_wh.is_some() {
        cmps.insert(
            "energy_wh".into(),
            sensor("energy_wh", "Energy", "energy", "total_increasing", "Wh"),
        );
    }
    if state.soc.is_some() || state.kind == DeviceKind::Battery {
        cmps.insert(
            "soc".into(),
            sensor("soc", "State of charge", "battery", "measurement", "%"),
        );
    }
    // What the CEM does with the device: which S2 control type it selected and the
    // instruction in force. Text, so no device class; `none` and `autonomous` stand for
    // the nulls of the state, which Home Assistant would show as the word "None".
    let text = |key: &str, name: &str, icon: &str, absent: &str| {
        json!({
            "p": "sensor",
            "unique_id": format!("{oid}_{key}"),
            "name": name,
            "icon": icon,
            "state_topic": ids.state_topic,
            "value_template": format!("{{{{ value_json.{key} or '{absent}' }}}}"),
        })
    };
    cmps.insert(
        "control_type".into(),
        text(
            "control_type",
            "S2 control type",
            "mdi:tune-variant",
            "none",
        ),
    );
    cmps.insert(
        "active".into(),
        text(
            "active",
            "Active instruction",
            "mdi:playlist-check",
            "autonomous",
        ),
    );
    cmps.insert(
        "cem_connected".into(),
        json!({
            "p": "binary_sensor",
            "unique_id": format!("{oid}_cem_connected"),
            "name": "CEM connected",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "state_topic": ids.state_topic,
            "value_template": "{{ 'ON' if value_json.cem_link == 'connected' else 'OFF' }}",
        }),
    );
    let command_topic = format!("{}/set", ids.state_topic);
    cmps.insert(
        "cem_control".into(),
        json!({
            "p": "switch",
            "unique_id": format!("{oid}_cem_control"),
            "name": "CEM control allowed",
            "icon": "mdi:transmission-tower",
            "state_topic": ids.state_topic,
            "command_topic": command_topic,
            "payload_on": r#"{"cem_control":"ON"}"#,
            "payload_off": r#"{"cem_control":"OFF"}"#,
            "value_template": "{{ value_json.cem_control }}",
            "state_on": "ON",
            "state_off": "OFF",
        }),
    );
    let mut dev = json!({ "ids": [oid], "name": state.name });
    if let Some(m) = &state.manufacturer {
        dev["mf"] = json!(m);
    }
    if let Some(m) = &state.model {
        dev["mdl"] = json!(m);
    }
    json!({
        "dev": dev,
        "o": { "name": "s2gw", "sw": env!("CARGO_PKG_VERSION") },
        "cmps": cmps,
        "availability": [
            { "topic": ids.bridge_state, "value_template": "{{ value_json.state }}" },
            { "topic": format!("{}/availability", ids.state_topic), "value_template": "{{ value_json.state }}" },
        ],
        "availability_mode": "all",
        "qos": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_payloads() {
        assert_eq!(parse_control(br#"{"cem_control":"OFF"}"#), Some(false));
        assert_eq!(parse_control(br#"{"cem_control":"on"}"#), Some(true));
        assert_eq!(parse_control(br#"{"cem_control":true}"#), Some(true));
        assert_eq!(parse_control(br#"{"cem_control":"maybe"}"#), None);
        assert_eq!(parse_control(b"OFF"), None);
        assert_eq!(parse_control(&vec![b'{'; 1000]), None);
    }

    #[test]
    fn own_discovery_is_recognised() {
        let mut state = DeviceState::new("pv", "PV", DeviceKind::PvInverter);
        state.energy_wh = Some(1.0);
        let ids = DiscoveryIds {
            object_id: "s2gw_x_pv".into(),
            state_topic: "x/pv".into(),
            bridge_state: "x/bridge/state".into(),
        };
        let payload = discovery_json(&ids, &state).to_string();
        assert!(is_own_discovery(payload.as_bytes(), "s2gw_x_pv"));
        assert!(!is_own_discovery(payload.as_bytes(), "s2gw_x_other"));
        assert!(!is_own_discovery(b"{}", "s2gw_x_pv"));
    }
}
