//! The client link: the gateway dials a CEM and plays the CEM side of one resource.

use std::sync::Arc;
use std::time::Duration;

use s2gw_core::s2::EnergyManagementRole;
use s2gw_core::{Backoff, CancellationToken, Endpoint, FromBus, LinkState};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

use crate::ClientConfig;
use crate::conn::{self, Ended, Timers};

/// A connection that stayed up this long was a good one: the back-off starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The TCP connect, TLS and HTTP upgrade together may take this long.
const DIAL_TIMEOUT: Duration = Duration::from_secs(15);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Start the client link for one resource.
///
/// The task waits for `BusEvent::Up` from the RM side, dials `config.url`, announces
/// `Up` on connect and `Down` when the connection ends, reconnects with back-off, and
/// returns when `shutdown` is cancelled (closing with 1001) or the bus drops the endpoint.
pub fn spawn_client(
    config: ClientConfig,
    resource_id: String,
    endpoint: Endpoint,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let url = config.url.replace("{resource_id}", &resource_id);
    let link = Link {
        backoff: Backoff::new(config.backoff.0, config.backoff.1),
        state: LinkState::new(
            EnergyManagementRole::Cem,
            config.max_frame_bytes,
            format!("{resource_id} cem-link"),
        )
        .with_frame_rate(config.max_frames_per_s),
        config,
        url,
        endpoint,
        shutdown,
        tls: None,
    };
    tokio::spawn(link.run())
}

