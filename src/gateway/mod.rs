//! Wiring: turns a [`Config`] into running routes, devices, virtual RMs and links.
//!
//! Like Vector's topology builder, this is the only place that knows every adapter: each
//! device gets a route on the bus, a virtual RM on its RM side and the link its `cem` key
//! names on its CEM side; each native RM gets a server slot (or an MQTT slot) on its RM
//! side. With `[mqtt]`, every virtual RM is mirrored to the broker and gated by its
//! device's "CEM control allowed" switch ([`mqtt`]).
//!
//! # Layout
//! - `mod.rs`: the topology: routes, virtual RMs, links, taps;
//! - `devices.rs`: a device section's adapter (sim, Modbus, MQTT, BLE);
//! - `mqtt.rs`: the MQTT client, the state mirror and Home Assistant discovery;
//! - `bridge.rs`: what the MQTT bridge requests answer;
//! - `gate.rs`: each device's "CEM control allowed" switch (web UI and MQTT);
//! - `metered.rs`: the device wrapper that times reads for `/metrics`;
//! - `s2connect.rs`: the resources as S2 Connect nodes, and the pairing server.
//!
//! With `[web]`, the web UI ([`crate::web`]) gets the views, switches and statistics.

pub mod bridge;
pub mod devices;
pub mod gate;
pub mod metered;
pub mod mqtt;
pub mod s2connect;

#[cfg(feature = "ble")]
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use s2gw_core::{CancellationToken, Endpoint};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bus::Bus;
use crate::bus::taps::{Counters, TrafficLog};
use crate::config::{CemLink, CemTransport, Config, DeviceSection, NativeTransport};
use crate::gateway::mqtt::MqttRuntime;
use crate::rm::{self, RmView, VirtualRmConfig};

/// A running gateway.
pub struct Gateway {
    /// One live view per virtual RM, in config order.
    pub views: Vec<watch::Receiver<RmView>>,
    /// Per-resource S2 traffic counters.
    pub counters: Arc<Counters>,
    /// Where the S2 server listens, when there is one.
    pub server_addr: Option<std::net::SocketAddr>,
    /// Where the web UI listens, with `[web]`.
    pub web_addr: Option<std::net::SocketAddr>,
    /// Where the S2 Connect pairing server listens, with `[s2connect]`.
    pub pairing_addr: Option<std::net::SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
    /// Stopped last: MQTT devices and links need it for their goodbyes.
    mqtt: Option<MqttRuntime>,
}

/// The transports a resource's sides may use.
struct Transports<'a> {
    server: Option<&'a mut s2gw_ws::Server>,
    mqtt: Option<&'a mut MqttRuntime>,
    /// Pairings the gateway's pairing server makes, for the s2connect links to dial at.
    paired: &'a s2gw_s2connect::PairedEvents,
}

impl Gateway {
    /// Start everything the config describes. Fails only on what cannot work at all
    /// (a server address that cannot be bound, a traffic log that cannot be opened);
    /// devices and CEMs that are unreachable are retried in the background.
    pub async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        refuse_unsupported(config)?;
        let counters = Arc::new(Counters::default());
        let mut bus = Bus::new();
        let paired = s2gw_s2connect::PairedEvents::default();
        bus.add_tap(counters.clone());
        let traffic = Arc::new(crate::web::traffic::Traffic::default());
        if config.web.is_some() {
            bus.add_tap(traffic.clone());
        }
        let polls = metered::poll_durations();
        if let Some(path) = &config.gateway.traffic_log {
            let log = TrafficLog::open(path)
                .with_context(|| format!("cannot open the traffic log {}", path.display()))?;
            bus.add_tap(Arc::new(log));
        }

        let mut server = match &config.server {
            Some(section) => Some(
                s2gw_ws::Server::bind(server_config(config, section))
                    .await
                    .context("the S2 server cannot start")?,
            ),
            None => None,
        };
        let server_addr = server.as_ref().map(s2gw_ws::Server::local_addr);
        let mut mqtt = match &config.mqtt {
            Some(section) => Some(MqttRuntime::start(section, config)?),
            None => None,
        };
        if let Some(mqtt) = mqtt.as_mut() {
            mqtt.withdraw_codes_when_paired(&paired);
        }

