//! MQTT devices from the shipped profiles against a real mosquitto: readings at JSON
//! paths, commands from templates, staleness, garbage on the device topics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use s2gw_core::device::{ControlCapability, DeviceInfo};
use s2gw_core::{CancellationToken, Command, Device, DeviceStatus};
use s2gw_mqtt::{Mqtt, MqttDevice, MqttDeviceConfig};

/// The `[mqtt]` table of a shipped profile, with the daemon's keys present and `device`
/// set as a `[device.mqtt]` would.
fn profile(name: &str, device: &str) -> MqttDeviceConfig {
    let path = format!(
        "{}/../../config/profiles/{name}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    for key in [
        "name",
        "description",
        "kind",
        "manufacturer",
        "control_types",
        "instruction_processing_delay_ms",
    ] {
        assert!(
            table.contains_key(key) || key == "manufacturer",
            "{name} lacks {key}"
        );
    }
    let mut mqtt = table["mqtt"].as_table().unwrap().clone();
    mqtt.insert("device".into(), toml::Value::String(device.into()));
    let config: MqttDeviceConfig = mqtt.try_into().unwrap();
    assert!(
        config.validate().is_empty(),
        "{name}: {:?}",
        config.validate()
    );
    config
}

#[test]
fn every_shipped_profile_parses_and_validates() {
    for name in [
        "mqtt-shelly-gen2-switch",
        "mqtt-tasmota-plug",
        "mqtt-openevse",
        "mqtt-generic",
    ] {
        profile(name, "dev1");
    }
}

async fn read_until(
    device: &mut MqttDevice,
    pred: impl Fn(&s2gw_core::Readings) -> bool,
) -> s2gw_core::Readings {
    guard("a reading", async {
        loop {
            let r = device.read().await.unwrap();
            if pred(&r) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_shelly_reads_commands_and_goes_stale() {
    trace();
    let broker = Broker::start().await;
    let shutdown = CancellationToken::new();
    let (handle, _task) = Mqtt::start(broker.config("dev"), shutdown.clone()).unwrap();
    guard("connect", handle.status().wait_for(|s| s.connected))
        .await
        .unwrap();
    let mut config = profile("mqtt-shelly-gen2-switch", "shellyplus1pm-1");
    config.stale_after_s = 1;
    let mut device = MqttDevice::start(handle.clone(), "plug", config, DeviceInfo::default())
        .await
        .unwrap();
    let info = device.info();
    assert!(
        matches!(&info.control[0], ControlCapability::OperationModes { modes, .. } if modes.len() == 2)
    );

    // Nothing yet: unavailable, no made-up value.
    let r = device.read().await.unwrap();
    assert!(matches!(r.status, DeviceStatus::Unavailable(_)));

    let mut shelly = Peer::connect(&broker, "shelly", &["shellyplus1pm-1/command/switch:0"]).await;
    let status = r#"{"id":0,"source":"init","output":true,"apower":123.4,"voltage":231.0,"aenergy":{"total":5678.9,"by_minute":[0,0,0]}}"#;
    shelly
        .publish("shellyplus1pm-1/status/switch:0", status, false)
        .await;
    let r = read_until(&mut device, |r| r.status == DeviceStatus::Ok).await;
    assert_eq!(r.power_w, 123.4);
    assert_eq!(r.energy_wh, Some(5678.9));

    // Garbage on the device topic is logged and dropped; the good value stays.
    shelly
        .publish("shellyplus1pm-1/status/switch:0", "not json", false)
        .await;
    shelly
        .publish(
            "shellyplus1pm-1/status/switch:0",
            r#"{"apower":"lots"}"#,
            false,
        )
        .await;
    shelly
        .publish(
            "shellyplus1pm-1/status/switch:0",
            vec![b'['; 10 * 1024 * 1024],
            false,
        )
        .await;

    device
        .apply(&Command::SetMode { mode: "off".into() })
        .await
        .unwrap();
    let (payload, retained) = shelly.next_on("shellyplus1pm-1/command/switch:0").await;
    assert_eq!((payload.as_ref(), retained), (&b"off"[..], false));
    device.apply(&Command::Release).await.unwrap();
    let (payload, _) = shelly.next_on("shellyplus1pm-1/command/switch:0").await;
    assert_eq!(payload.as_ref(), b"on");
    assert!(
        device
            .apply(&Command::SetMode {
                mode: "turbo".into()
            })
            .await
            .is_err()
    );
    assert!(
        device
            .apply(&Command::SetPower { watts: 5.0 })
            .await
            .is_err()
    );

    // Silence: stale, unavailable.
    let r = read_until(&mut device, |r| r.status != DeviceStatus::Ok).await;
    assert!(
        matches!(r.status, DeviceStatus::Unavailable(ref why) if why.contains("more than 1s")),
        "{r:?}"
    );
    assert!(handle.status().borrow().connected);
    shutdown.cancel();
}

#[tokio::test]
async fn openevse_current_setpoints_and_tasmota_kwh() {
    trace();
    let broker = Broker::start().await;
    let shutdown = CancellationToken::new();
    let (handle, _task) = Mqtt::start(broker.config("evse"), shutdown.clone()).unwrap();
    guard("connect", handle.status().wait_for(|s| s.connected))
        .await
        .unwrap();
    let mut evse = MqttDevice::start(
        handle.clone(),
        "ev",
        profile("mqtt-openevse", "openevse-1"),
        DeviceInfo::default(),
    )
    .await
    .unwrap();
    let mut plug = MqttDevice::start(
        handle.clone(),
        "tp",
        profile("mqtt-tasmota-plug", "tasmota_1"),
        DeviceInfo::default(),
    )
    .await
    .unwrap();
    let mut peer = Peer::connect(&broker, "evse", &["openevse-1/override/set"]).await;
    peer.publish("openevse-1/power", "7360", false).await;
    peer.publish("openevse-1/total_energy", "1234.5", false)
        .await;
    peer.publish(
        "tele/tasmota_1/SENSOR",
        r#"{"Time":"2025-01-01T00:00:00","ENERGY":{"Total":2.5,"Power":60}}"#,
        false,
    )
    .await;
    let r = read_until(&mut evse, |r| r.energy_wh.is_some()).await;
    assert_eq!((r.power_w, r.energy_wh), (7360.0, Some(1_234_500.0)));
    let r = read_until(&mut plug, |r| r.energy_wh.is_some()).await;
    assert_eq!((r.power_w, r.energy_wh), (60.0, Some(2500.0)));

    evse.apply(&Command::SetCurrent {
        amps: 16.0,
        phases: 1,
    })
    .await
    .unwrap();
    let (payload, _) = peer.next_on("openevse-1/override/set").await;
    assert_eq!(
        payload.as_ref(),
        br#"{"state":"active","charge_current":16}"#
    );
    evse.apply(&Command::SetCurrent {
        amps: 0.0,
        phases: 1,
    })
    .await
    .unwrap();
    let (payload, _) = peer.next_on("openevse-1/override/set").await;
    assert_eq!(payload.as_ref(), br#"{"state":"disabled"}"#);
    assert!(
        evse.apply(&Command::SetCurrent {
            amps: 40.0,
            phases: 1
        })
        .await
        .is_err()
    );
    evse.apply(&Command::Release).await.unwrap();
    let (payload, _) = peer.next_on("openevse-1/override/set").await;
    assert_eq!(payload.as_ref(), b"clear");
    shutdown.cancel();
}
