//! Home Assistant device-based discovery: one device per configured device, linked to
//! one gateway device (`via_device`) that carries the bridge's health and info.
//!
//! A device's component list depends only on what does not change while it runs (its
//! kind, whether it reports energy, whether a CEM can control it), never on live values,
//! so Home Assistant sets every entity up at once however late it starts. Every
//! component has its own `qos` (Home Assistant does not pass a device-level one on).

use s2gw_core::device::DeviceKind;
use serde_json::{Map, Value, json};

use crate::energy::counters_of;
use crate::mirror::DeviceState;

/// QoS of every subscription Home Assistant makes and every command it sends.
const QOS: u8 = 1;

/// The topics and identifiers one discovery document refers to.
pub(crate) struct DiscoveryIds {
    /// The device's identifier (and the prefix of its components' unique ids).
    pub object_id: String,
    /// `<base>/<device id>`.
    pub state_topic: String,
    /// `<base>/bridge/state`.
    pub bridge_state: String,
    /// The gateway device's identifier, for `via_device`.
    pub gateway_id: String,
    /// The device's page in the web UI, where it runs.
    pub configuration_url: Option<String>,
}

/// What a device kind is called, for devices without a `name` of their own.
fn kind_label(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::PvInverter => "PV inverter",
        DeviceKind::EvCharger => "EV charger",
        DeviceKind::Battery => "Battery",
        DeviceKind::HeatPump => "Heat pump",
        DeviceKind::Meter => "Meter",
        DeviceKind::Load => "Load",
    }
}

/// The device's name in Home Assistant: its `name`, or for a device whose name is only
/// its id, the kind and the id (`PV inverter (pv)`, not `pv`, whose entities would read
/// "pv Power").
pub(crate) fn display_name(state: &DeviceState) -> String {
    if state.name == state.device_id {
        format!("{} ({})", kind_label(state.kind), state.device_id)
    } else {
        state.name.clone()
    }
}

/// A component reading one number out of the device's state.
fn number(ids: &DiscoveryIds, key: &str, name: &str, class: &str, state_class: &str) -> Value {
    let (unit, precision) = match class {
        "power" => ("W", 0),
        "energy" => ("Wh", 0),
        _ => ("%", 1),
    };
    json!({
        "p": "sensor",
        "unique_id": format!("{}_{key}", ids.object_id),
        "name": name,
        "device_class": class,
        "state_class": state_class,
        "unit_of_measurement": unit,
        "suggested_display_precision": precision,
        "state_topic": ids.state_topic,
        "value_template": format!("{{{{ value_json.{key} }}}}"),
        "qos": QOS,
    })
}

/// A text component; `none`-like words stand for the state's nulls, which Home Assistant
/// would show as the word "None".
fn text(ids: &DiscoveryIds, key: &str, name: &str, icon: &str, absent: &str) -> Value {
    json!({
        "p": "sensor",
        "unique_id": format!("{}_{key}", ids.object_id),
        "name": name,
        "icon": icon,
        "state_topic": ids.state_topic,
        "value_template": format!("{{{{ value_json.{key} or '{absent}' }}}}"),
        "qos": QOS,
    })
}

/// The measurement components: power (S2's sign: consumption positive), what Home
/// Assistant's cards expect where it differs (a PV's production, positive), the
/// device's own energy register, the Energy dashboard's counters, state of charge.
fn measurements(ids: &DiscoveryIds, state: &DeviceState, cmps: &mut Map<String, Value>) {
    cmps.insert(
        "power_w".into(),
        number(ids, "power_w", "Power", "power", "measurement"),
    );
    if state.kind == DeviceKind::PvInverter {
        cmps.insert(
            "production_w".into(),
            number(ids, "production_w", "Production", "power", "measurement"),
        );
    }
    if state.reports_energy {
        cmps.insert(
            "energy_wh".into(),
            number(ids, "energy_wh", "Energy", "energy", "total_increasing"),
        );
    }
    for def in counters_of(state.kind) {
        let mut c = number(ids, def.key, def.name, "energy", "total_increasing");
        c["json_attributes_topic"] = json!(ids.state_topic);
        c["json_attributes_template"] = json!(format!(
            "{{{{ {{'source': value_json.energy_sources.{}}} | tojson }}}}",
            def.key
        ));
        cmps.insert(def.key.into(), c);
    }
    if state.kind == DeviceKind::Battery {
        cmps.insert(
            "soc".into(),
            number(ids, "soc", "State of charge", "battery", "measurement"),
        );
    }
}

