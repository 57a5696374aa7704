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

mod adapters;
mod mqtt;
mod profile;
mod reader;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Serialized};
use s2gw_core::Secret;
use s2gw_core::device::DeviceKind;
use s2gw_core::s2::{ControlType, Id};
use s2gw_sim::{SimConfig, SimModel};

pub use mqtt::{DEFAULT_STATE_INTERVAL_MS, MqttSection, RESERVED_DEVICE_IDS};
pub use profile::{
    BUILTIN_PROFILES, Profile, ProfileSource, builtin_profile_text, control_type_name, kind_name,
    parse_control_type,
};
use reader::{Errors, Section, type_name};

/// The demo configuration `s2gw demo` runs, compiled in.
pub const DEMO_TOML: &str = include_str!("../../config/demo.toml");

/// The annotated reference configuration, compiled in (for `s2gw` to print as a starting
/// point).
pub const REFERENCE_TOML: &str = include_str!("../../config/s2gw.toml");

/// The prefix of environment variables that override the config file.
pub const ENV_PREFIX: &str = "S2GW_";

/// The namespace of the version 5 UUIDs derived as default resource ids. Never change it:
/// every derived resource id, and so every CEM's memory of a device, hangs on it.
pub const RESOURCE_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5a8d_cdb9_cee0_4d96_a76f_3228_5423_fa88);

/// Default `gateway.name`.
pub const DEFAULT_GATEWAY_NAME: &str = "s2gw";
/// Default `gateway.state_dir` (what systemd's `StateDirectory=s2gw` creates).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/s2gw";
/// Default `gateway.log_level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default and minimum of `cem.NAME.ping_interval_s`, in seconds.
pub const MIN_PING_INTERVAL_S: u64 = 50;
/// Default `cem.NAME.dead_after_s`, in seconds.
pub const DEFAULT_DEAD_AFTER_S: u64 = 120;
/// Default `device.poll_interval_s`, in seconds.
pub const DEFAULT_POLL_INTERVAL_S: u64 = 1;
/// Default `device.measurement_interval_s`, in seconds.
pub const DEFAULT_MEASUREMENT_INTERVAL_S: u64 = 10;

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
    /// The config file this came from (or the origin given to [`load_str`]).
    pub source: PathBuf,
}

/// `[gateway]`: settings of the daemon as a whole. Every key has a default, so the section
/// may be left out.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySection {
    /// `name`: used in logs and to derive stable resource ids (default `s2gw`). Two
    /// gateways talking to one CEM need different names.
    pub name: String,
    /// `state_dir`: where the daemon keeps state (default `/var/lib/s2gw`).
    pub state_dir: PathBuf,
    /// `max_frame_bytes`: S2 frames larger than this are refused (default 1 MiB).
    pub max_frame_bytes: usize,
    /// `traffic_log`: record every S2 message to this s2-kit `.s2log` transcript.
    pub traffic_log: Option<PathBuf>,
    /// `log_level`: a `tracing` filter (default `info`); `RUST_LOG` overrides it.
    pub log_level: String,
}

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
}

/// A certificate chain and its private key, both PEM files (existence checked at load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `tls_cert_file`.
    pub cert_file: PathBuf,
    /// `tls_key_file`.
    pub key_file: PathBuf,
}

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
}

impl CemTransport {
    /// The config spelling (`ws-client`, `ws-server`, `mqtt`).
    pub fn name(&self) -> &'static str {
        match self {
            CemTransport::WsClient { .. } => "ws-client",
            CemTransport::WsServer => "ws-server",
            CemTransport::Mqtt => "mqtt",
        }
    }
}

/// `[[device]]`: a legacy device the gateway hosts a virtual RM for.
#[derive(Debug, Clone)]
pub struct DeviceSection {
    /// `id`: unique among devices and natives, `[A-Za-z0-9_-]{1,48}`.
    pub id: String,
    /// `name`: for people (defaults to `id`).
    pub name: String,
    /// `resource_id`, or a UUID v5 of `gateway.name` and `id` ([`derive_resource_id`]).
    pub resource_id: Id,
    /// The resolved `profile`.
    pub profile: Arc<Profile>,
    /// `cem`: the name of the `[cem.NAME]` link it is routed to (checked to exist).
    pub cem: String,
    /// `poll_interval_s`: how often the device is read (default 1 s).
    pub poll_interval: Duration,
    /// `measurement_interval_s`: how often a PowerMeasurement is sent (default 10 s).
    pub measurement_interval: Duration,
    /// The control types offered to the CEM: `control_types` if given (a subset of the
    /// profile's, in the order written), else the profile's.
    pub control_types: Vec<ControlType>,
    /// The connection section, parsed.
    pub connection: Connection,
}

/// A device's connection/adapter section: exactly one per device.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    /// `[device.sim]` merged over the profile's `[sim]`.
    Sim(SimConfig),
    /// `[device.modbus]` merged over the profile's `[modbus]`, split into where the device
    /// is and what its registers are.
    Modbus(Box<s2gw_modbus::ModbusConfig>),
    /// `[device.ble]` (which device) next to the profile's `[ble]` (how to read it); not
    /// merged.
    Ble(BleSection),
    /// `[device.mqtt]` merged over the profile's `[mqtt]`: topics, JSON paths, commands.
    Mqtt(Box<s2gw_mqtt::MqttDeviceConfig>),
}

/// A BLE device's two tables.
#[derive(Debug, Clone, PartialEq)]
pub struct BleSection {
    /// `[device.ble]`, `bindkey_file` resolved against the config's directory.
    pub connection: s2gw_ble::BleConnection,
    /// The profile's `[ble]`.
    pub profile: s2gw_ble::BleProfile,
}

impl Connection {
    /// The adapter's name, as its table is called (`sim`, `modbus`, `ble`).
    pub fn adapter(&self) -> &'static str {
        match self {
            Connection::Sim(_) => "sim",
            Connection::Modbus(_) => "modbus",
            Connection::Ble(_) => "ble",
            Connection::Mqtt(_) => "mqtt",
        }
    }

    /// A short description for `s2gw check` (`sim pv`, `modbus tcp://host:502 unit 1`).
    pub fn describe(&self) -> String {
        match self {
            Connection::Sim(sim) => format!("sim {}", sim.model.as_str()),
            Connection::Modbus(m) => match m.connection.target() {
                Ok(target) => format!("modbus {target} unit {}", m.connection.unit()),
                Err(_) => "modbus".to_string(),
            },
            Connection::Ble(b) => {
                let which = b
                    .connection
                    .address
                    .clone()
                    .or_else(|| b.connection.name.clone())
                    .unwrap_or_default();
                format!("ble {which}")
            }
            Connection::Mqtt(m) => format!(
                "mqtt {}",
                m.power
                    .topic
                    .replace("{device}", m.device.as_deref().unwrap_or_default())
            ),
        }
    }
}

