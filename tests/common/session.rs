//! The CEM's side of S2 sessions, whatever carries them: the one API the WebSocket
//! [`super::CemConn`] and the [`super::MqttCem`] share (both dereference to a [`CemSide`]),
//! so a scenario written against it runs over either.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use s2_kit::message::{Message, MessageKind};
use s2_kit::session::{CemEvent, CemSession, MessageHandle, Outgoing};
use s2_kit::types::common::{
    ControlType, InstructionStatus, ReceptionStatus, ResourceManagerDetails, RevokableObjects,
};
use s2_kit::types::{Id, ProtocolVersion, pebc};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{GUARD, Queue, assert_emitted_valid, total_power, within};

/// The CemEvents of one connection.
pub type Events = Queue<CemEvent>;
/// The raw JSON frames of one connection.
pub type Frames = Queue<Value>;

/// What one connection has seen, shared between its task and its handle.
#[derive(Debug, Default)]
pub(super) struct Log {
    /// Every text frame from the gateway, in order.
    pub(super) raw: Vec<String>,
    /// Every ReceptionStatus from the gateway.
    pub(super) receptions: Vec<ReceptionStatus>,
    /// Every frame this CEM sent: (message_type, message_id) where readable.
    pub(super) sent: Vec<(String, Option<String>)>,
    /// The agreed version.
    pub(super) version: Option<ProtocolVersion>,
}

pub(super) type Reply<T> = oneshot::Sender<T>;

/// What a test asks of the task that owns the `CemSession`.
pub(super) enum Cmd {
    Select(ControlType, Reply<Result<MessageHandle, String>>),
    Instruct(Box<Message>, Reply<Result<MessageHandle, String>>),
    Revoke(RevokableObjects, Id, Reply<Result<MessageHandle, String>>),
    Terminate(Reply<Result<MessageHandle, String>>),
    Raw(String, Reply<Result<(), String>>),
}

/// What carries the session, for the words of waits and failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// A WebSocket connection the gateway dialled.
    WebSocket,
    /// The gateway's S2-over-MQTT topics.
    Mqtt,
}

impl Carrier {
    /// The CEM, as failures name it.
    pub fn name(self) -> &'static str {
        match self {
            Carrier::WebSocket => "the CEM connection",
            Carrier::Mqtt => "the MQTT CEM",
        }
    }

    /// What the descriptions of waits end with, so a failure says which CEM waited.
    pub fn via(self) -> &'static str {
        match self {
            Carrier::WebSocket => "",
            Carrier::Mqtt => " over MQTT",
        }
    }
}

/// Where the task that owns the session reports.
pub(super) struct Pipes {
    pub(super) events: mpsc::UnboundedSender<CemEvent>,
    pub(super) raw: mpsc::UnboundedSender<Value>,
    pub(super) log: Arc<Mutex<Log>>,
}

/// The test's handle on a CEM's sessions: commands go to the task that owns the s2-kit
/// `CemSession`, events and frames come back as queues, and the log keeps everything.
pub struct CemSide {
    carrier: Carrier,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: Events,
    frames: Frames,
    log: Arc<Mutex<Log>>,
}

impl CemSide {
    /// A handle, and the ends its session task holds.
    pub(super) fn new(carrier: Carrier) -> (CemSide, mpsc::UnboundedReceiver<Cmd>, Pipes) {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let log: Arc<Mutex<Log>> = Arc::default();
        let side = CemSide {
            carrier,
            cmds: cmd_tx,
            events: Queue::new(ev_rx),
            frames: Queue::new(raw_rx),
            log: Arc::clone(&log),
        };
        let pipes = Pipes {
            events: ev_tx,
            raw: raw_tx,
            log,
        };
        (side, cmd_rx, pipes)
    }

    /// What carries the session.
    pub fn carrier(&self) -> Carrier {
        self.carrier
    }

    /// The session's CemEvents, to await by predicate.
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// The raw JSON frames from the gateway, to await by predicate.
    pub fn frames(&mut self) -> &mut Frames {
        &mut self.frames
    }