/// What the CEM does with the device: the control type it selected, the instruction in
/// force (with the session as attributes), the session state, when the state changed.
fn s2_side(ids: &DiscoveryIds, cmps: &mut Map<String, Value>) {
    let mut control = text(
        ids,
        "control_type",
        "S2 control type",
        "mdi:tune-variant",
        "none",
    );
    control["entity_category"] = json!("diagnostic");
    cmps.insert("control_type".into(), control);
    let mut active = text(
        ids,
        "active",
        "Active instruction",
        "mdi:playlist-check",
        "autonomous",
    );
    active["json_attributes_topic"] = json!(ids.state_topic);
    active["json_attributes_template"] = json!(
        "{{ {'control_type': value_json.control_type, 'cem_link': value_json.cem_link, \
         'updated': value_json.updated} | tojson }}"
    );
    cmps.insert("active".into(), active);
    cmps.insert(
        "cem_link".into(),
        json!({
            "p": "sensor",
            "unique_id": format!("{}_cem_link", ids.object_id),
            "name": "S2 session",
            "device_class": "enum",
            "options": ["down", "handshaking", "connected"],
            "entity_category": "diagnostic",
            "icon": "mdi:handshake-outline",
            "state_topic": ids.state_topic,
            "value_template": "{{ value_json.cem_link }}",
            "qos": QOS,
        }),
    );
    cmps.insert(
        "updated".into(),
        json!({
            "p": "sensor",
            "unique_id": format!("{}_updated", ids.object_id),
            "name": "Updated",
            "device_class": "timestamp",
            "entity_category": "diagnostic",
            "state_topic": ids.state_topic,
            "value_template": "{{ value_json.updated }}",
            "qos": QOS,
        }),
    );
    cmps.insert(
        "cem_connected".into(),
        json!({
            "p": "binary_sensor",
            "unique_id": format!("{}_cem_connected", ids.object_id),
            "name": "CEM connected",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "state_topic": ids.state_topic,
            "value_template": "{{ 'ON' if value_json.cem_link == 'connected' else 'OFF' }}",
            "qos": QOS,
        }),
    );
}

/// The "CEM control allowed" switch: a setting of the device, so `config`.
fn switch(ids: &DiscoveryIds) -> Value {
    json!({
        "p": "switch",
        "unique_id": format!("{}_cem_control", ids.object_id),
        "name": "CEM control allowed",
        "icon": "mdi:transmission-tower",
        "entity_category": "config",
        "state_topic": ids.state_topic,
        "command_topic": format!("{}/set", ids.state_topic),
        "payload_on": r#"{"cem_control":"ON"}"#,
        "payload_off": r#"{"cem_control":"OFF"}"#,
        "value_template": "{{ value_json.cem_control }}",
        "state_on": "ON",
        "state_off": "OFF",
        "qos": QOS,
    })
}

/// "Start pairing" (a button, `config`) and the code it shows ("Pairing code", a
/// diagnostic sensor on a topic of its own that is never retained: the code is a secret
/// while it is valid, and shown only to whoever pressed the button).
fn pairing(ids: &DiscoveryIds, cmps: &mut Map<String, Value>) {
    cmps.insert(
        "start_pairing".into(),
        json!({
            "p": "button",
            "unique_id": format!("{}_start_pairing", ids.object_id),
            "name": "Start pairing",
            "icon": "mdi:link-variant",
            "entity_category": "config",
            "command_topic": format!("{}/set", ids.state_topic),
            "payload_press": r#"{"pairing":"START"}"#,
            "qos": QOS,
        }),
    );
    cmps.insert(
        "pairing_code".into(),
        json!({
            "p": "sensor",
            "unique_id": format!("{}_pairing_code", ids.object_id),
            "name": "Pairing code",
            "icon": "mdi:key-variant",
            "entity_category": "diagnostic",
            "state_topic": format!("{}/pairing", ids.state_topic),
            "value_template": "{{ value_json.code if value_json.code else 'none' }}",
            "qos": QOS,
        }),
    );
}

