//! [`LinkState`]: one transport link (a dialler, a server slot, an MQTT slot) across its
//! connections: the Up/Down it owes the bus, the other side's presence, the RM side's
//! frames, and the [`LinkSession`] of the open connection.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::frames::{Admission, SessionFrames};
use super::rate::FrameRate;
use super::session::{LinkSession, Refusal, Refusals, Verdict};
use super::{Now, QUEUE_LIMIT};
use crate::bus::BusEvent;
use crate::s2::{EnergyManagementRole, Frame, Id, ReceptionStatusValues, Rejection};

/// What the transport does with one event from the bus.
#[derive(Debug)]
pub enum FromBus {
    /// Send this frame on the open connection.
    Send(Frame),
    /// The bus asked to end the session's transport (`BusEvent::Close`).
    Close {
        /// Come back at once (RECONNECT) or not (TERMINATE).
        reconnect: bool,
        /// Why, for people and for the peer.
        reason: String,
    },
    /// The other side of the resource went down: an open connection ends.
    OtherSideDown {
        /// Why, for people.
        reason: String,
    },
    /// The other side of the resource is up.
    OtherSideUp,
    /// Nothing to do: the frame waits, or was dropped, or the event is for the taps.
    Nothing,
}

/// A connection was opened: what the transport does first.
#[derive(Debug)]
pub struct Opened {
    /// `BusEvent::Up`, to hand to the bus before anything else.
    pub up: BusEvent,
    /// Then the RM side's frames that waited for this connection, in order, each shown
    /// to the session with [`LinkState::outbound`] as it goes.
    pub waiting: VecDeque<Frame>,
}

/// One transport link across its connections, sans-IO.
///
/// The transport's thin async loop calls [`open`](Self::open) when a connection (an S2
/// session) starts, [`close`](Self::close) when it ends, [`from_bus`](Self::from_bus)
/// for every bus event and [`inbound`](Self::inbound) for every text the peer sends,
/// and sends what they return. That keeps the rules in one place:
///
/// - every `Up` it announces is paired with exactly one `Down`;
/// - facing a CEM, the RM side's frames wait for the next connection or are dropped as
///   stale, as [`SessionFrames`] sorts them, and an `Up` or `Down` of the RM side starts
///   its count afresh and clears what waited;
/// - facing a native RM, the CEM side's frames go only into an open connection: without
///   one they belong to a session that is over;
/// - every inbound text passes the open session's edge; refusals are answered, shown to
///   the taps and logged without flooding.
#[derive(Debug)]
pub struct LinkState {
    peer: EnergyManagementRole,
    max_bytes: usize,
    label: String,
    /// Facing a CEM: the RM side's frames, sorted into sessions. `None` facing an RM.
    rm_frames: Option<SessionFrames>,
    /// Frames dropped from a full queue since the last connection.
    dropped_oldest: u64,
    other_up: bool,
    /// The open connection's session; an `Up` is owed its `Down` while this is set.
    session: Option<LinkSession>,
    /// Refusals while no session is open (S2 over MQTT has no connection to refuse).
    outside: Refusals,
    outside_hint: String,
    /// Each session's frame-rate limit, afresh per connection.
    frame_rate: Option<NonZeroU32>,
}

impl LinkState {
    /// A link whose connections face a peer in `peer` role, refusing frames over
    /// `max_bytes`; `label` names the resource and link in log lines.
    ///
    /// Facing a CEM, the link waits for the RM side's `Up` ([`other_up`](Self::other_up));
    /// facing a native RM, the CEM side counts as up from the start: it is the native
    /// RM's arrival that starts the resource.
    pub fn new(peer: EnergyManagementRole, max_bytes: usize, label: impl Into<String>) -> Self {
        let label = label.into();
        let faces_cem = peer == EnergyManagementRole::Cem;
        Self {
            peer,
            max_bytes,
            rm_frames: faces_cem.then(|| SessionFrames::new(QUEUE_LIMIT)),
            dropped_oldest: 0,
            other_up: !faces_cem,
            session: None,
            outside: Refusals::new(&label),
            outside_hint: "no S2 session is open for this resource".to_string(),
            frame_rate: None,
            label,
        }
    }

    /// Every session of this link refuses frames beyond `limit` per second with
    /// TEMPORARY_ERROR ([`FrameRate`]); `None`: no limit.
    pub fn with_frame_rate(mut self, limit: Option<NonZeroU32>) -> Self {
        self.frame_rate = limit;
        self
    }

