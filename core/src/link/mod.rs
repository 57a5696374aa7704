//! The link core: what every S2 transport (WebSocket client, WebSocket server, S2 over
//! MQTT, either side) does between its socket and the bus, written once.
//!
//! - [`LinkState`]: one link across its connections — the `Up`/`Down` pairing towards
//!   the bus, the other side's presence, the RM side's frames ([`SessionFrames`]) and
//!   the open connection's session.
//! - [`LinkSession`]: one connection's S2 session — the [`Edge`](crate::Edge) every
//!   inbound text passes, the ReceptionStatus a refusal earns, the tolerated quirks
//!   (said once per session), the refusal log throttle ([`RefusalLog`]) and the peer's
//!   frame-rate limit ([`FrameRate`]).
//!
//! Both are sans-IO: they take [`Now`] and return what to send; each transport's async
//! loop only moves bytes and events.
//!
//! ## The RM side's frames
//!
//! A CEM-side link (the WebSocket client, the WebSocket server's CEM slot, S2 over MQTT
//! towards a CEM) connects and disconnects while the RM side stays up. Each connection
//! carries one S2 session, and every session starts with the RM's Handshake. Frames
//! cross the bus asynchronously, so when a connection ends, frames the RM produced for
//! it may still be on their way; sent into the next connection they would put a second
//! Handshake, or a message before the Handshake, into that session.
//!
//! The bus contract that makes this decidable: **the RM side's n-th Handshake since it
//! came up opens the session of the link's n-th connection.** A virtual RM answers each
//! `Up` with a new session that starts with its Handshake; a native RM says its
//! Handshake once per connection of its own, and its session ends (Down, then Up again
//! when it comes back) whenever the CEM-side connection ends. [`SessionFrames`] counts
//! both and sorts every frame into *send now*, *wait for the next connection* or
//! *stale*.

use std::time::Instant;

use crate::s2::Timestamp;

mod frames;
mod rate;
mod refusals;
mod session;
mod state;

pub use frames::{Admission, SessionFrames};
pub use rate::FrameRate;
pub use refusals::{
    DEFAULT_INDIVIDUAL, DEFAULT_SUMMARY_INTERVAL, Logged, RefusalLog, Summary, rule_of,
};
pub use session::{LinkSession, Refusal, Verdict};
pub use state::{FromBus, LinkState, Opened};

/// Frames of the RM side that wait for a CEM-side connection, at most. A native RM's
/// Handshake arrives before the CEM link is up; a flood of more than this is stale by the
/// time it could go.
pub const QUEUE_LIMIT: usize = 256;

/// The two clocks the link core reads, read once by the driver per event: the wall clock
/// for S2 (message timestamps, the edge's checks) and the monotonic one for intervals.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Wall-clock time, as S2 sees it.
    pub wall: Timestamp,
    /// Monotonic time, for throttles.
    pub mono: Instant,
}

impl Now {
    /// Both clocks, now. For drivers; nothing in the core calls it outside tests.
    pub fn read() -> Self {
        Self {
            wall: Timestamp::now(),
            mono: Instant::now(),
        }
    }
}
