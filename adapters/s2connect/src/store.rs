//! The pairing file: one resource's pairings, durable and secret.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use s2gw_core::s2::Timestamp;
use s2gw_core::s2::connect::{
    AccessToken, EndpointDescription, NodeDescription, NodeId, Role, TokenStore,
};
use serde::{Deserialize, Serialize};

/// The format version written; a file of a newer version is refused rather than
/// misread.
const FORMAT: u32 = 1;

/// What can go wrong with a file in the state directory. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file is not what this version writes (corrupt, truncated, or from a newer s2gw).
    #[error("{}: not a valid s2gw S2 Connect file: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why it was refused (never its content: it holds secrets).
        reason: String,
    },
}

/// How later connections to the CEM are authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredTls {
    /// A LAN CEM: the self-signed root pinned during pairing (DER, hex).
    PinnedCa(String),
    /// A WAN CEM: the public PKI.
    Web,
    /// A LAN CEM that paired with the gateway's server: the SHA-256 fingerprint (hex) of
    /// its CA, from the HMAC-authenticated connection details. The first session
    /// initiation fetches the certificate it names and stores it as [`Self::PinnedCa`].
    CaFingerprint(String),
    /// The gateway is the communication server (`[s2connect] deployment = "wan"`): the
    /// CEM dials in, so there is no CEM certificate to trust.
    CemDialsIn,
}

/// One pairing, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPairing {
    /// The CEM node paired with.
    pub cem: NodeDescription,
    /// The CEM's endpoint.
    pub cem_endpoint: EndpointDescription,
    /// Where sessions are initiated.
    pub initiate_session_url: String,
    /// Trust for every later connection to the CEM.
    pub tls: StoredTls,
    /// The access tokens held, newest first (the rotation of `S2C §Recovery`).
    pub access_tokens: Vec<AccessToken>,
    /// Which side is the communication server.
    pub communication_server: Role,
    /// When the pairing was made (RFC 3339).
    pub paired_at: String,
    /// Those of `access_tokens` granted by `initiateSession` and not yet confirmed, with
    /// when: only these expire (`S2C §Recovery`). Kept so a gateway that serves sessions
    /// and restarts between the two requests still accepts the confirmation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_grants: Vec<PendingGrant>,
}

/// An access token granted and not yet confirmed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingGrant {
    /// The token (also in `access_tokens`).
    pub token: AccessToken,
    /// When it was granted.
    pub granted_at: Timestamp,
}

impl StoredPairing {
    /// The token store session initiation works from.
    pub fn tokens(&self) -> TokenStore {
        let mut store = TokenStore::default();
        // Oldest first: each one goes in front of the ones before it.
        for token in self.access_tokens.iter().rev() {
            match self.granted_at(token) {
                Some(granted) => store.add(token.clone(), granted),
                None => store.adopt(token.clone()),
            }
        }
        store
    }

    /// Keep what a session initiation left in the store; a grant first seen here is
    /// dated `now`.
    pub fn set_tokens(&mut self, tokens: &TokenStore, now: Timestamp) {
        let pending_grants = tokens
            .candidates()
            .filter(|token| tokens.is_pending(token))
            .map(|token| PendingGrant {
                token: token.clone(),
                granted_at: self.granted_at(token).unwrap_or(now),
            })
            .collect();
        self.pending_grants = pending_grants;
        self.access_tokens = tokens.candidates().cloned().collect();
    }

    fn granted_at(&self, token: &AccessToken) -> Option<Timestamp> {
        self.pending_grants
            .iter()
            .find(|grant| grant.token.verify(token))
            .map(|grant| grant.granted_at)
    }
}

/// What `s2gw pairings` shows of a pairing: everything but the secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingSummary {
    /// The CEM's node id.
    pub cem_id: String,
    /// The CEM's brand and model.
    pub cem: String,
    /// Where sessions are initiated.
    pub initiate_session_url: String,
    /// `pinned CA` or `web PKI`.
    pub trust: &'static str,
    /// When it was made.
    pub paired_at: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    node_id: NodeId,
    pairings: Vec<StoredPairing>,
}

/// The pairings of one resource, in `<state_dir>/s2connect/<device>.pairings.json`.
#[derive(Debug, Clone)]
pub struct PairingFile {
    path: PathBuf,
}

