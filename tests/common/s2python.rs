//! The interop scenario: an s2-python 0.11.1 Resource Manager (tests/peers/s2python_rm.py)
//! dials the gateway's server and is proxied to a test CEM, WebSocket or MQTT. Written
//! once against [`CemSide`], so both CEM kinds hold the RM's session to the same checks.

use std::path::PathBuf;

use s2_kit::session::CemEvent;
use s2_kit::types::common::{ControlType, InstructionStatus, ReceptionStatusValues};
use s2_kit::types::{Duration as S2Duration, ProtocolVersion, Timestamp};

use super::{
    CemSide, GUARD, PythonPeer, assert_emitted_valid, ids_in, is_uuid, pebc_instruction, python,
    within,
};

/// The label s2-python puts on every ReceptionStatus it sends with `send_okay`: the
/// gateway never writes it, so it proves the answer came from the far end.
const S2PYTHON_OK: &str = "Processed okay.";

/// The venv's Python; fails (never skips) when it lacks s2-python 0.11.1 or its
/// WebSocket extra.
pub fn check_s2python() -> PathBuf {
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

/// Start tests/peers/s2python_rm.py dialling `url` as `resource_id`; it gives up after
/// `timeout_s` seconds.
pub fn spawn_s2python_rm(url: &str, resource_id: &str, timeout_s: u32) -> PythonPeer {
    PythonPeer::spawn(
        "s2python_rm.py",
        &[url, resource_id, &timeout_s.to_string()],
        "s2python",
    )
}

/// The s2-python RM's session, from the CEM's side: the handshake with its details, PEBC
/// selected and its constraints, an instruction it answers SUCCEEDED, TERMINATE and its
/// clean exit; then every CEM message answered OK by s2-python itself, every id a UUID,
/// and every frame valid 0.0.2-beta.
pub async fn s2python_rm_scenario(cem: &mut CemSide, peer: &mut PythonPeer, resource_id: &str) {
    let via = cem.carrier().via();

    // Handshake: 0.0.2-beta (s2-python offers nothing else), and s2-python's own details,
    // ids intact.
    let (version, details) = cem.handshake().await;
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
    let constraints = cem.select_pebc(GUARD).await;
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
            "s2-python to get the CEM's OK for its constraints",
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
    cem.instruct(instruction).await;
    peer.lines
        .wait_for(
            "s2-python to receive the instruction",
            |l| l.starts_with(&format!("SAW instruction {instruction_id}")),
            GUARD,
        )
        .await;
    cem.events()
        .wait_for(
            &format!("InstructionStatusUpdate SUCCEEDED from s2-python{via}"),
            |e| {
                matches!(e, CemEvent::InstructionStatus(u)
                    if u.instruction_id == instruction_id
                        && u.status_type == InstructionStatus::Succeeded)
            },
            GUARD,
        )
        .await;

    // TERMINATE: s2-python acknowledges and its script ends by itself, with 0.
    cem.terminate().await;
    peer.lines
        .wait_for(
            "s2-python to see TERMINATE",
            |l| l == "SAW session_request TERMINATE",
            GUARD,
        )
        .await;
    let status = within("the s2-python RM to exit", GUARD, peer.wait()).await;
    assert!(status.success(), "the s2-python RM exited with {status}");

    // Every CEM message got a ReceptionStatus from s2-python itself (not the gateway),
    // across the gateway's two transports.
    let sent = cem.sent();
    assert!(
        sent.iter().any(|(k, _)| k == "SessionRequest"),
        "the TERMINATE was sent: {sent:?}"
    );
    for (kind, id) in sent {
        if kind == "ReceptionStatus" {
            continue;
        }
        let id = id.unwrap();
        let status = cem.reception_for(&id, GUARD).await;
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

    // Every id s2-python minted arrived unchanged, and every frame the gateway passed on
    // to the CEM is valid 0.0.2-beta.
    for text in cem.raw_frames() {
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (key, id) in ids_in(&value) {
            assert!(is_uuid(&id), "{key}={id} is not a UUID");
        }
    }
    let counts = assert_emitted_valid("0.0.2-beta", &cem.raw_frames());
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
}
