//! The gateway's pairing server: a CEM pairs with the gateway's resources.
//!
//! s2-kit's LAN endpoint ([`server::lan_router`]) over TLS, with a [`StateStore`] behind
//! it. The operations a LAN endpoint answers: `requestPairing`, `postConnectionDetails`
//! (the CEM is the communication server), `finalizePairing`, and the LAN-only endpoint
//! and node listing, `preparePairing` / `cancelPreparePairing` and `waitForPairing`, the
//! last four to same-subnet peers only. `requestConnectionDetails` is refused with
//! `IncompatibleCommunicationProtocols`: a LAN RM is never the communication server.
//!
//! A WAN gateway ([`WanServing`]) is a WAN endpoint instead: no LAN-only operation (they
//! answer 404), its challenge response bound to its domain name, and it is the
//! communication server for a LAN CEM: `requestConnectionDetails` answers its
//! session-initiation URL and a token minted for the pairing, `initiateSession` and
//! `confirmAccessToken` rotate that token, and the single-use WebSocket token they issue
//! is checked by [`SessionDoor`] on the S2 WebSocket server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use s2gw_core::CancellationToken;
use s2gw_core::s2::connect::server::{
    self, Endpoint, LocalSubnets, PairingService, PrepareSignal, SessionService, Store as _,
};
use s2gw_core::s2::connect::{
    AccessToken, ConnectionDetails, Deployment, EndpointDescription, Fingerprint, Timestamp,
};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::codes::aliases;
use crate::events::PairedEvents;
use crate::hosted::{Hosted, MintedTokens, StateStore};
use crate::identity::{Identity, IdentitySource};
use crate::node::{NodeSpec, NodeStore};
use crate::store::StoreError;

/// What the pairing server needs.
#[derive(Debug, Clone)]
pub struct PairingServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Its certificate.
    pub identity: IdentitySource,
    /// The gateway's state directory.
    pub state_dir: PathBuf,
    /// The endpoint's name, shown by the CEM (the gateway's name).
    pub name: String,
    /// The resources it hosts, in config order (their aliases follow it).
    pub nodes: Vec<NodeSpec>,
    /// Where it announces each pairing it stores.
    pub paired: PairedEvents,
    /// Set for a WAN gateway, which serves sessions.
    pub wan: Option<WanServing>,
}

/// What a WAN gateway tells the CEMs it serves.
#[derive(Debug, Clone)]
pub struct WanServing {
    /// The domain name its certificate carries (what the challenge response binds); the
    /// session-initiation URL is `https://<domain>:<listen port>/v1/`.
    pub domain: String,
    /// The WebSocket URL a CEM dials with its single-use token.
    pub websocket_url: String,
}

/// Why the pairing server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A state file (node id, certificate) is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("s2connect.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reason.
        source: std::io::Error,
    },
    /// The certificate and key do not make a TLS configuration.
    #[error("s2connect TLS: {0}")]
    Tls(String),
    /// The machine's interfaces could not be listed (for the same-subnet check).
    #[error("cannot list the network interfaces for the LAN-only operations: {0}")]
    Subnets(std::io::Error),
}

/// A running pairing server.
#[derive(Debug)]
pub struct RunningPairingServer {
    /// The address it listens on (the real port when `listen` had port 0).
    pub addr: SocketAddr,
    /// The fingerprint of the leaf it serves (what a CEM's challenge response binds).
    pub leaf: Fingerprint,
    /// Ends when the shutdown token is cancelled.
    pub task: JoinHandle<()>,
    /// A WAN gateway's check of the WebSocket tokens it issues.
    pub sessions: Option<SessionDoor>,
}

/// Which resource a single-use WebSocket token opens, for a WAN gateway's S2 server.
#[derive(Debug, Clone)]
pub struct SessionDoor {
    sessions: Arc<SessionService>,
    store: Arc<StateStore>,
}

impl SessionDoor {
    /// The device whose CEM presented `token`, consuming it: each is good for one
    /// connection within 30 s of `confirmAccessToken`.
    pub fn device_for(&self, token: &str) -> Option<String> {
        let remote = self
            .sessions
            .authorize_connection(token, Timestamp::now())?;
        let Some(local) = self.store.paired(remote).map(|p| p.local) else {
            // Unpaired between confirmAccessToken and the upgrade.
            warn!(cem = %remote, "WebSocket refused: the CEM is no longer paired");
            return None;
        };
        let device = self.store.hosted(local)?.device.clone();
        info!(%device, cem = %remote, "the CEM's WebSocket token is valid");
        Some(device)
    }
}

