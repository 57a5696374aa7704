//! The server: CEMs and native RMs dial in.
//!
//! One accept loop; one short-lived task per accepted socket for TLS and the HTTP upgrade
//! (bearer check, path, slot in use); and one task per slot (resource and side) that owns
//! the slot's bus endpoint and runs its connection, one at a time. A peer that stalls in
//! its handshake or misbehaves in its session only ever holds its own task.
//!
//! The limits: at most `max_connections` sockets at once ([`Admission`]: more are closed
//! at once, unread), TLS and the upgrade within `handshake_timeout` of the accept, 429
//! for an address after `max_failed_auth_per_min` failed bearer checks
//! ([`AuthFailures`]), and each session's frame rate (the link core's `FrameRate`).
//!
//! A slot is opened by its own path (`/s2/cem/<id>`, `/s2/rm/<id>`) and the server's or
//! the slot's token, or, for S2 Connect, through a [`TokenDoor`]: one path whose
//! single-use token names the slot.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use s2gw_core::s2::EnergyManagementRole;
use s2gw_core::{CancellationToken, Endpoint, LinkState, Secret};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tracing::{debug, info, warn};

use crate::admission::{Admission, Ticket, Turned};
use crate::auth_limit::{AuthFailures, Gate};
use crate::conn::{self, Ended, Timers};
use crate::log_window::LogWindow;
use crate::{ServerConfig, TokenDoor, WsError};

/// The shortest time between two log lines about sockets closed for the limits.
const REFUSED_LOG_WINDOW: Duration = Duration::from_secs(60);

/// A byte stream a connection runs over: plain TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Socket = WebSocketStream<Box<dyn Io>>;

/// An upgraded connection on its way to its slot, with the claim that holds the slot and
/// the ticket that holds its place among the server's connections.
type Handoff = (Socket, Claim, Ticket, SocketAddr);

/// Which side of its resource a slot's connection plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A native RM dials in on `/s2/rm/<id>`.
    Rm,
    /// A CEM dials in on `/s2/cem/<id>`.
    Cem,
}

