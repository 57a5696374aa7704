//! The BLE parts of the daemon's config: `[device.ble]` ([`BleConnection`], which device)
//! and a profile's `[ble]` ([`BleProfile`], how to read and command it).
//!
//! Both deny unknown keys; [`BleConnection::validate`] and [`BleProfile::validate`] report
//! every other problem as `(key, reason)` without touching a radio.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bindkey::BindKey;
use crate::gatt::{Endian, Template, ValueFormat};

use s2gw_core::problems::{Problems, push};

/// Default for `stale_after_s`: BTHome sensors advertise every few seconds to a minute,
/// so five minutes of silence means the sensor is gone (or out of range).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(300);
/// Default for `poll_interval_s`: how often GATT characteristics without notifications
/// are read.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);

/// A bindkey as written in the config: kept as text until [`BleConnection::load_bindkey`]
/// parses it, so a malformed key is reported by `validate` (without echoing it) rather
/// than by the parser (whose messages quote the input). Prints as `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct BindKeyText(String);

impl BindKeyText {
    /// Wrap key text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }
}

impl fmt::Debug for BindKeyText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for BindKeyText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Serialized configs end up in logs and `s2gw check` output.
        s.serialize_str("***")
    }
}

/// `[device.ble]`: which BLE device this is and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleConnection {
    /// The device's address, `AA:BB:CC:DD:EE:FF`. The surest way to pick one device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The advertised local name, matched exactly, for devices with random addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only scan for devices advertising this service (16-bit `fcd2` or a full UUID);
    /// overrides the profile's `service_uuid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_uuid: Option<String>,
    /// The Bluetooth adapter (`hci0`); default: the first BlueZ knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// BTHome bindkey, 32 hex digits; prefer `bindkey_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindkey: Option<BindKeyText>,
    /// A file holding the BTHome bindkey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindkey_file: Option<PathBuf>,
    /// Readings older than this many seconds make the device unavailable; overrides the
    /// profile's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_s: Option<u64>,
}

impl BleConnection {
    /// A connection to the device at `address`, everything else default.
    pub fn with_address(address: impl Into<String>) -> Self {
        Self {
            address: Some(address.into()),
            ..Self::default()
        }
    }

    /// Everything wrong with this section, as `(key, reason)` pairs; empty when fine.
    /// Reads `bindkey_file` (so a missing or malformed key file is found by `s2gw check`).
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::new();
        if self.address.is_none() && self.name.is_none() {
            push(
                &mut problems,
                "address",
                "give `address` (or `name`) so the adapter knows which BLE device is this one",
            );
        }
        if let Some(a) = &self.address
            && parse_address(a).is_none()
        {
            push(
                &mut problems,
                "address",
                format!("`{a}` is not a Bluetooth address like AA:BB:CC:DD:EE:FF"),
            );
        }
        if let Some(n) = &self.name
            && n.trim().is_empty()
        {
            push(&mut problems, "name", "must not be empty");
        }
        check_uuid(&mut problems, "service_uuid", self.service_uuid.as_deref());
        check_stale(&mut problems, self.stale_after_s);
        self.validate_bindkey(&mut problems);
        problems
    }

    fn validate_bindkey(&self, problems: &mut Problems) {
        if self.bindkey.is_some() && self.bindkey_file.is_some() {
            push(
                problems,
                "bindkey_file",
                "give either `bindkey` or `bindkey_file`, not both",
            );
            return;
        }
        if let Err(e) = self.load_bindkey() {
            let key = if self.bindkey.is_some() {
                "bindkey"
            } else {
                "bindkey_file"
            };
            push(problems, key, e.to_string());
        }
    }

    /// The device address as bytes, most significant first, if one is configured.
    pub fn address_bytes(&self) -> Option<[u8; 6]> {
        self.address.as_deref().and_then(parse_address)
    }

    /// The bindkey, from `bindkey` or `bindkey_file`; `None` when neither is set.
    pub fn load_bindkey(&self) -> Result<Option<BindKey>, crate::BindKeyError> {
        match (&self.bindkey, &self.bindkey_file) {
            (Some(text), _) => BindKey::from_hex(&text.0).map(Some),
            (None, Some(path)) => BindKey::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Where a device's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BleSource {
    /// BTHome v2 advertisements: nothing to connect to, nothing to command.
    Bthome,
    /// GATT characteristics of a connected device, described by `readings` and `modes`.
    Gatt,
}

/// What a GATT reading feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadingField {
    /// Active power in W, consumption positive.
    PowerW,
    /// Energy in Wh.
    EnergyWh,
    /// State of charge in %.
    Soc,
    /// A state value that says which mode the device is in (see `GattMode::state`).
    State,
}