        let mut tasks = Vec::new();
        check_ble(config, &shutdown, &mut tasks);
        let mut pairing =
            s2connect::start(config, paired.clone(), server_addr, &shutdown, &mut tasks).await?;
        let mut views = Vec::new();
        let mut handles = Vec::new();
        for device in &config.devices {
            let resource = Resource {
                id: &device.id,
                resource_id: device.resource_id.as_str(),
            };
            let (rm_side, cem_side) = bus.route(resource.resource_id);
            let started = start_device(device, rm_side, mqtt.as_mut(), &polls, &shutdown).await?;
            tasks.extend(started.tasks);
            views.push(started.view.clone());
            handles.push(crate::web::state::DeviceHandle {
                id: device.id.clone(),
                resource_id: device.resource_id.as_str().to_string(),
                profile: device.profile.name.clone(),
                adapter: device.connection.adapter(),
                cem: device.cem.clone(),
                view: started.view,
                gate: started.gate,
                stats: started.stats,
            });
            let link = link_for(config, &device.cem)?;
            let mut via = Transports {
                server: server.as_mut(),
                mqtt: mqtt.as_mut(),
                paired: &paired,
            };
            attach_cem(
                config, link, resource, cem_side, &mut via, &shutdown, &mut tasks,
            )?;
        }
        for native in &config.natives {
            let resource = Resource {
                id: &native.id,
                resource_id: native.resource_id.as_str(),
            };
            let (rm_side, cem_side) = bus.route(resource.resource_id);
            let mut via = Transports {
                server: server.as_mut(),
                mqtt: mqtt.as_mut(),
                paired: &paired,
            };
            attach_native(native, resource, rm_side, &mut via)?;
            let link = link_for(config, &native.cem)?;
            attach_cem(
                config, link, resource, cem_side, &mut via, &shutdown, &mut tasks,
            )?;
        }
        if let Some(mut server) = server {
            if let Some(door) = pairing.as_mut().and_then(|p| p.door.take()) {
                server.add_token_door(s2connect::SESSION_PATH.to_string(), Arc::new(door));
            }
            tasks.push(server.spawn(shutdown.clone()));
        }
        if let Some(mqtt) = mqtt.as_mut() {
            let data = crate::gateway::bridge::DaemonBridge::new(
                config,
                &views,
                counters.clone(),
                mqtt.handle.status(),
            );
            mqtt.start_bridge(Arc::new(data));
        }
        let pairing_addr = pairing.map(|p| p.addr);
        let web_addr = match &config.web {
            Some(section) => {
                let data = web_data(config, handles, counters.clone(), traffic, mqtt.as_ref());
                Some(crate::web::start(section, data, polls, shutdown.clone(), &mut tasks).await?)
            }
            None => None,
        };
        Ok(Self {
            views,
            counters,
            server_addr,
            web_addr,
            pairing_addr,
            tasks,
            shutdown,
            mqtt,
        })
    }

    /// The current view of every virtual RM.
    pub fn snapshot(&self) -> Vec<RmView> {
        self.views.iter().map(|v| v.borrow().clone()).collect()
    }

    /// Cancel everything and wait (bounded) for the fail-safe releases to finish.
    pub async fn stop(self, grace: Duration) {
        self.shutdown.cancel();
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("some tasks did not stop within {grace:?}");
        }
        if let Some(mqtt) = self.mqtt {
            mqtt.stop(grace).await;
        }
    }
}

fn link_for<'a>(config: &'a Config, name: &str) -> anyhow::Result<&'a CemLink> {
    config
        .cem
        .get(name)
        .with_context(|| format!("no [cem.{name}] link"))
}

/// Devices this build cannot drive stop the start, all named at once.
fn refuse_unsupported(config: &Config) -> anyhow::Result<()> {
    let unsupported = crate::gateway::devices::unsupported(config);
    if !unsupported.is_empty() {
        anyhow::bail!(
            "BLE device(s) {} cannot start: this s2gw was built without BLE support (cargo \
             feature `ble`); remove them from the config or run a build with BLE",
            unsupported.join(", ")
        );
    }
    Ok(())
}

/// Ask BlueZ once, in the background, whether BLE can work at all, and say so in the log
/// naming the BLE devices affected. Nothing waits for it: the other adapters start at
/// once, and the BLE devices retry on their own (they stay unavailable meanwhile).
#[cfg(feature = "ble")]
fn check_ble(config: &Config, shutdown: &CancellationToken, tasks: &mut Vec<JoinHandle<()>>) {
    let mut by_adapter: BTreeMap<Option<String>, Vec<String>> = BTreeMap::new();
    for device in &config.devices {
        if let crate::config::Connection::Ble(ble) = &device.connection {
            by_adapter
                .entry(ble.connection.adapter.clone())
                .or_default()
                .push(device.id.clone());
        }
    }
    for (adapter, ids) in by_adapter {
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            let names: Vec<&str> = ids.iter().map(String::as_str).collect();
            let check = s2gw_ble::check_bluez(adapter.as_deref(), &names);
            tokio::select! {
                () = shutdown.cancelled() => {}
                result = check => match result {
                    Ok(found) => tracing::info!(adapter = %found, devices = ?names, "BLE ready"),
                    Err(error) => tracing::error!(%error, "BLE unavailable"),
                },
            }
        }));
    }
}

