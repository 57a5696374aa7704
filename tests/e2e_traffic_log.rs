//! The traffic log records a real session as an s2-kit `.s2log` that replays clean.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Daemon, GUARD, TestCem, ombc_instruction};
use s2_kit::message::{Message, MessageKind};
use s2_kit::session::Analyzer;
use s2_kit::testing::{Direction, read_s2log, replay_with};
use s2_kit::types::common::ControlType;
use s2_kit::types::{ProtocolVersion, WireProfile};

const SOON: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_replays_without_findings() {
    tokio::time::timeout(Duration::from_secs(120), recorded_session())
        .await
        .expect("the traffic-log test took too long");
}

async fn recorded_session() {
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let config = format!(
        "[gateway]\nname = \"s2gw-log\"\nstate_dir = \"@STATE_DIR@\"\n\
         traffic_log = \"@STATE_DIR@/traffic.s2log\"\n\n\
         [cem.test]\nurl = \"{}\"\n\n\
         [[device]]\nid = \"ev\"\nprofile = \"sim-ev\"\ncem = \"test\"\n\
         [device.sim]\nmodel = \"ev\"\nplugged = true\n",
        cem.url()
    );
    let mut daemon = Daemon::start(&config);
    let log_path = daemon.dir().join("state").join("traffic.s2log");

    let mut ev = cem.next_conn(GUARD).await;
    ev.handshake().await;
    ev.select_ready(ControlType::OperationModeBasedControl)
        .await;
    let system = match ev
        .wait_message(MessageKind::OmbcSystemDescription, SOON)
        .await
    {
        Message::OmbcSystemDescription(system) => *system,
        other => panic!("expected the OMBC description, got {:?}", other.kind()),
    };
    let instruction = ombc_instruction(&system, "6 A on 3 phase(s)");
    let id = instruction.id.as_str().to_string();
    ev.instruct(instruction).await;
    ev.frames()
        .wait_for(
            "the instruction SUCCEEDED",
            |v| v["instruction_id"] == *id && v["status_type"] == "SUCCEEDED",
            SOON,
        )
        .await;
    // Let the RM's reactions to the instruction arrive (and be answered) before ending
    // the session: a message still in flight when the CEM hangs up is rightly reported
    // as unanswered by the replay.
    ev.frames()
        .wait_for(
            "the OMBC.Status after the switch",
            |v| v["message_type"] == "OMBC.Status",
            SOON,
        )
        .await;
    ev.wait_power("the EV at 6 A x 3", |w| (w - 4140.0).abs() < 50.0, SOON)
        .await;
    ev.terminate().await;
    daemon
        .wait_log("the session closed", |l| l.contains("fail-safe"), SOON)
        .await;
    // SIGTERM: the daemon writes what is still queued before it exits.
    assert!(
        daemon.stop(),
        "the daemon did not stop by itself on SIGTERM"
    );

    let text = std::fs::read_to_string(&log_path).expect("the traffic log exists");
    let entries = read_s2log(&text);
    let kinds: Vec<(Direction, MessageKind)> =
        entries.iter().map(|e| (e.direction, e.kind)).collect();
    for expected in [
        (Direction::RmToCem, MessageKind::Handshake),
        (Direction::CemToRm, MessageKind::HandshakeResponse),
        (Direction::RmToCem, MessageKind::ResourceManagerDetails),
        (Direction::CemToRm, MessageKind::SelectControlType),
        (Direction::RmToCem, MessageKind::OmbcSystemDescription),
        (Direction::CemToRm, MessageKind::OmbcInstruction),
        (Direction::RmToCem, MessageKind::InstructionStatusUpdate),
        (Direction::CemToRm, MessageKind::SessionRequest),
    ] {
        assert!(
            kinds.contains(&expected),
            "{expected:?} missing from the log: {kinds:?}"
        );
    }
    let report = replay_with(&entries, Analyzer::new().profile(WireProfile::V0_0_2Beta));
    assert!(
        report.findings.iter().all(|f| !f.is_error()),
        "the recorded session does not replay clean: {:#?}",
        report.findings
    );
    assert!(
        report.answered > 10,
        "only {} messages were answered",
        report.answered
    );
}
