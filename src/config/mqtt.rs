//! `[mqtt]`: the gateway's one broker connection, and `[device.mqtt]` devices.
//!
//! The broker keys are s2gw-mqtt's `MqttConfig` (read through serde, every bad key
//! reported, then its `validate()`); the daemon adds what the crate leaves to it: the
//! password (`password_file`, or `S2GW_MQTT__PASSWORD`; never the file itself), relative
//! TLS paths resolved against the config's directory and checked to exist, a host that is
//! a host (no scheme, no port), and the state mirror's rate limit.

use std::time::Duration;

use s2gw_mqtt::MqttConfig;
use serde::Deserialize;

use super::adapters::{self, MQTT_DAEMON_KEYS};
use super::load::Cx;
use super::located::{At, SecretText, Text, Uint, under};
use super::profile::Profile;

/// Default `mqtt.state_interval_ms`: a device's state goes to the broker at most once a
/// second (always the latest).
pub const DEFAULT_STATE_INTERVAL_MS: u64 = 1000;

/// Default `mqtt.state_heartbeat_s`: a device's state goes to the broker at least once a
/// minute, changed beyond its deadbands or not.
pub const DEFAULT_STATE_HEARTBEAT_S: u64 = 60;

/// Device ids that cannot be mirrored: their topics would mix with the gateway's own
/// `<base>/bridge/…` and `<base>/s2/…`.
pub const RESERVED_DEVICE_IDS: &[&str] = &["bridge", "s2"];

/// `[mqtt]`: the broker connection every MQTT part of the gateway shares.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSection {
    /// The broker connection, validated, password set, TLS paths resolved.
    pub client: MqttConfig,
    /// `state_interval_ms`: the shortest time between two publishes of one device's
    /// state (default 1000 ms), so a chatty device does not flood the broker.
    pub state_interval: Duration,
    /// `state_heartbeat_s`: the longest time between two publishes of one device's state
    /// (default 60 s); in between, only changes beyond the deadbands are published.
    pub state_heartbeat: Duration,
}

/// The daemon's keys of `[mqtt]` ([`MQTT_DAEMON_KEYS`]); the others are `MqttConfig`'s.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttDaemonToml {
    /// Only from the environment (a `password` in the file is refused before this).
    password: Option<SecretText>,
    password_file: Option<Text>,
    state_interval_ms: Option<Uint<3_600_000>>,
    state_heartbeat_s: Option<Uint<3600>>,
}

impl Cx<'_> {
    /// Read `[mqtt]`; `None` when anything in it is wrong (every problem reported).
    pub(crate) fn mqtt(&mut self, table: &toml::Table) -> Option<MqttSection> {
        let mark = self.mark();
        let own: toml::Table = table
            .iter()
            .filter(|(k, _)| MQTT_DAEMON_KEYS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (raw, at) = self.read::<MqttDaemonToml>(&own, "mqtt")?;
        let password = self.secret(
            &at,
            ("password", raw.password.map(|t| t.0)),
            ("password_file", raw.password_file.map(|t| t.0)),
        );
        let interval = raw
            .state_interval_ms
            .map_or(DEFAULT_STATE_INTERVAL_MS, |u| u.0);
        if interval < 100 {
            at.err(
                self.errors,
                "state_interval_ms",
                format!("must be at least 100 ms, got {interval}"),
            );
        }
        let heartbeat = raw
            .state_heartbeat_s
            .map_or(DEFAULT_STATE_HEARTBEAT_S, |u| u.0);
        if heartbeat == 0 || heartbeat.saturating_mul(1000) < interval {
            at.err(
                self.errors,
                "state_heartbeat_s",
                format!(
                    "must be at least 1 s and not shorter than state_interval_ms ({interval} ms), \
                     got {heartbeat}"
                ),
            );
        }
        // The other keys are MqttConfig's; serde reports unknown ones.
        let mut client = match adapters::mqtt_config(table) {
            Ok(client) => client,
            Err(problems) => {
                for (key, reason) in problems {
                    self.err(&under("mqtt", &key), reason);
                }
                return None;
            }
        };
        client.password = password.flatten();
        self.check_host(&client.host);
        self.resolve_tls(&mut client);
        for (key, reason) in client.validate() {
            self.err(&under("mqtt", &key), reason);
        }
        self.clean_since(mark).then(|| MqttSection {
            client,
            state_interval: Duration::from_millis(interval),
            state_heartbeat: Duration::from_secs(heartbeat),
        })
    }

    /// A host is a name or an address: a URL or `host:port` is a mistake people make.
    fn check_host(&mut self, host: &str) {
        let key = "mqtt.host";
        if host.contains("://") {
            self.err(
                key,
                format!(
                    "`{host}` is a URL: give the host name or address only (the port goes in \
                     `port`, TLS in [mqtt.tls])"
                ),
            );
        } else if host.chars().any(char::is_whitespace) {
            self.err(key, format!("`{host}` contains whitespace"));
        } else if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            self.err(
                key,
                format!("`{host}` is not a host name or address: the port goes in `port`"),
            );
        }
    }

    /// Resolve the TLS files against the config's directory and check they exist.
    fn resolve_tls(&mut self, client: &mut MqttConfig) {
        let Some(tls) = client.tls.as_mut() else {
            return;
        };
        let files = [
            ("ca_file", &mut tls.ca_file),
            ("client_cert_file", &mut tls.client_cert_file),
            ("client_key_file", &mut tls.client_key_file),
        ];
        for (name, slot) in files {
            let Some(path) = slot.as_ref() else { continue };
            let resolved = self.resolve(&path.to_string_lossy());
            if !resolved.is_file() {
                self.err(
                    &format!("mqtt.tls.{name}"),
                    format!("file {} does not exist", resolved.display()),
                );
            }
            *slot = Some(resolved);
        }
    }

    /// `[device.mqtt]` merged over the profile's `[mqtt]`; needs the `[mqtt]` broker.
    pub(crate) fn mqtt_device(
        &mut self,
        at: &At,
        device: &toml::Table,
        profile: &Profile,
        broker: bool,
    ) -> Option<s2gw_mqtt::MqttDeviceConfig> {
        if !broker {
            at.err(
                self.errors,
                "mqtt",
                "an MQTT device needs the [mqtt] section (the broker connection)",
            );
        }
        let Some(defaults) = &profile.mqtt else {
            self.no_adapter_table(at, "mqtt", profile);
            return None;
        };
        let whence = adapters::Whence {
            config: (&self.origin, at.path()),
            profile: profile.source.display_path(),
            device,
            profile_table: defaults,
            device_keys: &["device"],
        };
        let config = adapters::mqtt_device(&whence, self.errors);
        config.filter(|_| broker)
    }
}
