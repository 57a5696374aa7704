//! `[cem.NAME]`: the links to CEMs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use s2gw_core::Secret;
use serde::Deserialize;

use super::load::{Cx, Present};
use super::located::{At, SecretText, Text, Uint, type_name};

/// Default and minimum of `cem.NAME.ping_interval_s`, in seconds.
pub const MIN_PING_INTERVAL_S: u64 = 50;
/// Default `cem.NAME.dead_after_s`, in seconds.
pub const DEFAULT_DEAD_AFTER_S: u64 = 120;

/// `[cem.NAME]`: one link to a CEM, shared by the resources routed to it (one S2 session
/// per resource).
#[derive(Debug, Clone, PartialEq)]
pub struct CemLink {
    /// The NAME in `[cem.NAME]`.
    pub name: String,
    /// How the link is made.
    pub transport: CemTransport,
    /// `token_file` (or `S2GW_CEM__<NAME>__TOKEN`): for `ws-client`, the bearer token the
    /// gateway presents; for `ws-server`, the token the CEM must present (besides the
    /// server's own, if any).
    pub token: Option<Secret>,
    /// `ping_interval_s`: WebSocket ping period (default and minimum 50 s).
    pub ping_interval: Duration,
    /// `dead_after_s`: the link counts as lost after this long without any frame or pong
    /// (default 120 s; more than the ping interval).
    pub dead_after: Duration,
}

/// How a CEM link is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CemTransport {
    /// `transport = "ws-client"`: the gateway dials the CEM.
    WsClient {
        /// `url`: `ws://` or `wss://`, may contain `{resource_id}` and `{id}`.
        url: String,
        /// `ca_file`: trust these CA certificates (PEM) instead of the system roots.
        ca_file: Option<PathBuf>,
        /// `pin_sha256`: accept only a server certificate with this SHA-256 fingerprint.
        pin_sha256: Option<[u8; 32]>,
    },
    /// `transport = "ws-server"`: the CEM dials `/s2/cem/<resource_id>` on `[server]`.
    WsServer,
    /// `transport = "mqtt"`: the CEM lives on MQTT (`<base>/s2/<resource_id>/…` on the
    /// `[mqtt]` broker, as docs/s2-over-mqtt.md describes); the gateway plays the RM side.
    Mqtt,
    /// `transport = "s2connect"`: S2 Connect 1.0. No URL or token: before each session
    /// the gateway initiates one with the CEM the resource is paired with (`s2gw pair`;
    /// pairings live in `gateway.state_dir`) and dials the WebSocket URL it is given.
    S2Connect,
}

impl CemTransport {
    /// The config spelling (`ws-client`, `ws-server`, `mqtt`).
    pub fn name(&self) -> &'static str {
        match self {
            CemTransport::WsClient { .. } => "ws-client",
            CemTransport::WsServer => "ws-server",
            CemTransport::Mqtt => "mqtt",
            CemTransport::S2Connect => "s2connect",
        }
    }
}

/// `[cem.NAME]` as written. Fields in alphabetical order: serde lists them in declaration
/// order in `unknown key (known keys: …)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CemToml {
    ca_file: Option<Text>,
    dead_after_s: Option<Uint<86_400>>,
    pin_sha256: Option<Text>,
    ping_interval_s: Option<Uint<3600>>,
    /// Only from the environment (a `token` in the file is refused before this).
    token: Option<SecretText>,
    token_file: Option<Text>,
    transport: Option<Text>,
    url: Option<Text>,
}

/// Every `[cem.NAME]` in `table`; a link that failed maps to `None` so references to it
/// are not reported a second time as unknown.
pub(crate) fn links(
    cx: &mut Cx<'_>,
    table: Option<toml::Table>,
    present: Present,
) -> BTreeMap<String, Option<CemLink>> {
    let mut out = BTreeMap::new();
    for (name, value) in table.unwrap_or_default() {
        let path = format!("cem.{name}");
        let link = match value {
            toml::Value::Table(link) => cx.cem_link(&name, &path, &link, present),
            other => {
                cx.err(
                    &path,
                    format!(
                        "expected a table ([cem.{name}]), found {}",
                        type_name(&other)
                    ),
                );
                None
            }
        };
        out.insert(name, link);
    }
    out
}

