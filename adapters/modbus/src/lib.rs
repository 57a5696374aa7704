//! Modbus adapter for s2gw: Modbus TCP, RTU over a serial line and RTU over TCP; SunSpec
//! inverters and batteries found by discovery; chargers, heat pumps and meters described
//! by register maps in device profiles.
//!
//! # Buses
//!
//! Every unit reached through one endpoint (`host:port`, or a serial device) shares one
//! connection task with a request queue ([`Bus`]): requests go out one at a time with the
//! bus's inter-request delay and delay after connect; each has its device's timeout; a
//! broken connection or garbled answer is retried on a fresh connection (`retries`); a
//! unit that times out is skipped with back-off (1 s doubling to 60 s), so a dead unit
//! costs its bus one timeout per back-off step and the other units carry on. Nothing
//! connects before the first request.
//!
//! # Configuration
//!
//! The daemon merges a device's `[device.modbus]` over its profile's `[modbus]` key by
//! key and passes the table to [`ModbusConfig::from_table`], which splits it into
//! [`ModbusConnection`] keys and [`ModbusProfile`] keys; `validate()` on either reports
//! `(key, reason)` pairs.
//!
//! Connection keys: exactly one of `tcp = "host:port"`, `rtu_over_tcp = "host:port"`,
//! `serial = "/dev/ttyUSB0"` (with `baud` 9600, `parity` none/even/odd, `data_bits` 8,
//! `stop_bits` 1); `unit` (1); `timeout_ms` (1000); `inter_request_delay_ms` (0 on TCP,
//! 20 on RTU); `connect_delay_ms` (0); `retries` (1); the proxy's `proxy_listen`,
//! `proxy_unit`, `proxy_cache_ms`, `proxy_writable` (below).
//!
//! ## SunSpec profiles: `[modbus.sunspec]`
//!
//! No register map: discovery probes 40000, 0 and 50000 (`bases`) for `SunS` and walks
//! the model chain to 0xFFFF. Used points (offsets from the model's ID register): 1 (Mn,
//! Md, Vr, SN); 101–103 (W 14/W_SF 15, WH 24/WH_SF 26, St 38); 111–113 (float W 22, WH
//! 32, St 48); 120 (WRtg, WHRtg); 121 (WMax); 123 (WMaxLimPct 5, _RvrtTms 7, WMaxLim_Ena
//! 9, _SF 23); 124 (WChaMax, StorCtl_Mod, ChaState, OutWRte, InWRte, InOutWRte_RvrtTms);
//! 701 (InvSt, W, WL1–3, TotWhInj); 704 (WMaxLimPctEna 14, WMaxLimPct 15, WMaxLimPctRvrt 16,
//! WMaxLimPctEnaRvrt 17, WMaxLimPctRvrtTms 18, _SF 54). Keys: `control` (auto = 704, else
//! 123; `704`, `123`, `none`), `revert_s` (120), `write` (`fc16` or `fc6`), `rated_w`,
//! `storage`, `capacity_wh`, `min_soc`, `max_soc`.
//!
//! | command | SunSpec writes (each read back, rule 4) |
//! |---|---|
//! | `LimitPower { min_w }` (production negative) | pct = −min_w / WMax; < 100 %: 704: RvrtTms = revert_s, Rvrt/EnaRvrt = the installer's limit (or 100 %/0), WMaxLimPct, Ena = 1 last; 123: RvrtTms, WMaxLimPct, Ena = 1. ≥ 100 % or open: Ena = 0 |
//! | `SetPower { watts }` (storage, charge positive) | InOutWRte_RvrtTms, InWRte = ±pct, OutWRte = ∓pct of WChaMax, StorCtl_Mod = 3 |
//! | `Release` | the limit/storage settings found at start-up restored exactly, or Ena = 0 / StorCtl_Mod = 0 |
//!
//! Limit percentages are of WMax (121), else WRtg (120), else `rated_w`. A limit
//! curtails only when enabled *and* below 100 % (some inverters keep the enable flag at 1
//! at 100 %); an enabled 100 % is not reported as active but still restored on release.
//!
//! The gateway reads the control registers before it writes anything (rule 3). A limit
//! that is active at start-up and not ours is reported as `Readings::active`, logged, and
//! left alone; later limits are never looser than it, 704's reversion registers point at
//! it, and `Release` restores exactly those registers. Active limits and setpoints are
//! re-written at half the revert time, so the device reverts by itself only when the
//! gateway is gone (rule 2).
//!
//! ## Map profiles
//!
//! ```toml
//! [modbus]
//! address_base = 0          # required: addresses below count from 0 (protocol) or 1
//! word_order = "high_first" # or "low_first"; byte_order = "big" | "little"
//! sentinels = "none"        # or "sunspec" (0x8000, 0xFFFF, ...); NaN always counts
//! max_gap = 8               # holes read through to save requests (0: never)
//! max_block = 125
//! slow_interval_s = 60      # the `slow` poll group
//! refresh_s = 25            # re-write the last command's registers (validity/heartbeat)
//! min_on_s = 600            # OMBC timers
//! min_off_s = 300
//!
//! [modbus.registers.power]  # any name
//! table = "holding"         # holding | input | coil | discrete_input
//! address = 344
//! type = "f32"              # bool u16 i16 u32 i32 u64 i64 f32 f64 string bitmask16
//!                           # bitmask32 acc32 acc64; `length` for strings
//! scale = 1.0               # raw × scale (× 10^scale_register) = W, Wh, %, A
//! scale_register = "p_sf"   # an i16 register: SunSpec-style _SF
//! not_implemented = [0xFFFF]
//! poll = "fast"             # fast | slow | once | never (default: fast if a reading)
//! write = "fc16"            # fc5 | fc6 | fc15 | fc16: makes it writable
//! verify = true             # read back after writing (rule 4)
//!
//! [modbus.readings]         # register names; W consumption positive
//! power = "power"
//! phase_power = ["l1", "l2", "l3"]
//! energy = "energy"
//! soc = "soc"
//! status = "state"
//! fault_values = [7]        # numeric states that are faults
//! fault_prefixes = ["E", "F"] # text states that are faults
//!
//! [[modbus.detect]]         # signature for `s2gw modbus detect` (all must fit)
//! register = "voltage"      # a register above
//! min = 80                  # and/or max, equals; prefix = "..." for strings
//! max = 300
//! ```
//!
//! How commands become writes: a write is `{ register = "x", value = 1 }`,
//! `{ register = "x", from = "amps" }` (`amps`, `phases`, `watts`, `max_w`, `min_w`,
//! `production_limit_w`) or a charger's on/off register `{ register = "x", on = 0, off =
//! 1 }` (by whether the current is above 0 A; `skip_when_off = true` leaves a register out
//! at 0 A), written with the register's function code, scaled back to raw, and read
//! back. `when_different = true` reads the register first and writes it only when it
//! holds another value, also on the `refresh_s` re-writes: for settings kept in
//! non-volatile memory, which wears out when rewritten every few seconds.
//!
//! | command | writes |
//! |---|---|
//! | `SetCurrent { amps, phases }` | `[modbus.commands] set_current`, after the charger checks (0 = off, else ≥ `min_current_a`, ≤ `max_current_a`, phases wired or switchable) |
//! | `LimitPower` | `commands.limit_power`; on a charger: the largest current step within `max_w` through `set_current` |
//! | `SetPower` | `commands.set_power` |
//! | `SetMode { mode }` | the `[[modbus.modes]]` entry's `writes`; on a charger: a step name (`off`, `10A-3p`) |
//! | `Release` | `commands.release`; else a charger's maximum current; else the default mode's writes |
//!
//! `[modbus.charger]` (`min_current_a` 6, `max_current_a`, `phases` 3, `phase_switching`,
//! `voltage_v` 230, `steps_a`) offers OMBC modes `off`, `6A-3p`, … and a PEBC envelope
//! 0..max; `[[modbus.modes]]` (`name`, `label`, `min_w`, `max_w`, `default`, `writes`)
//! offers OMBC modes (SG-Ready); `[modbus.envelope]` (`min_w`, `max_w`) offers PEBC.
//!
//! # Proxy: one Modbus TCP client, several tools
//!
//! Many inverters and chargers accept one Modbus TCP client. With `proxy_listen =
//! "host:port"` in `[device.modbus]` the gateway re-exports the device through its own
//! connection and queue ([`proxy`]): `proxy_unit` (default `unit`) is the unit id clients
//! use, `proxy_cache_ms` (default 0, at most the poll interval) how old a shared answer
//! may be, `proxy_writable = [{ table = "holding", address = 40100, count = 2 }]` (0-based
//! wire addresses) what clients may write. Reads covered by a queued read share its
//! answer; writes outside the writable ranges get exception 02, writes to a register a
//! CEM instruction holds get exception 06, logged without flooding the log.
//!
//! # Installer tools
//!
//! [`scan()`] (SunSpec models and key live values; its [`ScanReport`] displays as a
//! readable report), [`read_raw`] (raw registers decoded with a type and word order) and
//! [`detect`] (SunSpec and the profiles' `[[modbus.detect]]` signatures, one request at
//! a time per host) for `s2gw modbus scan/read/detect`. Errors name the problem: connection refused, timeout
//! (which unit, how long), exceptions by name (illegal function/address/value, server
//! device failure, gateway errors).

