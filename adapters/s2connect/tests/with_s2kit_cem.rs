//! s2gw's RM side of S2 Connect against s2-kit's own connect server as the CEM: pairing,
//! session initiation before every dial of a real client link, restart, unpair, and the
//! refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::{CODE, accepted, battery, cem, link, target};
use s2_kit::connect::proto::AccessToken;
use s2gw_s2connect::{Initiator, NodeStore, PairingFile, pair, unpair};
use s2gw_ws::DialSource;

#[tokio::test]
async fn pair_initiate_restart_unpair_with_an_s2kit_cem() {
    let state = tempfile::tempdir().unwrap();
    let mut cem = cem().await;

    let paired = pair(state.path(), &battery(), &target(&cem), CODE)
        .await
        .unwrap();
    assert_eq!(paired.cem.id, cem.id);
    assert_eq!(paired.cem.model_name, "Home hub");

    // Durable and secret: 0600, and the summary shows no token.
    let file = PairingFile::new(state.path(), "battery1");
    let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{:o}", mode);
    let summaries = file.summaries().unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].cem_id, cem.id.to_string());
    assert!(
        !format!("{summaries:?}").contains(AccessToken::from_entropy(&[7u8; 32]).unwrap().as_str())
    );

    // Session initiation, then a real client link over wss with the single-use token.
    let node_id = NodeStore::new(state.path()).node_id("battery1").unwrap();
    let (shutdown, _peer) = link(Initiator::new(state.path(), "battery1")).await;
    assert_eq!(accepted(&mut cem).await, node_id);
    shutdown.cancel();

    // A "restart": a new initiator from the same state directory, the same node id, and
    // a new session without pairing again.
    assert_eq!(
        NodeStore::new(state.path()).node_id("battery1").unwrap(),
        node_id
    );
    let (shutdown, _peer) = link(Initiator::new(state.path(), "battery1")).await;
    assert_eq!(accepted(&mut cem).await, node_id);
    shutdown.cancel();

    // Unpair on both sides: the next initiation is refused here, and the CEM refuses the
    // tokens it had issued.
    let before = file.load().unwrap();
    let done = unpair(state.path(), "battery1", None).await.unwrap();
    assert_eq!(done, vec![cem.id.to_string()]);
    assert!(file.load().unwrap().is_empty());
    let refused = Initiator::new(state.path(), "battery1")
        .next_dial()
        .await
        .unwrap_err();
    assert!(refused.contains("not paired"), "{refused}");
    // The old pairing put back locally: the CEM has forgotten it and refuses.
    file.insert(node_id, before[0].clone()).unwrap();
    let refused = Initiator::new(state.path(), "battery1")
        .next_dial()
        .await
        .unwrap_err();
    assert!(refused.contains("refused"), "{refused}");
}

#[tokio::test]
async fn a_wrong_pairing_code_is_refused_and_nothing_is_stored() {
    let state = tempfile::tempdir().unwrap();
    let cem = cem().await;
    let err = pair(state.path(), &battery(), &target(&cem), "hub7-Wrong123")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("pairing code is wrong"), "{err}");
    let file = PairingFile::new(state.path(), "battery1");
    assert!(file.load().unwrap().is_empty());
    assert!(!file.path().exists());
}

#[tokio::test]
async fn a_malformed_pairing_code_is_refused_before_any_request() {
    let state = tempfile::tempdir().unwrap();
    let cem = cem().await;
    let err = pair(state.path(), &battery(), &target(&cem), "hub7-a b")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("malformed"), "{err}");
}

#[tokio::test]
async fn a_corrupt_pairing_file_is_an_error_naming_it_and_pairing_does_not_overwrite_it() {
    let state = tempfile::tempdir().unwrap();
    let cem = cem().await;
    let file = PairingFile::new(state.path(), "battery1");
    std::fs::create_dir_all(file.path().parent().unwrap()).unwrap();
    std::fs::write(file.path(), b"{\"format\":1,\"node_id\":").unwrap();
    let err = file.load().unwrap_err().to_string();
    assert!(err.contains("battery1.pairings.json"), "{err}");
    let err = pair(state.path(), &battery(), &target(&cem), CODE)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("battery1.pairings.json"), "{err}");
    assert_eq!(
        std::fs::read(file.path()).unwrap(),
        b"{\"format\":1,\"node_id\":"
    );
    // Another device's state is untouched by it.
    let other = Initiator::new(state.path(), "meter1");
    let err = other.next_dial().await.unwrap_err();
    assert!(err.contains("not paired"), "{err}");
}
