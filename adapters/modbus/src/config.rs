//! The `modbus` tables: a device's connection and a profile's register map.
//!
//! The daemon merges a device's `[device.modbus]` table key by key over its profile's
//! `[modbus]` table and hands the result to [`ModbusConfig::from_table`], which splits it
//! into the [`ModbusConnection`] keys (where the bus is, timing) and the
//! [`ModbusProfile`] keys (what is at which register). Either may appear on either side:
//! a profile can carry a default `timeout_ms` for a slow device, a device can override a
//! profile's `rated_w`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::{BusSettings, Table};
use crate::point::{PollGroup, WriteFc};
use crate::target::{Parity, SerialLine, Target};
use crate::value::{ByteOrder, Sentinels, ValueType, WordOrder};

pub use s2gw_core::problems::Problems;
use s2gw_core::problems::push;

/// Where a device is and how its bus is timed (`tcp`, `unit`, `timeout_ms`, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConnection {
    /// Modbus TCP endpoint `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// RTU framing over a TCP socket, `host:port` (serial-to-Ethernet converters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtu_over_tcp: Option<String>,
    /// A serial device node for RTU, e.g. `/dev/ttyUSB0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Serial: bits per second (default 9600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baud: Option<u32>,
    /// Serial: `none`, `even` or `odd` (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity: Option<Parity>,
    /// Serial: 7 or 8 (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_bits: Option<u8>,
    /// Serial: 1 or 2 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_bits: Option<u8>,
    /// Unit (slave) id, 0..=247, or 255 on Modbus TCP (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<u8>,
    /// Per-request timeout of this device in ms (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bus: silence between requests in ms (default 0 on TCP, 20 on RTU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter_request_delay_ms: Option<u64>,
    /// Bus: wait after connecting before the first request, in ms (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_delay_ms: Option<u64>,
    /// Bus: attempts after a broken connection, on a new one (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Re-export the device to other Modbus TCP clients on `host:port` (port 0: any
    /// free port, logged), through this bus's connection and queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_listen: Option<String>,
    /// Proxy: the unit id clients use for this device (default: `unit`, passed through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_unit: Option<u8>,
    /// Proxy: answer reads from the bus's last answer if it is at most this old, ms
    /// (default 0: only a read still queued is shared); at most the poll interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_cache_ms: Option<u64>,
    /// Proxy: the ranges clients may write (default none: every write is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_writable: Vec<WritableRange>,
}

/// Registers proxy clients may write: `{ table = "holding", address = 40100, count = 2 }`,
/// in 0-based protocol addresses (what the client sends on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritableRange {
    /// `holding` or `coil`.
    pub table: Table,
    /// First address, 0-based.
    pub address: u16,
    /// How many (default 1).
    #[serde(default = "one")]
    pub count: u16,
}

fn one() -> u16 {
    1
}

impl WritableRange {
    /// Whether `count` items from `address` lie inside the range.
    pub fn contains(&self, table: Table, address: u16, count: u16) -> bool {
        table == self.table
            && address >= self.address
            && u32::from(address) + u32::from(count)
                <= u32::from(self.address) + u32::from(self.count)
    }
}

/// The keys of [`ModbusConnection`]; every other key of a merged table is a profile key.
pub const CONNECTION_KEYS: &[&str] = &[
    "tcp",
    "rtu_over_tcp",
    "serial",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "unit",
    "timeout_ms",
    "inter_request_delay_ms",
    "connect_delay_ms",
    "retries",
    "proxy_listen",
    "proxy_unit",
    "proxy_cache_ms",
    "proxy_writable",
];

impl ModbusConnection {
    /// A Modbus TCP connection to `addr` for `unit`.
    pub fn tcp(addr: &str, unit: u8) -> Self {
        Self {
            tcp: Some(addr.to_string()),
            unit: Some(unit),
            ..Self::default()
        }
    }

