//! `[[device]]`: the legacy devices the gateway hosts virtual RMs for, and their
//! connection sections.

use std::sync::Arc;
use std::time::Duration;

use s2gw_core::s2::{ControlType, Id};
use s2gw_sim::SimConfig;
use serde::Deserialize;

use super::adapters;
use super::load::{Cx, Refs};
use super::located::{At, Strings, Table, Text, Uint};
use super::profile::{self, Profile, control_type_name};

/// Default `device.poll_interval_s`, in seconds.
pub const DEFAULT_POLL_INTERVAL_S: u64 = 1;
/// Default `device.measurement_interval_s`, in seconds.
pub const DEFAULT_MEASUREMENT_INTERVAL_S: u64 = 10;

/// The adapter tables a device may use as its connection section.
pub(crate) const ADAPTERS: &[&str] = &["sim", "modbus", "ble", "mqtt"];

/// `[[device]]`: a legacy device the gateway hosts a virtual RM for.
#[derive(Debug, Clone)]
pub struct DeviceSection {
    /// `id`: unique among devices and natives, `[A-Za-z0-9_-]{1,48}`.
    pub id: String,
    /// `name`: for people (defaults to `id`).
    pub name: String,
    /// `resource_id`, or a UUID v5 of `gateway.name` and `id` ([`derive_resource_id`]).
    ///
    /// [`derive_resource_id`]: super::derive_resource_id
    pub resource_id: Id,
    /// The resolved `profile`.
    pub profile: Arc<Profile>,
    /// `cem`: the name of the `[cem.NAME]` link it is routed to (checked to exist).
    pub cem: String,
    /// `poll_interval_s`: how often the device is read (default 1 s).
    pub poll_interval: Duration,
    /// `measurement_interval_s`: how often a PowerMeasurement is sent (default 10 s).
    pub measurement_interval: Duration,
    /// The control types offered to the CEM: `control_types` if given (a subset of the
    /// profile's, in the order written), else the profile's.
    pub control_types: Vec<ControlType>,
    /// The connection section, parsed.
    pub connection: Connection,
}

/// A device's connection/adapter section: exactly one per device.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    /// `[device.sim]` merged over the profile's `[sim]`.
    Sim(SimConfig),
    /// `[device.modbus]` merged over the profile's `[modbus]`, split into where the device
    /// is and what its registers are.
    Modbus(Box<s2gw_modbus::ModbusConfig>),
    /// `[device.ble]` (which device) next to the profile's `[ble]` (how to read it); not
    /// merged.
    Ble(BleSection),
    /// `[device.mqtt]` merged over the profile's `[mqtt]`: topics, JSON paths, commands.
    Mqtt(Box<s2gw_mqtt::MqttDeviceConfig>),
}

/// A BLE device's two tables.
#[derive(Debug, Clone, PartialEq)]
pub struct BleSection {
    /// `[device.ble]`, `bindkey_file` resolved against the config's directory.
    pub connection: s2gw_ble::BleConnection,
    /// The profile's `[ble]`.
    pub profile: s2gw_ble::BleProfile,
}

impl Connection {
    /// The adapter's name, as its table is called (`sim`, `modbus`, `ble`, `mqtt`).
    pub fn adapter(&self) -> &'static str {
        match self {
            Connection::Sim(_) => "sim",
            Connection::Modbus(_) => "modbus",
            Connection::Ble(_) => "ble",
            Connection::Mqtt(_) => "mqtt",
        }
    }

    /// A short description for `s2gw check` (`sim pv`, `modbus tcp://host:502 unit 1`).
    pub fn describe(&self) -> String {
        match self {
            Connection::Sim(sim) => format!("sim {}", sim.model.as_str()),
            Connection::Modbus(m) => match m.connection.target() {
                Ok(target) => format!("modbus {target} unit {}", m.connection.unit()),
                Err(_) => "modbus".to_string(),
            },
            Connection::Ble(b) => {
                let which = b
                    .connection
                    .address
                    .clone()
                    .or_else(|| b.connection.name.clone())
                    .unwrap_or_default();
                format!("ble {which}")
            }
            Connection::Mqtt(m) => format!(
                "mqtt {}",
                m.power
                    .topic
                    .replace("{device}", m.device.as_deref().unwrap_or_default())
            ),
        }
    }
}

