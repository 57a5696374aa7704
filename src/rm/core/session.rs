//! The S2 side of the core: one s2-kit `RmSession` per CEM link, what goes out through
//! it, and what it reports.

use std::time::Instant;

use s2gw_core::BusEvent;
use s2gw_core::s2::{
    CloseReason, ControlType, Frame, Id, InstructionStatus, Message, RmConfig, RmEvent, RmSession,
    SessionRequestType, offered_versions,
};

use super::{Core, Output};
use crate::rm::LinkState;
use crate::rm::describe;

impl Core {
    pub(super) fn start_session(&mut self) {
        if self.session.is_some() {
            self.link_lost("a new link replaced the old one");
        }
        self.offered = self.offer();
        let details = describe::details(
            &self.config,
            self.resource_id,
            &self.info,
            self.offered.clone(),
        );
        let config = RmConfig::default().offering(offered_versions());
        let mut session = RmSession::new(config, details);
        session.open(self.now);
        self.session = Some(session);
        self.link = LinkState::Handshaking;
        self.profile = None;
        self.control = None;
        self.measurer.reset();
        for module in &mut self.modules {
            module.session_started();
        }
        self.counters.sessions = self.counters.sessions.saturating_add(1);
        tracing::info!(resource = %self.resource_id, "CEM link up: S2 session opened");
        self.drain();
    }

    pub(super) fn on_frame(&mut self, frame: &Frame) {
        let Some(session) = self.session.as_mut() else {
            tracing::debug!(resource = %self.resource_id, kind = ?frame.kind(), "frame without a session; ignored");
            return;
        };
        session.handle_message(frame.message().clone(), self.now);
        self.drain();
        self.run_due();
        self.drain();
    }

    pub(super) fn link_lost(&mut self, reason: &str) {
        tracing::info!(resource = %self.resource_id, reason, "CEM link lost");
        match self.session.as_mut() {
            Some(session) => session.transport_closed(self.now),
            None => return,
        }
        self.drain();
        // In case the session was already closed and said nothing more.
        self.end_session();
    }

    pub(super) fn end_session(&mut self) {
        self.session = None;
        self.link = LinkState::Down;
        self.control = None;
        self.plan.clear();
    }

    /// Send what the session queued, then act on what it reported, until it is quiet or
    /// a write must be waited for.
    pub(super) fn drain(&mut self) {
        loop {
            self.flush();
            if self.busy {
                return;
            }
            let Some(event) = self.session.as_mut().and_then(RmSession::poll_event) else {
                return;
            };
            self.on_session_event(event);
        }
    }

    /// Move what the session queued to the outbox.
    pub(super) fn flush(&mut self) {
        let profile = self.profile.unwrap_or_default();
        let Some(session) = self.session.as_mut() else {
            return;
        };
        while let Some(out) = session.poll_transmit() {
            match Frame::from_own_text_as(out.text, profile) {
                Ok(frame) => self.outbox.push_back(Output::Bus(BusEvent::Frame(frame))),
                Err(error) => {
                    tracing::error!(resource = %self.resource_id, %error, "s2-kit produced a frame it cannot decode");
                }
            }
        }
    }