    /// The bus, or why there is none (run [`Self::validate`] for the full story).
    pub fn target(&self) -> Result<Target, String> {
        match (&self.tcp, &self.rtu_over_tcp, &self.serial) {
            (Some(a), None, None) => Ok(Target::Tcp(a.clone())),
            (None, Some(a), None) => Ok(Target::RtuOverTcp(a.clone())),
            (None, None, Some(path)) => Ok(Target::Rtu(SerialLine {
                path: path.clone(),
                baud: self.baud.unwrap_or(9600),
                parity: self.parity.unwrap_or_default(),
                data_bits: self.data_bits.unwrap_or(8),
                stop_bits: self.stop_bits.unwrap_or(1),
            })),
            (None, None, None) => Err("one of tcp, rtu_over_tcp or serial is required".into()),
            _ => Err("give only one of tcp, rtu_over_tcp and serial".into()),
        }
    }

    /// The unit id (default 1).
    pub fn unit(&self) -> u8 {
        self.unit.unwrap_or(1)
    }

    /// The per-request timeout (default 1 s).
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(1000).max(1))
    }

    /// The bus timing this device asks for.
    pub fn bus_settings(&self) -> BusSettings {
        let serial = self.tcp.is_none();
        let default_gap = if serial { 20 } else { 0 };
        BusSettings {
            inter_request_delay: Duration::from_millis(
                self.inter_request_delay_ms.unwrap_or(default_gap),
            ),
            connect_delay: Duration::from_millis(self.connect_delay_ms.unwrap_or(0)),
            retries: self.retries.unwrap_or(1),
            ..BusSettings::default()
        }
    }

    /// Everything wrong, as `(key, reason)` pairs.
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::new();
        if let Err(reason) = self.target() {
            push(&mut problems, "tcp", reason);
        }
        for (key, addr) in [("tcp", &self.tcp), ("rtu_over_tcp", &self.rtu_over_tcp)] {
            if let Some(a) = addr
                && a.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                push(&mut problems, key, format!("expected HOST:PORT, got {a:?}"));
            }
        }
        let serial_keys = [
            ("baud", self.baud.is_some()),
            ("parity", self.parity.is_some()),
            ("data_bits", self.data_bits.is_some()),
            ("stop_bits", self.stop_bits.is_some()),
        ];
        for (key, given) in serial_keys {
            if given && self.serial.is_none() {
                push(
                    &mut problems,
                    key,
                    "applies to a serial line only (set `serial`)",
                );
            }
        }
        if self.data_bits.is_some_and(|b| b != 7 && b != 8) {
            push(&mut problems, "data_bits", "must be 7 or 8");
        }
        if self.stop_bits.is_some_and(|b| b != 1 && b != 2) {
            push(&mut problems, "stop_bits", "must be 1 or 2");
        }
        // Modbus TCP devices addressed directly take 255 ("MODBUS Messaging on TCP/IP
        // Implementation Guide" V1.0b, 4.4.1.1), e.g. KEBA's P30 insists on it. A
        // profile names no bus, so only RTU framing rules it out.
        let rtu = self.serial.is_some() || self.rtu_over_tcp.is_some();
        if self.unit.is_some_and(|u| u > 247 && (u != 255 || rtu)) {
            push(
                &mut problems,
                "unit",
                "must be 0..=247 (248..255 are reserved; 255 only on Modbus TCP)",
            );
        }
        if self.timeout_ms.is_some_and(|t| !(10..=60_000).contains(&t)) {
            push(&mut problems, "timeout_ms", "must be between 10 and 60000");
        }
        self.validate_proxy(&mut problems);
        problems
    }

    fn validate_proxy(&self, problems: &mut Problems) {
        let Some(listen) = &self.proxy_listen else {
            for (key, given) in [
                ("proxy_unit", self.proxy_unit.is_some()),
                ("proxy_cache_ms", self.proxy_cache_ms.is_some()),
                ("proxy_writable", !self.proxy_writable.is_empty()),
            ] {
                if given {
                    push(
                        problems,
                        key,
                        "applies to a proxy only (set `proxy_listen`)",
                    );
                }
            }
            return;
        };
        if listen.parse::<std::net::SocketAddr>().is_err() {
            push(
                problems,
                "proxy_listen",
                format!("expected IP:PORT (e.g. \"0.0.0.0:5020\"), got {listen:?}"),
            );
        }
        if self.proxy_unit.is_some_and(|u| u > 247) {
            push(problems, "proxy_unit", "must be 0..=247");
        }
        for (i, range) in self.proxy_writable.iter().enumerate() {
            let end = u32::from(range.address) + u32::from(range.count);
            if !matches!(range.table, Table::Holding | Table::Coil) {
                push(
                    problems,
                    &format!("proxy_writable[{i}].table"),
                    "only holding registers and coils can be written",
                );
            }
            if range.count == 0 || end > 0x1_0000 {
                push(
                    problems,
                    &format!("proxy_writable[{i}].count"),
                    "must be at least 1 and end at or before address 65535",
                );
            }
        }
    }

    /// The proxy's unit id for this device: `proxy_unit`, else `unit`.
    pub fn proxy_unit(&self) -> u8 {
        self.proxy_unit.unwrap_or_else(|| self.unit())
    }

    /// How old a shared answer a proxy read may get.
    pub fn proxy_cache(&self) -> Duration {
        Duration::from_millis(self.proxy_cache_ms.unwrap_or(0))
    }
}

