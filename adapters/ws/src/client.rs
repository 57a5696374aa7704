//! The client link: the gateway dials a CEM and plays the CEM side of one resource.

use std::sync::Arc;
use std::time::Duration;

use s2gw_core::s2::EnergyManagementRole;
use s2gw_core::{Admission, Backoff, BusEvent, CancellationToken, Edge, Endpoint, SessionFrames};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

use crate::ClientConfig;
use crate::conn::{self, Ended, Session, Timers};

/// Frames waiting for the link to come up, at most. A native RM's Handshake arrives
/// before the CEM link is up; a flood of more than this is stale by the time it could go.
const QUEUE_LIMIT: usize = 256;

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
        label: format!("{resource_id} cem-link"),
        config,
        url,
        endpoint,
        shutdown,
        rm_frames: SessionFrames::new(QUEUE_LIMIT),
        rm_up: false,
        tls: None,
    };
    tokio::spawn(link.run())
}

struct Link {
    config: ClientConfig,
    url: String,
    label: String,
    endpoint: Endpoint,
    shutdown: CancellationToken,
    /// The RM side's frames: those that wait for a connection, sorted from those of a
    /// session whose connection is gone.
    rm_frames: SessionFrames,
    /// Whether the RM side is up (it sent `Up` and no `Down` since).
    rm_up: bool,
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
    async fn run(mut self) {
        info!(label = %self.label, url = %self.url, "client link started");
        // How long to wait before the next dial; `None` dials at once.
        let mut pause: Option<Duration> = None;
        loop {
            if !self.rm_up {
                match self.wait_for_up().await {
                    Idle::Stop => return,
                    _ => pause = None,
                }
            }
            if let Some(delay) = pause.take() {
                debug!(label = %self.label, ?delay, "waiting before the next dial");
                match self.idle_for(delay).await {
                    Idle::Stop => return,
                    Idle::RmDown => continue,
                    Idle::Continue => {}
                }
            }
            let mut ws = match self.dial_watching().await {
                Dialled::Connected(ws) => *ws,
                Dialled::Failed(reason) => {
                    warn!(label = %self.label, %reason, "dial failed");
                    pause = Some(self.backoff.next_delay());
                    continue;
                }
                Dialled::RmDown => continue,
                Dialled::Stop => return,
            };
            info!(label = %self.label, "connected to the CEM");
            if self.endpoint.tx.send(BusEvent::Up).await.is_err() {
                conn::close(&mut ws, conn::away(), "gateway stopping").await;
                return;
            }
            let started = Instant::now();
            let outcome = self.session(&mut ws).await;
            drop(ws);
            self.rm_frames.disconnected();
            let reason = outcome.down_reason();
            info!(label = %self.label, %reason, "disconnected from the CEM");
            if matches!(outcome.ended, Ended::BusGone) {
                return;
            }
            // Every Up is paired with a Down, so the RM side always knows where it stands.
            conn::announce_down(&self.endpoint, &outcome).await;
            match outcome.ended {
                Ended::Shutdown | Ended::BusGone => return,
                Ended::CloseRequested { reconnect: true } => pause = None,
                // TERMINATE: the CEM ended the session; calling straight back would just
                // start another one, so stay away for the back-off ceiling.
                Ended::CloseRequested { reconnect: false } => pause = Some(self.config.backoff.1),
                Ended::OtherSideDown => {
                    self.rm_up = false;
                    self.rm_frames.rm_changed();
                }
                Ended::Lost(_) => {
                    if outcome.exchanged || started.elapsed() >= STABLE_AFTER {
                        self.backoff.reset();
                    }
                    pause = Some(self.backoff.next_delay());
                }
            }
        }
    }

    /// Run one connected session: flush what waited, then the connection loop.
    async fn session(&mut self, ws: &mut Socket) -> conn::Outcome {
        let mut edge = Edge::new(EnergyManagementRole::Cem, self.config.max_frame_bytes);
        let mut session = Session {
            edge: &mut edge,
            endpoint: &mut self.endpoint,
            timers: Timers {
                ping_interval: self.config.ping_interval,
                dead_after: self.config.dead_after,
            },
            shutdown: &self.shutdown,
            label: &self.label,
            rm_frames: Some(&mut self.rm_frames),
        };
        if let Err(reason) = conn::flush_waiting(ws, &mut session).await {
            return conn::Outcome {
                ended: Ended::Lost(reason),
                exchanged: false,
            };
        }
        conn::run(ws, session).await
    }

    /// Wait until the RM side is up.
    async fn wait_for_up(&mut self) -> Idle {
        debug!(label = %self.label, "waiting for the resource manager");
        while !self.rm_up {
            if let Idle::Stop = self.next_idle_event().await {
                return Idle::Stop;
            }
        }
        Idle::Continue
    }

    /// Wait for `delay`, still minding the bus.
    async fn idle_for(&mut self, delay: Duration) -> Idle {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Idle::Continue,
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
        match event {
            None => Idle::Stop,
            Some(BusEvent::Up) => {
                self.rm_up = true;
                self.rm_frames.rm_changed();
                Idle::Continue
            }
            Some(BusEvent::Down { reason }) => {
                debug!(label = %self.label, %reason, "the resource manager went down");
                let was_up = std::mem::replace(&mut self.rm_up, false);
                self.rm_frames.rm_changed();
                if was_up { Idle::RmDown } else { Idle::Continue }
            }
            Some(BusEvent::Frame(frame)) => {
                match self.rm_frames.admit(frame) {
                    Admission::Send(_) | Admission::Queued => {}
                    Admission::QueuedDroppingOldest => warn!(
                        label = %self.label,
                        limit = QUEUE_LIMIT,
                        "the CEM link is down and the queue is full: dropped the oldest frame"
                    ),
                    Admission::Stale(frame) => {
                        debug!(label = %self.label, kind = %frame.kind().as_str(), "dropping a frame of an ended session");
                    }
                }
                Idle::Continue
            }
            // Nothing is connected, so there is nothing to close.
            Some(BusEvent::Close { .. } | BusEvent::Rejected(_)) => Idle::Continue,
        }
    }

    /// Dial, while minding the bus: the RM side can go away, and shutdown can come.
    async fn dial_watching(&mut self) -> Dialled {
        let tls = match self.tls_if_needed() {
            Ok(tls) => tls,
            Err(reason) => return Dialled::Failed(reason),
        };
        // Owned copies: the dial runs while `self` handles bus events.
        let (url, config) = (self.url.clone(), self.config.clone());
        let dial = dial(&url, &config, tls);
        tokio::pin!(dial);
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
    config: &ClientConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Socket, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad URL {url:?}: {e}"))?;
    if let Some(token) = &config.bearer {
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
