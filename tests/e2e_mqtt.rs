//! MQTT through the daemon process, one Debian mosquitto per test on a free loopback port:
//! what a Home Assistant user sees (discovery, state, availability, the bridge), the LWT
//! of a killed gateway, the "CEM control allowed" switch against a WebSocket CEM, a CEM
//! on MQTT driving a simulated device, an s2-python RM bridged to a CEM on MQTT, the
//! bridge requests, and MQTT appliances from the example profiles (a dishwasher on PPBC,
//! a hybrid heat pump on DDBC) driven by a CEM. Every wait is a subscription with a timeout as its failure guard.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use s2_kit::message::{Message, MessageKind};
use s2_kit::session::CemEvent;
use s2_kit::types::common::{
    ControlType, InstructionStatus, ReceptionStatusValues, SessionRequestType,
};
use s2_kit::types::{Duration as S2Duration, Id, ProtocolVersion, Timestamp};
use serde_json::{Value, json};

/// The base topic of every test (one broker per test, so they never meet).
const BASE: &str = "s2gw";

/// A ws-client link named `test` to a TestCem.
fn ws_link(cem: &TestCem) -> String {
    format!("[cem.test]\nurl = \"{}\"\n", cem.url())
}

fn gateway(extra: &str) -> String {
    format!("[gateway]\nname = \"s2gw-mqtt\"\nstate_dir = \"@STATE_DIR@\"\n{extra}\n")
}

fn topic(leaf: &str) -> String {
    format!("{BASE}/{leaf}")
}

/// A device's identifier: `s2gw_<device>` with the default base `s2gw` (not
/// `s2gw_s2gw_<device>`: the base is not repeated).
fn oid(device: &str) -> String {
    format!("s2gw_{device}")
}

fn discovery_topic(device: &str) -> String {
    format!("homeassistant/device/{}/config", oid(device))
}

fn near(value: &Value, target: f64, tolerance: f64) -> bool {
    value
        .as_f64()
        .is_some_and(|v| (v - target).abs() <= tolerance)
}

/// The daemon's line saying it runs, so a failed start fails here, with its log.
async fn running(daemon: &mut Daemon) {
    daemon
        .wait_log("the daemon to run", |l| l.contains("s2gw running"), GUARD)
        .await;
}

// ----------------------------------------------------------------------------------------
// (a) Home Assistant sees every device
// ----------------------------------------------------------------------------------------