/// The WebSocket server for CEMs and native RMs.
///
/// Bind, register slots, then [`spawn`](Self::spawn).
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: ServerConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// By URL path.
    slots: HashMap<String, PendingSlot>,
    /// Paths where the bearer names the slot, by URL path.
    token_doors: HashMap<String, Arc<dyn TokenDoor>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .field("slots", &self.slots.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct PendingSlot {
    role: Role,
    resource_id: String,
    endpoint: Endpoint,
    /// The token this slot's peer must present instead of the server's, if any.
    token: Option<Secret>,
    /// Whether its own path opens it; `false`: only a [`TokenDoor`] does.
    direct: bool,
}

/// What the upgrade tasks know about a slot.
#[derive(Debug)]
struct SlotDoor {
    /// Set while a connection holds the slot.
    busy: Arc<AtomicBool>,
    /// The slot's own bearer token, which replaces the server's for this path.
    token: Option<Secret>,
    /// Whether its own path opens it; `false`: only a [`TokenDoor`] does.
    direct: bool,
    /// Where an upgraded connection is handed to the slot's task.
    handoff: mpsc::Sender<Handoff>,
}

/// A held slot; dropping it frees the slot, on every path out of a connection.
#[derive(Debug)]
struct Claim(Arc<AtomicBool>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Server {
    /// Open the listening socket and load the TLS certificate, if configured.
    pub async fn bind(config: ServerConfig) -> Result<Server, WsError> {
        let tls = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| WsError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| WsError::Bind {
            addr: config.listen,
            source,
        })?;
        Ok(Server {
            listener,
            local_addr,
            config,
            tls,
            slots: HashMap::new(),
            token_doors: HashMap::new(),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accept a native RM for `resource_id` on `/s2/rm/<resource_id>`: its connection plays
    /// the RM side of that resource on `endpoint`.
    pub fn add_native_rm(&mut self, resource_id: String, endpoint: Endpoint) {
        self.add(Role::Rm, resource_id, endpoint, None, true);
    }

    /// Accept a CEM for `resource_id` on `/s2/cem/<resource_id>`: its connection plays the
    /// CEM side of that resource on `endpoint`.
    pub fn add_cem_slot(&mut self, resource_id: String, endpoint: Endpoint) {
        self.add(Role::Cem, resource_id, endpoint, None, true);
    }

    /// A CEM slot for `resource_id` that only a [`TokenDoor`] opens: its own path answers
    /// 404, so no static token (not even the server's) reaches it.
    pub fn add_cem_slot_behind_door(&mut self, resource_id: String, endpoint: Endpoint) {
        self.add(Role::Cem, resource_id, endpoint, None, false);
    }

    /// Serve `path` as a door whose bearer names the CEM slot it opens (S2 Connect's
    /// WebSocket URL with its single-use token).
    pub fn add_token_door(&mut self, path: String, door: Arc<dyn TokenDoor>) {
        if self.token_doors.insert(path.clone(), door).is_some() {
            warn!(%path, "a token door was registered twice: the later one wins");
        }
    }

    /// Like [`add_cem_slot`](Self::add_cem_slot), but the CEM must present `token`
    /// (instead of the server's own token): one CEM's credential opens only its slots.
    pub fn add_cem_slot_with_token(
        &mut self,
        resource_id: String,
        endpoint: Endpoint,
        token: Secret,
    ) {
        self.add(Role::Cem, resource_id, endpoint, Some(token), true);
    }

    fn add(
        &mut self,
        role: Role,
        resource_id: String,
        endpoint: Endpoint,
        token: Option<Secret>,
        direct: bool,
    ) {
        let path = match role {
            Role::Rm => format!("/s2/rm/{resource_id}"),
            Role::Cem => format!("/s2/cem/{resource_id}"),
        };
        let slot = PendingSlot {
            role,
            resource_id,
            endpoint,
            token,
            direct,
        };
        if self.slots.insert(path.clone(), slot).is_some() {
            warn!(%path, "a slot was registered twice: the later one wins");
        }
    }

    /// Start serving. The task ends when `shutdown` is cancelled, after every connection
    /// has been closed with 1001.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.serve(shutdown))
    }

    async fn serve(self, shutdown: CancellationToken) {
        let Server {
            listener,
            local_addr,
            config,
            tls,
            slots,
            token_doors,
        } = self;
        let timers = Timers {
            ping_interval: config.ping_interval,
            dead_after: config.dead_after,
        };
        if config.max_connections < slots.len() {
            warn!(
                max_connections = config.max_connections,
                slots = slots.len(),
                "server.max_connections is below the number of slots: not every resource can be connected at once"
            );
        }
        let mut slot_tasks = JoinSet::new();
        let mut doors = HashMap::new();
        for (path, slot) in slots {
            let (handoff, connections) = mpsc::channel(1);
            let busy = Arc::new(AtomicBool::new(false));
            let token = slot.token.clone();
            doors.insert(
                path,
                SlotDoor {
                    busy,
                    token,
                    direct: slot.direct,
                    handoff,
                },
            );
            let state = slot_state(&slot, &config);
            slot_tasks.spawn(slot_task(
                slot,
                state,
                connections,
                timers,
                shutdown.clone(),
            ));
        }
        let shared = Arc::new(Shared {
            doors,
            token_doors,
            bearer: config.bearer.clone(),
            tls,
            max_frame_bytes: config.max_frame_bytes,
            handshake_timeout: config.handshake_timeout,
            auth: Mutex::new(AuthFailures::new(config.max_failed_auth_per_min)),
        });
        let admission = Admission::new(config.max_connections);
        let mut refused = LogWindow::new(REFUSED_LOG_WINDOW);
        info!(
            %local_addr,
            tls = shared.tls.is_some(),
            max_connections = config.max_connections,
            handshake_timeout = ?config.handshake_timeout,
            max_failed_auth_per_min = config.max_failed_auth_per_min,
            max_frames_per_s = config.max_frames_per_s.map(std::num::NonZeroU32::get),
            "S2 WebSocket server listening"
        );
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let ticket = match admission.admit(peer.ip()) {
                            Ok(ticket) => ticket,
                            Err(turned) => {
                                // Closed unread: answering would cost what the limit saves.
                                drop(tcp);
                                say_refused(&mut refused, turned, peer, &admission, &config);
                                continue;
                            }
                        };
                        // Nagle stalls loopback round trips by ~40 ms.
                        if let Err(error) = tcp.set_nodelay(true) {
                            debug!(%peer, %error, "could not set TCP_NODELAY");
                        }
                        let shared = shared.clone();
                        tokio::spawn(async move { shared.upgrade(tcp, peer, ticket).await });
                    }
                    Err(error) => {
                        // Typically out of file descriptors: pause rather than spin.
                        warn!(%error, "accept failed");
                        tokio::select! {
                            () = shutdown.cancelled() => break,
                            () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                },
            }
        }
        drop(listener);
        while slot_tasks.join_next().await.is_some() {}
        info!(%local_addr, "S2 WebSocket server stopped");
    }
}

/// A socket closed for the limits: a line at most once a minute, with the count since.
fn say_refused(
    log: &mut LogWindow,
    turned: Turned,
    peer: SocketAddr,
    admission: &Admission,
    config: &ServerConfig,
) {
    let Some(unsaid) = log.note(std::time::Instant::now()) else {
        return;
    };
    let why = match turned {
        Turned::Full => format!(
            "{} connections are open (server.max_connections)",
            config.max_connections
        ),
        Turned::PeerBusy => format!(
            "this address has {} connections in handshake already (a quarter of server.max_connections)",
            admission.per_peer()
        ),
    };
    warn!(%peer, more_since_last_line = unsaid, "closed a new connection at once: {why} (said at most once a minute)");
}

struct Shared {
    doors: HashMap<String, SlotDoor>,
    token_doors: HashMap<String, Arc<dyn TokenDoor>>,
    bearer: Option<Secret>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_frame_bytes: usize,
    /// TLS plus the HTTP upgrade must be done this long after the accept.
    handshake_timeout: Duration,
    auth: Mutex<AuthFailures>,
}

impl Shared {
    /// TLS, the HTTP upgrade with its checks, and the handoff to the slot.
    async fn upgrade(&self, tcp: TcpStream, peer: SocketAddr, mut ticket: Ticket) {
        // One deadline for both steps: a peer cannot take the timeout twice over.
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let stream: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(error)) => {
                    debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
        };
        let mut claimed: Option<(Claim, mpsc::Sender<Handoff>)> = None;
        #[allow(clippy::result_large_err)] // tungstenite's callback signature
        let callback = |request: &Request, response: Response| {
            // Before the answer goes out: a peer that reads a refusal and dials again
            // at once must find its address's share free.
            ticket.request_read();
            self.check(request, response, peer, &mut claimed)
        };
        let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            callback,
            Some(conn::ws_config(self.max_frame_bytes)),
        );
        let ws = match tokio::time::timeout_at(deadline, upgrade).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(error)) => {
                debug!(%peer, %error, "WebSocket upgrade failed or refused");
                return;
            }
            Err(_) => {
                debug!(%peer, "WebSocket upgrade timed out");
                return;
            }
        };
        if let Some((claim, handoff)) = claimed
            && handoff.send((ws, claim, ticket, peer)).await.is_err()
        {
            debug!(%peer, "the slot is gone (shutting down)");
        }
    }

    /// The upgrade callback: too many failed bearer checks (429), bearer (401), path (404),
    /// slot in use (409).
    // The error type is tungstenite's, fixed by its callback trait.
    #[allow(clippy::result_large_err)]
    fn check(
        &self,
        request: &Request,
        response: Response,
        peer: SocketAddr,
        claimed: &mut Option<(Claim, mpsc::Sender<Handoff>)>,
    ) -> Result<Response, ErrorResponse> {
        let path = request.uri().path();
        if let Some(token_door) = self.token_doors.get(path) {
            return self.check_token_door(token_door.as_ref(), request, response, peer, claimed);
        }
        let door = self.doors.get(path).filter(|door| door.direct);
        // Authentication first, so an unauthenticated peer learns nothing about paths.
        let expected = door
            .and_then(|door| door.token.as_ref())
            .or(self.bearer.as_ref());
        if let Some(expected) = expected {
            if let Some(refusal) = self.shut_out(peer, path) {
                return Err(refusal);
            }
            if !bearer(request).is_some_and(|token| same(token, expected.expose())) {
                return Err(self.unauthorized(peer, path));
            }
        }
        let Some(door) = door else {
            warn!(%peer, %path, "refused: no such S2 endpoint");
            return Err(refuse(StatusCode::NOT_FOUND, "no S2 endpoint at this path"));
        };
        claim(door, peer, path, claimed)?;
        Ok(response)
    }

    /// The upgrade callback on a [`TokenDoor`]'s path: the token names the slot, and is
    /// used up whether or not the slot is free (a refused CEM initiates a new session).
    #[allow(clippy::result_large_err)]
    fn check_token_door(
        &self,
        token_door: &dyn TokenDoor,
        request: &Request,
        response: Response,
        peer: SocketAddr,
        claimed: &mut Option<(Claim, mpsc::Sender<Handoff>)>,
    ) -> Result<Response, ErrorResponse> {
        let path = request.uri().path();
        if let Some(refusal) = self.shut_out(peer, path) {
            return Err(refusal);
        }
        let Some(resource_id) = bearer(request).and_then(|token| token_door.open(token)) else {
            return Err(self.unauthorized(peer, path));
        };
        let slot = format!("/s2/cem/{resource_id}");
        let Some(door) = self.doors.get(&slot) else {
            warn!(%peer, %path, %resource_id, "refused: the token is for a resource with no CEM slot here");
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "no S2 endpoint for this token",
            ));
        };
        claim(door, peer, &slot, claimed)?;
        Ok(response)
    }

    /// Count a failed bearer check and answer it with 401.
    fn unauthorized(&self, peer: SocketAddr, path: &str) -> ErrorResponse {
        self.auth_failures()
            .failed(peer.ip(), std::time::Instant::now());
        // At most server.max_failed_auth_per_min of these per address and minute:
        // then the address gets 429 and one line (see `shut_out`).
        warn!(%peer, %path, "refused: missing or wrong bearer token");
        let mut refusal = refuse(StatusCode::UNAUTHORIZED, "bearer token required");
        refusal
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        refusal
    }
}

