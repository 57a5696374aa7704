//! Reading TOML tables key by key, collecting every problem instead of stopping at the
//! first.
//!
//! A `#[serde(deny_unknown_fields)]` derive reports only the first unknown key, wrong type
//! or missing key of a whole file; `s2gw check` promises all of them, each with its dotted
//! key. So every section is read through a [`Section`], which records which keys were asked
//! for; whatever is left over when the section is [`finish`](Section::finish)ed is an
//! unknown key. The effect is the same strictness as `deny_unknown_fields`, reported
//! completely.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// One TOML table being read, with its dotted path for messages.
pub(crate) struct Section<'a> {
    file: PathBuf,
    path: String,
    table: &'a toml::Table,
    asked: Vec<&'static str>,
}

impl<'a> Section<'a> {
    /// Read `table`, which sits at `path` (`""` for the file's top level) in `file`.
    pub(crate) fn new(file: &Path, path: impl Into<String>, table: &'a toml::Table) -> Self {
        Self {
            file: file.to_path_buf(),
            path: path.into(),
            table,
            asked: Vec::new(),
        }
    }

    /// The file this table came from.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The dotted key of `name` within this table.
    pub(crate) fn key(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The raw value of `name`, marking the key as known.
    pub(crate) fn raw(&mut self, name: &'static str) -> Option<&'a Value> {
        self.asked.push(name);
        self.table.get(name)
    }

    /// Whether `name` is present (marks it as known).
    pub(crate) fn has(&mut self, name: &'static str) -> bool {
        self.raw(name).is_some()
    }

    fn wrong_type(&self, errors: &mut Errors, name: &str, expected: &str, found: &Value) {
        errors.push(
            &self.file,
            &self.key(name),
            format!("expected {expected}, found {}", type_name(found)),
        );
    }

    fn missing(&self, errors: &mut Errors, name: &str) {
        errors.push(&self.file, &self.key(name), "missing required key");
    }

    /// An optional string.
    pub(crate) fn opt_str(&mut self, errors: &mut Errors, name: &'static str) -> Option<String> {
        match self.raw(name)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.wrong_type(errors, name, "a string", other);
                None
            }
        }
    }

    /// A required string; a missing one is reported.
    pub(crate) fn req_str(&mut self, errors: &mut Errors, name: &'static str) -> Option<String> {
        if !self.table.contains_key(name) {
            self.asked.push(name);
            self.missing(errors, name);
            return None;
        }
        self.opt_str(errors, name)
    }

    /// A secret given through the environment: any scalar is taken as its text, because
    /// the environment layer types `123456` as a number and a token is text whatever it
    /// looks like.
    pub(crate) fn opt_secret_text(
        &mut self,
        errors: &mut Errors,
        name: &'static str,
    ) -> Option<String> {
        match self.raw(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Integer(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Boolean(b) => Some(b.to_string()),
            other => {
                self.wrong_type(errors, name, "a string", other);
                None
            }
        }
    }

    /// An optional non-negative integer no larger than `max`.
    pub(crate) fn opt_uint(
        &mut self,
        errors: &mut Errors,
        name: &'static str,
        max: u64,
    ) -> Option<u64> {
        match self.raw(name)? {
            Value::Integer(i) => match u64::try_from(*i) {
                Ok(v) if v <= max => Some(v),
                _ => {
                    errors.push(
                        &self.file,
                        &self.key(name),
                        format!("must be an integer between 0 and {max}, got {i}"),
                    );
                    None
                }
            },
            other => {
                self.wrong_type(errors, name, "an integer", other);
                None
            }
        }
    }

    /// An optional array of strings.
    pub(crate) fn opt_str_list(
        &mut self,
        errors: &mut Errors,
        name: &'static str,
    ) -> Option<Vec<String>> {
        match self.raw(name)? {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            ok = false;
                            errors.push(
                                &self.file,
                                &format!("{}[{i}]", self.key(name)),
                                format!("expected a string, found {}", type_name(other)),
                            );
                        }
                    }
                }
                ok.then_some(out)
            }
            other => {
                self.wrong_type(errors, name, "an array of strings", other);
                None
            }
        }
    }

    /// An optional sub-table.
    pub(crate) fn opt_table(
        &mut self,
        errors: &mut Errors,
        name: &'static str,
    ) -> Option<&'a toml::Table> {
        match self.raw(name)? {
            Value::Table(t) => Some(t),
            other => {
                self.wrong_type(errors, name, "a table", other);
                None
            }
        }
    }

    /// An optional array of tables (`[[name]]`).
    pub(crate) fn opt_table_array(
        &mut self,
        errors: &mut Errors,
        name: &'static str,
    ) -> Vec<&'a toml::Table> {
        match self.raw(name) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Table(t) => out.push(t),
                        other => errors.push(
                            &self.file,
                            &format!("{}[{i}]", self.key(name)),
                            format!("expected a table, found {}", type_name(other)),
                        ),
                    }
                }
                out
            }
            Some(other) => {
                errors.push(
                    &self.file,
                    &self.key(name),
                    format!(
                        "expected an array of tables (write [[{name}]]), found {}",
                        type_name(other)
                    ),
                );
                Vec::new()
            }
        }
    }

    /// Report every key nobody asked for. `hint` may explain a particular key better than
    /// "unknown key" (a reserved adapter name, a plaintext secret).
    pub(crate) fn finish(self, errors: &mut Errors, hint: impl Fn(&str) -> Option<String>) {
        for name in self.table.keys() {
            if self.asked.iter().any(|a| a == name) {
                continue;
            }
            let reason = match hint(name) {
                Some(h) => h,
                None => match closest(name, &self.asked) {
                    Some(near) => format!("unknown key (did you mean `{near}`?)"),
                    None => {
                        let mut known: Vec<&str> = self.asked.clone();
                        known.sort_unstable();
                        known.dedup();
                        format!("unknown key (known keys: {})", known.join(", "))
                    }
                },
            };
            errors.push(&self.file, &self.key(name), reason);
        }
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
}
