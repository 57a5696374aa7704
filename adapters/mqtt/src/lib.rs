//! MQTT adapter for s2gw, on `rumqttc` (MQTT 3.1.1 and 5, rustls TLS).
//!
//! One client connection serves the whole gateway ([`Mqtt::start`] → [`MqttHandle`]); the
//! rest of the crate are users of that handle:
//!
//! - [`spawn_cem_link`] / [`add_native_rm`]: S2 over MQTT, either side of a resource,
//!   speaking [`BusEvent`](s2gw_core::BusEvent)s to the bus exactly like the WebSocket
//!   adapter's client link and server slots. The session protocol is in
//!   `docs/s2-over-mqtt.md`.
//! - [`StateMirror`]: retained per-device state, availability, Home Assistant device
//!   discovery (`discovery.rs`: each device under a gateway device), the Energy
//!   dashboard's counters (`energy.rs`) and the "CEM control allowed" switch.
//! - [`spawn_bridge`]: `<base>/bridge/info` and `<base>/bridge/health` (retained), and
//!   `<base>/bridge/request/<cmd>` answered from a [`BridgeData`] the daemon implements.
//! - [`StatePacer`]: when a device's state is worth publishing (deadbands, heartbeat).
//! - [`MqttDevice`]: a [`Device`](s2gw_core::Device) whose readings and commands are MQTT
//!   topics, mapped by a profile ([`MqttDeviceConfig`]).
//!
//! Every publish of S2 messages and commands is QoS 1; state, availability and discovery
//! are retained and re-published after every reconnect, together with the bridge state
//! `{"state":"online"}` (the LWT is `{"state":"offline"}` on the same topic).

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod appliance;
mod bridge;
mod client;
mod config;
mod device;
mod discovery;
mod energy;
mod mirror;
mod pace;
mod s2link;
mod time;
mod tls;
mod topic;
mod wire;

pub use appliance::{
    ActuatorMap, DemandMap, FuelName, OnRelease, PhaseMap, ProgrammeMap, StateMap, SupplyModeMap,
    TaskMap, TaskStep, TextMap,
};
pub use bridge::{BridgeData, spawn_bridge};
pub use client::{Inbound, LinkStatus, Mqtt, MqttHandle, Subscription};
pub use config::{MqttConfig, Protocol, TlsConfig};
pub use device::{CommandMap, CurrentMap, ModeMap, MqttDevice, MqttDeviceConfig, ReadingMap};
pub use mirror::{DeviceState, PairingIssuer, StateMirror};
pub use pace::{
    ENERGY_DEADBAND_WH, POWER_DEADBAND_RATIO, POWER_DEADBAND_W, SOC_DEADBAND, StatePacer,
};
pub use s2gw_core::Secret;
pub use s2link::{add_native_rm, spawn_cem_link};
pub use topic::matches as topic_matches;
pub use wire::IN_FLIGHT;

/// What can go wrong starting or using the MQTT client.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A setting is malformed (the problems `MqttConfig::validate` lists).
    #[error("invalid MQTT configuration: {0}")]
    Config(String),
    /// Certificates or keys are unusable.
    #[error("MQTT TLS: {0}")]
    Tls(String),
    /// The client has stopped: the request could not be queued.
    #[error("the MQTT client has stopped")]
    Stopped,
}
