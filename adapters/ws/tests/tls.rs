//! wss: the client link's three trust modes against test certificates made by rcgen,
//! and the server's TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use s2gw_core::s2::MessageKind;
use s2gw_core::{BusEvent, CancellationToken, Endpoint, EndpointPeer};
use s2gw_ws::{ClientConfig, Server, ServerConfig, TlsFiles, WsError, spawn_client};
use sha2::Digest as _;

const NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    ca: Option<PathBuf>,
    leaf_der: Vec<u8>,
}

fn names() -> Vec<String> {
    NAMES.iter().map(|n| n.to_string()).collect()
}

/// A self-signed leaf.
fn self_signed() -> Files {
    let certified = rcgen::generate_simple_self_signed(names()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    Files {
        leaf_der: certified.cert.der().to_vec(),
        _dir: dir,
        cert,
        key,
        ca: None,
    }
}

/// A CA and a leaf it signed.
fn ca_signed() -> Files {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names())
        .unwrap()
        .signed_by(&leaf_key, &*ca)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, AsRef::<rcgen::Certificate>::as_ref(&ca).pem()).unwrap();
    Files {
        leaf_der: leaf.der().to_vec(),
        _dir: dir,
        cert,
        key,
        ca: Some(ca_file),
    }
}

fn hex_colons(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Our own server, wss, with a native RM slot for `r1`.
async fn wss_server(files: &Files) -> (String, EndpointPeer, CancellationToken) {
    trace();
    let mut server = Server::bind(ServerConfig {
        tls: Some(TlsFiles {
            cert_file: files.cert.clone(),
            key_file: files.key.clone(),
        }),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let (endpoint, rm) = Endpoint::pair(64);
    server.add_native_rm("r1".to_string(), endpoint);
    let port = server.local_addr().port();
    let shutdown = CancellationToken::new();
    server.spawn(shutdown.clone());
    (
        format!("wss://127.0.0.1:{port}/s2/rm/{{resource_id}}"),
        rm,
        shutdown,
    )
}

fn link(config: ClientConfig) -> (EndpointPeer, CancellationToken) {
    let (endpoint, peer) = Endpoint::pair(64);
    let shutdown = CancellationToken::new();
    spawn_client(config, "r1".to_string(), endpoint, shutdown.clone());
    (peer, shutdown)
}

/// The gateway's client link dials the gateway's own wss server: link (CEM side) to
/// native-RM slot (RM side). An RM frame put on the link's bus arrives at the slot's bus.
async fn assert_bridge_works(mut link_peer: EndpointPeer, mut rm: EndpointPeer) {
    to_adapter(&link_peer, BusEvent::Up).await;
    expect_up(&mut link_peer).await;
    expect_up(&mut rm).await;
    let (_, frames) = rm_session();
    to_adapter(&link_peer, BusEvent::Frame(frames[0].clone())).await;
    assert_eq!(expect_frame(&mut rm).await.kind(), MessageKind::Handshake);
}

#[tokio::test]
async fn a_pinned_fingerprint_is_accepted() {
    let files = self_signed();
    let (url, rm, server_stop) = wss_server(&files).await;
    let pin = hex_colons(&sha2::Sha256::digest(&files.leaf_der));
    let (peer, link_stop) = link(ClientConfig {
        url,
        pin_sha256: Some(pin),
        ..ClientConfig::default()
    });
    assert_bridge_works(peer, rm).await;
    link_stop.cancel();
    server_stop.cancel();
}

#[tokio::test]
async fn a_ca_file_is_accepted() {
    let files = ca_signed();
    let (url, rm, server_stop) = wss_server(&files).await;
    let (peer, link_stop) = link(ClientConfig {
        url,
        ca_file: files.ca.clone(),
        ..ClientConfig::default()
    });
    assert_bridge_works(peer, rm).await;
    link_stop.cancel();
    server_stop.cancel();
}

/// A raw TLS listener, so the test can watch the handshake fail.
async fn raw_tls(files: &Files) -> (tokio::net::TcpListener, tokio_rustls::TlsAcceptor) {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    (
        listener().await,
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    )
}

async fn assert_refused(
    config: ClientConfig,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    let (mut peer, stop) = link(config);
    to_adapter(&peer, BusEvent::Up).await;
    // Twice: refused, and refused again on the redial (the link keeps trying).
    for _ in 0..2 {
        let (tcp, _) = guard("a dial", listener.accept()).await.unwrap();
        let handshake = guard("the TLS handshake", acceptor.accept(tcp)).await;
        assert!(handshake.is_err(), "the client must abort the handshake");
    }
    assert!(
        peer.rx.try_recv().is_err(),
        "no Up without a trusted server"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_wrong_pin_is_refused() {
    trace();
    let files = self_signed();
    let (listener, acceptor) = raw_tls(&files).await;
    let port = listener.local_addr().unwrap().port();
    let config = ClientConfig {
        url: format!("wss://127.0.0.1:{port}/s2/{{resource_id}}"),
        pin_sha256: Some("00".repeat(32)),
        backoff: (Duration::from_millis(20), Duration::from_millis(100)),
        ..ClientConfig::default()
    };
    assert_refused(config, listener, acceptor).await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    trace();
    let files = self_signed();
    let other = ca_signed();
    let (listener, acceptor) = raw_tls(&files).await;
    let port = listener.local_addr().unwrap().port();
    let config = ClientConfig {
        url: format!("wss://127.0.0.1:{port}/s2/{{resource_id}}"),
        ca_file: other.ca.clone(),
        backoff: (Duration::from_millis(20), Duration::from_millis(100)),
        ..ClientConfig::default()
    };
    assert_refused(config, listener, acceptor).await;
}

#[tokio::test]
async fn unusable_tls_files_fail_at_bind() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let error = Server::bind(ServerConfig {
        tls: Some(TlsFiles {
            cert_file: missing.clone(),
            key_file: missing.clone(),
        }),
        ..ServerConfig::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(error, WsError::Tls(_)), "{error}");
    assert!(error.to_string().contains("missing.pem"), "{error}");
}