/// The bearer token an upgrade request presents.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Take `door`'s slot for this connection, or 409 when a connection holds it.
#[allow(clippy::result_large_err)]
fn claim(
    door: &SlotDoor,
    peer: SocketAddr,
    path: &str,
    claimed: &mut Option<(Claim, mpsc::Sender<Handoff>)>,
) -> Result<(), ErrorResponse> {
    if door
        .busy
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        warn!(%peer, %path, "refused: the slot already has a connection");
        return Err(refuse(
            StatusCode::CONFLICT,
            "this resource already has a connection",
        ));
    }
    *claimed = Some((Claim(door.busy.clone()), door.handoff.clone()));
    info!(%peer, %path, "accepted");
    Ok(())
}

impl Shared {
    /// 429 for an address with too many failed bearer checks in this minute, before its
    /// token is looked at.
    fn shut_out(&self, peer: SocketAddr, path: &str) -> Option<ErrorResponse> {
        let gate = self
            .auth_failures()
            .gate(peer.ip(), std::time::Instant::now());
        let Gate::Shut { retry_after, first } = gate else {
            return None;
        };
        // Whole seconds, rounded up: Retry-After 0 would invite an immediate retry.
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        if first {
            warn!(%peer, %path, retry_after_s = seconds, "too many failed bearer checks from this address: refusing it with 429 without checking tokens for the rest of the minute (said once per minute)");
        } else {
            debug!(%peer, %path, "refused with 429: too many failed bearer checks");
        }
        let mut refusal = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed bearer token checks: try again later",
        );
        refusal
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        Some(refusal)
    }

    fn auth_failures(&self) -> std::sync::MutexGuard<'_, AuthFailures> {
        // Plain counters, consistent after every statement: nothing to recover from.
        self.auth.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn refuse(status: StatusCode, text: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(text.to_string()));
    *response.status_mut() = status;
    response
}

