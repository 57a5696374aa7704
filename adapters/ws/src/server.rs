//! The server: CEMs and native RMs dial in.
//!
//! One accept loop; one short-lived task per accepted socket for TLS and the HTTP upgrade
//! (bearer check, path, slot in use); and one task per slot (resource and side) that owns
//! the slot's bus endpoint and runs its connection, one at a time. A peer that stalls in
//! its handshake or misbehaves in its session only ever holds its own task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

use crate::conn::{self, Ended, Timers};
use crate::{ServerConfig, WsError};

/// TLS plus the HTTP upgrade may take this long; a peer that dawdles is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream a connection runs over: plain TCP or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Socket = WebSocketStream<Box<dyn Io>>;

/// An upgraded connection on its way to its slot, with the claim that holds the slot.
type Handoff = (Socket, Claim, SocketAddr);

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
}

/// What the upgrade tasks know about a slot.
#[derive(Debug)]
struct SlotDoor {
    /// Set while a connection holds the slot.
    busy: Arc<AtomicBool>,
    /// The slot's own bearer token, which replaces the server's for this path.
    token: Option<Secret>,
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
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accept a native RM for `resource_id` on `/s2/rm/<resource_id>`: its connection plays
    /// the RM side of that resource on `endpoint`.
    pub fn add_native_rm(&mut self, resource_id: String, endpoint: Endpoint) {
        self.add(Role::Rm, resource_id, endpoint, None);
    }

    /// Accept a CEM for `resource_id` on `/s2/cem/<resource_id>`: its connection plays the
    /// CEM side of that resource on `endpoint`.
    pub fn add_cem_slot(&mut self, resource_id: String, endpoint: Endpoint) {
        self.add(Role::Cem, resource_id, endpoint, None);
    }

    /// Like [`add_cem_slot`](Self::add_cem_slot), but the CEM must present `token`
    /// (instead of the server's own token): one CEM's credential opens only its slots.
    pub fn add_cem_slot_with_token(
        &mut self,
        resource_id: String,
        endpoint: Endpoint,
        token: Secret,
    ) {
        self.add(Role::Cem, resource_id, endpoint, Some(token));
    }

    fn add(&mut self, role: Role, resource_id: String, endpoint: Endpoint, token: Option<Secret>) {
        let path = match role {
            Role::Rm => format!("/s2/rm/{resource_id}"),
            Role::Cem => format!("/s2/cem/{resource_id}"),
        };
        let slot = PendingSlot {
            role,
            resource_id,
            endpoint,
            token,
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
        } = self;
        let timers = Timers {
            ping_interval: config.ping_interval,
            dead_after: config.dead_after,
        };
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
                    handoff,
                },
            );
            slot_tasks.spawn(slot_task(
                slot,
                connections,
                config.max_frame_bytes,
                timers,
                shutdown.clone(),
            ));
        }
        let shared = Arc::new(Shared {
            doors,
            bearer: config.bearer.clone(),
            tls,
            max_frame_bytes: config.max_frame_bytes,
        });
        info!(%local_addr, tls = shared.tls.is_some(), "S2 WebSocket server listening");
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        // Nagle stalls loopback round trips by ~40 ms.
                        if let Err(error) = tcp.set_nodelay(true) {
                            debug!(%peer, %error, "could not set TCP_NODELAY");
                        }
                        let shared = shared.clone();
                        tokio::spawn(async move { shared.upgrade(tcp, peer).await });
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

struct Shared {
    doors: HashMap<String, SlotDoor>,
    bearer: Option<Secret>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_frame_bytes: usize,
}

impl Shared {
    /// TLS, the HTTP upgrade with its checks, and the handoff to the slot.
    async fn upgrade(&self, tcp: TcpStream, peer: SocketAddr) {
        let stream: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(acceptor) => {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Box::new(tls),
                    Ok(Err(error)) => {
                        debug!(%peer, %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let mut claimed: Option<(Claim, mpsc::Sender<Handoff>)> = None;
        #[allow(clippy::result_large_err)] // tungstenite's callback signature
        let callback = |request: &Request, response: Response| {
            self.check(request, response, peer, &mut claimed)
        };
        let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            callback,
            Some(conn::ws_config(self.max_frame_bytes)),
        );
        let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade).await {
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
            && handoff.send((ws, claim, peer)).await.is_err()
        {
            debug!(%peer, "the slot is gone (shutting down)");
        }
    }

    /// The upgrade callback: bearer (401), path (404), slot in use (409).
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
        let door = self.doors.get(path);
        // Authentication first, so an unauthenticated peer learns nothing about paths.
        let expected = door
            .and_then(|door| door.token.as_ref())
            .or(self.bearer.as_ref());
        if let Some(expected) = expected {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim);
            if !presented.is_some_and(|token| same(token, expected.expose())) {
                warn!(%peer, %path, "refused: missing or wrong bearer token");
                let mut refusal = refuse(StatusCode::UNAUTHORIZED, "bearer token required");
                refusal
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Err(refusal);
            }
        }
        let Some(door) = door else {
            warn!(%peer, %path, "refused: no such S2 endpoint");
            return Err(refuse(StatusCode::NOT_FOUND, "no S2 endpoint at this path"));
        };
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
        Ok(response)
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

/// One slot: owns its endpoint; runs its connections one after the other.
async fn slot_task(
    slot: PendingSlot,
    mut connections: mpsc::Receiver<Handoff>,
    max_frame_bytes: usize,
    timers: Timers,
    shutdown: CancellationToken,
) {
    let PendingSlot {
        role,
        resource_id,
        mut endpoint,
        token: _,
    } = slot;
    let (label, peer_role) = match role {
        Role::Rm => (format!("{resource_id} native-rm"), EnergyManagementRole::Rm),
        Role::Cem => (format!("{resource_id} cem-slot"), EnergyManagementRole::Cem),
    };
    // Where the peer is a CEM, the RM side may speak before it dials in: the link core
    // keeps its frames, sorted from those of a session whose connection is gone.
    let mut state = LinkState::new(peer_role, max_frame_bytes, label.clone());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            connection = connections.recv() => {
                let Some((ws, claim, peer)) = connection else { return };
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
