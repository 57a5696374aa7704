//! The adapter tables whose types live in the adapter crates: `[modbus]` / `[device.modbus]`
//! (s2gw-modbus), `[ble]` / `[device.ble]` (s2gw-ble) and `[mqtt]` / `[device.mqtt]`
//! (s2gw-mqtt), and the daemon's `[mqtt]` broker section (s2gw-mqtt's `MqttConfig`).
//!
//! Those crates define their tables as serde types with `deny_unknown_fields` and a
//! `validate()` that returns `(key, reason)` pairs; they are read through
//! [`super::located`] like every table, then `validate()` runs on the typed result and its
//! keys are mapped to the file they were written in ([`Whence`]).
//!
//! Modbus and MQTT device tables merge (the device's `[device.modbus]` over the profile's
//! `[modbus]`, key by key, as the modbus crate documents; `[device.mqtt]` likewise); BLE
//! tables do not (the profile's `[ble]` says how a kind of device is read, the device's
//! `[device.ble]` which device it is).

use std::path::{Path, PathBuf};

use s2gw_ble::{BleConnection, BleProfile};
use s2gw_modbus::config::CONNECTION_KEYS;
use s2gw_modbus::{ModbusConfig, ModbusConnection, ModbusProfile};
use s2gw_mqtt::{MqttConfig, MqttDeviceConfig};

use super::located::{Errors, Problems, read_all, top_key, under};

/// Split a `modbus` table into its connection keys and its profile keys.
fn split_modbus(table: &toml::Table) -> (toml::Table, toml::Table) {
    table
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| CONNECTION_KEYS.contains(&k.as_str()))
}

/// Read a merged `modbus` table into both halves, every problem reported.
fn read_modbus(table: &toml::Table) -> Result<ModbusConfig, Problems> {
    let (conn, prof) = split_modbus(table);
    let connection = read_all::<ModbusConnection>(&conn, &[], &[]);
    let profile = read_all::<ModbusProfile>(&prof, &[], &["registers"]);
    match (connection, profile) {
        (Ok(connection), Ok(profile)) => Ok(ModbusConfig {
            connection,
            profile,
        }),
        (c, p) => Err(c.err().into_iter().chain(p.err()).flatten().collect()),
    }
}

/// Check a profile's `[modbus]` table on its own: the profile keys fully, the connection
/// keys a profile may carry (timing defaults) except that a profile names no bus.
pub(crate) fn check_modbus_profile(table: &toml::Table, file: &Path, errors: &mut Errors) {
    let config = match read_modbus(table) {
        Ok(config) => config,
        Err(problems) => {
            for (key, reason) in problems {
                errors.push(file, &under("modbus", &key), reason);
            }
            return;
        }
    };
    let no_bus = config.connection.target().err();
    let connection = config
        .connection
        .validate()
        .into_iter()
        .filter(|(_, reason)| Some(reason) != no_bus.as_ref());
    for (key, reason) in connection.chain(config.profile.validate()) {
        errors.push(file, &under("modbus", &key), reason);
    }
}

/// Where a key of a merged table was written.
pub(crate) struct Whence<'a> {
    /// The config file and the device's path (`device[0]`).
    pub(crate) config: (&'a Path, &'a str),
    /// The profile's file.
    pub(crate) profile: PathBuf,
    /// The device's own adapter table.
    pub(crate) device: &'a toml::Table,
    /// The profile's adapter table.
    pub(crate) profile_table: &'a toml::Table,
    /// Keys that say which device it is (a Modbus bus, an MQTT device topic): when
    /// nobody wrote one, the device section is missing it, not the profile.
    pub(crate) device_keys: &'a [&'a str],
}

impl Whence<'_> {
    /// Report `key` where it was written: the device if it wrote it, else the profile if
    /// that did; a key nobody wrote is missing from the device when it says where the
    /// device is (naming the bus is the device's job), else from the profile.
    pub(crate) fn push(&self, errors: &mut Errors, adapter: &str, key: &str, reason: String) {
        let top = top_key(key);
        let in_device = self.device.contains_key(top);
        let missing_bus = !self.profile_table.contains_key(top) && self.device_keys.contains(&top);
        if top.is_empty() || in_device || missing_bus {
            let (file, path) = self.config;
            errors.push(file, &under(&format!("{path}.{adapter}"), key), reason);
        } else {
            errors.push(&self.profile, &under(adapter, key), reason);
        }
    }
}

/// Merge `[device.modbus]` over the profile's `[modbus]`, read and validate the result;
/// problems go to the file each key came from.
pub(crate) fn modbus_device(whence: &Whence<'_>, errors: &mut Errors) -> Option<ModbusConfig> {
    let mut merged = whence.profile_table.clone();
    for (k, v) in whence.device {
        merged.insert(k.clone(), v.clone());
    }
    let config = match read_modbus(&merged) {
        Ok(config) => config,
        Err(problems) => {
            for (key, reason) in problems {
                whence.push(errors, "modbus", &key, reason);
            }
            return None;
        }
    };
    let problems = config.validate();
    let ok = problems.is_empty();
    for (key, reason) in problems {
        whence.push(errors, "modbus", &key, reason);
    }
    ok.then_some(config)
}

