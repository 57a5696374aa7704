//! The gateway as pairing server: s2-kit's pairing client, as a LAN CEM that is the
//! communication server, pairs with a resource using the code `s2gw pairing-code`
//! issues; the gateway then initiates sessions with it like after `s2gw pair`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Cem, accepted, battery, cem, link};
use s2_kit::connect::client::{Error as ClientError, LanClient, Pairing};
use s2_kit::connect::proto::{
    AccessToken, ConnectError, EndpointDescription, PairingCode, TokenKind, TokenStore,
};
use s2_kit::connect::server::{PairedNode, Store as _};
use s2_kit::types::Timestamp;
use s2gw_core::CancellationToken;
use s2gw_s2connect::{
    IdentitySource, Initiator, NodeStore, PairedEvents, PairingCodes, PairingFile,
    PairingServerConfig, RunningPairingServer, start_pairing_server,
};
use s2gw_ws::{ClientConfig, DialSource, DialTarget, spawn_client};

struct Gateway {
    state: tempfile::TempDir,
    server: RunningPairingServer,
    _shutdown: CancellationToken,
}

impl Gateway {
    fn url(&self) -> String {
        format!("https://localhost:{}/v1/", self.server.addr.port())
    }

    fn codes(&self) -> PairingCodes {
        PairingCodes::new(self.state.path(), "battery1", "battery1")
    }
}

async fn gateway() -> Gateway {
    gateway_announcing(PairedEvents::default()).await
}

/// The gateway's pairing server, announcing its pairings on `paired`.
async fn gateway_announcing(paired: PairedEvents) -> Gateway {
    let state = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let server = start_pairing_server(
        PairingServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            identity: IdentitySource::SelfSigned {
                names: vec!["localhost".into(), "127.0.0.1".into()],
            },
            state_dir: state.path().to_path_buf(),
            name: "garage gateway".into(),
            nodes: vec![battery()],
            paired,
            wan: None,
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    Gateway {
        state,
        server,
        _shutdown: shutdown,
    }
}

/// The CEM pairs as a client with `code`, offering its own connection details, and
/// keeps the pairing in its store the way a CEM product would.
async fn cem_pairs(cem: &Cem, gateway: &Gateway, code: &str) -> Result<(), ClientError> {
    cem_pairs_offering(cem, gateway, code, cem.details()).await
}

async fn cem_pairs_offering(
    cem: &Cem,
    gateway: &Gateway,
    code: &str,
    details: s2_kit::connect::proto::ConnectionDetails,
) -> Result<(), ClientError> {
    let code = PairingCode::parse(code, TokenKind::Dynamic).unwrap();
    let paired = Pairing::lan(
        &gateway.url(),
        cem.node.clone(),
        EndpointDescription::default(),
    )?
    .run_with_entropy(code, Timestamp::now(), &[3u8; 32], Some(details.clone()))
    .await?;
    cem.store.pair(PairedNode {
        local: cem.id,
        remote: paired.pairing.remote.clone(),
        tokens: TokenStore::new(details.access_token),
        details: None,
    });
    Ok(())
}

fn is_busy(err: &ClientError) -> bool {
    matches!(err, ClientError::Http { status, .. } if status.is_busy())
}

#[tokio::test]
async fn a_cem_pairs_with_a_code_and_the_gateway_initiates_its_sessions() {
    let gateway = gateway().await;
    let mut cem = cem().await;
    let issued = gateway.codes().issue(Duration::from_secs(60)).unwrap();
    assert!(issued.code.starts_with("battery1-"), "{}", issued.code);

    cem_pairs(&cem, &gateway, &issued.code).await.unwrap();

    // Stored like any pairing: 0600, the CEM's node, no token in the summary; the CA
    // known by the fingerprint the CEM sent until the first session pins it.
    let file = PairingFile::new(gateway.state.path(), "battery1");
    let summaries = file.summaries().unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].cem_id, cem.id.to_string());
    assert!(
        summaries[0].trust.starts_with("CA fingerprint"),
        "{summaries:?}"
    );
    let secret = AccessToken::from_entropy(&[9u8; 32]).unwrap();
    assert!(!format!("{summaries:?}").contains(secret.as_str()));
    // Single use: the code is gone.
    assert!(!gateway.codes().path().exists());

    let node_id = NodeStore::new(gateway.state.path())
        .node_id("battery1")
        .unwrap();
    let (shutdown, _peer) = link(Initiator::new(gateway.state.path(), "battery1")).await;
    assert_eq!(accepted(&mut cem).await, node_id);
    shutdown.cancel();
    assert_eq!(file.summaries().unwrap()[0].trust, "pinned CA");

    // A restart: the same state, a new session without pairing again.
    let (shutdown, _peer) = link(Initiator::new(gateway.state.path(), "battery1")).await;
    assert_eq!(accepted(&mut cem).await, node_id);
    shutdown.cancel();
}

