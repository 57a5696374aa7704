//! `[mqtt]`: the gateway's one broker connection, and `[device.mqtt]` devices.
//!
//! The broker keys are s2gw-mqtt's `MqttConfig` (read through serde, every bad key
//! reported, then its `validate()`); the daemon adds what the crate leaves to it: the
//! password (`password_file`, or `S2GW_MQTT__PASSWORD`; never the file itself), relative
//! TLS paths resolved against the config's directory and checked to exist, a host that is
//! a host (no scheme, no port), and the state mirror's rate limit.

use std::time::Duration;

use s2gw_mqtt::MqttConfig;

use super::adapters::{self, under};
use super::reader::Section;
use super::{Loader, Profile};

/// Default `mqtt.state_interval_ms`: a device's state goes to the broker at most once a
/// second (always the latest).
pub const DEFAULT_STATE_INTERVAL_MS: u64 = 1000;

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
}

impl Loader<'_> {
    /// Read `[mqtt]`; `None` when anything in it is wrong (every problem reported).
    pub(super) fn mqtt(&mut self, table: &toml::Table) -> Option<MqttSection> {
        let origin = self.origin.clone();
        let before = self.errors.list.len();
        let mut s = Section::new(&origin, "mqtt", table);
        let password = self.secret_named(&mut s, "password", "password_file");
        let interval = s
            .opt_uint(self.errors, "state_interval_ms", 3_600_000)
            .unwrap_or(DEFAULT_STATE_INTERVAL_MS);
        if interval < 100 {
            self.err(
                "mqtt.state_interval_ms",
                format!("must be at least 100 ms, got {interval}"),
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
        (self.errors.list.len() == before).then(|| MqttSection {
            client,
            state_interval: Duration::from_millis(interval),
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
    pub(super) fn mqtt_device(
        &mut self,
        path: &str,
        device: &toml::Table,
        profile: &Profile,
        broker: bool,
    ) -> Option<s2gw_mqtt::MqttDeviceConfig> {
        if !broker {
            self.err(
                &format!("{path}.mqtt"),
                "an MQTT device needs the [mqtt] section (the broker connection)",
            );
        }
        let Some(defaults) = &profile.mqtt else {
            self.no_adapter_table(path, "mqtt", profile);
            return None;
        };
        let origin = self.origin.clone();
        let whence = adapters::Whence {
            config: (&origin, path),
            profile: profile.source.display_path(),
            device,
            profile_table: defaults,
            device_keys: &["device"],
        };
        let config = adapters::mqtt_device(&whence, self.errors);
        config.filter(|_| broker)
    }
}
