//! What the pairing server knows: s2-kit's [`Store`] over the state directory.
//!
//! The nodes are the resources of the config; pairing codes and pairings are the same
//! files `s2gw pairing-code`, `s2gw pairings` and the session initiator use, read on
//! every request, so the commands and the daemon never disagree.
//!
//! Which side serves sessions follows from the deployments (`S2C §Mapping the CEM and RM
//! to communication server or client`): LAN–LAN the CEM does, a WAN node always does.
//!
//! - A LAN gateway never serves: every pairing made here is one in which the *gateway*
//!   later initiates sessions with the CEM, exactly as after `s2gw pair`. `paired`,
//!   `node_for_token` and friends answer "none", and `initiateSession` is refused (401).
//! - A WAN gateway (`[s2connect] deployment = "wan"`) serves a LAN CEM: the pairing hands
//!   the CEM the gateway's own session-initiation URL and a first access token minted for
//!   that pairing ([`MintedTokens`]); the pairing is stored with
//!   [`StoredTls::CemDialsIn`], and the CEM's `initiateSession` / `confirmAccessToken`
//!   rotate its tokens in the same file. A WAN CEM still serves (it posts its details).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use s2gw_core::LogThrottle;
use s2gw_core::s2::connect::server::{PairedNode, Store};
use s2gw_core::s2::connect::{
    AccessToken, ConnectionDetails, EndpointDescription, NodeDescription, NodeId, NodeIdAlias,
    PairingToken, Role, Timestamp, TokenStore,
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
    /// The session-initiation URL the gateway hands out, when it serves sessions (WAN).
    serves: Option<String>,
    /// `requestPairing` needs no credentials, so what it makes us log is throttled.
    log: Mutex<LogThrottle>,
}

