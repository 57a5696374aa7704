//! `/healthz`: is the gateway doing its job?
//!
//! It works (200, `"status": "ok"`) when every device is available, every device's CEM
//! session is past its handshake, and the MQTT connection, with `[mqtt]`, is up. Any of
//! those failing makes it 503 (`"status": "degraded"`) with each problem listed under
//! `problems`. Native RMs are listed but do not count: the gateway only carries their
//! sessions.

use serde_json::{Value, json};

use crate::gateway::mqtt::link_name;
use crate::rm::LinkState;

use super::state::WebData;

/// The health document and whether the gateway works.
pub fn health(data: &WebData) -> (bool, Value) {
    let mut problems = Vec::new();
    let devices: Vec<Value> = data
        .devices
        .iter()
        .map(|d| {
            let view = d.view.borrow();
            if !view.available {
                problems.push(format!("device {} is unavailable", d.id));
            }
            let connected = matches!(view.link, LinkState::Connected(_));
            if !connected {
                problems.push(format!(
                    "device {}: no S2 session with CEM link {} ({})",
                    d.id,
                    d.cem,
                    link_name(&view.link)
                ));
            }
            json!({
                "id": d.id,
                "available": view.available,
                "cem": d.cem,
                "cem_link": link_name(&view.link),
            })
        })
        .collect();
    let mqtt = data.mqtt.as_ref().map(|m| {
        let status = *m.borrow();
        if !status.connected {
            problems.push("MQTT is not connected".to_string());
        }
        json!({ "connected": status.connected, "connects": status.connects })
    });
    let gateway = data.gateway_json();
    let ok = problems.is_empty();
    let doc = json!({
        "status": if ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": data.started.elapsed().as_secs(),
        "devices": devices,
        "links": gateway["links"],
        "natives": gateway["natives"],
        "mqtt": mqtt,
        "problems": problems,
    });
    (ok, doc)
}
