//! s2gw's fuzz campaign on stable Rust: no libFuzzer, no nightly. Inputs come from a seed
//! through structure-aware generators (`arbitrary` over seeded bytes) and mutation of
//! valid corpora (s2-kit's every-message corpus, the shipped configs and profiles, the
//! BTHome corpus), and each goes through the same code the daemon runs.
//!
//! ```text
//! cargo run --release -p s2gw-fuzz -- <target> --count N --seed S
//! ```
//!
//! # Layout
//!
//! - `runner.rs`: the loop: inputs by index from a seed, panics caught and counted, a
//!   time bound per input (a watchdog ends the process on one that never returns), the
//!   process's memory sampled, failures written as reproducers.
//! - `mutate.rs`: typed mutations of JSON texts (structural and textual).
//! - `targets/`: one module per input surface:
//!   - `s2.rs`: `s2-edge` (frame sequences into the link session from a CEM or a native
//!     RM) and `s2-rm` (sequences through the session into a live virtual RM on a sim
//!     device of each control type, after a valid opening and selection);
//!   - `modbus.rs`: `modbus` (a hostile Modbus TCP server under every Modbus profile);
//!   - `mqtt.rs`: `mqtt` (payloads on every topic the daemon subscribes to, through a
//!     real mosquitto);
//!   - `ble.rs`: `ble` (BTHome advertisements and GATT values);
//!   - `config.rs`: `config` (configs and profiles into `check` and start-up).

pub mod mutate;
pub mod runner;
pub mod targets;

pub use runner::{Limits, Report, Target, run};

/// The targets by name, in the order the campaign runs them.
pub const TARGETS: [&str; 6] = ["s2-edge", "s2-rm", "modbus", "mqtt", "ble", "config"];

/// Runs `count` inputs of the named target from input `first` of `seed`.
pub fn run_named(
    name: &str,
    seed: u64,
    first: u64,
    count: u64,
    limits: Limits,
    crash_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<Report> {
    let report = match name {
        "s2-edge" => run(
            name,
            &mut targets::s2::S2Edge::new(),
            seed,
            first,
            count,
            limits,
            crash_dir,
        ),
        "s2-rm" => run(
            name,
            &mut targets::s2::S2Rm::new()?,
            seed,
            first,
            count,
            limits,
            crash_dir,
        ),
        "modbus" => run(
            name,
            &mut targets::modbus::Modbus::new()?,
            seed,
            first,
            count,
            limits,
            crash_dir,
        ),
        "mqtt" => run(
            name,
            &mut targets::mqtt::Mqtt::new()?,
            seed,
            first,
            count,
            limits,
            crash_dir,
        ),
        "ble" => run(
            name,
            &mut targets::ble::Ble::new()?,
            seed,
            first,
            count,
            limits,
            crash_dir,
        ),
        "config" => {
            let mut target = targets::config::ConfigTarget::new()?;
            let mut report = run(name, &mut target, seed, first, count, limits, crash_dir);
            report.target = format!("config ({} started)", target.startups());
            report
        }
        other => anyhow::bail!(
            "no target {other:?}; the targets are {}",
            TARGETS.join(", ")
        ),
    };
    Ok(report)
}
