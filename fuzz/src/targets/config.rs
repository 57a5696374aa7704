//! Configs and profiles: mutated TOML into `check` (every problem named with file and
//! key, never a panic) and, where `check` passes, into the daemon's start-up and an
//! orderly stop.
//!
//! Start-up touches the network, so it runs only in a private network namespace (the
//! runner re-executes itself under `unshare --net` for this target): whatever address a
//! mutation invents, nothing leaves the machine. It also runs only where the state
//! directory and the traffic log stay inside the input's own temporary directory and no
//! serial port is named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use rand::Rng;
use rand::rngs::StdRng;
use s2gw::config::{self, Config, Connection};
use s2gw_core::CancellationToken;
use tokio::runtime::Runtime;

use crate::mutate::{TextMutation, unstructured_bytes};
use crate::runner::Target;

/// A change to a TOML document at the `at`-th key (depth first, modulo the count).
#[derive(Debug, Clone, Arbitrary)]
pub enum TomlMutation {
    /// Drop the key.
    Remove {
        /// Which node (modulo their count).
        at: u16,
    },
    /// Give it another value.
    Replace {
        /// Which node (modulo their count).
        at: u16,
        /// The new value.
        with: TomlScalar,
    },
    /// Add a key nobody defined next to it.
    Unknown {
        /// Which node (modulo their count).
        at: u16,
        /// A suffix for its name.
        name: u8,
    },
    /// Repeat an array's first element.
    Repeat {
        /// Which node (modulo their count).
        at: u16,
        /// How many more.
        times: u8,
    },
}

/// A TOML value chosen to break assumptions.
#[derive(Debug, Clone, Arbitrary)]
pub enum TomlScalar {
    /// An integer, often at an edge.
    Int(i64),
    /// A float, NaN and infinities included.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Text(String),
    /// An empty array.
    EmptyArray,
    /// An empty table.
    EmptyTable,
    /// A local date-time.
    Date,
}

/// One input: which corpus file, what to change, and whether it stands as the config
/// or as a profile next to it.
#[derive(Debug)]
pub struct ConfigInput {
    /// Corpus index.
    pub pick: usize,
    /// The mutated text.
    pub text: Vec<u8>,
}

/// The config and profile corpus, with its paths rewritten for a temporary directory.
pub struct ConfigTarget {
    corpus: Vec<(Kind, String)>,
    runtime: Runtime,
    startups: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Config,
    /// A profile, with the connection section a device on it needs.
    Profile(&'static str),
}

impl ConfigTarget {
    /// The target: the shipped reference and demo configs and every shipped profile.
    pub fn new() -> anyhow::Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut corpus = vec![
            (Kind::Config, confine(config::REFERENCE_TOML)),
            (Kind::Config, confine(config::DEMO_TOML)),
        ];
        for entry in std::fs::read_dir(root.join("config/profiles"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path)?;
                corpus.push((Kind::Profile(connection_for(&text)), text));
            }
        }
        Ok(Self {
            corpus,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            startups: 0,
        })
    }

    /// Inputs that passed `check` and were started and stopped.
    pub fn startups(&self) -> u64 {
        self.startups
    }
}

/// The reference config keeps state under /var/lib/s2gw; here it stays in the input's
/// temporary directory (relative paths resolve against the config file).
fn confine(text: &str) -> String {
    text.replace("/var/lib/s2gw/", "state/")
        .replace("/var/lib/s2gw", "state")
}

impl Target for ConfigTarget {
    type Input = ConfigInput;

