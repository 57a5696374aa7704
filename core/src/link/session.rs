//! [`LinkSession`]: one S2 session on one transport connection, between the socket and
//! the bus.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::Now;
use super::rate::FrameRate;
use super::refusals::{Logged, RefusalLog, rule_of};
use crate::bus::BusEvent;
use crate::s2::{EnergyManagementRole, Frame, Id, ReceptionStatusValues, Rejection};

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
    /// The peer's frame-rate limit, if the transport sets one.
    rate: Option<FrameRate>,
}

impl LinkSession {
    /// A session facing a peer in `peer` role that refuses frames over `max_bytes`;
    /// `label` names the resource and link in its log lines.
    pub fn new(peer: EnergyManagementRole, max_bytes: usize, label: &str) -> Self {
        Self {
            edge: crate::Edge::new(peer, max_bytes),
            refusals: Refusals::new(label),
            rate: None,
        }
    }

    /// Refuse frames beyond `rate` with TEMPORARY_ERROR (see [`FrameRate`]).
    pub fn with_frame_rate(mut self, rate: Option<FrameRate>) -> Self {
        self.rate = rate;
        self
    }

    /// Judge one inbound text frame: first against the frame-rate limit, then by the edge.
    pub fn inbound(&mut self, text: &str, now: Now) -> Verdict {
        if let Some(rate) = self.rate.as_mut()
            && !rate.admit(now.mono)
        {
            let rejection = over_rate(text, rate);
            return Verdict::Refuse(self.refuse(rejection, now));
        }
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

/// The refusal of a frame beyond the rate limit: TEMPORARY_ERROR about the frame's own id
/// where a peek at it finds one. Not passed to the edge, so the conversation it keeps is
/// as if the frame had never come.
fn over_rate(text: &str, rate: &FrameRate) -> Rejection {
    let peek = s2_kit::codec::peek(text).ok();
    Rejection {
        kind: peek.as_ref().and_then(|p| p.kind),
        status: ReceptionStatusValues::TemporaryError,
        subject: peek.as_ref().map_or(Id::NIL, s2_kit::codec::Peek::subject),
        diagnostic: format!(
            "more than {} frames per second: not processed, send it again later",
            rate.limit()
        ),
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
            tap: BusEvent::Rejected(Box::new(rejection)),
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

    fn measurement(n: u32) -> String {
        format!(
            r#"{{"message_type":"PowerMeasurement","message_id":"3d0a7e1c-1111-4a2b-9c3d-{n:012}","measurement_timestamp":"2026-01-01T00:00:00Z","values":[{{"commodity_quantity":"ELECTRIC.POWER.L1","value":1.0}}]}}"#
        )
    }

    #[test]
    fn frames_beyond_the_rate_are_told_to_come_back_later_naming_their_id() {
        let rate = FrameRate::per_second(std::num::NonZeroU32::new(2).unwrap());
        let mut session = session().with_frame_rate(Some(rate));
        let now = Now::read();
        assert!(matches!(
            session.inbound(CEM_HANDSHAKE, now),
            Verdict::Deliver(_)
        ));
        assert!(!matches!(
            session.inbound("not json", now),
            Verdict::Deliver(_)
        ));
        let Verdict::Refuse(refusal) = session.inbound(&measurement(7), now) else {
            panic!("the third frame in one instant is over a limit of 2 per second");
        };
        let reply = refusal.reply.expect("a ReceptionStatus to send back");
        let crate::s2::Message::ReceptionStatus(status) = reply.message() else {
            panic!("expected a ReceptionStatus, got {:?}", reply.kind());
        };
        assert_eq!(status.status, ReceptionStatusValues::TemporaryError);
        assert_eq!(
            status.subject_message_id.as_str(),
            "3d0a7e1c-1111-4a2b-9c3d-000000000007"
        );
        assert!(
            status
                .diagnostic_label
                .as_deref()
                .is_some_and(|d| d.contains("more than 2 frames per second")),
            "{:?}",
            status.diagnostic_label
        );
        match refusal.tap {
            BusEvent::Rejected(rejection) => {
                assert_eq!(rejection.kind, Some(MessageKind::PowerMeasurement));
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
        // Unreadable and over the rate: still TEMPORARY_ERROR, about the nil id.
        let Verdict::Refuse(refusal) = session.inbound("garbage", now) else {
            panic!("over the rate");
        };
        let BusEvent::Rejected(rejection) = refusal.tap else {
            panic!("expected Rejected");
        };
        assert_eq!(rejection.status, ReceptionStatusValues::TemporaryError);
        assert_eq!(rejection.subject, Id::NIL);
        // A second later the session takes frames again.
        let later = Now {
            wall: now.wall,
            mono: now.mono + std::time::Duration::from_secs(1),
        };
        assert!(!matches!(
            session.inbound(&measurement(7), later),
            Verdict::Refuse(Refusal { tap: BusEvent::Rejected(ref rejection), .. }) if rejection.status == ReceptionStatusValues::TemporaryError
        ));
    }

    #[test]
    fn without_a_rate_no_frame_is_refused_for_coming_fast() {
        let mut session = session();
        let now = Now::read();
        assert!(matches!(
            session.inbound(CEM_HANDSHAKE, now),
            Verdict::Deliver(_)
        ));
        for n in 0..500 {
            assert!(
                !matches!(
                    session.inbound(&measurement(n), now),
                    Verdict::Refuse(Refusal { tap: BusEvent::Rejected(ref rejection), .. }) if rejection.status == ReceptionStatusValues::TemporaryError
                ),
                "frame {n}"
            );
        }
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
