//! A test CA and a leaf it signed for `localhost`, as PEM files: a "public" certificate
//! for WAN endpoints. A process trusts it when `SSL_CERT_FILE` names [`Pki::ca`] (the
//! platform verifier reads it on Linux).

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// The files, and the leaf for an in-process server.
pub struct Pki {
    _dir: tempfile::TempDir,
    /// The leaf, PEM.
    pub cert: PathBuf,
    /// Its key, PEM.
    pub key: PathBuf,
    /// The CA, PEM: what `SSL_CERT_FILE` names.
    pub ca: PathBuf,
    leaf_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Pki {
    /// A fresh CA and a `localhost` leaf.
    pub fn localhost() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &*ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca_file) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert, leaf.pem()).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
        std::fs::write(&ca_file, AsRef::<rcgen::Certificate>::as_ref(&ca).pem()).unwrap();
        Pki {
            _dir: dir,
            cert,
            key,
            ca: ca_file,
            leaf_der: leaf.der().to_vec(),
            key_der: leaf_key.serialize_der(),
        }
    }

    /// A TLS server configuration serving the leaf.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = s2_kit::connect::tls::default_provider().unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.leaf_der.clone().into()], key)
            .unwrap();
        Arc::new(config)
    }
}
