//! Pairing with a CEM that runs the pairing server, and unpairing.

use std::path::Path;

use s2gw_core::s2::connect::{
    ClientError, ConnectError, Deployment, EndpointDescription, NodeId, Pairing, PairingCode,
    Session, Timestamp, TokenKind,
};
use tracing::{info, warn};

use crate::node::{NodeSpec, NodeStore};
use crate::store::{PairingFile, StoreError, StoredPairing, StoredTls};

/// The CEM's pairing endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairTarget {
    /// Its versioned base URL, e.g. `https://cem.local:8443/v1/`.
    pub url: String,
    /// LAN (self-signed certificate, bound by its fingerprint) or WAN (public PKI, bound
    /// by the domain name).
    pub deployment: Deployment,
}

/// Why a pairing (or unpairing) did not happen. Nothing was stored when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// The state directory could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pairing code is not `[alias-]token` of letters and digits (at least four).
    #[error(
        "the pairing code is malformed: expected [alias-]token of letters and digits, the token at least 4 long"
    )]
    MalformedCode,
    /// The CEM or the protocol refused.
    #[error("{}", explain(.0))]
    Refused(#[from] ClientError),
    /// The device has no pairing with that CEM.
    #[error("{device} has no pairing{}", .cem.as_ref().map(|c| format!(" with CEM {c}")).unwrap_or_default())]
    NotPaired {
        /// The device.
        device: String,
        /// The CEM asked for, if any.
        cem: Option<String>,
    },
}

/// What the error means for the person who typed the code.
fn explain(error: &ClientError) -> String {
    let hint = match error {
        ClientError::Protocol(ConnectError::ChallengeFailed) => {
            " (the pairing code is wrong, or someone is in the middle: the CEM's challenge response does not match)"
        }
        ClientError::Http { status, .. } if status.is_forbidden() => {
            " (the CEM refused our challenge response: the pairing code is wrong)"
        }
        ClientError::Http { status, .. } if status.is_unauthorized() => {
            " (the CEM does not know this attempt: the code expired or pairing is not open; start pairing on the CEM again)"
        }
        ClientError::Http { status, .. } if status.is_busy() => {
            " (another attempt for this node is in flight; S2 Connect allows one per second: try again)"
        }
        ClientError::IdentityChanged => " (refused: the CEM's certificate changed mid-pairing)",
        _ => "",
    };
    format!("{error}{hint}")
}

/// Pair the resource `spec` with the CEM at `target` using the code its UI shows.
///
/// The state directory is checked before the first request, so a pairing the CEM
/// finalises is one we can store.
pub async fn pair(
    state_dir: &Path,
    spec: &NodeSpec,
    target: &PairTarget,
    code: &str,
) -> Result<StoredPairing, PairError> {
    let code =
        PairingCode::parse(code, TokenKind::Dynamic).map_err(|_| PairError::MalformedCode)?;
    pair_with_code(state_dir, spec, target, code).await
}

/// [`pair`] with a code already parsed (the long-poll client holds the token only).
pub(crate) async fn pair_with_code(
    state_dir: &Path,
    spec: &NodeSpec,
    target: &PairTarget,
    code: PairingCode,
) -> Result<StoredPairing, PairError> {
    let nodes = NodeStore::new(state_dir);
    let local = nodes.describe(spec)?;
    let file = PairingFile::new(state_dir, &spec.device);
    // Fails on a corrupt or unwritable file now, not after the CEM has stored its half.
    let existing = file.load()?;
    let endpoint = EndpointDescription {
        name: Some("s2gw".into()),
        logo_url: None,
        deployment: Some(Deployment::Lan),
    };
    let pairing = match target.deployment {
        Deployment::Wan => Pairing::wan(&target.url, local.clone(), endpoint)?,
        _ => Pairing::lan(&target.url, local.clone(), endpoint)?,
    };
    info!(device = %spec.device, node = %local.id, cem = %target.url, "pairing");
    let paired = match pairing.run(code, Timestamp::now()).await {
        Ok(paired) => paired,
        Err(e) => {
            warn!(device = %spec.device, cem = %target.url, error = %explain(&e), "pairing refused");
            return Err(e.into());
        }
    };
    let tls = match &paired.identity {
        Some(identity) => StoredTls::PinnedCa(s2gw_core::hex::encode(&identity.root)),
        None => StoredTls::Web,
    };
    let stored = StoredPairing {
        cem: paired.pairing.remote.clone(),
        cem_endpoint: paired.pairing.remote_endpoint.clone(),
        initiate_session_url: paired.pairing.details.initiate_session_url.clone(),
        tls,
        access_tokens: vec![paired.pairing.details.access_token.clone()],
        communication_server: paired.pairing.communication_server,
        paired_at: Timestamp::now().to_string(),
        pending_grants: Vec::new(),
    };
    drop(existing);
    file.insert(local.id, stored.clone())?;
    info!(
        device = %spec.device,
        node = %local.id,
        cem = %stored.cem.id,
        brand = %stored.cem.brand,
        model = %stored.cem.model_name,
        "paired"
    );
    Ok(stored)
}

/// Unpair `device` from CEM `cem` (every CEM when `None`): tell the CEM, and forget the
/// pairing here whether or not the CEM answered. Returns the CEM ids unpaired.
pub async fn unpair(
    state_dir: &Path,
    device: &str,
    cem: Option<&str>,
) -> Result<Vec<String>, PairError> {
    let file = PairingFile::new(state_dir, device);
    let node_id = NodeStore::new(state_dir).node_id(device)?;
    let targets: Vec<StoredPairing> = file
        .load()?
        .into_iter()
        .filter(|p| cem.is_none_or(|c| p.cem.id.to_string() == c))
        .collect();
    if targets.is_empty() {
        return Err(PairError::NotPaired {
            device: device.to_string(),
            cem: cem.map(str::to_string),
        });
    }
    let mut done = Vec::new();
    for pairing in targets {
        // Local first: a pairing renounced here must not be used again, even if the CEM
        // is unreachable.
        file.remove(node_id, pairing.cem.id)?;
        if matches!(pairing.tls, StoredTls::CemDialsIn) {
            // The CEM is the session client here: the gateway has no URL of its own to
            // tell; it refuses the CEM's next initiation.
            info!(%device, cem = %pairing.cem.id, "unpaired; the CEM, which dials in, is refused at its next session initiation");
            done.push(pairing.cem.id.to_string());
            continue;
        }
        match tell_cem(node_id, &pairing).await {
            Ok(()) => info!(%device, cem = %pairing.cem.id, "unpaired on both sides"),
            Err(e) => warn!(
                %device,
                cem = %pairing.cem.id,
                error = %e,
                "unpaired here; the CEM was not told (it refuses the next initiation anyway)"
            ),
        }
        done.push(pairing.cem.id.to_string());
    }
    Ok(done)
}

async fn tell_cem(node_id: NodeId, pairing: &StoredPairing) -> Result<(), ClientError> {
    let (policy, _) = crate::trust::policy(pairing)
        .await
        .map_err(ClientError::Url)?;
    let mut session = Session::new(
        &pairing.initiate_session_url,
        &policy,
        node_id,
        pairing.cem.id,
        pairing.tokens(),
    )?;
    session.unpair().await
}