fn origin() -> Value {
    json!({ "name": "s2gw", "sw": env!("CARGO_PKG_VERSION") })
}

/// A device's discovery document.
pub(crate) fn device_json(ids: &DiscoveryIds, state: &DeviceState) -> Value {
    let mut cmps = Map::new();
    measurements(ids, state, &mut cmps);
    s2_side(ids, &mut cmps);
    // Only where a CEM can control something: on a meter the switch would do nothing.
    if state.controllable {
        cmps.insert("cem_control".into(), switch(ids));
    }
    if state.pairable {
        pairing(ids, &mut cmps);
    }
    let mut dev = json!({
        "ids": [ids.object_id],
        "name": display_name(state),
        "sw": env!("CARGO_PKG_VERSION"),
        "via_device": ids.gateway_id,
    });
    if let Some(m) = &state.manufacturer {
        dev["mf"] = json!(m);
    }
    if let Some(m) = &state.model {
        dev["mdl"] = json!(m);
    }
    if let Some(url) = &ids.configuration_url {
        dev["cu"] = json!(url);
    }
    json!({
        "dev": dev,
        "o": origin(),
        "cmps": cmps,
        "availability": [
            { "topic": ids.bridge_state, "value_template": "{{ value_json.state }}" },
            { "topic": format!("{}/availability", ids.state_topic), "value_template": "{{ value_json.state }}" },
        ],
        "availability_mode": "all",
        "qos": QOS,
    })
}

/// The topics the gateway device's entities read.
pub(crate) struct GatewayTopics {
    /// `<base>/bridge/state`.
    pub state: String,
    /// `<base>/bridge/info`.
    pub info: String,
    /// `<base>/bridge/health`.
    pub health: String,
}