#[tokio::test]
async fn a_used_code_cannot_pair_again() {
    let gateway = gateway().await;
    let cem = cem().await;
    let issued = gateway.codes().issue(Duration::from_secs(60)).unwrap();
    cem_pairs(&cem, &gateway, &issued.code).await.unwrap();
    let err = cem_pairs(&cem, &gateway, &issued.code).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("NoValidPairingTokenOnPairingServer"),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_attempt_within_the_rate_limit_is_told_to_come_back_and_keeps_the_code() {
    let gateway = gateway().await;
    let cem = cem().await;
    let issued = gateway.codes().issue(Duration::from_secs(60)).unwrap();
    let err = cem_pairs(&cem, &gateway, "battery1-WrongCode1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Protocol(ConnectError::ChallengeFailed)),
        "{err}"
    );
    // S2 Connect allows one attempt per node and second: at once, "try again soon".
    let err = cem_pairs(&cem, &gateway, &issued.code).await.unwrap_err();
    assert!(is_busy(&err), "{err}");
    // The refused attempt did not use the code: once the second is over, it pairs.
    loop {
        match cem_pairs(&cem, &gateway, &issued.code).await {
            // The rate limit's second has no event to await: ask again every 100 ms.
            Err(err) if is_busy(&err) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => break other.unwrap(),
        }
    }
    let file = PairingFile::new(gateway.state.path(), "battery1");
    assert_eq!(file.load().unwrap().len(), 1);
}

#[tokio::test]
async fn a_wrong_code_fails_the_challenge_and_nothing_is_stored() {
    let gateway = gateway().await;
    let cem = cem().await;
    gateway.codes().issue(Duration::from_secs(60)).unwrap();
    let err = cem_pairs(&cem, &gateway, "battery1-WrongCode1")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Protocol(ConnectError::ChallengeFailed)),
        "{err}"
    );
    let file = PairingFile::new(gateway.state.path(), "battery1");
    assert!(file.load().unwrap().is_empty());
}

#[tokio::test]
async fn without_a_code_or_with_an_expired_one_the_gateway_refuses_to_pair() {
    let gateway = gateway().await;
    let cem = cem().await;
    let err = cem_pairs(&cem, &gateway, "battery1-Anything1")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("NoValidPairingTokenOnPairingServer"),
        "{err}"
    );
    let expired = gateway.codes().issue(Duration::ZERO).unwrap();
    let err = cem_pairs(&cem, &gateway, &expired.code).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("NoValidPairingTokenOnPairingServer"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unknown_alias_is_node_not_found() {
    let gateway = gateway().await;
    let cem = cem().await;
    gateway.codes().issue(Duration::from_secs(60)).unwrap();
    let err = cem_pairs(&cem, &gateway, "heatpump-Anything1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NodeNotFound"), "{err}");
}

#[tokio::test]
async fn the_lan_listing_shows_every_hosted_node_with_its_stable_id() {
    let gateway = gateway().await;
    let lan = LanClient::new(&gateway.url()).unwrap();
    let endpoint = lan.endpoint().await.unwrap();
    assert_eq!(endpoint.name.as_deref(), Some("garage gateway"));
    let nodes = lan.nodes().await.unwrap();
    let node_id = NodeStore::new(gateway.state.path())
        .node_id("battery1")
        .unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].id, node_id);
    assert_eq!(nodes[0].brand, "Victron");
    assert_eq!(nodes[0].model_name, "MultiPlus-II");
}

