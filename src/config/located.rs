//! The one way a configuration table is read: serde, with every problem located.
//!
//! Every table (the daemon's sections, profiles, the adapter crates' tables) is a serde
//! type with `deny_unknown_fields`. A whole-table deserialize stops at the first problem
//! and does not say where it is, so [`every_problem`] deserializes each top-level key on
//! its own (each entry of the map-valued keys in `per_entry`) through
//! `serde_path_to_error`: every bad key is reported, with its dotted path. Then the typed
//! value's own checks run (the adapter crates' `validate()`, the daemon sections' `build`)
//! and report against the same paths.
//!
//! The daemon's section types are made so that a wrong key never hides a right one:
//! their fields are optional (a required key is checked by the section, so that its
//! absence is reported beside everything else), and [`read`] returns the value of the keys
//! that had no problem. The scalar types here ([`Text`], [`Uint`], …) give the messages
//! people see (`expected a string, found an integer`), not serde's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use toml::Value;

use super::ConfigError;

/// Where errors go while one configuration is read.
pub(crate) struct Errors {
    /// Everything found so far, in the order found.
    pub(crate) list: Vec<ConfigError>,
    /// Dotted keys set from the environment, with the variable that set them, so an error
    /// about such a key says where the value came from.
    pub(crate) env_keys: BTreeMap<String, String>,
}

impl Errors {
    pub(crate) fn new() -> Self {
        Self {
            list: Vec::new(),
            env_keys: BTreeMap::new(),
        }
    }

    /// Record a problem with `key` in `file`.
    pub(crate) fn push(&mut self, file: &Path, key: &str, reason: impl Into<String>) {
        let mut reason = reason.into();
        if let Some(var) = self.env_keys.get(key) {
            reason.push_str(&format!(" (set by environment variable {var})"));
        } else if !key.is_empty() {
            // A section that only the environment created (S2GW_BOGUS__KEY makes `bogus`).
            let prefix = format!("{key}.");
            let vars: Vec<&str> = self
                .env_keys
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| v.as_str())
                .collect();
            if !vars.is_empty() {
                reason.push_str(&format!(" (set by environment: {})", vars.join(", ")));
            }
        }
        self.list.push(ConfigError {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason,
        });
    }
}

/// `(key, reason)`, keys relative to the table read.
pub(crate) use s2gw_core::problems::Problems;

/// Deserialize `table` as `T`; the error is `(dotted key, reason)`.
fn typed<T: DeserializeOwned>(table: &toml::Table) -> Result<T, (String, String)> {
    let value = Value::Table(table.clone());
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        located_reason(&path, e.inner())
    })
}

/// Turn a serde message into `(key, reason)`: unknown and missing fields name the key
/// itself, everything else the key the path points at.
fn located_reason(path: &str, error: &toml::de::Error) -> (String, String) {
    let message = error.message().trim();
    let join = |field: &str| {
        if path.is_empty() || path.ends_with(field) {
            // The path may already end at the unknown key; don't repeat it.
            if path.is_empty() {
                field.to_string()
            } else {
                path.to_string()
            }
        } else {
            format!("{path}.{field}")
        }
    };
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next().unwrap_or_default();
        // "expected one of `a`, `b`": the known names are every other backtick span, in
        // the order the type declares its fields.
        let known: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
        let reason = match closest(field, &known) {
            Some(k) => format!("unknown key (did you mean `{k}`?)"),
            None if known.is_empty() => "unknown key".to_string(),
            None => format!("unknown key (known keys: {})", known.join(", ")),
        };
        return (join(field), reason);
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or_default();
        return (join(field), "missing required key".to_string());
    }
    (path.to_string(), message.to_string())
}

/// Every problem deserializing `table` as `T` would hit, one per top-level key (one per
/// entry of the map-valued keys in `per_entry`), with `anchor` keys (required ones) kept
/// in every trial.
fn every_problem<T: DeserializeOwned>(
    table: &toml::Table,
    anchor: &[&str],
    per_entry: &[&str],
) -> Problems {
    let base: toml::Table = table
        .iter()
        .filter(|(k, _)| anchor.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut problems = Problems::new();
    let mut trial = |key: &str, value: &Value| {
        let mut t = base.clone();
        t.insert(key.to_string(), value.clone());
        if let Err(p) = typed::<T>(&t)
            && !problems.contains(&p)
        {
            problems.push(p);
        }
    };
    for (key, value) in table {
        match value {
            Value::Table(entries) if per_entry.contains(&key.as_str()) => {
                for (name, entry) in entries {
                    let mut one = toml::Table::new();
                    one.insert(name.clone(), entry.clone());
                    trial(key, &Value::Table(one));
                }
            }
            _ => trial(key, value),
        }
    }
    if problems.is_empty()
        && let Err(p) = typed::<T>(table)
    {
        // A problem only the whole table shows (a required key nobody wrote).
        problems.push(p);
    }
    problems
}

/// Deserialize with every problem reported, or the value.
pub(crate) fn read_all<T: DeserializeOwned>(
    table: &toml::Table,
    anchor: &[&str],
    per_entry: &[&str],
) -> Result<T, Problems> {
    match typed::<T>(table) {
        Ok(value) => Ok(value),
        Err(_) => Err(every_problem::<T>(table, anchor, per_entry)),
    }
}

/// The top-level key a dotted key is under (`registers` for `registers.a.scale`).
pub(crate) fn top_key(key: &str) -> &str {
    key.split(['.', '[']).next().unwrap_or(key)
}

/// Prefix table-relative keys with `prefix` (`modbus`, `device[0].ble`); `prefix` may be
/// empty (a file's top level).
pub(crate) fn under(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (_, true) => prefix.to_string(),
        (true, false) => key.to_string(),
        (false, false) => format!("{prefix}.{key}"),
    }
}