/// The gateway device: the bridge's connection, health and version. Its entities are
/// available while the bridge is online, except the MQTT connection itself, which shows
/// the LWT as "disconnected" instead of turning unavailable with everything else.
pub(crate) fn gateway_json(gateway_id: &str, name: &str, topics: &GatewayTopics) -> Value {
    let availability =
        json!([{ "topic": topics.state, "value_template": "{{ value_json.state }}" }]);
    let entity = |key: &str, name: &str, topic: &str, template: &str| {
        json!({
            "p": "sensor",
            "unique_id": format!("{gateway_id}_{key}"),
            "name": name,
            "state_topic": topic,
            "value_template": template,
            "availability": availability,
            "qos": QOS,
        })
    };
    let mut cmps = Map::new();
    cmps.insert(
        "mqtt".into(),
        json!({
            "p": "binary_sensor",
            "unique_id": format!("{gateway_id}_mqtt"),
            "name": "MQTT connection",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "state_topic": topics.state,
            "value_template": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
            "qos": QOS,
        }),
    );
    let mut links = entity(
        "cem_links",
        "CEM links connected",
        &topics.health,
        "{{ value_json.cem_links.connected }}",
    );
    links["state_class"] = json!("measurement");
    links["icon"] = json!("mdi:lan-connect");
    links["json_attributes_topic"] = json!(topics.health);
    links["json_attributes_template"] = json!("{{ value_json.cem_links | tojson }}");
    cmps.insert("cem_links".into(), links);
    let mut devices = entity(
        "devices_available",
        "Devices available",
        &topics.health,
        "{{ value_json.devices.available }}",
    );
    devices["state_class"] = json!("measurement");
    devices["icon"] = json!("mdi:devices");
    cmps.insert("devices_available".into(), devices);
    let mut status = entity(
        "status",
        "Status",
        &topics.health,
        "{{ value_json.status }}",
    );
    status["device_class"] = json!("enum");
    status["options"] = json!(["ok", "degraded"]);
    cmps.insert("status".into(), status);
    let mut version = entity(
        "version",
        "Version",
        &topics.info,
        "{{ value_json.version }}",
    );
    version["entity_category"] = json!("diagnostic");
    version["icon"] = json!("mdi:tag");
    cmps.insert("version".into(), version);
    // Uptime as the moment of start: a counter of seconds would be a new state every
    // second for the recorder to store.
    let mut started = entity(
        "started",
        "Started",
        &topics.health,
        "{{ value_json.started }}",
    );
    started["device_class"] = json!("timestamp");
    started["entity_category"] = json!("diagnostic");
    cmps.insert("started".into(), started);
    json!({
        "dev": {
            "ids": [gateway_id],
            "name": name,
            "mf": "s2gw",
            "mdl": "S2 gateway",
            "sw": env!("CARGO_PKG_VERSION"),
        },
        "o": origin(),
        "cmps": cmps,
        "qos": QOS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> DiscoveryIds {
        DiscoveryIds {
            object_id: "s2gw_pv".into(),
            state_topic: "s2gw/pv".into(),
            bridge_state: "s2gw/bridge/state".into(),
            gateway_id: "s2gw".into(),
            configuration_url: None,
        }
    }

    #[test]
    fn the_component_list_depends_on_the_configuration_only() {
        let mut state = DeviceState::new("pv", "pv", DeviceKind::PvInverter);
        let before = device_json(&ids(), &state);
        state.power_w = Some(-1000.0);
        state.energy_wh = Some(5.0);
        state.soc = Some(3.0);
        state.available = true;
        assert_eq!(device_json(&ids(), &state), before);
        assert_eq!(before["dev"]["name"], "PV inverter (pv)");
        assert!(
            before["cmps"]["energy_wh"].is_null(),
            "no register: {before}"
        );
        assert!(before["cmps"]["cem_control"].is_null(), "not controllable");
        state.reports_energy = true;
        state.controllable = true;
        let after = device_json(&ids(), &state);
        assert_eq!(
            after["cmps"]["energy_wh"]["state_class"],
            "total_increasing"
        );
        assert_eq!(after["cmps"]["cem_control"]["entity_category"], "config");
    }

    #[test]
    fn only_a_pairable_device_has_the_pairing_button_and_code_sensor() {
        let mut state = DeviceState::new("b", "B", DeviceKind::Battery);
        let before = device_json(&ids(), &state);
        assert!(before["cmps"]["start_pairing"].is_null());
        assert!(before["cmps"]["pairing_code"].is_null());
        state.pairable = true;
        let after = device_json(&ids(), &state);
        let button = &after["cmps"]["start_pairing"];
        assert_eq!(button["p"], "button");
        assert_eq!(button["payload_press"], r#"{"pairing":"START"}"#);
        let code = &after["cmps"]["pairing_code"];
        assert_eq!(code["entity_category"], "diagnostic");
        assert!(
            code["state_topic"].as_str().unwrap().ends_with("/pairing"),
            "a topic of its own, never the retained state: {code}"
        );
    }

    #[test]
    fn every_component_has_its_own_qos() {
        let mut state = DeviceState::new("b", "B", DeviceKind::Battery);
        state.controllable = true;
        state.reports_energy = true;
        state.pairable = true;
        let d = device_json(&ids(), &state);
        for (key, c) in d["cmps"].as_object().unwrap() {
            assert_eq!(c["qos"], 1, "{key}");
        }
        let topics = GatewayTopics {
            state: "s".into(),
            info: "i".into(),
            health: "h".into(),
        };
        let g = gateway_json("s2gw", "gw", &topics);
        for (key, c) in g["cmps"].as_object().unwrap() {
            assert_eq!(c["qos"], 1, "{key}");
        }
    }
}