    fn on_session_event(&mut self, event: RmEvent) {
        let id = self.resource_id;
        match event {
            RmEvent::Negotiated { version, profile } => {
                tracing::info!(resource = %id, %version, "S2 protocol version agreed");
                self.link = LinkState::Connected(version.to_string());
                self.profile = Some(profile);
            }
            RmEvent::Ready { control_type } => self.on_selected(control_type),
            RmEvent::Deselected => {
                tracing::info!(resource = %id, "control type deselected");
                self.control = None;
                self.release("control type deselected");
                self.drop_waiting();
            }
            RmEvent::Instruction(instructed) => self.on_instruction(&instructed),
            RmEvent::Revoked {
                object_type,
                object_id,
            } => self.on_revoked(object_type, object_id),
            RmEvent::Closed { reason, .. } => self.on_closed(reason),
            RmEvent::Refused {
                kind,
                status,
                report,
            } => {
                self.repeats.warn("refused a message from the CEM", Instant::now(), || {
                    tracing::warn!(resource = %id, ?kind, ?status, %report, "refused a message from the CEM");
                });
            }
            RmEvent::Nacked {
                handle,
                status,
                diagnostic,
                ..
            } => {
                self.repeats.warn("the CEM refused a message", Instant::now(), || {
                    tracing::warn!(resource = %id, kind = ?handle.kind, ?status, ?diagnostic, "the CEM refused a message");
                });
            }
            RmEvent::AckTimedOut(handle) => {
                tracing::warn!(resource = %id, kind = ?handle.kind, "no ReceptionStatus from the CEM in time");
            }
            RmEvent::OutboundWarnings { kind, report } => {
                tracing::warn!(resource = %id, ?kind, %report, "own message has warnings");
            }
            RmEvent::SessionRequested {
                request,
                diagnostic,
            } => {
                tracing::info!(resource = %id, ?request, ?diagnostic, "the CEM asked to end the session");
            }
            other => tracing::debug!(resource = %id, event = ?other, "session event"),
        }
    }

    fn on_closed(&mut self, reason: CloseReason) {
        tracing::info!(resource = %self.resource_id, %reason, "S2 session closed");
        let close = match &reason {
            CloseReason::PeerRequested(SessionRequestType::Terminate) => Some(false),
            CloseReason::PeerRequested(SessionRequestType::Reconnect)
            | CloseReason::LocallyRequested(SessionRequestType::Reconnect) => Some(true),
            CloseReason::TransportClosed | CloseReason::Local => None,
            _ => Some(false),
        };
        self.release(&format!("session closed: {reason}"));
        if let Some(reconnect) = close {
            // The ReceptionStatus for the SessionRequest goes out before the close.
            self.flush();
            self.outbox.push_back(Output::Bus(BusEvent::Close {
                reconnect,
                reason: reason.to_string(),
            }));
        }
        self.end_session();
    }

    /// Ask the CEM for a new session, whose ResourceManagerDetails carry what is offered
    /// now: the one place S2 lets an RM change its offer.
    pub(super) fn request_reconnect(&mut self, allowed: bool) {
        let diagnostic = if allowed {
            "CEM control switched on locally: reconnect to see the new offer"
        } else {
            "CEM control switched off locally: reconnect to see the new offer"
        };
        if let Some(session) = self.session.as_mut()
            && let Err(error) = session.request_session(
                SessionRequestType::Reconnect,
                Some(diagnostic.to_string()),
                self.now,
            )
        {
            tracing::warn!(resource = %self.resource_id, %error, "could not ask the CEM to reconnect");
        }
        self.drain();
    }

    fn on_selected(&mut self, control_type: ControlType) {
        tracing::info!(resource = %self.resource_id, ?control_type, "control type selected");
        if self.control.is_some_and(|c| c != control_type) {
            self.release("control type changed");
            self.drop_waiting();
        }
        self.control = Some(control_type);
        let now = self.now;
        let descriptions = self
            .with_selected(|module, cx| module.describe(cx, now))
            .unwrap_or_default();
        for message in descriptions {
            self.send(message);
        }
        self.report_readings(true);
    }

    pub(super) fn send(&mut self, message: impl Into<Message>) {
        let message = message.into();
        let kind = message.kind();
        if let Some(session) = self.session.as_mut()
            && let Err(error) = session.send(message, self.now)
        {
            tracing::warn!(resource = %self.resource_id, ?kind, %error, "message not sent");
        }
    }

    pub(super) fn status(&mut self, instruction: Id, status: InstructionStatus) {
        if let Some(session) = self.session.as_mut()
            && let Err(error) = session.instruction_status(instruction, status, self.now)
        {
            tracing::warn!(resource = %self.resource_id, %instruction, ?status, %error, "status not sent");
        }
    }
}
