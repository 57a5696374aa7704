//! The `[mqtt]` section of the daemon's config: the gateway's one broker connection.

use std::path::PathBuf;
use std::time::Duration;

use s2gw_core::{Problems, Secret};
use serde::{Deserialize, Serialize};

use crate::topic;

/// Which MQTT protocol version to speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// MQTT 3.1.1 (every broker speaks it).
    #[default]
    V311,
    /// MQTT 5 (session expiry, maximum packet size announced to the broker).
    V5,
}

/// TLS towards the broker. With this table present the connection is TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of CA certificates to trust instead of the platform's root store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require one (with `client_key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

/// The gateway's broker connection.
///
/// Every key but `host` has a default. `password` never comes from the config text: the
/// daemon reads it from a `password_file` (or the environment) and sets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or IP address.
    pub host: String,
    /// Broker port (default 1883, or 8883 with `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// MQTT client id (default `s2gw-<base_topic>` with `/` replaced by `-`). Must be
    /// unique on the broker; a persistent session is keyed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Prefix of every topic the gateway owns (default `s2gw`).
    #[serde(default = "default_base")]
    pub base_topic: String,
    /// Home Assistant's discovery prefix (default `homeassistant`).
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// Publish Home Assistant discovery (default true).
    #[serde(default = "default_true")]
    pub discovery: bool,
    /// User name for the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for the broker; set by the daemon from a file, never from the config text.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// TLS towards the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// `v311` (default) or `v5`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Keep the broker session (subscriptions and queued QoS 1 messages) across
    /// disconnects (default true): no S2 message is lost while the gateway reconnects.
    #[serde(default = "default_true")]
    pub persistent_session: bool,
    /// MQTT 5 only: how long the broker keeps a persistent session after a disconnect,
    /// in seconds (default 3600).
    #[serde(default = "default_session_expiry")]
    pub session_expiry_s: u32,
    /// Keep-alive interval in seconds (default 30, at least 5).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// First reconnect delay in milliseconds (default 500); doubles up to
    /// `reconnect_max_s`, with jitter.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay in seconds (default 60).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_s: u64,
    /// How long an open S2 session survives a lost broker connection, in seconds
    /// (default 30). Within it, a reconnect resumes the session where it was; past it
    /// the session ends (and every device behind it reverts to its default). 0 ends
    /// sessions at once.
    #[serde(default = "default_session_grace")]
    pub session_grace_s: u64,
    /// S2 payloads larger than this are refused with INVALID_DATA (default 1 MiB).
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    /// The largest MQTT packet read from the broker (default 16 MiB). Larger packets
    /// break the connection (MQTT has no way to skip one), so keep it well above
    /// `max_frame_bytes`; with MQTT 5 the broker is told and drops them instead.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Requests queued towards the broker before publishers wait (default 10000).
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
}

fn default_base() -> String {
    "s2gw".to_string()
}
fn default_discovery_prefix() -> String {
    "homeassistant".to_string()
}
fn default_true() -> bool {
    true
}
fn default_session_expiry() -> u32 {
    3600
}
fn default_keep_alive() -> u64 {
    30
}
fn default_reconnect_min() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    60
}
fn default_session_grace() -> u64 {
    30
}
fn default_max_frame() -> usize {
    s2gw_core::s2::DEFAULT_MAX_FRAME_BYTES
}
fn default_max_packet() -> usize {
    16 * 1024 * 1024
}
fn default_queue() -> usize {
    10_000
}

