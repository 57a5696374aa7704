//! The daemon's MQTT side, when the config has `[mqtt]`: one client for the whole gateway,
//! the state mirror fed from every virtual RM's [`RmView`], the "CEM control allowed"
//! switches handed to the virtual RMs, and the bridge.
//!
//! The "CEM control allowed" switches survive a restart: before any device state is
//! published, the retained states are read back once and every switch that was off is
//! turned off again (by the mirror's own command topic), so the first state published
//! says what the previous run said.
//!
//! The client has a shutdown token of its own, cancelled only after everything else has
//! stopped: MQTT devices need it to send their fail-safe releases, and S2-over-MQTT links
//! to say their sessions are over, before the client says goodbye.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use s2gw_core::{CancellationToken, DeviceStatus};
use s2gw_mqtt::{BridgeData, DeviceState, Mqtt, MqttHandle, StateMirror};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, DeviceSection, MqttSection, control_type_name};
use crate::rm::{LinkState, RmView};

/// The running MQTT parts of the gateway.
pub struct MqttRuntime {
    /// The client every MQTT part shares.
    pub handle: MqttHandle,
    mirror: StateMirror,
    state_interval: Duration,
    /// The device ids whose switch was restored to off, once the read-back is done.
    restored: watch::Receiver<Option<Vec<String>>>,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// How long the read-back of retained states may take before it is cut short.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the mirror says about a device besides its view: who it is, for people.
#[derive(Debug, Clone)]
struct Identity {
    id: String,
    name: String,
    manufacturer: Option<String>,
    model: Option<String>,
}

impl MqttRuntime {
    /// Start the client and the mirror (which knows every configured device, so the
    /// discovery of devices no longer configured is removed at connect). Fails only on
    /// settings the client refuses (unreadable TLS files).
    pub fn start(section: &MqttSection, config: &Config) -> anyhow::Result<Self> {
        let token = CancellationToken::new();
        let (handle, client) = Mqtt::start(section.client.clone(), token.clone())
            .map_err(|e| anyhow::anyhow!("the MQTT client cannot start: {e}"))?;
        let ids: Vec<String> = config.devices.iter().map(|d| d.id.clone()).collect();
        let (mirror, mirror_task) = StateMirror::start(handle.clone(), ids.clone());
        let (done, restored) = watch::channel(None);
        let restore = tokio::spawn(restore_switches(handle.clone(), ids, done, token.clone()));
        Ok(Self {
            handle,
            mirror,
            state_interval: section.state_interval,
            restored,
            token,
            tasks: vec![client, mirror_task, restore],
        })
    }

    /// The device's "CEM control allowed" switch, for its virtual RM.
    pub fn control_allowed(&self, device_id: &str) -> watch::Receiver<bool> {
        self.mirror.control_allowed(device_id)
    }

    /// Mirror a device's view to the broker: at once, then on every change, at most once
    /// per `state_interval` and always the latest.
    pub fn mirror_device(&mut self, device: &DeviceSection, view: watch::Receiver<RmView>) {
        let identity = Identity {
            id: device.id.clone(),
            name: device.name.clone(),
            manufacturer: device.profile.manufacturer.clone(),
            model: device.profile.model.clone(),
        };
        let gate = self.mirror.control_allowed(&device.id);
        let first = first_publish(self.restored.clone(), gate, device.id.clone());
        self.tasks.push(tokio::spawn(feed(
            self.mirror.clone(),
            identity,
            view,
            self.state_interval,
            self.token.clone(),
            first,
        )));
    }