/// Where a native RM meets the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeTransport {
    /// `transport = "ws-server"` (default): it dials `[server]` at `/s2/rm/<id>`.
    WsServer,
    /// `transport = "mqtt"`: it lives on the `[mqtt]` broker, on
    /// `<base>/s2/<resource_id>/…`; the gateway plays the CEM side there.
    Mqtt,
}

/// `[[native]]`: an RM that speaks S2 itself and connects to `[server]` at `/s2/rm/<id>`,
/// or lives on MQTT.
#[derive(Debug, Clone, PartialEq)]
pub struct NativeSection {
    /// `id`: unique among devices and natives, `[A-Za-z0-9_-]{1,48}`.
    pub id: String,
    /// `transport`: how it reaches the gateway.
    pub transport: NativeTransport,
    /// `resource_id`, or derived like a device's: what the gateway uses towards the CEM
    /// (the URL placeholder, `/s2/cem/<resource_id>`) before the RM introduces itself.
    pub resource_id: Id,
    /// `cem`: the link it is routed to.
    pub cem: String,
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
        for link in self.cem.values() {
            let how = match &link.transport {
                CemTransport::WsClient { url, .. } => format!("dials {url}"),
                CemTransport::WsServer => "CEM dials in".to_string(),
                CemTransport::Mqtt => "CEM on MQTT".to_string(),
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

/// Load and validate the config file at `path`, with the process environment's `S2GW_*`
/// overrides.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read_config_file(path)?;
    load_inner(&text, path, process_env())
}

/// Like [`load`], with `env` (`(variable, value)` pairs, e.g.
/// `("S2GW_GATEWAY__LOG_LEVEL", "debug")`) in place of the process environment. For tests,
/// which run in parallel and must not share the process environment.
pub fn load_with_env(path: &Path, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let text = read_config_file(path)?;
    load_inner(&text, path, map_env(env))
}

/// Load and validate config text that did not come from a file (the embedded demo, tests),
/// with the process environment's overrides. `origin` is what errors name and what relative
/// paths resolve against (its directory).
pub fn load_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
    load_inner(text, origin, process_env())
}

/// Like [`load_str`], with `env` in place of the process environment.
pub fn load_str_with_env(
    text: &str,
    origin: &Path,
    env: &[(&str, &str)],
) -> Result<Config, ConfigErrors> {
    load_inner(text, origin, map_env(env))
}

/// What `s2gw check -c FILE` runs: [`load`], plus every `profiles/*.toml` next to the
/// config file validated even when no device uses it yet, so a broken profile is found
/// before a device is pointed at it. [`load`] (what `run` uses) skips unused profiles, so
/// a stray file cannot keep the daemon from starting.
pub fn check(path: &Path) -> Result<Config, ConfigErrors> {
    with_profile_dir(path, load(path))
}

/// Like [`check`], with `env` in place of the process environment.
pub fn check_with_env(path: &Path, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    with_profile_dir(path, load_with_env(path, env))
}

fn with_profile_dir(
    path: &Path,
    loaded: Result<Config, ConfigErrors>,
) -> Result<Config, ConfigErrors> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join("profiles"),
        _ => PathBuf::from("profiles"),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut extra = Vec::new();
    for file in files {
        if let Err(e) = load_profile(&file) {
            extra.extend(e.errors);
        }
    }
    match loaded {
        Ok(config) if extra.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors { errors: extra }),
        Err(mut e) => {
            // A used profile's errors are already there; report each problem once.
            for x in extra {
                if !e.errors.contains(&x) {
                    e.errors.push(x);
                }
            }
            Err(e)
        }
    }
}

/// Load and validate one profile file on its own (for `s2gw check` on a profile).
pub fn load_profile(path: &Path) -> Result<Profile, ConfigErrors> {
    let text = read_config_file(path)?;
    let mut errors = Errors::new();
    match profile::parse_profile(&text, ProfileSource::File(path.to_path_buf()), &mut errors) {
        Some(p) if errors.list.is_empty() => Ok(p),
        _ => Err(ConfigErrors {
            errors: errors.list,
        }),
    }
}

fn read_config_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        errors: vec![ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        }],
    })
}

/// One environment override.
struct EnvOverride {
    /// The variable, for messages.
    var: String,
    /// The dotted key it sets.
    key: String,
    /// Its raw value.
    value: String,
}

/// The process environment's overrides, found by figment's `Env` provider.
fn process_env() -> Vec<EnvOverride> {
    Env::prefixed(ENV_PREFIX)
        .split("__")
        .iter()
        .filter(|(key, _)| key.as_str().contains('.'))
        .map(|(key, value)| EnvOverride {
            var: format!(
                "{ENV_PREFIX}{}",
                key.as_str().replace('.', "__").to_ascii_uppercase()
            ),
            key: key.as_str().to_string(),
            value,
        })
        .collect()
}

/// The same mapping as [`process_env`], over given pairs: prefix stripped
/// case-insensitively, `__` to `.`, lowercased, only keys below a section.
fn map_env(env: &[(&str, &str)]) -> Vec<EnvOverride> {
    env.iter()
        .filter_map(|(var, value)| {
            let name = var.trim();
            let head = name.get(..ENV_PREFIX.len())?;
            if !head.eq_ignore_ascii_case(ENV_PREFIX) {
                return None;
            }
            let key = name
                .get(ENV_PREFIX.len()..)?
                .replace("__", ".")
                .to_ascii_lowercase();
            if !key.contains('.') || key.split('.').any(str::is_empty) {
                return None;
            }
            Some(EnvOverride {
                var: name.to_string(),
                key,
                value: (*value).to_string(),
            })
        })
        .collect()
}

