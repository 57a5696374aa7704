//! Pairing codes the gateway shows, for a CEM that pairs with the gateway's server.
//!
//! A code is `<alias>-<token>`: the alias names the resource (one endpoint hosts them
//! all), the token is the secret. `s2gw pairing-code` (or the Home Assistant button)
//! writes `<state_dir>/s2connect/<device>.pairing-code`, mode 0600; the daemon's pairing
//! server reads it on every `requestPairing`, so a code issued while the daemon runs is
//! valid at once, and a completed pairing deletes it (single use).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use s2gw_core::s2::connect::{PairingToken, TokenKind};
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, dir, write_atomically};

/// How long a code is valid unless the config says otherwise: the five minutes S2
/// Connect recommends for a dynamic token.
pub const DEFAULT_CODE_VALIDITY: Duration = Duration::from_secs(300);

/// Characters in a token: 10 of 62 symbols, about 59 bits, so the HMAC a pairing
/// attempt reveals cannot be brute-forced offline within the code's few minutes.
const TOKEN_LEN: usize = 10;

/// The longest alias taken from a device id (S2 Connect allows 64; people type it).
const MAX_ALIAS: usize = 16;

/// A pairing code just issued.
#[derive(Debug, Clone)]
pub struct IssuedCode {
    /// `<alias>-<token>`, what the user types into the CEM. A secret while it is valid.
    pub code: String,
    /// When it stops being accepted.
    pub expires: SystemTime,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    token: String,
    expires_unix_s: u64,
}

/// The pairing code file of one resource.
#[derive(Debug, Clone)]
pub struct PairingCodes {
    path: PathBuf,
    alias: String,
}

impl PairingCodes {
    /// The codes of `device` (known to CEMs as `alias`) under `state_dir`.
    pub fn new(state_dir: &Path, device: &str, alias: &str) -> Self {
        Self {
            path: dir(state_dir).join(format!("{device}.pairing-code")),
            alias: alias.to_string(),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Issue a fresh code valid for `validity`, replacing any earlier one.
    pub fn issue(&self, validity: Duration) -> Result<IssuedCode, StoreError> {
        let token: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(TOKEN_LEN)
            .map(char::from)
            .collect();
        let expires = SystemTime::now() + validity;
        let disk = OnDisk {
            token: token.clone(),
            expires_unix_s: unix_s(expires),
        };
        let bytes = serde_json::to_vec(&disk).map_err(|e| self.corrupt(e.to_string()))?;
        write_atomically(&self.path, &bytes)?;
        Ok(IssuedCode {
            code: format!("{}-{token}", self.alias),
            expires,
        })
    }

    /// The token of the code now valid, if there is one.
    pub fn current(&self, now: SystemTime) -> Result<Option<PairingToken>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let disk: OnDisk = serde_json::from_slice(&bytes)
            .map_err(|e| self.corrupt(format!("unreadable JSON at line {}", e.line())))?;
        if disk.expires_unix_s <= unix_s(now) {
            return Ok(None);
        }
        PairingToken::parse(&disk.token, TokenKind::Dynamic)
            .map(Some)
            .map_err(|_| self.corrupt("the token is not a pairing token".into()))
    }

    /// Withdraw the code (used, or the user cancelled).
    pub fn withdraw(&self) -> Result<(), StoreError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn corrupt(&self, reason: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }
}

fn unix_s(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The alias of each resource, in the order given: its id's letters and digits (S2
/// Connect's alias is `[0-9a-zA-Z]+`), made unique by a number where two would clash.
///
/// Both `s2gw pairing-code` and the daemon compute it from the config's device order,
/// so they agree without storing it.
pub fn aliases<'a>(devices: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken: Vec<String> = Vec::new();
    for device in devices {
        let base: String = device
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(MAX_ALIAS)
            .collect();
        let base = if base.is_empty() { "node".into() } else { base };
        let mut alias = base.clone();
        let mut n = 2;
        while taken.contains(&alias) {
            alias = format!("{base}{n}");
            n += 1;
        }
        taken.push(alias);
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_keep_letters_and_digits_and_never_clash() {
        assert_eq!(
            aliases(["ev-charger", "evcharger", "pv_1", "--"]),
            ["evcharger", "evcharger2", "pv1", "node"]
        );
    }

    #[test]
    fn an_issued_code_is_valid_until_it_expires_and_gone_once_withdrawn() {
        let state = tempfile::tempdir().unwrap();
        let codes = PairingCodes::new(state.path(), "pv-1", "pv1");
        let issued = codes.issue(Duration::from_secs(60)).unwrap();
        let (alias, token) = issued.code.split_once('-').unwrap();
        assert_eq!(alias, "pv1");
        assert_eq!(token.len(), TOKEN_LEN);
        let now = SystemTime::now();
        let current = codes.current(now).unwrap().unwrap();
        assert_eq!(
            current,
            PairingToken::parse(token, TokenKind::Dynamic).unwrap()
        );
        assert!(
            codes
                .current(now + Duration::from_secs(61))
                .unwrap()
                .is_none()
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(codes.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        codes.withdraw().unwrap();
        assert!(codes.current(now).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_code_file_is_an_error_naming_it_without_its_content() {
        let state = tempfile::tempdir().unwrap();
        let codes = PairingCodes::new(state.path(), "pv", "pv");
        std::fs::create_dir_all(codes.path().parent().unwrap()).unwrap();
        std::fs::write(codes.path(), "{\"token\": \"s3cr3tXYZ\"").unwrap();
        let err = codes.current(SystemTime::now()).unwrap_err().to_string();
        assert!(err.contains("pv.pairing-code"), "{err}");
        assert!(!err.contains("s3cr3tXYZ"), "{err}");
    }
}