    fn generate(&mut self, rng: &mut StdRng) -> ConfigInput {
        let pick = rng.random_range(0..self.corpus.len());
        let original = &self.corpus[pick].1;
        let bytes = unstructured_bytes(rng, 256);
        let mut u = Unstructured::new(&bytes);
        let mut doc: Option<toml::Table> = toml::from_str(original).ok();
        for _ in 0..u.int_in_range(0..=3u8).unwrap_or(1) {
            if let (Some(doc), Ok(m)) = (doc.as_mut(), TomlMutation::arbitrary(&mut u)) {
                apply(doc, &m);
            }
        }
        let mut text = doc
            .and_then(|d| toml::to_string(&d).ok())
            .unwrap_or_else(|| original.clone())
            .into_bytes();
        if u.ratio(1, 4).unwrap_or(false)
            && let Ok(m) = TextMutation::arbitrary(&mut u)
        {
            crate::mutate::apply_text(&mut text, &m);
        }
        ConfigInput { pick, text }
    }

    fn execute(&mut self, input: &ConfigInput) -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
        let path = self.write_files(dir.path(), input)?;
        match config::check(&path) {
            Ok(config) => {
                if startable(&config, dir.path()) {
                    self.startups += 1;
                    self.start_and_stop(&config)?;
                }
                Ok(())
            }
            Err(errors) => named_problems(&errors, dir.path()),
        }
    }
}

impl ConfigTarget {
    fn write_files(&self, dir: &Path, input: &ConfigInput) -> Result<PathBuf, String> {
        let config_path = dir.join("s2gw.toml");
        let write = |path: &Path, bytes: &[u8]| {
            std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
        };
        match self.corpus.get(input.pick).map(|c| c.0) {
            Some(Kind::Profile(connection)) => {
                std::fs::create_dir_all(dir.join("profiles")).map_err(|e| e.to_string())?;
                write(&dir.join("profiles/fuzzed.toml"), &input.text)?;
                write(
                    &config_path,
                    format!("{PROFILE_USER}{connection}").as_bytes(),
                )?;
            }
            _ => write(&config_path, &input.text)?,
        }
        Ok(config_path)
    }

    fn start_and_stop(&self, config: &Config) -> Result<(), String> {
        self.runtime.block_on(async {
            let shutdown = CancellationToken::new();
            let started = tokio::time::timeout(
                Duration::from_secs(5),
                s2gw::gateway::Gateway::start(config, shutdown.clone()),
            )
            .await
            .map_err(|_| "start-up did not finish within 5 s".to_string())?;
            // A start-up error is an answer (a port that cannot be bound); only a hang or
            // a panic is a finding.
            if let Ok(gateway) = started {
                gateway.stop(Duration::from_secs(2)).await;
            }
            Ok(())
        })
    }
}

/// The config a fuzzed profile is tried with: one device on the profile `fuzzed`, with
/// the connection section of the original profile's kind after it.
const PROFILE_USER: &str = "[gateway]\nstate_dir = \"state\"\n\
    [cem.home]\nurl = \"ws://127.0.0.1:9/s2\"\n\
    [mqtt]\nhost = \"127.0.0.1\"\nport = 9\n\
    [[device]]\nid = \"d\"\nprofile = \"fuzzed\"\ncem = \"home\"\n";

/// The device's connection section for a profile of this text's kind.
fn connection_for(profile: &str) -> &'static str {
    if profile.contains("[modbus") {
        "[device.modbus]\ntcp = \"127.0.0.1:9\"\n"
    } else if profile.contains("[ble") {
        "[device.ble]\naddress = \"54:48:E6:8F:80:A5\"\n"
    } else if profile.contains("[mqtt") {
        "[device.mqtt]\n"
    } else {
        "[device.sim]\n"
    }
}

/// Every problem names its file, and the file is one of this input's.
fn named_problems(errors: &config::ConfigErrors, dir: &Path) -> Result<(), String> {
    if errors.errors.is_empty() {
        return Err("check failed without naming a problem".into());
    }
    for error in &errors.errors {
        if !error.file.starts_with(dir) || error.reason.trim().is_empty() {
            return Err(format!("a problem without its file or reason: {error:?}"));
        }
    }
    Ok(())
}

/// Set (by the runner's re-execution under `unshare --net`) when this process has a
/// network namespace of its own; without it nothing is started.
pub const PRIVATE_NETWORK_ENV: &str = "S2GW_FUZZ_PRIVATE_NETWORK";

