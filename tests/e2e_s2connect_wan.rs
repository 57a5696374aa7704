//! End to end: a WAN gateway (`[s2connect] deployment = "wan"`) as the S2 Connect
//! communication server. The daemon runs as a process; the CEM is s2-kit's connect
//! client in a LAN deployment: it pairs with the daemon's pairing server as a WAN
//! endpoint (certificate verified against the platform's trust store, challenge bound to
//! the domain name), initiates sessions at the daemon, and dials its wss:// S2 server with
//! the single-use token, where a `CemSession` meets the battery.
//!
//! The test's CA is the trust store: `SSL_CERT_FILE` is set before anything else runs,
//! which is why this file holds one test and builds its runtime by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, Pki, acme_hub, free_port, pairing_url, s2gw, text};
use s2_kit::connect::client::{Error as ClientError, Session};
use s2_kit::connect::proto::{
    AccessToken, COMMUNICATION_TOKEN_LIFETIME, ConnectError, ConnectionDetails, Deployment,
    EndpointDescription, HmacBinding, NextStep, NodeDescription, Pairing, PairingAccepted,
    PairingClient, PairingCode, Role, TokenKind, TokenStore,
};
use s2_kit::connect::tls::{TlsClient, TlsPolicy};
use s2_kit::io::{Driver, WebSocket};
use s2_kit::session::{CemConfig, CemEvent, CemSession};
use s2_kit::types::Timestamp;
use tokio::sync::mpsc;

const SOON: Duration = Duration::from_secs(20);

/// Both ports fixed: the URLs a pairing hands out must still be right after a restart.
fn config(state: &Path, pki: &Pki, s2_port: u16, pairing_port: u16) -> String {
    format!(
        "[gateway]\nname = \"s2gw-wan\"\nstate_dir = \"{state}\"\nlog_level = \"info\"\n\n\
         [server]\nlisten = \"127.0.0.1:{s2_port}\"\ntls_cert_file = \"{cert}\"\n\
         tls_key_file = \"{key}\"\n\n\
         [s2connect]\ndeployment = \"wan\"\ndomain = \"localhost\"\n\
         listen = \"127.0.0.1:{pairing_port}\"\n\
         tls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"\n\n\
         [cem.hub]\ntransport = \"s2connect\"\n\n\
         [[device]]\nid = \"battery\"\ncem = \"hub\"\npoll_interval_s = 1\n\
         measurement_interval_s = 1\nprofile = \"sim-battery\"\n[device.sim]\n\
         model = \"battery\"\ninitial_soc = 50\n",
        state = state.display(),
        cert = pki.cert.display(),
        key = pki.key.display(),
    )
}

/// The LAN CEM's side of pairing, one request at a time with s2-kit's state machine.
///
/// Not s2-kit 0.3.0's `Pairing::wan`: that driver passes the *server's* WAN deployment
/// to the machine as its own, so a LAN CEM would count as WAN and insist on posting its
/// own connection details (the WAN–WAN rule). Told the truth, the machine asks for the
/// RM's, as `S2C §Mapping the CEM and RM to communication server or client` says.
async fn pair_as_lan_cem(url: &str, hub: &NodeDescription, code: &str) -> Pairing {
    let tls = TlsClient::new(&TlsPolicy::Web).unwrap().config();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured((*tls).clone())
        .build()
        .unwrap();
    let post = |operation: &'static str, bearer: Option<String>, body: serde_json::Value| {
        let mut request = http.post(format!("{url}{operation}")).json(&body);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        async move {
            let response = request.send().await.unwrap();
            assert!(
                response.status().is_success(),
                "{operation}: {}",
                response.status()
            );
            response.text().await.unwrap()
        }
    };
    let lan = EndpointDescription {
        deployment: Some(Deployment::Lan),
        ..EndpointDescription::default()
    };
    let code = PairingCode::parse(code, TokenKind::Dynamic).unwrap();
    let now = Timestamp::now();
    let mut machine = PairingClient::start(hub.clone(), lan, code, now);
    let request = machine.request_pairing(&[9u8; 32]).unwrap();
    let answer = post(
        "requestPairing",
        None,
        serde_json::to_value(&request).unwrap(),
    )
    .await;
    let accepted: PairingAccepted = serde_json::from_str(&answer).unwrap();
    let binding = HmacBinding::DomainName("localhost".into());
    let next = machine
        .accept(accepted, binding, Deployment::Lan, now)
        .unwrap();
    assert_eq!(
        next,
        NextStep::RequestConnectionDetails,
        "the WAN RM serves"
    );
    let bearer = machine.attempt_id().unwrap().as_str().to_string();
    let ask = serde_json::to_value(machine.request_connection_details().unwrap()).unwrap();
    let answer = post("requestConnectionDetails", Some(bearer.clone()), ask).await;
    let details: ConnectionDetails = serde_json::from_str(&answer).unwrap();
    machine.connection_details(details, now).unwrap();
    let (finalize, pairing) = machine.finalize(now).unwrap();
    post(
        "finalizePairing",
        Some(bearer),
        serde_json::to_value(finalize).unwrap(),
    )
    .await;
    pairing
}