/// `(key, reason)` for a TOML syntax error: the key is `line L, column C`.
pub(crate) fn syntax_error(text: &str, error: &toml::de::Error) -> (String, String) {
    let message = error.message().trim().to_string();
    match error.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (
                format!("line {line}, column {column}"),
                format!("TOML syntax error: {message}"),
            )
        }
        None => (String::new(), format!("TOML syntax error: {message}")),
    }
}

fn load_inner(text: &str, origin: &Path, env: Vec<EnvOverride>) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::new();
    let file_table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            let (key, reason) = syntax_error(text, &e);
            errors.push(origin, &key, reason);
            return Err(ConfigErrors {
                errors: errors.list,
            });
        }
    };
    reject_plaintext_tokens(&file_table, origin, &mut errors);

    // The environment layer, merged through figment. Array sections cannot be addressed
    // by key, so such variables are refused rather than silently replacing the array.
    let mut figment = Figment::from(Serialized::defaults(&file_table));
    for o in env {
        let section = o.key.split('.').next().unwrap_or_default();
        if section == "device" || section == "native" {
            errors.push(
                origin,
                &o.key,
                format!(
                    "environment variable {} cannot override [[{section}]] entries; edit the file",
                    o.var
                ),
            );
            continue;
        }
        // Tokens and passwords stay text whatever they look like; everything else is typed by figment
        // (numbers, booleans) like its Env provider does.
        let value = if o.key.ends_with(".token") || o.key.ends_with(".password") {
            figment::value::Value::from(o.value.clone())
        } else {
            o.value
                .parse::<figment::value::Value>()
                .unwrap_or_else(|never| match never {})
        };
        figment = figment.merge(Serialized::default(&o.key, value));
        errors.env_keys.insert(o.key, o.var);
    }
    let merged: toml::Table = match figment.extract() {
        Ok(t) => t,
        Err(e) => {
            errors.push(
                origin,
                "",
                format!("cannot merge environment overrides: {e}"),
            );
            return Err(ConfigErrors {
                errors: errors.list,
            });
        }
    };

    let config = Loader::new(origin, &mut errors).read(&merged);
    match config {
        Some(config) if errors.list.is_empty() => Ok(config),
        _ => {
            if errors.list.is_empty() {
                // Unreachable by construction (every `None` path records an error);
                // never return an empty error list all the same.
                errors.push(origin, "", "invalid configuration");
            }
            Err(ConfigErrors {
                errors: errors.list,
            })
        }
    }
}

/// Refuse `token` (and `[mqtt] password`) keys written in the file; only the
/// environment may set them.
fn reject_plaintext_tokens(file: &toml::Table, origin: &Path, errors: &mut Errors) {
    let reason = |var: &str| {
        format!(
            "plaintext secrets are not accepted in the config file: put the token in a file and \
             set token_file, or set the environment variable {var}"
        )
    };
    if let Some(toml::Value::Table(mqtt)) = file.get("mqtt")
        && mqtt.contains_key("password")
    {
        errors.push(
            origin,
            "mqtt.password",
            "plaintext secrets are not accepted in the config file: put the password in a \
             file and set password_file, or set the environment variable S2GW_MQTT__PASSWORD",
        );
    }
    if let Some(toml::Value::Table(server)) = file.get("server")
        && server.contains_key("token")
    {
        errors.push(origin, "server.token", reason("S2GW_SERVER__TOKEN"));
    }
    if let Some(toml::Value::Table(cem)) = file.get("cem") {
        for (name, link) in cem {
            if let toml::Value::Table(link) = link
                && link.contains_key("token")
            {
                let var = format!("S2GW_CEM__{}__TOKEN", name.to_ascii_uppercase());
                errors.push(origin, &format!("cem.{name}.token"), reason(&var));
            }
        }
    }
}

/// Which optional sections the config has, for the keys that need them.
#[derive(Debug, Clone, Copy)]
struct Present {
    /// `[server]`.
    server: bool,
    /// `[mqtt]`.
    mqtt: bool,
}

/// What a `[[device]]` or `[[native]]` may refer to.
struct Refs<'a> {
    cem: &'a BTreeMap<String, Option<CemLink>>,
    gateway_name: &'a str,
    present: Present,
}

/// Reads the merged table into a [`Config`].
struct Loader<'e> {
    origin: PathBuf,
    base_dir: PathBuf,
    errors: &'e mut Errors,
    /// Profiles already resolved, by the text of the `profile` key; `None` for one that
    /// failed (its errors were reported once).
    profiles: HashMap<String, Option<Arc<Profile>>>,
}

