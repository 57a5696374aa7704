//! The environment layer: `S2GW_<SECTION>__<KEY>` variables merged over the file through
//! figment (see the module docs of [`super`]).

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Serialized};

use super::located::Errors;

/// The prefix of environment variables that override the config file.
pub const ENV_PREFIX: &str = "S2GW_";

/// One environment override.
pub(crate) struct EnvOverride {
    /// The variable, for messages.
    var: String,
    /// The dotted key it sets.
    key: String,
    /// Its raw value.
    value: String,
}

/// The process environment's overrides, found by figment's `Env` provider.
pub(crate) fn process_env() -> Vec<EnvOverride> {
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
pub(crate) fn map_env(env: &[(&str, &str)]) -> Vec<EnvOverride> {
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

/// The file's table with the overrides merged over it; each key set is remembered in
/// `errors`, so that a problem with it names the variable. `None` (reported) when figment
/// cannot merge them.
pub(crate) fn merge(
    file: &toml::Table,
    env: Vec<EnvOverride>,
    origin: &Path,
    errors: &mut Errors,
) -> Option<toml::Table> {
    // Array sections cannot be addressed by key, so such variables are refused rather
    // than silently replacing the array.
    let mut figment = Figment::from(Serialized::defaults(file));
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
        // Tokens and passwords stay text whatever they look like; everything else is
        // typed by figment (numbers, booleans) like its Env provider does.
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
    match figment.extract() {
        Ok(table) => Some(table),
        Err(e) => {
            errors.push(
                origin,
                "",
                format!("cannot merge environment overrides: {e}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
