//! `[s2connect]`: the gateway's S2 Connect pairing server, for CEMs that pair with it.

use std::net::SocketAddr;
use std::time::Duration;

use s2gw_s2connect::{IdentitySource, Interfaces};
use serde::Deserialize;

use super::load::Cx;
use super::located::{Count, Strings, Text};

/// Default `s2connect.listen`: every interface, since a CEM on the LAN dials it.
pub const DEFAULT_S2CONNECT_LISTEN: &str = "0.0.0.0:8443";

/// Default `s2connect.names`: what the self-signed certificate carries.
pub const DEFAULT_S2CONNECT_NAME: &str = "s2gw.local";

/// `[s2connect]`: where the pairing server listens, its certificate, and how long a
/// pairing code lives.
#[derive(Debug, Clone, PartialEq)]
pub struct S2ConnectSection {
    /// `listen`: the pairing server's socket address (default `0.0.0.0:8443`).
    pub listen: SocketAddr,
    /// `names` (a self-signed certificate kept in the state directory) or
    /// `tls_cert_file` + `tls_key_file`.
    pub identity: IdentitySource,
    /// `code_valid_s`: how long a pairing code is accepted (default 300).
    pub code_validity: Duration,
    /// `advertise_on`: the interfaces DNS-SD advertises the pairing server on (default
    /// every one); `None` when it is `[]`, which turns advertising off.
    pub advertise_on: Option<Interfaces>,
    /// `long_poll`: the pairing URLs of LAN CEMs whose `waitForPairing` the gateway
    /// long-polls for the resources with a live pairing code.
    pub long_poll: Vec<String>,
    /// `deployment = "wan"` with `domain`: the gateway is reachable from the internet
    /// under this name, so it is the communication server for LAN CEMs (`None`: LAN).
    pub wan_domain: Option<String>,
}

/// `[s2connect]` as written. Fields in alphabetical order: serde lists them in
/// declaration order in `unknown key (known keys: …)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct S2ConnectToml {
    advertise_on: Option<Strings>,
    code_valid_s: Option<Count<3600>>,
    deployment: Option<Text>,
    domain: Option<Text>,
    listen: Option<Text>,
    long_poll: Option<Strings>,
    names: Option<Strings>,
    tls_cert_file: Option<Text>,
    tls_key_file: Option<Text>,
}