#[cfg(not(feature = "ble"))]
fn check_ble(_config: &Config, _shutdown: &CancellationToken, _tasks: &mut Vec<JoinHandle<()>>) {}

/// A device's running virtual RM, with what the web UI needs of it.
struct StartedDevice {
    tasks: Vec<JoinHandle<()>>,
    view: watch::Receiver<RmView>,
    gate: gate::Gate,
    stats: Arc<metered::DeviceStats>,
}

/// Start a device's virtual RM, gated by its CEM-control switch (which, with MQTT,
/// follows the Home Assistant switch too, and is mirrored).
async fn start_device(
    device: &DeviceSection,
    endpoint: Endpoint,
    mqtt: Option<&mut MqttRuntime>,
    polls: &metered::PollDurations,
    shutdown: &CancellationToken,
) -> anyhow::Result<StartedDevice> {
    let hardware = crate::gateway::devices::build(device, mqtt.as_ref().map(|m| &m.handle)).await?;
    let stats = Arc::new(metered::DeviceStats::new(polls, &device.id));
    let hardware = Box::new(metered::Metered::new(hardware, stats.clone()));
    let mut rm_config = VirtualRmConfig::new(device.resource_id.as_str(), device.name.clone());
    rm_config.control_types = device.control_types.clone();
    rm_config.poll_interval = device.poll_interval;
    rm_config.measurement_interval = device.measurement_interval;
    rm_config.instruction_processing_delay = device.profile.instruction_processing_delay;
    rm_config.manufacturer = device.profile.manufacturer.clone();
    rm_config.model = device.profile.model.clone();
    let clock = Arc::new(rm::SystemClock);
    let gate = gate::Gate::open();
    let mut tasks = Vec::new();
    if let Some(mqtt) = mqtt.as_ref() {
        tasks.push(gate.follow(mqtt.control_allowed(&device.id), shutdown.clone()));
    }
    let (task, view) = rm::spawn_gated_virtual_rm(
        rm_config,
        hardware,
        endpoint,
        clock,
        gate.subscribe(),
        shutdown.clone(),
    );
    tasks.push(task);
    if let Some(mqtt) = mqtt {
        mqtt.mirror_device(device, view.clone());
    }
    Ok(StartedDevice {
        tasks,
        view,
        gate,
        stats,
    })
}

/// What the web UI reads of this gateway.
fn web_data(
    config: &Config,
    devices: Vec<crate::web::state::DeviceHandle>,
    counters: Arc<Counters>,
    traffic: Arc<crate::web::traffic::Traffic>,
    mqtt: Option<&MqttRuntime>,
) -> crate::web::WebData {
    crate::web::WebData {
        gateway: config.gateway.name.clone(),
        devices,
        natives: config
            .natives
            .iter()
            .map(|n| crate::web::state::NativeHandle {
                id: n.id.clone(),
                resource_id: n.resource_id.as_str().to_string(),
                cem: n.cem.clone(),
            })
            .collect(),
        links: config
            .cem
            .values()
            .map(|l| (l.name.clone(), l.transport.name()))
            .collect(),
        counters,
        traffic,
        mqtt: mqtt.map(|m| m.handle.status()),
        mqtt_client: mqtt.map(|m| m.handle.clone()),
        source: config.source.clone(),
        summary: config.summary(),
        started: std::time::Instant::now(),
        history: crate::web::history::History::default(),
    }
}

/// The RM side of a native resource: a slot on the server, or on MQTT.
fn attach_native(
    native: &crate::config::NativeSection,
    resource: Resource<'_>,
    endpoint: Endpoint,
    via: &mut Transports<'_>,
) -> anyhow::Result<()> {
    match native.transport {
        NativeTransport::WsServer => {
            let Some(server) = via.server.as_deref_mut() else {
                anyhow::bail!("native RM {} needs a [server] section", native.id);
            };
            // Native RMs dial /s2/rm/<id>: the name an installer wrote, not a UUID.
            server.add_native_rm(native.id.clone(), endpoint);
        }
        NativeTransport::Mqtt => {
            let Some(mqtt) = via.mqtt.as_deref_mut() else {
                anyhow::bail!("native RM {} needs an [mqtt] section", native.id);
            };
            // On MQTT the topic names the S2 resource: <base>/s2/<resource_id>/….
            let task = s2gw_mqtt::add_native_rm(
                mqtt.handle.clone(),
                resource.resource_id.to_string(),
                endpoint,
            );
            mqtt.keep(task);
        }
    }
    Ok(())
}