    /// The diagnostic a well-formed frame gets when no session is open (TEMPORARY_ERROR).
    pub fn with_outside_hint(mut self, hint: impl Into<String>) -> Self {
        self.outside_hint = hint.into();
        self
    }

    /// The label of this link's log lines.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the other side of the resource is up (it sent `Up` and no `Down` since).
    pub fn other_up(&self) -> bool {
        self.other_up
    }

    /// Whether a connection is open.
    pub fn is_open(&self) -> bool {
        self.session.is_some()
    }

    /// A connection opened: a fresh session. Call only while none is open.
    pub fn open(&mut self) -> Opened {
        debug_assert!(self.session.is_none(), "a second open without a close");
        self.outside.finish();
        let session = LinkSession::new(self.peer, self.max_bytes, &self.label)
            .with_frame_rate(self.frame_rate.map(FrameRate::per_second));
        self.session = Some(session);
        if self.dropped_oldest > 1 {
            info!(label = %self.label, dropped = self.dropped_oldest, limit = QUEUE_LIMIT, "while no connection was open, the oldest waiting frames were dropped");
        }
        self.dropped_oldest = 0;
        let waiting = self
            .rm_frames
            .as_mut()
            .map(SessionFrames::connected)
            .unwrap_or_default();
        Opened {
            up: BusEvent::Up,
            waiting,
        }
    }

    /// The connection ended: the `Down` owed to the bus, once per `Up` (`None` when no
    /// connection was open). What the RM side still sends for it is stale from now on.
    pub fn close(&mut self, reason: impl Into<String>) -> Option<BusEvent> {
        // Dropping the session writes its last refusal summary.
        self.session.take()?;
        if let Some(book) = self.rm_frames.as_mut() {
            book.disconnected();
        }
        Some(BusEvent::Down {
            reason: reason.into(),
        })
    }

    /// Sort one event from the bus.
    pub fn from_bus(&mut self, event: BusEvent) -> FromBus {
        match event {
            BusEvent::Frame(frame) => self.frame_from_bus(frame),
            BusEvent::Up => {
                if let Some(book) = self.rm_frames.as_mut() {
                    self.other_up = true;
                    book.rm_changed();
                }
                FromBus::OtherSideUp
            }
            BusEvent::Down { reason } => {
                if let Some(book) = self.rm_frames.as_mut() {
                    self.other_up = false;
                    book.rm_changed();
                }
                FromBus::OtherSideDown { reason }
            }
            BusEvent::Close { reconnect, reason } => FromBus::Close { reconnect, reason },
            // Refusals are for the taps.
            BusEvent::Rejected(_) => FromBus::Nothing,
        }
    }

    fn frame_from_bus(&mut self, frame: Frame) -> FromBus {
        let Some(book) = self.rm_frames.as_mut() else {
            if self.session.is_some() {
                return FromBus::Send(frame);
            }
            debug!(label = %self.label, kind = ?frame.kind(), "no connection: a frame of an ended session dropped");
            return FromBus::Nothing;
        };
        match book.admit(frame) {
            Admission::Send(frame) => return FromBus::Send(frame),
            Admission::Queued => {}
            Admission::QueuedDroppingOldest => {
                self.dropped_oldest += 1;
                // One line per wait: an RM that keeps talking to a missing CEM would
                // otherwise write one per frame.
                if self.dropped_oldest == 1 {
                    warn!(label = %self.label, limit = QUEUE_LIMIT, "no connection and the queue is full: dropping the oldest frames");
                }
            }
            Admission::Stale(frame) => {
                debug!(label = %self.label, kind = ?frame.kind(), "dropping a frame of an ended session");
            }
        }
        FromBus::Nothing
    }

    /// Judge one inbound text: by the open session's edge, or, with no session open, by
    /// a fresh edge and refused as it deserves or told to wait (TEMPORARY_ERROR).
    pub fn inbound(&mut self, text: &str, now: Now) -> Verdict {
        if let Some(session) = self.session.as_mut() {
            return session.inbound(text, now);
        }
        let mut scratch = crate::Edge::new(self.peer, self.max_bytes);
        let rejection = match scratch.inbound(text, now.wall) {
            Err(rejection) => rejection,
            Ok(frame) => Rejection {
                kind: Some(frame.kind()),
                status: ReceptionStatusValues::TemporaryError,
                subject: frame.id().unwrap_or(Id::NIL),
                diagnostic: self.outside_hint.clone(),
            },
        };
        Verdict::Refuse(self.outside.refuse(rejection, now.mono))
    }