impl StateStore {
    pub(crate) fn new(
        state_dir: &Path,
        nodes: Vec<Hosted>,
        paired: PairedEvents,
        serves: Option<String>,
    ) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            nodes,
            paired,
            serves,
            log: Mutex::new(LogThrottle::default()),
        }
    }

    /// The resource behind one of our nodes.
    pub(crate) fn hosted(&self, node: NodeId) -> Option<&Hosted> {
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

    /// The pairing in which CEM `remote` dials in, with the resource it is for.
    fn served(&self, remote: NodeId) -> Option<(&Hosted, StoredPairing)> {
        self.find_served(|p| p.cem.id == remote)
    }

    /// The first pairing in which the CEM dials in that `wanted` picks, with its
    /// resource; none on a LAN gateway. Every resource's file is read: the commands
    /// change them while the daemon runs.
    fn find_served(
        &self,
        wanted: impl Fn(&StoredPairing) -> bool,
    ) -> Option<(&Hosted, StoredPairing)> {
        self.serves.as_ref()?;
        self.nodes.iter().find_map(|hosted| {
            self.served_pairings(hosted)
                .into_iter()
                .find(&wanted)
                .map(|p| (hosted, p))
        })
    }

    /// The pairings of `hosted` in which the CEM dials in; an unusable file is logged
    /// (throttled: any caller can make us look) and treated as holding none.
    fn served_pairings(&self, hosted: &Hosted) -> Vec<StoredPairing> {
        match self.file(hosted).load() {
            Ok(pairings) => pairings
                .into_iter()
                .filter(|p| p.communication_server == Role::Rm)
                .collect(),
            Err(e) => {
                self.throttled("pairing file unusable", || {
                    error!(device = %hosted.device, error = %e, "session initiation refused: the pairing file is unusable");
                });
                Vec::new()
            }
        }
    }

    /// What `pair` stores when the gateway handed out the details: the gateway serves
    /// and the CEM starts from the token minted for this pairing.
    fn served_pairing(
        &self,
        hosted: &Hosted,
        remote: &NodeDescription,
        url: &str,
    ) -> Option<StoredPairing> {
        let Some(token) = MintedTokens::for_this_pairing() else {
            error!(device = %hosted.device, cem = %remote.id, "a pairing without the access token minted for it was not stored");
            return None;
        };
        Some(StoredPairing {
            cem: remote.clone(),
            cem_endpoint: EndpointDescription::default(),
            initiate_session_url: url.to_string(),
            tls: StoredTls::CemDialsIn,
            access_tokens: vec![token],
            communication_server: Role::Rm,
            paired_at: Timestamp::now().to_string(),
            pending_grants: Vec::new(),
        })
    }

    /// What `pair` stores when the CEM posted its details: the CEM serves.
    fn dialled_pairing(
        &self,
        hosted: &Hosted,
        remote: &NodeDescription,
        details: &ConnectionDetails,
    ) -> Option<StoredPairing> {
        let Some(fingerprint) = details.certificate_fingerprint.get("SHA256") else {
            warn!(device = %hosted.device, cem = %remote.id, "the CEM sent no SHA256 certificate fingerprint; pairing not stored");
            return None;
        };
        Some(StoredPairing {
            cem: remote.clone(),
            cem_endpoint: EndpointDescription::default(),
            initiate_session_url: details.initiate_session_url.clone(),
            tls: StoredTls::CaFingerprint(fingerprint.to_ascii_lowercase()),
            access_tokens: vec![details.access_token.clone()],
            communication_server: Role::Cem,
            paired_at: Timestamp::now().to_string(),
            pending_grants: Vec::new(),
        })
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
            // Unreachable: s2-kit hands every finalised pairing its details.
            warn!(device = %hosted.device, "a pairing without connection details was not stored");
            return;
        };
        let stored = match &self.serves {
            Some(url) if *url == details.initiate_session_url => {
                self.served_pairing(hosted, &paired.remote, url)
            }
            _ => self.dialled_pairing(hosted, &paired.remote, &details),
        };
        let Some(stored) = stored else {
            return;
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

    fn paired(&self, remote: NodeId) -> Option<PairedNode> {
        let (hosted, pairing) = self.served(remote)?;
        Some(PairedNode {
            local: hosted.description.id,
            remote: pairing.cem.clone(),
            tokens: pairing.tokens(),
            details: None,
        })
    }

    fn paired_with(&self, _local: NodeId) -> Vec<NodeId> {
        // `pair` already keeps one CEM per resource.
        Vec::new()
    }

    fn set_tokens(&self, remote: NodeId, tokens: TokenStore) {
        let Some((hosted, _)) = self.served(remote) else {
            return;
        };
        let now = Timestamp::now();
        if let Err(e) = self
            .file(hosted)
            .update(hosted.description.id, remote, |p| {
                p.set_tokens(&tokens, now)
            })
        {
            // The CEM then holds a token we do not: its confirmation fails and it
            // initiates again with the one it had, which is still stored.
            error!(device = %hosted.device, error = %e, "the rotated access token was not stored");
        }
    }

    fn unpair(&self, remote: NodeId) {
        let Some((hosted, _)) = self.served(remote) else {
            return;
        };
        match self.file(hosted).remove(hosted.description.id, remote) {
            Ok(_) => info!(device = %hosted.device, cem = %remote, "unpaired (the CEM unpaired)"),
            Err(e) => {
                error!(device = %hosted.device, error = %e, "the CEM unpaired, but the pairing file could not be changed")
            }
        }
    }

    fn node_for_token(&self, token: &AccessToken) -> Option<NodeId> {
        self.find_served(|p| p.tokens().accepts(token))
            .map(|(_, p)| p.cem.id)
    }
}

/// The first access token of each pairing in which the gateway serves sessions.
///
/// s2-kit's pairing service hands every pairing the same configured connection details,
/// access token included: a token a second CEM would know as well. So the token in the
/// `requestConnectionDetails` answer is replaced by one minted for that attempt (kept
/// by the attempt's bearer), and `finalizePairing` with that bearer stores it.
#[derive(Debug, Default)]
pub(crate) struct MintedTokens {
    /// By pairing attempt bearer, with when minted.
    minted: Mutex<Vec<(String, AccessToken, Instant)>>,
}

tokio::task_local! {
    /// The token minted for the pairing `finalizePairing` is completing.
    static THIS_PAIRING: AccessToken;
}

impl MintedTokens {
    /// How long a minted token waits for its `finalizePairing` (the pairing budget is 15 s).
    const KEPT: std::time::Duration = std::time::Duration::from_secs(60);

    /// A fresh token for the attempt `bearer` authenticates.
    pub(crate) fn mint(&self, bearer: &str) -> Option<AccessToken> {
        // rand's thread generator is a CSPRNG seeded from the operating system.
        let entropy: [u8; 32] = rand::random();
        let token = AccessToken::from_entropy(&entropy).ok()?;
        let mut minted = self
            .minted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        minted.retain(|(b, _, at)| now.duration_since(*at) < Self::KEPT && b != bearer);
        minted.push((bearer.to_string(), token.clone(), now));
        Some(token)
    }

    /// Run `finalize` (the `finalizePairing` handler) with the token minted for `bearer`
    /// in reach of [`StateStore::pair`].
    pub(crate) async fn finalizing<F: std::future::Future>(
        &self,
        bearer: &str,
        finalize: F,
    ) -> F::Output {
        let token = {
            let mut minted = self
                .minted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            minted
                .iter()
                .position(|(b, _, _)| b == bearer)
                .map(|i| minted.remove(i).1)
        };
        match token {
            Some(token) => THIS_PAIRING.scope(token, finalize).await,
            None => finalize.await,
        }
    }

    fn for_this_pairing() -> Option<AccessToken> {
        THIS_PAIRING.try_with(AccessToken::clone).ok()
    }
}