/// Discovery of one device, checked field by field; `controllable`: a CEM can control
/// something of it, so it has the "CEM control allowed" switch.
fn check_discovery(d: &Value, device: &str, name: &str, extra: &[&str], controllable: bool) {
    let oid = oid(device);
    let state_topic = topic(device);
    assert_eq!(d["dev"]["ids"], json!([oid]), "{d}");
    assert_eq!(d["dev"]["name"], name, "{d}");
    assert_eq!(
        d["dev"]["via_device"], "s2gw",
        "under the gateway device: {d}"
    );
    assert_eq!(d["dev"]["sw"], env!("CARGO_PKG_VERSION"), "{d}");
    assert_eq!(d["o"]["name"], "s2gw", "{d}");
    assert_eq!(d["availability_mode"], "all", "{d}");
    assert_eq!(d["availability"][0]["topic"], topic("bridge/state"), "{d}");
    assert_eq!(
        d["availability"][1]["topic"],
        topic(&format!("{device}/availability")),
        "{d}"
    );
    let power = &d["cmps"]["power_w"];
    assert_eq!(power["p"], "sensor", "{d}");
    assert_eq!(power["unique_id"], format!("{oid}_power_w"), "{d}");
    assert_eq!(power["device_class"], "power", "{d}");
    assert_eq!(power["state_class"], "measurement", "{d}");
    assert_eq!(power["unit_of_measurement"], "W", "{d}");
    assert_eq!(power["state_topic"], state_topic, "{d}");
    assert_eq!(power["suggested_display_precision"], 0, "{d}");
    let link = &d["cmps"]["cem_connected"];
    assert_eq!(link["p"], "binary_sensor", "{d}");
    assert_eq!(link["device_class"], "connectivity", "{d}");
    assert_eq!(link["entity_category"], "diagnostic", "{d}");
    let session = &d["cmps"]["cem_link"];
    assert_eq!(session["device_class"], "enum", "{d}");
    assert_eq!(
        session["options"],
        json!(["down", "handshaking", "connected"]),
        "{d}"
    );
    assert_eq!(session["entity_category"], "diagnostic", "{d}");
    let updated = &d["cmps"]["updated"];
    assert_eq!(updated["device_class"], "timestamp", "{d}");
    assert_eq!(updated["entity_category"], "diagnostic", "{d}");
    let switch = &d["cmps"]["cem_control"];
    if controllable {
        assert_eq!(switch["p"], "switch", "{d}");
        assert_eq!(switch["name"], "CEM control allowed", "{d}");
        assert_eq!(switch["entity_category"], "config", "{d}");
        assert_eq!(switch["command_topic"], format!("{state_topic}/set"), "{d}");
        assert_eq!(switch["payload_off"], r#"{"cem_control":"OFF"}"#, "{d}");
        assert_eq!(switch["payload_on"], r#"{"cem_control":"ON"}"#, "{d}");
    } else {
        assert_eq!(*switch, Value::Null, "nothing for a CEM to control: {d}");
    }
    for key in extra {
        assert!(d["cmps"][key]["unique_id"].is_string(), "no {key} in {d}");
    }
    // Home Assistant takes the QoS from each component, not from the device.
    for (key, c) in d["cmps"].as_object().unwrap() {
        assert_eq!(c["qos"], 1, "{key} in {d}");
    }
}

/// The Energy dashboard's counters of a device: (key, where from).
fn check_counters(d: &Value, state: &Value, counters: &[(&str, &str)]) {
    for (key, source) in counters {
        let c = &d["cmps"][key];
        assert_eq!(c["device_class"], "energy", "{key} in {d}");
        assert_eq!(c["state_class"], "total_increasing", "{key} in {d}");
        assert_eq!(c["unit_of_measurement"], "Wh", "{key} in {d}");
        assert_eq!(c["suggested_display_precision"], 0, "{key} in {d}");
        assert_eq!(c["json_attributes_topic"], c["state_topic"], "{key} in {d}");
        assert_eq!(state["energy_sources"][key], *source, "{key} in {state}");
        let value = state[key].as_f64().unwrap_or(-1.0);
        assert!(value >= 0.0 && value.fract() == 0.0, "{key} in {state}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_assistant_user_sees_every_device_with_live_values() {
    let broker = Broker::start().await;
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    // A device this gateway announced before and that has left the config since.
    let gone = discovery_topic("gone");
    let mut old = MqttPeer::connect(&broker, "old", &[], None).await;
    let stale = json!({"dev": {"ids": [oid("gone")], "name": "Gone"},
                       "o": {"name": "s2gw"}, "cmps": {}});
    old.publish(&gone, stale.to_string(), true).await;
    old.subscribe(&gone).await;
    old.messages
        .wait_for("the stale discovery", |m| m.topic == gone, GUARD)
        .await;

    let config = format!(
        "{}{}{}{}{}{}",
        gateway(""),
        ws_link(&cem),
        broker.mqtt_section(BASE).replace(
            "reconnect_min_ms",
            // The simulated meter wanders within its deadband: the heartbeat brings
            // its next state.
            "state_interval_ms = 2000\nstate_heartbeat_s = 3\nreconnect_min_ms"
        ),
        pv("pv", "test", ""),
        battery("test"),
        meter("test")
    );
    let mut daemon = Daemon::start(&config);
    running(&mut daemon).await;
    let _conns = cem.conns(3, GUARD).await;

    // The stale device's discovery is deleted: an empty retained payload.
    old.messages
        .wait_for(
            "the stale discovery to be deleted",
            |m| m.topic == gone && m.text.is_empty(),
            GUARD,
        )
        .await;

    // A live follower sees the meter change, never more often than state_interval_ms.
    let mut live = MqttPeer::connect(&broker, "live", &[&topic("meter")], None).await;
    // Measured between two live publishes: the retained copy a new subscriber gets may
    // be up to an interval old, and may even arrive after a live publish that raced the
    // subscription (mosquitto snapshots it when the SUBSCRIBE is handled).
    let meter = topic("meter");
    let first = live
        .messages
        .wait_for(
            "the meter's first live state",
            |m| m.topic == meter && !m.retained && m.json()["available"] == true,
            GUARD,
        )
        .await;
    let first_at = Instant::now();
    let second = live
        .messages
        .wait_for(
            "the meter's next live state",
            |m| m.topic == meter && !m.retained && m.json()["updated"] != first.json()["updated"],
            GUARD,
        )
        .await;
    assert!(
        first_at.elapsed() >= Duration::from_millis(1500),
        "two states of one device within {:?}: not rate-limited\n{}\n{}",
        first_at.elapsed(),
        first.text,
        second.text
    );
    assert_ne!(first.json()["power_w"], Value::Null);
    assert_ne!(second.json()["power_w"], Value::Null);

    // Home Assistant (re)starting now gets everything retained.
    let mut ha = MqttPeer::connect(
        &broker,
        "home-assistant",
        &["homeassistant/device/+/config", &topic("#")],
        None,
    )
    .await;
    let mut discoveries = std::collections::BTreeMap::new();
    for (device, name, extra, controllable) in [
        (
            "pv",
            "Roof PV",
            vec!["energy_wh", "production_w", "produced_wh"],
            true,
        ),
        (
            "battery",
            "Home battery",
            vec!["soc", "charged_wh", "discharged_wh"],
            true,
        ),
        // No name of its own: the kind says what it is (not "meter Power").
        (
            "meter",
            "Meter (meter)",
            vec!["import_wh", "export_wh"],
            false,
        ),
    ] {
        let d = ha
            .messages
            .wait_for(
                &format!("{device}'s discovery"),
                |m| m.topic == discovery_topic(device),
                GUARD,
            )
            .await;
        assert!(d.retained, "discovery must be retained");
        check_discovery(&d.json(), device, name, &extra, controllable);
        check_cem_components(&d.json(), device);
        discoveries.insert(device, d.json());
        let availability = ha
            .messages
            .wait_for(
                &format!("{device}'s availability"),
                |m| m.topic == topic(&format!("{device}/availability")),
                GUARD,
            )
            .await;
        assert!(availability.retained);
        assert_eq!(availability.json(), json!({"state": "online"}));
    }
    let bridge = ha
        .messages
        .wait_for("bridge/state", |m| m.topic == topic("bridge/state"), GUARD)
        .await;
    assert!(bridge.retained);
    assert_eq!(bridge.json(), json!({"state": "online"}));
    check_gateway_device(&mut ha).await;

    // State, field by field: live values, the CEM link, the switch.
    let pv = ha
        .wait_json("the PV's state", &topic("pv"), |v| {
            v["cem_link"] == "connected"
        })
        .await;
    let v = pv.json();
    check_counters(
        &discoveries["pv"],
        &v,
        &[("produced_wh", "device register")],
    );
    // S2's sign in power_w, rounded; positive production for Home Assistant's cards.
    assert_eq!(v["production_w"], -v["power_w"].as_f64().unwrap(), "{v}");
    assert_eq!(v["power_w"].as_f64().unwrap().fract(), 0.0, "{v}");
    assert_eq!(v["name"], "Roof PV", "{v}");
    assert_eq!(v["kind"], "pv_inverter", "{v}");
    assert!(near(&v["power_w"], -6000.0, 300.0), "PV at noon: {v}");
    assert!(v["energy_wh"].is_number(), "{v}");
    assert_eq!(v["soc"], Value::Null, "{v}");
    assert_eq!(v["control_type"], Value::Null, "nothing selected yet: {v}");
    assert_eq!(v["cem_control"], "ON", "{v}");
    assert_eq!(v["available"], true, "{v}");
    assert!(
        v["updated"]
            .as_str()
            .is_some_and(|t| t.parse::<Timestamp>().is_ok()),
        "{v}"
    );
    let battery = ha
        .wait_json("the battery's state", &topic("battery"), |v| {
            v["soc"].is_number()
        })
        .await;
    let v = battery.json();
    assert!(near(&v["soc"], 50.0, 5.0), "{v}");
    assert_eq!(v["kind"], "battery", "{v}");
    let meter = ha
        .wait_json("the meter's state", &topic("meter"), |v| {
            v["power_w"].is_number()
        })
        .await;
    assert!(meter.json()["power_w"].as_f64().unwrap() > 0.0);
    check_counters(
        &discoveries["meter"],
        &meter.json(),
        &[
            ("import_wh", "integrated from power"),
            ("export_wh", "integrated from power"),
        ],
    );
    daemon.assert_running();
}

/// The gateway device every device hangs under, with the bridge's health and info.
async fn check_gateway_device(ha: &mut MqttPeer) {
    let g = ha
        .messages
        .wait_for(
            "the gateway device's discovery",
            |m| m.topic == "homeassistant/device/s2gw/config",
            GUARD,
        )
        .await;
    assert!(g.retained);
    let g = g.json();
    assert_eq!(g["dev"]["ids"], json!(["s2gw"]), "{g}");
    assert_eq!(g["dev"]["name"], "s2gw-mqtt", "the gateway's name: {g}");
    assert_eq!(g["dev"]["sw"], env!("CARGO_PKG_VERSION"), "{g}");
    let c = &g["cmps"];
    assert_eq!(c["mqtt"]["device_class"], "connectivity", "{g}");
    assert_eq!(c["mqtt"]["state_topic"], topic("bridge/state"), "{g}");
    assert_eq!(c["version"]["state_topic"], topic("bridge/info"), "{g}");
    assert_eq!(c["version"]["entity_category"], "diagnostic", "{g}");
    assert_eq!(c["cem_links"]["state_topic"], topic("bridge/health"), "{g}");
    assert_eq!(c["started"]["device_class"], "timestamp", "{g}");
    for (key, c) in c.as_object().unwrap() {
        assert_eq!(c["qos"], 1, "{key} in {g}");
    }
    // What those entities read: the retained health, without a changing uptime.
    let health = ha
        .wait_json("the retained health", &topic("bridge/health"), |v| {
            v["cem_links"]["connected"] == 1
        })
        .await;
    let v = health.json();
    assert_eq!(v["uptime_s"], Value::Null, "{v}");
    assert_eq!(v["cem_links"]["total"], 1, "{v}");
    assert!(
        v["started"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
}

/// A simulated device of `model` with its built-in profile and a fixed resource id.
fn sim_device(id: &str, name: &str, model: &str, rid: &str) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\nname = \"{name}\"\ncem = \"test\"\n\
         resource_id = \"{rid}\"\npoll_interval_s = 1\nmeasurement_interval_s = 1\n\
         profile = \"sim-{}\"\n[device.sim]\nmodel = \"{model}\"\n",
        model.replace('_', "-")
    )
}

/// The control type and active instruction components of a discovery, field by field.
fn check_cem_components(d: &Value, device: &str) {
    let oid = oid(device);
    for (key, name, absent) in [
        ("control_type", "S2 control type", "none"),
        ("active", "Active instruction", "autonomous"),
    ] {
        let c = &d["cmps"][key];
        assert_eq!(c["p"], "sensor", "{key} in {d}");
        assert_eq!(c["unique_id"], format!("{oid}_{key}"), "{d}");
        assert_eq!(c["name"], name, "{d}");
        assert_eq!(c["state_topic"], topic(device), "{d}");
        assert_eq!(
            c["value_template"],
            format!("{{{{ value_json.{key} or '{absent}' }}}}"),
            "{d}"
        );
        // Text, not a measurement: a device class or unit would make HA expect numbers.
        assert_eq!(c["device_class"], Value::Null, "{d}");
        assert_eq!(c["unit_of_measurement"], Value::Null, "{d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_sees_ppbc_and_ddbc_devices_under_cem_control() {
    let broker = Broker::start().await;
    let mut cem = TestCem::start(&[ProtocolVersion::V1_0_0]).await;
    let dishwasher_rid = Id::generate().as_str().to_string();
    let hybrid_rid = Id::generate().as_str().to_string();
    let config = format!(
        "{}{}{}{}{}",
        gateway(""),
        ws_link(&cem),
        broker.mqtt_section(BASE).replace(
            "reconnect_min_ms",
            "state_interval_ms = 200\nreconnect_min_ms"
        ),
        sim_device("dishwasher", "Dishwasher", "dishwasher", &dishwasher_rid),
        sim_device(
            "hybrid",
            "Hybrid heat pump",
            "hybrid_heat_pump",
            &hybrid_rid
        ),
    );
    let mut ha = MqttPeer::connect(
        &broker,
        "home-assistant",
        &["homeassistant/device/+/config", &topic("#")],
        None,
    )
    .await;
    let mut daemon = Daemon::start(&config);
    running(&mut daemon).await;
    let mut conns = cem.conns(2, GUARD).await;

    // Before any selection: connected, nothing selected, nothing active.
    for device in ["dishwasher", "hybrid"] {
        let state = ha
            .wait_json(&format!("{device} connected"), &topic(device), |v| {
                v["cem_link"] == "connected" && v["power_w"].is_number()
            })
            .await;
        let v = state.json();
        assert_eq!(v["control_type"], Value::Null, "{v}");
        assert_eq!(v["active"], Value::Null, "{v}");
    }

    // The dishwasher: PPBC, Eco scheduled now.
    let dishwasher = conns.get_mut(&dishwasher_rid).unwrap();
    dishwasher.handshake().await;
    dishwasher
        .select_ready(ControlType::PowerProfileBasedControl)
        .await;
    let profile = match dishwasher
        .wait_message(MessageKind::PpbcPowerProfileDefinition, GUARD)
        .await
    {
        Message::PpbcPowerProfileDefinition(p) => *p,
        other => panic!("{:?}", other.kind()),
    };
    let schedule = ppbc_schedule(&profile, 0);
    let schedule_id = schedule.id;
    dishwasher.instruct(schedule).await;
    dishwasher
        .wait_instruction_status(schedule_id, InstructionStatus::Succeeded, GUARD)
        .await;

    // The hybrid heat pump: DDBC, the boiler at half power.
    let hybrid = conns.get_mut(&hybrid_rid).unwrap();
    hybrid.handshake().await;
    hybrid
        .select_ready(ControlType::DemandDrivenBasedControl)
        .await;
    let system = match hybrid
        .wait_message(MessageKind::DdbcSystemDescription, GUARD)
        .await
    {
        Message::DdbcSystemDescription(s) => *s,
        other => panic!("{:?}", other.kind()),
    };
    let instruction = ddbc_instruction(&system, "gas boiler", "boiler on", 0.5);
    let instruction_id = instruction.id;
    hybrid.instruct(instruction).await;
    hybrid
        .wait_instruction_status(instruction_id, InstructionStatus::Succeeded, GUARD)
        .await;

    // State, field by field.
    let state = ha
        .wait_json("the dishwasher running Eco", &topic("dishwasher"), |v| {
            v["control_type"] == "PPBC" && near(&v["power_w"], 120.0, 1.0)
        })
        .await;
    let v = state.json();
    assert_eq!(v["name"], "Dishwasher", "{v}");
    assert_eq!(v["kind"], "load", "{v}");
    assert!(
        v["active"]
            .as_str()
            .is_some_and(|a| a.starts_with("Eco 50 °C at ")),
        "{v}"
    );
    assert!(v["energy_wh"].as_f64().is_some_and(|e| e >= 0.0), "{v}");
    assert_eq!(v["soc"], Value::Null, "{v}");
    assert_eq!(v["cem_link"], "connected", "{v}");
    assert_eq!(v["cem_control"], "ON", "{v}");
    assert_eq!(v["available"], true, "{v}");
    let state = ha
        .wait_json("the boiler taking the demand", &topic("hybrid"), |v| {
            // 11.5 kW of gas heat covers the demand: the heat pump stops, the boiler's
            // pump is all the electricity drawn.
            v["control_type"] == "DDBC" && near(&v["power_w"], 40.0, 1.0)
        })
        .await;
    let v = state.json();
    assert_eq!(v["name"], "Hybrid heat pump", "{v}");
    assert_eq!(v["kind"], "heat_pump", "{v}");
    assert_eq!(v["active"], "gas boiler: boiler on at 50 %", "{v}");
    assert!(v["energy_wh"].as_f64().is_some_and(|e| e >= 0.0), "{v}");
    assert_eq!(v["soc"], Value::Null, "{v}");
    assert_eq!(v["cem_link"], "connected", "{v}");
    assert_eq!(v["cem_control"], "ON", "{v}");
    assert_eq!(v["available"], true, "{v}");

    // Discovery, as Home Assistant (re)starting now gets it retained: the usual
    // components, energy, and what the CEM does.
    let mut restarted = MqttPeer::connect(
        &broker,
        "home-assistant-restarted",
        &["homeassistant/device/+/config"],
        None,
    )
    .await;
    for (device, name) in [("dishwasher", "Dishwasher"), ("hybrid", "Hybrid heat pump")] {
        let d = restarted
            .messages
            .wait_for(
                &format!("{device}'s discovery with energy"),
                |m| m.topic == discovery_topic(device) && m.json()["cmps"]["energy_wh"].is_object(),
                GUARD,
            )
            .await;
        assert!(d.retained, "discovery must be retained");
        let d = d.json();
        check_discovery(&d, device, name, &["energy_wh", "consumed_wh"], true);
        check_cem_components(&d, device);
        let energy = &d["cmps"]["energy_wh"];
        assert_eq!(energy["device_class"], "energy", "{d}");
        assert_eq!(energy["state_class"], "total_increasing", "{d}");
        assert_eq!(energy["unit_of_measurement"], "Wh", "{d}");
        assert_eq!(d["cmps"]["soc"], Value::Null, "no state of charge: {d}");
    }
    daemon.assert_running();
}

// ----------------------------------------------------------------------------------------
// (b) SIGKILL → LWT
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_is_reported_offline_by_its_lwt() {
    let broker = Broker::start().await;
    let cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let mut watcher = MqttPeer::connect(&broker, "watcher", &[&topic("bridge/state")], None).await;
    let config = format!(
        "{}{}{}{}",
        gateway(""),
        ws_link(&cem),
        broker.mqtt_section(BASE),
        meter("test")
    );
    let mut daemon = Daemon::start(&config);
    watcher
        .wait_json("the gateway online", &topic("bridge/state"), |v| {
            v["state"] == "online"
        })
        .await;
    daemon.kill();
    watcher
        .wait_json("the LWT", &topic("bridge/state"), |v| {
            v["state"] == "offline"
        })
        .await;
    // Retained: whoever comes later sees it too.
    let mut later = MqttPeer::connect(&broker, "later", &[&topic("bridge/state")], None).await;
    let msg = later
        .wait_json("the retained LWT", &topic("bridge/state"), |_| true)
        .await;
    assert!(msg.retained);
    assert_eq!(msg.json(), json!({"state": "offline"}));
}

// ----------------------------------------------------------------------------------------
// (c) the "CEM control allowed" switch
// ----------------------------------------------------------------------------------------

/// Select PEBC and limit the PV's production to 2 kW; returns when it is measured.
async fn limit_pv(conn: &mut CemConn) {
    let constraints = conn.select_pebc(GUARD).await;
    let instruction = pebc_instruction(
        &constraints,
        -2000.0,
        0.0,
        Timestamp::now(),
        S2Duration::from_secs(600),
    );
    let id = instruction.id;
    conn.instruct(instruction).await;
    conn.wait_instruction_status(id, InstructionStatus::Succeeded, GUARD)
        .await;
    conn.wait_power("the limited PV", |p| (p + 2000.0).abs() < 200.0, GUARD)
        .await;
}

/// The RM asked for a new session; the old connection ends and the next one is described.
async fn reconnected(cem: &mut TestCem, conn: &mut CemConn) -> (CemConn, Vec<ControlType>) {
    conn.events()
        .wait_for(
            "SessionRequest RECONNECT",
            |e| {
                matches!(e, CemEvent::SessionRequested { request, .. }
                    if *request == SessionRequestType::Reconnect)
            },
            GUARD,
        )
        .await;
    let mut next = cem.next_conn(GUARD).await;
    let (_, details) = next.handshake().await;
    (next, details.available_control_types)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cem_control_switch_releases_the_device_and_tells_the_cem() {
    let broker = Broker::start().await;
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let config = format!(
        "{}{}{}{}",
        gateway(""),
        ws_link(&cem),
        broker.mqtt_section(BASE),
        pv("pv", "test", "")
    );
    let mut ha = MqttPeer::connect(&broker, "ha", &[&topic("pv")], None).await;
    let mut daemon = Daemon::start(&config);
    let mut conn = cem.next_conn(GUARD).await;
    let (_, details) = conn.handshake().await;
    assert_eq!(
        details.available_control_types,
        [
            ControlType::PowerEnvelopeBasedControl,
            ControlType::NotControllable
        ]
    );
    limit_pv(&mut conn).await;
    ha.wait_json("the limit on the state topic", &topic("pv"), |v| {
        v["control_type"] == "PEBC"
            && v["active"].is_string()
            && near(&v["power_w"], -2000.0, 200.0)
    })
    .await;

    // Off: released at once, the CEM is asked to reconnect and is offered nothing to control.
    ha.publish(&topic("pv/set"), r#"{"cem_control":"OFF"}"#, false)
        .await;
    let (mut off, offered) = reconnected(&mut cem, &mut conn).await;
    assert_eq!(offered, [ControlType::NotControllable]);
    ha.wait_json("the released PV on the state topic", &topic("pv"), |v| {
        v["cem_control"] == "OFF" && v["active"].is_null() && near(&v["power_w"], -6000.0, 300.0)
    })
    .await;
    off.wait_power(
        "full production measured again",
        |p| (p + 6000.0).abs() < 300.0,
        GUARD,
    )
    .await;

    // On again: the full offer is back, and the CEM may limit again.
    ha.publish(&topic("pv/set"), r#"{"cem_control":"ON"}"#, false)
        .await;
    let (mut on, offered) = reconnected(&mut cem, &mut off).await;
    assert_eq!(
        offered,
        [
            ControlType::PowerEnvelopeBasedControl,
            ControlType::NotControllable
        ]
    );
    ha.wait_json("the switch on again", &topic("pv"), |v| {
        v["cem_control"] == "ON"
    })
    .await;
    limit_pv(&mut on).await;
    daemon.assert_running();
}

// ----------------------------------------------------------------------------------------
// (d) a CEM on MQTT drives a simulated device
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cem_on_mqtt_drives_a_device() {
    let broker = Broker::start().await;
    let rid = Id::generate().as_str().to_string();
    let config = format!(
        "{}[cem.broker]\ntransport = \"mqtt\"\n{}{}",
        gateway(""),
        broker.mqtt_section(BASE),
        pv("pv", "broker", &format!("resource_id = \"{rid}\"\n"))
    );
    let mut daemon = Daemon::start(&config);
    running(&mut daemon).await;
    let mut cem = MqttCem::start(&broker, BASE, &rid).await;
    let (version, details) = cem.handshake().await;
    assert_eq!(version, ProtocolVersion::V0_0_2_BETA);
    assert_eq!(details.resource_id.as_str(), rid);
    let constraints = cem.select_pebc(GUARD).await;
    let instruction = pebc_instruction(
        &constraints,
        -2000.0,
        0.0,
        Timestamp::now(),
        S2Duration::from_secs(600),
    );
    let (message_id, id) = (instruction.message_id, instruction.id);
    cem.instruct(instruction).await;
    let status = cem.reception_for(message_id.as_str(), GUARD).await;
    assert_eq!(status.status, ReceptionStatusValues::Ok);
    cem.events()
        .wait_for(
            "InstructionStatusUpdate SUCCEEDED over MQTT",
            |e| {
                matches!(e, CemEvent::InstructionStatus(u)
                    if u.instruction_id == id && u.status_type == InstructionStatus::Succeeded)
            },
            GUARD,
        )
        .await;
    cem.events()
        .wait_map(
            "a PowerMeasurement of the limited PV over MQTT",
            |e| match e {
                CemEvent::Measurement(m) if (total_power(m) + 2000.0).abs() < 200.0 => Some(()),
                _ => None,
            },
            GUARD,
        )
        .await;
    // The session's state topic tells people what was agreed.
    let mut watcher = MqttPeer::connect(
        &broker,
        "watcher",
        &[&topic(&format!("s2/{rid}/state"))],
        None,
    )
    .await;
    let state = watcher
        .wait_json(
            "the session state",
            &topic(&format!("s2/{rid}/state")),
            |v| v["state"] == "open",
        )
        .await
        .json();
    assert_eq!(state["side"], "rm", "{state}");
    // The S2 wire spelling (what SelectControlType carried).
    assert_eq!(
        state["control_type"], "POWER_ENVELOPE_BASED_CONTROL",
        "{state}"
    );
    assert_eq!(state["protocol_version"], "0.0.2-beta", "{state}");
    // Every frame the gateway published is valid 0.0.2-beta S2.

    assert_emitted_valid("0.0.2-beta", &cem.raw_frames());
    daemon.assert_running();
}

// ----------------------------------------------------------------------------------------
// (e) an s2-python RM on WebSocket, bridged to a CEM on MQTT
// ----------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s2python_rm_reaches_a_cem_on_mqtt() {
    check_s2python();
    let broker = Broker::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rid = Id::generate().as_str().to_string();
    let config = format!(
        "{}[server]\nlisten = \"127.0.0.1:{port}\"\n[cem.broker]\ntransport = \"mqtt\"\n{}\
         [[native]]\nid = \"py-rm\"\nresource_id = \"{rid}\"\ncem = \"broker\"\n",
        gateway(""),
        broker.mqtt_section(BASE)
    );
    let mut daemon = Daemon::start(&config);
    running(&mut daemon).await;
    let mut cem = MqttCem::start(&broker, BASE, &rid).await;
    let mut peer = spawn_s2python_rm(&format!("ws://127.0.0.1:{port}/s2/rm/py-rm"), &rid, 60);
    s2python_rm_scenario(&mut cem, &mut peer, &rid).await;
    daemon.assert_running();
}

// ----------------------------------------------------------------------------------------
// (f) bridge requests
// ----------------------------------------------------------------------------------------

async fn request(peer: &mut MqttPeer, cmd: &str, body: Value) -> Value {
    let response = topic(&format!("bridge/response/{cmd}"));
    let transaction = body["transaction"].clone();
    peer.publish(
        &topic(&format!("bridge/request/{cmd}")),
        body.to_string(),
        false,
    )
    .await;
    peer.wait_json(&format!("the {cmd} response"), &response, |v| {
        v["transaction"] == transaction
    })
    .await
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_requests_are_answered_with_their_transaction() {
    let broker = Broker::start().await;
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let config = format!(
        "{}{}{}{}{}",
        gateway(""),
        ws_link(&cem),
        broker.mqtt_section(BASE),
        pv("pv", "test", ""),
        meter("test")
    );
    let mut peer = MqttPeer::connect(
        &broker,
        "asker",
        &[
            &topic("bridge/response/+"),
            &topic("bridge/info"),
            &topic("pv"),
        ],
        None,
    )
    .await;
    let mut daemon = Daemon::start(&config);
    let _conns = cem.conns(2, GUARD).await;
    peer.wait_json("the PV connected and measured", &topic("pv"), |v| {
        v["cem_link"] == "connected" && v["power_w"].is_number()
    })
    .await;

    let info = peer
        .wait_json("bridge/info", &topic("bridge/info"), |_| true)
        .await
        .json();
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"), "{info}");
    assert_eq!(info["resources"].as_array().unwrap().len(), 2, "{info}");
    assert_eq!(info["links"][0]["transport"], "ws-client", "{info}");

    let r = request(&mut peer, "devices", json!({"transaction": "t-1"})).await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["error"], Value::Null, "{r}");
    let devices = r["data"].as_array().unwrap();
    let ids: Vec<&str> = devices.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["pv", "meter"], "{r}");
    let pv = &devices[0];
    assert_eq!(pv["profile"], "sim-pv", "{r}");
    assert_eq!(pv["cem_link"], "connected", "{r}");
    assert!(near(&pv["power_w"], -6000.0, 300.0), "{r}");
    assert_eq!(pv["offered"], json!(["PEBC", "NOT_CONTROLABLE"]), "{r}");

    let r = request(&mut peer, "health", json!({"transaction": 2})).await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["data"]["status"], "ok", "{r}");
    assert_eq!(r["data"]["devices"]["total"], 2, "{r}");
    assert_eq!(r["data"]["links"]["up"], 2, "{r}");
    assert_eq!(r["data"]["mqtt"]["connected"], true, "{r}");
    assert!(r["data"]["bus"]["rm_to_cem"].as_u64().unwrap() > 0, "{r}");

    let r = request(
        &mut peer,
        "resource",
        json!({"id": "pv", "transaction": "t-3"}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["data"]["id"], "pv", "{r}");
    assert!(
        r["data"]["counters"]["rm_to_cem"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert!(
        r["data"]["counters"]["by_kind"]["PowerMeasurement"]
            .as_u64()
            .unwrap()
            > 0
    );

    let r = request(
        &mut peer,
        "resource",
        json!({"id": "nope", "transaction": "t-4"}),
    )
    .await;
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("nope"), "{r}");
    daemon.assert_running();
}

/// The switch is kept in the retained state: a restarted gateway reads it back before it
/// publishes anything, so the first state it publishes still says OFF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cem_control_switch_survives_a_restart() {
    let broker = Broker::start().await;
    // A CEM link to a closed loopback port: the switch does not need a CEM.
    let config = format!(
        "{}[cem.test]\nurl = \"ws://127.0.0.1:9/s2/{{resource_id}}\"\n{}{}",
        gateway(""),
        broker.mqtt_section(BASE),
        meter("test")
    );
    let mut ha = MqttPeer::connect(&broker, "ha", &[&topic("meter")], None).await;
    let mut daemon = Daemon::start(&config);
    ha.wait_json("the switch on", &topic("meter"), |v| {
        v["cem_control"] == "ON"
    })
    .await;
    ha.publish(&topic("meter/set"), r#"{"cem_control":"OFF"}"#, false)
        .await;
    ha.wait_json("the switch off", &topic("meter"), |v| {
        v["cem_control"] == "OFF"
    })
    .await;
    assert!(daemon.stop(), "the daemon did not stop on SIGTERM");
    drop(daemon);
    ha.messages.clear();
    let mut daemon = Daemon::start(&config);
    running(&mut daemon).await;
    let first = ha
        .wait_json("the first state after the restart", &topic("meter"), |v| {
            v["available"] == true
        })
        .await;
    assert_eq!(first.json()["cem_control"], "OFF", "{}", first.text);
    daemon.assert_running();
}

/// A thousand malformed commands get five lines and a note that the rest are counted;
/// the next good command still works (#11: a flood of bad input must not flood the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_malformed_commands_is_logged_five_times_then_counted() {
    let broker = Broker::start().await;
    let config = format!(
        "{}[cem.test]\nurl = \"ws://127.0.0.1:9/s2/{{resource_id}}\"\n{}{}",
        gateway(""),
        broker.mqtt_section(BASE),
        pv("pv", "test", "")
    );
    let mut ha = MqttPeer::connect(&broker, "ha", &[&topic("pv")], None).await;
    let mut daemon = Daemon::start(&config);
    ha.wait_json("the switch on", &topic("pv"), |v| v["cem_control"] == "ON")
        .await;
    for i in 0..1000 {
        ha.publish(&topic("pv/set"), format!("not a command {i}"), false)
            .await;
    }
    // One connection keeps the order: once OFF is applied, the flood has been handled.
    ha.publish(&topic("pv/set"), r#"{"cem_control":"OFF"}"#, false)
        .await;
    ha.wait_json("the switch off after the flood", &topic("pv"), |v| {
        v["cem_control"] == "OFF"
    })
    .await;
    let logs = daemon.logs();
    let individual = logs.iter().filter(|l| l.contains("command is not")).count();
    assert_eq!(individual, 5, "{}", daemon.log_tail(40));
    assert!(
        logs.iter().any(
            |l| l.contains("malformed command") && l.contains("counted, not logged one by one")
        ),
        "{}",
        daemon.log_tail(40)
    );
    daemon.assert_running();
}

// ----------------------------------------------------------------------------------------
// (g) MQTT appliances: a dishwasher (PPBC) and a hybrid heat pump (DDBC)
// ----------------------------------------------------------------------------------------

/// A device of an MQTT profile, with a fixed resource id so its connection is known.
fn mqtt_device(id: &str, rid: &str, profile: &str, mqtt: &str) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\nresource_id = \"{rid}\"\ncem = \"test\"\n\
         poll_interval_s = 1\nmeasurement_interval_s = 1\nprofile = \"{profile}\"\n\
         [device.mqtt]\n{mqtt}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cem_schedules_an_mqtt_dishwasher_and_sets_an_mqtt_hybrid_heat_pump() {
    let broker = Broker::start().await;
    let mut cem = TestCem::start(&[ProtocolVersion::V1_0_0]).await;
    // The test peer plays hcpy with a metering plug, and ebusd: it listens for the
    // commands and publishes the devices' state retained, as they do, so the gateway's
    // subscriptions get it whenever they are made.
    let (start, boiler_set) = (
        "homeconnect/dw/activeProgram",
        "ebusd/bai/SetModeOverride/set",
    );
    let mut peer = MqttPeer::connect(&broker, "appliances", &[start, boiler_set], None).await;
    for (topic, payload) in [
        (
            "plug-dw/status/switch:0",
            r#"{"apower":1.5,"aenergy":{"total":42.0}}"#,
        ),
        (
            "homeconnect/dw/state",
            r#"{"OperationState":"Ready","ActiveProgram":0,"RemainingProgramTime":0,"StartInRelative":0}"#,
        ),
        (
            "ebusd/hmu/CurrentConsumedPower",
            r#"{"value":{"value":1.25}}"#,
        ),
        ("ebusd/ctlv2/HeatDemand", r#"{"value":{"value":5.25}}"#),
        ("ebusd/ctlv2/HeatDemandForecast", r#"{"values":[5.25,4.5]}"#),
        ("ebusd/hmu/Status", r#"{"compressor":{"value":"on"}}"#),
        ("ebusd/hmu/CurrentModulation", r#"{"value":{"value":80}}"#),
        ("ebusd/bai/Status", r#"{"flame":{"value":"off"}}"#),
    ] {
        peer.publish(topic, payload, true).await;
    }
    let (dw_rid, hhp_rid) = (
        Id::generate().as_str().to_string(),
        Id::generate().as_str().to_string(),
    );
    let config = format!(
        "{}{}{}{}{}",
        gateway(""),
        ws_link(&cem),
        broker.mqtt_section(BASE),
        mqtt_device(
            "dishwasher",
            &dw_rid,
            "mqtt-dishwasher",
            "device = \"dw\"\npower = { topic = \"plug-dw/status/switch:0\", path = \"apower\" }"
        ),
        mqtt_device(
            "hybrid",
            &hhp_rid,
            "mqtt-hybrid-heat-pump",
            "device = \"ebusd\""
        )
    );
    let mut daemon = Daemon::start(&config);
    let mut conns = cem.conns(2, GUARD).await;

    // ---- the dishwasher: PPBC, Eco scheduled now, the start published to hcpy -----------
    let dw = conns.get_mut(&dw_rid).unwrap();
    let (_, details) = dw.handshake().await;
    assert_eq!(
        details.available_control_types,
        [
            ControlType::PowerProfileBasedControl,
            ControlType::NotControllable
        ]
    );
    dw.select_ready(ControlType::PowerProfileBasedControl).await;
    let profile = match dw
        .wait_message(MessageKind::PpbcPowerProfileDefinition, GUARD)
        .await
    {
        Message::PpbcPowerProfileDefinition(p) => *p,
        other => panic!("{:?}", other.kind()),
    };
    let container = &profile.power_sequence_containers[0];
    assert_eq!(container.power_sequences.len(), 2, "Eco and Quick");
    assert!(
        container.power_sequences[0].is_interruptible,
        "Eco's drying may wait"
    );
    let schedule = ppbc_schedule(&profile, 0);
    let id = schedule.id;
    dw.instruct(schedule).await;
    dw.wait_instruction_status(id, InstructionStatus::Succeeded, GUARD)
        .await;
    let command = peer
        .messages
        .wait_for("hcpy to be told to start Eco", |m| m.topic == start, GUARD)
        .await;
    assert_eq!(command.text, r#"{"program":8196}"#);
    assert!(!command.retained, "commands are never retained");

    // ---- the hybrid heat pump: DDBC, the boiler on at half, published to ebusd ----------
    let hhp = conns.get_mut(&hhp_rid).unwrap();
    let (_, details) = hhp.handshake().await;
    assert_eq!(
        details.available_control_types,
        [
            ControlType::DemandDrivenBasedControl,
            ControlType::NotControllable
        ]
    );
    hhp.select_ready(ControlType::DemandDrivenBasedControl)
        .await;
    let system = match hhp
        .wait_message(MessageKind::DdbcSystemDescription, GUARD)
        .await
    {
        Message::DdbcSystemDescription(s) => *s,
        other => panic!("{:?}", other.kind()),
    };
    assert_eq!(system.actuators.len(), 2, "heat pump and gas boiler");
    match hhp
        .wait_message(MessageKind::DdbcPresentDemandStatus, GUARD)
        .await
    {
        Message::DdbcPresentDemandStatus(d) => {
            assert_eq!(d.present_demand_rate.start_of_range, 5250.0, "{d:?}")
        }
        other => panic!("{:?}", other.kind()),
    }
    let instruction = ddbc_instruction(&system, "gas boiler", "boiler on", 0.5);
    let id = instruction.id;
    hhp.instruct(instruction).await;
    hhp.wait_instruction_status(id, InstructionStatus::Succeeded, GUARD)
        .await;
    let command = peer
        .messages
        .wait_for(
            "ebusd to be told to burn at half",
            |m| m.topic == boiler_set,
            GUARD,
        )
        .await;
    assert_eq!(command.text, "on;50");
    assert_emitted_valid("1.0.0", &hhp.raw_frames());
    assert_emitted_valid("1.0.0", &conns[&dw_rid].raw_frames());

    // Home Assistant sees the MQTT devices with their profiles' manufacturer and model,
    // and an energy register only where the profile maps one (the dishwasher's plug
    // does; ebusd's heat pump does not, so its consumption is integrated from power).
    let mut ha = MqttPeer::connect(
        &broker,
        "ha-appliances",
        &["homeassistant/device/+/config"],
        None,
    )
    .await;
    for (device, manufacturer, model, energy) in [
        ("dishwasher", "BSH", "Home Connect dishwasher", true),
        ("hybrid", "Vaillant", "Hybrid system (eBUS)", false),
    ] {
        let d = ha
            .messages
            .wait_for(
                &format!("{device}'s discovery"),
                |m| m.topic == discovery_topic(device),
                GUARD,
            )
            .await
            .json();
        assert_eq!(d["dev"]["mf"], manufacturer, "{d}");
        assert_eq!(d["dev"]["mdl"], model, "{d}");
        assert_eq!(d["dev"]["via_device"], "s2gw", "{d}");
        assert_eq!(
            d["cmps"]["consumed_wh"]["state_class"], "total_increasing",
            "{d}"
        );
        assert_eq!(d["cmps"]["energy_wh"].is_object(), energy, "{d}");
    }
    daemon.assert_running();
}