/// Compare tokens without an early exit, so timing does not reveal how much matched.
fn same(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    diff == 0
}

/// The link core of one slot. Where the peer is a CEM, the RM side may speak before it
/// dials in: the link core keeps its frames, sorted from those of a session whose
/// connection is gone.
fn slot_state(slot: &PendingSlot, config: &ServerConfig) -> LinkState {
    let (label, peer_role) = match slot.role {
        Role::Rm => (
            format!("{} native-rm", slot.resource_id),
            EnergyManagementRole::Rm,
        ),
        Role::Cem => (
            format!("{} cem-slot", slot.resource_id),
            EnergyManagementRole::Cem,
        ),
    };
    LinkState::new(peer_role, config.max_frame_bytes, label)
        .with_frame_rate(config.max_frames_per_s)
}

/// One slot: owns its endpoint; runs its connections one after the other.
async fn slot_task(
    slot: PendingSlot,
    mut state: LinkState,
    mut connections: mpsc::Receiver<Handoff>,
    timers: Timers,
    shutdown: CancellationToken,
) {
    let mut endpoint = slot.endpoint;
    let label = state.label().to_string();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            connection = connections.recv() => {
                let Some((ws, claim, ticket, peer)) = connection else { return };
                info!(%label, %peer, "peer connected");
                let link = conn::Link {
                    state: &mut state,
                    endpoint: &mut endpoint,
                    timers,
                    shutdown: &shutdown,
                };
                let outcome = conn::serve(ws, link).await;
                let reason = outcome.down_reason();
                info!(%label, %peer, %reason, "peer disconnected");
                // Free the slot only now, after Down: a reconnecting peer's Up must come
                // after the previous connection's Down.
                drop(claim);
                drop(ticket);
                if matches!(outcome.ended, Ended::Shutdown | Ended::BusGone) {
                    return;
                }
            }
            event = endpoint.rx.recv() => match event {
                None => return,
                // No peer is connected: the link core keeps or drops frames, notes the
                // other side's Up and Down, and there is no transport to close.
                Some(event) => {
                    let _ = state.from_bus(event);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same("abc", "abc"));
        assert!(!same("abd", "abc"));
        assert!(!same("ab", "abc"));
        assert!(!same("abcd", "abc"));
        assert!(!same("", "abc"));
    }
}
