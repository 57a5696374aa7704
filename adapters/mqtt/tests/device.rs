//! MQTT devices from the shipped profiles against a real mosquitto: readings at JSON
//! paths, commands from templates, staleness, garbage on the device topics, an
//! appliance's task (PPBC) and a hybrid heat pump's demand and actuators (DDBC).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use s2gw_core::device::{ActuatorState, ControlCapability, DeviceInfo, Fuel, TaskProgress};
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
        "mqtt-dishwasher",
        "mqtt-hybrid-heat-pump",
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

/// Seconds from `a` to `b` (negative when `b` is earlier).
fn secs(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// hcpy's state of a dishwasher.
fn hc_state(state: &str, program: u32, remaining_s: u32, start_in_s: u32) -> String {
    format!(
        r#"{{"OperationState":"{state}","ActiveProgram":{program},"RemainingProgramTime":{remaining_s},"StartInRelative":{start_in_s},"DoorState":"Closed"}}"#
    )
}

#[tokio::test]
async fn a_home_connect_dishwasher_reports_its_task_and_takes_programmes() {
    trace();
    let broker = Broker::start().await;
    let shutdown = CancellationToken::new();
    let (handle, _task) = Mqtt::start(broker.config("dw"), shutdown.clone()).unwrap();
    guard("connect", handle.status().wait_for(|s| s.connected))
        .await
        .unwrap();
    let mut dw = MqttDevice::start(
        handle.clone(),
        "dishwasher",
        profile("mqtt-dishwasher", "dw1"),
        DeviceInfo::default(),
    )
    .await
    .unwrap();
    let ControlCapability::PowerProfile { programmes } = &dw.info().control[0] else {
        panic!("not PPBC first: {:?}", dw.info().control)
    };
    let names: Vec<&str> = programmes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["eco", "quick"]);
    assert!(programmes[0].interruptible && !programmes[1].interruptible);
    assert_eq!(programmes[0].duration_s(), 7800);
    assert_eq!(programmes[0].phases[1].power_w, 1900.0);
    assert_eq!(dw.info().control[1], ControlCapability::NotControllable);

    let state = "homeconnect/dw1/state";
    let mut peer = Peer::connect(
        &broker,
        "hcpy",
        &["homeconnect/dw1/activeProgram", "homeconnect/dw1/set"],
    )
    .await;
    // Retained, as hcpy and Shelly publish state: a subscription made later still gets it.
    peer.publish(
        "shellyplusplugs-dishwasher/status/switch:0",
        r#"{"apower":1.5,"aenergy":{"total":42.0}}"#,
        true,
    )
    .await;
    let before = SystemTime::now();
    peer.publish(state, hc_state("Ready", 0, 0, 0), true).await;
    let r = read_until(&mut dw, |r| r.task.is_some()).await;
    assert_eq!((r.power_w, r.energy_wh), (1.5, Some(42.0)));
    let task = r.task.unwrap();
    assert_eq!(task.progress, TaskProgress::Waiting);
    assert_eq!(task.task_id, 1);
    assert!(secs(before, task.earliest_start) >= -1.0, "{task:?}");
    // No finish time: 8 h from when it became ready; it would start Eco by itself as
    // late as that still ends in time.
    assert_eq!(secs(task.earliest_start, task.latest_end), 8.0 * 3600.0);
    assert_eq!(secs(task.own_start, task.latest_end), 7800.0);

    // A delayed start set on the machine is its own start.
    peer.publish(state, hc_state("DelayedStart", 0, 0, 3600), true)
        .await;
    let r = read_until(&mut dw, |r| {
        r.task
            .as_ref()
            .is_some_and(|t| secs(t.earliest_start, t.own_start) < 4000.0)
    })
    .await;
    let task = r.task.unwrap();
    assert_eq!(task.task_id, 1, "still the same task");
    assert!((secs(SystemTime::now(), task.own_start) - 3600.0).abs() < 60.0);

    dw.apply(&Command::StartProgramme {
        programme: "eco".into(),
    })
    .await
    .unwrap();
    let (payload, retained) = peer.next_on("homeconnect/dw1/activeProgram").await;
    assert_eq!(
        (payload.as_ref(), retained),
        (&br#"{"program":8196}"#[..], false)
    );
    dw.apply(&Command::StartProgramme {
        programme: "quick".into(),
    })
    .await
    .unwrap();
    let (payload, _) = peer.next_on("homeconnect/dw1/activeProgram").await;
    assert_eq!(payload.as_ref(), br#"{"program":8195}"#);
    assert!(
        dw.apply(&Command::StartProgramme {
            programme: "intensive".into()
        })
        .await
        .is_err()
    );

    // Running Eco with 100 minutes left: 30 minutes done.
    peer.publish(state, hc_state("Run", 8196, 6000, 0), true)
        .await;
    let r = read_until(
        &mut dw,
        |r| matches!(r.task, Some(ref t) if matches!(t.progress, TaskProgress::Running { .. })),
    )
    .await;
    assert_eq!(
        r.task.unwrap().progress,
        TaskProgress::Running {
            programme: "eco".into(),
            elapsed_s: 1800.0
        }
    );
    // A state the profile does not map is ignored; the last one holds.
    peer.publish(state, hc_state("ActionRequired", 8196, 6000, 0), true)
        .await;
    dw.apply(&Command::Pause).await.unwrap();
    let (payload, _) = peer.next_on("homeconnect/dw1/set").await;
    assert_eq!(payload.as_ref(), br#"{"uid":545,"value":true}"#);
    peer.publish(state, hc_state("Pause", 8196, 5940, 0), true)
        .await;
    let r = read_until(
        &mut dw,
        |r| matches!(r.task, Some(ref t) if matches!(t.progress, TaskProgress::Paused { .. })),
    )
    .await;
    let task = r.task.unwrap();
    assert_eq!(task.task_id, 1);
    assert_eq!(
        task.progress,
        TaskProgress::Paused {
            programme: "eco".into(),
            elapsed_s: 1860.0
        }
    );
    // Release resumes a paused programme…
    dw.apply(&Command::Release).await.unwrap();
    let (payload, _) = peer.next_on("homeconnect/dw1/set").await;
    assert_eq!(payload.as_ref(), br#"{"uid":546,"value":true}"#);
    dw.apply(&Command::Resume).await.unwrap();
    let (payload, _) = peer.next_on("homeconnect/dw1/set").await;
    assert_eq!(payload.as_ref(), br#"{"uid":546,"value":true}"#);
    peer.publish(state, hc_state("Finished", 8196, 0, 0), true)
        .await;
    let r = read_until(
        &mut dw,
        |r| matches!(r.task, Some(ref t) if matches!(t.progress, TaskProgress::Finished { .. })),
    )
    .await;
    assert_eq!(
        r.task.unwrap().progress,
        TaskProgress::Finished {
            programme: "eco".into()
        }
    );
    // …and does nothing otherwise: the next message on the set topic is the Pause below.
    dw.apply(&Command::Release).await.unwrap();
    dw.apply(&Command::Pause).await.unwrap();
    let (payload, _) = peer.next_on("homeconnect/dw1/set").await;
    assert_eq!(payload.as_ref(), br#"{"uid":545,"value":true}"#);

    // Emptied and switched off: no task; loaded again: a new one.
    peer.publish(state, hc_state("Inactive", 0, 0, 0), true)
        .await;
    read_until(&mut dw, |r| r.task.is_none()).await;
    peer.publish(state, hc_state("Ready", 0, 0, 0), true).await;
    let r = read_until(&mut dw, |r| r.task.is_some()).await;
    assert_eq!(r.task.unwrap().task_id, 2);
    assert!(
        dw.apply(&Command::SetActuator {
            actuator: "heat_pump".into(),
            mode: "on".into(),
            factor: 1.0
        })
        .await
        .is_err()
    );
    shutdown.cancel();
}

#[tokio::test]
async fn an_ebusd_hybrid_heat_pump_reports_its_demand_and_sets_actuators() {
    trace();
    let broker = Broker::start().await;
    let shutdown = CancellationToken::new();
    let (handle, _task) = Mqtt::start(broker.config("hhp"), shutdown.clone()).unwrap();
    guard("connect", handle.status().wait_for(|s| s.connected))
        .await
        .unwrap();
    let mut hp = MqttDevice::start(
        handle.clone(),
        "hybrid",
        profile("mqtt-hybrid-heat-pump", "ebusd"),
        DeviceInfo::default(),
    )
    .await
    .unwrap();
    let ControlCapability::DemandDriven {
        actuators,
        forecast_step_s,
    } = &hp.info().control[0]
    else {
        panic!("not DDBC first: {:?}", hp.info().control)
    };
    assert_eq!(*forecast_step_s, 3600);
    assert_eq!(actuators.len(), 2);
    let (heat_pump, boiler) = (&actuators[0], &actuators[1]);
    assert_eq!(
        (heat_pump.fuel, heat_pump.min_on_s),
        (Fuel::Electricity, 300)
    );
    assert_eq!(
        (boiler.fuel, boiler.label.as_str()),
        (Fuel::Gas, "gas boiler")
    );
    let on = &heat_pump.modes[1];
    assert_eq!((on.name.as_str(), on.is_default), ("on", true));
    assert_eq!((on.supply_min, on.supply_max), (1500.0, 6000.0));
    assert_eq!((on.power_min_w, on.power_max_w), (430.0, 1715.0));

    let mut peer = Peer::connect(
        &broker,
        "ebusd",
        &["ebusd/hmu/SetMode/set", "ebusd/bai/SetModeOverride/set"],
    )
    .await;
    // Nothing yet: unavailable, no demand made up.
    let r = hp.read().await.unwrap();
    assert!(matches!(r.status, DeviceStatus::Unavailable(_)) && r.demand.is_none());
    for (topic, payload) in [
        (
            "ebusd/hmu/CurrentConsumedPower",
            r#"{"value":{"value":1.25}}"#,
        ),
        ("ebusd/ctlv2/HeatDemand", r#"{"value":{"value":5.25}}"#),
        (
            "ebusd/ctlv2/HeatDemandForecast",
            r#"{"values":[5.25,4.5,4.0]}"#,
        ),
        ("ebusd/hmu/Status", r#"{"compressor":{"value":"on"}}"#),
        ("ebusd/hmu/CurrentModulation", r#"{"value":{"value":50}}"#),
        ("ebusd/bai/Status", r#"{"flame":{"value":"off"}}"#),
    ] {
        peer.publish(topic, payload, true).await;
    }
    let r = read_until(&mut hp, |r| {
        r.demand
            .as_ref()
            .is_some_and(|d| !d.forecast.is_empty() && d.actuators.iter().any(|a| a.factor > 0.0))
    })
    .await;
    assert_eq!(r.power_w, 1250.0);
    let demand = r.demand.unwrap();
    assert_eq!(demand.demand, 5250.0);
    assert_eq!(demand.forecast, [5250.0, 4500.0, 4000.0]);
    assert_eq!(
        demand.actuators,
        [
            ActuatorState {
                actuator: "heat_pump".into(),
                mode: "on".into(),
                factor: 0.5
            },
            ActuatorState {
                actuator: "boiler".into(),
                mode: "off".into(),
                factor: 0.0
            },
        ]
    );

    hp.apply(&Command::SetActuator {
        actuator: "boiler".into(),
        mode: "on".into(),
        factor: 0.5,
    })
    .await
    .unwrap();
    let (payload, retained) = peer.next_on("ebusd/bai/SetModeOverride/set").await;
    assert_eq!((payload.as_ref(), retained), (&b"on;50"[..], false));
    hp.apply(&Command::SetActuator {
        actuator: "heat_pump".into(),
        mode: "off".into(),
        factor: 0.0,
    })
    .await
    .unwrap();
    let (payload, _) = peer.next_on("ebusd/hmu/SetMode/set").await;
    assert_eq!(payload.as_ref(), b"off;0");
    // The device reports the boiler burning.
    peer.publish("ebusd/bai/Status", r#"{"flame":{"value":"on"}}"#, true)
        .await;
    let r = read_until(&mut hp, |r| {
        r.demand
            .as_ref()
            .is_some_and(|d| d.actuators[1].mode == "on")
    })
    .await;
    // No factor read for the boiler: the one it was set to in that mode.
    assert_eq!(r.demand.unwrap().actuators[1].factor, 0.5);
    for (actuator, mode, factor) in [
        ("boiler", "on", 1.5),
        ("boiler", "turbo", 0.5),
        ("fan", "on", 0.5),
    ] {
        assert!(
            hp.apply(&Command::SetActuator {
                actuator: actuator.into(),
                mode: mode.into(),
                factor
            })
            .await
            .is_err(),
            "{actuator} {mode} {factor}"
        );
    }
    assert!(
        hp.apply(&Command::StartProgramme {
            programme: "eco".into()
        })
        .await
        .is_err()
    );
    // Release: each actuator back to the controller's own strategy.
    hp.apply(&Command::Release).await.unwrap();
    let (payload, _) = peer.next_on("ebusd/hmu/SetMode/set").await;
    assert_eq!(payload.as_ref(), b"auto;-");
    let (payload, _) = peer.next_on("ebusd/bai/SetModeOverride/set").await;
    assert_eq!(payload.as_ref(), b"auto;-");
    shutdown.cancel();
}
