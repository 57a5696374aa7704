//! Device profiles: what a kind of device is, which S2 control types it offers, and the
//! adapter tables: `[sim]`, `[modbus]` and `[mqtt]` (defaults a device section is merged
//! over) and `[ble]` (how a kind of BLE device is read; the device section only says which
//! device).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use s2gw_core::device::DeviceKind;
use s2gw_core::s2::ControlType;
use serde::Deserialize;

use super::load::{Cx, parse_toml};
use super::located::{self, Errors, Strings, Table, Text, Uint};

/// The profiles compiled into the binary, so `s2gw demo` and a config naming `sim-pv` work
/// without the config directory. The files in `config/profiles/` are the same text.
pub const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("sim-pv", include_str!("../../config/profiles/sim-pv.toml")),
    ("sim-ev", include_str!("../../config/profiles/sim-ev.toml")),
    (
        "sim-battery",
        include_str!("../../config/profiles/sim-battery.toml"),
    ),
    (
        "sim-heat-pump",
        include_str!("../../config/profiles/sim-heat-pump.toml"),
    ),
    (
        "sim-meter",
        include_str!("../../config/profiles/sim-meter.toml"),
    ),
    (
        "sim-dishwasher",
        include_str!("../../config/profiles/sim-dishwasher.toml"),
    ),
    (
        "sim-hybrid-heat-pump",
        include_str!("../../config/profiles/sim-hybrid-heat-pump.toml"),
    ),
    (
        "modbus-sunspec-inverter",
        include_str!("../../config/profiles/modbus-sunspec-inverter.toml"),
    ),
    (
        "modbus-sunspec-storage",
        include_str!("../../config/profiles/modbus-sunspec-storage.toml"),
    ),
    (
        "modbus-abb-terra-ac",
        include_str!("../../config/profiles/modbus-abb-terra-ac.toml"),
    ),
    (
        "modbus-alfen-eve",
        include_str!("../../config/profiles/modbus-alfen-eve.toml"),
    ),
    (
        "modbus-sg-ready",
        include_str!("../../config/profiles/modbus-sg-ready.toml"),
    ),
    (
        "modbus-sdm630",
        include_str!("../../config/profiles/modbus-sdm630.toml"),
    ),
    (
        "modbus-fronius",
        include_str!("../../config/profiles/modbus-fronius.toml"),
    ),
    (
        "modbus-sma",
        include_str!("../../config/profiles/modbus-sma.toml"),
    ),
    (
        "modbus-go-e",
        include_str!("../../config/profiles/modbus-go-e.toml"),
    ),
    (
        "modbus-keba-p30",
        include_str!("../../config/profiles/modbus-keba-p30.toml"),
    ),
    (
        "modbus-heidelberg-ec",
        include_str!("../../config/profiles/modbus-heidelberg-ec.toml"),
    ),
    (
        "modbus-solaredge",
        include_str!("../../config/profiles/modbus-solaredge.toml"),
    ),
    (
        "ble-bthome-meter",
        include_str!("../../config/profiles/ble-bthome-meter.toml"),
    ),
    (
        "ble-relay",
        include_str!("../../config/profiles/ble-relay.toml"),
    ),
    (
        "mqtt-shelly-gen2-switch",
        include_str!("../../config/profiles/mqtt-shelly-gen2-switch.toml"),
    ),
    (
        "mqtt-tasmota-plug",
        include_str!("../../config/profiles/mqtt-tasmota-plug.toml"),
    ),
    (
        "mqtt-openevse",
        include_str!("../../config/profiles/mqtt-openevse.toml"),
    ),
    (
        "mqtt-generic",
        include_str!("../../config/profiles/mqtt-generic.toml"),
    ),
    (
        "mqtt-dishwasher",
        include_str!("../../config/profiles/mqtt-dishwasher.toml"),
    ),
    (
        "mqtt-hybrid-heat-pump",
        include_str!("../../config/profiles/mqtt-hybrid-heat-pump.toml"),
    ),
];

/// Where a profile came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// Compiled into the binary, by name.
    BuiltIn(&'static str),
    /// Read from this file.
    File(PathBuf),
}

impl ProfileSource {
    /// The path errors name: the file, or `<built-in>/NAME.toml` for a built-in profile.
    pub fn display_path(&self) -> PathBuf {
        match self {
            ProfileSource::BuiltIn(name) => PathBuf::from(format!("<built-in>/{name}.toml")),
            ProfileSource::File(path) => path.clone(),
        }
    }
}

