//! A CEM built on s2-kit's S2 Connect server, LAN or WAN: pairing and session
//! initiation over TLS, S2 over wss admitting only the single-use tokens its session
//! service issued, and a `CemSession` on every socket.

use std::sync::Arc;
use std::time::Duration;

use s2_kit::connect::client::Pairing;
use s2_kit::connect::proto::{
    AccessToken, ConnectionDetails, Deployment, EndpointDescription, NodeDescription, NodeId,
    NodeIdAlias, PairingCode, PairingToken, Role, TokenKind, TokenStore,
};
use s2_kit::connect::server::{
    Endpoint, LocalSubnets, Memory, PairedNode, PairingService, SessionService, Store as _,
    lan_router, router, serve, websocket_router,
};
use s2_kit::connect::tls::SelfSignedEndpoint;
use s2_kit::io::Driver;
use s2_kit::session::{CemConfig, CemEvent, CemSession};
use s2_kit::types::Timestamp;
use tokio::sync::{Notify, mpsc};

use super::daemon::Daemon;
use super::pki::Pki;

/// The pairing code the CEM's UI "shows" (alias `hub7`).
pub const CEM_CODE: &str = "hub7-A1b2C3d4";

const SOON: Duration = Duration::from_secs(20);

/// The CEM: which node each accepted socket belongs to and which resources described
/// themselves; `kick` drops every open socket.
pub struct ConnectCem {
    /// Its node id.
    pub id: NodeId,
    node: NodeDescription,
    /// Its pairing and session-initiation base URL.
    pub base: String,
    /// The first access token it hands a pairing (a secret no log may show).
    pub access_token: String,
    described: mpsc::UnboundedReceiver<(NodeId, String)>,
    /// Notify to drop every open socket.
    pub kick: Arc<Notify>,
    store: Arc<Memory>,
    ca_fingerprint: String,
}

/// Where the CEM runs and what certificate it serves.
pub enum CemDeployment<'a> {
    /// A LAN CEM: a self-signed CA, pinned by the gateway at pairing.
    Lan,
    /// A WAN CEM: the leaf of `Pki`, verified by the platform's trust store, the
    /// challenge bound to `localhost`.
    Wan(&'a Pki),
}

/// A CEM node, "Acme Home hub", with a fresh id.
pub fn acme_hub() -> NodeDescription {
    NodeDescription {
        id: NodeId::generate(),
        brand: "Acme".into(),
        logo_url: None,
        kind: "CEM".into(),
        model_name: "Home hub".into(),
        user_defined_name: None,
        role: Role::Cem,
    }
}

/// A CEM on s2-kit's S2 Connect server at `https://localhost:<port>/v1/`, open for pairing
/// with the code [`CEM_CODE`]; the communication server either way (LAN–LAN and WAN CEM).
pub async fn connect_cem(deployment: CemDeployment<'_>) -> ConnectCem {
    let lan_identity = SelfSignedEndpoint::generate(["localhost".into()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = format!("https://localhost:{port}/v1/");
    let store = Memory::new();
    let node = acme_hub();
    let id = node.id;
    let own = node.clone();
    store.add_node(node, Some(NodeIdAlias::parse("hub7").unwrap()));
    let access = AccessToken::from_entropy(&[7u8; 32]).unwrap();
    let access_token = access.as_str().to_string();
    let described_as = |deployment| EndpointDescription {
        name: Some("Acme hub".into()),
        logo_url: None,
        deployment: Some(deployment),
    };
    let details = ConnectionDetails {
        initiate_session_url: base.clone(),
        access_token: access,
        certificate_fingerprint: [("SHA256".into(), lan_identity.leaf.to_hex())]
            .into_iter()
            .collect(),
    };
    let lan = matches!(deployment, CemDeployment::Lan);
    let (pairing, config) = match deployment {
        CemDeployment::Lan => (
            PairingService::lan(
                store.clone(),
                described_as(Deployment::Lan),
                lan_identity.leaf,
            ),
            lan_identity.server_config().unwrap(),
        ),
        CemDeployment::Wan(pki) => (
            PairingService::wan(store.clone(), described_as(Deployment::Wan), "localhost"),
            pki.server_config(),
        ),
    };
    let pairing = Arc::new(pairing.with_connection_details(details));
    let sessions = Arc::new(SessionService::new(
        store.clone(),
        format!("wss://localhost:{port}/s2"),
    ));
    let endpoint = Endpoint::new(pairing, sessions);
    let (tx, described) = mpsc::unbounded_channel();
    let kick = Arc::new(Notify::new());
    let kicked = kick.clone();
    // A WAN endpoint has no LAN-only operations.
    let api = if lan {
        lan_router(endpoint.clone(), LocalSubnets::detect().unwrap())
    } else {
        router(endpoint.clone())
    };
    let app = api.merge(websocket_router(endpoint, "/s2", move |node, socket| {
        let (tx, kicked) = (tx.clone(), kicked.clone());
        async move {
            let mut cem = CemSession::new(CemConfig::default());
            cem.open(Timestamp::now());
            let mut driver = Driver::new(socket);
            let run = driver.run(&mut cem, |event, _| {
                if let CemEvent::ResourceDescribed(details) = event {
                    let _ = tx.send((node, details.resource_id.to_string()));
                }
            });
            tokio::select! {
                _ = run => {}
                () = kicked.notified() => {}
            }
        }
    }));
    let ca_fingerprint = s2_kit::connect::tls::Fingerprint::of(&lan_identity.ca).to_hex();
    tokio::spawn(async move {
        let _ = serve(listener, config, app, std::future::pending()).await;
    });
    store.open_for_pairing(
        id,
        PairingToken::parse("A1b2C3d4", TokenKind::Static).unwrap(),
    );
    ConnectCem {
        id,
        node: own,
        base,
        access_token,
        described,
        kick,
        store,
        ca_fingerprint,
    }
}

impl ConnectCem {
    /// The next resource that described itself, with the node whose socket it came on.
    pub async fn next_described(&mut self) -> (NodeId, String) {
        tokio::time::timeout(SOON, self.described.recv())
            .await
            .expect("no resource described itself to the CEM")
            .unwrap()
    }

    /// Pair as a client with the gateway's pairing server at `url`, as the communication
    /// server (LAN–LAN, the CEM serves), and keep the pairing the way a CEM product would.
    pub async fn pair_with(&self, url: &str, code: &str) {
        let code = PairingCode::parse(code, TokenKind::Dynamic).unwrap();
        let details = ConnectionDetails {
            initiate_session_url: self.base.clone(),
            access_token: AccessToken::from_entropy(&[5u8; 32]).unwrap(),
            certificate_fingerprint: [("SHA256".into(), self.ca_fingerprint.clone())]
                .into_iter()
                .collect(),
        };
        let paired = Pairing::lan(url, self.node.clone(), EndpointDescription::default())
            .unwrap()
            .run_with_entropy(code, Timestamp::now(), &[4u8; 32], Some(details.clone()))
            .await
            .unwrap();
        self.store.pair(PairedNode {
            local: self.id,
            remote: paired.pairing.remote.clone(),
            tokens: TokenStore::new(details.access_token),
            details: None,
        });
    }
}

/// The daemon's pairing server URL, from its log (it may listen on port 0), at
/// `localhost`, the name the test certificates carry.
pub async fn pairing_url(daemon: &mut Daemon) -> String {
    let line = daemon
        .wait_log(
            "the pairing server",
            |l| l.contains("pairing server listening"),
            SOON,
        )
        .await;
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap();
    format!("https://localhost:{port}/v1/")
}