/// Check a profile's `[mqtt]` table on its own: everything but `device`, which only a
/// device section can say (the profile's topics name it as `{device}`).
pub(crate) fn check_mqtt_profile(table: &toml::Table, file: &Path, errors: &mut Errors) {
    let problems = match read_all::<MqttDeviceConfig>(table, &["power"], &[]) {
        Ok(config) => config.validate(),
        Err(problems) => problems,
    };
    for (key, reason) in problems.into_iter().filter(|(k, _)| k != "device") {
        errors.push(file, &under("mqtt", &key), reason);
    }
}

/// Merge `[device.mqtt]` over the profile's `[mqtt]`, read and validate the result;
/// problems go to the file each key came from.
pub(crate) fn mqtt_device(whence: &Whence<'_>, errors: &mut Errors) -> Option<MqttDeviceConfig> {
    let mut merged = whence.profile_table.clone();
    for (k, v) in whence.device {
        merged.insert(k.clone(), v.clone());
    }
    let problems = match read_all::<MqttDeviceConfig>(&merged, &["power"], &[]) {
        Ok(config) => {
            let problems = config.validate();
            if problems.is_empty() {
                return Some(config);
            }
            problems
        }
        Err(problems) => problems,
    };
    // Each topic using {device} says the same thing: once is enough.
    let mut seen = Problems::new();
    for (key, reason) in problems {
        if !seen.contains(&(key.clone(), reason.clone())) {
            seen.push((key.clone(), reason.clone()));
            whence.push(errors, "mqtt", &key, reason);
        }
    }
    None
}

/// The daemon's keys of `[mqtt]`, which are not `MqttConfig`'s: the password (read from
/// a file or the environment) and the mirror's rate limit.
pub(crate) const MQTT_DAEMON_KEYS: &[&str] = &[
    "password",
    "password_file",
    "state_interval_ms",
    "state_heartbeat_s",
];

/// Read `[mqtt]` (without the daemon's keys) as an `MqttConfig`; every problem, keys
/// relative to `[mqtt]`.
pub(crate) fn mqtt_config(table: &toml::Table) -> Result<MqttConfig, Problems> {
    let own: toml::Table = table
        .iter()
        .filter(|(k, _)| !MQTT_DAEMON_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    read_all::<MqttConfig>(&own, &["host"], &[])
}

/// Read and validate a profile's `[ble]` table.
pub(crate) fn ble_profile(
    table: &toml::Table,
    file: &Path,
    errors: &mut Errors,
) -> Option<BleProfile> {
    let problems = match read_all::<BleProfile>(table, &["source"], &[]) {
        Ok(profile) => {
            let problems = profile.validate();
            if problems.is_empty() {
                return Some(profile);
            }
            problems
        }
        Err(problems) => problems,
    };
    for (key, reason) in problems {
        errors.push(file, &under("ble", &key), reason);
    }
    None
}

/// Read and validate a device's `[device.ble]`; `bindkey_file` resolves against
/// `base_dir` (the config file's directory) before it is read.
pub(crate) fn ble_connection(
    table: &toml::Table,
    key_prefix: &str,
    file: &Path,
    base_dir: &Path,
    errors: &mut Errors,
) -> Option<BleConnection> {
    let problems = match read_all::<BleConnection>(table, &[], &[]) {
        Ok(mut connection) => {
            if let Some(path) = &connection.bindkey_file
                && path.is_relative()
            {
                connection.bindkey_file = Some(base_dir.join(path));
            }
            let problems = connection.validate();
            if problems.is_empty() {
                return Some(connection);
            }
            problems
        }
        Err(problems) => problems,
    };
    for (key, reason) in problems {
        errors.push(file, &under(key_prefix, &key), reason);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn every_bad_key_of_a_register_map_is_found_with_its_path() {
        let t = table(
            "address_base = 0\nbogus = 1\n[registers.a]\ntable = \"holding\"\naddress = 1\nscal = 2\n\
             [registers.b]\ntable = \"holding\"\naddress = \"x\"\n",
        );
        let problems = read_modbus(&t).unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert!(keys.contains(&"bogus"), "{problems:?}");
        assert!(keys.contains(&"registers.a.scal"), "{problems:?}");
        assert!(keys.contains(&"registers.b.address"), "{problems:?}");
        let scal = problems.iter().find(|(k, _)| k == "registers.a.scal");
        assert!(
            scal.unwrap().1.contains("did you mean `scale`"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_missing_required_key_names_the_key() {
        let t = table("[registers.a]\ntable = \"holding\"\n");
        let problems = read_modbus(&t).unwrap_err();
        assert_eq!(
            problems,
            [(
                "registers.a.address".to_string(),
                "missing required key".to_string()
            )]
        );
    }

    #[test]
    fn ble_profile_keys_are_checked_next_to_source() {
        let mut errors = Errors::new();
        let t = table("source = \"bthome\"\nstale_after = 3\n");
        assert!(ble_profile(&t, Path::new("p.toml"), &mut errors).is_none());
        assert_eq!(errors.list.len(), 1, "{:?}", errors.list);
        assert_eq!(errors.list[0].key, "ble.stale_after");
    }
}