struct Link {
    config: ClientConfig,
    url: String,
    /// The link core: whether the RM side is up, its frames, the Up/Down pairing.
    state: LinkState,
    endpoint: Endpoint,
    shutdown: CancellationToken,
    backoff: Backoff,
    /// Built on the first `wss://` dial and kept: loading the platform roots is not free.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// What happened while the link was not connected.
enum Idle {
    /// Keep waiting.
    Continue,
    /// The RM side went down: back to waiting for `Up`.
    RmDown,
    /// Shutdown or the bus is gone: the task ends.
    Stop,
}

impl Link {
    /// The task: an `async move` block rather than an `async fn`, because an `async fn`
    /// keeps its by-value arguments twice in its future (rust-lang/rust#62958), and this
    /// future lives as long as the resource.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would hold `self` twice"
    )]
    fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move { self.serve_forever().await }
    }

    async fn serve_forever(&mut self) {
        match &self.config.source {
            Some(_) => info!(label = %self.state.label(), "client link started (URL per session)"),
            None => info!(label = %self.state.label(), url = %self.url, "client link started"),
        }
        // How long to wait before the next dial; `None` dials at once.
        let mut pause: Option<Duration> = None;
        loop {
            if !self.state.other_up() {
                match self.wait_for_up().await {
                    Idle::Stop => return,
                    _ => pause = None,
                }
            }
            if let Some(delay) = pause.take() {
                debug!(label = %self.state.label(), ?delay, "waiting before the next dial");
                match self.idle_for(delay).await {
                    Idle::Stop => return,
                    Idle::RmDown => continue,
                    Idle::Continue => {}
                }
            }
            let ws = match self.dial_watching().await {
                Dialled::Connected(ws) => *ws,
                Dialled::Failed(reason) => {
                    warn!(label = %self.state.label(), %reason, "dial failed");
                    pause = Some(self.backoff.next_delay());
                    continue;
                }
                Dialled::RmDown => continue,
                Dialled::Stop => return,
            };
            info!(label = %self.state.label(), "connected to the CEM");
            let started = Instant::now();
            let link = conn::Link {
                state: &mut self.state,
                endpoint: &mut self.endpoint,
                timers: Timers {
                    ping_interval: self.config.ping_interval,
                    dead_after: self.config.dead_after,
                },
                shutdown: &self.shutdown,
            };
            let outcome = conn::serve(ws, link).await;
            let reason = outcome.down_reason();
            info!(label = %self.state.label(), %reason, "disconnected from the CEM");
            match outcome.ended {
                Ended::Shutdown | Ended::BusGone => return,
                Ended::CloseRequested { reconnect: true } => pause = None,
                // TERMINATE: the CEM ended the session; calling straight back would just
                // start another one, so stay away for the back-off ceiling.
                Ended::CloseRequested { reconnect: false } => pause = Some(self.config.backoff.1),
                // The link core saw the RM side go: the loop waits for its next Up.
                Ended::OtherSideDown => {}
                Ended::Lost(_) => {
                    if outcome.exchanged || started.elapsed() >= STABLE_AFTER {
                        self.backoff.reset();
                    }
                    pause = Some(self.backoff.next_delay());
                }
            }
        }
    }

    /// Wait until the RM side is up.
    async fn wait_for_up(&mut self) -> Idle {
        debug!(label = %self.state.label(), "waiting for the resource manager");
        while !self.state.other_up() {
            if let Idle::Stop = self.next_idle_event().await {
                return Idle::Stop;
            }
        }
        Idle::Continue
    }

    /// Wait for `delay`, still minding the bus.
    async fn idle_for(&mut self, delay: Duration) -> Idle {
        let deadline = Instant::now() + delay;
        let source = self.config.source.clone();
        let changed = async {
            match &source {
                Some(source) => source.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(changed);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Idle::Continue,
                () = &mut changed => {
                    info!(label = %self.state.label(), "new dial details (a pairing was made): dialling now");
                    self.backoff.reset();
                    return Idle::Continue;
                }
                idle = self.next_idle_event() => match idle {
                    Idle::Continue => {}
                    other => return other,
                },
            }
        }
    }

    /// Handle the next bus event (or shutdown) while not connected.
    ///
    /// Cancel-safe: the only await is a `recv` or a cancellation, so `idle_for` and
    /// `dial_watching` can race it against a timer or a dial.
    async fn next_idle_event(&mut self) -> Idle {
        let event = tokio::select! {
            () = self.shutdown.cancelled() => return Idle::Stop,
            event = self.endpoint.rx.recv() => event,
        };
        let Some(event) = event else {
            return Idle::Stop;
        };
        match self.state.from_bus(event) {
            FromBus::OtherSideDown { reason } => {
                debug!(label = %self.state.label(), %reason, "the resource manager went down");
                Idle::RmDown
            }
            // Not connected: the RM side's frames wait or are dropped inside the link
            // core (it never says Send without a connection), and there is nothing to
            // close.
            FromBus::OtherSideUp | FromBus::Send(_) | FromBus::Close { .. } | FromBus::Nothing => {
                Idle::Continue
            }
        }
    }

    /// Dial, while minding the bus: the RM side can go away, and shutdown can come.
    async fn dial_watching(&mut self) -> Dialled {
        let source = self.config.source.clone();
        let tls = match source {
            Some(_) => None,
            None => match self.tls_if_needed() {
                Ok(tls) => tls,
                Err(reason) => return Dialled::Failed(reason),
            },
        };
        // Owned copies: the dial runs while `self` handles bus events.
        let (url, config) = (self.url.clone(), self.config.clone());
        // Boxed: the TCP, TLS and upgrade state is about 11 KB, and held inline it would
        // size this task's future for the whole connection, every resource, for good.
        let mut dial = Box::pin(async move {
            match source {
                Some(source) => {
                    let target = source.next_dial().await?;
                    dial(&target.url, Some(&target.bearer), &config, target.tls).await
                }
                None => dial(&url, config.bearer.as_ref(), &config, tls).await,
            }
        });
        loop {
            tokio::select! {
                result = &mut dial => return match result {
                    Ok(ws) => Dialled::Connected(Box::new(ws)),
                    Err(reason) => Dialled::Failed(reason),
                },
                idle = self.next_idle_event() => match idle {
                    Idle::Continue => {}
                    Idle::RmDown => return Dialled::RmDown,
                    Idle::Stop => return Dialled::Stop,
                },
            }
        }
    }

    fn tls_if_needed(&mut self) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        let secure = self
            .url
            .get(..6)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("wss://"));
        if !secure {
            return Ok(None);
        }
        if self.tls.is_none() {
            self.tls = Some(crate::tls::client_config(&self.config).map_err(|e| e.to_string())?);
        }
        Ok(self.tls.clone())
    }
}

enum Dialled {
    // Boxed: a socket is over a kilobyte and the other outcomes are tiny.
    Connected(Box<Socket>),
    Failed(String),
    RmDown,
    Stop,
}

async fn dial(
    url: &str,
    bearer: Option<&s2gw_core::Secret>,
    config: &ClientConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Socket, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad URL {url:?}: {e}"))?;
    if let Some(token) = bearer {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| "the bearer token is not a valid header value".to_string())?;
        // Keeps the value out of any debug dump of the request.
        value.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let connector = tls.map(Connector::Rustls);
    let dial = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(conn::ws_config(config.max_frame_bytes)),
        // TCP_NODELAY: Nagle stalls loopback round trips by ~40 ms.
        true,
        connector,
    );
    match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no connection within {DIAL_TIMEOUT:?}")),
    }
}