/// A register of a map profile (`[modbus.registers.NAME]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterSpec {
    /// `holding`, `input`, `coil` or `discrete_input`.
    pub table: Table,
    /// Address as the maker's table writes it, in the profile's `address_base`.
    pub address: u32,
    /// Value type (default `u16`, `bool` on bit tables).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<ValueType>,
    /// Registers of a `string`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u16>,
    /// Overrides the profile's `word_order`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_order: Option<WordOrder>,
    /// Overrides the profile's `byte_order`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_order: Option<ByteOrder>,
    /// Raw × scale = engineering unit (W, Wh, %, A; negative to flip a sign). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// Name of an `i16` register holding a power-of-ten exponent (SunSpec `_SF`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_register: Option<String>,
    /// Raw values (unsigned bit pattern) that mean "not implemented".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_implemented: Vec<u64>,
    /// `fast` (default), `slow`, `once` or `never` (write-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollGroup>,
    /// Function code to write it with: `fc5`, `fc6`, `fc15`, `fc16`. Absent: read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<WriteFc>,
    /// Read back after writing and compare (default true; fail-safe rule 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
}

impl RegisterSpec {
    /// The value type, defaulted by table.
    pub fn value_type(&self) -> ValueType {
        self.ty.unwrap_or(if self.table.is_bits() {
            ValueType::Bool
        } else {
            ValueType::U16
        })
    }
}

/// Which registers hold the readings (`[modbus.readings]`), by register name. Scaling
/// must give W (consumption positive), Wh, and percent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingsSpec {
    /// Total active power.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<String>,
    /// Active power of L1, L2, L3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_power: Option<[String; 3]>,
    /// Energy counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy: Option<String>,
    /// State of charge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soc: Option<String>,
    /// A state register (number or string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Numeric states that mean the device reports a fault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fault_values: Vec<f64>,
    /// Text states starting with one of these mean a fault (e.g. Alfen `E`, `F`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fault_prefixes: Vec<String>,
}

/// Where a written value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `SetCurrent.amps` (0 = off).
    Amps,
    /// `SetCurrent.phases`.
    Phases,
    /// `SetPower.watts`.
    Watts,
    /// `LimitPower.max_w`.
    MaxW,
    /// `LimitPower.min_w`.
    MinW,
    /// `-LimitPower.min_w`: a production limit as a positive number.
    ProductionLimitW,
    /// The production limit as a percentage (0..=100) of the envelope's production
    /// bound, `-envelope.min_w`: for inverters whose limit register takes a percentage
    /// (e.g. SolarEdge's dynamic active power limit).
    ProductionLimitPct,
}

/// One register write of a command (`{ register = "x", value = 1 }` or
/// `{ register = "x", from = "amps" }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteSpec {
    /// The register's name.
    pub register: String,
    /// A constant, in engineering units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// A command parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Source>,
    /// Used when `from` names an open bound (e.g. `max_w` of a lower-bound-only limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<f64>,
    /// A charger's on/off register: written `on` for a current above 0 A, `off` for
    /// 0 A (with `off`, instead of `value` or `from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<f64>,
    /// See `on`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub off: Option<f64>,
    /// Not written when the charger is switched off (0 A): for a current register that
    /// takes 6 A at least, next to an on/off register.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_when_off: bool,
    /// Read first, and written only when the device holds another value (the
    /// heartbeat's re-writes included): for settings a device keeps in non-volatile
    /// memory, which its maker says not to rewrite (SolarEdge's command timeout and
    /// fallback limit).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub when_different: bool,
}