impl ReadingField {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadingField::PowerW => "power_w",
            ReadingField::EnergyWh => "energy_wh",
            ReadingField::Soc => "soc",
            ReadingField::State => "state",
        }
    }
}

/// One `[[ble.readings]]` entry: a characteristic whose value feeds a reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GattReading {
    /// Which reading it feeds.
    pub field: ReadingField,
    /// The characteristic UUID (16-bit `2a19` or full).
    pub characteristic: String,
    /// How the value is laid out.
    pub format: ValueFormat,
    /// Byte order (default little).
    #[serde(default)]
    pub endian: Endian,
    /// `reading = raw * scale + offset` (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// `reading = raw * scale + offset` (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
    /// Subscribe to notifications instead of polling (default false).
    #[serde(default)]
    pub notify: bool,
}

impl GattReading {
    /// The reading for a raw value.
    pub fn scaled(&self, raw: f64) -> f64 {
        raw * self.scale.unwrap_or(1.0) + self.offset.unwrap_or(0.0)
    }
}

/// One `[[ble.modes]]` entry: an operation mode entered by a GATT write (S2 OMBC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GattMode {
    /// Short stable name (`on`, `off`).
    pub name: String,
    /// What a person reads (default: the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Lowest power in the mode, W.
    pub min_w: f64,
    /// Highest power in the mode, W.
    pub max_w: f64,
    /// The device's own default, entered on release (exactly one mode has it).
    #[serde(default)]
    pub default: bool,
    /// The characteristic to write.
    pub characteristic: String,
    /// The payload, a template of hex bytes (see [`crate::gatt::Template`]); a mode has
    /// no number to put in, so no placeholders.
    pub payload: String,
    /// Write with response (default true): the device acknowledges the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_response: Option<bool>,
    /// The value of the `state` reading that means the device is in this mode; used to
    /// verify a write by reading it back and to report the active mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<f64>,
}

/// A profile's `[ble]` table: how a kind of BLE device is read and commanded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleProfile {
    /// Where the values come from.
    pub source: BleSource,
    /// Scan only for devices advertising this service (default for `bthome`: fcd2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_uuid: Option<String>,
    /// Readings older than this many seconds make the device unavailable (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after_s: Option<u64>,
    /// `gatt`: seconds between reads of characteristics without `notify` (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval_s: Option<u64>,
    /// `gatt`: the characteristics read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readings: Vec<GattReading>,
    /// `gatt`: the operation modes; none means measurements only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modes: Vec<GattMode>,
    /// `gatt` modes: seconds a mode must hold before it may change (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_on_s: Option<u64>,
    /// `gatt` modes: seconds after a switch before switching back (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_off_s: Option<u64>,
}

impl BleProfile {
    /// A BTHome profile with every parameter at its default.
    pub fn bthome() -> Self {
        Self {
            source: BleSource::Bthome,
            service_uuid: None,
            stale_after_s: None,
            poll_interval_s: None,
            readings: Vec::new(),
            modes: Vec::new(),
            min_on_s: None,
            min_off_s: None,
        }
    }

