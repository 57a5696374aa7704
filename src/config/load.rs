//! Loading: the file, the environment layer over it, the top-level table, and the checks
//! between sections (ids, resource ids, references to CEM links).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use s2gw_core::s2::Id;
use serde::Deserialize;

use super::cem::{self, CemLink};
use super::device::DeviceSection;
use super::env::{self, EnvOverride};
use super::located::{self, Any, At, Errors, Table, type_name};
use super::profile::{self, Profile, ProfileSource};
use super::secret;
use super::{
    Config, ConfigError, ConfigErrors, DEFAULT_GATEWAY_NAME, RESERVED_DEVICE_IDS,
    derive_resource_id,
};

/// Load and validate the config file at `path`, with the process environment's `S2GW_*`
/// overrides.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read_config_file(path)?;
    load_inner(&text, path, env::process_env())
}

/// Like [`load`], with `env` (`(variable, value)` pairs, e.g.
/// `("S2GW_GATEWAY__LOG_LEVEL", "debug")`) in place of the process environment. For tests,
/// which run in parallel and must not share the process environment.
pub fn load_with_env(path: &Path, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let text = read_config_file(path)?;
    load_inner(&text, path, env::map_env(env))
}

/// Load and validate config text that did not come from a file (the embedded demo, tests),
/// with the process environment's overrides. `origin` is what errors name and what relative
/// paths resolve against (its directory).
pub fn load_str(text: &str, origin: &Path) -> Result<Config, ConfigErrors> {
    load_inner(text, origin, env::process_env())
}

/// Like [`load_str`], with `env` in place of the process environment.
pub fn load_str_with_env(
    text: &str,
    origin: &Path,
    env: &[(&str, &str)],
) -> Result<Config, ConfigErrors> {
    load_inner(text, origin, env::map_env(env))
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

/// Parse TOML text, or report its syntax error (key `line L, column C`) in `file`.
pub(crate) fn parse_toml(text: &str, file: &Path, errors: &mut Errors) -> Option<toml::Table> {
    match toml::from_str(text) {
        Ok(table) => Some(table),
        Err(e) => {
            let message = e.message().trim().to_string();
            let key = match e.span() {
                Some(span) => {
                    let before = text.get(..span.start).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {column}")
                }
                None => String::new(),
            };
            errors.push(file, &key, format!("TOML syntax error: {message}"));
            None
        }
    }
}

fn load_inner(text: &str, origin: &Path, env: Vec<EnvOverride>) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::new();
    let config = parse_toml(text, origin, &mut errors)
        .and_then(|file| {
            secret::reject_plaintext(&file, origin, &mut errors);
            env::merge(&file, env, origin, &mut errors)
        })
        .and_then(|merged| Cx::new(origin, &mut errors).config(&merged));
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

/// The file's top level. Fields in alphabetical order: serde lists them in declaration
/// order in `unknown key (known keys: …)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopToml {
    cem: Option<Table>,
    device: Option<Any>,
    gateway: Option<Table>,
    mqtt: Option<Table>,
    native: Option<Any>,
    s2connect: Option<Table>,
    server: Option<Table>,
    web: Option<Table>,
}

/// Which optional sections the config has, for the keys that need them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Present {
    /// `[server]`.
    pub(crate) server: bool,
    /// `[mqtt]`.
    pub(crate) mqtt: bool,
}

/// What a `[[device]]` or `[[native]]` is checked against, and claims while it is read:
/// ids and resource ids are unique among both.
pub(crate) struct Refs<'a> {
    /// The links by name; one that failed maps to `None`, so references to it are not
    /// reported a second time as unknown.
    pub(crate) cem: &'a BTreeMap<String, Option<CemLink>>,
    /// `gateway.name`, for derived resource ids.
    pub(crate) gateway_name: &'a str,
    /// The optional sections there are.
    pub(crate) present: Present,
    /// Ids claimed so far, with the path of the entry that claimed each.
    ids: BTreeMap<String, String>,
    /// Resource ids claimed so far, likewise.
    resource_ids: BTreeMap<String, String>,
    /// Modbus proxy listeners and unit ids claimed so far, likewise.
    proxy_units: BTreeMap<(String, u8), String>,
}

