//! What a config check found wrong, before it becomes an error with a file and a key.
//!
//! Every adapter validates its own table and reports `(key, reason)` pairs, keys relative
//! to that table; the daemon's config loader puts the file and the table's path in front.

/// Problems found in a config: `(key, reason)`.
pub type Problems = Vec<(String, String)>;

/// Record that `key` is wrong because of `reason`.
pub fn push(problems: &mut Problems, key: &str, reason: impl Into<String>) {
    problems.push((key.to_string(), reason.into()));
}
