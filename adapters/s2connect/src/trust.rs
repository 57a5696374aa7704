//! How the gateway trusts a paired CEM's certificate after pairing.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use s2gw_core::s2::connect::{Fingerprint, TlsClient, TlsPolicy};

use crate::store::{StoredPairing, StoredTls};

/// How long fetching a CEM's certificate may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The TLS policy for every connection to the CEM of `pairing`, and the trust to store
/// instead when it changed (a CA known by fingerprint only is now pinned).
pub(crate) async fn policy(
    pairing: &StoredPairing,
) -> Result<(TlsPolicy, Option<StoredTls>), String> {
    match &pairing.tls {
        StoredTls::Web => Ok((TlsPolicy::Web, None)),
        StoredTls::CemDialsIn => Err(
            "this pairing makes the gateway the communication server: the CEM dials in, \
             which needs [s2connect] deployment = \"wan\""
                .to_string(),
        ),
        StoredTls::PinnedCa(hex) => s2gw_core::hex::decode(hex)
            .map(|der| (TlsPolicy::PinnedCa(der.into()), None))
            .ok_or_else(|| "the pinned CA certificate is not hex".to_string()),
        StoredTls::CaFingerprint(hex) => {
            let expected = Fingerprint::parse(hex)
                .map_err(|_| "the stored CA fingerprint is not SHA-256 hex".to_string())?;
            let root = fetch_root(&pairing.initiate_session_url, &expected).await?;
            let stored = StoredTls::PinnedCa(s2gw_core::hex::encode(&root));
            Ok((TlsPolicy::PinnedCa(root), Some(stored)))
        }
    }
}

/// The root of the chain the server at `url` presents, if a certificate in that chain
/// has the fingerprint `expected`.
///
/// The fingerprint came through the HMAC-authenticated pairing, so a chain carrying it
/// is the CEM's; S2 Connect names the CA's fingerprint, and a CEM that sent its leaf's
/// is accepted too, since that leaf was signed by the root pinned here.
async fn fetch_root(url: &str, expected: &Fingerprint) -> Result<CertificateDer<'static>, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    // Trust nothing, record the chain: the fingerprint check below is the trust.
    let capture = TlsClient::new(&TlsPolicy::LanPairingOnly).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&capture.config()));
    let name = ServerName::try_from(host.clone()).map_err(|e| format!("{host}: {e}"))?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        connector.connect(name, tcp).await
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| format!("{url}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let captured = capture
        .captured()
        .ok_or_else(|| format!("{url}: the handshake presented no certificate"))?;
    if !captured
        .chain
        .iter()
        .any(|cert| Fingerprint::of(cert).matches(expected))
    {
        return Err(format!(
            "{url}: the CEM's certificate is not the one it named when pairing (fingerprint mismatch); pair again"
        ));
    }
    Ok(captured.root)
}
