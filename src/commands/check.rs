//! `s2gw check`: validate a config and list every problem.

use std::path::Path;
use std::process::ExitCode;

use crate::config;

/// `s2gw check -c FILE`: validate, list every error, exit 1 on any.
pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
    // `check`, not `load`: it also validates profile files no device uses yet.
    match config::check(path) {
        Ok(config) => {
            println!(
                "{}: OK ({} devices, {} native RMs, {} CEM links)",
                path.display(),
                config.devices.len(),
                config.natives.len(),
                config.cem.len()
            );
            // The config is valid for a full build; this binary cannot run all of it.
            for warning in warnings(&config) {
                eprintln!("warning: {warning}");
            }
            for warning in super::pairing::unpaired_warnings(&config) {
                eprintln!("warning: {warning}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// What `s2gw check` says of the config file at `path`: its problems (none when it
/// loads) and its warnings, one line each.
pub fn check_report(path: &Path) -> (Vec<String>, Vec<String>) {
    match config::check(path) {
        Ok(config) => (Vec::new(), warnings(&config)),
        Err(errors) => (
            errors.errors.iter().map(ToString::to_string).collect(),
            Vec::new(),
        ),
    }
}

/// What is valid but will not work as written with this build.
pub fn warnings(config: &config::Config) -> Vec<String> {
    let unsupported = crate::gateway::devices::unsupported(config);
    if unsupported.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "BLE device(s) {} are valid, but this s2gw was built without BLE support (cargo \
         feature `ble`): `s2gw run` refuses to start them",
        unsupported.join(", ")
    )]
}