impl Refs<'_> {
    /// Validate an entry's `id` and claim it.
    pub(crate) fn claim_id(&mut self, at: &At, errors: &mut Errors, id: String) -> Option<String> {
        let valid = !id.is_empty()
            && id.len() <= 48
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            at.err(
                errors,
                "id",
                format!("`{id}` is not a valid id: 1 to 48 of [A-Za-z0-9_-]"),
            );
            return None;
        }
        if let Some(first) = self.ids.get(&id) {
            at.err(
                errors,
                "id",
                format!("duplicate id `{id}` (also {first}.id)"),
            );
            return None;
        }
        self.ids.insert(id.clone(), at.path().to_string());
        Some(id)
    }

    /// An entry's `resource_id`, or the one derived from its id; claimed.
    pub(crate) fn resource_id(
        &mut self,
        at: &At,
        errors: &mut Errors,
        given: Option<String>,
        id: Option<&str>,
    ) -> Option<Id> {
        let rid = match given {
            Some(text) => match Id::parse(&text) {
                Ok(rid) => rid,
                Err(e) => {
                    at.err(
                        errors,
                        "resource_id",
                        format!("`{text}` is not an S2 id: {e}"),
                    );
                    return None;
                }
            },
            // A resource_id written with a bad value was reported already.
            None if at.given("resource_id") => return None,
            None => derive_resource_id(self.gateway_name, id?),
        };
        if let Some(first) = self.resource_ids.get(rid.as_str()) {
            at.err(
                errors,
                "resource_id",
                format!("duplicate resource_id {rid} (also {first})"),
            );
            return None;
        }
        self.resource_ids
            .insert(rid.as_str().to_string(), at.path().to_string());
        Some(rid)
    }

    /// A Modbus device's proxy unit id on its `proxy_listen`: one device per unit id
    /// on one listener; a proxy's cache no older than the device's poll interval.
    pub(crate) fn proxy(
        &mut self,
        at: &At,
        errors: &mut Errors,
        modbus: &s2gw_modbus::ModbusConnection,
        poll: Duration,
    ) {
        let Some(listen) = &modbus.proxy_listen else {
            return;
        };
        if modbus.proxy_cache() > poll {
            at.err(
                errors,
                "modbus.proxy_cache_ms",
                format!(
                    "must not exceed poll_interval_s ({} ms): proxy clients would get answers \
                     older than the gateway's own",
                    poll.as_millis()
                ),
            );
        }
        let key = (listen.clone(), modbus.proxy_unit());
        if let Some(first) = self.proxy_units.get(&key) {
            at.err(
                errors,
                "modbus.proxy_unit",
                format!(
                    "unit {} on proxy {listen} is also {first}: give one of them another proxy_unit",
                    key.1
                ),
            );
            return;
        }
        self.proxy_units.insert(key, at.path().to_string());
    }

    /// An entry's `cem`: required, and must name a defined link.
    pub(crate) fn cem(&self, at: &At, errors: &mut Errors, name: Option<String>) -> Option<String> {
        let name = at.required(errors, "cem", name)?;
        if self.cem.contains_key(&name) {
            return Some(name);
        }
        let reason = if self.cem.is_empty() {
            format!("unknown cem link `{name}`: no [cem.*] links are defined")
        } else {
            let known: Vec<&str> = self.cem.keys().map(String::as_str).collect();
            format!("unknown cem link `{name}` (defined: {})", known.join(", "))
        };
        at.err(errors, "cem", reason);
        None
    }
}

/// What every section is read with: the config file, its directory, the errors so far, and
/// the profiles already resolved.
pub(crate) struct Cx<'e> {
    /// The config file (or the origin given to [`load_str`]).
    pub(crate) origin: PathBuf,
    /// What relative paths resolve against: the config file's directory.
    pub(crate) base_dir: PathBuf,
    /// Where every problem goes.
    pub(crate) errors: &'e mut Errors,
    /// Profiles already resolved, by the text of the `profile` key; `None` for one that
    /// failed (its errors were reported once).
    pub(crate) profiles: HashMap<String, Option<Arc<Profile>>>,
}

impl<'e> Cx<'e> {
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

    /// A path from the config, resolved against its directory.
    pub(crate) fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Report a problem with `key` in the config file.
    pub(crate) fn err(&mut self, key: &str, reason: impl Into<String>) {
        self.errors.push(&self.origin, key, reason);
    }

    /// How many problems there are so far; see [`Cx::clean_since`].
    pub(crate) fn mark(&self) -> usize {
        self.errors.list.len()
    }

    /// Whether nothing was reported since `mark`.
    pub(crate) fn clean_since(&self, mark: usize) -> bool {
        self.errors.list.len() == mark
    }

