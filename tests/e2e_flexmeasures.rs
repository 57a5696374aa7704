//! Interop: FlexMeasures' own S2 CEM (flexmeasures-client 0.9.6, its
//! `s2/script/websockets_server.py` with the `FRBCSimple` handler, unchanged) drives the
//! daemon's sim battery. Only the FlexMeasures HTTP API it asks for schedules is stood in
//! for, at that boundary (`tests/peers/flexmeasures_cem.py` says what it answers).
//!
//! The stand-in's default schedule: 4000 W for an hour, then -1500 W, then 0 W, one
//! FRBC.Instruction per change; only the first falls due during the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::{Daemon, GUARD, PythonPeer};
use serde_json::Value;

/// What the FlexMeasures CEM's first instruction asks of the 5 kW battery: charge at
/// 4000 W (factor 0.8 of its 0..5000 W charge range).
const FIRST_SETPOINT_W: f64 = 4000.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flexmeasures_cem_drives_the_battery() {
    tokio::time::timeout(Duration::from_secs(120), flexmeasures_drives_the_battery())
        .await
        .expect("the FlexMeasures test took too long");
}

/// One line of the peer's output, parsed.
fn event(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or(Value::Null)
}

/// The S2 message of a `recv`/`sent` line, when its type is `kind`.
fn message_of<'a>(event: &'a Value, direction: &str, kind: &str) -> Option<&'a Value> {
    (event["event"] == direction && event["message"]["message_type"] == kind)
        .then(|| &event["message"])
}

async fn flexmeasures_drives_the_battery() {
    let mut cem = PythonPeer::spawn("flexmeasures_cem.py", &["--port", "0"], "flexmeasures");
    let port = cem
        .lines
        .wait_map(
            "FlexMeasures' CEM to listen",
            |l| {
                let e = event(l);
                (e["event"] == "listening")
                    .then(|| e["port"].as_u64())
                    .flatten()
            },
            GUARD,
        )
        .await;
    let config = format!(
        "[gateway]\nname = \"s2gw-flexmeasures\"\nstate_dir = \"@STATE_DIR@\"\nlog_level = \"info\"\n\n\
         [cem.fm]\ntransport = \"ws-client\"\nurl = \"ws://127.0.0.1:{port}/ws\"\n\n\
         [[device]]\nid = \"battery\"\ncem = \"fm\"\npoll_interval_s = 1\nmeasurement_interval_s = 1\n\
         profile = \"sim-battery\"\n[device.sim]\nmodel = \"battery\"\ninitial_soc = 50\n"
    );
    let mut daemon = Daemon::start(&config);

    // FlexMeasures selects FRBC and accepts the SystemDescription (ReceptionStatus OK).
    let selected = cem
        .lines
        .wait_map(
            "SelectControlType from the CEM",
            |l| message_of(&event(l), "sent", "SelectControlType").cloned(),
            GUARD,
        )
        .await;
    assert_eq!(selected["control_type"], "FILL_RATE_BASED_CONTROL");
    let system = cem
        .lines
        .wait_map(
            "the gateway's FRBC.SystemDescription",
            |l| message_of(&event(l), "recv", "FRBC.SystemDescription").cloned(),
            GUARD,
        )
        .await;
    let system_id = system["message_id"].clone();
    let answer = cem
        .lines
        .wait_map(
            "FlexMeasures' answer to the SystemDescription",
            |l| {
                message_of(&event(l), "sent", "ReceptionStatus")
                    .filter(|m| m["subject_message_id"] == system_id)
                    .cloned()
            },
            GUARD,
        )
        .await;
    assert_eq!(answer["status"], "OK", "refused: {answer}");

    // Its first instruction: charge, due now.
    let instruction = cem
        .lines
        .wait_map(
            "an FRBC.Instruction from FlexMeasures",
            |l| message_of(&event(l), "sent", "FRBC.Instruction").cloned(),
            GUARD,
        )
        .await;
    let charge = mode_labelled(&system, "charge");
    assert_eq!(instruction["operation_mode"], charge["id"], "{instruction}");
    let instruction_id = instruction["id"].clone();

    // ACCEPTED, STARTED, SUCCEEDED, each within the certification tool's 10 s.
    for status in ["ACCEPTED", "STARTED", "SUCCEEDED"] {
        cem.lines
            .wait_for(
                &format!("InstructionStatusUpdate {status}"),
                |l| {
                    message_of(&event(l), "recv", "InstructionStatusUpdate").is_some_and(|m| {
                        m["instruction_id"] == instruction_id && m["status_type"] == status
                    })
                },
                Duration::from_secs(10),
            )
            .await;
    }

    // The battery follows: its actuator reports the charge mode, its power the setpoint.
    cem.lines
        .wait_for(
            "FRBC.ActuatorStatus in the charge mode",
            |l| {
                message_of(&event(l), "recv", "FRBC.ActuatorStatus")
                    .is_some_and(|m| m["active_operation_mode_id"] == charge["id"])
            },
            GUARD,
        )
        .await;
    cem.lines
        .wait_for(
            "a PowerMeasurement at the charge setpoint",
            |l| {
                message_of(&event(l), "recv", "PowerMeasurement").is_some_and(|m| {
                    m["values"][0]["value"]
                        .as_f64()
                        .is_some_and(|w| (w - FIRST_SETPOINT_W).abs() < 50.0)
                })
            },
            GUARD,
        )
        .await;

    // Every message the gateway sent got OK; nothing inside the CEM went wrong.
    let mut errors = Vec::new();
    while let Some(line) = cem.lines.try_next() {
        let e = event(&line);
        if e["event"] == "error" {
            errors.push(line);
        }
    }
    assert!(
        errors.is_empty(),
        "FlexMeasures' CEM reported:\n{}",
        errors.join("\n")
    );

    // FlexMeasures sends no Handshake of its own, `"diagnostic_label": null` in every
    // ReceptionStatus, and selects 1.0.0 (the highest offered) while parsing with
    // s2-python's 0.0.2-beta models: all tolerated, each quirk it shows said once.
    daemon
        .wait_log(
            "the session to run on 1.0.0",
            |l| l.contains("S2 protocol version agreed") && l.contains("1.0.0"),
            GUARD,
        )
        .await;
    for quirk in [
        "the CEM sent no Handshake of its own",
        "ReceptionStatus with diagnostic_label null",
    ] {
        daemon
            .wait_log(
                &format!("the quirk {quirk:?} to be logged"),
                |l| l.contains(quirk),
                GUARD,
            )
            .await;
        let said = daemon.logs().iter().filter(|l| l.contains(quirk)).count();
        assert_eq!(said, 1, "{quirk:?} once per session");
    }
    daemon.assert_running();
}

/// The operation mode of the description's actuator whose label is `label`.
fn mode_labelled<'a>(system: &'a Value, label: &str) -> &'a Value {
    system["actuators"][0]["operation_modes"]
        .as_array()
        .and_then(|modes| modes.iter().find(|m| m["diagnostic_label"] == label))
        .unwrap_or_else(|| panic!("no {label} mode in {system}"))
}
