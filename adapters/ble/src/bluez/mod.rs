//! The radio side, through btleplug on BlueZ (D-Bus, the system bus; set
//! `DBUS_SYSTEM_BUS_ADDRESS` to use another bus, as the tests do).
//!
//! Each [`BleDevice`] runs one background task that owns its BlueZ session: it scans,
//! decodes BTHome advertisements or connects and reads GATT characteristics, and
//! reconnects with back-off. [`Device::read`](s2gw_core::Device::read) never waits for
//! the radio: it returns the latest values, so a slow or absent device never stalls the
//! virtual RM.

mod device;
mod link;

use std::time::Duration;

use btleplug::api::{Central, Manager as _};
use btleplug::platform::{Adapter, Manager};
use s2gw_core::Device;

pub use device::BleDevice;

use crate::config::{BleConnection, BleProfile};

/// How long to wait for BlueZ to answer the first D-Bus calls.
const BLUEZ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why BLE cannot work on this machine at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BleError {
    /// BlueZ does not answer on the system D-Bus.
    #[error("BlueZ is not available ({reason}); BLE devices {} stay unavailable", list(.devices))]
    NoBluez {
        /// What D-Bus or BlueZ said.
        reason: String,
        /// The BLE devices configured.
        devices: Vec<String>,
    },
    /// BlueZ runs but has no (such) adapter.
    #[error("no Bluetooth adapter{} ({reason}); BLE devices {} stay unavailable", .adapter.as_deref().map(|a| format!(" `{a}`")).unwrap_or_default(), list(.devices))]
    NoAdapter {
        /// The adapter asked for, if one was.
        adapter: Option<String>,
        /// What BlueZ said or had.
        reason: String,
        /// The BLE devices configured.
        devices: Vec<String>,
    },
}

fn list(devices: &[String]) -> String {
    if devices.is_empty() {
        return "(none configured)".into();
    }
    devices
        .iter()
        .map(|d| format!("`{d}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the BLE device `id` described by `connection` and `profile`.
///
/// Never fails and touches no radio: the background task starts on the first
/// [`read`](s2gw_core::Device::read), and problems (no BlueZ, no adapter, a bad bindkey
/// file) surface as errors naming the device, while every other device keeps running.
/// Call [`BleConnection::validate`] and [`BleProfile::validate`] first to report config
/// mistakes, and [`check_bluez`] once to report a missing BlueZ for all BLE devices.
pub fn build(id: &str, connection: &BleConnection, profile: &BleProfile) -> Box<dyn Device> {
    Box::new(BleDevice::new(id, connection, profile))
}

/// Checks that BlueZ answers and has `adapter` (or any adapter), naming `devices` (the
/// BLE devices configured) in the error. Returns the adapter's description.
pub async fn check_bluez(adapter: Option<&str>, devices: &[&str]) -> Result<String, BleError> {
    let devices: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
    let found = tokio::time::timeout(BLUEZ_TIMEOUT, open_adapter(adapter)).await;
    let found = found.unwrap_or_else(|_| {
        Err(AdapterProblem::NoBluez(
            "BlueZ did not answer within 10 s".into(),
        ))
    });
    match found {
        Ok((_, description)) => Ok(description),
        Err(AdapterProblem::NoBluez(reason)) => Err(BleError::NoBluez { reason, devices }),
        Err(AdapterProblem::NoAdapter(reason)) => Err(BleError::NoAdapter {
            adapter: adapter.map(str::to_string),
            reason,
            devices,
        }),
    }
}

/// What went wrong finding an adapter.
#[derive(Debug)]
pub(crate) enum AdapterProblem {
    NoBluez(String),
    NoAdapter(String),
}

impl std::fmt::Display for AdapterProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterProblem::NoBluez(r) => write!(f, "BlueZ is not available: {r}"),
            AdapterProblem::NoAdapter(r) => write!(f, "no Bluetooth adapter: {r}"),
        }
    }
}

/// Connect to BlueZ and pick the adapter named `wanted` (`hci0`), or the first one.
pub(crate) async fn open_adapter(
    wanted: Option<&str>,
) -> Result<(Adapter, String), AdapterProblem> {
    let manager = Manager::new().await.map_err(|e| {
        AdapterProblem::NoBluez(format!(
            "{e} (is bluetoothd running, and may this user use D-Bus?)"
        ))
    })?;
    let adapters = manager
        .adapters()
        .await
        .map_err(|e| AdapterProblem::NoBluez(e.to_string()))?;
    let mut names = Vec::new();
    for adapter in adapters {
        // "hci0 (usb:v1D6Bp0246d0540)": the name comes first.
        let info = adapter.adapter_info().await.unwrap_or_default();
        let name = info
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        if wanted.is_none_or(|w| w == name) {
            return Ok((adapter, info));
        }
        names.push(name);
    }
    Err(AdapterProblem::NoAdapter(if names.is_empty() {
        "BlueZ knows none (is one plugged in and powered?)".into()
    } else {
        format!("BlueZ has {}", names.join(", "))
    }))
}
