//! `[server]`: the gateway's S2-ws-json server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use s2gw_core::Secret;
use serde::Deserialize;

use super::load::Cx;
use super::located::{Count, SecretText, Text};

/// `[server]`: the S2-ws-json server for native RMs (`/s2/rm/<id>`) and CEMs that dial in
/// (`/s2/cem/<resource_id>`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSection {
    /// `listen`: socket address to bind.
    pub listen: SocketAddr,
    /// Bearer token clients must present (`token_file`, or `S2GW_SERVER__TOKEN`).
    pub token: Option<Secret>,
    /// `tls_cert_file` + `tls_key_file`: serve wss instead of ws.
    pub tls: Option<TlsFiles>,
    /// `max_connections`: sockets held at once, in handshake or in session (default 128);
    /// more are closed at once.
    pub max_connections: usize,
    /// `handshake_timeout_s`: TLS plus the HTTP upgrade must be done within this of the
    /// accept (default 10 s).
    pub handshake_timeout: Duration,
    /// `max_failed_auth_per_min`: failed bearer checks per address and minute before it
    /// gets 429 for the rest of the minute (default 10).
    pub max_failed_auth_per_min: u32,
}

/// A certificate chain and its private key, both PEM files (existence checked at load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `tls_cert_file`.
    pub cert_file: PathBuf,
    /// `tls_key_file`.
    pub key_file: PathBuf,
}

/// `[server]` as written. Fields in alphabetical order: serde lists them in declaration
/// order in `unknown key (known keys: …)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerToml {
    handshake_timeout_s: Option<Count<300>>,
    listen: Option<Text>,
    max_connections: Option<Count<65_536>>,
    max_failed_auth_per_min: Option<Count<10_000>>,
    tls_cert_file: Option<Text>,
    tls_key_file: Option<Text>,
    /// Only from the environment (a `token` in the file is refused before this).
    token: Option<SecretText>,
    token_file: Option<Text>,
}

impl Cx<'_> {
    /// Read `[server]`.
    pub(crate) fn server(&mut self, table: &toml::Table) -> Option<ServerSection> {
        let mark = self.mark();
        let (raw, at) = self.read::<ServerToml>(table, "server")?;
        let listen = at
            .required(self.errors, "listen", raw.listen)
            .and_then(|Text(l)| self.socket_addr(&at, "listen", &l, 8080));
        let token = self.secret(
            &at,
            ("token", raw.token.map(|t| t.0)),
            ("token_file", raw.token_file.map(|t| t.0)),
        );
        let cert = self.existing_file(&at, "tls_cert_file", raw.tls_cert_file.map(|t| t.0));
        let key = self.existing_file(&at, "tls_key_file", raw.tls_key_file.map(|t| t.0));
        let tls = match (at.given("tls_cert_file"), at.given("tls_key_file")) {
            (true, false) => {
                at.err(
                    self.errors,
                    "tls_cert_file",
                    "tls_cert_file is set but tls_key_file is not: give both or neither",
                );
                None
            }
            (false, true) => {
                at.err(
                    self.errors,
                    "tls_key_file",
                    "tls_key_file is set but tls_cert_file is not: give both or neither",
                );
                None
            }
            _ => cert.zip(key).map(|(cert_file, key_file)| TlsFiles {
                cert_file,
                key_file,
            }),
        };
        if !self.clean_since(mark) {
            return None;
        }
        let defaults = s2gw_ws::ServerConfig::default();
        Some(ServerSection {
            listen: listen?,
            token: token?,
            tls,
            max_connections: raw.max_connections.map_or(defaults.max_connections, |c| {
                usize::try_from(c.0).unwrap_or(usize::MAX)
            }),
            handshake_timeout: raw
                .handshake_timeout_s
                .map_or(defaults.handshake_timeout, |c| Duration::from_secs(c.0)),
            max_failed_auth_per_min: raw
                .max_failed_auth_per_min
                .map_or(defaults.max_failed_auth_per_min, |c| {
                    u32::try_from(c.0).unwrap_or(u32::MAX)
                }),
        })
    }
}