/// One table read by [`read`]: where it is, and which keys it was written with.
pub(crate) struct At {
    file: PathBuf,
    path: String,
    given: Vec<String>,
}

impl At {
    /// The file the table is in.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The table's own dotted path (`cem.home`; empty for a file's top level).
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// The dotted key of `name` in this table.
    pub(crate) fn key(&self, name: &str) -> String {
        under(&self.path, name)
    }

    /// Whether the table was written with `name`, usable or not.
    pub(crate) fn given(&self, name: &str) -> bool {
        self.given.iter().any(|g| g == name)
    }

    /// Report a problem with `name` in this table.
    pub(crate) fn err(&self, errors: &mut Errors, name: &str, reason: impl Into<String>) {
        errors.push(&self.file, &self.key(name), reason);
    }

    /// A required key: `value`, or `missing required key` reported when the table does
    /// not have it at all (one it has with a bad value was reported as that already).
    pub(crate) fn required<T>(
        &self,
        errors: &mut Errors,
        name: &str,
        value: Option<T>,
    ) -> Option<T> {
        if value.is_none() && !self.given(name) {
            self.err(errors, name, "missing required key");
        }
        value
    }
}

/// Read `table`, which sits at `path` in `file`, as `T`: every problem is reported, and
/// the result is the value of the keys that had none (`None` only if even that fails,
/// which an all-optional `T` never does). The caller tells from the error count whether
/// the table was clean.
pub(crate) fn read<T: DeserializeOwned>(
    table: &toml::Table,
    file: &Path,
    path: &str,
    errors: &mut Errors,
) -> Option<(T, At)> {
    let at = At {
        file: file.to_path_buf(),
        path: path.to_string(),
        given: table.keys().cloned().collect(),
    };
    let table: toml::Table = table
        .iter()
        .map(|(k, v)| (k.clone(), mark_datetimes(v.clone())))
        .collect();
    let table = &table;
    match read_all::<T>(table, &[], &[]) {
        Ok(value) => Some((value, at)),
        Err(problems) => {
            let mut good = table.clone();
            for (key, reason) in problems {
                good.remove(top_key(&key));
                at.err(errors, &key, reason);
            }
            typed::<T>(&good).ok().map(|value| (value, at))
        }
    }
}

/// The name of a TOML value's type, for "expected X, found Y" messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// toml's deserializer hands a datetime over as its text, so [`read`] wraps each one in a
/// table under this key, and [`value`] unwraps them: a datetime given for a string is
/// then refused as a datetime, and a table kept as TOML keeps its datetimes.
const DATETIME_KEY: &str = "$__s2gw_datetime";

fn mark_datetimes(value: Value) -> Value {
    match value {
        Value::Datetime(d) => Value::Table(
            [(DATETIME_KEY.to_string(), Value::String(d.to_string()))]
                .into_iter()
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(mark_datetimes).collect()),
        Value::Table(t) => {
            Value::Table(t.into_iter().map(|(k, v)| (k, mark_datetimes(v))).collect())
        }
        other => other,
    }
}

fn unmark_datetimes(value: Value) -> Value {
    match value {
        Value::Table(t) => {
            if t.len() == 1
                && let Some(Value::String(text)) = t.get(DATETIME_KEY)
                && let Ok(datetime) = text.parse::<toml::value::Datetime>()
            {
                return Value::Datetime(datetime);
            }
            Value::Table(
                t.into_iter()
                    .map(|(k, v)| (k, unmark_datetimes(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(unmark_datetimes).collect()),
        other => other,
    }
}

/// The TOML value a scalar type is given, datetimes restored (see [`DATETIME_KEY`]).
fn value<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    Value::deserialize(d).map(unmark_datetimes)
}

/// Any TOML value, checked by the section that reads it.
#[derive(Debug, Clone)]
pub(crate) struct Any(pub(crate) Value);

impl<'de> Deserialize<'de> for Any {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        value(d).map(Any)
    }
}

/// `expected {expected}, found {what value is}`, as a deserialization error.
fn wrong_type<E: serde::de::Error>(expected: &str, found: &Value) -> E {
    E::custom(format!("expected {expected}, found {}", type_name(found)))
}

/// A string.
#[derive(Debug, Clone)]
pub(crate) struct Text(pub(crate) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match value(d)? {
            Value::String(s) => Ok(Text(s)),
            other => Err(wrong_type("a string", &other)),
        }
    }
}

/// A secret's text, as the environment gives it: any scalar is taken as its text, because
/// the environment layer types `123456` as a number and a token is text whatever it looks
/// like.
#[derive(Debug, Clone)]
pub(crate) struct SecretText(pub(crate) String);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match value(d)? {
            Value::String(s) => Ok(SecretText(s)),
            Value::Integer(i) => Ok(SecretText(i.to_string())),
            Value::Float(f) => Ok(SecretText(f.to_string())),
            Value::Boolean(b) => Ok(SecretText(b.to_string())),
            other => Err(wrong_type("a string", &other)),
        }
    }
}

