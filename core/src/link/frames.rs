//! [`SessionFrames`]: the RM side's frames for one CEM-side link, sorted into sessions.
//!
//! See [the module](super) for the bus contract that makes the sorting decidable.

use std::collections::VecDeque;

use crate::s2::{Frame, MessageKind};

/// What to do with one frame from the RM side.
#[derive(Debug)]
pub enum Admission {
    /// It belongs to the open connection: send it.
    Send(Frame),
    /// It opens or continues the session of the next connection: kept until then.
    Queued,
    /// Kept, but the queue was full and its oldest frame was dropped.
    QueuedDroppingOldest,
    /// It belongs to a session whose connection is gone: dropped.
    Stale(Frame),
}

/// The RM side's frames for one CEM-side link, sorted into sessions.
#[derive(Debug)]
pub struct SessionFrames {
    /// Frames of the next session, waiting for its connection.
    queue: VecDeque<Frame>,
    limit: usize,
    /// Connections made since the RM side came up; the open (or last) one carries
    /// session number `connections`.
    connections: u64,
    /// Handshakes the RM side sent since it came up; its frames belong to session
    /// number `handshakes` (0: before any Handshake, which no connection carries).
    handshakes: u64,
    connected: bool,
}

impl SessionFrames {
    /// An empty book that keeps at most `limit` waiting frames.
    pub fn new(limit: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            limit: limit.max(1),
            connections: 0,
            handshakes: 0,
            connected: false,
        }
    }

    /// The RM side came up (or went down): its sessions are counted afresh and nothing
    /// it said before still waits.
    pub fn rm_changed(&mut self) {
        self.queue.clear();
        self.connections = 0;
        self.handshakes = 0;
    }

    /// A connection opened: the frames that waited for it, in order.
    pub fn connected(&mut self) -> VecDeque<Frame> {
        self.connections += 1;
        self.connected = true;
        let waiting = std::mem::take(&mut self.queue);
        // Only frames of session `connections` wait (see `admit`), so all of them go.
        debug_assert!(self.handshakes <= self.connections);
        waiting
    }

    /// The connection closed: what the RM sends for its session from now on is stale.
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.queue.clear();
    }

    /// Sort one frame from the RM side.
    pub fn admit(&mut self, frame: Frame) -> Admission {
        if frame.kind() == MessageKind::Handshake {
            self.handshakes += 1;
        }
        let session = self.handshakes;
        if self.connected {
            if session < self.connections {
                return Admission::Stale(frame);
            }
            // A second Handshake within one connection is the RM's own doing (a native RM
            // may restart its session): follow it rather than lose count.
            self.connections = session;
            return Admission::Send(frame);
        }
        if session <= self.connections {
            return Admission::Stale(frame);
        }
        if frame.kind() == MessageKind::Handshake && !self.queue.is_empty() {
            // A newer session replaces one that never got its connection.
            self.queue.clear();
        }
        self.handshakes = self.connections + 1;
        self.queue.push_back(frame);
        if self.queue.len() > self.limit {
            self.queue.pop_front();
            return Admission::QueuedDroppingOldest;
        }
        Admission::Queued
    }

    /// How many frames wait.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s2::{
        CommodityQuantity, EnergyManagementRole, Message, PowerMeasurement, PowerValue, Timestamp,
        mint_id, offered_versions,
    };
    use s2_kit::types::common::Handshake;

    fn handshake() -> Frame {
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

    fn kinds(frames: &VecDeque<Frame>) -> Vec<MessageKind> {
        frames.iter().map(Frame::kind).collect()
    }

    #[test]
    fn a_native_rms_handshake_waits_for_the_first_connection() {
        let mut book = SessionFrames::new(8);
        book.rm_changed();
        assert!(matches!(book.admit(handshake()), Admission::Queued));
        assert!(matches!(book.admit(measurement()), Admission::Queued));
        let waiting = book.connected();
        assert_eq!(
            kinds(&waiting),
            [MessageKind::Handshake, MessageKind::PowerMeasurement]
        );
        assert!(matches!(book.admit(measurement()), Admission::Send(_)));
    }

    #[test]
    fn frames_of_a_closed_connection_never_reach_the_next() {
        let mut book = SessionFrames::new(8);
        book.rm_changed();
        assert!(book.connected().is_empty());
        book.disconnected();
        // The RM answered the first connection's Up only after it closed.
        assert!(matches!(book.admit(handshake()), Admission::Stale(_)));
        assert!(matches!(book.admit(measurement()), Admission::Stale(_)));
        assert!(book.connected().is_empty());
        // Still late: the first session's frames arrive after the second connection.
        assert!(matches!(book.admit(measurement()), Admission::Stale(_)));
        // The answer to the second Up.
        assert!(matches!(book.admit(handshake()), Admission::Send(_)));
        assert!(matches!(book.admit(measurement()), Admission::Send(_)));
    }

    #[test]
    fn a_frame_before_any_handshake_is_stale() {
        let mut book = SessionFrames::new(8);
        assert!(matches!(book.admit(measurement()), Admission::Stale(_)));
        assert_eq!(book.waiting(), 0);
    }

    #[test]
    fn a_newer_waiting_session_replaces_an_older_one() {
        let mut book = SessionFrames::new(8);
        assert!(matches!(book.admit(handshake()), Admission::Queued));
        assert!(matches!(book.admit(measurement()), Admission::Queued));
        assert!(matches!(book.admit(handshake()), Admission::Queued));
        assert_eq!(kinds(&book.connected()), [MessageKind::Handshake]);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_frame() {
        let mut book = SessionFrames::new(2);
        book.admit(handshake());
        book.admit(measurement());
        assert!(matches!(
            book.admit(measurement()),
            Admission::QueuedDroppingOldest
        ));
        assert_eq!(book.waiting(), 2);
    }

    #[test]
    fn the_rm_coming_back_starts_the_count_again() {
        let mut book = SessionFrames::new(8);
        book.admit(handshake());
        book.connected();
        book.disconnected();
        book.rm_changed();
        assert!(matches!(book.admit(handshake()), Admission::Queued));
        assert_eq!(kinds(&book.connected()), [MessageKind::Handshake]);
    }
}
