//! The CEM peer of the S2 Connect tests: s2-kit's own connect server (pairing and session
//! initiation over TLS, a WebSocket route that admits only the tokens it issued), and a
//! client link of the gateway fed by an initiator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

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
use s2gw_s2connect::{Initiator, NodeSpec, PairTarget};
use s2gw_ws::{ClientConfig, spawn_client};
use tokio::sync::mpsc;

pub const CODE: &str = "hub7-A1b2C3d4";

/// A LAN CEM: s2-kit's pairing and session services over TLS with a self-signed CA, and
/// a WebSocket route that admits only communication tokens its session service issued.
pub struct Cem {
    pub id: NodeId,
    /// Its own node description (for pairing as a client).
    pub node: NodeDescription,
    /// Its pairing and session-initiation base URL.
    pub base: String,
    /// The node ids whose WebSocket it accepted, in order.
    pub accepted: mpsc::UnboundedReceiver<NodeId>,
    /// Its pairings and pairing tokens.
    pub store: Arc<Memory>,
    /// The SHA-256 fingerprint (hex) of the CA its TLS chain ends in.
    pub ca_fingerprint: String,
    /// Its endpoint, for what its UI would do (tell a long-polling node to pair).
    pub endpoint: CemEndpoint,
}

impl Cem {
    /// The connection details it offers when it pairs as a client with an RM that runs
    /// the pairing server (it is then the communication server).
    pub fn details(&self) -> ConnectionDetails {
        ConnectionDetails {
            initiate_session_url: self.base.clone(),
            access_token: AccessToken::from_entropy(&[9u8; 32]).unwrap(),
            certificate_fingerprint: [("SHA256".into(), self.ca_fingerprint.clone())]
                .into_iter()
                .collect(),
        }
    }
}

pub async fn cem() -> Cem {
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
    let own = node.clone();
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
        websocket_router(endpoint.clone(), "/s2", move |node, socket| {
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
    let ca_fingerprint = s2_kit::connect::tls::Fingerprint::of(&identity.ca).to_hex();
    tokio::spawn(async move {
        let _ = serve(listener, config, app, std::future::pending()).await;
    });
    store.open_for_pairing(
        id,
        PairingToken::parse("A1b2C3d4", TokenKind::Static).unwrap(),
    );
    Cem {
        id,
        node: own,
        base,
        accepted,
        store,
        ca_fingerprint,
        endpoint,
    }
}

async fn socket_until_closed(socket: &mut s2_kit::connect::server::ServerSocket) -> Option<()> {
    use s2_kit::io::TextTransport as _;
    while socket.recv_text().await.ok()?.is_some() {}
    Some(())
}

pub fn battery() -> NodeSpec {
    NodeSpec {
        device: "battery1".into(),
        name: "Garage battery".into(),
        brand: "Victron".into(),
        model: "MultiPlus-II".into(),
        kind: "battery".into(),
    }
}

pub fn target(cem: &Cem) -> PairTarget {
    PairTarget {
        url: cem.base.clone(),
        deployment: Deployment::Lan,
    }
}

/// A client link fed by `initiator`, with the RM side up so it dials.
pub async fn link(initiator: Initiator) -> (CancellationToken, s2gw_core::EndpointPeer) {
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

pub async fn accepted(cem: &mut Cem) -> NodeId {
    tokio::time::timeout(Duration::from_secs(10), cem.accepted.recv())
        .await
        .expect("the CEM accepted no WebSocket")
        .unwrap()
}
