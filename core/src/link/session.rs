//! [`LinkSession`]: one S2 session on one transport connection, between the socket and
//! the bus.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::Now;
use super::refusals::{Logged, RefusalLog, rule_of};
use crate::bus::BusEvent;
use crate::s2::{EnergyManagementRole, Frame, Rejection};

/// What to do with one inbound text.
#[derive(Debug)]
pub enum Verdict {
    /// It passed the edge: hand `BusEvent::Frame` of it to the bus.
    Deliver(Frame),
    /// It was refused: answer and tell the taps.
    Refuse(Refusal),
}

/// A refused inbound frame: what the transport sends back and what the taps see. The
/// session stays up: one bad frame is the peer's problem, not the connection's.
#[derive(Debug)]
pub struct Refusal {
    /// The ReceptionStatus to send back on the transport; `None` for a refused
    /// ReceptionStatus, which is never answered.
    pub reply: Option<Frame>,
    /// `BusEvent::Rejected`, for the taps; never delivered to the other side.
    pub tap: BusEvent,
}

/// One S2 session on one connection: its [`Edge`](crate::Edge), what it logs about the
/// peer, and the throttle on its refusal lines.
///
/// Sans-IO: every call takes `now`; the transport's driver sends what it returns.
#[derive(Debug)]
pub struct LinkSession {
    edge: crate::Edge,
    refusals: Refusals,
}

impl LinkSession {
    /// A session facing a peer in `peer` role that refuses frames over `max_bytes`;
    /// `label` names the resource and link in its log lines.
    pub fn new(peer: EnergyManagementRole, max_bytes: usize, label: &str) -> Self {
        Self {
            edge: crate::Edge::new(peer, max_bytes),
            refusals: Refusals::new(label),
        }
    }

    /// Judge one inbound text frame.
    pub fn inbound(&mut self, text: &str, now: Now) -> Verdict {
        match self.edge.inbound(text, now.wall) {
            Ok(frame) => {
                debug!(label = %self.refusals.label, kind = ?frame.kind(), "received");
                for quirk in self.edge.take_quirks() {
                    info!(label = %self.refusals.label, %quirk, "tolerated (said once per session)");
                }
                Verdict::Deliver(frame)
            }
            Err(rejection) => Verdict::Refuse(self.refuse(rejection, now)),
        }
    }

    /// Refuse what the transport itself could not read as S2 text (a binary WebSocket
    /// frame, a payload that is not UTF-8).
    pub fn refuse(&mut self, rejection: Rejection, now: Now) -> Refusal {
        self.refusals.refuse(rejection, now.mono)
    }

    /// Show a frame this side sends to the edge, before it goes: what the peer may
    /// reference is what this side announced.
    pub fn outbound(&mut self, frame: &Frame, now: Now) {
        self.edge.outbound(frame, now.wall);
    }

    /// When the refusal summary is next due, if refusals are waiting to be summarised:
    /// the driver calls [`tick`](Self::tick) then.
    pub fn summary_due(&self) -> Option<Instant> {
        self.refusals.log.due()
    }

    /// Write the refusal summary if it is due.
    pub fn tick(&mut self, now: Instant) {
        self.refusals.tick(now);
    }
}

/// Refusals and their log lines, for a session or for the time between sessions. What
/// is still counted when it goes is written then: the end of a session.
#[derive(Debug)]
pub(super) struct Refusals {
    label: String,
    log: RefusalLog,
}

impl Refusals {
    pub(super) fn new(label: &str) -> Self {
        Self {
            label: label.to_string(),
            log: RefusalLog::default(),
        }
    }

    pub(super) fn refuse(&mut self, rejection: Rejection, now: Instant) -> Refusal {
        let rule = rule_of(&rejection.diagnostic);
        match self.log.record(rejection.status, rule, now) {
            Logged::Individually { last } => warn!(
                label = %self.label,
                kind = ?rejection.kind,
                status = ?rejection.status,
                diagnostic = %rejection.diagnostic,
                "refused an inbound frame{}",
                if last { " (further refusals are counted and summarised)" } else { "" }
            ),
            Logged::Counted => {}
        }
        self.tick(now);
        Refusal {
            reply: rejection.reply(),
            tap: BusEvent::Rejected(rejection),
        }
    }

    pub(super) fn due(&self) -> Option<Instant> {
        self.log.due()
    }

    pub(super) fn tick(&mut self, now: Instant) {
        if let Some(summary) = self.log.poll(now) {
            warn!(label = %self.label, refused = summary.refused, "refused more inbound frames: {summary}");
        }
    }

    /// The session ends: the counts not yet written.
    pub(super) fn finish(&mut self) {
        if let Some(summary) = self.log.finish() {
            warn!(label = %self.label, refused = summary.refused, "refused more inbound frames before the session ended: {summary}");
        }
        self.log = RefusalLog::default();
    }
}

impl Drop for Refusals {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s2::{DEFAULT_MAX_FRAME_BYTES, MessageKind, ReceptionStatusValues};

    const CEM_HANDSHAKE: &str = r#"{"message_type":"Handshake","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000010","role":"CEM","supported_protocol_versions":["0.0.2-beta","1.0.0"]}"#;

    fn session() -> LinkSession {
        LinkSession::new(
            EnergyManagementRole::Cem,
            DEFAULT_MAX_FRAME_BYTES,
            "test link",
        )
    }

    #[test]
    fn a_good_frame_is_delivered() {
        let mut session = session();
        match session.inbound(CEM_HANDSHAKE, Now::read()) {
            Verdict::Deliver(frame) => assert_eq!(frame.kind(), MessageKind::Handshake),
            other => panic!("expected delivery, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_frame_is_answered_and_shown_to_the_taps() {
        let mut session = session();
        let Verdict::Refuse(refusal) = session.inbound("not json", Now::read()) else {
            panic!("not json must be refused");
        };
        let reply = refusal.reply.expect("a ReceptionStatus to send back");
        match reply.message() {
            crate::s2::Message::ReceptionStatus(status) => {
                assert_eq!(status.status, ReceptionStatusValues::InvalidData);
            }
            other => panic!("expected a ReceptionStatus, got {:?}", other.kind()),
        }
        match refusal.tap {
            BusEvent::Rejected(rejection) => {
                assert_eq!(rejection.status, ReceptionStatusValues::InvalidData);
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        // And the session goes on.
        assert!(matches!(
            session.inbound(CEM_HANDSHAKE, Now::read()),
            Verdict::Deliver(_)
        ));
    }

    #[test]
    fn a_refused_reception_status_gets_no_reply_but_the_taps_see_it() {
        let mut session = session();
        let text = r#"{"message_type":"ReceptionStatus","status":"BOGUS"}"#;
        let Verdict::Refuse(refusal) = session.inbound(text, Now::read()) else {
            panic!("a bad ReceptionStatus must be refused");
        };
        assert!(refusal.reply.is_none());
        assert!(matches!(refusal.tap, BusEvent::Rejected(_)));
    }

    #[test]
    fn refusals_beyond_the_first_few_wait_for_a_summary() {
        let mut session = session();
        let now = Now::read();
        for _ in 0..super::super::refusals::DEFAULT_INDIVIDUAL {
            session.inbound("not json", now);
            assert_eq!(session.summary_due(), None);
        }
        session.inbound("not json", now);
        let due = session.summary_due().expect("a summary is owed");
        assert!(due > now.mono);
    }
}