/// `[[device]]` as written. Fields in alphabetical order: serde lists them in declaration
/// order in `unknown key (known keys: …)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceToml {
    ble: Option<Table>,
    cem: Option<Text>,
    control_types: Option<Strings>,
    id: Option<Text>,
    measurement_interval_s: Option<Uint<86_400>>,
    modbus: Option<Table>,
    mqtt: Option<Table>,
    name: Option<Text>,
    poll_interval_s: Option<Uint<3600>>,
    profile: Option<Text>,
    resource_id: Option<Text>,
    sim: Option<Table>,
}

impl Cx<'_> {
    /// Read the `[[device]]` entry at `path` (`device[0]`).
    pub(crate) fn device(
        &mut self,
        path: &str,
        table: &toml::Table,
        refs: &mut Refs<'_>,
    ) -> Option<DeviceSection> {
        let mark = self.mark();
        let (raw, at) = self.read::<DeviceToml>(table, path)?;
        let id = at
            .required(self.errors, "id", raw.id.map(|t| t.0))
            .and_then(|id| refs.claim_id(&at, self.errors, id));
        let name = raw.name.map(|t| t.0);
        let rid = refs.resource_id(
            &at,
            self.errors,
            raw.resource_id.map(|t| t.0),
            id.as_deref(),
        );
        let profile = at
            .required(self.errors, "profile", raw.profile.map(|t| t.0))
            .and_then(|p| self.profile(&at.key("profile"), &p));
        let cem = refs.cem(&at, self.errors, raw.cem.map(|t| t.0));
        let poll = raw.poll_interval_s.map_or(DEFAULT_POLL_INTERVAL_S, |u| u.0);
        let measurement = raw
            .measurement_interval_s
            .map_or(DEFAULT_MEASUREMENT_INTERVAL_S, |u| u.0);
        if poll == 0 {
            at.err(self.errors, "poll_interval_s", "must be at least 1 second");
        }
        if measurement == 0 {
            at.err(
                self.errors,
                "measurement_interval_s",
                "must be at least 1 second",
            );
        } else if measurement < poll {
            at.err(
                self.errors,
                "measurement_interval_s",
                format!(
                    "must not be shorter than poll_interval_s ({poll} s): measurements would \
                     repeat stale readings"
                ),
            );
        }
        let narrowed = raw.control_types.and_then(|list| {
            let key = at.key("control_types");
            let names = list.items(at.file(), &key, self.errors)?;
            profile::parse_control_types(&names, at.file(), &key, self.errors)
        });
        let control_types = match (&profile, narrowed) {
            (Some(p), Some(list)) => self.offered(&at, p, list),
            (Some(p), None) => Some(p.control_types.clone()),
            (None, _) => None,
        };
        let tables = [
            ("sim", raw.sim),
            ("modbus", raw.modbus),
            ("ble", raw.ble),
            ("mqtt", raw.mqtt),
        ];
        let connection = self.connection(&at, tables, profile.as_deref(), refs.present.mqtt);
        if let Some(Connection::Modbus(m)) = &connection {
            refs.proxy(&at, self.errors, &m.connection, Duration::from_secs(poll));
        }
        if !self.clean_since(mark) {
            return None;
        }
        let id = id?;
        Some(DeviceSection {
            name: name.unwrap_or_else(|| id.clone()),
            id,
            resource_id: rid?,
            profile: profile?,
            cem: cem?,
            poll_interval: Duration::from_secs(poll),
            measurement_interval: Duration::from_secs(measurement),
            control_types: control_types?,
            connection: connection?,
        })
    }

    /// The device's `control_types`, each checked to be one the profile offers.
    fn offered(
        &mut self,
        at: &At,
        profile: &Profile,
        list: Vec<ControlType>,
    ) -> Option<Vec<ControlType>> {
        let mut ok = true;
        for (i, ct) in list.iter().enumerate() {
            if !profile.control_types.contains(ct) {
                ok = false;
                let offered: Vec<&str> = profile
                    .control_types
                    .iter()
                    .map(|c| control_type_name(*c))
                    .collect();
                at.err(
                    self.errors,
                    &format!("control_types[{i}]"),
                    format!(
                        "{} is not offered by profile `{}` (it offers {})",
                        control_type_name(*ct),
                        profile.name,
                        offered.join(", ")
                    ),
                );
            }
        }
        ok.then_some(list)
    }

    /// The connection section: exactly one adapter table, read against the profile.
    fn connection(
        &mut self,
        at: &At,
        tables: [(&str, Option<Table>); 4],
        profile: Option<&Profile>,
        broker: bool,
    ) -> Option<Connection> {
        let given: Vec<&str> = ADAPTERS.iter().copied().filter(|a| at.given(a)).collect();
        if given.is_empty() {
            at.err(
                self.errors,
                "",
                format!(
                    "no connection section: add one of [device.{}]",
                    ADAPTERS.join("], [device.")
                ),
            );
        } else if given.len() > 1 {
            at.err(
                self.errors,
                "",
                format!(
                    "more than one connection section ({}): a device has exactly one",
                    given.join(", ")
                ),
            );
            return None;
        }
        let profile = profile?;
        // A table given with a bad value was reported already.
        let (adapter, Table(table)) = tables
            .into_iter()
            .find_map(|(name, table)| Some((name, table?)))?;
        match adapter {
            "sim" => self.sim(at, &table, profile).map(Connection::Sim),
            "modbus" => self
                .modbus(at, &table, profile)
                .map(|m| Connection::Modbus(Box::new(m))),
            "mqtt" => self
                .mqtt_device(at, &table, profile, broker)
                .map(|m| Connection::Mqtt(Box::new(m))),
            _ => self.ble(at, &table, profile).map(Connection::Ble),
        }
    }

    /// The profile lacks the adapter table the device's section needs.
    pub(crate) fn no_adapter_table(&mut self, at: &At, adapter: &str, profile: &Profile) {
        at.err(
            self.errors,
            adapter,
            format!(
                "profile `{}` has no [{adapter}] table, so it cannot describe a {adapter} device",
                profile.name
            ),
        );
    }

    /// `[device.modbus]` merged over the profile's `[modbus]`.
    fn modbus(
        &mut self,
        at: &At,
        device: &toml::Table,
        profile: &Profile,
    ) -> Option<s2gw_modbus::ModbusConfig> {
        let Some(defaults) = &profile.modbus else {
            self.no_adapter_table(at, "modbus", profile);
            return None;
        };
        let whence = adapters::Whence {
            config: (&self.origin, at.path()),
            profile: profile.source.display_path(),
            device,
            profile_table: defaults,
            device_keys: s2gw_modbus::config::CONNECTION_KEYS,
        };
        adapters::modbus_device(&whence, self.errors)
    }

    /// `[device.ble]` next to the profile's `[ble]`.
    fn ble(&mut self, at: &At, device: &toml::Table, profile: &Profile) -> Option<BleSection> {
        let Some(ble_profile) = &profile.ble else {
            self.no_adapter_table(at, "ble", profile);
            return None;
        };
        let connection = adapters::ble_connection(
            device,
            &at.key("ble"),
            &self.origin,
            &self.base_dir,
            self.errors,
        )?;
        Some(BleSection {
            connection,
            profile: ble_profile.clone(),
        })
    }
}