pub mod bus;
pub mod config;
pub mod detect;
pub mod error;
mod ledger;
pub mod map;
pub mod point;
pub mod proxy;
pub mod scan;
pub mod sunspec;
pub mod target;
pub mod value;

use s2gw_core::Device;

pub use bus::{Bus, BusSettings, Table};
pub use config::{ModbusConfig, ModbusConnection, ModbusProfile};
pub use error::ModbusError;
pub use scan::{RawRead, ScanReport, read_raw, scan};
pub use target::Target;
pub use value::{ValueType, WordOrder};

/// Builds the device a profile describes, on the shared bus of its connection.
///
/// Never touches the network: the bus connects and a SunSpec device discovers on the
/// first read. Call [`ModbusConfig::validate`] first; a connection without a target
/// gets a device whose every call fails with the reason.
pub fn build(id: &str, connection: &ModbusConnection, profile: &ModbusProfile) -> Box<dyn Device> {
    let target = connection
        .target()
        .unwrap_or_else(|_| Target::Tcp("0.0.0.0:0".to_string()));
    let unit = point::Unit {
        bus: Bus::shared(&target, connection.bus_settings()),
        id: connection.unit(),
        timeout: connection.timeout(),
    };
    build_on(id, unit, profile)
}

/// Starts the Modbus TCP proxy of a device whose connection has `proxy_listen` (on the
/// bus [`build`] gave the device); `None` without one. Fails when the address cannot be
/// bound or another device on it has the same proxy unit id.
pub async fn start_proxy(
    id: &str,
    connection: &ModbusConnection,
) -> Result<Option<std::net::SocketAddr>, ModbusError> {
    let (Some(listen), Ok(target)) = (&connection.proxy_listen, connection.target()) else {
        return Ok(None);
    };
    let route = proxy::Route {
        device: id.to_string(),
        bus: Bus::shared(&target, connection.bus_settings()),
        unit: connection.unit(),
        timeout: connection.timeout(),
        cache: connection.proxy_cache(),
        writable: connection.proxy_writable.clone(),
    };
    proxy::serve(listen, connection.proxy_unit(), route)
        .await
        .map(Some)
}

/// Builds the device on a given unit (tests, benchmarks, a private bus).
pub fn build_on(id: &str, unit: point::Unit, profile: &ModbusProfile) -> Box<dyn Device> {
    match &profile.sunspec {
        Some(opts) => Box::new(sunspec::SunSpecDevice::new(
            id,
            unit,
            opts,
            profile.coalescing(),
        )),
        None => Box::new(map::MapDevice::new(id, unit, profile)),
    }
}
