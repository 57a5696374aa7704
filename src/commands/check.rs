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
            let unsupported = crate::gateway::devices::unsupported(&config);
            if !unsupported.is_empty() {
                eprintln!(
                    "warning: BLE device(s) {} are valid, but this s2gw was built without BLE \
                     support (cargo feature `ble`): `s2gw run` refuses to start them",
                    unsupported.join(", ")
                );
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
