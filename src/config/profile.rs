//! Device profiles: what a kind of device is, which S2 control types it offers, and the
//! adapter tables: `[sim]`, `[modbus]` and `[mqtt]` (defaults a device section is merged
//! over) and `[ble]` (how a kind of BLE device is read; the device section only says which
//! device).

use std::path::{Path, PathBuf};
use std::time::Duration;

use s2gw_core::device::DeviceKind;
use s2gw_core::s2::ControlType;

use super::reader::{Errors, Section};

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
];

/// The adapter tables a device may use as its connection section in this build.
pub(crate) const ADAPTERS: &[&str] = &["sim", "modbus", "ble", "mqtt"];

/// Adapter tables a profile or device may carry in later versions; named so that using
/// one says "not supported yet" rather than "unknown key". None at the moment; the
/// mechanism stays for the next adapter.
pub(crate) const FUTURE_ADAPTERS: &[&str] = &[];

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
/// Accepted: `NOT_CONTROLABLE` (S2's spelling), `PEBC`, `FRBC`, `OMBC` — the control types
/// s2gw has engines for. The long S2 names are accepted too, since people copy them from
/// the standard.
pub fn parse_control_type(text: &str) -> Result<ControlType, String> {
    match text {
        "NOT_CONTROLABLE" => Ok(ControlType::NotControllable),
        "PEBC" | "POWER_ENVELOPE_BASED_CONTROL" => Ok(ControlType::PowerEnvelopeBasedControl),
        "FRBC" | "FILL_RATE_BASED_CONTROL" => Ok(ControlType::FillRateBasedControl),
        "OMBC" | "OPERATION_MODE_BASED_CONTROL" => Ok(ControlType::OperationModeBasedControl),
        "NOT_CONTROLLABLE" => Err(
            "S2 spells it NOT_CONTROLABLE (one L); write that so peers understand it".to_string(),
        ),
        "PPBC" | "DDBC" | "POWER_PROFILE_BASED_CONTROL" | "DEMAND_DRIVEN_BASED_CONTROL" => {
            Err(format!(
                "control type {text} is not supported by s2gw (supported: NOT_CONTROLABLE, PEBC, FRBC, OMBC)"
            ))
        }
        _ => Err(format!(
            "unknown control type `{text}` (expected NOT_CONTROLABLE, PEBC, FRBC or OMBC)"
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

/// The hint for a reserved adapter table.
pub(crate) fn future_adapter_hint(name: &str) -> Option<String> {
    FUTURE_ADAPTERS.contains(&name).then(|| {
        format!(
            "the `{name}` adapter is not available in this build yet (available: {})",
            ADAPTERS.join(", ")
        )
    })
}

/// Parse and validate profile text; problems are reported against `source`'s path.
pub(crate) fn parse_profile(
    text: &str,
    source: ProfileSource,
    errors: &mut Errors,
) -> Option<Profile> {
    let file = source.display_path();
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let (key, reason) = super::syntax_error(text, &e);
            errors.push(&file, &key, reason);
            return None;
        }
    };
    let before = errors.list.len();
    let mut s = Section::new(&file, "", &table);
    let name = s.req_str(errors, "name");
    if let Some(n) = &name
        && n.trim().is_empty()
    {
        errors.push(&file, "name", "must not be empty");
    }
    let description = s.opt_str(errors, "description").unwrap_or_default();
    let kind = match s.req_str(errors, "kind") {
        Some(k) => match parse_kind(&k) {
            Some(kind) => Some(kind),
            None => {
                errors.push(
                    &file,
                    "kind",
                    format!(
                        "unknown kind `{k}` (expected pv_inverter, ev_charger, battery, heat_pump, meter or load)"
                    ),
                );
                None
            }
        },
        None => None,
    };
    let manufacturer = s.opt_str(errors, "manufacturer");
    let model = s.opt_str(errors, "model");
    let control_types = if s.has("control_types") {
        s.opt_str_list(errors, "control_types")
            .and_then(|names| parse_control_types(&names, &file, "control_types", errors))
    } else {
        errors.push(&file, "control_types", "missing required key");
        None
    };
    let delay_ms = s
        .opt_uint(errors, "instruction_processing_delay_ms", 3_600_000)
        .unwrap_or(0);
    let sim = s.opt_table(errors, "sim").cloned();
    let modbus = s.opt_table(errors, "modbus").cloned();
    if let Some(table) = &modbus {
        super::adapters::check_modbus_profile(table, &file, errors);
    }
    let ble_table = s.opt_table(errors, "ble");
    let ble = ble_table.and_then(|t| super::adapters::ble_profile(t, &file, errors));
    let mqtt = s.opt_table(errors, "mqtt").cloned();
    if let Some(table) = &mqtt {
        super::adapters::check_mqtt_profile(table, &file, errors);
    }
    s.finish(errors, future_adapter_hint);
    if errors.list.len() > before {
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

/// The text of a built-in profile.
pub fn builtin_profile_text(name: &str) -> Option<(&'static str, &'static str)> {
    BUILTIN_PROFILES.iter().copied().find(|(n, _)| *n == name)
}
