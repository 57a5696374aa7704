//! `[web]`: the status pages, `/metrics` and `/healthz`.

use std::net::SocketAddr;

use s2gw_core::Secret;
use serde::Deserialize;

use super::load::Cx;
use super::located::{SecretText, Text};

/// Default `web.listen`: loopback only, so nothing is exposed until an installer asks.
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:8088";

/// `[web]`: the web UI, Prometheus metrics and health endpoint of the daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct WebSection {
    /// `listen`: socket address to bind (default `127.0.0.1:8088`).
    pub listen: SocketAddr,
    /// The password people log in with (`password_file`, or `S2GW_WEB__PASSWORD`).
    /// Required when `listen` is not a loopback address.
    pub password: Option<Secret>,
}

/// `[web]` as written. Fields in alphabetical order: serde lists them in declaration
/// order in `unknown key (known keys: …)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebToml {
    listen: Option<Text>,
    /// Only from the environment (a `password` in the file is refused before this).
    password: Option<SecretText>,
    password_file: Option<Text>,
}

impl Cx<'_> {
    /// Read `[web]`.
    pub(crate) fn web(&mut self, table: &toml::Table) -> Option<WebSection> {
        let mark = self.mark();
        let (raw, at) = self.read::<WebToml>(table, "web")?;
        let text = raw
            .listen
            .map_or_else(|| DEFAULT_WEB_LISTEN.to_string(), |t| t.0);
        let listen = self.socket_addr(&at, "listen", &text, 8088);
        let password = self.secret(
            &at,
            ("password", raw.password.map(|t| t.0)),
            ("password_file", raw.password_file.map(|t| t.0)),
        );
        if let (Some(addr), Some(None)) = (listen, &password)
            && !addr.ip().is_loopback()
        {
            at.err(
                self.errors,
                "listen",
                format!(
                    "{addr} is reachable from other machines, so the web UI needs a password: \
                     set password_file (or S2GW_WEB__PASSWORD), or listen on 127.0.0.1"
                ),
            );
        }
        if !self.clean_since(mark) {
            return None;
        }
        Some(WebSection {
            listen: listen?,
            password: password?,
        })
    }
}
