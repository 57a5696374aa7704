//! The state mirror: per-device retained state and availability, Home Assistant
//! device-based discovery, and the "CEM control allowed" switch.
//!
//! The daemon feeds it [`DeviceState`]s; it owns everything MQTT about them, including the
//! Energy dashboard's counters (`energy.rs`), integrated from every state it is shown
//! ([`StateMirror::observe`]) whether published or not. Discovery of
//! devices that left the config is found again at every connect by reading the
//! gateway's own retained discovery topics back (recognised by origin `s2gw` and the
//! gateway's identifier prefix) and cleared, so nothing needs to be stored on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use s2gw_core::LogThrottle;
use s2gw_core::device::DeviceKind;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::client::{Inbound, MqttHandle, Subscription};
use crate::discovery::{self, DiscoveryIds, GatewayTopics};
use crate::energy::EnergyCounters;

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
    /// Whether the device has an energy register (`energy_wh`) at all, from its
    /// configuration: discovery offers the energy sensor by this, not by a live value.
    pub reports_energy: bool,
    /// Whether a CEM can control anything of it (a control type besides
    /// NOT_CONTROLABLE), from its configuration: only then is there a "CEM control
    /// allowed" switch.
    pub controllable: bool,
    /// Whether a CEM can pair with it through the gateway's S2 Connect pairing server,
    /// from the configuration: only then are there a "Start pairing" button and a
    /// "Pairing code" sensor.
    pub pairable: bool,
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
            reports_energy: false,
            controllable: false,
            pairable: false,
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
    /// The Energy dashboard's counters, made with the first state.
    energy: Option<EnergyCounters>,
    /// The previous run's retained state, to continue its counters from.
    saved: Option<Value>,
    /// Counts the pairing codes shown: only the latest code's expiry withdraws it.
    pairing_shown: u64,
}

impl Entry {
    fn new() -> Self {
        let (control, _) = watch::channel(true);
        Self {
            last: None,
            control,
            commanded: false,
            discovery: None,
            energy: None,
            saved: None,
            pairing_shown: 0,
        }
    }
}

impl Entry {
    /// Add the state's power to the counters (made, and continued from the previous
    /// run's, on first use).
    fn observe(&mut self, state: &DeviceState) {
        let fits = self
            .energy
            .as_ref()
            .is_some_and(|e| e.fits(state.kind, state.reports_energy));
        if !fits {
            let mut counters = EnergyCounters::new(state.kind, state.reports_energy);
            if let Some(saved) = self.saved.take() {
                counters.restore(&saved);
            }
            self.energy = Some(counters);
        }
        if let Some(counters) = &mut self.energy {
            counters.sample(state.power_w, tokio::time::Instant::now());
        }
    }
}

struct Inner {
    devices: BTreeMap<String, Entry>,
    /// Commands dropped (malformed, retained, for no device): logged, then counted.
    dropped: LogThrottle,
    /// Issues a pairing code for a device, with the daemon's S2 Connect pairing server.
    pairing: Option<PairingIssuer>,
}

/// Issues a device's pairing code: `(code, how long it is valid)`, or why not.
pub type PairingIssuer = Arc<dyn Fn(&str) -> Result<(String, Duration), String> + Send + Sync>;

/// A command on `<base>/<device>/set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// `{"cem_control":"ON"|"OFF"}`.
    Control(bool),
    /// `{"pairing":"START"}`: show a pairing code on `<base>/<device>/pairing`.
    StartPairing,
}

/// The state mirror; cheap to clone.
#[derive(Clone)]
pub struct StateMirror {
    handle: MqttHandle,
    inner: Arc<Mutex<Inner>>,
    /// The gateway device's name in Home Assistant.
    gateway_name: Arc<str>,
    /// The web UI's address, for the devices' `configuration_url`.
    web_ui: Option<Arc<str>>,
    /// Set once the first read-back of the retained states is done. Until then no state
    /// is published: it would overwrite the switch positions the read-back restores.
    swept: Arc<watch::Sender<bool>>,
}