    /// Keep a task that lives as long as the client (a native RM on MQTT).
    pub fn keep(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Answer bridge requests from `data` and publish `bridge/info`.
    pub fn start_bridge(&mut self, data: Arc<dyn BridgeData>) {
        self.tasks
            .push(s2gw_mqtt::spawn_bridge(self.handle.clone(), data));
    }

    /// Stop the client (it publishes `{"state":"offline"}` and disconnects) and wait,
    /// bounded, for its tasks.
    pub async fn stop(self, grace: Duration) {
        self.token.cancel();
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("the MQTT client did not stop within {grace:?}");
        }
    }
}

/// Resolves when a device's state may first be published: the switches are restored, and
/// this device's is off already if it was off before.
async fn first_publish(
    mut restored: watch::Receiver<Option<Vec<String>>>,
    mut gate: watch::Receiver<bool>,
    id: String,
) {
    let was_off = match restored.wait_for(Option::is_some).await {
        Ok(list) => list.as_ref().is_some_and(|ids| ids.contains(&id)),
        Err(_) => return,
    };
    if was_off {
        // Bounded: a lost command must not keep the device from being mirrored.
        let _ = tokio::time::timeout(RESTORE_TIMEOUT, gate.wait_for(|allowed| !allowed)).await;
    }
}

async fn feed(
    mirror: StateMirror,
    identity: Identity,
    mut view: watch::Receiver<RmView>,
    interval: Duration,
    token: CancellationToken,
    first: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        () = token.cancelled() => return,
        () = first => {}
    }
    loop {
        let state = device_state(&identity, &view.borrow_and_update());
        mirror.publish_state(state).await;
        // The rate limit: changes during the pause are folded into the next publish.
        tokio::select! {
            () = token.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        tokio::select! {
            () = token.cancelled() => return,
            changed = view.changed() => if changed.is_err() { return },
        }
    }
}

/// Once connected, read the retained device states back and turn the switches that were
/// off off again, through the mirror's command topic (the one way into its switches);
/// then tell the feeds which ones. Every device's exact topic is its own subscription, so
/// the mirror's wildcard subscriptions, which come and go, never cut this one short.
async fn restore_switches(
    handle: MqttHandle,
    ids: Vec<String>,
    done: watch::Sender<Option<Vec<String>>>,
    token: CancellationToken,
) {
    let mut status = handle.status();
    tokio::select! {
        () = token.cancelled() => return,
        up = status.wait_for(|s| s.connected) => if up.is_err() { return },
    }
    let off = tokio::select! {
        () = token.cancelled() => return,
        off = read_back_off(&handle, &ids) => off,
    };
    for id in &off {
        tracing::info!(device = %id, "CEM control was off before the restart: off again");
        let command = handle.publish(
            handle.topic(&format!("{id}/set")),
            r#"{"cem_control":"OFF"}"#,
        );
        if command.await.is_err() {
            return;
        }
    }
    done.send_replace(Some(off));
}

/// The devices whose retained state says `"cem_control":"OFF"`.
async fn read_back_off(handle: &MqttHandle, ids: &[String]) -> Vec<String> {
    let marker = handle.topic("bridge/restore");
    let filters: Vec<String> = ids.iter().map(|id| handle.topic(id)).collect();
    let mut off = Vec::new();
    let read = async {
        let mut sync = handle.subscribe(&marker, 4).await?;
        let mut states = Vec::new();
        for filter in &filters {
            states.push(handle.subscribe(filter, 16).await?);
        }
        let nonce = uuid::Uuid::new_v4().to_string();
        handle.publish(marker.clone(), nonce.clone()).await?;
        // Dispatch keeps arrival order: once the marker is back, every retained state the
        // subscriptions brought is queued.
        let wait = async {
            while let Some(m) = sync.recv().await {
                if m.payload.as_ref() == nonce.as_bytes() {
                    return;
                }
            }
        };
        if tokio::time::timeout(RESTORE_TIMEOUT, wait).await.is_err() {
            tracing::warn!("reading the retained device states back timed out");
        }
        for (id, rx) in ids.iter().zip(states.iter_mut()) {
            while let Ok(m) = rx.try_recv() {
                let saved = serde_json::from_slice::<Value>(&m.payload).ok();
                let was_off = saved.is_some_and(|v| v["cem_control"] == "OFF");
                if m.retained && was_off && !off.contains(id) {
                    off.push(id.clone());
                }
            }
        }
        Ok::<_, s2gw_mqtt::MqttError>(())
    };
    if read.await.is_err() {
        tracing::debug!("the client stopped while reading the switches back");
    }
    for filter in filters.iter().chain(std::iter::once(&marker)) {
        let _ = handle.unsubscribe(filter).await;
    }
    off
}

/// The mirror's state of a device from its virtual RM's view. Values of a device that
/// cannot be read are unknown (`None`), never the last ones seen.
fn device_state(identity: &Identity, view: &RmView) -> DeviceState {
    let mut state = DeviceState::new(&identity.id, &identity.name, view.kind);
    state.manufacturer = identity.manufacturer.clone();
    state.model = identity.model.clone();
    let fresh = view
        .readings
        .as_ref()
        .filter(|r| view.available && !matches!(r.status, DeviceStatus::Unavailable(_)));
    state.power_w = fresh.map(|r| r.power_w);
    state.energy_wh = fresh.and_then(|r| r.energy_wh);
    state.soc = fresh.and_then(|r| r.soc);
    state.control_type = view
        .control_type
        .map(control_type_name)
        .filter(|name| *name != "NO_SELECTION")
        .map(str::to_string);
    state.active = view.active.clone();
    state.cem_link = link_name(&view.link).to_string();
    state.available = view.available;
    state.updated = view.updated;
    state
}

/// The mirror's spelling of a link state: `down`, `handshaking`, `connected`.
pub fn link_name(link: &LinkState) -> &'static str {
    match link {
        LinkState::Down => "down",
        LinkState::Handshaking => "handshaking",
        LinkState::Connected(_) => "connected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2gw_core::Readings;
    use s2gw_core::device::DeviceKind;
    use s2gw_core::s2::ControlType;
    use std::time::SystemTime;

    fn view() -> RmView {
        RmView {
            resource_id: "r".into(),
            name: "PV".into(),
            kind: DeviceKind::PvInverter,
            readings: Some(Readings {
                power_w: -1200.0,
                energy_wh: Some(5.0),
                ..Readings::default()
            }),
            available: true,
            offered: vec![ControlType::PowerEnvelopeBasedControl],
            control_type: Some(ControlType::PowerEnvelopeBasedControl),
            active: Some("limit".into()),
            link: LinkState::Connected("0.0.2-beta".into()),
            updated: SystemTime::UNIX_EPOCH,
            instructions_executed: 0,
            instructions_failed: 0,
            releases: 0,
            sessions: 1,
        }
    }

    fn identity() -> Identity {
        Identity {
            id: "pv".into(),
            name: "Roof".into(),
            manufacturer: Some("M".into()),
            model: None,
        }
    }

    #[test]
    fn a_view_becomes_a_device_state() {
        let state = device_state(&identity(), &view());
        assert_eq!(state.device_id, "pv");
        assert_eq!(state.name, "Roof");
        assert_eq!(state.power_w, Some(-1200.0));
        assert_eq!(state.energy_wh, Some(5.0));
        assert_eq!(state.control_type.as_deref(), Some("PEBC"));
        assert_eq!(state.cem_link, "connected");
        assert_eq!(state.manufacturer.as_deref(), Some("M"));
        assert!(state.available);
    }

    #[test]
    fn an_unavailable_device_has_no_values() {
        let mut v = view();
        v.available = false;
        if let Some(r) = v.readings.as_mut() {
            r.status = DeviceStatus::Unavailable("stale".into());
        }
        v.control_type = Some(ControlType::NoSelection);
        let state = device_state(&identity(), &v);
        assert_eq!(state.power_w, None);
        assert_eq!(state.energy_wh, None);
        assert_eq!(state.control_type, None);
        assert!(!state.available);
    }
}
