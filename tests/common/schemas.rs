//! The official S2 JSON schemas, offline: validators for every message type of both
//! protocol versions.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::shared_dir;

/// Validators for every message type of both protocol versions.
pub struct Schemas {
    by_version: BTreeMap<String, BTreeMap<String, jsonschema::Validator>>,
}

impl Schemas {
    /// Load `0.0.2-beta` from `s2-json-schema/s2-json-schema` and `1.0.0` from
    /// `s2-json-schema/branch-v1.0.0-beta`, every file registered under its `$id` so
    /// `$ref`s resolve offline.
    pub fn load() -> Schemas {
        let root = shared_dir().join("s2-json-schema");
        let mut by_version = BTreeMap::new();
        for (version, dir) in [
            ("0.0.2-beta", root.join("s2-json-schema")),
            ("1.0.0", root.join("branch-v1.0.0-beta")),
        ] {
            by_version.insert(version.to_string(), load_dir(&dir));
        }
        Schemas { by_version }
    }

    /// Check one message against `messages/<message_type>.schema.json` of `version`.
    pub fn check(&self, version: &str, text: &str) -> Result<(), String> {
        let validators = self
            .by_version
            .get(version)
            .ok_or_else(|| format!("no schemas for version {version}"))?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))?;
        let kind = value["message_type"]
            .as_str()
            .ok_or_else(|| format!("no message_type: {text}"))?;
        let validator = validators
            .get(kind)
            .ok_or_else(|| format!("{kind} has no schema in version {version}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{kind} ({version}): {}\n  in {text}",
                errors.join("; ")
            ))
        }
    }

    /// Assert that every one of `frames` validates against `version`; returns how many
    /// messages of each type were checked.
    pub fn assert_all(&self, version: &str, frames: &[String]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        let mut failures = Vec::new();
        for text in frames {
            if let Err(e) = self.check(version, text) {
                failures.push(e);
            }
            if let Ok(value) = serde_json::from_str::<Value>(text) {
                let kind = value["message_type"].as_str().unwrap_or("?").to_string();
                *counts.entry(kind).or_insert(0) += 1;
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} messages fail the {version} schema:\n{}",
            failures.len(),
            frames.len(),
            failures.join("\n")
        );
        counts
    }
}

fn load_dir(dir: &Path) -> BTreeMap<String, jsonschema::Validator> {
    let mut resources = Vec::new();
    let mut messages = Vec::new();
    for sub in ["messages", "schemas"] {
        let folder = dir.join(sub);
        let entries = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", folder.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".schema.json") else {
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap();
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            let id = value["$id"]
                .as_str()
                .unwrap_or_else(|| panic!("{} has no $id", path.display()))
                .to_string();
            resources.push((id, value.clone()));
            if sub == "messages" {
                messages.push((stem.to_string(), value));
            }
        }
    }
    assert!(
        messages.len() >= 30,
        "only {} message schemas in {}",
        messages.len(),
        dir.display()
    );
    let mut validators = BTreeMap::new();
    for (kind, schema) in messages {
        let own_id = schema["$id"].as_str().unwrap().to_string();
        let others = resources
            .iter()
            .filter(|(id, _)| *id != own_id)
            .map(|(id, v)| {
                (
                    id.clone(),
                    jsonschema::Resource::from_contents(v.clone()).unwrap(),
                )
            });
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .with_resources(others)
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema {kind} in {} does not build: {e}", dir.display()));
        validators.insert(kind, validator);
    }
    validators
}