/// Dial the WebSocket the initiation named, run a CEM session on it, and return the
/// resource that described itself (the session keeps running in the background until
/// the returned sender is dropped).
async fn meet(url: &str, token: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    let socket = WebSocket::connect_with_policy(url, Some(token), &TlsPolicy::Web)
        .await
        .unwrap();
    let (described, mut seen) = mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut cem = CemSession::new(CemConfig::default());
        cem.open(Timestamp::now());
        let mut driver = Driver::new(socket);
        let run = driver.run(&mut cem, |event, _| {
            if let CemEvent::ResourceDescribed(details) = event {
                let _ = described.send(details.resource_id.to_string());
            }
        });
        tokio::select! {
            _ = run => {}
            _ = stopped => {}
        }
    });
    let resource = tokio::time::timeout(SOON, seen.recv())
        .await
        .expect("the battery did not describe itself")
        .unwrap();
    (resource, stop)
}

/// The CEM's connection to `resource` ended, as the daemon saw it: the event on which
/// the RM runs its fail-safe release (rule 1).
async fn link_lost(daemon: &mut Daemon, resource: &str) {
    daemon
        .wait_log(
            "the CEM link lost",
            |l| l.contains("peer disconnected") && l.contains(resource),
            SOON,
        )
        .await;
}

/// The status an upgrade was refused with.
async fn refused_with(url: &str, token: &str) -> String {
    match WebSocket::connect_with_policy(url, Some(token), &TlsPolicy::Web).await {
        Ok(_) => panic!("an upgrade that had to be refused was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_lan_cem_pairs_with_a_wan_gateway_initiates_sessions_at_it_and_dials_in_with_single_use_tokens()
{
    let pki = Pki::localhost();
    // SAFETY: no other thread exists yet (this file's only test, before the runtime).
    unsafe { std::env::set_var("SSL_CERT_FILE", &pki.ca) };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(150), wan_path(&pki))
                .await
                .expect("the WAN path took too long");
        });
}