/// A validated device profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Short name (`sim-pv`).
    pub name: String,
    /// One line for people (empty when the file has none).
    pub description: String,
    /// What kind of device this is.
    pub kind: DeviceKind,
    /// Manufacturer, for ResourceManagerDetails and discovery.
    pub manufacturer: Option<String>,
    /// Model, for ResourceManagerDetails and discovery.
    pub model: Option<String>,
    /// The S2 control types offered, most preferred first; never empty, no duplicates.
    pub control_types: Vec<ControlType>,
    /// S2 `instruction_processing_delay`: how long the device takes to carry out an
    /// instruction (`instruction_processing_delay_ms`, default 0).
    pub instruction_processing_delay: Duration,
    /// The `[sim]` defaults, unparsed: a device's `[device.sim]` is merged over them
    /// before the result is read as an `s2gw_sim::SimConfig`.
    pub sim: Option<toml::Table>,
    /// The `[modbus]` defaults, checked on their own but kept unparsed: a device's
    /// `[device.modbus]` is merged over them key by key before the result is read.
    pub modbus: Option<toml::Table>,
    /// The `[ble]` table: how this kind of BLE device is read and commanded.
    pub ble: Option<s2gw_ble::BleProfile>,
    /// The `[mqtt]` defaults (topics, JSON paths, command templates), checked on their
    /// own but kept unparsed: a device's `[device.mqtt]` is merged over them key by key.
    pub mqtt: Option<toml::Table>,
    /// Where the profile was read from.
    pub source: ProfileSource,
}

/// The config-file spelling of a device kind.
pub fn kind_name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::PvInverter => "pv_inverter",
        DeviceKind::EvCharger => "ev_charger",
        DeviceKind::Battery => "battery",
        DeviceKind::HeatPump => "heat_pump",
        DeviceKind::Meter => "meter",
        DeviceKind::Load => "load",
    }
}

fn parse_kind(text: &str) -> Option<DeviceKind> {
    Some(match text {
        "pv_inverter" => DeviceKind::PvInverter,
        "ev_charger" => DeviceKind::EvCharger,
        "battery" => DeviceKind::Battery,
        "heat_pump" => DeviceKind::HeatPump,
        "meter" => DeviceKind::Meter,
        "load" => DeviceKind::Load,
        _ => return None,
    })
}

/// The short S2 name of a control type as written in config files (`PEBC`,
/// `NOT_CONTROLABLE`).
pub fn control_type_name(control_type: ControlType) -> &'static str {
    match control_type {
        ControlType::NotControllable => "NOT_CONTROLABLE",
        ControlType::PowerEnvelopeBasedControl => "PEBC",
        ControlType::FillRateBasedControl => "FRBC",
        ControlType::OperationModeBasedControl => "OMBC",
        ControlType::PowerProfileBasedControl => "PPBC",
        ControlType::DemandDrivenBasedControl => "DDBC",
        _ => "NO_SELECTION",
    }
}

/// Parse a control type name; the error is the reason to report.
///
/// Accepted: `NOT_CONTROLABLE` (S2's spelling), `PEBC`, `FRBC`, `OMBC`, `PPBC`, `DDBC`.
/// The long S2 names are accepted too, since people copy them from the standard.
pub fn parse_control_type(text: &str) -> Result<ControlType, String> {
    match text {
        "NOT_CONTROLABLE" => Ok(ControlType::NotControllable),
        "PEBC" | "POWER_ENVELOPE_BASED_CONTROL" => Ok(ControlType::PowerEnvelopeBasedControl),
        "FRBC" | "FILL_RATE_BASED_CONTROL" => Ok(ControlType::FillRateBasedControl),
        "OMBC" | "OPERATION_MODE_BASED_CONTROL" => Ok(ControlType::OperationModeBasedControl),
        "PPBC" | "POWER_PROFILE_BASED_CONTROL" => Ok(ControlType::PowerProfileBasedControl),
        "DDBC" | "DEMAND_DRIVEN_BASED_CONTROL" => Ok(ControlType::DemandDrivenBasedControl),
        "NOT_CONTROLLABLE" => Err(
            "S2 spells it NOT_CONTROLABLE (one L); write that so peers understand it".to_string(),
        ),
        _ => Err(format!(
            "unknown control type `{text}` (expected NOT_CONTROLABLE, PEBC, FRBC, OMBC, PPBC or DDBC)"
        )),
    }
}

/// Read a list of control type names at `key` (reported in `file`), rejecting duplicates.
pub(crate) fn parse_control_types(
    names: &[String],
    file: &Path,
    key: &str,
    errors: &mut Errors,
) -> Option<Vec<ControlType>> {
    let mut out = Vec::with_capacity(names.len());
    let mut ok = true;
    for (i, name) in names.iter().enumerate() {
        match parse_control_type(name) {
            Ok(ct) if out.contains(&ct) => {
                ok = false;
                errors.push(
                    file,
                    &format!("{key}[{i}]"),
                    format!("{name} is listed twice"),
                );
            }
            Ok(ct) => out.push(ct),
            Err(reason) => {
                ok = false;
                errors.push(file, &format!("{key}[{i}]"), reason);
            }
        }
    }
    if names.is_empty() {
        ok = false;
        errors.push(file, key, "must list at least one control type");
    }
    ok.then_some(out)
}

/// A profile file as written. Fields in alphabetical order: serde lists them in
/// declaration order in `unknown key (known keys: …)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileToml {
    ble: Option<Table>,
    control_types: Option<Strings>,
    description: Option<Text>,
    instruction_processing_delay_ms: Option<Uint<3_600_000>>,
    kind: Option<Text>,
    manufacturer: Option<Text>,
    modbus: Option<Table>,
    model: Option<Text>,
    mqtt: Option<Table>,
    name: Option<Text>,
    sim: Option<Table>,
}