impl MqttConfig {
    /// A config for `host` with every other key at its default.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            client_id: None,
            base_topic: default_base(),
            discovery_prefix: default_discovery_prefix(),
            discovery: true,
            username: None,
            password: None,
            tls: None,
            protocol: Protocol::default(),
            persistent_session: true,
            session_expiry_s: default_session_expiry(),
            keep_alive_s: default_keep_alive(),
            reconnect_min_ms: default_reconnect_min(),
            reconnect_max_s: default_reconnect_max(),
            session_grace_s: default_session_grace(),
            max_frame_bytes: default_max_frame(),
            max_packet_bytes: default_max_packet(),
            queue_capacity: default_queue(),
        }
    }

    /// The port to dial.
    pub fn effective_port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// The client id to present.
    pub fn effective_client_id(&self) -> String {
        self.client_id
            .clone()
            .unwrap_or_else(|| format!("s2gw-{}", self.base_topic.replace('/', "-")))
    }

    /// The reconnect back-off bounds.
    pub fn backoff(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.reconnect_min_ms),
            Duration::from_secs(self.reconnect_max_s),
        )
    }

    /// Every problem with the config as `(key, reason)`; empty when it is usable.
    pub fn validate(&self) -> Problems {
        let mut problems = Vec::new();
        let mut push = |key: &str, reason: String| problems.push((key.to_string(), reason));
        if self.host.trim().is_empty() {
            push("host", "must not be empty".to_string());
        }
        if self.port == Some(0) {
            push("port", "must be 1 to 65535".to_string());
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 256)
        {
            push("client_id", "must be 1 to 256 characters".to_string());
        }
        if let Some(reason) = topic::base_problem(&self.base_topic) {
            push("base_topic", reason.to_string());
        }
        if let Some(reason) = topic::base_problem(&self.discovery_prefix) {
            push("discovery_prefix", reason.to_string());
        }
        if self.password.is_some() && self.username.is_none() {
            push("password_file", "a password needs a username".to_string());
        }
        if let Some(tls) = &self.tls
            && tls.client_cert_file.is_some() != tls.client_key_file.is_some()
        {
            push(
                "tls",
                "give both client_cert_file and client_key_file, or neither".to_string(),
            );
        }
        if !(5..=65535).contains(&self.keep_alive_s) {
            push(
                "keep_alive_s",
                format!("must be 5 to 65535, got {}", self.keep_alive_s),
            );
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > 60_000 {
            push("reconnect_min_ms", "must be 1 to 60000".to_string());
        }
        if self.reconnect_max_s == 0 || self.reconnect_max_s > 3600 {
            push("reconnect_max_s", "must be 1 to 3600".to_string());
        }
        if self.session_grace_s > 3600 {
            push("session_grace_s", "must be at most 3600".to_string());
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_frame_bytes) {
            push("max_frame_bytes", "must be 1024 to 67108864".to_string());
        }
        if self.max_packet_bytes < self.max_frame_bytes.saturating_add(1024)
            || self.max_packet_bytes > 256 * 1024 * 1024
        {
            push(
                "max_packet_bytes",
                "must exceed max_frame_bytes by at least 1024 and be at most 268435456".to_string(),
            );
        }
        if !(16..=1_000_000).contains(&self.queue_capacity) {
            push("queue_capacity", "must be 16 to 1000000".to_string());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let config: MqttConfig = toml::from_str("host = \"broker\"").unwrap();
        assert_eq!(config, MqttConfig::new("broker"));
        assert_eq!(config.effective_port(), 1883);
        assert_eq!(config.effective_client_id(), "s2gw-s2gw");
        assert!(config.validate().is_empty());
        assert!(toml::from_str::<MqttConfig>("host = \"b\"\nhots = 1").is_err());
        assert!(toml::from_str::<MqttConfig>("host = \"b\"\npassword = \"x\"").is_err());
    }

    #[test]
    fn tls_port_and_problems() {
        let mut config: MqttConfig = toml::from_str(
            "host = \"b\"\nprotocol = \"v5\"\n[tls]\nca_file = \"/ca.pem\"\nclient_cert_file = \"/c.pem\"",
        )
        .unwrap();
        assert_eq!(config.effective_port(), 8883);
        assert_eq!(config.protocol, Protocol::V5);
        config.base_topic = "a/#".to_string();
        config.keep_alive_s = 1;
        let keys: Vec<String> = config.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["base_topic", "tls", "keep_alive_s"]);
    }
}
