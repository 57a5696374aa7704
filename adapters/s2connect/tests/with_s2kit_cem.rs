//! s2gw's RM side of S2 Connect against s2-kit's own connect server as the CEM: pairing,
//! session initiation before every dial of a real client link, restart, unpair, and the
//! refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use s2_kit::connect::proto::{
    AccessToken, ConnectionDetails, Deployment, EndpointDescription, NodeDescription, NodeId,
    NodeIdAlias, PairingToken, Role, TokenKind,
};
use s2_kit::connect::server::{
    Endpoint as CemEndpoint, LocalSubnets, Memory, PairingService, SessionService, lan_router,
    serve, websocket_router,
};
use s2_kit::connect::tls::SelfSignedEndpoint;
use s2gw_core::{BusEvent, CancellationToken, Endpoint};
use s2gw_s2connect::{Initiator, NodeSpec, NodeStore, PairTarget, PairingFile, pair, unpair};
use s2gw_ws::{ClientConfig, DialSource, spawn_client};
use tokio::sync::mpsc;

const CODE: &str = "hub7-A1b2C3d4";

/// A LAN CEM: s2-kit's pairing and session services over TLS with a self-signed CA, and
/// a WebSocket route that admits only communication tokens its session service issued.
struct Cem {
    id: NodeId,
    base: String,
    accepted: mpsc::UnboundedReceiver<NodeId>,
}

async fn cem() -> Cem {
    let identity = SelfSignedEndpoint::generate(["localhost".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = format!("https://localhost:{port}/v1/");
    let store = Memory::new();
    let node = NodeDescription {
        id: NodeId::generate(),
        brand: "Acme".into(),
        logo_url: None,
        kind: "CEM".into(),
        model_name: "Home hub".into(),
        user_defined_name: None,
        role: Role::Cem,
    };
    let id = node.id;
    store.add_node(node, Some(NodeIdAlias::parse("hub7").unwrap()));
    let lan = EndpointDescription {
        name: Some("Acme hub".into()),
        logo_url: None,
        deployment: Some(Deployment::Lan),
    };
    let pairing = Arc::new(
        PairingService::lan(store.clone(), lan, identity.leaf).with_connection_details(
            ConnectionDetails {
                initiate_session_url: base.clone(),
                access_token: AccessToken::from_entropy(&[7u8; 32]).unwrap(),
                certificate_fingerprint: [("SHA256".into(), identity.leaf.to_hex())]
                    .into_iter()
                    .collect(),
            },
        ),
    );
    let sessions = Arc::new(SessionService::new(
        store.clone(),
        format!("wss://localhost:{port}/s2"),
    ));
    let endpoint = CemEndpoint::new(pairing, sessions);
    let (tx, accepted) = mpsc::unbounded_channel();
    let app = lan_router(endpoint.clone(), LocalSubnets::detect().unwrap()).merge(
        websocket_router(endpoint, "/s2", move |node, socket| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(node);
                // Hold the socket until the gateway closes it.
                let mut socket = socket;
                let _ = socket_until_closed(&mut socket).await;
            }
        }),
    );
    let config = identity.server_config().unwrap();
    tokio::spawn(async move {
        let _ = serve(listener, config, app, std::future::pending()).await;
    });
    store.open_for_pairing(
        id,
        PairingToken::parse("A1b2C3d4", TokenKind::Static).unwrap(),
    );
    Cem { id, base, accepted }
}

async fn socket_until_closed(socket: &mut s2_kit::connect::server::ServerSocket) -> Option<()> {
    use s2_kit::io::TextTransport as _;
    while socket.recv_text().await.ok()?.is_some() {}
    Some(())
}

fn battery() -> NodeSpec {
    NodeSpec {
        device: "battery1".into(),
        name: "Garage battery".into(),
        brand: "Victron".into(),
        model: "MultiPlus-II".into(),
        kind: "battery".into(),
    }
}

fn target(cem: &Cem) -> PairTarget {
    PairTarget {
        url: cem.base.clone(),
        deployment: Deployment::Lan,
    }
}

/// A client link fed by `initiator`, with the RM side up so it dials.
async fn link(initiator: Initiator) -> (CancellationToken, s2gw_core::EndpointPeer) {
    let (endpoint, mut peer) = Endpoint::pair(64);
    let shutdown = CancellationToken::new();
    let config = ClientConfig {
        source: Some(Arc::new(initiator)),
        backoff: (Duration::from_millis(50), Duration::from_millis(200)),
        ..ClientConfig::default()
    };
    spawn_client(config, "r1".into(), endpoint, shutdown.clone());
    peer.tx.send(BusEvent::Up).await.unwrap();
    // The link announces Up once the WebSocket is open.
    let up = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match peer.rx.recv().await {
                Some(BusEvent::Up) => return,
                Some(_) => {}
                None => panic!("link ended"),
            }
        }
    })
    .await;
    assert!(up.is_ok(), "the link never connected");
    (shutdown, peer)
}

async fn accepted(cem: &mut Cem) -> NodeId {
    tokio::time::timeout(Duration::from_secs(10), cem.accepted.recv())
        .await
        .expect("the CEM accepted no WebSocket")
        .unwrap()
}

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