    /// The agreed protocol version, once negotiated.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.log.lock().unwrap().version.clone()
    }

    /// Every text frame received from the gateway so far.
    pub fn raw_frames(&self) -> Vec<String> {
        self.log.lock().unwrap().raw.clone()
    }

    /// Every ReceptionStatus received from the gateway so far.
    pub fn receptions(&self) -> Vec<ReceptionStatus> {
        self.log.lock().unwrap().receptions.clone()
    }

    /// Every frame this CEM sent: (message_type, message_id).
    pub fn sent(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().unwrap().sent.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> T {
        let name = self.carrier.name();
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .unwrap_or_else(|_| panic!("{name} has ended"));
        within(&format!("{name} task"), GUARD, rx)
            .await
            .unwrap_or_else(|_| panic!("{name} ended before answering"))
    }

    /// Select a control type (the session reports `Ready` when the gateway acknowledged).
    pub async fn select(&self, control_type: ControlType) -> MessageHandle {
        let name = self.carrier.name();
        self.call(|r| Cmd::Select(control_type, r))
            .await
            .unwrap_or_else(|e| panic!("{name} refused to select {control_type:?}: {e}"))
    }

    /// Send an instruction through the session (validated by s2-kit before it goes).
    pub async fn instruct(&self, message: impl Into<Message>) -> MessageHandle {
        let name = self.carrier.name();
        let message = message.into();
        let kind = message.kind();
        self.call(|r| Cmd::Instruct(Box::new(message), r))
            .await
            .unwrap_or_else(|e| panic!("{name} refused to send {kind:?}: {e}"))
    }

    /// Revoke an object this CEM published (an instruction).
    pub async fn revoke(&self, object_type: RevokableObjects, id: Id) -> MessageHandle {
        let name = self.carrier.name();
        self.call(|r| Cmd::Revoke(object_type, id, r))
            .await
            .unwrap_or_else(|e| panic!("{name} refused to revoke {id}: {e}"))
    }

    /// Send SessionRequest TERMINATE.
    pub async fn terminate(&self) -> MessageHandle {
        let name = self.carrier.name();
        self.call(Cmd::Terminate)
            .await
            .unwrap_or_else(|e| panic!("{name} refused to terminate: {e}"))
    }

    /// Put one text frame on the wire, bypassing the session (for bad input; WebSocket
    /// only).
    pub async fn send_raw(&self, text: impl Into<String>) {
        let text = text.into();
        self.call(|r| Cmd::Raw(text, r))
            .await
            .unwrap_or_else(|e| panic!("sending a raw frame failed: {e}"));
    }

    /// Like [`send_raw`](Self::send_raw), but a failed send is returned, not a failure:
    /// a frame over the gateway's hard cap may be cut off.
    pub async fn try_send_raw(&self, text: impl Into<String>) -> Result<(), String> {
        let text = text.into();
        self.call(|r| Cmd::Raw(text, r)).await
    }

    /// The ReceptionStatus for `subject`, whether it came long ago (from the log) or is
    /// still to come. For subjects that are answered once (not the nil UUID).
    pub async fn reception_for(&mut self, subject: &str, timeout: Duration) -> ReceptionStatus {
        let logged = self
            .receptions()
            .into_iter()
            .find(|r| r.subject_message_id.as_str() == subject);
        match logged {
            Some(status) => status,
            None => self.wait_reception(subject, timeout).await,
        }
    }

    /// The next ReceptionStatus for `subject` not yet taken by an earlier wait.
    pub async fn wait_reception(&mut self, subject: &str, timeout: Duration) -> ReceptionStatus {
        let via = self.carrier.via();
        let subject = subject.to_string();
        let value = self
            .frames
            .wait_for(
                &format!("a ReceptionStatus for {subject}{via}"),
                |v| v["message_type"] == "ReceptionStatus" && v["subject_message_id"] == *subject,
                timeout,
            )
            .await;
        match s2_kit::decode(&value.to_string()) {
            Ok(Message::ReceptionStatus(status)) => status,
            other => panic!("not a ReceptionStatus: {other:?}"),
        }
    }

    /// Wait for the handshake and the details: returns the agreed version and the details.
    pub async fn handshake(&mut self) -> (ProtocolVersion, ResourceManagerDetails) {
        let via = self.carrier.via();
        let version = self
            .events
            .wait_map(
                &format!("the protocol version to be agreed{via}"),
                |e| match e {
                    CemEvent::Negotiated { version, .. } => Some(version.clone()),
                    _ => None,
                },
                GUARD,
            )
            .await;
        let details = self
            .events
            .wait_map(
                &format!("ResourceManagerDetails{via}"),
                |e| match e {
                    CemEvent::ResourceDescribed(details) => Some((**details).clone()),
                    _ => None,
                },
                GUARD,
            )
            .await;
        (version, details)
    }

    /// Select `control_type` and wait until the gateway acknowledged it.
    pub async fn select_ready(&mut self, control_type: ControlType) {
        let via = self.carrier.via();
        self.select(control_type).await;
        self.events
            .wait_for(
                &format!("Ready({control_type:?}){via}"),
                |e| matches!(e, CemEvent::Ready { control_type: c } if *c == control_type),
                GUARD,
            )
            .await;
    }

    /// Select PEBC, wait until the gateway acknowledged it, and return the
    /// PowerConstraints it then describes.
    pub async fn select_pebc(&mut self, timeout: Duration) -> pebc::PowerConstraints {
        self.select_ready(ControlType::PowerEnvelopeBasedControl)
            .await;
        match self
            .wait_message(MessageKind::PebcPowerConstraints, timeout)
            .await
        {
            Message::PebcPowerConstraints(c) => *c,
            other => panic!("expected PEBC.PowerConstraints, got {:?}", other.kind()),
        }
    }

    /// The next description or status of `kind`.
    pub async fn wait_message(&mut self, kind: MessageKind, timeout: Duration) -> Message {
        let via = self.carrier.via();
        self.events
            .wait_map(
                &format!("{kind:?}{via}"),
                |e| match e {
                    CemEvent::Description { kind: k, message }
                    | CemEvent::Status { kind: k, message }
                        if *k == kind =>
                    {
                        Some(message.clone())
                    }
                    _ => None,
                },
                timeout,
            )
            .await
    }

    /// The next PowerMeasurement whose total electric power satisfies `pred`.
    pub async fn wait_power(
        &mut self,
        what: &str,
        pred: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> f64 {
        self.events
            .wait_map(
                what,
                |e| match e {
                    CemEvent::Measurement(m) => Some(total_power(m)).filter(|p| pred(*p)),
                    _ => None,
                },
                timeout,
            )
            .await
    }

    /// Wait for the InstructionStatusUpdate of `instruction` that reports `status`.
    pub async fn wait_instruction_status(
        &mut self,
        instruction: Id,
        status: InstructionStatus,
        timeout: Duration,
    ) {
        self.events
            .wait_for(
                &format!("InstructionStatusUpdate {status:?} for {instruction}"),
                |e| {
                    matches!(e, CemEvent::InstructionStatus(u)
                        if u.instruction_id == instruction && u.status_type == status)
                },
                timeout,
            )
            .await;
    }
}

impl Drop for CemSide {
    fn drop(&mut self) {
        check_on_drop(&self.log);
    }
}

/// Every session a test CEM saw is checked by every oracle when the test lets go of it
/// (unless the test is already failing: a second panic would hide the first).
fn check_on_drop(log: &Mutex<Log>) {
    if std::thread::panicking() {
        return;
    }
    let (version, frames) = {
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        (log.version.clone(), log.raw.clone())
    };
    if let Some(version) = version {
        assert_emitted_valid(version.as_str(), &frames);
    }
}

/// Log a frame the session queued for the gateway.
pub(super) fn record_transmit(log: &Mutex<Log>, out: &Outgoing) {
    log.lock().unwrap().sent.push((
        out.kind.as_str().to_string(),
        out.message_id.map(|id| id.as_str().to_string()),
    ));
}

/// Pass on what the session reported (noting the agreed version); whether there was any.
pub(super) fn drain_events(session: &mut CemSession, pipes: &Pipes) -> bool {
    let mut any = false;
    while let Some(event) = session.poll_event() {
        any = true;
        if let CemEvent::Negotiated { version, .. } = &event {
            pipes.log.lock().unwrap().version = Some(version.clone());
        }
        let _ = pipes.events.send(event);
    }
    any
}

/// Log a text frame from the gateway and pass it on as JSON.
pub(super) fn record_inbound(pipes: &Pipes, text: &str) {
    let mut log = pipes.log.lock().unwrap();
    log.raw.push(text.to_string());
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        if value["message_type"] == "ReceptionStatus"
            && let Ok(Message::ReceptionStatus(status)) = s2_kit::decode(text)
        {
            log.receptions.push(status);
        }
        let _ = pipes.raw.send(value);
    }
}

/// Log a text frame the test put on the wire past the session.
pub(super) fn record_sent_text(log: &Mutex<Log>, text: &str) {
    let (kind, id) = match serde_json::from_str::<Value>(text) {
        Ok(value) => (
            value["message_type"].as_str().unwrap_or("?").to_string(),
            value["message_id"].as_str().map(str::to_string),
        ),
        Err(_) => ("(not JSON)".to_string(), None),
    };
    log.lock().unwrap().sent.push((kind, id));
}