impl Cx<'_> {
    /// Read `[s2connect]`.
    pub(crate) fn s2connect(&mut self, table: &toml::Table) -> Option<S2ConnectSection> {
        let mark = self.mark();
        let (raw, at) = self.read::<S2ConnectToml>(table, "s2connect")?;
        let text = raw
            .listen
            .map_or_else(|| DEFAULT_S2CONNECT_LISTEN.to_string(), |t| t.0);
        let listen = self.socket_addr(&at, "listen", &text, 8443);
        let names = match raw.names {
            Some(list) => list.items(at.file(), &at.key("names"), self.errors),
            None => Some(vec![DEFAULT_S2CONNECT_NAME.to_string()]),
        };
        if names.as_ref().is_some_and(Vec::is_empty) {
            at.err(
                self.errors,
                "names",
                "give at least one name the certificate carries",
            );
        }
        let cert = self.existing_file(&at, "tls_cert_file", raw.tls_cert_file.map(|t| t.0));
        let key = self.existing_file(&at, "tls_key_file", raw.tls_key_file.map(|t| t.0));
        let identity = match (at.given("tls_cert_file"), at.given("tls_key_file")) {
            (false, false) => names.map(|names| IdentitySource::SelfSigned { names }),
            (true, true) if at.given("names") => {
                at.err(
                    self.errors,
                    "names",
                    "names are for the self-signed certificate; with tls_cert_file the \
                     certificate carries its own",
                );
                None
            }
            (true, true) => cert
                .zip(key)
                .map(|(cert_file, key_file)| IdentitySource::Files {
                    cert_file,
                    key_file,
                }),
            (given_cert, _) => {
                let (set, missing) = if given_cert {
                    ("tls_cert_file", "tls_key_file")
                } else {
                    ("tls_key_file", "tls_cert_file")
                };
                at.err(
                    self.errors,
                    set,
                    format!("{set} is set but {missing} is not: give both or neither"),
                );
                None
            }
        };
        // `Count` already refuses 0 and anything above an hour.
        let code_validity = raw
            .code_valid_s
            .map_or(s2gw_s2connect::DEFAULT_CODE_VALIDITY, |c| {
                Duration::from_secs(c.0)
            });
        let advertise_on = match raw.advertise_on {
            None => Some(Some(Interfaces::All)),
            Some(list) => list
                .items(at.file(), &at.key("advertise_on"), self.errors)
                .map(|names| (!names.is_empty()).then_some(Interfaces::Named(names))),
        };
        let long_poll = match raw.long_poll {
            None => Some(Vec::new()),
            Some(list) => list.items(at.file(), &at.key("long_poll"), self.errors),
        };
        for (i, url) in long_poll.iter().flatten().enumerate() {
            let host = url
                .strip_prefix("https://")
                .and_then(|r| r.split('/').next());
            if host.is_none_or(str::is_empty) || url.chars().any(char::is_whitespace) {
                at.err(
                    self.errors,
                    &format!("long_poll[{i}]"),
                    format!("`{url}` is not an https:// URL (a CEM's pairing URL, e.g. https://hems.local:8443/v1/)"),
                );
            }
        }
        let wan_domain = wan_domain(&at, &raw.deployment, &raw.domain, self.errors);
        if matches!(wan_domain, Some(Some(_))) {
            for (key, why) in [
                (
                    "names",
                    "a WAN gateway serves a certificate from a public CA: give tls_cert_file and tls_key_file",
                ),
                (
                    "advertise_on",
                    "DNS-SD is for the LAN: a WAN gateway is not advertised",
                ),
                (
                    "long_poll",
                    "waitForPairing is a LAN-only operation: a WAN gateway cannot long-poll",
                ),
            ] {
                if at.given(key) {
                    at.err(
                        self.errors,
                        key,
                        format!("does not apply to deployment = \"wan\": {why}"),
                    );
                }
            }
            if !at.given("tls_cert_file") {
                at.err(self.errors, "tls_cert_file", "deployment = \"wan\" needs tls_cert_file and tls_key_file: a certificate from a public CA for the domain");
            }
        }
        if !self.clean_since(mark) {
            return None;
        }
        let wan_domain = wan_domain?;
        Some(S2ConnectSection {
            listen: listen?,
            identity: identity?,
            code_validity,
            advertise_on: if wan_domain.is_some() {
                None
            } else {
                advertise_on?
            },
            long_poll: long_poll?,
            wan_domain,
        })
    }
}

/// `deployment` and `domain`: `Some(None)` for a LAN gateway, `Some(Some(domain))` for
/// a WAN one, `None` when either is wrong (reported).
fn wan_domain(
    at: &super::located::At,
    deployment: &Option<Text>,
    domain: &Option<Text>,
    errors: &mut super::located::Errors,
) -> Option<Option<String>> {
    let wan = match deployment.as_ref().map(|t| t.0.as_str()) {
        None | Some("lan") => false,
        Some("wan") => true,
        Some(other) => {
            at.err(
                errors,
                "deployment",
                format!("`{other}` is not \"lan\" or \"wan\""),
            );
            return None;
        }
    };
    match (wan, domain.as_ref().map(|t| t.0.as_str())) {
        (false, None) => Some(None),
        (false, Some(_)) => {
            at.err(errors, "domain", "domain is for deployment = \"wan\" (the name a CEM reaches the gateway by from the internet)");
            None
        }
        (true, None) => {
            at.err(errors, "domain", "deployment = \"wan\" needs the domain name the gateway's certificate carries, e.g. \"gw.example.com\"");
            None
        }
        (true, Some(name)) if is_domain(name) => Some(Some(name.to_ascii_lowercase())),
        (true, Some(name)) => {
            at.err(errors, "domain", format!("`{name}` is not a domain name (no scheme, port or path: e.g. \"gw.example.com\")"));
            None
        }
    }
}

/// A DNS name: dot-separated labels of letters, digits and hyphens.
fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}
