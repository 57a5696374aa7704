//! What each `s2gw` subcommand does. `main.rs` only parses arguments.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use s2gw_core::CancellationToken;
use tokio::net::TcpListener;

use crate::cem::{self, DemoCemConfig};
use crate::config::{self, Config};
use crate::gateway::Gateway;

/// How long shutdown waits for the fail-safe releases before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `s2gw run -c FILE`: the daemon.
pub async fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    init_tracing(&config.gateway.log_level, false);
    let shutdown = CancellationToken::new();
    let gateway = Gateway::start(&config, shutdown.clone()).await?;
    tracing::info!(
        devices = config.devices.len(),
        natives = config.natives.len(),
        server = ?gateway.server_addr,
        "s2gw running"
    );
    systemd_notify(&[sd_notify::NotifyState::Ready]);
    supervise().await;
    systemd_notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down: releasing every device first");
    gateway.stop(SHUTDOWN_GRACE).await;
    Ok(ExitCode::SUCCESS)
}

/// The daemon's main loop: pet the systemd watchdog until SIGTERM or SIGINT.
///
/// The watchdog is petted from here, not from a task of its own, so a wedged runtime
/// stops the petting and systemd restarts the gateway.
async fn supervise() {
    let mut usec = 0u64;
    let pet_every = if sd_notify::watchdog_enabled(false, &mut usec) {
        Duration::from_micros(usec / 2)
    } else {
        Duration::from_secs(3600)
    };
    let mut pet = tokio::time::interval(pet_every.max(Duration::from_millis(100)));
    let mut terminate = terminate_signal();
    loop {
        tokio::select! {
            _ = pet.tick() => systemd_notify(&[sd_notify::NotifyState::Watchdog]),
            _ = tokio::signal::ctrl_c() => return,
            () = terminate.as_mut() => return,
        }
    }
}

fn terminate_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut stream) => Box::pin(async move {
            stream.recv().await;
        }),
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the gateway");
            Box::pin(std::future::pending())
        }
    }
}

fn systemd_notify(state: &[sd_notify::NotifyState]) {
    if let Err(error) = sd_notify::notify(false, state) {
        tracing::debug!(%error, "sd_notify failed");
    }
}

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
            let unsupported = crate::devices::unsupported(&config);
            if !unsupported.is_empty() {
                eprintln!(
                    "warning: BLE device(s) {} are valid, but this s2gw was built without BLE \
                     support (cargo feature `ble`): `s2gw run` refuses to start them",
                    unsupported.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `s2gw cem --listen ADDR`: the demo CEM alone.
pub async fn cem(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    init_tracing("info", false);
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "demo CEM listening; point a gateway's [cem] url at ws://ADDR/s2/{{resource_id}}");
    let shutdown = CancellationToken::new();
    let serve = tokio::spawn(cem::serve(
        listener,
        DemoCemConfig::default(),
        shutdown.clone(),
    ));
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    let _ = serve.await;
    Ok(ExitCode::SUCCESS)
}

/// Serial line settings of the Modbus tools.
#[derive(Debug, Clone, Copy)]
pub struct SerialArgs {
    /// Bits per second.
    pub baud: u32,
    /// Parity.
    pub parity: s2gw_modbus::target::Parity,
}

/// The bus the Modbus tools talk to: `tcp`, else `rtu_over_tcp`, else the serial `rtu`
/// device (the command line makes sure exactly one is given).
pub fn modbus_target(
    tcp: Option<String>,
    rtu_over_tcp: Option<String>,
    rtu: Option<String>,
    serial: SerialArgs,
) -> s2gw_modbus::Target {
    use s2gw_modbus::Target;
    match (tcp, rtu_over_tcp, rtu) {
        (Some(addr), _, _) => Target::Tcp(addr),
        (None, Some(addr), _) => Target::RtuOverTcp(addr),
        (None, None, path) => Target::Rtu(s2gw_modbus::target::SerialLine {
            path: path.unwrap_or_default(),
            baud: serial.baud,
            parity: serial.parity,
            data_bits: 8,
            stop_bits: 1,
        }),
    }
}

/// `s2gw modbus scan`: the SunSpec models at `target`, printed; an error (refused,
/// timeout, exception, no SunSpec) is returned for `main` to print, exit code 1.
pub async fn modbus_scan(
    target: s2gw_modbus::Target,
    unit: Option<u8>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let shown = target.to_string();
    let report = s2gw_modbus::scan(target, unit, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("modbus scan of {shown}: {e}"))?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// What `s2gw modbus read` reads.
#[derive(Debug, Clone, Copy)]
pub struct RawReadRequest {
    /// Unit (slave) id.
    pub unit: u8,
    /// The table.
    pub table: s2gw_modbus::Table,
    /// The first address, 0-based.
    pub address: u16,
    /// Registers to read (0: the type's width).
    pub count: u16,
    /// How to decode them.
    pub value_type: s2gw_modbus::ValueType,
    /// Word order of multi-register values.
    pub word_order: s2gw_modbus::WordOrder,
}

/// `s2gw modbus read`: raw registers and their decoded value, printed.
pub async fn modbus_read(
    target: s2gw_modbus::Target,
    r: RawReadRequest,
) -> anyhow::Result<ExitCode> {
    let shown = target.to_string();
    let read = s2gw_modbus::read_raw(
        target,
        r.unit,
        r.table,
        r.address,
        r.count,
        r.value_type,
        r.word_order,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "modbus read of {} {}+{} at {shown} unit {}: {e}",
            r.table.as_str(),
            r.address,
            r.count,
            r.unit
        )
    })?;
    println!("{read}");
    Ok(ExitCode::SUCCESS)
}

