//! The gateway's pairing server: a CEM pairs with the gateway's resources.
//!
//! s2-kit's LAN endpoint ([`server::lan_router`]) over TLS, with a [`StateStore`] behind
//! it. The operations a LAN endpoint answers: `requestPairing`, `postConnectionDetails`
//! (the CEM is the communication server), `finalizePairing`, and the LAN-only endpoint
//! and node listing, `preparePairing` / `cancelPreparePairing` and `waitForPairing`, the
//! last four to same-subnet peers only. `requestConnectionDetails` is refused with
//! `IncompatibleCommunicationProtocols`: a LAN RM is never the communication server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use s2gw_core::CancellationToken;
use s2gw_core::s2::connect::server::{
    self, Endpoint, LocalSubnets, PairingService, PrepareSignal, SessionService,
};
use s2gw_core::s2::connect::{Deployment, EndpointDescription, Fingerprint};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::codes::aliases;
use crate::events::PairedEvents;
use crate::hosted::{Hosted, StateStore};
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
}

/// Start serving until `shutdown`.
pub async fn start_pairing_server(
    config: PairingServerConfig,
    shutdown: CancellationToken,
) -> Result<RunningPairingServer, ServerError> {
    let identity = Identity::load(&config.state_dir, &config.identity)?;
    let tls = identity.server_config().map_err(ServerError::Tls)?;
    let store = Arc::new(StateStore::new(
        &config.state_dir,
        hosted(&config),
        config.paired.clone(),
    ));
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
    let router = server::lan_router(endpoint, subnets)
        .layer(axum::middleware::from_fn(require_ca_fingerprint));
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
    })
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
