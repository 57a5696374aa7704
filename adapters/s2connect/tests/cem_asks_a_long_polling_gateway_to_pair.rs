//! The gateway as long-polling client: a LAN CEM that runs the pairing server (s2-kit's)
//! starts pairing from its own UI with the code the gateway showed, and the gateway,
//! told so in the answer to its `waitForPairing`, pairs as the client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{accepted, battery, cem, link};
use s2_kit::connect::proto::{NodeId, PairingToken, TokenKind, WaitAction};
use s2gw_core::CancellationToken;
use s2gw_s2connect::{
    Initiator, LongPollConfig, NodeStore, PairedEvents, PairingCodes, PairingFile, PollingNode,
    spawn_long_poll,
};

const SOON: Duration = Duration::from_secs(20);

/// Until the CEM's endpoint has `node`'s description from a poll (there is no event to
/// await in s2-kit's endpoint, so its state is looked at until then).
async fn described_to(cem: &common::Cem, node: NodeId) {
    tokio::time::timeout(SOON, async {
        loop {
            let waiting = cem.endpoint.waiting_nodes();
            if waiting
                .iter()
                .any(|(id, w)| *id == node && w.description.as_ref().is_some_and(|d| d.id == node))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the gateway never sent its node description in a waitForPairing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn told_to_request_pairing_the_gateway_pairs_with_its_code_then_initiates_a_session() {
    let mut cem = cem().await;
    let state = tempfile::tempdir().unwrap();
    let codes = PairingCodes::new(state.path(), "battery1", "battery1");
    let issued = codes.issue(Duration::from_secs(300)).unwrap();
    // The CEM's user types the code the gateway showed; the CEM's endpoint hosts one node,
    // so the token alone names the pairing.
    let token = issued.code.split_once('-').unwrap().1;
    cem.store.open_for_pairing(
        cem.id,
        PairingToken::parse(token, TokenKind::Dynamic).unwrap(),
    );
    let node = NodeStore::new(state.path()).node_id("battery1").unwrap();
    cem.endpoint
        .instruct_waiting_node(node, WaitAction::SendNodeDescription);

    let paired = PairedEvents::default();
    let shutdown = CancellationToken::new();
    let _poll = spawn_long_poll(
        LongPollConfig {
            cem_url: cem.base.clone(),
            state_dir: state.path().to_path_buf(),
            name: "garage gateway".into(),
            nodes: vec![PollingNode {
                spec: battery(),
                codes: codes.clone(),
            }],
            paired: paired.clone(),
        },
        shutdown.clone(),
    )
    .unwrap();
    described_to(&cem, node).await;

    // The user confirms on the CEM: the held request answers `requestPairing`.
    let announced = paired.wait_for("battery1");
    cem.endpoint
        .instruct_waiting_node(node, WaitAction::RequestPairing);
    tokio::time::timeout(SOON, announced)
        .await
        .expect("the gateway never paired");

    let stored = PairingFile::new(state.path(), "battery1").load().unwrap();
    let ids: Vec<_> = stored.iter().map(|p| p.cem.id).collect();
    assert_eq!(ids, vec![cem.id]);
    assert_eq!(
        codes.current(std::time::SystemTime::now()).unwrap(),
        None,
        "the used code is withdrawn"
    );

    // The pairing is an ordinary one: a session is initiated with it.
    let initiator = Initiator::new(state.path(), "battery1");
    let (_link, _peer) = link(initiator).await;
    assert_eq!(accepted(&mut cem).await, node);
    shutdown.cancel();
}
