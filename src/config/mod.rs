//! The gateway's configuration: one TOML file, environment overrides, device profiles.
//!
//! [`load`] reads a config file and returns either a fully resolved [`Config`] (secrets
//! read, profiles resolved and validated, adapter parameters parsed, resource ids computed)
//! or every problem found, each with file, dotted key and reason ([`ConfigErrors`]). It
//! reads files only: no device and no network is touched, so `s2gw check` is safe to run
//! anywhere.
//!
//! # Layers
//! 1. The file, parsed as TOML.
//! 2. Environment variables `S2GW_<SECTION>__<KEY>` (figment's
//!    `Env::prefixed("S2GW_").split("__")`; names are case-insensitive and `__` separates
//!    levels), merged over the file through figment: `S2GW_GATEWAY__LOG_LEVEL=debug`,
//!    `S2GW_CEM__HOME__URL=wss://…`, `S2GW_SERVER__LISTEN=0.0.0.0:8080`. Values are typed
//!    as figment types them (`50` is an integer, `true` a boolean). Only variables with at
//!    least one `__` after the prefix are overrides: `S2GW_CONFIG` and the like belong to
//!    the command line. `[[device]]` and `[[native]]` entries cannot be overridden (they
//!    are arrays; an attempt is an error).
//!
//! # Secrets
//! `token_file` keys ([server], [cem.NAME]) name a file whose content (trimmed) is the
//! token; it is read during loading into an [`s2gw_core::Secret`], which never prints. A
//! token may instead come from the environment as `token`: `S2GW_SERVER__TOKEN`,
//! `S2GW_CEM__<NAME>__TOKEN`. An environment token wins over `token_file` (the file is then
//! not read). A `token` key written in the config file itself is refused: plaintext
//! secrets do not belong in a file that is commonly world-readable and kept in version
//! control. The MQTT broker password works the same way: `[mqtt] password_file`, or
//! `S2GW_MQTT__PASSWORD`; a `password` key in the file is refused.
//!
//! # Paths
//! Relative paths (`state_dir`, `traffic_log`, `*_file`, profile paths) resolve against
//! the directory of the config file.
//!
//! # Profiles
//! A device's `profile` is either a path (contains `/` or ends in `.toml`) or a bare name.
//! A bare name is looked up first as `profiles/NAME.toml` next to the config file (so an
//! installation can override a built-in), then among the [`BUILTIN_PROFILES`].

//! # Layout
//! One file per section, each owning its type and its checks: `gateway.rs`, `server.rs`,
//! `cem.rs` (links), `s2connect.rs` (the pairing server), `device.rs` (with `sim.rs` and `adapters.rs` for the connection
//! sections), `native.rs`, `mqtt.rs`, `profile.rs`; `secret.rs` and `env.rs` for the two
//! layers every section shares; `load.rs` for the file as a whole. Every table is read the
//! one way `located.rs` describes: serde, with every problem located.

mod adapters;
mod cem;
mod device;
mod env;
mod gateway;
mod load;
mod located;
mod mqtt;
mod native;
mod profile;
mod s2connect;
mod secret;
mod server;
mod sim;
mod web;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use s2gw_core::s2::Id;

pub use cem::{CemLink, CemTransport, DEFAULT_DEAD_AFTER_S, MIN_PING_INTERVAL_S};
pub use device::{
    BleSection, Connection, DEFAULT_MEASUREMENT_INTERVAL_S, DEFAULT_POLL_INTERVAL_S, DeviceSection,
};
pub use env::ENV_PREFIX;
pub use gateway::{DEFAULT_GATEWAY_NAME, DEFAULT_LOG_LEVEL, DEFAULT_STATE_DIR, GatewaySection};
pub use load::{
    check, check_with_env, load, load_profile, load_str, load_str_with_env, load_with_env,
};
pub use mqtt::{
    DEFAULT_STATE_HEARTBEAT_S, DEFAULT_STATE_INTERVAL_MS, MqttSection, RESERVED_DEVICE_IDS,
};
pub use native::{NativeSection, NativeTransport};
pub use profile::{
    BUILTIN_PROFILES, Profile, ProfileSource, builtin_profile_text, control_type_name, kind_name,
    parse_control_type,
};
pub use s2connect::{DEFAULT_S2CONNECT_LISTEN, DEFAULT_S2CONNECT_NAME, S2ConnectSection};
pub use server::{ServerSection, TlsFiles};
pub use web::{DEFAULT_WEB_LISTEN, WebSection};

/// The demo configuration `s2gw demo` runs, compiled in.
pub const DEMO_TOML: &str = include_str!("../../config/demo.toml");

/// The annotated reference configuration, compiled in (for `s2gw` to print as a starting
/// point).
pub const REFERENCE_TOML: &str = include_str!("../../config/s2gw.toml");

/// The namespace of the version 5 UUIDs derived as default resource ids. Never change it:
/// every derived resource id, and so every CEM's memory of a device, hangs on it.
pub const RESOURCE_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5a8d_cdb9_cee0_4d96_a76f_3228_5423_fa88);

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in: the config file, or a profile file.
    pub file: PathBuf,
    /// Dotted path of the key (`device[2].cem`, `cem.home.url`); `line L, column C` for a
    /// TOML syntax error; empty when the whole file is concerned (unreadable).
    pub key: String,
    /// What is wrong, for people.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

