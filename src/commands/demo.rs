//! `s2gw demo`: every simulated device against the demo CEM, with a live view.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use s2gw_core::CancellationToken;
use tokio::net::TcpListener;

use crate::cem::{self, DemoCemConfig};
use crate::config::{self, Config};
use crate::gateway::Gateway;

use super::{SHUTDOWN_GRACE, init_tracing};

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
