//! `s2gw cem`: the demo CEM on its own.

use std::net::SocketAddr;
use std::process::ExitCode;

use s2gw_core::CancellationToken;
use tokio::net::TcpListener;

use crate::cem::{self, DemoCemConfig};

use super::init_tracing;

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
