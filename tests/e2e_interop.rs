//! Interop: an s2-python 0.11.1 Resource Manager (tests/peers/s2python_rm.py) dials the
//! gateway's server at /s2/rm/<id> and is proxied to the test CEM (s2-kit `CemSession`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::{
    Daemon, Ended, GUARD, PythonPeer, TestCem, assert_emitted_valid, is_uuid, pebc_instruction,
    python,
};
use s2_kit::message::{Message, MessageKind};
use s2_kit::session::CemEvent;
use s2_kit::types::common::{ControlType, InstructionStatus, ReceptionStatusValues};
use s2_kit::types::{Duration as S2Duration, Id, ProtocolVersion, Timestamp};

/// The label s2-python puts on every ReceptionStatus it sends with `send_okay`: the
/// gateway never writes it, so it proves the answer came from the far end.
const S2PYTHON_OK: &str = "Processed okay.";

/// Fail (never skip) when the venv lacks s2-python 0.11.1 or its WebSocket extra.
fn check_python() -> std::path::PathBuf {
    let python = python();
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(
            "import importlib.metadata as m, s2python, websockets; \
             print(m.version('s2-python'))",
        )
        .output()
        .expect("cannot run the venv's python");
    assert!(
        out.status.success(),
        "{} cannot import s2python and websockets: {}\n\
         install them with `.venv/bin/pip install 's2-python[ws]==0.11.1'` \
         (scripts/python-peers.sh)",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        version, "0.11.1",
        "the interop peer is pinned to s2-python 0.11.1"
    );
    python
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2python_rm_through_the_gateway() {
    tokio::time::timeout(Duration::from_secs(120), s2python_rm())
        .await
        .expect("the interop test took too long");
}

async fn s2python_rm() {
    check_python();

    // The CEM would prefer 1.0.0; s2-python offers only 0.0.2-beta, so that is agreed.
    let mut cem = TestCem::start(&[ProtocolVersion::V1_0_0, ProtocolVersion::V0_0_2_BETA]).await;
    let port = free_port();
    let resource_id = Id::generate().as_str().to_string();
    let config = format!(
        "[gateway]\nname = \"s2gw-interop\"\nstate_dir = \"@STATE_DIR@\"\n\n\
         [server]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [cem.test]\ntransport = \"ws-client\"\nurl = \"{}\"\n\n\
         [[native]]\nid = \"py-rm\"\nresource_id = \"{resource_id}\"\ncem = \"test\"\n",
        cem.url()
    );
    let mut daemon = Daemon::start(&config);
    daemon
        .wait_log(
            "the gateway's server to listen",
            |l| l.contains("S2 WebSocket server listening") && l.contains(&port.to_string()),
            GUARD,
        )
        .await;

    // The s2-python RM, its output as a queue of lines.
    let url = format!("ws://127.0.0.1:{port}/s2/rm/py-rm");
    let mut peer = PythonPeer::spawn("s2python_rm.py", &[&url, &resource_id, "40"], "s2python");

    // Handshake: 0.0.2-beta, and s2-python's own details, ids intact.
    let mut conn = cem.next_conn(GUARD).await;
    assert_eq!(conn.resource_id(), resource_id);
    let (version, details) = conn.handshake().await;
    assert_eq!(version, ProtocolVersion::V0_0_2_BETA);
    assert_eq!(
        details.resource_id.as_str(),
        resource_id,
        "resource id preserved"
    );
    assert_eq!(details.name.as_deref(), Some("s2-python RM"));
    assert_eq!(
        details.available_control_types,
        [
            ControlType::PowerEnvelopeBasedControl,
            ControlType::NotControllable
        ]
    );
    peer.lines
        .wait_for(
            "s2-python to see the HandshakeResponse",
            |l| l == "SAW handshake_response 0.0.2-beta",
            GUARD,
        )
        .await;

    // Select PEBC: s2-python activates it and publishes its constraints.
    conn.select_ready(ControlType::PowerEnvelopeBasedControl)
        .await;
    let constraints = match conn
        .wait_message(MessageKind::PebcPowerConstraints, GUARD)
        .await
    {
        Message::PebcPowerConstraints(c) => *c,
        other => panic!("{:?}", other.kind()),
    };
    let sent_id = peer
        .lines
        .wait_map(
            "s2-python's constraints id",
            |l| l.strip_prefix("SAW constraints_sent ").map(str::to_string),
            GUARD,
        )
        .await;
    assert_eq!(
        constraints.id.as_str(),
        sent_id,
        "s2-python's constraints id preserved"
    );
    // The CEM's ReceptionStatus for the constraints reached s2-python.
    peer.lines
        .wait_for(
            "s2-python to get OK for its constraints",
            |l| l.starts_with("SAW reception_status ") && l.ends_with(" OK"),
            GUARD,
        )
        .await;

    // An instruction within s2-python's ranges: answered SUCCEEDED by s2-python.
    let instruction = pebc_instruction(
        &constraints,
        0.0,
        2000.0,
        Timestamp::now(),
        S2Duration::from_secs(600),
    );
    let instruction_id = instruction.id;
    conn.instruct(instruction).await;
    peer.lines
        .wait_for(
            "s2-python to receive the instruction",
            |l| l.starts_with(&format!("SAW instruction {instruction_id}")),
            GUARD,
        )
        .await;
    conn.events()
        .wait_for(
            "InstructionStatusUpdate SUCCEEDED from s2-python",
            |e| {
                matches!(e, CemEvent::InstructionStatus(u)
                    if u.instruction_id == instruction_id
                        && u.status_type == InstructionStatus::Succeeded)
            },
            GUARD,
        )
        .await;

    // TERMINATE: s2-python acknowledges and its script ends by itself, with 0.
    let terminate = conn.terminate().await;
    peer.lines
        .wait_for(
            "s2-python to see TERMINATE",
            |l| l == "SAW session_request TERMINATE",
            GUARD,
        )
        .await;
    let status = common::within("the s2-python RM to exit", GUARD, peer.wait()).await;
    assert!(status.success(), "the s2-python RM exited with {status}");

    // The gateway closes the CEM side once the native RM is gone.
    let ended = conn.ended(GUARD).await;
    assert!(
        matches!(ended, Ended::CloseFrame(_)),
        "the CEM link should be closed cleanly, got {ended:?}"
    );

    // Every CEM message got a ReceptionStatus from s2-python itself (not the gateway).
    let sent = conn.sent();
    assert!(
        sent.iter().any(|(k, _)| k == "SessionRequest"),
        "the TERMINATE was sent: {sent:?}"
    );
    for (kind, id) in sent {
        if kind == "ReceptionStatus" {
            continue;
        }
        let id = id.unwrap();
        let status = conn.reception_for(&id, GUARD).await;
        assert_eq!(
            status.status,
            ReceptionStatusValues::Ok,
            "{kind}: {status:?}"
        );
        assert_eq!(
            status.diagnostic_label.as_deref(),
            Some(S2PYTHON_OK),
            "{kind}: the ReceptionStatus must come from s2-python, not the gateway"
        );
    }
    let _ = terminate;

    // Every id s2-python minted arrived unchanged, and every gateway→CEM frame is valid
    // 0.0.2-beta.
    for text in conn.raw_frames() {
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (key, id) in common::ids_in(&value) {
            assert!(is_uuid(&id), "{key}={id} is not a UUID");
        }
    }
    let counts = assert_emitted_valid("0.0.2-beta", &conn.raw_frames());
    for kind in [
        "Handshake",
        "ResourceManagerDetails",
        "ReceptionStatus",
        "PEBC.PowerConstraints",
        "InstructionStatusUpdate",
    ] {
        assert!(
            counts.contains_key(kind),
            "no {kind} from s2-python: {counts:?}"
        );
    }
    daemon.assert_running();
}
