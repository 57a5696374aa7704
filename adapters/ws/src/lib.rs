//! S2-ws-json transport for s2gw: S2 JSON messages over WebSocket.
//!
//! Two ways onto the wire, both speaking [`BusEvent`](s2gw_core::BusEvent)s to the bus:
//!
//! - [`spawn_client`]: the gateway dials a CEM (the LAN default: the CEM is the server)
//!   and plays the CEM side of one resource on the bus.
//! - [`Server`]: the gateway listens; a native RM (`/s2/rm/<resource_id>`) or a CEM
//!   (`/s2/cem/<resource_id>`) dials in.
//!
//! Every connection is one S2 session and has its own [`Edge`](s2gw_core::Edge): every
//! inbound text frame is judged there, refusals are answered on the socket at once with
//! the right ReceptionStatus (and shown to the taps as `BusEvent::Rejected`), and only
//! checked frames reach the bus. Frames over the configured limit get INVALID_DATA; frames
//! over four times the limit are never buffered and close the connection with 1009;
//! frames beyond the session's rate get TEMPORARY_ERROR. The server's own limits (sockets
//! held, handshake time, failed bearer checks) are in [`ServerConfig`].

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod admission;
mod auth_limit;
mod client;
mod conn;
mod log_window;
mod server;
mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use client::spawn_client;
pub use s2gw_core::Secret;
pub use server::Server;

/// The keep-alive interval S2 asks for: pings no more often than every 50 seconds.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(50);

/// The server's default `max_connections`: sockets held at once, in handshake or in
/// session.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;

/// The server's default `handshake_timeout`: TLS plus the HTTP upgrade.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's default `max_failed_auth_per_min`: failed bearer checks per address and
/// minute before it gets 429.
pub const DEFAULT_MAX_FAILED_AUTH_PER_MIN: u32 = 10;

/// The default `max_frames_per_s` of a session: S2 sessions carry a few frames a second
/// at most; a resource's start (details, descriptions, their ReceptionStatuses) fits
/// well in the burst of one second's worth.
pub const DEFAULT_MAX_FRAMES_PER_S: NonZeroU32 = NonZeroU32::new(100).unwrap();

/// Silence after which a peer counts as dead, for a given ping interval: two missed
/// pongs and ten seconds of slack.
pub fn default_dead_after(ping_interval: Duration) -> Duration {
    ping_interval
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(10))
}

/// What can go wrong setting up a WebSocket endpoint.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Certificates, keys or TLS settings are unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A setting is malformed.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The client link: the gateway dials a CEM.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://` or `wss://` URL of the CEM; `{resource_id}` is replaced by the resource's id.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub bearer: Option<Secret>,
    /// A PEM file of CA certificates to trust instead of the platform's root store.
    pub ca_file: Option<PathBuf>,
    /// Hex SHA-256 of the server's leaf certificate (DER), colons allowed. When set, that
    /// certificate and no other is accepted, whatever its name or dates.
    pub pin_sha256: Option<String>,
    /// How often to ping. S2 asks for no more than one ping every 50 s (the default);
    /// shorter values are honoured, for tests and for links behind aggressive NATs.
    pub ping_interval: Duration,
    /// No frame and no pong for this long means the peer is dead.
    pub dead_after: Duration,
    /// Frames larger than this are refused with INVALID_DATA; four times this closes the
    /// connection.
    pub max_frame_bytes: usize,
    /// Reconnect back-off: floor and ceiling. The ceiling is also how long the link stays
    /// away after a TERMINATE.
    pub backoff: (Duration, Duration),
    /// Frames per second the CEM may send in a session; beyond, each is answered
    /// TEMPORARY_ERROR and not processed (`FrameRate`). `None`: no limit.
    pub max_frames_per_s: Option<NonZeroU32>,
    /// When set, asked before every dial for where to connect and with which bearer
    /// (S2 Connect's session initiation); `url`, `bearer`, `ca_file` and `pin_sha256` are
    /// then unused. `None`: the fixed URL and bearer above.
    pub source: Option<Arc<dyn DialSource>>,
}

