//! The daemon's MQTT side, when the config has `[mqtt]`: one client for the whole gateway,
//! the state mirror fed from every virtual RM's [`RmView`], the "CEM control allowed"
//! switches handed to the virtual RMs, and the bridge.
//!
//! A device's state is published on a change beyond the deadbands
//! ([`StatePacer`](s2gw_mqtt::StatePacer)), at most once per `state_interval_ms` and at
//! least once per `state_heartbeat_s`; every change still reaches the mirror's energy
//! counters.
//!
//! The "CEM control allowed" switches survive a restart: the mirror reads the retained
//! states back before it publishes any, so the first state published says what the
//! previous run said.
//!
//! The client has a shutdown token of its own, cancelled only after everything else has
//! stopped: MQTT devices need it to send their fail-safe releases, and S2-over-MQTT links
//! to say their sessions are over, before the client says goodbye.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use s2gw_core::s2::ControlType;
use s2gw_core::{CancellationToken, DeviceStatus};
use s2gw_mqtt::{BridgeData, DeviceState, Mqtt, MqttHandle, StateMirror, StatePacer};
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
    state_heartbeat: Duration,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The devices a CEM can pair with through `[s2connect]`: they get a "Start pairing"
    /// button.
    pairable: BTreeSet<String>,
}

/// What the mirror says about a device besides its view: who it is, for people.
#[derive(Debug, Clone)]
struct Identity {
    id: String,
    name: String,
    manufacturer: Option<String>,
    model: Option<String>,
    reports_energy: bool,
    controllable: bool,
    pairable: bool,
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
        let (mirror, mirror_task) = StateMirror::start(
            handle.clone(),
            ids,
            &config.gateway.name,
            web_ui_url(config),
        );
        let pairable = pairing_issuer(config, &mirror);
        Ok(Self {
            handle,
            mirror,
            state_interval: section.state_interval,
            state_heartbeat: section.state_heartbeat,
            token,
            tasks: vec![client, mirror_task],
            pairable,
        })
    }

    /// The device's "CEM control allowed" switch, for its virtual RM.
    pub fn control_allowed(&self, device_id: &str) -> watch::Receiver<bool> {
        self.mirror.control_allowed(device_id)
    }

    /// Mirror a device's view to the broker: at once, then on every change beyond the
    /// deadbands, at most once per `state_interval` (always the latest) and at least once
    /// per `state_heartbeat`.
    pub fn mirror_device(&mut self, device: &DeviceSection, view: watch::Receiver<RmView>) {
        let identity = Identity {
            id: device.id.clone(),
            name: device.name.clone(),
            manufacturer: device.profile.manufacturer.clone(),
            model: device.profile.model.clone(),
            reports_energy: crate::gateway::devices::reports_energy(device),
            controllable: device
                .control_types
                .iter()
                .any(|c| *c != ControlType::NotControllable),
            pairable: self.pairable.contains(&device.id),
        };
        let pacing = Pacing {
            interval: self.state_interval,
            heartbeat: self.state_heartbeat,
        };
        self.tasks.push(tokio::spawn(feed(
            self.mirror.clone(),
            identity,
            view,
            pacing,
            self.token.clone(),
        )));
    }

    /// Withdraw the pairing code a device shows once the pairing server paired it.
    pub fn withdraw_codes_when_paired(&mut self, paired: &s2gw_s2connect::PairedEvents) {
        let mut rx = paired.subscribe();
        let mirror = self.mirror.clone();
        let token = self.token.clone();
        self.tasks.push(tokio::spawn(async move {
            loop {
                let device = tokio::select! {
                    () = token.cancelled() => return,
                    next = rx.recv() => match next {
                        Ok(device) => device,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    },
                };
                mirror.withdraw_pairing_code(&device).await;
            }
        }));
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

/// How often a device's state may and must be published.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    interval: Duration,
    heartbeat: Duration,
}

async fn feed(
    mirror: StateMirror,
    identity: Identity,
    mut view: watch::Receiver<RmView>,
    pacing: Pacing,
    token: CancellationToken,
) {
    let mut pacer = StatePacer::new(pacing.heartbeat);
    loop {
        let state = device_state(&identity, &view.borrow_and_update());
        let now = tokio::time::Instant::now();
        if pacer.due(&state, now) {
            tokio::select! {
                () = token.cancelled() => return,
                () = mirror.publish_state(state.clone()) => {}
            }
            pacer.published(state, now);
            // The rate limit: changes during the pause are folded into the next publish.
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(pacing.interval) => {}
            }
        } else {
            mirror.observe(&state);
        }
        tokio::select! {
            () = token.cancelled() => return,
            changed = view.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(pacer.next_heartbeat()) => {}
        }
    }
}

/// Let the "Start pairing" buttons issue codes (with `[s2connect]`); the pairable devices.
fn pairing_issuer(config: &Config, mirror: &StateMirror) -> BTreeSet<String> {
    let codes = crate::gateway::s2connect::pairing_codes(config);
    let Some(section) = &config.s2connect else {
        return BTreeSet::new();
    };
    let pairable = codes.keys().cloned().collect();
    let validity = section.code_validity;
    mirror.set_pairing_issuer(Arc::new(move |device: &str| {
        let codes = codes
            .get(device)
            .ok_or_else(|| format!("{device} is not on an s2connect CEM link"))?;
        let issued = codes.issue(validity).map_err(|e| e.to_string())?;
        Ok((issued.code, validity))
    }));
    pairable
}

/// The mirror's state of a device from its virtual RM's view. Values of a device that
/// cannot be read are unknown (`None`), never the last ones seen.
fn device_state(identity: &Identity, view: &RmView) -> DeviceState {
    let mut state = DeviceState::new(&identity.id, &identity.name, view.kind);
    state.manufacturer = identity.manufacturer.clone();
    state.model = identity.model.clone();
    state.reports_energy = identity.reports_energy;
    state.controllable = identity.controllable;
    state.pairable = identity.pairable;
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

/// The web UI's address for Home Assistant's "visit" links, where `[web]` is configured:
/// the listen address, or this host's name when it listens on every address. None for
/// port 0 (tests: the port is known only once bound).
fn web_ui_url(config: &Config) -> Option<String> {
    let listen = config.web.as_ref()?.listen;
    if listen.port() == 0 {
        return None;
    }
    let host = if listen.ip().is_unspecified() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())?
    } else {
        match listen.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    Some(format!("http://{host}:{}/", listen.port()))
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
            reports_energy: true,
            controllable: true,
            pairable: false,
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