    /// Everything wrong with this table, as `(key, reason)` pairs; empty when fine.
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::new();
        check_uuid(&mut problems, "service_uuid", self.service_uuid.as_deref());
        check_stale(&mut problems, self.stale_after_s);
        if self.poll_interval_s == Some(0) {
            push(&mut problems, "poll_interval_s", "must be at least 1");
        }
        match self.source {
            BleSource::Bthome => self.validate_bthome(&mut problems),
            BleSource::Gatt => self.validate_gatt(&mut problems),
        }
        problems
    }

    fn validate_bthome(&self, problems: &mut Problems) {
        let gatt_only = [
            ("readings", !self.readings.is_empty()),
            ("modes", !self.modes.is_empty()),
            ("poll_interval_s", self.poll_interval_s.is_some()),
            ("min_on_s", self.min_on_s.is_some()),
            ("min_off_s", self.min_off_s.is_some()),
        ];
        for (key, given) in gatt_only {
            if given {
                push(
                    problems,
                    key,
                    "only applies to source = \"gatt\" (BTHome devices are read from advertisements)",
                );
            }
        }
    }

    fn validate_gatt(&self, problems: &mut Problems) {
        if self.readings.is_empty() && self.modes.is_empty() {
            push(
                problems,
                "readings",
                "a GATT profile needs at least one reading or mode",
            );
        }
        let mut seen = Vec::new();
        for (i, r) in self.readings.iter().enumerate() {
            let key = format!("readings[{i}]");
            if seen.contains(&r.field) {
                push(
                    problems,
                    &format!("{key}.field"),
                    format!("{} is read twice", r.field.as_str()),
                );
            }
            seen.push(r.field);
            check_uuid(
                problems,
                &format!("{key}.characteristic"),
                Some(&r.characteristic),
            );
            if let Some(s) = r.scale
                && !(s.is_finite() && s != 0.0)
            {
                push(
                    problems,
                    &format!("{key}.scale"),
                    "must be a non-zero number",
                );
            }
        }
        self.validate_modes(problems, seen.contains(&ReadingField::State));
    }

    fn validate_modes(&self, problems: &mut Problems, has_state: bool) {
        let defaults = self.modes.iter().filter(|m| m.default).count();
        if !self.modes.is_empty() && defaults != 1 {
            push(
                problems,
                "modes",
                format!(
                    "exactly one mode must be `default = true` (the fail-safe), found {defaults}"
                ),
            );
        }
        for (i, m) in self.modes.iter().enumerate() {
            let key = format!("modes[{i}]");
            if m.name.trim().is_empty() {
                push(problems, &format!("{key}.name"), "must not be empty");
            }
            if self.modes[..i].iter().any(|o| o.name == m.name) {
                push(
                    problems,
                    &format!("{key}.name"),
                    format!("mode `{}` is listed twice", m.name),
                );
            }
            if !(m.min_w.is_finite() && m.max_w.is_finite() && m.min_w <= m.max_w) {
                push(
                    problems,
                    &format!("{key}.max_w"),
                    "min_w and max_w must be numbers with min_w <= max_w",
                );
            }
            check_uuid(
                problems,
                &format!("{key}.characteristic"),
                Some(&m.characteristic),
            );
            match Template::parse(&m.payload) {
                Ok(t) if t.takes_value() => push(
                    problems,
                    &format!("{key}.payload"),
                    "a mode payload has no value to fill in; remove the {…} placeholder",
                ),
                Ok(_) => {}
                Err(e) => push(problems, &format!("{key}.payload"), e.to_string()),
            }
            if m.state.is_some() && !has_state {
                push(
                    problems,
                    &format!("{key}.state"),
                    "needs a reading with field = \"state\" to compare with",
                );
            }
        }
    }

    /// How long readings stay fresh, `connection` overriding the profile.
    pub fn stale_after(&self, connection: &BleConnection) -> Duration {
        connection
            .stale_after_s
            .or(self.stale_after_s)
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_STALE_AFTER)
    }

    /// The scan filter, `connection` overriding the profile; BTHome defaults to fcd2.
    pub fn scan_service(&self, connection: &BleConnection) -> Option<Uuid> {
        let text = connection
            .service_uuid
            .as_deref()
            .or(self.service_uuid.as_deref());
        match (text, self.source) {
            (Some(t), _) => parse_uuid(t),
            (None, BleSource::Bthome) => Some(crate::bthome::SERVICE_UUID),
            (None, BleSource::Gatt) => None,
        }
    }
}

fn check_uuid(problems: &mut Problems, key: &str, text: Option<&str>) {
    if let Some(t) = text
        && parse_uuid(t).is_none()
    {
        push(
            problems,
            key,
            format!(
                "`{t}` is not a UUID (16-bit like `fcd2` or full like `0000fcd2-0000-1000-8000-00805f9b34fb`)"
            ),
        );
    }
}

fn check_stale(problems: &mut Problems, value: Option<u64>) {
    if value == Some(0) {
        push(problems, "stale_after_s", "must be at least 1");
    }
}

/// A UUID: 16-bit (`fcd2`, `0xFCD2`), 32-bit, or full; short ones are on the Bluetooth
/// base UUID.
pub fn parse_uuid(text: &str) -> Option<Uuid> {
    let t = text.trim();
    let short = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if (short.len() == 4 || short.len() == 8) && short.chars().all(|c| c.is_ascii_hexdigit()) {
        let v = u32::from_str_radix(short, 16).ok()?;
        return Some(Uuid::from_u128(
            (u128::from(v) << 96) | 0x0000_0000_0000_1000_8000_0080_5f9b_34fb,
        ));
    }
    Uuid::parse_str(t).ok()
}

/// A Bluetooth address `AA:BB:CC:DD:EE:FF` (or with `-`), most significant byte first.
pub fn parse_address(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = [0u8; 6];
    for (byte, part) in out.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