/// Whether starting this config keeps to the input's directory, touches no hardware and
/// cannot reach any network but this process's own.
fn startable(config: &Config, dir: &Path) -> bool {
    let inside = |p: &Path| p.starts_with(dir);
    std::env::var_os(PRIVATE_NETWORK_ENV).is_some()
        && inside(&config.gateway.state_dir)
        && config.gateway.traffic_log.as_deref().is_none_or(inside)
        && config.devices.iter().all(|d| match &d.connection {
            Connection::Modbus(m) => m.connection.serial.is_none(),
            _ => true,
        })
}

fn apply(doc: &mut toml::Table, mutation: &TomlMutation) {
    match mutation {
        TomlMutation::Remove { at } => {
            if let Some((table, key)) = pick_key(doc, *at) {
                table.remove(&key);
            }
        }
        TomlMutation::Replace { at, with } => {
            if let Some((table, key)) = pick_key(doc, *at) {
                table.insert(key, scalar(with));
            }
        }
        TomlMutation::Unknown { at, name } => {
            if let Some((table, _)) = pick_key(doc, *at) {
                table.insert(format!("unknown_{name}"), toml::Value::Integer(1));
            }
        }
        TomlMutation::Repeat { at, times } => {
            if let Some((table, key)) = pick_key(doc, *at)
                && let Some(toml::Value::Array(items)) = table.get_mut(&key)
                && let Some(first) = items.first().cloned()
            {
                items.extend(std::iter::repeat_n(first, usize::from(*times % 16)));
            }
        }
    }
}

/// The table holding the `at`-th key, depth first, and that key.
fn pick_key(doc: &mut toml::Table, at: u16) -> Option<(&mut toml::Table, String)> {
    let count = count_keys(doc);
    if count == 0 {
        return None;
    }
    let mut index = usize::from(at) % count;
    find_key(doc, &mut index)
}

fn count_keys(table: &toml::Table) -> usize {
    table.values().map(|v| 1 + count_in(v)).sum()
}

fn count_in(value: &toml::Value) -> usize {
    match value {
        toml::Value::Table(t) => count_keys(t),
        toml::Value::Array(items) => items.iter().map(count_in).sum(),
        _ => 0,
    }
}

fn find_key<'a>(
    table: &'a mut toml::Table,
    index: &mut usize,
) -> Option<(&'a mut toml::Table, String)> {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        if *index == 0 {
            return Some((table, key));
        }
        *index -= 1;
        let inner = count_in(table.get(&key)?);
        if *index < inner {
            return match table.get_mut(&key)? {
                toml::Value::Table(t) => find_key(t, index),
                toml::Value::Array(items) => find_in_array(items, index),
                _ => None,
            };
        }
        *index -= inner;
    }
    None
}

fn find_in_array<'a>(
    items: &'a mut [toml::Value],
    index: &mut usize,
) -> Option<(&'a mut toml::Table, String)> {
    for item in items {
        let inner = count_in(item);
        if *index < inner {
            return match item {
                toml::Value::Table(t) => find_key(t, index),
                toml::Value::Array(more) => find_in_array(more, index),
                _ => None,
            };
        }
        *index -= inner;
    }
    None
}

fn scalar(scalar: &TomlScalar) -> toml::Value {
    match scalar {
        TomlScalar::Int(i) => toml::Value::Integer(*i),
        TomlScalar::Float(f) => toml::Value::Float(*f),
        TomlScalar::Bool(b) => toml::Value::Boolean(*b),
        TomlScalar::Text(s) => toml::Value::String(s.clone()),
        TomlScalar::EmptyArray => toml::Value::Array(Vec::new()),
        TomlScalar::EmptyTable => toml::Value::Table(toml::Table::new()),
        TomlScalar::Date => "1979-05-27T07:32:00"
            .parse()
            .map_or(toml::Value::Integer(0), toml::Value::Datetime),
    }
}
