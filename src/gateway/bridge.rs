//! What the MQTT bridge tells about the daemon (`<base>/bridge/info` and the `devices`,
//! `health` and `resource` requests): snapshots of the virtual RMs' views and the bus
//! counters, no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use s2gw_mqtt::{BridgeData, LinkStatus};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::bus::taps::{Counters, RouteCounters};
use crate::config::{Config, NativeTransport, control_type_name};
use crate::gateway::mqtt::link_name;
use crate::rm::RmView;

/// One virtual RM as the bridge shows it.
struct DeviceEntry {
    id: String,
    resource_id: String,
    profile: String,
    adapter: &'static str,
    cem: String,
    view: watch::Receiver<RmView>,
}

/// One native RM.
struct NativeEntry {
    id: String,
    resource_id: String,
    cem: String,
    transport: &'static str,
}

/// The daemon's [`BridgeData`].
pub struct DaemonBridge {
    gateway: String,
    started: Instant,
    /// When the daemon started, for the gateway device's "Started" entity.
    started_at: SystemTime,
    devices: Vec<DeviceEntry>,
    natives: Vec<NativeEntry>,
    /// CEM links: (name, transport).
    links: Vec<(String, &'static str)>,
    counters: Arc<Counters>,
    mqtt: watch::Receiver<LinkStatus>,
}

impl DaemonBridge {
    /// The bridge of `config`, with one view per device (in config order).
    pub fn new(
        config: &Config,
        views: &[watch::Receiver<RmView>],
        counters: Arc<Counters>,
        mqtt: watch::Receiver<LinkStatus>,
    ) -> Self {
        let devices = config
            .devices
            .iter()
            .zip(views)
            .map(|(d, view)| DeviceEntry {
                id: d.id.clone(),
                resource_id: d.resource_id.as_str().to_string(),
                profile: d.profile.name.clone(),
                adapter: d.connection.adapter(),
                cem: d.cem.clone(),
                view: view.clone(),
            })
            .collect();
        let natives = config
            .natives
            .iter()
            .map(|n| NativeEntry {
                id: n.id.clone(),
                resource_id: n.resource_id.as_str().to_string(),
                cem: n.cem.clone(),
                transport: match n.transport {
                    NativeTransport::WsServer => "ws-server",
                    NativeTransport::Mqtt => "mqtt",
                },
            })
            .collect();
        let links = config
            .cem
            .values()
            .map(|l| (l.name.clone(), l.transport.name()))
            .collect();
        Self {
            gateway: config.gateway.name.clone(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            devices,
            natives,
            links,
            counters,
            mqtt,
        }
    }

    fn link_transport(&self, name: &str) -> &'static str {
        self.links
            .iter()
            .find(|(n, _)| n == name)
            .map_or("unknown", |(_, t)| t)
    }

    fn device_json(&self, entry: &DeviceEntry) -> Value {
        let view = entry.view.borrow();
        let readings = view.readings.as_ref().filter(|_| view.available);
        let offered: Vec<&str> = view.offered.iter().map(|c| control_type_name(*c)).collect();
        json!({
            "id": entry.id,
            "name": view.name,
            "resource_id": entry.resource_id,
            "kind": view.kind,
            "profile": entry.profile,
            "adapter": entry.adapter,
            "cem": entry.cem,
            "available": view.available,
            "power_w": readings.map(|r| r.power_w),
            "energy_wh": readings.and_then(|r| r.energy_wh),
            "soc": readings.and_then(|r| r.soc),
            "offered": offered,
            "control_type": view.control_type.map(control_type_name),
            "active": view.active,
            "cem_link": link_name(&view.link),
            "sessions": view.sessions,
            "instructions_executed": view.instructions_executed,
            "instructions_failed": view.instructions_failed,
            "releases": view.releases,
            "updated": s2gw_core::clock::rfc3339(view.updated),
        })
    }

    fn native_json(&self, entry: &NativeEntry) -> Value {
        json!({
            "id": entry.id,
            "resource_id": entry.resource_id,
            "type": "native",
            "transport": entry.transport,
            "cem": entry.cem,
        })
    }

    fn counters_of(counters: &BTreeMap<String, RouteCounters>, resource_id: &str) -> Value {
        counters
            .get(resource_id)
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or_else(|| json!(RouteCounters::default()))
    }
}

impl BridgeData for DaemonBridge {
    fn info(&self) -> Value {
        let mut resources: Vec<Value> = self
            .devices
            .iter()
            .map(|d| {
                json!({
                    "id": d.id,
                    "resource_id": d.resource_id,
                    "type": "device",
                    "cem": d.cem,
                    "cem_transport": self.link_transport(&d.cem),
                })
            })
            .collect();
        resources.extend(self.natives.iter().map(|n| {
            let mut v = self.native_json(n);
            v["cem_transport"] = json!(self.link_transport(&n.cem));
            v
        }));
        let links: Vec<Value> = self
            .links
            .iter()
            .map(|(name, transport)| json!({ "name": name, "transport": transport }))
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "gateway": self.gateway,
            "resources": resources,
            "links": links,
        })
    }

    fn devices(&self) -> Value {
        Value::Array(self.devices.iter().map(|d| self.device_json(d)).collect())
    }

    fn health(&self) -> Value {
        let mut unavailable = Vec::new();
        let (mut up, mut down) = (0u64, 0u64);
        // A CEM link is connected when a session of one of its resources is.
        let mut connected_links = BTreeSet::new();
        for d in &self.devices {
            let view = d.view.borrow();
            if !view.available {
                unavailable.push(d.id.clone());
            }
            match view.link {
                crate::rm::LinkState::Down => down += 1,
                crate::rm::LinkState::Connected(_) => {
                    up += 1;
                    connected_links.insert(d.cem.clone());
                }
                crate::rm::LinkState::Handshaking => up += 1,
            }
        }
        let counters = self.counters.snapshot();
        let total = |f: fn(&RouteCounters) -> u64| counters.values().map(f).sum::<u64>();
        let mqtt = *self.mqtt.borrow();
        let degraded = !unavailable.is_empty() || down > 0;
        json!({
            "status": if degraded { "degraded" } else { "ok" },
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "started": s2gw_core::clock::rfc3339(self.started_at),
            "mqtt": { "connected": mqtt.connected, "connects": mqtt.connects },
            "devices": {
                "total": self.devices.len(),
                "available": self.devices.len() - unavailable.len(),
                "unavailable": unavailable,
            },
            "links": { "up": up, "down": down },
            "cem_links": {
                "total": self.links.len(),
                "connected": connected_links.len(),
                "connected_names": connected_links,
            },
            "natives": self.natives.len(),
            "bus": {
                "rm_to_cem": total(|c| c.rm_to_cem),
                "cem_to_rm": total(|c| c.cem_to_rm),
                "rejected": total(|c| c.rejected),
                "ups": total(|c| c.ups),
                "downs": total(|c| c.downs),
            },
        })
    }

    fn resource(&self, id: &str) -> Option<Value> {
        let counters = self.counters.snapshot();
        if let Some(d) = self
            .devices
            .iter()
            .find(|d| d.id == id || d.resource_id == id)
        {
            let mut v = self.device_json(d);
            v["type"] = json!("device");
            v["counters"] = Self::counters_of(&counters, &d.resource_id);
            return Some(v);
        }
        let n = self
            .natives
            .iter()
            .find(|n| n.id == id || n.resource_id == id)?;
        let mut v = self.native_json(n);
        v["counters"] = Self::counters_of(&counters, &n.resource_id);
        Some(v)
    }
}
