//! The departures from S2 JSON that real CEMs make, each tolerated by the daemon and
//! logged once per session at info: `"diagnostic_label": null` in ReceptionStatus (the
//! schema says string), no Handshake of the CEM's own, and the selection of a version the
//! CEM's own Handshake did not list (it picks the highest offered while speaking
//! 0.0.2-beta models). FlexMeasures' CEM shows the first two (tests/e2e_flexmeasures.rs);
//! here a raw WebSocket CEM shows each on purpose, over two sessions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::{Daemon, GUARD, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const NULL_LABEL: &str = "ReceptionStatus with diagnostic_label null";
const NO_HELLO: &str = "the CEM sent no Handshake of its own";
const UNLISTED: &str = "the CEM selected a protocol version its own Handshake did not list";

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// One session as a quirky CEM plays it: optionally its own Handshake listing only
/// 0.0.2-beta, a HandshakeResponse selecting 1.0.0 anyway, every message answered with
/// `"diagnostic_label": null`, FRBC selected. Returns once the FRBC.SystemDescription came,
/// after checking that the gateway accepted everything the CEM sent.
async fn quirky_session(ws: &mut WebSocketStream<TcpStream>, hello: bool) {
    let mut ours = Vec::new();
    if hello {
        let handshake = json!({"message_type": "Handshake", "message_id": id(), "role": "CEM",
            "supported_protocol_versions": ["0.0.2-beta"]});
        send(ws, &mut ours, handshake).await;
    }
    let mut accepted = Vec::new();
    loop {
        let text = match within("the gateway's next message", GUARD, ws.next()).await {
            Some(Ok(WsMessage::Text(text))) => text.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("the session ended early: {other:?}"),
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        let kind = message["message_type"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if kind == "ReceptionStatus" {
            assert_eq!(message["status"], "OK", "the gateway refused: {message}");
            accepted.push(message["subject_message_id"].as_str().unwrap().to_string());
            continue;
        }
        let status = json!({"message_type": "ReceptionStatus",
            "subject_message_id": message["message_id"], "status": "OK",
            "diagnostic_label": null});
        ws.send(WsMessage::text(status.to_string())).await.unwrap();
        match kind.as_str() {
            "Handshake" => {
                let response = json!({"message_type": "HandshakeResponse", "message_id": id(),
                    "selected_protocol_version": "1.0.0"});
                send(ws, &mut ours, response).await;
            }
            "ResourceManagerDetails" => {
                let select = json!({"message_type": "SelectControlType", "message_id": id(),
                    "control_type": "FILL_RATE_BASED_CONTROL"});
                send(ws, &mut ours, select).await;
            }
            "FRBC.SystemDescription" => break,
            _ => {}
        }
    }
    // The gateway's answers to what the CEM sent may still be on their way.
    while !ours.iter().all(|id| accepted.contains(id)) {
        match within("the gateway's ReceptionStatus", GUARD, ws.next()).await {
            Some(Ok(WsMessage::Text(text))) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["message_type"] == "ReceptionStatus" {
                    assert_eq!(message["status"], "OK", "the gateway refused: {message}");
                    accepted.push(message["subject_message_id"].as_str().unwrap().to_string());
                }
            }
            Some(Ok(_)) => {}
            other => panic!("the session ended early: {other:?}"),
        }
    }
}

/// Send one message of the CEM's, noting its id to see it answered.
async fn send(ws: &mut WebSocketStream<TcpStream>, ours: &mut Vec<String>, message: Value) {
    ours.push(message["message_id"].as_str().unwrap().to_string());
    ws.send(WsMessage::text(message.to_string())).await.unwrap();
}

fn said(daemon: &Daemon, quirk: &str) -> usize {
    daemon.logs().iter().filter(|l| l.contains(quirk)).count()
}

async fn wait_said(daemon: &mut Daemon, quirk: &str, times: usize) {
    for _ in said(daemon, quirk)..times {
        daemon
            .wait_log(
                &format!("{quirk:?} in the log"),
                |l| l.contains(quirk),
                GUARD,
            )
            .await;
    }
    assert_eq!(said(daemon, quirk), times, "{quirk:?}: once per session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cem_quirk_is_tolerated_and_logged_once_per_session() {
    tokio::time::timeout(Duration::from_secs(120), quirks())
        .await
        .expect("the quirks test took too long");
}

async fn quirks() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = format!(
        "[gateway]\nname = \"s2gw-quirks\"\nstate_dir = \"@STATE_DIR@\"\nlog_level = \"info\"\n\n\
         [cem.quirky]\ntransport = \"ws-client\"\nurl = \"ws://127.0.0.1:{port}/s2\"\n\n\
         [[device]]\nid = \"battery\"\ncem = \"quirky\"\nprofile = \"sim-battery\"\n\
         [device.sim]\nmodel = \"battery\"\n"
    );
    let mut daemon = Daemon::start(&config);

    // Session 1: its own Handshake lists 0.0.2-beta only, yet it selects 1.0.0.
    let (tcp, _) = within("the gateway to dial", GUARD, listener.accept())
        .await
        .unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    quirky_session(&mut ws, true).await;
    wait_said(&mut daemon, UNLISTED, 1).await;
    wait_said(&mut daemon, NULL_LABEL, 1).await;
    assert_eq!(said(&daemon, NO_HELLO), 0);
    ws.close(None).await.unwrap();

    // Session 2: no Handshake at all; the null label is said again, for this session.
    let (tcp, _) = within("the gateway to dial again", GUARD, listener.accept())
        .await
        .unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    quirky_session(&mut ws, false).await;
    wait_said(&mut daemon, NO_HELLO, 1).await;
    wait_said(&mut daemon, NULL_LABEL, 2).await;
    assert_eq!(said(&daemon, UNLISTED), 1);
    daemon.assert_running();
}
