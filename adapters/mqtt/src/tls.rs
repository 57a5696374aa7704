//! The rustls client configuration towards the broker.
//!
//! The crypto provider is named explicitly (ring), as in the WebSocket adapter: leaving
//! rustls to pick a process default panics when none or two are compiled in.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{MqttError, TlsConfig};

/// Build the client configuration: the CA file (or the platform roots) as trust anchors,
/// and the client certificate when one is configured.
pub(crate) fn client_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match &tls.ca_file {
        Some(path) => roots_from_file(path)?,
        None => native_roots()?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = certs_from_file(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| MqttError::Tls(format!("client key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| MqttError::Tls(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn certs_from_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let bad = |e: &dyn std::fmt::Display| MqttError::Tls(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"holds no certificate"));
    }
    Ok(certs)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, MqttError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_file(path)? {
        roots
            .add(cert)
            .map_err(|e| MqttError::Tls(format!("CA file {}: {e}", path.display())))?;
    }
    Ok(roots)
}

fn native_roots() -> Result<RootCertStore, MqttError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // A platform store often holds a few certificates rustls cannot use; the rest is fine.
    let _ = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(MqttError::Tls(
            "no usable root certificate in the platform store: configure tls.ca_file".to_string(),
        ));
    }
    Ok(roots)
}