    /// Refuse what the transport could not read as S2 text (see [`LinkSession::refuse`]).
    pub fn refuse(&mut self, rejection: Rejection, now: Now) -> Refusal {
        match self.session.as_mut() {
            Some(session) => session.refuse(rejection, now),
            None => self.outside.refuse(rejection, now.mono),
        }
    }

    /// Show a frame this side sends to the open session's edge.
    pub fn outbound(&mut self, frame: &Frame, now: Now) {
        if let Some(session) = self.session.as_mut() {
            session.outbound(frame, now);
        }
    }

    /// When a refusal summary is next due: the driver calls [`tick`](Self::tick) then.
    pub fn summary_due(&self) -> Option<Instant> {
        let session = self.session.as_ref().and_then(LinkSession::summary_due);
        match (session, self.outside.due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Write the refusal summaries that are due.
    pub fn tick(&mut self, now: Instant) {
        if let Some(session) = self.session.as_mut() {
            session.tick(now);
        }
        self.outside.tick(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s2::{
        CommodityQuantity, DEFAULT_MAX_FRAME_BYTES, Handshake, Message, MessageKind,
        PowerMeasurement, PowerValue, Timestamp, mint_id, offered_versions,
    };

    fn rm_handshake() -> Frame {
        Frame::new(Message::Handshake(Handshake {
            message_id: mint_id(),
            role: EnergyManagementRole::Rm,
            supported_protocol_versions: Some(offered_versions()),
        }))
    }

    fn measurement() -> Frame {
        Frame::new(Message::PowerMeasurement(PowerMeasurement {
            message_id: mint_id(),
            measurement_timestamp: Timestamp::UNIX_EPOCH,
            values: vec![PowerValue::new(
                CommodityQuantity::ElectricPower3PhaseSymmetric,
                1.0,
            )],
        }))
    }

    fn facing_cem() -> LinkState {
        LinkState::new(EnergyManagementRole::Cem, DEFAULT_MAX_FRAME_BYTES, "test")
    }

    fn facing_rm() -> LinkState {
        LinkState::new(EnergyManagementRole::Rm, DEFAULT_MAX_FRAME_BYTES, "test")
    }

    fn ids(frames: &VecDeque<Frame>) -> Vec<Option<Id>> {
        frames.iter().map(Frame::id).collect()
    }

    #[test]
    fn every_up_is_paired_with_exactly_one_down() {
        let mut link = facing_cem();
        assert!(link.close("never opened").is_none());
        let opened = link.open();
        assert!(matches!(opened.up, BusEvent::Up));
        assert!(link.is_open());
        match link.close("lost") {
            Some(BusEvent::Down { reason }) => assert_eq!(reason, "lost"),
            other => panic!("expected Down, got {other:?}"),
        }
        assert!(link.close("again").is_none(), "one Down per Up");
        assert!(!link.is_open());
    }

    #[test]
    fn facing_a_cem_the_link_waits_for_the_rm_and_its_frames_wait_for_the_connection() {
        let mut link = facing_cem();
        assert!(!link.other_up());
        assert!(matches!(link.from_bus(BusEvent::Up), FromBus::OtherSideUp));
        assert!(link.other_up());
        let (hello, marker) = (rm_handshake(), measurement());
        assert!(matches!(
            link.from_bus(BusEvent::Frame(hello.clone())),
            FromBus::Nothing
        ));
        assert!(matches!(
            link.from_bus(BusEvent::Frame(marker.clone())),
            FromBus::Nothing
        ));
        let opened = link.open();
        assert_eq!(ids(&opened.waiting), [hello.id(), marker.id()]);
        assert!(matches!(
            link.from_bus(BusEvent::Frame(measurement())),
            FromBus::Send(_)
        ));
    }

    #[test]
    fn a_closed_connections_frames_never_reach_the_next() {
        let mut link = facing_cem();
        link.from_bus(BusEvent::Up);
        link.open();
        link.close("closed at once");
        // The RM answers the first connection's Up only now.
        assert!(matches!(
            link.from_bus(BusEvent::Frame(rm_handshake())),
            FromBus::Nothing
        ));
        assert!(matches!(
            link.from_bus(BusEvent::Frame(measurement())),
            FromBus::Nothing
        ));
        let opened = link.open();
        assert!(opened.waiting.is_empty(), "nothing stale waits");
        let hello = rm_handshake();
        match link.from_bus(BusEvent::Frame(hello.clone())) {
            FromBus::Send(frame) => assert_eq!(frame.id(), hello.id()),
            other => panic!("the second session's Handshake goes out, got {other:?}"),
        }
    }

    #[test]
    fn a_down_from_the_rm_side_clears_what_waited() {
        let mut link = facing_cem();
        link.from_bus(BusEvent::Up);
        link.from_bus(BusEvent::Frame(rm_handshake()));
        match link.from_bus(BusEvent::Down {
            reason: "rm left".into(),
        }) {
            FromBus::OtherSideDown { reason } => assert_eq!(reason, "rm left"),
            other => panic!("expected OtherSideDown, got {other:?}"),
        }
        assert!(!link.other_up());
        link.from_bus(BusEvent::Up);
        assert!(link.open().waiting.is_empty());
    }

    #[test]
    fn facing_a_native_rm_frames_go_only_into_an_open_connection() {
        let mut link = facing_rm();
        assert!(link.other_up(), "the CEM side does not wait for anyone");
        assert!(matches!(
            link.from_bus(BusEvent::Frame(measurement())),
            FromBus::Nothing
        ));
        let opened = link.open();
        assert!(
            opened.waiting.is_empty(),
            "nothing waited while no RM was there"
        );
        assert!(matches!(
            link.from_bus(BusEvent::Frame(measurement())),
            FromBus::Send(_)
        ));
        link.close("rm left");
        assert!(matches!(
            link.from_bus(BusEvent::Frame(measurement())),
            FromBus::Nothing
        ));
        assert!(
            link.other_up(),
            "a Down of its own connection is not the CEM side's"
        );
    }

    #[test]
    fn outside_a_session_good_frames_are_told_to_wait_and_bad_ones_refused() {
        let mut link = facing_cem().with_outside_hint("see the state topic");
        let hello = r#"{"message_type":"Handshake","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000010","role":"CEM","supported_protocol_versions":["1.0.0"]}"#;
        let Verdict::Refuse(refusal) = link.inbound(hello, Now::read()) else {
            panic!("nothing is delivered outside a session");
        };
        match refusal.tap {
            BusEvent::Rejected(rejection) => {
                assert_eq!(rejection.status, ReceptionStatusValues::TemporaryError);
                assert_eq!(rejection.kind, Some(MessageKind::Handshake));
                assert_eq!(rejection.diagnostic, "see the state topic");
                assert_eq!(
                    rejection.subject.as_str(),
                    "3d0a7e1c-1111-4a2b-9c3d-000000000010"
                );
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        let Verdict::Refuse(refusal) = link.inbound("nope", Now::read()) else {
            panic!("not json is refused");
        };
        assert!(matches!(
            refusal.tap,
            BusEvent::Rejected(ref rejection) if rejection.status == ReceptionStatusValues::InvalidData
        ));
        // Inside a session the same Handshake passes.
        link.from_bus(BusEvent::Up);
        link.open();
        assert!(matches!(
            link.inbound(hello, Now::read()),
            Verdict::Deliver(_)
        ));
    }

    #[test]
    fn transport_refusals_go_to_the_open_sessions_throttle() {
        let mut link = facing_cem();
        link.open();
        let now = Now::read();
        for _ in 0..=super::super::refusals::DEFAULT_INDIVIDUAL {
            let refusal = link.refuse(Rejection::unreadable("binary".into()), now);
            assert!(refusal.reply.is_some());
        }
        assert!(link.summary_due().is_some());
        link.close("done");
        assert!(
            link.summary_due().is_none(),
            "the summary went with the session"
        );
    }

    #[test]
    fn every_connection_gets_the_frame_rate_afresh() {
        let mut link = facing_rm().with_frame_rate(NonZeroU32::new(1));
        let hello = r#"{"message_type":"Handshake","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000010","role":"RM","supported_protocol_versions":["1.0.0"]}"#;
        let now = Now::read();
        for _ in 0..2 {
            link.open();
            assert!(matches!(link.inbound(hello, now), Verdict::Deliver(_)));
            let Verdict::Refuse(refusal) = link.inbound(hello, now) else {
                panic!("a second frame in the same instant is over 1 per second");
            };
            assert!(matches!(
                refusal.tap,
                BusEvent::Rejected(ref rejection) if rejection.status == ReceptionStatusValues::TemporaryError
            ));
            link.close("next connection");
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_frames() {
        let mut link = facing_cem();
        link.from_bus(BusEvent::Up);
        link.from_bus(BusEvent::Frame(rm_handshake()));
        for _ in 0..QUEUE_LIMIT + 10 {
            link.from_bus(BusEvent::Frame(measurement()));
        }
        assert_eq!(link.dropped_oldest, 11);
        assert_eq!(link.open().waiting.len(), QUEUE_LIMIT);
        assert_eq!(link.dropped_oldest, 0);
    }
}
