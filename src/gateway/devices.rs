//! Builds the `Device` behind a `[[device]]` from its connection section.

use std::sync::Arc;

use anyhow::Context as _;
use s2gw_core::Device;
use s2gw_core::device::DeviceInfo;
use s2gw_mqtt::MqttHandle;

use crate::config::{Config, Connection, DeviceSection};

/// Whether this build can drive BLE devices (the `ble` cargo feature: BlueZ over D-Bus).
pub const BLE_BUILT_IN: bool = cfg!(feature = "ble");

/// The devices of `config` this build cannot drive: BLE devices when the `ble` feature is
/// off. The gateway refuses to start with any (a device that can never work is a config
/// for another build, better said at once than by a silent never-available resource).
pub fn unsupported(config: &Config) -> Vec<&str> {
    config
        .devices
        .iter()
        .filter(|d| matches!(d.connection, Connection::Ble(_)) && !BLE_BUILT_IN)
        .map(|d| d.id.as_str())
        .collect()
}

/// The device a `[[device]]` section describes, ready for its virtual RM.
///
/// Building never touches the device: connecting, and reconnecting with back-off, is the
/// adapter's job once the virtual RM starts reading (an MQTT device only queues its
/// subscriptions on the gateway's client, `mqtt`). Fails only for a device this build
/// cannot drive (see [`unsupported`]) or an MQTT device without a client.
pub async fn build(
    device: &DeviceSection,
    mqtt: Option<&MqttHandle>,
) -> anyhow::Result<Box<dyn Device>> {
    Ok(match &device.connection {
        Connection::Sim(sim) => s2gw_sim::build(&device.id, sim, Arc::new(s2gw_sim::SystemClock)),
        Connection::Modbus(m) => {
            let built = s2gw_modbus::build(&device.id, &m.connection, &m.profile);
            s2gw_modbus::start_proxy(&device.id, &m.connection)
                .await
                .with_context(|| format!("Modbus device `{}`: proxy_listen", device.id))?;
            built
        }
        Connection::Ble(ble) => build_ble(device, ble)?,
        Connection::Mqtt(config) => build_mqtt(device, config, mqtt).await?,
    })
}

/// Whether the device has an energy register at all, from its configuration alone (the
/// mirror's discovery must not wait for a value): every simulated device counts energy,
/// a Modbus device where its profile maps `energy` (or reads SunSpec, whose inverter
/// models carry WH), an MQTT device where it maps `energy`, a BLE device where it reads
/// `energy_wh` (BTHome meters send energy).
pub fn reports_energy(device: &DeviceSection) -> bool {
    match &device.connection {
        Connection::Sim(_) => true,
        Connection::Modbus(m) => m.profile.readings.energy.is_some() || m.profile.sunspec.is_some(),
        Connection::Mqtt(config) => config.energy.is_some(),
        Connection::Ble(ble) => match ble.profile.source {
            s2gw_ble::BleSource::Bthome => true,
            s2gw_ble::BleSource::Gatt => ble
                .profile
                .readings
                .iter()
                .any(|r| r.field == s2gw_ble::ReadingField::EnergyWh),
        },
    }
}

async fn build_mqtt(
    device: &DeviceSection,
    config: &s2gw_mqtt::MqttDeviceConfig,
    mqtt: Option<&MqttHandle>,
) -> anyhow::Result<Box<dyn Device>> {
    let Some(handle) = mqtt else {
        anyhow::bail!(
            "MQTT device `{}` needs the [mqtt] section (the broker connection)",
            device.id
        );
    };
    // The profile says what the device is; the adapter fills in what it can control.
    let info = DeviceInfo {
        kind: device.profile.kind,
        manufacturer: device.profile.manufacturer.clone(),
        model: device.profile.model.clone(),
        ..DeviceInfo::default()
    };
    let built = s2gw_mqtt::MqttDevice::start(handle.clone(), &device.id, config.clone(), info)
        .await
        .with_context(|| format!("MQTT device `{}` cannot start", device.id))?;
    Ok(Box::new(built))
}

#[cfg(feature = "ble")]
fn build_ble(
    device: &DeviceSection,
    ble: &crate::config::BleSection,
) -> anyhow::Result<Box<dyn Device>> {
    // The profile, not the adapter's guess from its readings, says what the device is.
    let built = s2gw_ble::BleDevice::new(&device.id, &ble.connection, &ble.profile)
        .with_kind(device.profile.kind);
    Ok(Box::new(built))
}

#[cfg(not(feature = "ble"))]
fn build_ble(
    device: &DeviceSection,
    _ble: &crate::config::BleSection,
) -> anyhow::Result<Box<dyn Device>> {
    anyhow::bail!(
        "BLE device `{}` cannot start: this s2gw was built without the `ble` feature",
        device.id
    )
}
