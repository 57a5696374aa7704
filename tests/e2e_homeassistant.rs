//! A real Home Assistant Core (from `.venv-ha`, built by `scripts/ha-peer.sh`) against
//! mosquitto and the daemon with simulated PV, battery, meter and EV charger: onboarded
//! and given the broker through its REST API like a user would, it must show every entity
//! with its class, unit and state under one gateway device, accept the Energy dashboard's
//! counters (its own energy and statistics validation report nothing), turn the "CEM
//! control allowed" switch off through the gateway, and show everything unavailable once
//! the gateway is SIGKILLed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use s2_kit::types::ProtocolVersion;
use serde_json::{Value, json};

const BASE: &str = "home";
const GATEWAY: &str = "s2gw-ha";
/// Home Assistant's start, onboarding and MQTT setup: seconds on a loaded 2-core machine.
const HA_START: Duration = Duration::from_secs(180);
/// How long Home Assistant may take to show what the broker says.
const HA_GUARD: Duration = Duration::from_secs(60);

/// Home Assistant behind its driver (tests/peers/home_assistant.py).
struct Hass {
    peer: PythonPeer,
    _dir: tempfile::TempDir,
}

impl Hass {
    async fn start(broker: &Broker) -> Hass {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut peer = PythonPeer::spawn_with(
            &ha_python(),
            "home_assistant.py",
            &[
                dir.path().to_str().unwrap(),
                &port.to_string(),
                &broker.port.to_string(),
                MQTT_USER,
                MQTT_PASSWORD,
            ],
            "hass",
        );
        let ready = peer
            .lines
            .wait_for(
                "Home Assistant to be ready",
                |l| l.contains("\"ready\""),
                HA_START,
            )
            .await;
        assert!(ready.contains("2025.4.4"), "{ready}");
        Hass { peer, _dir: dir }
    }

    async fn ask(&mut self, request: Value) -> Value {
        self.peer.send(&request.to_string()).await;
        let line = self
            .peer
            .lines
            .wait_for("Home Assistant's answer", |l| l.starts_with('{'), HA_GUARD)
            .await;
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert!(answer["error"].is_null(), "{request} failed: {answer}");
        answer["ok"].clone()
    }

