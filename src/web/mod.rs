//! The web UI, `/metrics` and `/healthz` (`[web]`), served with axum.
//!
//! # Layout
//! - `mod.rs`: the server and its routes;
//! - `api.rs`: the handlers (JSON, server-sent events, actions);
//! - `auth.rs`: who may read and act (loopback, password, sessions, CSRF, lockout);
//! - `state.rs`: what the pages show, read from the running gateway;
//! - `traffic.rs`: the tap behind the S2 inspector, the instruction history and the S2
//!   counters;
//! - `history.rs`: the power of each device over the last hour;
//! - `metrics.rs`, `health.rs`, `process.rs`: `/metrics` and `/healthz`;
//! - `assets/`: the page (HTML, CSS, JavaScript), compiled into the binary: no CDN.

mod api;
pub mod auth;
pub mod health;
pub mod history;
pub mod metrics;
pub mod process;
pub mod state;
pub mod traffic;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::routing::{get, post};
use s2gw_core::CancellationToken;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::WebSection;
use crate::gateway::metered::PollDurations;

pub use state::WebData;

/// What every handler shares.
pub(crate) struct App {
    data: WebData,
    auth: auth::Auth,
    polls: PollDurations,
    /// Ticks when any view or the traffic changed.
    changes: watch::Sender<u64>,
    shutdown: CancellationToken,
}

/// Bind `section.listen` and serve until `shutdown`. Returns the server's task and the
/// bound address (the port may have been 0).
pub async fn start(
    section: &WebSection,
    data: WebData,
    polls: PollDurations,
    shutdown: CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(section.listen)
        .await
        .with_context(|| format!("the web UI cannot listen on {}", section.listen))?;
    let addr = listener.local_addr()?;
    let views = data
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.view.clone()))
        .collect();
    tasks.push(data.history.spawn(views, shutdown.clone()));
    let app = Arc::new(App {
        auth: auth::Auth::new(section.password.clone()),
        polls,
        changes: watch::Sender::new(0),
        shutdown: shutdown.clone(),
        data,
    });
    watch_changes(&app, tasks);
    let router = routes(app);
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, service)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(%error, "the web UI stopped");
        }
    }));
    tracing::info!(%addr, "web UI listening");
    Ok(addr)
}

fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(api::index))
        .route("/app.js", get(api::script))
        .route("/app.css", get(api::style))
        .route("/healthz", get(api::healthz))
        .route("/metrics", get(api::metrics))
        .route("/login", post(api::login))
        .route("/logout", post(api::logout))
        .route("/api/session", get(api::session))
        .route("/api/overview", get(api::overview))
        .route("/api/events", get(api::events))
        .route("/api/config", get(api::config))
        .route("/api/device/{id}", get(api::device))
        .route("/api/device/{id}/control", post(api::control))
        .route("/api/inspector/{id}", get(api::inspector))
        .route("/api/inspector/{id}/s2log", get(api::s2log))
        .fallback(api::not_found)
        .layer(axum::middleware::map_response(api::security_headers))
        .with_state(app)
}

/// One tick on `app.changes` for every change of a view or of the traffic.
fn watch_changes(app: &Arc<App>, tasks: &mut Vec<JoinHandle<()>>) {
    for d in &app.data.devices {
        tasks.push(tokio::spawn(forward_changes(
            Arc::clone(app),
            d.view.clone(),
        )));
    }
    let traffic = app.data.traffic.changes();
    tasks.push(tokio::spawn(forward_changes(Arc::clone(app), traffic)));
}

async fn forward_changes<T: Send + Sync>(app: Arc<App>, mut rx: watch::Receiver<T>) {
    loop {
        tokio::select! {
            () = app.shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        app.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}