impl PairingFile {
    /// The pairing file of `device` under `state_dir`.
    pub fn new(state_dir: &Path, device: &str) -> Self {
        Self {
            path: dir(state_dir).join(format!("{device}.pairings.json")),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pairings held (none when the file does not exist).
    pub fn load(&self) -> Result<Vec<StoredPairing>, StoreError> {
        Ok(self.read()?.map(|d| d.pairings).unwrap_or_default())
    }

    /// The pairings without their secrets.
    pub fn summaries(&self) -> Result<Vec<PairingSummary>, StoreError> {
        Ok(self
            .load()?
            .into_iter()
            .map(|p| PairingSummary {
                cem_id: p.cem.id.to_string(),
                cem: format!("{} {}", p.cem.brand, p.cem.model_name),
                initiate_session_url: p.initiate_session_url,
                trust: match p.tls {
                    StoredTls::PinnedCa(_) => "pinned CA",
                    StoredTls::CaFingerprint(_) => "CA fingerprint (pinned at first session)",
                    StoredTls::Web => "web PKI",
                    StoredTls::CemDialsIn => "CEM dials in",
                },
                paired_at: p.paired_at,
            })
            .collect())
    }

    /// Add a pairing (replacing one with the same CEM) for node `node_id`.
    pub fn insert(&self, node_id: NodeId, pairing: StoredPairing) -> Result<(), StoreError> {
        let mut pairings = self.load()?;
        pairings.retain(|p| p.cem.id != pairing.cem.id);
        pairings.insert(0, pairing);
        self.write(node_id, pairings)
    }

    /// Make `pairing` the only pairing of node `node_id` (an RM pairs with one CEM at a
    /// time).
    pub fn replace_all(&self, node_id: NodeId, pairing: StoredPairing) -> Result<(), StoreError> {
        // Read first: a corrupt file is reported, not silently overwritten.
        self.read()?;
        self.write(node_id, vec![pairing])
    }

    /// Change the pairing with CEM `cem` if it is still there (an unpair may have
    /// removed it meanwhile: then nothing is written). Returns whether it was.
    pub fn update(
        &self,
        node_id: NodeId,
        cem: NodeId,
        change: impl FnOnce(&mut StoredPairing),
    ) -> Result<bool, StoreError> {
        let mut pairings = self.load()?;
        let Some(pairing) = pairings.iter_mut().find(|p| p.cem.id == cem) else {
            return Ok(false);
        };
        change(pairing);
        self.write(node_id, pairings)?;
        Ok(true)
    }

    /// Remove the pairing with CEM `cem`; returns it when there was one.
    pub fn remove(
        &self,
        node_id: NodeId,
        cem: NodeId,
    ) -> Result<Option<StoredPairing>, StoreError> {
        let mut pairings = self.load()?;
        let Some(at) = pairings.iter().position(|p| p.cem.id == cem) else {
            return Ok(None);
        };
        let removed = pairings.remove(at);
        self.write(node_id, pairings)?;
        Ok(Some(removed))
    }

    fn read(&self) -> Result<Option<OnDisk>, StoreError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.io(source)),
        };
        let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            // Line and column only: serde's message can quote the content.
            reason: format!("unreadable JSON at line {} column {}", e.line(), e.column()),
        })?;
        if disk.format != FORMAT {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                reason: format!("format {} (this s2gw reads {FORMAT})", disk.format),
            });
        }
        Ok(Some(disk))
    }

    fn write(&self, node_id: NodeId, pairings: Vec<StoredPairing>) -> Result<(), StoreError> {
        let disk = OnDisk {
            format: FORMAT,
            node_id,
            pairings,
        };
        let bytes = serde_json::to_vec_pretty(&disk).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_atomically(&self.path, &bytes)
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// `<state_dir>/s2connect`.
pub(crate) fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("s2connect")
}

/// Write `bytes` to `path` so that a reader sees the old file or the new one, never
/// half of either: a 0600 temporary file in the same directory, synced, then renamed.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    publish(path, bytes, |tmp, path| fs::rename(tmp, path)).map(|_| ())
}

/// Create `path` with `bytes` unless it exists, atomically as [`write_atomically`] and
/// without ever replacing a file another writer (thread or process) created first.
/// Returns whether this call created it.
pub(crate) fn create_atomically(path: &Path, bytes: &[u8]) -> Result<bool, StoreError> {
    // A hard link fails when the name exists: that is the no-clobber rename.
    publish(path, bytes, |tmp, path| match fs::hard_link(tmp, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        other => other.map(|()| true),
    })
}