/// A non-negative integer no larger than `MAX`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Uint<const MAX: u64>(pub(crate) u64);

impl<'de, const MAX: u64> Deserialize<'de> for Uint<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match value(d)? {
            Value::Integer(i) => match u64::try_from(i) {
                Ok(v) if v <= MAX => Ok(Uint(v)),
                _ => Err(D::Error::custom(format!(
                    "must be an integer between 0 and {MAX}, got {i}"
                ))),
            },
            other => Err(wrong_type("an integer", &other)),
        }
    }
}

/// A positive integer no larger than `MAX`: a count or a limit, where 0 would mean
/// nothing works.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Count<const MAX: u64>(pub(crate) u64);

impl<'de, const MAX: u64> Deserialize<'de> for Count<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match value(d)? {
            Value::Integer(i) => match u64::try_from(i) {
                Ok(v) if (1..=MAX).contains(&v) => Ok(Count(v)),
                _ => Err(D::Error::custom(format!(
                    "must be an integer between 1 and {MAX}, got {i}"
                ))),
            },
            other => Err(wrong_type("an integer", &other)),
        }
    }
}

/// A table, kept as TOML (read later, by its own type).
#[derive(Debug, Clone)]
pub(crate) struct Table(pub(crate) toml::Table);

impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match value(d)? {
            Value::Table(t) => Ok(Table(t)),
            other => Err(wrong_type("a table", &other)),
        }
    }
}

/// An array of strings. Its items are checked by [`Strings::items`], not here, so that
/// every bad item is reported (a deserializer stops at the first).
#[derive(Debug, Clone)]
pub(crate) struct Strings(Vec<Value>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match value(d)? {
            Value::Array(items) => Ok(Strings(items)),
            other => Err(wrong_type("an array of strings", &other)),
        }
    }
}

impl Strings {
    /// The strings, or every item that is not one reported at `key[i]`.
    pub(crate) fn items(self, file: &Path, key: &str, errors: &mut Errors) -> Option<Vec<String>> {
        let mut out = Vec::with_capacity(self.0.len());
        let mut ok = true;
        for (i, item) in self.0.into_iter().enumerate() {
            match item {
                Value::String(s) => out.push(s),
                other => {
                    ok = false;
                    errors.push(
                        file,
                        &format!("{key}[{i}]"),
                        format!("expected a string, found {}", type_name(&other)),
                    );
                }
            }
        }
        ok.then_some(out)
    }
}

/// The known key `name` was most likely meant to be, for "did you mean" hints: one within
/// edit distance 2, or one that `name` starts with or that starts with `name`
/// (`rated_watts` for `rated_w`).
pub(crate) fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .filter(|k| !k.is_empty())
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| {
            *d <= 2
                || (k.len() >= 3 && name.len() >= 3 && (name.starts_with(k) || k.starts_with(name)))
        })
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance, small inputs only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_the_nearest_key() {
        assert_eq!(closest("urll", &["url", "token_file"]), Some("url"));
        assert_eq!(closest("zzzzzz", &["url"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Two {
        a: Option<Uint<10>>,
        b: Option<Text>,
    }

    #[test]
    fn a_bad_key_does_not_hide_the_good_ones() {
        let table: toml::Table = toml::from_str("a = 11\nb = \"x\"\nzzzz = 1\n").unwrap();
        let mut errors = Errors::new();
        let (two, at) = read::<Two>(&table, Path::new("f.toml"), "s", &mut errors).unwrap();
        let got: Vec<(&str, &str)> = errors
            .list
            .iter()
            .map(|e| (e.key.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("s.a", "must be an integer between 0 and 10, got 11"),
                ("s.zzzz", "unknown key (known keys: a, b)"),
            ]
        );
        assert!(two.a.is_none() && at.given("a"));
        let table: toml::Table = toml::from_str("b = 1979-05-27\n").unwrap();
        let mut errors = Errors::new();
        read::<Two>(&table, Path::new("f.toml"), "", &mut errors);
        assert_eq!(errors.list[0].reason, "expected a string, found a datetime");
        assert_eq!(two.b.map(|b| b.0).as_deref(), Some("x"));
    }
}