/// Start serving until `shutdown`.
pub async fn start_pairing_server(
    config: PairingServerConfig,
    shutdown: CancellationToken,
) -> Result<RunningPairingServer, ServerError> {
    let identity = Identity::load(&config.state_dir, &config.identity)?;
    let tls = identity.server_config().map_err(ServerError::Tls)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    // The bound port: `listen` may have asked for any free one.
    let initiate_session_url = config
        .wan
        .as_ref()
        .map(|w| format!("https://{}:{}/v1/", w.domain, addr.port()));
    let store = Arc::new(StateStore::new(
        &config.state_dir,
        hosted(&config),
        config.paired.clone(),
        initiate_session_url.clone(),
    ));
    let (router, sessions) = match (&config.wan, initiate_session_url) {
        (Some(wan), Some(url)) => {
            let (router, door) = wan_endpoint(&config, wan, url, store);
            (router, Some(door))
        }
        _ => (lan_endpoint(&config, store, &identity)?, None),
    };
    let router = router.layer(axum::middleware::from_fn(require_ca_fingerprint));
    info!(%addr, leaf = %identity.leaf.to_hex(), nodes = config.nodes.len(), "S2 Connect pairing server listening");
    let task = tokio::spawn(async move {
        if let Err(e) = server::serve(listener, tls, router, shutdown.cancelled_owned()).await {
            warn!(error = %e, "the S2 Connect pairing server stopped");
        }
    });
    Ok(RunningPairingServer {
        addr,
        leaf: identity.leaf,
        task,
        sessions,
    })
}

/// A LAN endpoint: the LAN-only operations too, and no sessions served.
fn lan_endpoint(
    config: &PairingServerConfig,
    store: Arc<StateStore>,
    identity: &Identity,
) -> Result<axum::Router, ServerError> {
    let endpoint = EndpointDescription {
        name: Some(config.name.clone()),
        logo_url: None,
        deployment: Some(Deployment::Lan),
    };
    let pairing = PairingService::lan(store.clone(), endpoint, identity.leaf);
    // Mounted because the router needs one; its store serves no pairing (see `hosted`).
    let sessions = SessionService::new(store, "wss://invalid.invalid/");
    let endpoint = Endpoint::new(Arc::new(pairing), Arc::new(sessions))
        .on_prepare_pairing(prepare_signal_logger());
    let subnets = LocalSubnets::detect().map_err(ServerError::Subnets)?;
    Ok(server::lan_router(endpoint, subnets))
}

/// A WAN endpoint: the communication server for LAN CEMs.
fn wan_endpoint(
    config: &PairingServerConfig,
    wan: &WanServing,
    initiate_session_url: String,
    store: Arc<StateStore>,
) -> (axum::Router, SessionDoor) {
    let endpoint = EndpointDescription {
        name: Some(config.name.clone()),
        logo_url: None,
        deployment: Some(Deployment::Wan),
    };
    let details = ConnectionDetails {
        initiate_session_url,
        // Never sent: `mint_access_tokens` puts one minted per pairing in its place.
        access_token: AccessToken::new(String::new()),
        certificate_fingerprint: std::collections::BTreeMap::new(),
    };
    let pairing = PairingService::wan(store.clone(), endpoint, wan.domain.clone())
        .with_connection_details(details);
    let sessions = Arc::new(SessionService::new(
        store.clone(),
        wan.websocket_url.clone(),
    ));
    let endpoint = Endpoint::new(Arc::new(pairing), sessions.clone());
    let minted = Arc::new(MintedTokens::default());
    let router = server::router(endpoint)
        .layer(axum::middleware::from_fn(move |request, next| {
            let minted = minted.clone();
            async move { mint_access_tokens(&minted, request, next).await }
        }))
        .layer(axum::middleware::from_fn(refuse_serving_cems));
    (router, SessionDoor { sessions, store })
}

/// Refuse a `postConnectionDetails` at a WAN gateway: that is a WAN CEM, which would
/// serve sessions (WAN–WAN, the CEM does), but a WAN gateway's links wait for the CEM to
/// dial in and never initiate. Refused before the pairing completes, so neither side
/// holds a pairing that could not be used.
async fn refuse_serving_cems(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if request.uri().path() != "/v1/postConnectionDetails" {
        return next.run(request).await;
    }
    warn!(
        "pairing refused: a WAN CEM offered to serve sessions, and a WAN gateway only serves them itself"
    );
    let refused = serde_json::json!({
        "errorMessage": "IncompatibleCommunicationProtocols",
        "additionalInfo": "this gateway is a WAN node that serves sessions; a CEM that would serve them (WAN-WAN) is not supported",
    });
    (axum::http::StatusCode::BAD_REQUEST, axum::Json(refused)).into_response()
}

