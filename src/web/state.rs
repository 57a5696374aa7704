//! What the web UI knows of the running gateway: handles on every virtual RM, its
//! switch and statistics, the taps, and the config it runs. Reading it does no I/O.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use s2gw_mqtt::LinkStatus;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::bus::taps::Counters;
use crate::config::control_type_name;
use crate::gateway::gate::Gate;
use crate::gateway::metered::DeviceStats;
use crate::gateway::mqtt::link_name;
use crate::rm::{LinkState, RmView};

use super::history::History;
use super::traffic::Traffic;

/// One device as the web UI shows it.
pub struct DeviceHandle {
    /// The config's `id`.
    pub id: String,
    /// The S2 resource id.
    pub resource_id: String,
    /// The profile's name.
    pub profile: String,
    /// `sim`, `modbus`, `mqtt` or `ble`.
    pub adapter: &'static str,
    /// The CEM link's name.
    pub cem: String,
    /// The virtual RM's live view.
    pub view: watch::Receiver<RmView>,
    /// The "CEM control allowed" switch.
    pub gate: Gate,
    /// Reads and commands.
    pub stats: Arc<DeviceStats>,
}

/// One native RM.
pub struct NativeHandle {
    /// The config's `id`.
    pub id: String,
    /// The S2 resource id.
    pub resource_id: String,
    /// The CEM link's name.
    pub cem: String,
}

/// Everything the web UI reads.
pub struct WebData {
    /// `gateway.name`.
    pub gateway: String,
    /// The devices, in config order.
    pub devices: Vec<DeviceHandle>,
    /// The native RMs, in config order.
    pub natives: Vec<NativeHandle>,
    /// CEM links: (name, transport).
    pub links: Vec<(String, &'static str)>,
    /// The bus counters every gateway keeps.
    pub counters: Arc<Counters>,
    /// The web UI's tap.
    pub traffic: Arc<Traffic>,
    /// The MQTT connection, with `[mqtt]`.
    pub mqtt: Option<watch::Receiver<LinkStatus>>,
    /// The config file the daemon runs.
    pub source: PathBuf,
    /// The running config as `s2gw check` summarises it (no secrets: they never print).
    pub summary: String,
    /// When the gateway started.
    pub started: Instant,
    /// The power of every device over the last hour.
    pub history: History,
}

fn link_version(link: &LinkState) -> Option<&str> {
    match link {
        LinkState::Connected(v) => Some(v.as_str()),
        _ => None,
    }
}

impl WebData {
    /// The device with config id (or resource id) `id`.
    pub fn device(&self, id: &str) -> Option<&DeviceHandle> {
        self.devices
            .iter()
            .find(|d| d.id == id || d.resource_id == id)
    }

    /// A device's row of the overview.
    pub fn device_json(&self, d: &DeviceHandle) -> Value {
        let view = d.view.borrow();
        let readings = view.readings.as_ref().filter(|_| view.available);
        json!({
            "id": d.id,
            "name": view.name,
            "resource_id": d.resource_id,
            "kind": view.kind,
            "profile": d.profile,
            "adapter": d.adapter,
            "cem": d.cem,
            "available": view.available,
            "power_w": readings.map(|r| r.power_w),
            "energy_wh": readings.and_then(|r| r.energy_wh),
            "soc": readings.and_then(|r| r.soc),
            "offered": view.offered.iter().map(|c| control_type_name(*c)).collect::<Vec<_>>(),
            "control_type": view.control_type.map(control_type_name),
            "active": view.active,
            "cem_link": link_name(&view.link),
            "protocol_version": link_version(&view.link),
            "control_allowed": d.gate.allowed(),
            "sessions": view.sessions,
            "instructions_executed": view.instructions_executed,
            "instructions_failed": view.instructions_failed,
            "releases": view.releases,
            "updated": s2gw_core::clock::rfc3339(view.updated),
        })
    }

    /// The gateway's own state.
    pub fn gateway_json(&self) -> Value {
        let mqtt = self.mqtt.as_ref().map(|m| {
            let status = *m.borrow();
            json!({ "connected": status.connected, "connects": status.connects })
        });
        let links: Vec<Value> = self
            .links
            .iter()
            .map(|(name, transport)| {
                let (mut up, mut total) = (0, 0);
                for d in self.devices.iter().filter(|d| &d.cem == name) {
                    total += 1;
                    if matches!(d.view.borrow().link, LinkState::Connected(_)) {
                        up += 1;
                    }
                }
                json!({ "name": name, "transport": transport, "connected": up, "devices": total })
            })
            .collect();
        json!({
            "name": self.gateway,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "links": links,
            "mqtt": mqtt,
            "natives": self.natives.iter().map(|n| json!({
                "id": n.id, "resource_id": n.resource_id, "cem": n.cem,
            })).collect::<Vec<_>>(),
        })
    }

    /// The overview page's data: the gateway and every device.
    pub fn overview(&self) -> Value {
        json!({
            "gateway": self.gateway_json(),
            "devices": self.devices.iter().map(|d| self.device_json(d)).collect::<Vec<_>>(),
        })
    }

    /// The device page's data.
    pub fn device_page(&self, d: &DeviceHandle) -> Value {
        let latest: serde_json::Map<String, Value> = self
            .traffic
            .latest(&d.resource_id)
            .into_iter()
            .map(|(kind, text)| (kind, serde_json::from_str(&text).unwrap_or(Value::Null)))
            .collect();
        json!({
            "device": self.device_json(d),
            "history": self.history.of(&d.id),
            "latest": latest,
            "instructions": self.traffic.instructions(&d.resource_id),
        })
    }

    /// Every resource, devices and natives: (id, resource id).
    pub fn resources(&self) -> Vec<(String, String)> {
        let devices = self
            .devices
            .iter()
            .map(|d| (d.id.clone(), d.resource_id.clone()));
        let natives = self
            .natives
            .iter()
            .map(|n| (n.id.clone(), n.resource_id.clone()));
        devices.chain(natives).collect()
    }
}