/// The demo's config: the embedded demo.toml with its CEM link pointed at `cem_addr`, and
/// its simulated PV's local midday moved to `now`.
///
/// The PV follows the real sun curve, so a demo started at night would show 0 W and no
/// curtailment. Rather than a time-lapse sun or a demo clock (which would speed up every
/// simulated device, energy counters and the heat pump's timers with them), the demo sets
/// `utc_offset_min` so that local midday is now: the curve, the clouds and the clock stay
/// real, only the PV's time zone is chosen. A PV that states its own `utc_offset_min` keeps
/// it; `s2gw run` never goes through here.
pub fn demo_config(cem_addr: SocketAddr, now: std::time::SystemTime) -> anyhow::Result<Config> {
    let mut config = config::load_str(config::DEMO_TOML, Path::new("<embedded demo.toml>"))
        .map_err(|errors| anyhow::anyhow!("the embedded demo config is broken:\n{errors}"))?;
    for link in config.cem.values_mut() {
        if let config::CemTransport::WsClient { url, .. } = &mut link.transport {
            *url = format!("ws://{cem_addr}/s2/{{resource_id}}");
        }
    }
    for device in &mut config.devices {
        if let config::Connection::Sim(sim) = &mut device.connection
            && sim.model == s2gw_sim::SimModel::Pv
            && sim.utc_offset_min.is_none()
        {
            sim.utc_offset_min = Some(s2gw_sim::utc_offset_for_midday_at(sim, now));
        }
    }
    Ok(config)
}

/// `s2gw demo`: every simulated device against the demo CEM, with a live view.
pub async fn demo(duration: Option<Duration>, plain: bool) -> anyhow::Result<ExitCode> {
    // The view is the output; log lines would tear it. RUST_LOG brings them back.
    init_tracing("off", true);
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let cem_addr = listener.local_addr()?;
    let cem_task = tokio::spawn(cem::serve(
        listener,
        DemoCemConfig::default(),
        shutdown.clone(),
    ));
    let config = demo_config(cem_addr, std::time::SystemTime::now())?;
    let gateway = Gateway::start(&config, shutdown.clone()).await?;
    let started = Instant::now();
    let redraw = !plain && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut frame = tokio::time::interval(Duration::from_secs(1));
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    loop {
        tokio::select! {
            _ = frame.tick() => {
                let view = crate::demo::render(&gateway.snapshot(), &gateway.counters.snapshot(), started.elapsed());
                if redraw {
                    print!("\x1b[2J\x1b[H{view}");
                } else if started.elapsed().as_secs().is_multiple_of(5) {
                    println!("{view}");
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            () = sleep_until(deadline) => break,
        }
    }
    if !redraw {
        // The last picture, so a plain run ends on its final counts, not on whatever the
        // last five-second frame happened to show.
        let view = crate::demo::render(
            &gateway.snapshot(),
            &gateway.counters.snapshot(),
            started.elapsed(),
        );
        println!("{view}");
    }
    println!("\nstopping: every device returns to its autonomous default");
    gateway.stop(SHUTDOWN_GRACE).await;
    let _ = cem_task.await;
    Ok(ExitCode::SUCCESS)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

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