/// The writes each [`s2gw_core::Command`] becomes (`[modbus.commands]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsSpec {
    /// `Release`: back to autonomous (default: the default mode's writes, or a charger's
    /// maximum current).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub release: Vec<WriteSpec>,
    /// `LimitPower` (default on a charger: the largest current step within `max_w`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limit_power: Vec<WriteSpec>,
    /// `SetPower`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_power: Vec<WriteSpec>,
    /// `SetCurrent`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_current: Vec<WriteSpec>,
}

/// An operation mode (`[[modbus.modes]]`): OMBC, e.g. an SG-Ready state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeDef {
    /// Stable short name.
    pub name: String,
    /// For people (default: the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Power range the mode implies, W.
    pub min_w: f64,
    /// Power range the mode implies, W.
    pub max_w: f64,
    /// Whether the device does this on its own (exactly one mode).
    #[serde(default)]
    pub default: bool,
    /// What is written to enter it.
    pub writes: Vec<WriteSpec>,
}

/// An EV charger's current range (`[modbus.charger]`): OMBC current steps, a PEBC
/// envelope, and the IEC 61851 rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargerSpec {
    /// Lowest current a car accepts (default 6 A).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_current_a: Option<f64>,
    /// Highest current per phase.
    pub max_current_a: f64,
    /// Phases wired (1 or 3, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<u8>,
    /// Whether the charger can switch between 1 and 3 phases (needs a `phases` write).
    #[serde(default)]
    pub phase_switching: bool,
    /// Nominal voltage per phase for power ↔ current (default 230).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voltage_v: Option<f64>,
    /// Current steps offered as modes besides the maximum (default 6, 10, 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_a: Option<Vec<f64>>,
}

/// A PEBC envelope a map device offers (`[modbus.envelope]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSpec {
    /// Most negative limit (production), W.
    pub min_w: f64,
    /// Most positive limit (consumption), W.
    pub max_w: f64,
}

/// SunSpec options (`[modbus.sunspec]`): the register map comes from discovery.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SunSpecOptions {
    /// Base addresses to probe (0-based protocol addresses; default 40000, 0, 50000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bases: Option<Vec<u16>>,
    /// `auto` (704, else 123), `704`, `123` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// The device's revert timer for limits and setpoints, s (default 120); the gateway
    /// re-writes at half of it (fail-safe rule 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_s: Option<u32>,
    /// Function code for writes: `fc16` (default) or `fc6` (devices that refuse FC16
    /// for one register, e.g. Kostal Plenticore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<WriteFc>,
    /// Rated power, W, when the device reports neither WMax (121) nor WRtg (120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rated_w: Option<f64>,
    /// Offer storage control through model 124 (FRBC).
    #[serde(default)]
    pub storage: bool,
    /// Storage: usable capacity, Wh, when model 120 has no WHRtg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_wh: Option<f64>,
    /// Storage: lowest state of charge, % (default: MinRsvPct, else 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_soc: Option<f64>,
    /// Storage: highest state of charge, % (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_soc: Option<f64>,
}

impl SunSpecOptions {
    /// The revert timer.
    pub fn revert(&self) -> Duration {
        Duration::from_secs(u64::from(self.revert_s.unwrap_or(120).max(2)))
    }
}

/// A profile's `[modbus]` table: a SunSpec device or an explicit register map.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusProfile {
    /// SunSpec device: discovery instead of `registers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunspec: Option<SunSpecOptions>,
    /// Whether `address` values count from 0 (protocol addresses) or 1 (register numbers
    /// as many makers print them). Required with `registers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_base: Option<u8>,
    /// Default word order (default `high_first`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_order: Option<WordOrder>,
    /// Default byte order (default `big`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_order: Option<ByteOrder>,
    /// `none` (default) or `sunspec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinels: Option<Sentinels>,
    /// Largest hole of unused registers read through to save a request (default 8; 0
    /// for devices that refuse reads across holes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_gap: Option<u16>,
    /// Most registers per read, ≤ 125 (default 125).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_block: Option<u16>,
    /// Interval of the `slow` poll group, s (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_interval_s: Option<u64>,
    /// Re-write the active command this often, s: a charger's validity/heartbeat
    /// (fail-safe rule 2). Absent: written once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_s: Option<u64>,
    /// Minimum time a mode stays on, s (OMBC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_on_s: Option<u64>,
    /// Minimum time before switching back, s (OMBC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_off_s: Option<u64>,
    /// The register map.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registers: BTreeMap<String, RegisterSpec>,
    /// Which registers are the readings.
    #[serde(default)]
    pub readings: ReadingsSpec,
    /// What commands write.
    #[serde(default)]
    pub commands: CommandsSpec,
    /// OMBC modes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modes: Vec<ModeDef>,
    /// Charger current range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charger: Option<ChargerSpec>,
    /// PEBC envelope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envelope: Option<EnvelopeSpec>,
    /// The signature `s2gw modbus detect` recognises the device by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detect: Vec<DetectCheck>,
}

