//! `s2gw run`: the daemon, until SIGTERM or SIGINT, under systemd's watchdog.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use s2gw_core::CancellationToken;

use crate::config::{self};
use crate::gateway::Gateway;

use super::{SHUTDOWN_GRACE, init_tracing};

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
        web = ?gateway.web_addr,
        pairing = ?gateway.pairing_addr,
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

pub(super) fn terminate_signal() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
{
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