/// The two names of one resource: the config's `id` and the S2 `resource_id`.
#[derive(Clone, Copy)]
struct Resource<'a> {
    id: &'a str,
    resource_id: &'a str,
}

fn attach_cem(
    config: &Config,
    link: &CemLink,
    resource: Resource<'_>,
    endpoint: Endpoint,
    via: &mut Transports<'_>,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<()> {
    match &link.transport {
        CemTransport::WsClient {
            url,
            ca_file,
            pin_sha256,
        } => {
            let client = s2gw_ws::ClientConfig {
                url: url.replace("{id}", resource.id),
                bearer: link.token.clone(),
                ca_file: ca_file.clone(),
                pin_sha256: pin_sha256.map(|pin| s2gw_core::hex::encode(&pin)),
                ..link_timing(config, link)
            };
            tasks.push(spawn_ws_client(client, resource, endpoint, shutdown));
        }
        CemTransport::WsServer => {
            let Some(server) = via.server.as_deref_mut() else {
                anyhow::bail!("a ws-server CEM link needs a [server] section");
            };
            let resource_id = resource.resource_id.to_string();
            match &link.token {
                Some(token) => server.add_cem_slot_with_token(resource_id, endpoint, token.clone()),
                None => server.add_cem_slot(resource_id, endpoint),
            }
        }
        CemTransport::S2Connect if s2connect::cem_dials_in(config) => {
            // A WAN gateway serves sessions: the CEM dials its S2 server with the
            // single-use token its `confirmAccessToken` returned (the token door).
            let Some(server) = via.server.as_deref_mut() else {
                anyhow::bail!("an s2connect link of a WAN gateway needs a [server] section");
            };
            server.add_cem_slot_behind_door(resource.resource_id.to_string(), endpoint);
        }
        CemTransport::S2Connect => {
            // The device's config id names its state files: stable, and what `s2gw pair`
            // takes.
            let initiator = s2gw_s2connect::Initiator::new(&config.gateway.state_dir, resource.id)
                .with_paired_events(via.paired.clone());
            let client = s2gw_ws::ClientConfig {
                source: Some(std::sync::Arc::new(initiator)),
                ..link_timing(config, link)
            };
            tasks.push(spawn_ws_client(client, resource, endpoint, shutdown));
        }
        CemTransport::Mqtt => {
            let Some(mqtt) = via.mqtt.as_deref() else {
                anyhow::bail!("an mqtt CEM link needs an [mqtt] section");
            };
            tasks.push(s2gw_mqtt::spawn_cem_link(
                mqtt.handle.clone(),
                resource.resource_id.to_string(),
                endpoint,
                shutdown.clone(),
            ));
        }
    }
    Ok(())
}

/// What every WebSocket client link takes from its `[cem.NAME]` and `[gateway]`: pings,
/// dead-peer detection and the frame limits. Where it dials comes on top.
fn link_timing(config: &Config, link: &CemLink) -> s2gw_ws::ClientConfig {
    s2gw_ws::ClientConfig {
        ping_interval: link.ping_interval,
        dead_after: link.dead_after,
        max_frame_bytes: config.gateway.max_frame_bytes,
        max_frames_per_s: Some(config.gateway.max_frames_per_s),
        ..s2gw_ws::ClientConfig::default()
    }
}

fn spawn_ws_client(
    client: s2gw_ws::ClientConfig,
    resource: Resource<'_>,
    endpoint: Endpoint,
    shutdown: &CancellationToken,
) -> JoinHandle<()> {
    s2gw_ws::spawn_client(
        client,
        resource.resource_id.to_string(),
        endpoint,
        shutdown.clone(),
    )
}

fn server_config(config: &Config, section: &crate::config::ServerSection) -> s2gw_ws::ServerConfig {
    s2gw_ws::ServerConfig {
        listen: section.listen,
        bearer: section.token.clone(),
        tls: section.tls.as_ref().map(|tls| s2gw_ws::TlsFiles {
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
        }),
        max_frame_bytes: config.gateway.max_frame_bytes,
        max_frames_per_s: Some(config.gateway.max_frames_per_s),
        max_connections: section.max_connections,
        handshake_timeout: section.handshake_timeout,
        max_failed_auth_per_min: section.max_failed_auth_per_min,
        ..s2gw_ws::ServerConfig::default()
    }
}