/// Where a client link's next connection goes, when that is decided per connection.
///
/// S2 Connect hands out a single-use token (valid at most 30 s) for every session, so the
/// link asks again before each dial, reconnects included. An `Err` counts as a failed dial:
/// logged and retried after the link's back-off.
#[async_trait::async_trait]
pub trait DialSource: Send + Sync + std::fmt::Debug {
    /// The URL, bearer and TLS configuration of the next connection.
    async fn next_dial(&self) -> Result<DialTarget, String>;

    /// Resolves when the source has something new to dial with (a pairing was just
    /// made): a back-off pause in progress is cut short and the link dials at once.
    /// The default never resolves.
    async fn changed(&self) {
        std::future::pending::<()>().await;
    }
}

/// A door on the server whose bearer token itself says which CEM slot it opens.
///
/// S2 Connect's communication server hands a CEM one WebSocket URL for all its resources
/// and a single-use token per session (valid at most 30 s): the token, not the path,
/// names the resource. Registered with [`Server::add_token_door`]; the slots it opens are
/// registered with [`Server::add_cem_slot_behind_door`].
pub trait TokenDoor: Send + Sync + std::fmt::Debug {
    /// The `resource_id` whose CEM slot `presented` opens, consuming the token (a replay
    /// finds nothing). `None` refuses the upgrade with 401.
    fn open(&self, presented: &str) -> Option<String>;
}

/// One connection's worth of [`DialSource`] answer.
#[derive(Debug, Clone)]
pub struct DialTarget {
    /// `ws://` or `wss://` URL to dial.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub bearer: Secret,
    /// The TLS configuration for a `wss://` URL (`None`: the platform's roots).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            bearer: None,
            ca_file: None,
            pin_sha256: None,
            ping_interval: DEFAULT_PING_INTERVAL,
            dead_after: default_dead_after(DEFAULT_PING_INTERVAL),
            max_frame_bytes: s2gw_core::s2::DEFAULT_MAX_FRAME_BYTES,
            backoff: (Duration::from_secs(1), Duration::from_secs(60)),
            max_frames_per_s: Some(DEFAULT_MAX_FRAMES_PER_S),
            source: None,
        }
    }
}

/// The server's certificate chain and private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The server: CEMs and native RMs dial in.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen. The default is loopback only (port 0: any free port; the daemon's
    /// configuration names the real one): exposing S2 to a network is a decision.
    pub listen: SocketAddr,
    /// When set, every connection must present `Authorization: Bearer <token>`.
    pub bearer: Option<Secret>,
    /// Serve `wss://` with this certificate; plain `ws://` without.
    pub tls: Option<TlsFiles>,
    /// Frames larger than this are refused with INVALID_DATA; four times this closes the
    /// connection.
    pub max_frame_bytes: usize,
    /// How often to ping each connection.
    pub ping_interval: Duration,
    /// No frame and no pong for this long means the peer is dead.
    pub dead_after: Duration,
    /// Sockets held at once, in handshake or in session; a socket beyond is closed at
    /// once, unread. One address may hold at most a quarter of them in handshake.
    pub max_connections: usize,
    /// TLS plus the HTTP upgrade must be done this long after the accept, or the socket
    /// is closed.
    pub handshake_timeout: Duration,
    /// Failed bearer checks an address may make within a minute; then it gets 429 for
    /// the rest of that minute, its token not even compared.
    pub max_failed_auth_per_min: u32,
    /// Frames per second a peer may send in a session; beyond, each is answered
    /// TEMPORARY_ERROR and not processed (`FrameRate`). `None`: no limit.
    pub max_frames_per_s: Option<NonZeroU32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            bearer: None,
            tls: None,
            max_frame_bytes: s2gw_core::s2::DEFAULT_MAX_FRAME_BYTES,
            ping_interval: DEFAULT_PING_INTERVAL,
            dead_after: default_dead_after(DEFAULT_PING_INTERVAL),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_failed_auth_per_min: DEFAULT_MAX_FAILED_AUTH_PER_MIN,
            max_frames_per_s: Some(DEFAULT_MAX_FRAMES_PER_S),
        }
    }
}