/// One register of a profile's signature (`[[modbus.detect]]`): its value (scaled) must
/// lie in `min..=max`, equal `equals`, or (a string) start with `prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectCheck {
    /// The register's name.
    pub register: String,
    /// Lowest value that fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest value that fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<f64>,
    /// How a text value starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A device's merged `modbus` table, split.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModbusConfig {
    /// Connection and timing keys.
    pub connection: ModbusConnection,
    /// Everything else.
    pub profile: ModbusProfile,
}

impl ModbusConfig {
    /// Splits a merged table by [`CONNECTION_KEYS`] and deserializes both halves; `Err`
    /// carries `(key, reason)` pairs.
    pub fn from_table<T>(table: BTreeMap<String, T>) -> Result<ModbusConfig, Problems>
    where
        T: Serialize,
    {
        let (conn, prof): (BTreeMap<_, _>, BTreeMap<_, _>) = table
            .into_iter()
            .partition(|(k, _)| CONNECTION_KEYS.contains(&k.as_str()));
        let connection = reserialize::<ModbusConnection, T>(conn);
        let profile = reserialize::<ModbusProfile, T>(prof);
        match (connection, profile) {
            (Ok(connection), Ok(profile)) => Ok(ModbusConfig {
                connection,
                profile,
            }),
            (c, p) => Err(c.err().into_iter().chain(p.err()).collect()),
        }
    }

    /// Everything wrong with both halves.
    pub fn validate(&self) -> Problems {
        let mut problems = self.connection.validate();
        problems.extend(self.profile.validate());
        problems
    }
}

/// Turns a generic table into `C` through JSON's data model, so the caller may hold TOML,
/// JSON or anything else serde can write.
fn reserialize<C, T>(table: BTreeMap<String, T>) -> Result<C, (String, String)>
where
    C: for<'de> Deserialize<'de>,
    T: Serialize,
{
    let value = serde_json::to_value(&table).map_err(|e| (String::new(), e.to_string()))?;
    serde_json::from_value(value).map_err(|e| (String::new(), e.to_string()))
}

impl ModbusProfile {
    /// The poll-group and coalescing settings.
    pub fn coalescing(&self) -> crate::point::Coalescing {
        crate::point::Coalescing {
            max_gap: self.max_gap.unwrap_or(8),
            max_block: self.max_block.unwrap_or(125).clamp(1, 125),
            slow_interval: Duration::from_secs(self.slow_interval_s.unwrap_or(60).max(1)),
        }
    }

