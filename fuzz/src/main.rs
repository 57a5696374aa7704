//! `s2gw-fuzz <target> --count N --seed S`: one fuzz run, its figures on stdout; exit 1
//! when it found anything.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use s2gw_fuzz::targets::config::PRIVATE_NETWORK_ENV;
use s2gw_fuzz::{Limits, TARGETS, run_named};

/// Fuzz one of s2gw's input surfaces.
#[derive(Parser)]
struct Args {
    /// The target: s2-edge, s2-rm, modbus, mqtt, ble, config, or `all`.
    target: String,
    /// Inputs to run.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// The seed every input derives from.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The index of the first input (to replay one: `--first I --count 1`).
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Milliseconds an input may take.
    #[arg(long, default_value_t = 2000)]
    time_bound_ms: u64,
    /// MiB resident memory may grow after the warm-up.
    #[arg(long, default_value_t = 64)]
    memory_bound_mib: u64,
    /// Where failing inputs are written.
    #[arg(long, default_value = "target/fuzz-crashes")]
    crashes: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if let Some(code) = into_private_network(&args) {
        return code;
    }
    let limits = Limits {
        time_per_input: Duration::from_millis(args.time_bound_ms),
        memory_growth_kb: args.memory_bound_mib * 1024,
    };
    let names: Vec<&str> = if args.target == "all" {
        TARGETS.to_vec()
    } else {
        vec![args.target.as_str()]
    };
    let mut clean = true;
    for name in names {
        match run_named(
            name,
            args.seed,
            args.first,
            args.count,
            limits,
            Some(args.crashes.clone()),
        ) {
            Ok(report) => {
                println!("{}", report.summary());
                for (index, what) in &report.failures {
                    println!("  input {index}: {what}");
                }
                clean &= report.is_clean();
            }
            Err(error) => {
                eprintln!("{name}: {error:#}");
                clean = false;
            }
        }
    }
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The `config` target starts daemons on fuzzed configs, whose addresses can be anything:
/// it runs in a network namespace of its own, where nothing leaves the process. Returns
/// the re-executed run's exit code, or `None` when this process is the one to run.
fn into_private_network(args: &Args) -> Option<ExitCode> {
    let wants = args.target == "config" || args.target == "all";
    if !wants || std::env::var_os(PRIVATE_NETWORK_ENV).is_some() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(PRIVATE_NETWORK_ENV, "1")
        .status();
    Some(match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!(
                "cannot run the config target in a private network namespace (unshare --net): {error}"
            );
            ExitCode::FAILURE
        }
    })
}
