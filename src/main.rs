//! `s2gw`: the command line of the S2 gateway daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Makes Modbus, MQTT, BLE and simulated devices appear to a Customer Energy Manager as
/// native S2 Resource Managers (S2-ws-json).
#[derive(Debug, Parser)]
#[command(name = "s2gw", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway daemon (under systemd: Type=notify, with watchdog).
    Run {
        /// The configuration file.
        #[arg(
            short,
            long,
            value_name = "FILE",
            default_value = "/etc/s2gw/s2gw.toml"
        )]
        config: PathBuf,
    },
    /// Validate a configuration and its profiles without touching any device; lists
    /// every error with file, key and reason, and exits 1 if there is one.
    Check {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run one of each simulated device against a built-in demo CEM, with a live view.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<u64>,
        /// Print plain log-style lines instead of redrawing the screen.
        #[arg(long)]
        plain: bool,
    },
    /// Run the demo CEM on its own, for trying a real gateway config against it.
    Cem {
        /// Where to listen for resource managers (any path is accepted).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8765")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("s2gw: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => s2gw::cli::run(&config).await,
            Command::Check { config } => s2gw::cli::check(&config),
            Command::Demo { duration, plain } => {
                s2gw::cli::demo(duration.map(Duration::from_secs), plain).await
            }
            Command::Cem { listen } => s2gw::cli::cem(listen).await,
        }
    });
    // Give blocking tasks (the traffic-log writer) a moment, never forever.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("s2gw: {error:#}");
            ExitCode::FAILURE
        }
    }
}
