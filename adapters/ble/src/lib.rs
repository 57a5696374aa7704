//! BLE adapter for s2gw: BTHome v2 sensors and GATT-mapped devices.
//!
//! Everything that needs no radio builds without BlueZ: the [`bthome`] decoder, the
//! config types ([`BleConnection`], [`BleProfile`]), the GATT value codecs ([`gatt`]) and
//! the mapping of advertisements and characteristic values to [`s2gw_core::Readings`]
//! ([`SensorState`], [`PacketFilter`]). The `bluez` feature (default on) adds the
//! btleplug-backed [`Device`](s2gw_core::Device) and [`build`].

pub mod bindkey;
pub mod bthome;

pub use bindkey::{BindKey, BindKeyError};
pub mod config;
pub mod gatt;
pub mod state;

pub use config::{BleConnection, BleProfile, BleSource, GattMode, GattReading, ReadingField};
pub use state::{PacketFilter, SensorState};

#[cfg(feature = "bluez")]
mod bluez;
#[cfg(feature = "bluez")]
pub use bluez::{BleDevice, BleError, build, check_bluez};