/// The temporary file, then `place` it at `path`; the temporary file never outlives it.
fn publish<T>(
    path: &Path,
    bytes: &[u8],
    place: impl FnOnce(&Path, &Path) -> std::io::Result<T>,
) -> Result<T, StoreError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io)?;
    // The directory too: it lists which devices are paired.
    fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and per write: two writers of one file must not share it.
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = parent.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        let placed = place(&tmp, path)?;
        fs::File::open(parent)?.sync_all()?;
        Ok(placed)
    })();
    // Gone after a rename; still there after a link or a failure.
    let _ = fs::remove_file(&tmp);
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2gw_core::s2::connect::Deployment;

    fn pairing(tokens: &[&str]) -> StoredPairing {
        StoredPairing {
            cem: NodeDescription {
                id: NodeId::generate(),
                brand: "Acme".into(),
                logo_url: None,
                kind: "CEM".into(),
                model_name: "Hub".into(),
                user_defined_name: None,
                role: Role::Cem,
            },
            cem_endpoint: EndpointDescription {
                deployment: Some(Deployment::Lan),
                ..EndpointDescription::default()
            },
            initiate_session_url: "https://localhost:1/v1/".into(),
            tls: StoredTls::Web,
            access_tokens: tokens.iter().map(|t| AccessToken::new(*t)).collect(),
            communication_server: Role::Cem,
            paired_at: "2026-12-02T00:00:00Z".into(),
            pending_grants: Vec::new(),
        }
    }

    #[test]
    fn the_token_rotation_survives_a_round_trip_newest_first() {
        let stored = pairing(&["newest-token", "older-token"]);
        let store = stored.tokens();
        assert_eq!(
            store.current().map(AccessToken::as_str),
            Some("newest-token")
        );
        let mut again = stored.clone();
        again.set_tokens(&store, Timestamp::now());
        let kept: Vec<&str> = again
            .access_tokens
            .iter()
            .map(AccessToken::as_str)
            .collect();
        assert_eq!(kept, ["newest-token", "older-token"]);
    }

    #[test]
    fn a_grant_awaiting_confirmation_survives_a_round_trip_with_its_grant_time() {
        let granted = Timestamp::from_unix(1_800_000_000, 0);
        let mut tokens = TokenStore::new(AccessToken::new("in-force"));
        tokens.add(AccessToken::new("granted"), granted);
        let mut stored = pairing(&[]);
        stored.set_tokens(&tokens, granted);
        // Written and read back as the file does; a later write keeps the grant's time.
        let text = serde_json::to_string(&stored).unwrap();
        let mut read: StoredPairing = serde_json::from_str(&text).unwrap();
        let again = read.tokens();
        read.set_tokens(&again, Timestamp::from_unix(1_800_000_100, 0));
        let store = read.tokens();
        assert!(store.is_pending(&AccessToken::new("granted")));
        assert!(!store.is_pending(&AccessToken::new("in-force")));
        assert_eq!(read.pending_grants[0].granted_at, granted);
        assert_eq!(store.current().map(AccessToken::as_str), Some("granted"));
        // Confirmed within its lifetime, it is the only token left.
        let mut store = store;
        store
            .confirm(
                &AccessToken::new("granted"),
                Timestamp::from_unix(1_800_000_001, 0),
            )
            .unwrap();
        read.set_tokens(&store, Timestamp::from_unix(1_800_000_002, 0));
        assert!(read.pending_grants.is_empty());
        assert_eq!(read.access_tokens.len(), 1);
    }

    #[test]
    fn a_write_is_0600_and_leaves_no_temporary_file() {
        let state = tempfile::tempdir().unwrap();
        let file = PairingFile::new(state.path(), "pv");
        file.insert(NodeId::generate(), pairing(&["secret-token"]))
            .unwrap();
        let mode = fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<String> = fs::read_dir(file.path().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["pv.pairings.json"]);
        // A second create of an existing file leaves it alone.
        assert!(!create_atomically(file.path(), b"other").unwrap());
        assert_ne!(fs::read(file.path()).unwrap(), b"other");
        // The summary has no token in it.
        let shown = format!("{:?}", file.summaries().unwrap());
        assert!(!shown.contains("secret-token"), "{shown}");
    }

    #[test]
    fn a_file_of_a_newer_format_is_refused_naming_it() {
        let state = tempfile::tempdir().unwrap();
        let file = PairingFile::new(state.path(), "pv");
        fs::create_dir_all(file.path().parent().unwrap()).unwrap();
        let node = NodeId::generate();
        fs::write(
            file.path(),
            format!("{{\"format\":2,\"node_id\":\"{node}\",\"pairings\":[]}}"),
        )
        .unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(
            err.contains("pv.pairings.json") && err.contains("format 2"),
            "{err}"
        );
    }
}
