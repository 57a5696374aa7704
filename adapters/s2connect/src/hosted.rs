//! What the pairing server knows: s2-kit's [`Store`] over the state directory.
//!
//! The nodes are the resources of the config; pairing codes and pairings are the same
//! files `s2gw pairing-code`, `s2gw pairings` and the session initiator use, read on
//! every request, so the commands and the daemon never disagree.
//!
//! The gateway is a LAN RM. S2 Connect makes the CEM the communication server whenever a
//! LAN RM pairs (LAN–LAN the CEM serves; a WAN node always serves), so every pairing made
//! here is one in which the *gateway* later initiates sessions with the CEM, exactly as
//! after `s2gw pair`. This store therefore hosts no session-initiation pairings of its
//! own: `paired`, `node_for_token` and friends answer "none", and the server's
//! `initiateSession` refuses every caller with 401.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use s2gw_core::LogThrottle;
use s2gw_core::s2::connect::server::{PairedNode, Store};
use s2gw_core::s2::connect::{
    AccessToken, EndpointDescription, NodeDescription, NodeId, NodeIdAlias, PairingToken, Role,
    Timestamp, TokenStore,
};
use tracing::{error, info, warn};

use crate::codes::PairingCodes;
use crate::events::PairedEvents;
use crate::store::{PairingFile, StoredPairing, StoredTls};

/// One resource the endpoint hosts.
#[derive(Debug, Clone)]
pub(crate) struct Hosted {
    pub(crate) device: String,
    pub(crate) description: NodeDescription,
    pub(crate) alias: String,
}

/// The pairing server's [`Store`].
#[derive(Debug)]
pub(crate) struct StateStore {
    state_dir: PathBuf,
    nodes: Vec<Hosted>,
    paired: PairedEvents,
    /// `requestPairing` needs no credentials, so what it makes us log is throttled.
    log: Mutex<LogThrottle>,
}

impl StateStore {
    pub(crate) fn new(state_dir: &Path, nodes: Vec<Hosted>, paired: PairedEvents) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            nodes,
            paired,
            log: Mutex::new(LogThrottle::default()),
        }
    }

    fn hosted(&self, node: NodeId) -> Option<&Hosted> {
        self.nodes.iter().find(|h| h.description.id == node)
    }

    fn codes(&self, hosted: &Hosted) -> PairingCodes {
        PairingCodes::new(&self.state_dir, &hosted.device, &hosted.alias)
    }

    /// Log `line` as `reason` allows (one by one at first, then counted).
    fn throttled(&self, reason: &'static str, line: impl FnOnce()) {
        let mut log = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.warn(reason, Instant::now(), line);
    }

    fn file(&self, hosted: &Hosted) -> PairingFile {
        PairingFile::new(&self.state_dir, &hosted.device)
    }
}

impl Store for StateStore {
    fn pairing_token(&self, node: NodeId) -> Option<PairingToken> {
        let hosted = self.hosted(node)?;
        // A pairing the CEM completes must be one we can store: refuse to start one on a
        // pairing file we cannot read (the CEM hears NoValidPairingTokenOnPairingServer).
        if let Err(e) = self.file(hosted).load() {
            self.throttled("pairing file unusable", || {
                error!(device = %hosted.device, error = %e, "pairing refused: the pairing file is unusable");
            });
            return None;
        }
        match self.codes(hosted).current(SystemTime::now()) {
            Ok(Some(token)) => Some(token),
            Ok(None) => {
                self.throttled("pairing request without a code", || {
                    info!(device = %hosted.device, "pairing request without a valid pairing code (run `s2gw pairing-code`)");
                });
                None
            }
            Err(e) => {
                self.throttled("pairing code file unusable", || {
                    error!(device = %hosted.device, error = %e, "pairing refused");
                });
                None
            }
        }
    }

    fn resolve_alias(&self, alias: &NodeIdAlias) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|h| h.alias == alias.0)
            .map(|h| h.description.id)
    }

    fn sole_node(&self) -> Option<NodeId> {
        match self.nodes.as_slice() {
            [only] => Some(only.description.id),
            _ => None,
        }
    }

    fn node(&self, node: NodeId) -> Option<NodeDescription> {
        self.hosted(node).map(|h| h.description.clone())
    }

    fn nodes(&self) -> Vec<(NodeDescription, Option<NodeIdAlias>)> {
        self.nodes
            .iter()
            .map(|h| (h.description.clone(), NodeIdAlias::parse(&h.alias).ok()))
            .collect()
    }

    fn pair(&self, paired: PairedNode) {
        let Some(hosted) = self.hosted(paired.local) else {
            return;
        };
        let Some(details) = paired.details else {
            // Unreachable: this endpoint offers no connection details, so a pairing
            // completes only through postConnectionDetails.
            warn!(device = %hosted.device, "a pairing without connection details was not stored");
            return;
        };
        let Some(fingerprint) = details.certificate_fingerprint.get("SHA256") else {
            warn!(device = %hosted.device, cem = %paired.remote.id, "the CEM sent no SHA256 certificate fingerprint; pairing not stored");
            return;
        };
        let stored = StoredPairing {
            cem: paired.remote.clone(),
            cem_endpoint: EndpointDescription::default(),
            initiate_session_url: details.initiate_session_url.clone(),
            tls: StoredTls::CaFingerprint(fingerprint.to_ascii_lowercase()),
            access_tokens: vec![details.access_token.clone()],
            communication_server: Role::Cem,
            paired_at: Timestamp::now().to_string(),
        };
        let file = self.file(hosted);
        // S2C §Pairing process: "A RM can only be paired with one CEM at a time", so the
        // new pairing replaces whatever the device had (the old CEM refuses us later).
        match file.replace_all(paired.local, stored) {
            Ok(()) => {
                info!(
                device = %hosted.device,
                cem = %paired.remote.id,
                brand = %paired.remote.brand,
                model = %paired.remote.model_name,
                "paired (the CEM paired with the gateway's server)"
                );
                self.paired.announce(&hosted.device);
            }
            Err(e) => {
                error!(device = %hosted.device, error = %e, "a pairing the CEM completed was not stored")
            }
        }
        if let Err(e) = self.codes(hosted).withdraw() {
            warn!(device = %hosted.device, error = %e, "the used pairing code could not be removed");
        }
    }

    fn paired(&self, _remote: NodeId) -> Option<PairedNode> {
        None
    }

    fn paired_with(&self, _local: NodeId) -> Vec<NodeId> {
        // `pair` already keeps one CEM per resource.
        Vec::new()
    }

    fn set_tokens(&self, _remote: NodeId, _tokens: TokenStore) {}

    fn unpair(&self, _remote: NodeId) {}

    fn node_for_token(&self, _token: &AccessToken) -> Option<NodeId> {
        None
    }
}
