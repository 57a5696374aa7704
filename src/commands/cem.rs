//! `s2gw cem`: the demo CEM on its own, on a WebSocket or as a CEM worker on MQTT.

use std::net::SocketAddr;
use std::process::ExitCode;

use s2gw_core::CancellationToken;
use tokio::net::TcpListener;

use crate::cem::{self, DemoCemConfig, WorkerConfig};

use super::init_tracing;
use super::run::terminate_signal;

/// `s2gw cem --listen ADDR`: the demo CEM alone, behaving as `config` says.
pub async fn cem(listen: SocketAddr, config: DemoCemConfig) -> anyhow::Result<ExitCode> {
    init_tracing("info", false);
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "demo CEM listening; point a gateway's [cem] url at ws://ADDR/s2/{{resource_id}}");
    let shutdown = CancellationToken::new();
    let serve = tokio::spawn(cem::serve(listener, config, shutdown.clone()));
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    let _ = serve.await;
    Ok(ExitCode::SUCCESS)
}

/// `s2gw cem --mqtt HOST:PORT`: what the command line says about a CEM worker.
#[derive(Debug, Clone)]
pub struct CemWorker {
    /// The broker, `HOST:PORT`.
    pub broker: String,
    /// The shared subscription group.
    pub group: String,
    /// The topic filter of the gateways' base topics.
    pub bases: String,
    /// The worker's name.
    pub name: String,
    /// The broker user, if any.
    pub user: Option<String>,
}

/// The environment variable the worker's broker password comes from.
const PASSWORD_VAR: &str = "S2GW_CEM_MQTT_PASSWORD";

/// `s2gw cem --mqtt HOST:PORT`: the demo CEM as one cloud CEM worker on MQTT, until
/// interrupted or terminated (on either, every resource it serves is released).
pub async fn cem_worker(worker: CemWorker) -> anyhow::Result<ExitCode> {
    init_tracing("info", false);
    let Some((host, port)) = worker.broker.rsplit_once(':') else {
        anyhow::bail!("--mqtt {}: expected HOST:PORT", worker.broker);
    };
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("--mqtt {}: the port is not 1 to 65535", worker.broker))?;
    let config = WorkerConfig {
        host: host.to_string(),
        port,
        password: std::env::var(PASSWORD_VAR).ok(),
        user: worker.user,
        name: worker.name,
        group: worker.group,
        bases: worker.bases,
        demo: DemoCemConfig::default(),
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate_signal() => {}
        }
        stop.cancel();
    });
    cem::run_worker(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
