//! State mirror, Home Assistant discovery, the control switch, bridge requests, the LWT
//! and broker restarts, against a real mosquitto.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::sync::Arc;

use common::*;
use s2gw_core::CancellationToken;
use s2gw_core::device::DeviceKind;
use s2gw_mqtt::{BridgeData, DeviceState, Mqtt, MqttHandle, StateMirror, spawn_bridge};
use serde_json::{Value, json};

struct Gateway {
    handle: MqttHandle,
    mirror: StateMirror,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn gateway(config: s2gw_mqtt::MqttConfig, devices: &[&str]) -> Gateway {
    trace();
    let shutdown = CancellationToken::new();
    let (handle, task) = Mqtt::start(config, shutdown.clone()).unwrap();
    let (mirror, _) = StateMirror::start(
        handle.clone(),
        devices.iter().map(|d| d.to_string()).collect(),
        "test gateway",
    );
    Gateway {
        handle,
        mirror,
        shutdown,
        task,
    }
}

impl Gateway {
    async fn stop(self) {
        self.shutdown.cancel();
        guard("the client to stop", self.task).await.unwrap();
    }
}

fn battery() -> DeviceState {
    let mut s = DeviceState::new("bat", "Home battery", DeviceKind::Battery);
    s.manufacturer = Some("ACME".into());
    s.model = Some("B10".into());
    s.power_w = Some(-1500.0);
    s.energy_wh = Some(12345.0);
    s.soc = Some(55.5);
    s.control_type = Some("FRBC".into());
    s.active = Some("setpoint -1500 W".into());
    s.cem_link = "connected".into();
    s.available = true;
    s.reports_energy = true;
    s.controllable = true;
    s
}

fn meter(id: &str) -> DeviceState {
    let mut s = DeviceState::new(id, id, DeviceKind::Meter);
    s.power_w = Some(400.0);
    s.available = true;
    s
}

#[tokio::test]
async fn retained_state_availability_and_discovery_field_by_field() {
    let broker = Broker::start().await;
    let gw = gateway(broker.config("home"), &["bat"]);
    gw.mirror.publish_state(battery()).await;
    // A late subscriber sees everything retained.
    let mut ha = Peer::connect(&broker, "ha", &["home/#", "homeassistant/device/+/config"]).await;

    let bridge = ha.json_where("home/bridge/state", |_| true).await;
    assert_eq!(bridge, json!({"state": "online"}));
    let state = ha.json_where("home/bat", |_| true).await;
    assert_eq!(state["power_w"], -1500.0);
    assert_eq!(state["energy_wh"], 12345.0);
    assert_eq!(state["soc"], 55.5);
    assert_eq!(state["control_type"], "FRBC");
    assert_eq!(state["active"], "setpoint -1500 W");
    assert_eq!(state["cem_link"], "connected");
    assert_eq!(state["cem_control"], "ON");
    assert_eq!(state["available"], true);
    assert_eq!(state["kind"], "battery");
    assert!(state["updated"].as_str().unwrap().ends_with('Z'));
    let avail = ha.json_where("home/bat/availability", |_| true).await;
    assert_eq!(avail, json!({"state": "online"}));

    let d = ha
        .json_where("homeassistant/device/s2gw_home_bat/config", |_| true)
        .await;
    assert_eq!(d["dev"]["ids"], json!(["s2gw_home_bat"]));
    assert_eq!(d["dev"]["name"], "Home battery");
    assert_eq!(d["dev"]["mf"], "ACME");
    assert_eq!(d["dev"]["mdl"], "B10");
    assert_eq!(d["o"]["name"], "s2gw");
    assert_eq!(d["availability_mode"], "all");
    assert_eq!(d["availability"][0]["topic"], "home/bridge/state");
    assert_eq!(d["availability"][1]["topic"], "home/bat/availability");
    let c = &d["cmps"];
    assert_eq!(c["power_w"]["p"], "sensor");
    assert_eq!(c["power_w"]["device_class"], "power");
    assert_eq!(c["power_w"]["state_class"], "measurement");
    assert_eq!(c["power_w"]["unit_of_measurement"], "W");
    assert_eq!(c["power_w"]["unique_id"], "s2gw_home_bat_power_w");
    assert_eq!(c["power_w"]["state_topic"], "home/bat");
    assert_eq!(c["energy_wh"]["device_class"], "energy");
    assert_eq!(c["energy_wh"]["state_class"], "total_increasing");
    assert_eq!(c["energy_wh"]["unit_of_measurement"], "Wh");
    assert_eq!(c["soc"]["device_class"], "battery");
    assert_eq!(c["soc"]["unit_of_measurement"], "%");
    assert_eq!(c["cem_connected"]["p"], "binary_sensor");
    assert_eq!(c["cem_connected"]["device_class"], "connectivity");
    assert_eq!(c["cem_control"]["p"], "switch");
    assert_eq!(c["cem_control"]["name"], "CEM control allowed");
    assert_eq!(c["cem_control"]["command_topic"], "home/bat/set");
    assert_eq!(c["cem_control"]["payload_off"], r#"{"cem_control":"OFF"}"#);
    assert_eq!(c["cem_control"]["entity_category"], "config");
    assert_eq!(d["dev"]["via_device"], "s2gw_home");
    assert_eq!(d["dev"]["sw"], env!("CARGO_PKG_VERSION"));
    assert_eq!(c["power_w"]["suggested_display_precision"], 0);
    assert_eq!(c["soc"]["suggested_display_precision"], 1);
    for (key, name) in [
        ("charged_wh", "Battery charged"),
        ("discharged_wh", "Battery discharged"),
    ] {
        assert_eq!(c[key]["name"], name);
        assert_eq!(c[key]["device_class"], "energy");
        assert_eq!(c[key]["state_class"], "total_increasing");
        assert_eq!(c[key]["unit_of_measurement"], "Wh");
        assert_eq!(c[key]["json_attributes_topic"], "home/bat");
        assert_eq!(state["energy_sources"][key], "integrated from power");
        assert!(state[key].is_number(), "{state}");
    }
    assert_eq!(c["control_type"]["entity_category"], "diagnostic");
    assert_eq!(c["active"]["json_attributes_topic"], "home/bat");
    assert_eq!(c["cem_link"]["device_class"], "enum");
    assert_eq!(c["updated"]["device_class"], "timestamp");
    for (key, component) in c.as_object().unwrap() {
        assert_eq!(component["qos"], 1, "{key}");
    }
    // The gateway device the battery hangs under.
    let g = ha
        .json_where("homeassistant/device/s2gw_home/config", |_| true)
        .await;
    assert_eq!(g["dev"]["ids"], json!(["s2gw_home"]));
    assert_eq!(g["dev"]["name"], "test gateway");
    assert_eq!(g["cmps"]["mqtt"]["state_topic"], "home/bridge/state");
    assert_eq!(g["cmps"]["cem_links"]["state_topic"], "home/bridge/health");
    // Every unique_id is unique.
    let ids: std::collections::HashSet<_> = c
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["unique_id"].clone())
        .collect();
    assert_eq!(ids.len(), c.as_object().unwrap().len());
    gw.stop().await;
    // An orderly stop says offline (the LWT is for crashes).
    let bridge = ha
        .json_where("home/bridge/state", |v| v["state"] == "offline")
        .await;
    assert_eq!(bridge, json!({"state": "offline"}));
}

#[tokio::test]
async fn the_switch_turns_cem_control_off_and_the_state_says_so() {
    let broker = Broker::start().await;
    let gw = gateway(broker.config("sw"), &["bat"]);
    let mut allowed = gw.mirror.control_allowed("bat");
    assert!(*allowed.borrow());
    gw.mirror.publish_state(battery()).await;
    let mut ha = Peer::connect(&broker, "ha-sw", &["sw/bat"]).await;
    ha.json_where("sw/bat", |v| v["cem_control"] == "ON").await;
    ha.publish("sw/bat/set", r#"{"cem_control":"OFF"}"#, false)
        .await;
    guard("the switch", allowed.wait_for(|a| !*a))
        .await
        .unwrap();
    ha.json_where("sw/bat", |v| v["cem_control"] == "OFF").await;

    // A restart restores the switch from the retained state.
    gw.stop().await;
    let gw = gateway(broker.config("sw"), &["bat"]);
    let mut allowed = gw.mirror.control_allowed("bat");
    guard("the restored switch", allowed.wait_for(|a| !*a))
        .await
        .unwrap();
    ha.publish("sw/bat/set", r#"{"cem_control":"ON"}"#, false)
        .await;
    guard("the switch back on", allowed.wait_for(|a| *a))
        .await
        .unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn discovery_of_a_removed_device_is_cleared_and_ha_online_resends() {
    let broker = Broker::start().await;
    let mut ha = Peer::connect(&broker, "ha-rm", &["homeassistant/device/+/config"]).await;
    // Someone else's discovery under a similar name: never touched.
    ha.publish(
        "homeassistant/device/s2gw_rm_foreign/config",
        r#"{"o":{"name":"other"},"dev":{"ids":["s2gw_rm_foreign"]}}"#,
        true,
    )
    .await;
    let gw = gateway(broker.config("rm"), &["a", "b"]);
    gw.mirror.publish_state(meter("a")).await;
    gw.mirror.publish_state(meter("b")).await;
    ha.next_on("homeassistant/device/s2gw_rm_b/config").await;
    gw.stop().await;

    // "b" left the config.
    let gw = gateway(broker.config("rm"), &["a"]);
    loop {
        let (payload, _) = ha.next_on("homeassistant/device/s2gw_rm_b/config").await;
        if payload.is_empty() {
            break;
        }
    }
    gw.mirror.publish_state(meter("a")).await;
    // Home Assistant restarts: discovery comes again.
    let mut fresh = Peer::connect(
        &broker,
        "ha-rm2",
        &["homeassistant/device/s2gw_rm_a/config"],
    )
    .await;
    fresh.next_on("homeassistant/device/s2gw_rm_a/config").await; // the retained copy
    fresh.publish("homeassistant/status", "online", false).await;
    let (again, retained) = fresh.next_on("homeassistant/device/s2gw_rm_a/config").await;
    assert!(!retained && !again.is_empty());
    gw.stop().await;
    let mut check = Peer::connect(
        &broker,
        "ha-rm3",
        &["homeassistant/device/s2gw_rm_foreign/config"],
    )
    .await;
    let (foreign, _) = check
        .next_on("homeassistant/device/s2gw_rm_foreign/config")
        .await;
    assert!(!foreign.is_empty());
}

#[tokio::test]
async fn a_gateway_killed_with_sigkill_leaves_the_offline_lwt() {
    let broker = Broker::start().await;
    let mut observer = Peer::connect(&broker, "obs", &["probe/bridge/state", "probe/probe"]).await;
    let password_file = broker.dir.path().join("probe.pass");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_s2gw-mqtt-lwt-probe"))
        .arg(broker.port.to_string())
        .arg("probe")
        .arg(USER)
        .arg(&password_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = guard(
        "the probe to connect",
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        }),
    )
    .await
    .unwrap();
    assert_eq!(line.trim(), "ready");
    observer
        .json_where("probe/bridge/state", |v| v["state"] == "online")
        .await;
    observer
        .json_where("probe/probe", |v| v["power_w"] == 1.0)
        .await;
    child.kill().unwrap(); // SIGKILL: no DISCONNECT, no goodbye
    child.wait().unwrap();
    let (payload, _) = observer.next_on("probe/bridge/state").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap(),
        json!({"state": "offline"})
    );
}

#[tokio::test]
async fn a_broker_that_lost_everything_gets_state_and_discovery_back() {
    let mut broker = Broker::start().await;
    let gw = gateway(broker.config("lost"), &["bat"]);
    gw.mirror.publish_state(battery()).await;
    let mut status = gw.handle.status();
    guard("connect", status.wait_for(|s| s.connected))
        .await
        .unwrap();
    let first = status.borrow().connects;
    let mut ha = Peer::connect(&broker, "ha-lost", &["lost/bat"]).await;
    ha.next_on("lost/bat").await;
    // Restart without its database: every retained message is gone.
    broker.stop().await;
    for entry in std::fs::read_dir(broker.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "db") {
            std::fs::remove_file(path).unwrap();
        }
    }
    broker.restart().await;
    guard(
        "reconnect",
        status.wait_for(|s| s.connected && s.connects > first),
    )
    .await
    .unwrap();
    let mut late = Peer::connect(
        &broker,
        "ha-late",
        &["lost/#", "homeassistant/device/+/config"],
    )
    .await;
    late.json_where("lost/bat", |v| v["soc"] == 55.5).await;
    late.json_where("homeassistant/device/s2gw_lost_bat/config", |v| {
        v["o"]["name"] == "s2gw"
    })
    .await;
    late.json_where("lost/bridge/state", |v| v["state"] == "online")
        .await;
    gw.stop().await;
}

struct Data;
impl BridgeData for Data {
    fn info(&self) -> Value {
        json!({"version": "0.1.0", "resources": ["r1"], "links": {"home": "connected"}})
    }
    fn devices(&self) -> Value {
        json!([{"id": "bat"}])
    }
    fn health(&self) -> Value {
        json!({"healthy": true})
    }
    fn resource(&self, id: &str) -> Option<Value> {
        (id == "r1").then(|| json!({"resource_id": "r1"}))
    }
}

#[tokio::test]
async fn bridge_requests_and_bad_payloads_on_every_subscribed_topic() {
    let broker = Broker::start().await;
    let gw = gateway(broker.config("br"), &["bat"]);
    let _bridge = spawn_bridge(gw.handle.clone(), Arc::new(Data));
    let (endpoint, _bus) = s2gw_core::Endpoint::pair(64);
    let _native = s2gw_mqtt::add_native_rm(gw.handle.clone(), "r1".into(), endpoint);
    gw.mirror.publish_state(battery()).await;
    let mut client = Peer::connect(&broker, "req", &["br/bridge/#", "br/s2/r1/state"]).await;
    let info = client.json_where("br/bridge/info", |_| true).await;
    assert_eq!(info["resources"], json!(["r1"]));
    client
        .json_where("br/s2/r1/state", |v| v["state"] == "waiting")
        .await;
    let mut status = gw.handle.status();
    let connects = status.borrow_and_update().connects;

    // Garbage everywhere the gateway listens.
    let big = vec![b'{'; 10 * 1024 * 1024];
    for topic in [
        "br/bat/set",
        "br/nodevice/set",
        "homeassistant/status",
        "br/bridge/request/devices",
        "br/s2/r1/peer",
        "br/bridge/request/zzz",
    ] {
        client.publish(topic, "not json", false).await;
        client
            .publish(topic, r#"{"cem_control":[1,2]}"#, false)
            .await;
        client.publish(topic, r#"[1, "x"]"#, false).await;
        client.publish(topic, big.clone(), false).await;
    }

    // Still connected (no reconnect), still answering, transaction echoed.
    client
        .publish(
            "br/bridge/request/devices",
            r#"{"transaction":"abc"}"#,
            false,
        )
        .await;
    let answer = client
        .json_where("br/bridge/response/devices", |v| v["transaction"] == "abc")
        .await;
    assert_eq!(answer["status"], "ok");
    assert_eq!(answer["data"], json!([{"id": "bat"}]));
    assert!(answer["error"].is_null());
    client
        .publish(
            "br/bridge/request/resource",
            r#"{"id":"r1","transaction":2}"#,
            false,
        )
        .await;
    let answer = client
        .json_where("br/bridge/response/resource", |v| v["transaction"] == 2)
        .await;
    assert_eq!(answer["data"]["resource_id"], "r1");
    client.publish("br/bridge/request/health", "", false).await;
    let answer = client
        .json_where("br/bridge/response/health", |v| v["status"] == "ok")
        .await;
    assert_eq!(answer["data"]["healthy"], true);
    assert_eq!(status.borrow().connects, connects);
    assert!(status.borrow().connected);
    assert!(*gw.mirror.control_allowed("bat").borrow());
    gw.stop().await;
}

#[tokio::test]
async fn integrated_counters_continue_after_a_restart() {
    let broker = Broker::start().await;
    let gw = gateway(broker.config("count"), &["m"]);
    let mut ha = Peer::connect(&broker, "ha-count", &["count/m"]).await;
    // 36 MW: every millisecond between two states is 10 Wh of import.
    let mut importing = meter("m");
    importing.power_w = Some(36_000_000.0);
    gw.mirror.publish_state(importing.clone()).await;
    ha.json_where("count/m", |v| v["power_w"] == 36_000_000.0)
        .await;
    gw.mirror.publish_state(importing).await;
    let before = ha
        .json_where("count/m", |v| v["import_wh"].as_f64() > Some(0.0))
        .await;
    assert_eq!(before["export_wh"], 0.0, "{before}");
    assert_eq!(
        before["energy_sources"]["import_wh"],
        "integrated from power"
    );
    gw.stop().await;

    let gw = gateway(broker.config("count"), &["m"]);
    let mut idle = meter("m");
    idle.power_w = Some(0.0);
    gw.mirror.publish_state(idle).await;
    let after = ha.json_where("count/m", |v| v["power_w"] == 0.0).await;
    assert!(
        after["import_wh"].as_f64() >= before["import_wh"].as_f64(),
        "a restart must not reset the counter: {before} then {after}"
    );
    gw.stop().await;
}