/// Every problem found in a configuration; never empty when returned by a loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The problems, in file order as far as it is known.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// One line per error: `<file>: <key>: <reason>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[gateway]`.
    pub gateway: GatewaySection,
    /// `[server]`, when the gateway runs its S2-ws-json server.
    pub server: Option<ServerSection>,
    /// `[cem.NAME]` links by name.
    pub cem: BTreeMap<String, CemLink>,
    /// `[[device]]` entries in file order.
    pub devices: Vec<DeviceSection>,
    /// `[[native]]` entries in file order.
    pub natives: Vec<NativeSection>,
    /// `[mqtt]`, when the gateway connects to an MQTT broker (state mirror, Home
    /// Assistant discovery, bridge requests, S2 over MQTT, MQTT devices).
    pub mqtt: Option<MqttSection>,
    /// `[web]`, when the daemon serves its status pages, `/metrics` and `/healthz`.
    pub web: Option<WebSection>,
    /// `[s2connect]`, when the gateway runs its S2 Connect pairing server (CEMs pair
    /// with its resources using a code from `s2gw pairing-code`).
    pub s2connect: Option<S2ConnectSection>,
    /// The config file this came from (or the origin given to [`load_str`]).
    pub source: PathBuf,
}

impl Config {
    /// A short human summary of what was loaded, for `s2gw check`.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{}: gateway `{}`, {} device(s), {} native RM(s), {} CEM link(s)",
            self.source.display(),
            self.gateway.name,
            self.devices.len(),
            self.natives.len(),
            self.cem.len()
        );
        if let Some(server) = &self.server {
            let scheme = if server.tls.is_some() { "wss" } else { "ws" };
            out.push_str(&format!("\n  server {scheme}://{}", server.listen));
        }
        if let Some(mqtt) = &self.mqtt {
            out.push_str(&format!(
                "\n  mqtt {}:{} base {}",
                mqtt.client.host,
                mqtt.client.effective_port(),
                mqtt.client.base_topic
            ));
        }
        if let Some(s2connect) = &self.s2connect {
            out.push_str(&format!(
                "\n  s2connect pairing server https://{}/v1/",
                s2connect.listen
            ));
            if let (Some(domain), Some(server)) = (&s2connect.wan_domain, &self.server) {
                out.push_str(&format!(
                    " (WAN: CEMs pair at https://{domain}:{}/v1/ and dial wss://{domain}:{}/s2/connect)",
                    s2connect.listen.port(),
                    server.listen.port()
                ));
            }
        }
        for link in self.cem.values() {
            let how = match &link.transport {
                CemTransport::WsClient { url, .. } => format!("dials {url}"),
                CemTransport::WsServer => "CEM dials in".to_string(),
                CemTransport::Mqtt => "CEM on MQTT".to_string(),
                CemTransport::S2Connect => "S2 Connect (paired CEM)".to_string(),
            };
            out.push_str(&format!("\n  cem {}: {how}", link.name));
        }
        for d in &self.devices {
            let types: Vec<&str> = d
                .control_types
                .iter()
                .map(|c| control_type_name(*c))
                .collect();
            out.push_str(&format!(
                "\n  device {} ({}): profile {}, {}, {} -> cem {}, resource {}",
                d.id,
                d.name,
                d.profile.name,
                d.connection.describe(),
                types.join("/"),
                d.cem,
                d.resource_id
            ));
        }
        for n in &self.natives {
            let via = match n.transport {
                NativeTransport::WsServer => "ws",
                NativeTransport::Mqtt => "mqtt",
            };
            out.push_str(&format!(
                "\n  native {} ({via}) -> cem {}, resource {}",
                n.id, n.cem, n.resource_id
            ));
        }
        out
    }
}

/// The default resource id of device or native `id` on gateway `gateway_name`: a version 5
/// UUID of `"<gateway_name>/<id>"` in [`RESOURCE_ID_NAMESPACE`]. Stable across restarts
/// and machines, and a UUID because s2-python peers parse resource ids as UUIDs.
pub fn derive_resource_id(gateway_name: &str, id: &str) -> Id {
    let name = format!("{gateway_name}/{id}");
    Id::from_uuid(uuid::Uuid::new_v5(&RESOURCE_ID_NAMESPACE, name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_ids_are_uuid_v5_and_stable() {
        let a = derive_resource_id("s2gw", "pv-roof");
        let b = derive_resource_id("s2gw", "pv-roof");
        assert_eq!(a.as_str(), b.as_str());
        assert_ne!(a.as_str(), derive_resource_id("other", "pv-roof").as_str());
        let uuid = uuid::Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 5);
    }

    #[test]
    fn resource_id_matches_python_uuid5() {
        // python3 -c "import uuid; print(uuid.uuid5(uuid.UUID('5a8dcdb9-cee0-4d96-a76f-32285423fa88'), 's2gw/pv-roof'))"
        assert_eq!(
            derive_resource_id("s2gw", "pv-roof").as_str(),
            "12f2c7f3-e7ce-5e27-bfee-ae4916fd5024"
        );
    }
}
