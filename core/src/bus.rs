//! What crosses the bus, and the two halves of the channel an adapter uses to reach it.

use tokio::sync::mpsc;

use crate::s2::Frame;
pub use crate::s2::Rejection;

/// Which side of a resource an endpoint plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The resource manager: a virtual RM the gateway hosts, or a native RM.
    Rm,
    /// The customer energy manager link.
    Cem,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Self {
        match self {
            Side::Rm => Side::Cem,
            Side::Cem => Side::Rm,
        }
    }
}

/// Everything that travels between the two sides of a resource.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// This side is present: a CEM link connected, or an RM is ready to talk.
    ///
    /// The RM side answers every `Up` from a CEM-side link with a new session that
    /// starts with its Handshake; a CEM-side link relies on that to tell a closed
    /// connection's frames from the next one's (see [`crate::link`]).
    Up,
    /// A checked S2 message.
    Frame(Frame),
    /// This side is gone (link lost, RM disconnected).
    Down {
        /// Why, for people.
        reason: String,
    },
    /// End the session's transport: close the WebSocket with a close frame. With
    /// `reconnect`, come back at once (SessionRequest RECONNECT); without, it was a
    /// TERMINATE.
    Close {
        /// Whether to reconnect straight away.
        reconnect: bool,
        /// Why, for people and for the close frame.
        reason: String,
    },
    /// An inbound frame was refused at this side's edge and answered there. Seen by the
    /// taps only; never delivered to the other side.
    ///
    /// Boxed: a rejection is three times the size of any other event, and every slot of
    /// every bus channel (four per resource) is as large as the largest variant.
    Rejected(Box<Rejection>),
}

/// The adapter's half of its connection to the bus.
#[derive(Debug)]
pub struct Endpoint {
    /// Events from this side into the bus.
    pub tx: mpsc::Sender<BusEvent>,
    /// Events from the other side, after the bus.
    pub rx: mpsc::Receiver<BusEvent>,
}

/// The bus's half of an adapter's connection.
#[derive(Debug)]
pub struct EndpointPeer {
    /// Events this side sent.
    pub rx: mpsc::Receiver<BusEvent>,
    /// Where events for this side go.
    pub tx: mpsc::Sender<BusEvent>,
}

impl Endpoint {
    /// A connected pair with room for `capacity` events each way.
    pub fn pair(capacity: usize) -> (Endpoint, EndpointPeer) {
        let (to_bus, from_adapter) = mpsc::channel(capacity);
        let (to_adapter, from_bus) = mpsc::channel(capacity);
        (
            Endpoint {
                tx: to_bus,
                rx: from_bus,
            },
            EndpointPeer {
                rx: from_adapter,
                tx: to_adapter,
            },
        )
    }
}
