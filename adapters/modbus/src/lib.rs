//! Modbus adapter for s2gw (work in progress).

pub mod bus;
pub mod config;
pub mod error;
pub mod map;
pub mod point;
pub mod scan;
pub mod sunspec;
pub mod target;
pub mod value;

use std::sync::Arc;

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

/// Keeps `Arc` in the public signature docs honest.
#[doc(hidden)]
pub type SharedBus = Arc<Bus>;