#[tokio::test]
async fn connection_details_without_the_cas_fingerprint_are_refused_before_anything_is_stored() {
    let gateway = gateway().await;
    let cem = cem().await;
    let issued = gateway.codes().issue(Duration::from_secs(60)).unwrap();
    let mut details = cem.details();
    details.certificate_fingerprint.clear();
    let err = cem_pairs_offering(&cem, &gateway, &issued.code, details)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("certificateFingerprint.SHA256 is required"),
        "{err}"
    );
    let file = PairingFile::new(gateway.state.path(), "battery1");
    assert!(file.load().unwrap().is_empty());
    assert!(gateway.codes().path().exists(), "the code was not used up");
}

/// The initiator, reporting each dial's outcome.
#[derive(Debug)]
struct Watched {
    inner: Initiator,
    outcomes: tokio::sync::mpsc::UnboundedSender<Result<(), String>>,
}

#[async_trait::async_trait]
impl DialSource for Watched {
    async fn next_dial(&self) -> Result<DialTarget, String> {
        let result = self.inner.next_dial().await;
        let _ = self
            .outcomes
            .send(result.as_ref().map(|_| ()).map_err(Clone::clone));
        result
    }

    async fn changed(&self) {
        self.inner.changed().await;
    }
}

#[tokio::test]
async fn a_pairing_made_by_the_gateways_server_is_dialled_at_once_not_at_the_next_backoff() {
    let paired = PairedEvents::default();
    let gateway = gateway_announcing(paired.clone()).await;
    let mut cem = cem().await;

    // The link dials before there is a pairing, fails, and would wait a minute.
    let (outcomes, mut dialled) = tokio::sync::mpsc::unbounded_channel();
    let source = Watched {
        inner: Initiator::new(gateway.state.path(), "battery1").with_paired_events(paired),
        outcomes,
    };
    let (endpoint, peer) = s2gw_core::Endpoint::pair(64);
    let link_shutdown = CancellationToken::new();
    let config = ClientConfig {
        source: Some(Arc::new(source)),
        backoff: (Duration::from_secs(60), Duration::from_secs(60)),
        ..ClientConfig::default()
    };
    spawn_client(config, "r1".into(), endpoint, link_shutdown.clone());
    peer.tx.send(s2gw_core::BusEvent::Up).await.unwrap();
    let first = dialled.recv().await.unwrap();
    assert!(first.unwrap_err().contains("not paired"));

    let issued = gateway.codes().issue(Duration::from_secs(60)).unwrap();
    cem_pairs(&cem, &gateway, &issued.code).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), dialled.recv())
        .await
        .expect("the link waited for its back-off");
    assert_eq!(next.unwrap(), Ok(()));
    let node_id = NodeStore::new(gateway.state.path())
        .node_id("battery1")
        .unwrap();
    assert_eq!(accepted(&mut cem).await, node_id);
    link_shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browse_for_rms_finds_the_advertised_pairing_server_with_its_node_ids() {
    let gateway = gateway().await;
    let instance = format!(
        "garage gateway {}",
        s2_kit::connect::proto::NodeId::generate()
    );
    let on_loopback = s2gw_s2connect::Interfaces::Named(vec!["lo".into()]);
    let _advertised = s2gw_s2connect::advertise(&s2gw_s2connect::AdvertiseSpec {
        instance: instance.clone(),
        host: "garage-gateway".into(),
        port: gateway.server.addr.port(),
        interfaces: on_loopback.clone(),
    })
    .unwrap();

    let found = s2gw_s2connect::discover(&s2gw_s2connect::BrowseSpec {
        role: s2_kit::connect::proto::Role::Rm,
        interfaces: on_loopback,
        window: Duration::from_secs(30),
        only: Some(instance.clone()),
    })
    .await
    .unwrap();

    let [endpoint] = found.as_slice() else {
        panic!("one endpoint, found {found:?}");
    };
    assert_eq!(endpoint.name.as_deref(), Some(instance.as_str()));
    assert_eq!(
        endpoint.pairing_url.as_deref(),
        Some(format!("https://127.0.0.1:{}/v1/", gateway.server.addr.port()).as_str()),
        "the advertised garage-gateway.local, at the address it resolved to"
    );
    let ids: Vec<_> = endpoint
        .nodes
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.id)
        .collect();
    let battery = NodeStore::new(gateway.state.path())
        .node_id("battery1")
        .unwrap();
    assert_eq!(ids, vec![battery]);
}