/// Parse and validate profile text; problems are reported against `source`'s path.
pub(crate) fn parse_profile(
    text: &str,
    source: ProfileSource,
    errors: &mut Errors,
) -> Option<Profile> {
    let file = source.display_path();
    let table = parse_toml(text, &file, errors)?;
    let mark = errors.list.len();
    let (raw, at) = located::read::<ProfileToml>(&table, &file, "", errors)?;
    let name = at.required(errors, "name", raw.name.map(|t| t.0));
    if let Some(n) = &name
        && n.trim().is_empty()
    {
        at.err(errors, "name", "must not be empty");
    }
    let description = raw.description.map(|t| t.0).unwrap_or_default();
    let kind = at
        .required(errors, "kind", raw.kind.map(|t| t.0))
        .and_then(|k| {
            let kind = parse_kind(&k);
            if kind.is_none() {
                at.err(
                    errors,
                    "kind",
                    format!(
                        "unknown kind `{k}` (expected pv_inverter, ev_charger, battery, \
                         heat_pump, meter or load)"
                    ),
                );
            }
            kind
        });
    let manufacturer = raw.manufacturer.map(|t| t.0);
    let model = raw.model.map(|t| t.0);
    let control_types = at
        .required(errors, "control_types", raw.control_types)
        .and_then(|list| list.items(&file, "control_types", errors))
        .and_then(|names| parse_control_types(&names, &file, "control_types", errors));
    let delay_ms = raw.instruction_processing_delay_ms.map_or(0, |u| u.0);
    let sim = raw.sim.map(|t| t.0);
    let modbus = raw.modbus.map(|t| t.0);
    if let Some(table) = &modbus {
        super::adapters::check_modbus_profile(table, &file, errors);
    }
    let ble = raw
        .ble
        .and_then(|t| super::adapters::ble_profile(&t.0, &file, errors));
    let mqtt = raw.mqtt.map(|t| t.0);
    if let Some(table) = &mqtt {
        super::adapters::check_mqtt_profile(table, &file, errors);
    }
    if errors.list.len() > mark {
        return None;
    }
    Some(Profile {
        name: name?,
        description,
        kind: kind?,
        manufacturer,
        model,
        control_types: control_types?,
        instruction_processing_delay: Duration::from_millis(delay_ms),
        sim,
        modbus,
        ble,
        mqtt,
        source,
    })
}

impl Cx<'_> {
    /// Resolve a device's `profile` value (at `key`; see the module docs of [`super`]),
    /// loading each profile once.
    pub(crate) fn profile(&mut self, key: &str, value: &str) -> Option<Arc<Profile>> {
        if let Some(cached) = self.profiles.get(value) {
            return cached.clone();
        }
        let is_path = value.contains('/') || value.ends_with(".toml");
        let local = if is_path {
            Some(self.resolve(value))
        } else {
            let candidate = self.base_dir.join("profiles").join(format!("{value}.toml"));
            candidate.is_file().then_some(candidate)
        };
        let loaded = match local {
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => self.parse_profile_text(key, &text, ProfileSource::File(path)),
                Err(e) => {
                    self.err(
                        key,
                        format!("cannot read profile file {}: {e}", path.display()),
                    );
                    None
                }
            },
            None => match builtin_profile_text(value) {
                Some((name, text)) => {
                    self.parse_profile_text(key, text, ProfileSource::BuiltIn(name))
                }
                None => {
                    let names: Vec<&str> = BUILTIN_PROFILES.iter().map(|(n, _)| *n).collect();
                    let looked = self.base_dir.join("profiles").join(format!("{value}.toml"));
                    self.err(
                        key,
                        format!(
                            "unknown profile `{value}`: not a built-in profile ({}) and no file {}",
                            names.join(", "),
                            looked.display()
                        ),
                    );
                    None
                }
            },
        };
        self.profiles.insert(value.to_string(), loaded.clone());
        loaded
    }

    fn parse_profile_text(
        &mut self,
        key: &str,
        text: &str,
        source: ProfileSource,
    ) -> Option<Arc<Profile>> {
        let shown = source.display_path();
        let parsed = parse_profile(text, source, self.errors).map(Arc::new);
        if parsed.is_none() {
            // Point from the device to the profile's own errors, which name its file.
            self.err(
                key,
                format!("profile {} is invalid (see its errors)", shown.display()),
            );
        }
        parsed
    }
}

/// The text of a built-in profile.
pub fn builtin_profile_text(name: &str) -> Option<(&'static str, &'static str)> {
    BUILTIN_PROFILES.iter().copied().find(|(n, _)| *n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_are_valid() {
        for (name, text) in BUILTIN_PROFILES {
            let mut errors = Errors::new();
            let p = parse_profile(text, ProfileSource::BuiltIn(name), &mut errors);
            assert!(errors.list.is_empty(), "{name}: {:?}", errors.list);
            assert_eq!(p.map(|p| p.name), Some(name.to_string()));
        }
    }
}