    /// Read the config file's `table` at `path` as `T` (see [`located::read`]).
    pub(crate) fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        table: &toml::Table,
        path: &str,
    ) -> Option<(T, At)> {
        located::read(table, &self.origin, path, self.errors)
    }

    /// A listen address at `name`: an IP address and port (host names are not resolved);
    /// `None` when reported. `example_port` makes the error's examples fit the section.
    pub(crate) fn socket_addr(
        &mut self,
        at: &At,
        name: &str,
        text: &str,
        example_port: u16,
    ) -> Option<std::net::SocketAddr> {
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                at.err(
                    self.errors,
                    name,
                    format!(
                        "`{text}` is not an IP address and port such as 127.0.0.1:{example_port} or \
                         [::]:{example_port} (host names are not resolved)"
                    ),
                );
                None
            }
        }
    }

    /// An optional path at `name` that must name an existing file, resolved; `None` when
    /// not given or reported.
    pub(crate) fn existing_file(
        &mut self,
        at: &At,
        name: &str,
        path: Option<String>,
    ) -> Option<PathBuf> {
        let path = self.resolve(&path?);
        if path.is_file() {
            return Some(path);
        }
        at.err(
            self.errors,
            name,
            format!("file {} does not exist", path.display()),
        );
        None
    }

    /// The merged table as a [`Config`].
    fn config(mut self, merged: &toml::Table) -> Option<Config> {
        let (top, at) = self.read::<TopToml>(merged, "")?;
        let gateway = self.gateway(&top.gateway.map(|t| t.0).unwrap_or_default());
        let present = Present {
            server: top.server.is_some(),
            mqtt: top.mqtt.is_some(),
        };
        let server = top.server.map(|t| self.server(&t.0));
        let mqtt = top.mqtt.map(|t| self.mqtt(&t.0));
        let web = top.web.map(|t| self.web(&t.0));
        let s2connect = top.s2connect.map(|t| self.s2connect(&t.0));
        let cem = cem::links(&mut self, top.cem.map(|t| t.0), present);
        let devices = self.entries(&at, "device", top.device.map(|a| a.0));
        let natives = self.entries(&at, "native", top.native.map(|a| a.0));

        let gateway_name = gateway
            .as_ref()
            .map_or(DEFAULT_GATEWAY_NAME.to_string(), |g| g.name.clone());
        let mut refs = Refs {
            cem: &cem,
            gateway_name: &gateway_name,
            present,
            ids: BTreeMap::new(),
            resource_ids: BTreeMap::new(),
            proxy_units: BTreeMap::new(),
        };
        let mut device_sections = Vec::new();
        for (i, t) in devices.iter().enumerate() {
            if let Some(d) = self.device(&format!("device[{i}]"), t, &mut refs) {
                device_sections.push(d);
            }
        }
        if present.mqtt {
            self.reserved_ids(&device_sections);
        }
        let mut native_sections = Vec::new();
        for (i, t) in natives.iter().enumerate() {
            if let Some(n) = self.native(&format!("native[{i}]"), t, &mut refs) {
                native_sections.push(n);
            }
        }
        let wan = matches!(&s2connect, Some(Some(s)) if s.wan_domain.is_some());
        let wss = matches!(&server, Some(Some(s)) if s.tls.is_some());
        if wan && !wss {
            self.err(
                "s2connect.deployment",
                "deployment = \"wan\" needs a [server] section with tls_cert_file and \
                 tls_key_file: the CEMs dial the gateway's wss:// S2 server",
            );
        }
        if devices.is_empty() && natives.is_empty() {
            self.err(
                "device",
                "no [[device]] or [[native]] entries: the gateway would have nothing to serve",
            );
        }

        Some(Config {
            gateway: gateway?,
            server: server.map_or(Some(None), |s| s.map(Some))?,
            cem: cem.into_iter().filter_map(|(k, v)| Some((k, v?))).collect(),
            devices: device_sections,
            natives: native_sections,
            mqtt: mqtt.map_or(Some(None), |m| m.map(Some))?,
            web: web.map_or(Some(None), |w| w.map(Some))?,
            s2connect: s2connect.map_or(Some(None), |s| s.map(Some))?,
            source: self.origin,
        })
    }

    /// The tables of `[[name]]`; anything else in their place is reported.
    fn entries(&mut self, at: &At, name: &str, value: Option<toml::Value>) -> Vec<toml::Table> {
        match value {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        toml::Value::Table(t) => out.push(t),
                        other => self.err(
                            &format!("{name}[{i}]"),
                            format!("expected a table, found {}", type_name(&other)),
                        ),
                    }
                }
                out
            }
            Some(other) => {
                at.err(
                    self.errors,
                    name,
                    format!(
                        "expected an array of tables (write [[{name}]]), found {}",
                        type_name(&other)
                    ),
                );
                Vec::new()
            }
        }
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
}