/// Give each pairing its own first access token (see [`MintedTokens`]): the one in a
/// `requestConnectionDetails` answer is replaced, and `finalizePairing` with the same
/// bearer stores it.
async fn mint_access_tokens(
    minted: &MintedTokens,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let Some(bearer) = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(_, token)| token.trim().to_string())
    else {
        return next.run(request).await;
    };
    match request.uri().path() {
        "/v1/finalizePairing" => minted.finalizing(&bearer, next.run(request)).await,
        "/v1/requestConnectionDetails" => {
            let response = next.run(request).await;
            if response.status() != axum::http::StatusCode::OK {
                return response;
            }
            let Ok(bytes) =
                axum::body::to_bytes(response.into_body(), server::MAX_BODY_BYTES).await
            else {
                return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            let details = serde_json::from_slice::<ConnectionDetails>(&bytes).ok();
            let token = minted.mint(&bearer);
            match details.zip(token) {
                Some((mut details, token)) => {
                    details.access_token = token;
                    axum::Json(details).into_response()
                }
                None => {
                    error!("connection details could not be given a minted access token");
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }
        _ => next.run(request).await,
    }
}

/// The hosted nodes: each resource's stable node id, description and alias. A resource
/// whose node id file is unusable is left out, named in the log; the others are served.
fn hosted(config: &PairingServerConfig) -> Vec<Hosted> {
    let nodes = NodeStore::new(&config.state_dir);
    let aliases = aliases(config.nodes.iter().map(|n| n.device.as_str()));
    config
        .nodes
        .iter()
        .zip(aliases)
        .filter_map(|(spec, alias)| match nodes.describe(spec) {
            Ok(description) => Some(Hosted {
                device: spec.device.clone(),
                description,
                alias,
            }),
            Err(e) => {
                error!(device = %spec.device, error = %e, "not offered for pairing");
                None
            }
        })
        .collect()
}

/// Refuse a `postConnectionDetails` without the CEM's CA fingerprint.
///
/// The CEM that posts its details becomes the communication server, and S2 Connect makes
/// `certificateFingerprint` mandatory then: without it the gateway could never
/// authenticate the CEM it later dials. s2-kit accepts the details without it and the
/// store could only drop the pairing after `finalizePairing` had told the CEM it
/// succeeded; refusing here keeps both sides unpaired instead.
async fn require_ca_fingerprint(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    if request.uri().path() != "/v1/postConnectionDetails" {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, server::MAX_BODY_BYTES).await else {
        return axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    if let Ok(post) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        let fingerprint = post
            .pointer("/connectionDetails/certificateFingerprint/SHA256")
            .and_then(serde_json::Value::as_str);
        if fingerprint.is_none() {
            warn!(
                "pairing refused: the CEM's connection details carry no SHA256 certificateFingerprint, which S2 Connect requires of a communication server"
            );
            let refused = serde_json::json!({
                "errorMessage": "ParsingError",
                "additionalInfo": "connectionDetails.certificateFingerprint.SHA256 is required: the CEM is the communication server",
            });
            return (axum::http::StatusCode::BAD_REQUEST, axum::Json(refused)).into_response();
        }
    }
    // Anything else (including a body that is not JSON) is s2-kit's to answer.
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// `preparePairing` is a hint that someone is about to type a code; the code itself is
/// shown only where a user asks for it (`s2gw pairing-code`, the Home Assistant button),
/// never on an unauthenticated request. Unauthenticated, so its lines are throttled.
fn prepare_signal_logger() -> impl Fn(PrepareSignal) + Send + Sync + 'static {
    let log = std::sync::Mutex::new(s2gw_core::LogThrottle::default());
    move |signal| {
        let mut log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        match signal {
            PrepareSignal::Prepare(p) => log.warn("preparePairing", now, || {
                info!(node = %p.server_node_id, cem = %p.client_node_description.id, "a CEM is about to pair: show a code with `s2gw pairing-code`");
            }),
            PrepareSignal::Cancel(p) => log.warn("cancelPreparePairing", now, || {
                info!(node = %p.server_node_id, "the CEM cancelled pairing");
            }),
            _ => {}
        }
    }
}