    /// The MQTT entities by unique id.
    async fn entities(&mut self) -> BTreeMap<String, Value> {
        let list = self.ask(json!({"cmd": "entities"})).await;
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| (e["unique_id"].as_str().unwrap().to_string(), e.clone()))
            .collect()
    }

    /// Poll the entities until `pred` holds (Home Assistant pushes nothing to the driver).
    async fn entities_where(
        &mut self,
        what: &str,
        pred: impl Fn(&BTreeMap<String, Value>) -> bool,
    ) -> BTreeMap<String, Value> {
        let deadline = tokio::time::Instant::now() + HA_GUARD;
        loop {
            let entities = self.entities().await;
            if pred(&entities) {
                return entities;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {entities:#?}"
            );
            // Polling Home Assistant's registry, which has no event for the driver.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn uid(device: &str, key: &str) -> String {
    format!("s2gw_{BASE}_{device}_{key}")
}

/// What every expected entity must be: (device, key, device class, unit, state class).
const SENSORS: &[(&str, &str, &str, &str, &str)] = &[
    ("pv", "power_w", "power", "W", "measurement"),
    ("pv", "production_w", "power", "W", "measurement"),
    ("pv", "produced_wh", "energy", "Wh", "total_increasing"),
    ("battery", "power_w", "power", "W", "measurement"),
    ("battery", "charged_wh", "energy", "Wh", "total_increasing"),
    (
        "battery",
        "discharged_wh",
        "energy",
        "Wh",
        "total_increasing",
    ),
    ("battery", "soc", "battery", "%", "measurement"),
    ("meter", "power_w", "power", "W", "measurement"),
    ("meter", "import_wh", "energy", "Wh", "total_increasing"),
    ("meter", "export_wh", "energy", "Wh", "total_increasing"),
    ("ev", "power_w", "power", "W", "measurement"),
    ("ev", "charged_wh", "energy", "Wh", "total_increasing"),
];

fn numeric(e: &Value) -> bool {
    e["state"]
        .as_str()
        .is_some_and(|s| s.parse::<f64>().is_ok())
}

fn entity_id<'a>(entities: &'a BTreeMap<String, Value>, device: &str, key: &str) -> &'a str {
    entities[&uid(device, key)]["entity_id"].as_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_shows_every_entity_takes_the_energy_counters_and_loses_a_killed_gateway() {
    let broker = Broker::start().await;
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let config = format!(
        "[gateway]\nname = \"{GATEWAY}\"\nstate_dir = \"@STATE_DIR@\"\n\n[cem.test]\nurl = \"{}\"\n\
         {}state_heartbeat_s = 2\n{}{}{}\
         [[device]]\nid = \"ev\"\nname = \"Car charger\"\ncem = \"test\"\npoll_interval_s = 1\n\
         measurement_interval_s = 1\nprofile = \"sim-ev\"\n[device.sim]\nmodel = \"ev\"\n",
        cem.url(),
        broker.mqtt_section(BASE),
        pv("pv", "test", ""),
        battery("test"),
        meter("test"),
    );
    let mut daemon = Daemon::start(&config);
    daemon
        .wait_log("the daemon to run", |l| l.contains("s2gw running"), GUARD)
        .await;
    let _conns = cem.conns(4, GUARD).await;
    let mut hass = Hass::start(&broker).await;

    // Every entity, with its class, unit and a number for a state.
    let entities = hass
        .entities_where("every sensor with a number", |e| {
            SENSORS
                .iter()
                .all(|(d, k, ..)| e.get(&uid(d, k)).is_some_and(numeric))
        })
        .await;
    for (device, key, class, unit, state_class) in SENSORS {
        let e = &entities[&uid(device, key)];
        let a = &e["attributes"];
        assert_eq!(a["device_class"], *class, "{e}");
        assert_eq!(a["unit_of_measurement"], *unit, "{e}");
        assert_eq!(a["state_class"], *state_class, "{e}");
        assert_eq!(e["device"]["via_device"], GATEWAY, "{e}");
        assert_eq!(e["device"]["sw_version"], env!("CARGO_PKG_VERSION"), "{e}");
    }
    // Sign conventions: S2's for power, positive production for the PV's power cards.
    let pv_power: f64 = entities[&uid("pv", "power_w")]["state"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let production: f64 = entities[&uid("pv", "production_w")]["state"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        pv_power < -1000.0 && production > 1000.0,
        "{pv_power} {production}"
    );
    // Where a counter comes from, as an attribute.
    assert_eq!(
        entities[&uid("pv", "produced_wh")]["attributes"]["source"],
        "device register"
    );
    assert_eq!(
        entities[&uid("meter", "import_wh")]["attributes"]["source"],
        "integrated from power"
    );
    // Devices: names, manufacturer and model from the profile.
    let battery = &entities[&uid("battery", "power_w")]["device"];
    assert_eq!(battery["name"], "Home battery");
    assert_eq!(battery["manufacturer"], "s2gw");
    assert_eq!(battery["model"], "Simulated home battery");
    assert_eq!(
        entities[&uid("meter", "power_w")]["device"]["name"],
        "Meter (meter)"
    );
    // The S2 side, as diagnostics; the switch only where a CEM controls something.
    let session = &entities[&uid("battery", "cem_link")];
    assert_eq!(session["entity_category"], "diagnostic", "{session}");
    assert_eq!(session["attributes"]["device_class"], "enum", "{session}");
    assert_eq!(
        entities[&uid("battery", "cem_control")]["entity_category"],
        "config"
    );
    assert!(!entities.contains_key(&uid("meter", "cem_control")));
    let active = &entities[&uid("battery", "active")];
    assert_eq!(active["attributes"]["cem_link"], "connected", "{active}");
    // The gateway device: its own entities.
    let gateway = hass
        .entities_where("the gateway's entities", |e| {
            e.get(&format!("s2gw_{BASE}_cem_links"))
                .is_some_and(|l| l["state"] == "1")
                && e.get(&format!("s2gw_{BASE}_mqtt"))
                    .is_some_and(|m| m["state"] == "on")
        })
        .await;
    let version = &gateway[&format!("s2gw_{BASE}_version")];
    assert_eq!(version["state"], env!("CARGO_PKG_VERSION"), "{version}");
    assert_eq!(version["device"]["name"], GATEWAY, "{version}");
    assert_eq!(
        gateway[&format!("s2gw_{BASE}_devices_available")]["state"],
        "4"
    );
    assert_eq!(
        gateway[&format!("s2gw_{BASE}_started")]["attributes"]["device_class"],
        "timestamp"
    );

    // The Energy dashboard takes the counters: Home Assistant's validation says nothing.
    let prefs = json!({
        "energy_sources": [
            {"type": "grid",
             "flow_from": [{"stat_energy_from": entity_id(&entities, "meter", "import_wh"),
                            "stat_cost": null, "entity_energy_price": null,
                            "number_energy_price": null}],
             "flow_to": [{"stat_energy_to": entity_id(&entities, "meter", "export_wh"),
                          "stat_compensation": null, "entity_energy_price": null,
                          "number_energy_price": null}],
             "cost_adjustment_day": 0.0},
            {"type": "solar", "stat_energy_from": entity_id(&entities, "pv", "produced_wh"),
             "config_entry_solar_forecast": null},
            {"type": "battery",
             "stat_energy_from": entity_id(&entities, "battery", "discharged_wh"),
             "stat_energy_to": entity_id(&entities, "battery", "charged_wh")},
        ],
        "device_consumption": [{"stat_consumption": entity_id(&entities, "ev", "charged_wh")}],
    });
    let validation = hass.ask(json!({"cmd": "energy", "prefs": prefs})).await;
    let energy = &validation["energy"];
    let issues: Vec<&Value> = energy["energy_sources"]
        .as_array()
        .unwrap()
        .iter()
        .chain(energy["device_consumption"].as_array().unwrap())
        .flat_map(|issues| issues.as_array().unwrap())
        .collect();
    assert!(issues.is_empty(), "energy/validate: {validation}");
    assert_eq!(energy["energy_sources"].as_array().unwrap().len(), 3);
    for (device, key, ..) in SENSORS {
        let id = entity_id(&entities, device, key);
        assert!(
            validation["statistics"].get(id).is_none(),
            "recorder/validate_statistics on {id}: {validation}"
        );
    }

    // The switch, from Home Assistant, through the gateway and back.
    let switch = entity_id(&entities, "battery", "cem_control").to_string();
    assert_eq!(entities[&uid("battery", "cem_control")]["state"], "on");
    hass.ask(
        json!({"cmd": "service", "domain": "switch", "service": "turn_off",
                    "data": {"entity_id": switch}}),
    )
    .await;
    hass.entities_where("the switch to be off", |e| {
        e[&uid("battery", "cem_control")]["state"] == "off"
    })
    .await;
    daemon
        .wait_log(
            "the daemon to switch CEM control off",
            |l| l.contains("CEM control switched") && l.contains("battery"),
            GUARD,
        )
        .await;

    // A SIGKILL: the LWT makes every device entity unavailable, the MQTT connection off.
    daemon.kill();
    let after = hass
        .entities_where("every entity unavailable", |e| {
            SENSORS
                .iter()
                .all(|(d, k, ..)| e[&uid(d, k)]["state"] == "unavailable")
                && e[&format!("s2gw_{BASE}_mqtt")]["state"] == "off"
        })
        .await;
    assert_eq!(
        after[&format!("s2gw_{BASE}_version")]["state"],
        "unavailable"
    );
}