    /// Everything wrong, as `(key, reason)` pairs; empty when it is fine.
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::new();
        self.validate_layout(&mut problems);
        for (name, spec) in &self.registers {
            self.validate_register(&mut problems, name, spec);
        }
        self.validate_readings(&mut problems);
        self.validate_commands(&mut problems);
        self.validate_control(&mut problems);
        self.validate_detect(&mut problems);
        problems
    }

    fn validate_layout(&self, problems: &mut Problems) {
        match (&self.sunspec, self.registers.is_empty()) {
            (Some(_), false) => push(
                problems,
                "registers",
                "a SunSpec profile takes its map from discovery; drop `registers` or `sunspec`",
            ),
            (None, true) => push(
                problems,
                "registers",
                "a map profile needs registers (or a [modbus.sunspec] table)",
            ),
            _ => {}
        }
        if !self.registers.is_empty() {
            match self.address_base {
                None => push(
                    problems,
                    "address_base",
                    "required: say whether addresses count from 0 or from 1",
                ),
                Some(b) if b > 1 => push(problems, "address_base", "must be 0 or 1"),
                _ => {}
            }
        }
        if self.max_block.is_some_and(|b| b == 0 || b > 125) {
            push(
                problems,
                "max_block",
                "must be 1..=125 (the Modbus limit for one read)",
            );
        }
        if let Some(s) = &self.sunspec
            && let Some(c) = &s.control
            && !["auto", "704", "123", "none"].contains(&c.as_str())
        {
            push(
                problems,
                "sunspec.control",
                "must be auto, 704, 123 or none",
            );
        }
        if let Some(s) = &self.sunspec
            && matches!(s.write, Some(WriteFc::Fc5 | WriteFc::Fc15))
        {
            push(
                problems,
                "sunspec.write",
                "SunSpec points are registers: fc6 or fc16",
            );
        }
    }

    fn validate_register(&self, problems: &mut Problems, name: &str, spec: &RegisterSpec) {
        let key = |k: &str| format!("registers.{name}.{k}");
        let ty = spec.value_type();
        let base = u32::from(self.address_base.unwrap_or(0));
        if spec.address < base || spec.address - base > u32::from(u16::MAX) {
            push(
                problems,
                &key("address"),
                format!(
                    "must be {base}..={} with address_base = {base}",
                    u32::from(u16::MAX) + base
                ),
            );
        }
        if spec.table.is_bits() != (ty == ValueType::Bool) {
            push(
                problems,
                &key("type"),
                format!(
                    "{} does not fit the {} table",
                    ty.as_str(),
                    spec.table.as_str()
                ),
            );
        }
        match (ty, spec.length) {
            (ValueType::String, None | Some(0)) => push(
                problems,
                &key("length"),
                "a string needs its length in registers",
            ),
            (ValueType::String, Some(n)) if n > 125 => {
                push(problems, &key("length"), "at most 125 registers")
            }
            (ValueType::String, _) | (_, None) => {}
            (_, Some(_)) => push(problems, &key("length"), "only strings take a length"),
        }
        if spec.scale.is_some_and(|s| !s.is_finite() || s == 0.0) {
            push(
                problems,
                &key("scale"),
                "must be a finite number other than 0",
            );
        }
        if let Some(sf) = &spec.scale_register {
            match self.registers.get(sf) {
                None => push(
                    problems,
                    &key("scale_register"),
                    format!("no register named {sf:?}"),
                ),
                Some(r) if r.value_type() != ValueType::I16 || r.table != spec.table => {
                    push(
                        problems,
                        &key("scale_register"),
                        format!("{sf:?} must be an i16 in the same table"),
                    );
                }
                Some(_) => {}
            }
        }
        match (spec.write, spec.table) {
            (None, _) => {}
            (Some(WriteFc::Fc5 | WriteFc::Fc15), Table::Coil) => {}
            (Some(WriteFc::Fc6 | WriteFc::Fc16), Table::Holding) => {}
            (Some(fc), table) => push(
                problems,
                &key("write"),
                format!("{fc:?} cannot write the {} table", table.as_str()),
            ),
        }
        if spec.write == Some(WriteFc::Fc5) && ty.width(1) != 1 {
            push(problems, &key("write"), "fc5 writes one coil");
        }
    }

    fn check_ref(&self, problems: &mut Problems, key: &str, name: &str) {
        if !self.registers.contains_key(name) {
            push(problems, key, format!("no register named {name:?}"));
        }
    }

    fn validate_readings(&self, problems: &mut Problems) {
        let r = &self.readings;
        let singles = [
            ("power", &r.power),
            ("energy", &r.energy),
            ("soc", &r.soc),
            ("status", &r.status),
        ];
        for (key, name) in singles {
            if let Some(n) = name {
                self.check_ref(problems, &format!("readings.{key}"), n);
            }
        }
        for (i, n) in r.phase_power.iter().flatten().enumerate() {
            self.check_ref(problems, &format!("readings.phase_power[{i}]"), n);
        }
        if self.sunspec.is_none() && !self.registers.is_empty() && r.power.is_none() {
            push(
                problems,
                "readings.power",
                "required: the register with the active power",
            );
        }
    }

    fn validate_writes(&self, problems: &mut Problems, key: &str, writes: &[WriteSpec]) {
        for (i, w) in writes.iter().enumerate() {
            let key = format!("{key}[{i}]");
            match self.registers.get(&w.register) {
                None => push(
                    problems,
                    &format!("{key}.register"),
                    format!("no register named {:?}", w.register),
                ),
                Some(r) if r.write.is_none() => push(
                    problems,
                    &format!("{key}.register"),
                    format!("{:?} has no `write` function code", w.register),
                ),
                Some(_) => {}
            }
            let switch = match (w.on, w.off) {
                (Some(_), Some(_)) => true,
                (None, None) => false,
                _ => {
                    push(problems, &key, "`on` and `off` go together");
                    true
                }
            };
            let given = [w.value.is_some(), w.from.is_some(), switch];
            if given.iter().filter(|g| **g).count() != 1 {
                push(
                    problems,
                    &key,
                    "give exactly one of `value`, `from`, or `on` with `off`",
                );
            }
        }
    }

    fn validate_commands(&self, problems: &mut Problems) {
        let c = &self.commands;
        self.validate_writes(problems, "commands.release", &c.release);
        self.validate_writes(problems, "commands.limit_power", &c.limit_power);
        self.validate_writes(problems, "commands.set_power", &c.set_power);
        self.validate_writes(problems, "commands.set_current", &c.set_current);
        for (i, m) in self.modes.iter().enumerate() {
            self.validate_writes(problems, &format!("modes[{i}].writes"), &m.writes);
            if !(m.min_w.is_finite() && m.max_w.is_finite() && m.min_w <= m.max_w) {
                push(
                    problems,
                    &format!("modes[{i}]"),
                    "needs finite min_w <= max_w",
                );
            }
            if self.modes[..i].iter().any(|o| o.name == m.name) {
                push(
                    problems,
                    &format!("modes[{i}].name"),
                    format!("{:?} is used twice", m.name),
                );
            }
        }
        if !self.modes.is_empty() && self.modes.iter().filter(|m| m.default).count() != 1 {
            push(
                problems,
                "modes",
                "exactly one mode must be `default = true`",
            );
        }
        if self.charger.is_some() && c.set_current.is_empty() {
            push(
                problems,
                "commands.set_current",
                "a charger needs the writes that set its current",
            );
        }
    }

    fn validate_detect(&self, problems: &mut Problems) {
        for (i, d) in self.detect.iter().enumerate() {
            self.check_ref(problems, &format!("detect[{i}].register"), &d.register);
            if d.min.is_none() && d.max.is_none() && d.equals.is_none() && d.prefix.is_none() {
                push(
                    problems,
                    &format!("detect[{i}]"),
                    "give min, max, equals or prefix: what the value must be",
                );
            }
        }
    }

    fn validate_control(&self, problems: &mut Problems) {
        if let Some(ch) = &self.charger {
            let min = ch.min_current_a.unwrap_or(6.0);
            if !(min.is_finite() && min > 0.0) {
                push(
                    problems,
                    "charger.min_current_a",
                    "must be a positive number",
                );
            }
            if !(ch.max_current_a.is_finite() && ch.max_current_a >= min) {
                push(
                    problems,
                    "charger.max_current_a",
                    format!("must be at least min_current_a ({min} A)"),
                );
            }
            if ch.phases.is_some_and(|p| p != 1 && p != 3) {
                push(problems, "charger.phases", "must be 1 or 3");
            }
            if ch.phase_switching
                && !self
                    .commands
                    .set_current
                    .iter()
                    .any(|w| w.from == Some(Source::Phases))
            {
                push(
                    problems,
                    "charger.phase_switching",
                    "needs a set_current write `from = \"phases\"`",
                );
            }
        }
        if let Some(e) = &self.envelope
            && !(e.min_w.is_finite() && e.max_w.is_finite() && e.min_w <= e.max_w)
        {
            push(problems, "envelope", "needs finite min_w <= max_w");
        }
        let pct = [&self.commands.limit_power, &self.commands.release]
            .into_iter()
            .flatten()
            .any(|w| w.from == Some(Source::ProductionLimitPct));
        if pct && !self.envelope.is_some_and(|e| e.min_w < 0.0) {
            push(
                problems,
                "envelope.min_w",
                "`from = \"production_limit_pct\"` needs a production bound (min_w < 0): \
                 the power 100 % stands for",
            );
        }
        if self.refresh_s == Some(0) {
            push(problems, "refresh_s", "must be at least 1");
        }
    }
}
