//! What each `s2gw` subcommand does, one file per subcommand. `main.rs` only parses
//! arguments.

mod cem;
mod check;
mod demo;
mod discover;
mod modbus;
mod modbus_detect;
mod pairing;
mod run;

pub use cem::{CemWorker, cem, cem_worker};
pub use check::{check, check_report, warnings};
pub use demo::{demo, demo_config};
pub use discover::{DiscoverRequest, discover};
pub use modbus::{RawReadRequest, SerialArgs, modbus_read, modbus_scan, modbus_target};
pub use modbus_detect::{DetectRequest, modbus_detect};
pub use pairing::{PairRequest, pair, pairing_code, pairings, unpair};
pub use run::run;

use std::time::Duration;

/// How long shutdown waits for the fail-safe releases before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Logs through `tracing` to stderr: plain lines journald reads well. `RUST_LOG` wins
/// over the configured level.
fn init_tracing(level: &str, quiet_demo: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are noise in journald and in files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(!quiet_demo);
    // Under journald the timestamp is the journal's own.
    let result = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    let _ = result;
}