async fn wan_path(pki: &Pki) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("s2gw.toml");
    let config = config(&state, pki, free_port(), free_port());
    std::fs::write(&file, &config).unwrap();
    let file = file.to_str().unwrap();
    let check = s2gw(&["check", "-c", file]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("not paired yet: let the CEM pair using `s2gw pairing-code battery`"),
        "{}",
        text(&check)
    );
    // A WAN gateway is paired by the CEM, not the other way round.
    let pair = s2gw(&[
        "pair",
        "battery",
        "--cem",
        "https://hems.example/v1/",
        "--code",
        "hub7-A1b2C3d4",
        "-c",
        file,
    ]);
    assert!(!pair.status.success());
    assert!(text(&pair).contains("s2gw pairing-code"), "{}", text(&pair));

    let mut daemon = Daemon::start(&config);
    let url = pairing_url(&mut daemon).await;
    let issued = s2gw(&["pairing-code", "battery", "-c", file]);
    assert!(issued.status.success(), "{}", text(&issued));
    let code = String::from_utf8_lossy(&issued.stdout).trim().to_string();

    // The LAN CEM pairs: the WAN gateway is the communication server (6A).
    let hub = acme_hub();
    let pairing = pair_as_lan_cem(&url, &hub, &code).await;
    assert_eq!(pairing.communication_server, Role::Rm);
    assert_eq!(pairing.details.initiate_session_url, url);
    let node_id = std::fs::read_to_string(state.join("s2connect/battery.node-id")).unwrap();
    assert_eq!(pairing.remote.id.to_string(), node_id.trim());
    let first_token = pairing.details.access_token.as_str().to_string();
    let listed = s2gw(&["pairings", "-c", file]);
    assert!(text(&listed).contains("CEM dials in"), "{}", text(&listed));
    assert!(!text(&listed).contains(&first_token), "{}", text(&listed));

    // Session initiation at the gateway, then the single-use token opens the battery.
    let mut session = Session::new(
        &url,
        &TlsPolicy::Web,
        hub.id,
        pairing.remote.id,
        TokenStore::new(pairing.details.access_token.clone()),
    )
    .unwrap();
    let credentials = session.initiate(Timestamp::now()).await.unwrap();
    assert!(
        credentials.websocket_url.ends_with("/s2/connect"),
        "{}",
        credentials.websocket_url
    );
    let token = credentials.websocket_token.as_str().to_string();
    let (resource, stop) = meet(&credentials.websocket_url, &token).await;
    // Used once: a replay is refused, and so is a token never issued.
    let replay = refused_with(&credentials.websocket_url, &token).await;
    assert!(replay.contains("401"), "{replay}");
    let forged = refused_with(&credentials.websocket_url, "bm90IGEgdG9rZW4=").await;
    assert!(forged.contains("401"), "{forged}");
    drop(stop);
    link_lost(&mut daemon, &resource).await;

    // Killed and restarted: the rotated token still initiates, no pairing again.
    daemon.kill();
    drop(daemon);
    let mut daemon = Daemon::start(&config);
    let _ = pairing_url(&mut daemon).await;
    // A WebSocket token is good for 30 s: one left unused that long is refused. (The
    // wait is the behaviour under test, not a synchronisation.)
    let unused = session.initiate(Timestamp::now()).await.unwrap();
    let lifetime = Duration::from_millis(COMMUNICATION_TOKEN_LIFETIME.as_millis());
    tokio::time::sleep(lifetime + Duration::from_secs(1)).await;
    let expired = refused_with(&unused.websocket_url, unused.websocket_token.as_str()).await;
    assert!(expired.contains("401"), "{expired}");
    let credentials = session.initiate(Timestamp::now()).await.unwrap();
    let (again, stop) = meet(
        &credentials.websocket_url,
        credentials.websocket_token.as_str(),
    )
    .await;
    assert_eq!(again, resource);

    // The CEM unpairs and drops its session: the link is lost (fail-safe rule 1's
    // event) and the next initiation, with the tokens it held, is refused.
    let held = session.tokens().clone();
    session.unpair().await.unwrap();
    drop(stop);
    daemon
        .wait_log(
            "the unpairing",
            |l| l.contains("unpaired (the CEM unpaired)"),
            SOON,
        )
        .await;
    link_lost(&mut daemon, &resource).await;
    let mut stale = Session::new(&url, &TlsPolicy::Web, hub.id, pairing.remote.id, held).unwrap();
    // Every held token answered 401: s2-kit's client calls that NotPaired.
    match stale.initiate(Timestamp::now()).await {
        Err(ClientError::Protocol(ConnectError::NotPaired)) => {}
        other => panic!("initiation after unpair: {other:?}"),
    }
    let listed = s2gw(&["pairings", "-c", file]);
    assert!(text(&listed).contains("not paired"), "{}", text(&listed));

    // A WAN CEM would serve sessions itself (WAN-WAN), which a WAN gateway does not
    // support: refused before the pairing completes, nothing stored.
    let again = s2gw(&["pairing-code", "battery", "-c", file]);
    let again = String::from_utf8_lossy(&again.stdout).trim().to_string();
    let wan = EndpointDescription {
        deployment: Some(Deployment::Wan),
        ..EndpointDescription::default()
    };
    let own = ConnectionDetails {
        initiate_session_url: "https://cem.example/v1/".into(),
        access_token: AccessToken::from_entropy(&[3u8; 32]).unwrap(),
        certificate_fingerprint: [("SHA256".into(), "00".repeat(32))].into_iter().collect(),
    };
    let refused = s2_kit::connect::client::Pairing::wan(&url, acme_hub(), wan)
        .unwrap()
        .run_with_entropy(
            PairingCode::parse(&again, TokenKind::Dynamic).unwrap(),
            Timestamp::now(),
            &[8u8; 32],
            Some(own),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("IncompatibleCommunicationProtocols"),
        "{refused}"
    );
    let listed = s2gw(&["pairings", "-c", file]);
    assert!(text(&listed).contains("not paired"), "{}", text(&listed));
    let secret = code.split_once('-').unwrap().1.to_string();
    for line in daemon.logs() {
        assert!(!line.contains(&first_token), "an access token in the log");
        assert!(!line.contains(&token), "a WebSocket token in the log");
        assert!(!line.contains(&secret), "the pairing code in the log");
    }
    daemon.assert_running();
}
