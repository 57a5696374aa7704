//! The pairing server's TLS identity: self-signed and kept, or an installer's files.
//!
//! In a LAN pairing the CEM binds its challenge response to the fingerprint of the leaf
//! this endpoint serves, so the leaf must not change under a pairing in flight. A
//! self-signed identity is generated once and kept in
//! `<state_dir>/s2connect/endpoint-identity.json` (0600: it holds the private key); it is
//! regenerated only when the names it must carry change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use s2gw_core::s2::connect::{Fingerprint, SelfSignedEndpoint};
use serde::{Deserialize, Serialize};

use crate::store::{StoreError, dir, write_atomically};

/// Where the pairing server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// Generated once for these names (host names or IP literals the CEM dials) and kept
    /// in the state directory.
    SelfSigned {
        /// The names the certificate carries; the first is its common name.
        names: Vec<String>,
    },
    /// PEM files: the chain (leaf first) and its private key.
    Files {
        /// The certificate chain.
        cert_file: PathBuf,
        /// The private key.
        key_file: PathBuf,
    },
}

/// A certificate chain and key to serve, and the leaf fingerprint pairings bind to.
#[derive(Debug)]
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The fingerprint of the leaf: the `F` of every LAN challenge response.
    pub leaf: Fingerprint,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    names: Vec<String>,
    /// DER, hex; leaf first.
    chain: Vec<String>,
    /// PKCS#8 DER, hex.
    key: String,
}

impl Identity {
    /// Load (or generate and keep) the identity `source` names.
    pub fn load(state_dir: &Path, source: &IdentitySource) -> Result<Self, StoreError> {
        match source {
            IdentitySource::SelfSigned { names } => Self::self_signed(state_dir, names),
            IdentitySource::Files {
                cert_file,
                key_file,
            } => Self::from_files(cert_file, key_file),
        }
    }

    /// The rustls configuration serving this identity.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let ca = self
            .chain
            .last()
            .cloned()
            .ok_or("no certificate to serve")?;
        SelfSignedEndpoint {
            ca,
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            leaf: self.leaf,
        }
        .server_config()
        .map_err(|e| e.to_string())
    }

    fn self_signed(state_dir: &Path, names: &[String]) -> Result<Self, StoreError> {
        let path = dir(state_dir).join("endpoint-identity.json");
        if let Some(kept) = read_kept(&path)?
            && kept.names == names
        {
            return decode(&path, &kept);
        }
        let fresh = SelfSignedEndpoint::generate(names.iter().cloned()).map_err(|e| {
            StoreError::Corrupt {
                path: path.clone(),
                reason: format!("cannot generate a certificate: {e}"),
            }
        })?;
        let PrivateKeyDer::Pkcs8(key) = &fresh.key else {
            return Err(StoreError::Corrupt {
                path,
                reason: "the generated key is not PKCS#8".into(),
            });
        };
        let disk = OnDisk {
            names: names.to_vec(),
            chain: fresh
                .chain
                .iter()
                .map(|c| s2gw_core::hex::encode(c))
                .collect(),
            key: s2gw_core::hex::encode(key.secret_pkcs8_der()),
        };
        let bytes = serde_json::to_vec_pretty(&disk).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomically(&path, &bytes)?;
        tracing::info!(path = %path.display(), names = ?names, "generated the pairing server's self-signed certificate");
        Ok(Self {
            chain: fresh.chain,
            key: fresh.key,
            leaf: fresh.leaf,
        })
    }

    fn from_files(cert_file: &Path, key_file: &Path) -> Result<Self, StoreError> {
        let bad = |path: &Path, reason: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(cert_file)
            .map_err(|e| bad(cert_file, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(cert_file, e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(bad(cert_file, "no certificate in the file".into()));
        };
        let leaf = Fingerprint::of(leaf);
        let key =
            PrivateKeyDer::from_pem_file(key_file).map_err(|e| bad(key_file, e.to_string()))?;
        Ok(Self { chain, key, leaf })
    }
}

fn read_kept(path: &Path) -> Result<Option<OnDisk>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("unreadable JSON at line {}", e.line()),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn decode(path: &Path, kept: &OnDisk) -> Result<Identity, StoreError> {
    let corrupt = || StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: "a certificate or the key is not hex".into(),
    };
    let chain = kept
        .chain
        .iter()
        .map(|hex| s2gw_core::hex::decode(hex).map(CertificateDer::from))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(corrupt)?;
    let key = s2gw_core::hex::decode(&kept.key).ok_or_else(corrupt)?;
    let leaf = chain.first().map(Fingerprint::of).ok_or_else(corrupt)?;
    Ok(Identity {
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        leaf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_self_signed_identity_is_kept_until_its_names_change() {
        let state = tempfile::tempdir().unwrap();
        let names = IdentitySource::SelfSigned {
            names: vec!["localhost".into(), "127.0.0.1".into()],
        };
        let first = Identity::load(state.path(), &names).unwrap();
        let again = Identity::load(state.path(), &names).unwrap();
        assert!(first.leaf.matches(&again.leaf), "kept across loads");
        again.server_config().unwrap();
        let path = dir(state.path()).join("endpoint-identity.json");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "it holds the private key");

        let renamed = IdentitySource::SelfSigned {
            names: vec!["gw.local".into()],
        };
        let other = Identity::load(state.path(), &renamed).unwrap();
        assert!(!first.leaf.matches(&other.leaf), "new names, new leaf");
    }

    #[test]
    fn a_corrupt_identity_file_is_an_error_naming_it() {
        let state = tempfile::tempdir().unwrap();
        let path = dir(state.path()).join("endpoint-identity.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{ not json").unwrap();
        let source = IdentitySource::SelfSigned {
            names: vec!["localhost".into()],
        };
        let err = Identity::load(state.path(), &source)
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoint-identity.json"), "{err}");
    }
}
