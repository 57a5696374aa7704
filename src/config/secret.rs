//! Secrets: `token_file` / `password_file` keys read during loading, the same secret from
//! the environment instead, and never in the config file itself.

use s2gw_core::Secret;

use super::load::Cx;
use super::located::{At, Errors};
use std::path::Path;

impl Cx<'_> {
    /// The secret `text` (from the environment, key `text_key`) if given, else the content
    /// of the file at `file` (key `file_key`), read now. `None` when reported.
    pub(crate) fn secret(
        &mut self,
        at: &At,
        (text_key, text): (&str, Option<String>),
        (file_key, file): (&str, Option<String>),
    ) -> Option<Option<Secret>> {
        let mark = self.mark();
        let secret = match (text, file) {
            (Some(t), _) => {
                if t.trim().is_empty() {
                    at.err(self.errors, text_key, "must not be empty");
                }
                Some(Secret::new(t))
            }
            (None, Some(f)) => {
                let path = self.resolve(&f);
                match std::fs::read_to_string(&path) {
                    Ok(text) if text.trim().is_empty() => {
                        at.err(
                            self.errors,
                            file_key,
                            format!("{text_key} file {} is empty", path.display()),
                        );
                        None
                    }
                    Ok(text) => Some(Secret::new(text)),
                    Err(e) => {
                        at.err(
                            self.errors,
                            file_key,
                            format!("cannot read {text_key} file {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        };
        self.clean_since(mark).then_some(secret)
    }
}

/// Refuse `token` (and `[mqtt] password`) keys written in the file; only the environment
/// may set them.
pub(crate) fn reject_plaintext(file: &toml::Table, origin: &Path, errors: &mut Errors) {
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
    if let Some(toml::Value::Table(web)) = file.get("web")
        && web.contains_key("password")
    {
        errors.push(
            origin,
            "web.password",
            "plaintext secrets are not accepted in the config file: put the password in a \
             file and set password_file, or set the environment variable S2GW_WEB__PASSWORD",
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