impl<'e> Loader<'e> {
    fn new(origin: &Path, errors: &'e mut Errors) -> Self {
        let base_dir = match origin.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self {
            origin: origin.to_path_buf(),
            base_dir,
            errors,
            profiles: HashMap::new(),
        }
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn err(&mut self, key: &str, reason: impl Into<String>) {
        let origin = self.origin.clone();
        self.errors.push(&origin, key, reason);
    }

    fn read(mut self, merged: &toml::Table) -> Option<Config> {
        let origin = self.origin.clone();
        let mut top = Section::new(&origin, "", merged);
        let gateway_table = top.opt_table(self.errors, "gateway");
        let server_table = top.opt_table(self.errors, "server");
        let cem_table = top.opt_table(self.errors, "cem");
        let device_tables = top.opt_table_array(self.errors, "device");
        let native_tables = top.opt_table_array(self.errors, "native");
        let mqtt_table = top.opt_table(self.errors, "mqtt");
        top.finish(self.errors, |_| None);

        let empty = toml::Table::new();
        let gateway = self.gateway(gateway_table.unwrap_or(&empty));
        let server_present = server_table.is_some();
        let server = server_table.map(|t| self.server(t));
        let present = Present {
            server: server_present,
            mqtt: mqtt_table.is_some(),
        };
        let mqtt = mqtt_table.map(|t| self.mqtt(t));
        let cem = self.cem_links(cem_table, present);

        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        let mut resource_ids: BTreeMap<String, String> = BTreeMap::new();
        let gateway_name = gateway
            .as_ref()
            .map_or(DEFAULT_GATEWAY_NAME.to_string(), |g| g.name.clone());

        let mut devices = Vec::new();
        for (i, t) in device_tables.iter().enumerate() {
            let path = format!("device[{i}]");
            let refs = Refs {
                cem: &cem,
                gateway_name: &gateway_name,
                present,
            };
            if let Some(d) = self.device(&path, t, &refs, &mut ids, &mut resource_ids) {
                devices.push(d);
            }
        }
        if present.mqtt {
            self.reserved_ids(&devices);
        }
        let mut natives = Vec::new();
        for (i, t) in native_tables.iter().enumerate() {
            let path = format!("native[{i}]");
            let refs = Refs {
                cem: &cem,
                gateway_name: &gateway_name,
                present,
            };
            if let Some(n) = self.native(&path, t, &refs, &mut ids, &mut resource_ids) {
                natives.push(n);
            }
        }
        if device_tables.is_empty() && native_tables.is_empty() {
            self.err(
                "device",
                "no [[device]] or [[native]] entries: the gateway would have nothing to serve",
            );
        }

        Some(Config {
            gateway: gateway?,
            server: server.map_or(Some(None), |s| s.map(Some))?,
            cem: cem.into_iter().filter_map(|(k, v)| Some((k, v?))).collect(),
            devices,
            natives,
            mqtt: mqtt.map_or(Some(None), |m| m.map(Some))?,
            source: self.origin,
        })
    }

    /// Mirrored device ids must not collide with the gateway's own topics.
    fn reserved_ids(&mut self, devices: &[DeviceSection]) {
        for (i, d) in devices.iter().enumerate() {
            if RESERVED_DEVICE_IDS.contains(&d.id.as_str()) {
                self.err(
                    &format!("device[{i}].id"),
                    format!(
                        "`{}` is reserved with [mqtt]: the device's topics would mix with \
                         <base>/{}/…",
                        d.id, d.id
                    ),
                );
            }
        }
    }

    fn gateway(&mut self, table: &toml::Table) -> Option<GatewaySection> {
        let origin = self.origin.clone();
        let mut s = Section::new(&origin, "gateway", table);
        let before = self.errors.list.len();
        let name = s
            .opt_str(self.errors, "name")
            .unwrap_or_else(|| DEFAULT_GATEWAY_NAME.to_string());
        if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control)
        {
            self.errors.push(
                &origin,
                "gateway.name",
                "must be 1 to 64 printable characters",
            );
        }
        let state_dir = s
            .opt_str(self.errors, "state_dir")
            .unwrap_or_else(|| DEFAULT_STATE_DIR.to_string());
        if state_dir.is_empty() {
            self.errors
                .push(&origin, "gateway.state_dir", "must not be empty");
        }
        let max_frame_bytes = s
            .opt_uint(self.errors, "max_frame_bytes", 64 * 1024 * 1024)
            .unwrap_or(s2gw_core::s2::DEFAULT_MAX_FRAME_BYTES as u64);
        if max_frame_bytes < 1024 {
            self.errors.push(
                &origin,
                "gateway.max_frame_bytes",
                format!("must be at least 1024 bytes, got {max_frame_bytes}"),
            );
        }
        let traffic_log = s.opt_str(self.errors, "traffic_log");
        if traffic_log.as_deref() == Some("") {
            self.errors.push(
                &origin,
                "gateway.traffic_log",
                "must not be empty (leave the key out to log no traffic)",
            );
        }
        let log_level = s
            .opt_str(self.errors, "log_level")
            .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            self.errors.push(
                &origin,
                "gateway.log_level",
                format!("not a valid tracing filter (such as `info` or `s2gw=debug,info`): {e}"),
            );
        }
        s.finish(self.errors, |_| None);
        if self.errors.list.len() > before {
            return None;
        }
        Some(GatewaySection {
            name,
            state_dir: self.resolve(&state_dir),
            max_frame_bytes: usize::try_from(max_frame_bytes).unwrap_or(usize::MAX),
            traffic_log: traffic_log.map(|p| self.resolve(&p)),
            log_level,
        })
    }

    /// `token` from the environment, else `token_file` read now.
    fn secret(&mut self, s: &mut Section<'_>) -> Option<Option<Secret>> {
        self.secret_named(s, "token", "token_file")
    }

    /// A secret at `text_key` (from the environment), else the file `file_key` names,
    /// read now.
    fn secret_named(
        &mut self,
        s: &mut Section<'_>,
        text_key: &'static str,
        file_key: &'static str,
    ) -> Option<Option<Secret>> {
        let before = self.errors.list.len();
        let text = s.opt_secret_text(self.errors, text_key);
        let file = s.opt_str(self.errors, file_key);
        let secret = match (text, file) {
            (Some(t), _) => {
                if t.trim().is_empty() {
                    self.errors
                        .push(s.file(), &s.key(text_key), "must not be empty");
                }
                Some(Secret::new(t))
            }
            (None, Some(f)) => {
                let path = self.resolve(&f);
                match std::fs::read_to_string(&path) {
                    Ok(text) if text.trim().is_empty() => {
                        self.errors.push(
                            s.file(),
                            &s.key(file_key),
                            format!("{text_key} file {} is empty", path.display()),
                        );
                        None
                    }
                    Ok(text) => Some(Secret::new(text)),
                    Err(e) => {
                        self.errors.push(
                            s.file(),
                            &s.key(file_key),
                            format!("cannot read {text_key} file {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        };
        (self.errors.list.len() == before).then_some(secret)
    }

    /// An optional path that must name an existing file.
    fn existing_file(
        &mut self,
        s: &mut Section<'_>,
        name: &'static str,
    ) -> Option<Option<PathBuf>> {
        let before = self.errors.list.len();
        let path = s.opt_str(self.errors, name).map(|p| self.resolve(&p));
        if let Some(p) = &path
            && !p.is_file()
        {
            self.errors.push(
                s.file(),
                &s.key(name),
                format!("file {} does not exist", p.display()),
            );
        }
        (self.errors.list.len() == before).then_some(path)
    }

    fn server(&mut self, table: &toml::Table) -> Option<ServerSection> {
        let origin = self.origin.clone();
        let mut s = Section::new(&origin, "server", table);
        let before = self.errors.list.len();
        let listen = s.req_str(self.errors, "listen").and_then(|l| {
            match l.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.errors.push(
                        &origin,
                        "server.listen",
                        format!(
                            "`{l}` is not an IP address and port such as 127.0.0.1:8080 or [::]:8080 (host names are not resolved)"
                        ),
                    );
                    None
                }
            }
        });
        let token = self.secret(&mut s);
        let cert = self.existing_file(&mut s, "tls_cert_file");
        let key = self.existing_file(&mut s, "tls_key_file");
        let tls = match (s.has("tls_cert_file"), s.has("tls_key_file")) {
            (true, false) => {
                self.errors.push(
                    &origin,
                    "server.tls_cert_file",
                    "tls_cert_file is set but tls_key_file is not: give both or neither",
                );
                None
            }
            (false, true) => {
                self.errors.push(
                    &origin,
                    "server.tls_key_file",
                    "tls_key_file is set but tls_cert_file is not: give both or neither",
                );
                None
            }
            _ => match (cert.flatten(), key.flatten()) {
                (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                    cert_file,
                    key_file,
                }),
                _ => None,
            },
        };
        s.finish(self.errors, |_| None);
        if self.errors.list.len() > before {
            return None;
        }
        Some(ServerSection {
            listen: listen?,
            token: token?,
            tls,
        })
    }

    /// Every `[cem.NAME]`; a link that failed maps to `None` so references to it are not
    /// reported a second time as unknown.
    fn cem_links(
        &mut self,
        table: Option<&toml::Table>,
        present: Present,
    ) -> BTreeMap<String, Option<CemLink>> {
        let mut out = BTreeMap::new();
        let Some(table) = table else {
            return out;
        };
        for (name, value) in table {
            let path = format!("cem.{name}");
            let toml::Value::Table(link) = value else {
                self.err(
                    &path,
                    format!(
                        "expected a table ([cem.{name}]), found {}",
                        type_name(value)
                    ),
                );
                out.insert(name.clone(), None);
                continue;
            };
            let link = self.cem_link(name, &path, link, present);
            out.insert(name.clone(), link);
        }
        out
    }

    fn cem_link(
        &mut self,
        name: &str,
        path: &str,
        table: &toml::Table,
        present: Present,
    ) -> Option<CemLink> {
        let server_present = present.server;
        let origin = self.origin.clone();
        let before = self.errors.list.len();
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
        let mut s = Section::new(&origin, path, table);
        let transport = s
            .opt_str(self.errors, "transport")
            .unwrap_or_else(|| "ws-client".to_string());
        let url = s.opt_str(self.errors, "url");
        let token = self.secret(&mut s);
        let ca_file = self.existing_file(&mut s, "ca_file");
        let pin = s.opt_str(self.errors, "pin_sha256");
        let ping = s
            .opt_uint(self.errors, "ping_interval_s", 3600)
            .unwrap_or(MIN_PING_INTERVAL_S);
        let dead = s
            .opt_uint(self.errors, "dead_after_s", 86_400)
            .unwrap_or(DEFAULT_DEAD_AFTER_S);
        let key = |k: &str| format!("{path}.{k}");
        if ping < MIN_PING_INTERVAL_S {
            self.err(
                &key("ping_interval_s"),
                format!("must be at least {MIN_PING_INTERVAL_S} seconds, got {ping}"),
            );
        }
        if dead <= ping {
            self.err(
                &key("dead_after_s"),
                format!("must be longer than ping_interval_s ({ping} s), got {dead}"),
            );
        }
        let transport = match transport.as_str() {
            "ws-client" => {
                let url = match url {
                    Some(u) => self.check_url(&key("url"), &u).then_some(u),
                    None => {
                        self.err(
                            &key("url"),
                            "missing required key (transport \"ws-client\" dials this url)",
                        );
                        None
                    }
                };
                let tls = url.as_deref().is_some_and(|u| u.starts_with("wss://"));
                for (present, k) in [
                    (ca_file.as_ref().is_some_and(Option::is_some), "ca_file"),
                    (pin.is_some(), "pin_sha256"),
                ] {
                    if present && url.is_some() && !tls {
                        self.err(&key(k), format!("{k} only applies to wss:// urls"));
                    }
                }
                let pin_sha256 = pin.and_then(|p| match parse_pin(&p) {
                    Some(bytes) => Some(bytes),
                    None => {
                        self.err(
                            &key("pin_sha256"),
                            "expected a SHA-256 fingerprint: 64 hex digits, optionally in colon-separated pairs",
                        );
                        None
                    }
                });
                url.map(|url| CemTransport::WsClient {
                    url,
                    ca_file: ca_file.clone().flatten(),
                    pin_sha256,
                })
            }
            "ws-server" => {
                for (present, k) in [
                    (url.is_some(), "url"),
                    (ca_file.as_ref().is_some_and(Option::is_some), "ca_file"),
                    (pin.is_some(), "pin_sha256"),
                ] {
                    if present {
                        self.err(
                            &key(k),
                            format!("{k} only applies to transport \"ws-client\""),
                        );
                    }
                }
                if !server_present {
                    self.err(
                        &key("transport"),
                        "transport \"ws-server\" needs a [server] section: the CEM dials in at \
                         /s2/cem/<resource_id> on the gateway's S2 server",
                    );
                }
                Some(CemTransport::WsServer)
            }
            "mqtt" => {
                let websocket_only = [
                    (url.is_some(), "url"),
                    (ca_file.as_ref().is_some_and(Option::is_some), "ca_file"),
                    (pin.is_some(), "pin_sha256"),
                    (token.as_ref().is_some_and(Option::is_some), "token_file"),
                    (s.has("ping_interval_s"), "ping_interval_s"),
                    (s.has("dead_after_s"), "dead_after_s"),
                ];
                for (present, k) in websocket_only {
                    if present {
                        self.err(
                            &key(k),
                            format!(
                                "{k} only applies to WebSocket transports (an MQTT link uses \
                                 the [mqtt] broker's settings)"
                            ),
                        );
                    }
                }
                if !present.mqtt {
                    self.err(
                        &key("transport"),
                        "transport \"mqtt\" needs an [mqtt] section: the CEM meets the gateway \
                         on that broker",
                    );
                }
                Some(CemTransport::Mqtt)
            }
            other => {
                self.err(
                    &key("transport"),
                    format!(
                        "unknown transport `{other}` (expected \"ws-client\", \"ws-server\" or \"mqtt\")"
                    ),
                );
                None
            }
        };
        s.finish(self.errors, |_| None);
        if self.errors.list.len() > before {
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
    fn check_url(&mut self, key: &str, url: &str) -> bool {
        let rest = match url
            .strip_prefix("wss://")
            .or_else(|| url.strip_prefix("ws://"))
        {
            Some(rest) => rest,
            None => {
                let scheme = url.split("://").next().filter(|_| url.contains("://"));
                self.err(
                    key,
                    match scheme {
                        Some(s) => format!("url scheme must be ws:// or wss://, got {s}://"),
                        None => format!("`{url}` is not a url: it must start with ws:// or wss://"),
                    },
                );
                return false;
            }
        };
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() {
            self.err(key, "url has no host");
            return false;
        }
        if url.chars().any(char::is_whitespace) {
            self.err(key, "url must not contain whitespace");
            return false;
        }
        let mut ok = true;
        let mut tail = url;
        while let Some(start) = tail.find('{') {
            let after = &tail[start..];
            let Some(end) = after.find('}') else {
                self.err(key, "url has an unclosed `{`");
                return false;
            };
            let placeholder = &after[..=end];
            if placeholder != "{resource_id}" && placeholder != "{id}" {
                self.err(
                    key,
                    format!("unknown placeholder `{placeholder}` (known: {{resource_id}}, {{id}})"),
                );
                ok = false;
            }
            tail = &after[end + 1..];
        }
        ok
    }

    /// Validate an `id` and claim it; `kind` is `device` or `native`.
    fn claim_id(&mut self, path: &str, id: &str, ids: &mut BTreeMap<String, String>) -> bool {
        let valid = !id.is_empty()
            && id.len() <= 48
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            self.err(
                &format!("{path}.id"),
                format!("`{id}` is not a valid id: 1 to 48 of [A-Za-z0-9_-]"),
            );
            return false;
        }
        if let Some(first) = ids.get(id) {
            self.err(
                &format!("{path}.id"),
                format!("duplicate id `{id}` (also {first}.id)"),
            );
            return false;
        }
        ids.insert(id.to_string(), path.to_string());
        true
    }

    fn resource_id(
        &mut self,
        s: &mut Section<'_>,
        path: &str,
        gateway_name: &str,
        id: Option<&str>,
        resource_ids: &mut BTreeMap<String, String>,
    ) -> Option<Id> {
        let key = format!("{path}.resource_id");
        let rid = match s.opt_str(self.errors, "resource_id") {
            Some(text) => match Id::parse(&text) {
                Ok(rid) => rid,
                Err(e) => {
                    self.err(&key, format!("`{text}` is not an S2 id: {e}"));
                    return None;
                }
            },
            None => derive_resource_id(gateway_name, id?),
        };
        if let Some(first) = resource_ids.get(rid.as_str()) {
            self.err(&key, format!("duplicate resource_id {rid} (also {first})"));
            return None;
        }
        resource_ids.insert(rid.as_str().to_string(), path.to_string());
        Some(rid)
    }

    /// The `cem` reference: must name a defined link.
    fn cem_ref(
        &mut self,
        s: &mut Section<'_>,
        path: &str,
        cem: &BTreeMap<String, Option<CemLink>>,
    ) -> Option<String> {
        let name = s.req_str(self.errors, "cem")?;
        if cem.contains_key(&name) {
            return Some(name);
        }
        let reason = if cem.is_empty() {
            format!("unknown cem link `{name}`: no [cem.*] links are defined")
        } else {
            let known: Vec<&str> = cem.keys().map(String::as_str).collect();
            format!("unknown cem link `{name}` (defined: {})", known.join(", "))
        };
        self.err(&format!("{path}.cem"), reason);
        None
    }

    fn native(
        &mut self,
        path: &str,
        table: &toml::Table,
        refs: &Refs<'_>,
        ids: &mut BTreeMap<String, String>,
        resource_ids: &mut BTreeMap<String, String>,
    ) -> Option<NativeSection> {
        let origin = self.origin.clone();
        let before = self.errors.list.len();
        let mut s = Section::new(&origin, path, table);
        let id = s
            .req_str(self.errors, "id")
            .filter(|id| self.claim_id(path, id, ids));
        let transport = self.native_transport(&mut s, path, refs.present);
        let rid = self.resource_id(&mut s, path, refs.gateway_name, id.as_deref(), resource_ids);
        let cem = self.cem_ref(&mut s, path, refs.cem);
        s.finish(self.errors, |_| None);
        if self.errors.list.len() > before {
            return None;
        }
        Some(NativeSection {
            id: id?,
            transport: transport?,
            resource_id: rid?,
            cem: cem?,
        })
    }

    /// A native's `transport`, and the section it needs.
    fn native_transport(
        &mut self,
        s: &mut Section<'_>,
        path: &str,
        present: Present,
    ) -> Option<NativeTransport> {
        let text = s
            .opt_str(self.errors, "transport")
            .unwrap_or_else(|| "ws-server".to_string());
        match text.as_str() {
            "ws-server" => {
                if !present.server {
                    self.err(
                        path,
                        "a native RM connects to the gateway's S2 server at /s2/rm/<id>, but \
                         there is no [server] section",
                    );
                }
                Some(NativeTransport::WsServer)
            }
            "mqtt" => {
                if !present.mqtt {
                    self.err(
                        &format!("{path}.transport"),
                        "transport \"mqtt\" needs an [mqtt] section: the native RM meets the \
                         gateway on that broker",
                    );
                }
                Some(NativeTransport::Mqtt)
            }
            other => {
                self.err(
                    &format!("{path}.transport"),
                    format!("unknown transport `{other}` (expected \"ws-server\" or \"mqtt\")"),
                );
                None
            }
        }
    }

    fn device(
        &mut self,
        path: &str,
        table: &toml::Table,
        refs: &Refs<'_>,
        ids: &mut BTreeMap<String, String>,
        resource_ids: &mut BTreeMap<String, String>,
    ) -> Option<DeviceSection> {
        let (cem, gateway_name) = (refs.cem, refs.gateway_name);
        let origin = self.origin.clone();
        let before = self.errors.list.len();
        let key = |k: &str| format!("{path}.{k}");
        let mut s = Section::new(&origin, path, table);
        let id = s
            .req_str(self.errors, "id")
            .filter(|id| self.claim_id(path, id, ids));
        let name = s.opt_str(self.errors, "name");
        let rid = self.resource_id(&mut s, path, gateway_name, id.as_deref(), resource_ids);
        let profile = s
            .req_str(self.errors, "profile")
            .and_then(|p| self.profile(&key("profile"), &p));
        let cem = self.cem_ref(&mut s, path, cem);
        let poll = s
            .opt_uint(self.errors, "poll_interval_s", 3600)
            .unwrap_or(DEFAULT_POLL_INTERVAL_S);
        let measurement = s
            .opt_uint(self.errors, "measurement_interval_s", 86_400)
            .unwrap_or(DEFAULT_MEASUREMENT_INTERVAL_S);
        if poll == 0 {
            self.err(&key("poll_interval_s"), "must be at least 1 second");
        }
        if measurement == 0 {
            self.err(&key("measurement_interval_s"), "must be at least 1 second");
        } else if measurement < poll {
            self.err(
                &key("measurement_interval_s"),
                format!(
                    "must not be shorter than poll_interval_s ({poll} s): measurements would repeat stale readings"
                ),
            );
        }
        let narrowed = if s.has("control_types") {
            s.opt_str_list(self.errors, "control_types")
                .and_then(|names| {
                    profile::parse_control_types(
                        &names,
                        &origin,
                        &key("control_types"),
                        self.errors,
                    )
                })
        } else {
            None
        };
        let control_types = match (&profile, narrowed) {
            (Some(p), Some(list)) => {
                let mut ok = true;
                for (i, ct) in list.iter().enumerate() {
                    if !p.control_types.contains(ct) {
                        ok = false;
                        let offered: Vec<&str> = p
                            .control_types
                            .iter()
                            .map(|c| control_type_name(*c))
                            .collect();
                        self.err(
                            &format!("{path}.control_types[{i}]"),
                            format!(
                                "{} is not offered by profile `{}` (it offers {})",
                                control_type_name(*ct),
                                p.name,
                                offered.join(", ")
                            ),
                        );
                    }
                }
                ok.then_some(list)
            }
            (Some(p), None) => Some(p.control_types.clone()),
            (None, _) => None,
        };

        let connection =
            self.connection(path, &mut s, table, profile.as_deref(), refs.present.mqtt);
        s.finish(self.errors, profile::future_adapter_hint);
        if self.errors.list.len() > before {
            return None;
        }
        let id = id?;
        Some(DeviceSection {
            name: name.unwrap_or_else(|| id.clone()),
            id,
            resource_id: rid?,
            profile: profile?,
            cem: cem?,
            poll_interval: Duration::from_secs(poll),
            measurement_interval: Duration::from_secs(measurement),
            control_types: control_types?,
            connection: connection?,
        })
    }

    /// The connection section: exactly one adapter table, read against the profile.
    fn connection(
        &mut self,
        path: &str,
        s: &mut Section<'_>,
        table: &toml::Table,
        profile: Option<&Profile>,
        broker: bool,
    ) -> Option<Connection> {
        let sim = s.opt_table(self.errors, "sim");
        let modbus = s.opt_table(self.errors, "modbus");
        let ble = s.opt_table(self.errors, "ble");
        let mqtt = s.opt_table(self.errors, "mqtt");
        let present: Vec<&str> = profile::ADAPTERS
            .iter()
            .chain(profile::FUTURE_ADAPTERS)
            .copied()
            .filter(|a| table.contains_key(*a))
            .collect();
        if present.is_empty() {
            self.err(
                path,
                format!(
                    "no connection section: add one of [device.{}]",
                    profile::ADAPTERS.join("], [device.")
                ),
            );
        } else if present.len() > 1 {
            self.err(
                path,
                format!(
                    "more than one connection section ({}): a device has exactly one",
                    present.join(", ")
                ),
            );
            return None;
        }
        let profile = profile?;
        if let Some(t) = sim {
            return self.sim(path, t, profile).map(Connection::Sim);
        }
        if let Some(t) = modbus {
            return self
                .modbus(path, t, profile)
                .map(|m| Connection::Modbus(Box::new(m)));
        }
        if let Some(t) = mqtt {
            return self
                .mqtt_device(path, t, profile, broker)
                .map(|m| Connection::Mqtt(Box::new(m)));
        }
        self.ble(path, ble?, profile).map(Connection::Ble)
    }

    /// The profile lacks the adapter table the device's section needs.
    fn no_adapter_table(&mut self, path: &str, adapter: &str, profile: &Profile) {
        self.err(
            &format!("{path}.{adapter}"),
            format!(
                "profile `{}` has no [{adapter}] table, so it cannot describe a {adapter} device",
                profile.name
            ),
        );
    }

    /// `[device.modbus]` merged over the profile's `[modbus]`.
    fn modbus(
        &mut self,
        path: &str,
        device: &toml::Table,
        profile: &Profile,
    ) -> Option<s2gw_modbus::ModbusConfig> {
        let Some(defaults) = &profile.modbus else {
            self.no_adapter_table(path, "modbus", profile);
            return None;
        };
        let origin = self.origin.clone();
        let whence = adapters::Whence {
            config: (&origin, path),
            profile: profile.source.display_path(),
            device,
            profile_table: defaults,
            device_keys: s2gw_modbus::config::CONNECTION_KEYS,
        };
        adapters::modbus_device(&whence, self.errors)
    }

    /// `[device.ble]` next to the profile's `[ble]`.
    fn ble(&mut self, path: &str, device: &toml::Table, profile: &Profile) -> Option<BleSection> {
        let Some(ble_profile) = &profile.ble else {
            self.no_adapter_table(path, "ble", profile);
            return None;
        };
        let origin = self.origin.clone();
        let connection = adapters::ble_connection(
            device,
            &format!("{path}.ble"),
            &origin,
            &self.base_dir,
            self.errors,
        )?;
        Some(BleSection {
            connection,
            profile: ble_profile.clone(),
        })
    }

    /// Resolve a `profile` value (see the module docs), loading each profile once.
    fn profile(&mut self, key: &str, value: &str) -> Option<Arc<Profile>> {
        if let Some(cached) = self.profiles.get(value) {
            return cached.clone();
        }
        let is_path = value.contains('/') || value.ends_with(".toml");
        let local = if is_path {
            Some(self.resolve(value))
        } else {
            let candidate = self.base_dir.join("profiles").join(format!("{value}.toml"));
            candidate.is_file().then_some(candidate)
        };
        let loaded = match local {
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => self.parse_profile_text(key, &text, ProfileSource::File(path)),
                Err(e) => {
                    self.err(
                        key,
                        format!("cannot read profile file {}: {e}", path.display()),
                    );
                    None
                }
            },
            None => match builtin_profile_text(value) {
                Some((name, text)) => {
                    self.parse_profile_text(key, text, ProfileSource::BuiltIn(name))
                }
                None => {
                    let names: Vec<&str> = BUILTIN_PROFILES.iter().map(|(n, _)| *n).collect();
                    let looked = self.base_dir.join("profiles").join(format!("{value}.toml"));
                    self.err(
                        key,
                        format!(
                            "unknown profile `{value}`: not a built-in profile ({}) and no file {}",
                            names.join(", "),
                            looked.display()
                        ),
                    );
                    None
                }
            },
        };
        self.profiles.insert(value.to_string(), loaded.clone());
        loaded
    }

    fn parse_profile_text(
        &mut self,
        key: &str,
        text: &str,
        source: ProfileSource,
    ) -> Option<Arc<Profile>> {
        let shown = source.display_path();
        let parsed = profile::parse_profile(text, source, self.errors).map(Arc::new);
        if parsed.is_none() {
            // Point from the device to the profile's own errors, which name its file.
            self.err(
                key,
                format!("profile {} is invalid (see its errors)", shown.display()),
            );
        }
        parsed
    }

    /// Merge `[device.sim]` over the profile's `[sim]` and read it as a [`SimConfig`].
    fn sim(&mut self, path: &str, device: &toml::Table, profile: &Profile) -> Option<SimConfig> {
        let before = self.errors.list.len();
        let Some(defaults) = &profile.sim else {
            self.err(
                &format!("{path}.sim"),
                format!(
                    "profile `{}` has no [sim] table, so it cannot describe a simulated device",
                    profile.name
                ),
            );
            return None;
        };
        let profile_file = profile.source.display_path();
        let origin = self.origin.clone();
        // Where a key of the merged table was written: the device, or the profile.
        let whence = |key: &str| -> (PathBuf, String) {
            let top = key.split(['.', '[']).next().unwrap_or(key);
            if device.contains_key(top) {
                (origin.clone(), format!("{path}.sim.{key}"))
            } else {
                (profile_file.clone(), format!("sim.{key}"))
            }
        };
        let mut merged = defaults.clone();
        for (k, v) in device {
            merged.insert(k.clone(), v.clone());
        }

        // Each key is tried on its own next to `model`, so every bad key is reported (a
        // whole-table deserialize stops at the first).
        let model = match merged.get("model") {
            None => {
                self.err(
                    &format!("{path}.sim.model"),
                    "missing required key (pv, ev, battery, heat_pump or meter)",
                );
                return None;
            }
            Some(m) => {
                let mut only = toml::Table::new();
                only.insert("model".to_string(), m.clone());
                match toml::Value::Table(only).try_into::<SimConfig>() {
                    Ok(c) => Some(c.model),
                    Err(e) => {
                        let (file, key) = whence("model");
                        self.errors.push(&file, &key, sim_reason(&e));
                        None
                    }
                }
            }
        }?;
        for (k, v) in &merged {
            if k == "model" {
                continue;
            }
            let mut pair = toml::Table::new();
            pair.insert(
                "model".to_string(),
                toml::Value::String(model.as_str().to_string()),
            );
            pair.insert(k.clone(), v.clone());
            if let Err(e) = toml::Value::Table(pair).try_into::<SimConfig>() {
                let (file, key) = whence(k);
                self.errors.push(&file, &key, sim_reason(&e));
            }
        }
        if self.errors.list.len() > before {
            return None;
        }
        let config = match toml::Value::Table(merged).try_into::<SimConfig>() {
            Ok(c) => c,
            Err(e) => {
                self.err(&format!("{path}.sim"), sim_reason(&e));
                return None;
            }
        };
        for (key, reason) in config.validate() {
            let (file, key) = whence(&key);
            self.errors.push(&file, &key, reason);
        }
        if !model_fits_kind(config.model, profile.kind) {
            let (file, key) = whence("model");
            self.errors.push(
                &file,
                &key,
                format!(
                    "sim model `{}` does not fit profile `{}` of kind {}",
                    config.model.as_str(),
                    profile.name,
                    kind_name(profile.kind)
                ),
            );
        }
        (self.errors.list.len() == before).then_some(config)
    }
}

/// Whether a simulated model can stand for a device of `kind`.
fn model_fits_kind(model: SimModel, kind: DeviceKind) -> bool {
    matches!(
        (model, kind),
        (SimModel::Pv, DeviceKind::PvInverter)
            | (SimModel::Ev, DeviceKind::EvCharger)
            | (SimModel::Battery, DeviceKind::Battery)
            | (SimModel::HeatPump, DeviceKind::HeatPump)
            | (SimModel::Meter, DeviceKind::Meter | DeviceKind::Load)
    )
}

/// A readable reason from a `SimConfig` deserialization error.
fn sim_reason(error: &toml::de::Error) -> String {
    let message = error.message().trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        // "expected one of `a`, `b`": the known names are every other backtick span.
        let known: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let near = reader::closest(field, &known);
        return match near {
            Some(k) => format!("unknown key (did you mean `{k}`?)"),
            _ => format!("unknown key (known keys: {})", known.join(", ")),
        };
    }
    message.to_string()
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

    #[test]
    fn pins_parse() {
        let colons = ["ab"; 32].join(":");
        assert_eq!(parse_pin(&colons), Some([0xab; 32]));
        assert_eq!(parse_pin(&"0".repeat(64)), Some([0; 32]));
        assert_eq!(parse_pin("abc"), None);
    }

    #[test]
    fn builtin_profiles_are_valid() {
        for (name, text) in BUILTIN_PROFILES {
            let mut errors = Errors::new();
            let p = profile::parse_profile(text, ProfileSource::BuiltIn(name), &mut errors);
            assert!(errors.list.is_empty(), "{name}: {:?}", errors.list);
            assert_eq!(p.map(|p| p.name), Some(name.to_string()));
        }
    }

    #[test]
    fn env_mapping() {
        let mapped = map_env(&[
            ("S2GW_GATEWAY__LOG_LEVEL", "debug"),
            ("s2gw_cem__home__token", "x"),
            ("S2GW_CONFIG", "/etc/s2gw/s2gw.toml"),
            ("OTHER__X", "1"),
        ]);
        let keys: Vec<&str> = mapped.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["gateway.log_level", "cem.home.token"]);
    }
}