impl Cx<'_> {
    fn cem_link(
        &mut self,
        name: &str,
        path: &str,
        table: &toml::Table,
        present: Present,
    ) -> Option<CemLink> {
        let mark = self.mark();
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && !name.contains("__")
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            self.err(
                path,
                "a CEM link name must be 1 to 32 of [a-z0-9_] without `__`, so that \
                 S2GW_CEM__<NAME>__<KEY> environment variables can address it",
            );
        }
        let (raw, at) = self.read::<CemToml>(table, path)?;
        let transport = raw
            .transport
            .map_or_else(|| "ws-client".to_string(), |t| t.0);
        let url = raw.url.map(|t| t.0);
        let token = self.secret(
            &at,
            ("token", raw.token.map(|t| t.0)),
            ("token_file", raw.token_file.map(|t| t.0)),
        );
        let ca_file = self.existing_file(&at, "ca_file", raw.ca_file.map(|t| t.0));
        let pin = raw.pin_sha256.map(|t| t.0);
        let ping = raw.ping_interval_s.map_or(MIN_PING_INTERVAL_S, |u| u.0);
        let dead = raw.dead_after_s.map_or(DEFAULT_DEAD_AFTER_S, |u| u.0);
        if ping < MIN_PING_INTERVAL_S {
            at.err(
                self.errors,
                "ping_interval_s",
                format!("must be at least {MIN_PING_INTERVAL_S} seconds, got {ping}"),
            );
        }
        if dead <= ping {
            at.err(
                self.errors,
                "dead_after_s",
                format!("must be longer than ping_interval_s ({ping} s), got {dead}"),
            );
        }
        let transport = match transport.as_str() {
            "ws-client" => {
                let url = match url {
                    Some(u) => self.check_url(&at, &u).then_some(u),
                    None if at.given("url") => None,
                    None => {
                        at.err(
                            self.errors,
                            "url",
                            "missing required key (transport \"ws-client\" dials this url)",
                        );
                        None
                    }
                };
                let tls = url.as_deref().is_some_and(|u| u.starts_with("wss://"));
                for (given, k) in [
                    (ca_file.is_some(), "ca_file"),
                    (pin.is_some(), "pin_sha256"),
                ] {
                    if given && url.is_some() && !tls {
                        at.err(self.errors, k, format!("{k} only applies to wss:// urls"));
                    }
                }
                let pin_sha256 = pin.and_then(|p| match parse_pin(&p) {
                    Some(bytes) => Some(bytes),
                    None => {
                        at.err(
                            self.errors,
                            "pin_sha256",
                            "expected a SHA-256 fingerprint: 64 hex digits, optionally in \
                             colon-separated pairs",
                        );
                        None
                    }
                });
                url.map(|url| CemTransport::WsClient {
                    url,
                    ca_file,
                    pin_sha256,
                })
            }
            "ws-server" => {
                for (given, k) in [
                    (url.is_some(), "url"),
                    (ca_file.is_some(), "ca_file"),
                    (pin.is_some(), "pin_sha256"),
                ] {
                    if given {
                        at.err(
                            self.errors,
                            k,
                            format!("{k} only applies to transport \"ws-client\""),
                        );
                    }
                }
                if !present.server {
                    at.err(
                        self.errors,
                        "transport",
                        "transport \"ws-server\" needs a [server] section: the CEM dials in at \
                         /s2/cem/<resource_id> on the gateway's S2 server",
                    );
                }
                Some(CemTransport::WsServer)
            }
            "mqtt" => {
                let websocket_only = [
                    (url.is_some(), "url"),
                    (ca_file.is_some(), "ca_file"),
                    (pin.is_some(), "pin_sha256"),
                    (token.as_ref().is_some_and(Option::is_some), "token_file"),
                    (at.given("ping_interval_s"), "ping_interval_s"),
                    (at.given("dead_after_s"), "dead_after_s"),
                ];
                for (given, k) in websocket_only {
                    if given {
                        at.err(
                            self.errors,
                            k,
                            format!(
                                "{k} only applies to WebSocket transports (an MQTT link uses \
                                 the [mqtt] broker's settings)"
                            ),
                        );
                    }
                }
                if !present.mqtt {
                    at.err(
                        self.errors,
                        "transport",
                        "transport \"mqtt\" needs an [mqtt] section: the CEM meets the gateway \
                         on that broker",
                    );
                }
                Some(CemTransport::Mqtt)
            }
            "s2connect" => {
                let pairing_decides = [
                    (url.is_some(), "url"),
                    (ca_file.is_some(), "ca_file"),
                    (pin.is_some(), "pin_sha256"),
                    (token.as_ref().is_some_and(Option::is_some), "token_file"),
                ];
                for (given, k) in pairing_decides {
                    if given {
                        at.err(
                            self.errors,
                            k,
                            format!(
                                "{k} does not apply to transport \"s2connect\": the URL, token \
                                 and certificate come from pairing (`s2gw pair`)"
                            ),
                        );
                    }
                }
                Some(CemTransport::S2Connect)
            }
            other => {
                at.err(
                    self.errors,
                    "transport",
                    format!(
                        "unknown transport `{other}` (expected \"ws-client\", \"ws-server\", \
                         \"mqtt\" or \"s2connect\")"
                    ),
                );
                None
            }
        };
        if !self.clean_since(mark) {
            return None;
        }
        Some(CemLink {
            name: name.to_string(),
            transport: transport?,
            token: token?,
            ping_interval: Duration::from_secs(ping),
            dead_after: Duration::from_secs(dead),
        })
    }

    /// Whether `url` is a usable ws:// or wss:// URL template; reports why not.
    fn check_url(&mut self, at: &At, url: &str) -> bool {
        let mut err = |reason: String| at.err(self.errors, "url", reason);
        let rest = match url
            .strip_prefix("wss://")
            .or_else(|| url.strip_prefix("ws://"))
        {
            Some(rest) => rest,
            None => {
                let scheme = url.split("://").next().filter(|_| url.contains("://"));
                err(match scheme {
                    Some(s) => format!("url scheme must be ws:// or wss://, got {s}://"),
                    None => format!("`{url}` is not a url: it must start with ws:// or wss://"),
                });
                return false;
            }
        };
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() {
            err("url has no host".to_string());
            return false;
        }
        if url.chars().any(char::is_whitespace) {
            err("url must not contain whitespace".to_string());
            return false;
        }
        let mut ok = true;
        let mut tail = url;
        while let Some(start) = tail.find('{') {
            let after = &tail[start..];
            let Some(end) = after.find('}') else {
                err("url has an unclosed `{`".to_string());
                return false;
            };
            let placeholder = &after[..=end];
            if placeholder != "{resource_id}" && placeholder != "{id}" {
                err(format!(
                    "unknown placeholder `{placeholder}` (known: {{resource_id}}, {{id}})"
                ));
                ok = false;
            }
            tail = &after[end + 1..];
        }
        ok
    }
}

/// `ab:cd:…` or `abcd…` (64 hex digits) as bytes.
fn parse_pin(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse() {
        let colons = ["ab"; 32].join(":");
        assert_eq!(parse_pin(&colons), Some([0xab; 32]));
        assert_eq!(parse_pin(&"0".repeat(64)), Some([0; 32]));
        assert_eq!(parse_pin("abc"), None);
    }
}
