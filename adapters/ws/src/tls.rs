//! TLS for both ends: the client's three ways to trust a CEM, and the server's
//! certificate.
//!
//! The crypto provider is always named explicitly (ring) rather than taken from rustls's
//! process default: letting rustls resolve its own provider panics when none or two are
//! compiled in, and a panic in a dialler is a dead link.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest as _;

use crate::{ClientConfig, TlsFiles, WsError};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration a `wss://` dial uses.
///
/// With a pin, exactly the pinned leaf certificate is accepted (the handshake signature is
/// still checked, so whoever presents it must hold its key); otherwise the CA file, if
/// any, is the only trust anchor; otherwise the platform's root store.
pub(crate) fn client_config(config: &ClientConfig) -> Result<Arc<rustls::ClientConfig>, WsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| WsError::Tls(e.to_string()))?;
    let config = if let Some(pin) = &config.pin_sha256 {
        let pin = parse_pin(pin)?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedLeaf { pin, provider }))
            .with_no_client_auth()
    } else if let Some(ca_file) = &config.ca_file {
        builder
            .with_root_certificates(roots_from_file(ca_file)?)
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(native_roots()?)
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, WsError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| WsError::Tls(format!("CA file {}: {e}", path.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| WsError::Tls(format!("CA file {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| WsError::Tls(format!("CA file {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(WsError::Tls(format!(
            "CA file {} holds no certificate",
            path.display()
        )));
    }
    Ok(roots)
}

fn native_roots() -> Result<RootCertStore, WsError> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::debug!(%error, "a platform root certificate could not be loaded");
    }
    let mut roots = RootCertStore::empty();
    // A platform store often holds a few certificates rustls cannot use; the rest is fine.
    let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(WsError::Tls(
            "no usable root certificate in the platform store: configure a CA file or a pin"
                .to_string(),
        ));
    }
    Ok(roots)
}

/// Parse a SHA-256 fingerprint written as 64 hex digits, colons and spaces allowed.
pub(crate) fn parse_pin(text: &str) -> Result<[u8; 32], WsError> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !matches!(b, b':' | b' ' | b'\t'))
        .collect();
    let bad = || WsError::Config(format!("pin_sha256 is not 64 hex digits: {text:?}"));
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| bad())?;
        *slot = u8::from_str_radix(text, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The SHA-256 of a DER certificate.
pub(crate) fn fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = sha2::Sha256::digest(der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_slice());
    out
}

/// Accepts exactly one leaf certificate, identified by its SHA-256.
///
/// Names and validity dates are not checked: the pin is the whole trust decision, as
/// with a self-signed CEM certificate on a LAN. The handshake signature is checked, so a
/// stolen certificate without its key is useless.
#[derive(Debug)]
struct PinnedLeaf {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity.as_ref());
        // Not a secret, but a constant-time comparison costs nothing.
        let differs = seen
            .iter()
            .zip(self.pin.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differs == 0 {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(
                presented = %hex(&seen),
                "the server's certificate does not match the pinned fingerprint"
            );
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The acceptor for the server's `wss://`, from PEM certificate chain and key files.
pub(crate) fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, WsError> {
    let cert_err = |e: &dyn std::fmt::Display| {
        WsError::Tls(format!(
            "certificate file {}: {e}",
            files.cert_file.display()
        ))
    };
    let chain = CertificateDer::pem_file_iter(&files.cert_file)
        .map_err(|e| cert_err(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(&e))?;
    if chain.is_empty() {
        return Err(cert_err(&"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| WsError::Tls(format!("key file {}: {e}", files.key_file.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| WsError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| WsError::Tls(format!("certificate and key do not fit: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_and_without_colons() {
        let plain = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let colons = hex(&parse_pin(plain).unwrap_or([9; 32]));
        assert_eq!(parse_pin(plain).ok(), parse_pin(&colons).ok());
        assert_eq!(parse_pin(plain).ok().map(|p| p[1]), Some(0x11));
        assert!(parse_pin("abc").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }
}