impl std::fmt::Debug for StateMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMirror").finish_non_exhaustive()
    }
}

/// A device id as a URL fragment part: ids are `[A-Za-z0-9_-]`, which need no escaping;
/// anything else is escaped anyway, so a link never breaks.
fn percent_encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StateMirror {
    /// Start the mirror for the devices in the config (`device_ids`): discovery of any
    /// other device this gateway published before is removed at the next connect.
    /// `gateway_name` names the gateway device every device hangs under in Home
    /// Assistant; `web_ui`, the web UI's address (`http://host:port/`) where it runs,
    /// becomes each device's "visit" link (`configuration_url`). The task ends with the
    /// client's shutdown.
    pub fn start(
        handle: MqttHandle,
        device_ids: Vec<String>,
        gateway_name: &str,
        web_ui: Option<String>,
    ) -> (StateMirror, JoinHandle<()>) {
        let devices = device_ids
            .into_iter()
            .map(|id| (id, Entry::new()))
            .collect();
        let mirror = StateMirror {
            handle,
            inner: Arc::new(Mutex::new(Inner {
                devices,
                dropped: LogThrottle::default(),
                pairing: None,
            })),
            gateway_name: Arc::from(gateway_name),
            web_ui: web_ui.map(Arc::from),
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

    /// Answer "Start pairing" presses with codes from `issuer`.
    pub fn set_pairing_issuer(&self, issuer: PairingIssuer) {
        lock(&self.inner).pairing = Some(issuer);
    }

    /// Publish (not retained: it is a secret) the pairing code a device shows, and
    /// withdraw it when it expires.
    async fn show_pairing_code(&self, device_id: &str) {
        let issuer = lock(&self.inner).pairing.clone();
        let Some(issuer) = issuer else {
            warn!(device = %device_id, "pairing requested, but the gateway runs no S2 Connect pairing server ([s2connect])");
            return;
        };
        let (code, valid) = match issuer(device_id) {
            Ok(issued) => issued,
            Err(error) => {
                warn!(device = %device_id, %error, "no pairing code");
                return;
            }
        };
        info!(device = %device_id, valid_s = valid.as_secs(), "pairing code shown on MQTT");
        let topic = self.handle.topic(&format!("{device_id}/pairing"));
        let shown = json!({ "code": code, "valid_s": valid.as_secs() }).to_string();
        if self.handle.publish(topic, shown).await.is_err() {
            return;
        }
        let shown = {
            let mut inner = lock(&self.inner);
            let Some(entry) = inner.devices.get_mut(device_id) else {
                return;
            };
            entry.pairing_shown += 1;
            entry.pairing_shown
        };
        let mirror = self.clone();
        let device = device_id.to_string();
        tokio::spawn(async move {
            let shutdown = mirror.handle.shutdown_token();
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(valid) => {
                    // A later press replaced this code (and the file with it): that
                    // code's own expiry withdraws it, not this one's.
                    let latest = lock(&mirror.inner)
                        .devices
                        .get(&device)
                        .is_some_and(|e| e.pairing_shown == shown);
                    if latest {
                        mirror.withdraw_pairing_code(&device).await;
                    }
                }
            }
        });
    }

    /// Clear the pairing code a device shows (it was used, or it expired).
    pub async fn withdraw_pairing_code(&self, device_id: &str) {
        let topic = self.handle.topic(&format!("{device_id}/pairing"));
        let cleared = json!({ "code": null }).to_string();
        if self.handle.publish(topic, cleared).await.is_err() {
            debug!(device = %device_id, "the client stopped: pairing code not withdrawn");
        }
    }

    /// Show the mirror a state it need not publish (within the deadbands): its power
    /// still goes into the Energy dashboard's counters.
    pub fn observe(&self, state: &DeviceState) {
        lock(&self.inner)
            .devices
            .entry(state.device_id.clone())
            .or_insert_with(Entry::new)
            .observe(state);
    }

    /// Publish a device's state (retained) and availability, and its discovery when new
    /// or changed. The state's power goes into the counters first, as with
    /// [`observe`](Self::observe).
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
            entry.observe(&state);
            let payload = state_json(&state, *entry.control.borrow(), entry.energy.as_ref());
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

    /// `s2gw_<base with / as _>`, or `s2gw` for the default base `s2gw` (not
    /// `s2gw_s2gw`): the gateway device's identifier, which every other starts with.
    fn gateway_id(&self) -> String {
        match self.handle.base() {
            "s2gw" => "s2gw".to_string(),
            base => format!("s2gw_{}", base.replace('/', "_")),
        }
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
            gateway_id: self.gateway_id(),
            configuration_url: self
                .web_ui
                .as_ref()
                .map(|base| format!("{base}#/device/{}", percent_encode(&state.device_id))),
        };
        Some(Bytes::from(discovery::device_json(&ids, state).to_string()))
    }

    /// Publish the gateway device's discovery (with discovery on).
    async fn publish_gateway(&self) -> Result<(), crate::MqttError> {
        if !self.handle.discovery_enabled() {
            return Ok(());
        }
        let topics = GatewayTopics {
            state: self.handle.topic("bridge/state"),
            info: self.handle.topic("bridge/info"),
            health: self.handle.topic("bridge/health"),
        };
        let id = self.gateway_id();
        let mut payload = discovery::gateway_json(&id, &self.gateway_name, &topics);
        if let Some(base) = &self.web_ui {
            payload["dev"]["cu"] = serde_json::json!(base.as_ref());
        }
        let topic = format!("{}/device/{id}/config", self.handle.discovery_prefix());
        self.handle
            .publish_retained(topic, payload.to_string())
            .await
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
        if self.publish_gateway().await.is_err() {
            return;
        }
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
        let now = std::time::Instant::now();
        let Some(command) = parse_command(&message.payload) else {
            let bytes = message.payload.len();
            lock(&self.inner).dropped.warn("malformed command", now, || {
                warn!(device = %device_id, bytes, "command is not {{\"cem_control\":\"ON\"|\"OFF\"}} or {{\"pairing\":\"START\"}}: ignored");
            });
            return;
        };
        if message.retained {
            lock(&self.inner).dropped.warn("retained command", now, || {
                warn!(device = %device_id, "retained command ignored (commands must not be retained)");
            });
            return;
        }
        let known = lock(&self.inner).devices.contains_key(device_id);
        let allowed = match command {
            _ if !known => {
                lock(&self.inner)
                    .dropped
                    .warn("command for an unknown device", now, || {
                        warn!(device = %device_id, "command for an unknown device: ignored");
                    });
                return;
            }
            Command::StartPairing => return self.show_pairing_code(device_id).await,
            Command::Control(allowed) => allowed,
        };
        let last = {
            let mut inner = lock(&self.inner);
            let Some(entry) = inner.devices.get_mut(device_id) else {
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
        if self.publish_gateway().await.is_err() {
            debug!("the client stopped: gateway discovery not published");
        }
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

    /// Restore the switches and keep the previous run's counters for the first state.
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
            let Ok(value) = serde_json::from_slice::<Value>(&message.payload) else {
                continue;
            };
            let saved = value
                .get("cem_control")
                .and_then(Value::as_str)
                .map(|s| s == "ON");
            if let (false, Some(allowed)) = (entry.commanded, saved) {
                entry.control.send_replace(allowed);
            }
            // The counters continue from the previous run's, once: at a later reconnect
            // the retained state is this run's own.
            if entry.energy.is_none() {
                entry.saved = Some(value);
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
fn parse_command(payload: &[u8]) -> Option<Command> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    if let Some(pairing) = value.get("pairing") {
        return match pairing {
            Value::String(s) if s.eq_ignore_ascii_case("start") => Some(Command::StartPairing),
            _ => None,
        };
    }
    match value.get("cem_control")? {
        Value::Bool(b) => Some(Command::Control(*b)),
        Value::String(s) if s.eq_ignore_ascii_case("on") => Some(Command::Control(true)),
        Value::String(s) if s.eq_ignore_ascii_case("off") => Some(Command::Control(false)),
        _ => None,
    }
}

/// Rounded to `decimals`: what a reading's resolution justifies, not float noise.
fn round(value: Option<f64>, decimals: i32) -> Option<f64> {
    let scale = 10f64.powi(decimals);
    value.map(|v| (v * scale).round() / scale + 0.0)
}

fn state_json(
    state: &DeviceState,
    control_allowed: bool,
    energy: Option<&EnergyCounters>,
) -> Bytes {
    let mut body = json!({
        "name": state.name,
        "kind": state.kind,
        "power_w": round(state.power_w, 0),
        "energy_wh": round(state.energy_wh, 0),
        "soc": round(state.soc, 1),
        "control_type": state.control_type,
        "active": state.active,
        "cem_link": state.cem_link,
        "cem_control": if control_allowed { "ON" } else { "OFF" },
        "available": state.available,
        "updated": crate::time::rfc3339(state.updated),
    });
    if state.kind == DeviceKind::PvInverter {
        // Home Assistant's power cards want production positive.
        body["production_w"] = json!(round(state.power_w.map(|p| (-p).max(0.0)), 0));
    }
    if let Some(counters) = energy {
        let (values, sources) = counters.to_json(state.energy_wh);
        for (key, value) in values {
            body[key] = value;
        }
        body["energy_sources"] = sources;
    }
    Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_payloads() {
        let control = |b: bool| Some(Command::Control(b));
        assert_eq!(parse_command(br#"{"cem_control":"OFF"}"#), control(false));
        assert_eq!(parse_command(br#"{"cem_control":"on"}"#), control(true));
        assert_eq!(parse_command(br#"{"cem_control":true}"#), control(true));
        assert_eq!(parse_command(br#"{"cem_control":"maybe"}"#), None);
        assert_eq!(
            parse_command(br#"{"pairing":"START"}"#),
            Some(Command::StartPairing)
        );
        assert_eq!(parse_command(br#"{"pairing":"STOP"}"#), None);
        assert_eq!(parse_command(b"OFF"), None);
        assert_eq!(parse_command(&vec![b'{'; 1000]), None);
    }

    #[test]
    fn values_are_rounded_to_their_resolution_and_production_is_positive() {
        let mut state = DeviceState::new("pv", "PV", DeviceKind::PvInverter);
        state.power_w = Some(-1267.3327783860568);
        state.energy_wh = Some(12000.201000000001);
        state.soc = Some(55.55);
        let v: Value = serde_json::from_slice(&state_json(&state, true, None)).unwrap();
        assert_eq!(v["power_w"], json!(-1267.0));
        assert_eq!(v["production_w"], json!(1267.0));
        assert_eq!(v["energy_wh"], json!(12000.0));
        assert_eq!(v["soc"], json!(55.6));
        state.power_w = Some(0.2);
        let v: Value = serde_json::from_slice(&state_json(&state, true, None)).unwrap();
        assert_eq!(
            v["production_w"],
            json!(0.0),
            "consumption is no production"
        );
    }

    #[test]
    fn own_discovery_is_recognised() {
        let mut state = DeviceState::new("pv", "PV", DeviceKind::PvInverter);
        state.energy_wh = Some(1.0);
        let ids = DiscoveryIds {
            object_id: "s2gw_x_pv".into(),
            state_topic: "x/pv".into(),
            bridge_state: "x/bridge/state".into(),
            gateway_id: "s2gw_x".into(),
            configuration_url: None,
        };
        let payload = discovery::device_json(&ids, &state).to_string();
        assert!(is_own_discovery(payload.as_bytes(), "s2gw_x_pv"));
        assert!(!is_own_discovery(payload.as_bytes(), "s2gw_x_other"));
        assert!(!is_own_discovery(b"{}", "s2gw_x_pv"));
    }
}
