//! The gateway's one door to `s2-kit` (pinned `=0.3.0`).
//!
//! Everything S2 the rest of s2gw touches comes through here (only this crate depends on
//! s2-kit outside tests, which also use its `testing` oracles), so a future s2-kit
//! upgrade is one module's work. It adds two things of ours: [`Frame`], a typed message together
//! with the exact bytes that carried it, and [`Edge`], the check every frame passes where
//! it enters from a transport.

use std::sync::Arc;

use s2_kit::session::core::Registry;
use s2_kit::validate::{Phase, Report, Validate, rules};

use remembered::{SeenIds, Windows};

mod remembered;

pub use s2_kit::codec::{DecodeError, DecodeOptions};
pub use s2_kit::message::{Message, MessageKind};
pub use s2_kit::session::{
    Analyzer, CemConfig, CemEvent, CemSession, CloseReason, Instructed, RmConfig, RmEvent,
    RmSession, SendError, SessionState,
};
pub use s2_kit::types::common::{
    Commodity, CommodityQuantity, ControlType, EnergyManagementRole, Handshake, HandshakeResponse,
    InstructionStatus, InstructionStatusUpdate, NumberRange, PowerForecastValue, PowerMeasurement,
    PowerRange, PowerValue, ReceptionStatus, ReceptionStatusValues, ResourceManagerDetails,
    RevokableObjects, Role, RoleType, SessionRequest, SessionRequestType, Timer, Transition,
};
pub use s2_kit::types::{Duration, Id, ProtocolVersion, Timestamp, WireProfile};
pub use s2_kit::types::{ddbc, frbc, ombc, pebc, ppbc};
pub use s2_kit::{decode, encode};

/// S2 Connect 1.0: discovery, pairing and session initiation (feature `connect`).
///
/// s2-kit's state machines and HTTPS drivers, re-exported so the s2connect adapter reaches
/// them through this door like everything else S2.
#[cfg(feature = "connect")]
pub mod connect {
    pub use s2_kit::connect::client::{
        Error as ClientError, LanClient, Paired, Pairing, Session, Status,
    };
    pub use s2_kit::connect::discovery;
    pub use s2_kit::connect::proto::dnssd;
    pub use s2_kit::connect::proto::{
        AccessToken, CommunicationToken, ConnectError, ConnectionDetails, Deployment,
        EndpointDescription, NodeDescription, NodeId, NodeIdAlias, PairingCode, PairingToken, Role,
        SessionCredentials, TokenKind, TokenStore, WaitAction, WaitErrorMessage, WaitForPairing,
        WaitInstruction,
    };
    pub use s2_kit::connect::server;
    pub use s2_kit::connect::tls::{
        CapturedIdentity, Fingerprint, SelfSignedEndpoint, TlsClient, TlsPolicy,
    };
    pub use s2_kit::types::Timestamp;
}

/// The largest frame accepted from a transport unless configured otherwise: 1 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// The protocol versions the gateway offers in its Handshake, most preferred first.
///
/// `0.0.2-beta` is what every deployed peer (s2-python, `s2energy`) speaks; `1.0.0` is
/// s2-kit's. The CEM picks; each session follows its pick.
pub fn offered_versions() -> Vec<ProtocolVersion> {
    vec![ProtocolVersion::V1_0_0, ProtocolVersion::V0_0_2_BETA]
}

/// A fresh identifier for anything the gateway mints.
///
/// Always a UUID: the schema allows more, but s2-python and `s2energy` parse ids as UUIDs
/// and drop the session otherwise.
pub fn mint_id() -> Id {
    Id::generate()
}

/// One S2 message as it crosses the bus: decoded, checked, and with the exact text that
/// carried it, so a proxy forwards the peer's bytes unchanged.
#[derive(Debug, Clone)]
pub struct Frame {
    message: Arc<Message>,
    text: Arc<str>,
}

impl Frame {
    /// Encode a message the gateway produced.
    pub fn new(message: Message) -> Self {
        let text = encode(&message);
        Self {
            message: Arc::new(message),
            text: text.into(),
        }
    }

    /// Pair an already-decoded message with its wire text.
    pub fn from_parts(message: Message, text: impl Into<Arc<str>>) -> Self {
        Self {
            message: Arc::new(message),
            text: text.into(),
        }
    }

    /// Decode trusted text that this process encoded itself (an s2-kit session's output).
    pub fn from_own_text(text: String) -> Result<Self, Box<DecodeError>> {
        Self::from_own_text_as(text, WireProfile::default())
    }

    /// Like [`Frame::from_own_text`], for a session that agreed on `profile` (the
    /// versions differ in DDBC).
    pub fn from_own_text_as(text: String, profile: WireProfile) -> Result<Self, Box<DecodeError>> {
        let options = DecodeOptions {
            profile,
            ..DecodeOptions::default()
        };
        let message = s2_kit::codec::decode_with(&text, &options)
            .map_err(Box::new)?
            .message;
        Ok(Self::from_parts(message, text))
    }

    /// The typed message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The exact text on the wire.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The message type.
    pub fn kind(&self) -> MessageKind {
        self.message.kind()
    }

    /// The message's own id (`None` for a ReceptionStatus).
    pub fn id(&self) -> Option<Id> {
        self.message.id()
    }
}

/// Why an inbound frame was refused at the edge, and the answer owed for it.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// What the frame claimed to be, where that could be read.
    pub kind: Option<MessageKind>,
    /// The status the sender gets.
    pub status: ReceptionStatusValues,
    /// The refused message's id, or the nil UUID when there was none to read.
    pub subject: Id,
    /// Why, with s2-kit's rule id where there is one.
    pub diagnostic: String,
}

impl Rejection {
    /// A frame that could not be read as S2 text at all (binary, not UTF-8): INVALID_DATA
    /// with the nil subject, as for any frame without a readable id.
    pub fn unreadable(diagnostic: String) -> Self {
        Self {
            kind: None,
            status: ReceptionStatusValues::InvalidData,
            subject: Id::NIL,
            diagnostic,
        }
    }

    /// The ReceptionStatus to send back, or `None` for a refused ReceptionStatus (a
    /// ReceptionStatus is never answered).
    pub fn reply(&self) -> Option<Frame> {
        if self.kind == Some(MessageKind::ReceptionStatus) {
            return None;
        }
        Some(Frame::new(Message::ReceptionStatus(ReceptionStatus {
            subject_message_id: self.subject,
            status: self.status,
            diagnostic_label: Some(truncate(&self.diagnostic, 240)),
        })))
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The check at a transport edge: one per connection (one S2 session).
///
/// Decodes every inbound frame strictly against the session's wire profile and runs
/// s2-kit's semantic rules with the whole conversation as context, so a reference to an id
/// the other side never announced is refused here (INVALID_CONTENT) and never reaches the
/// bus. Outbound frames are shown to it too, because what the far side may reference is
/// what this side announced.
#[derive(Debug)]
pub struct Edge {
    observer: Observer,
    peer: EnergyManagementRole,
    max_bytes: usize,
    /// The versions the peer's own Handshake listed, once it sent one.
    peer_versions: Option<Vec<ProtocolVersion>>,
    /// Whether the CEM's HandshakeResponse was accepted in this session.
    handshake_done: bool,
    /// Quirks seen in this session, and those not yet taken by [`Edge::take_quirks`].
    quirks_seen: Vec<Quirk>,
    quirks_new: Vec<Quirk>,
}

/// A departure from the letter of S2 JSON that real peers make and the gateway tolerates.
/// Each is worth one log line per session: it explains an oddity without flooding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quirk {
    /// `"diagnostic_label": null` in a ReceptionStatus (the schema says string; seen from
    /// s2-python CEMs).
    NullDiagnosticLabel,
    /// A CEM that answered the RM's Handshake with a HandshakeResponse but never sent a
    /// Handshake of its own.
    NoCemHandshake,
    /// A CEM that selected a version its own Handshake did not list: the highest one
    /// offered, while it speaks an older one's models.
    SelectedUnlistedVersion,
}

impl std::fmt::Display for Quirk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Quirk::NullDiagnosticLabel => "ReceptionStatus with diagnostic_label null",
            Quirk::NoCemHandshake => "the CEM sent no Handshake of its own",
            Quirk::SelectedUnlistedVersion => {
                "the CEM selected a protocol version its own Handshake did not list"
            }
        })
    }
}

impl Edge {
    /// An edge facing a peer in `peer` role, refusing frames over `max_bytes`.
    pub fn new(peer: EnergyManagementRole, max_bytes: usize) -> Self {
        Self {
            observer: Observer::new(),
            peer,
            max_bytes,
            peer_versions: None,
            handshake_done: false,
            quirks_seen: Vec::new(),
            quirks_new: Vec::new(),
        }
    }

    /// Quirks seen for the first time in this session since the last call.
    pub fn take_quirks(&mut self) -> Vec<Quirk> {
        std::mem::take(&mut self.quirks_new)
    }

    /// Judge one inbound text frame.
    pub fn inbound(&mut self, text: &str, now: Timestamp) -> Result<Frame, Rejection> {
        if text.len() > self.max_bytes {
            return Err(Rejection {
                kind: None,
                status: ReceptionStatusValues::InvalidData,
                subject: Id::NIL,
                diagnostic: format!(
                    "frame of {} bytes exceeds the {} byte limit",
                    text.len(),
                    self.max_bytes
                ),
            });
        }
        let observed = self.observer.observe(self.peer, text, now);
        let status = observed.status;
        let diagnostic = observed.report.diagnostic_label();
        match observed.message {
            Some(message) if status == ReceptionStatusValues::Ok => {
                if let Some(rejection) = self.after_the_handshake(&message) {
                    return Err(rejection);
                }
                self.follow_profile(&message);
                self.notice_quirks(&message, text);
                Ok(Frame::from_parts(message, text))
            }
            message => {
                let peek = s2_kit::codec::peek(text).ok();
                let subject = message
                    .as_ref()
                    .and_then(Message::id)
                    .or_else(|| peek.as_ref().map(s2_kit::codec::Peek::subject))
                    .unwrap_or(Id::NIL);
                Err(Rejection {
                    kind: observed.kind,
                    status: if status == ReceptionStatusValues::Ok {
                        ReceptionStatusValues::InvalidMessage
                    } else {
                        status
                    },
                    subject,
                    diagnostic: diagnostic.unwrap_or_else(|| "refused".to_string()),
                })
            }
        }
    }

    /// Record a frame this side sent, so the ids it announced are known.
    pub fn outbound(&mut self, frame: &Frame, now: Timestamp) {
        // What this side says needs no verdict (nobody would read it), only to be known:
        // the frame's message is already typed, so it is folded in without a parse.
        self.observer.record_own(frame.message(), now);
        self.follow_profile(frame.message());
    }

    fn notice_quirks(&mut self, message: &Message, text: &str) {
        let quirk = match message {
            // Present in the text, absent in the model: it was null.
            Message::ReceptionStatus(status)
                if status.diagnostic_label.is_none() && text.contains("\"diagnostic_label\"") =>
            {
                Some(Quirk::NullDiagnosticLabel)
            }
            Message::Handshake(handshake) => {
                self.peer_versions = Some(
                    handshake
                        .supported_protocol_versions
                        .clone()
                        .unwrap_or_default(),
                );
                None
            }
            Message::HandshakeResponse(response) if self.peer == EnergyManagementRole::Cem => {
                match &self.peer_versions {
                    None => Some(Quirk::NoCemHandshake),
                    Some(listed)
                        if !listed.is_empty()
                            && !listed
                                .iter()
                                .any(|v| v.matches(&response.selected_protocol_version)) =>
                    {
                        Some(Quirk::SelectedUnlistedVersion)
                    }
                    Some(_) => None,
                }
            }
            _ => None,
        };
        if let Some(quirk) = quirk
            && !self.quirks_seen.contains(&quirk)
        {
            self.quirks_seen.push(quirk);
            self.quirks_new.push(quirk);
        }
    }

    /// A CEM's HandshakeResponse ends the handshake; another one later is refused here,
    /// so it never reaches the RM's session, which would end on it: no frame ends a session
    /// but a SessionRequest, a failed handshake or the transport.
    fn after_the_handshake(&mut self, message: &Message) -> Option<Rejection> {
        let Message::HandshakeResponse(response) = message else {
            return None;
        };
        if self.peer != EnergyManagementRole::Cem {
            return None;
        }
        if !self.handshake_done {
            self.handshake_done = true;
            return None;
        }
        Some(Rejection {
            kind: Some(MessageKind::HandshakeResponse),
            status: ReceptionStatusValues::InvalidContent,
            subject: response.message_id,
            diagnostic: "the handshake is over: a later HandshakeResponse is refused and the \
                         session goes on"
                .to_string(),
        })
    }

    fn follow_profile(&mut self, message: &Message) {
        if let Message::HandshakeResponse(response) = message
            && let Some(profile) = response.selected_protocol_version.wire_profile()
        {
            self.observer.profile = profile;
        }
    }
}

/// s2-kit's [`Analyzer`] in its strict form (the same registry, phase, seen ids and
/// checks, through s2-kit's public parts), with one JSON parse per frame instead of two,
/// and remembering fewer identifiers (see [`remembered`]).
///
/// `Analyzer::observe` decodes through `decode_with`, which first peeks at the whole
/// text for `message_type` and the ids and then parses it again into the typed message:
/// the peek is there so that a frame that fails can still be named in its refusal. Here
/// the typed parse runs first, and the peek (all of `decode_with`) only for a frame it
/// did not accept, so a refusal carries exactly s2-kit's error. On a PowerMeasurement
/// the peek was a fifth of the edge's cost. A test replays conversations through both
/// and requires the same verdict, message and diagnostic; others show where the shorter
/// memory makes a difference.
#[derive(Debug)]
struct Observer {
    registry: Registry,
    profile: WireProfile,
    phase: Phase,
    seen: SeenIds,
    windows: Windows,
}

/// What [`Observer::observe`] made of one frame: the parts of s2-kit's `Observed` the
/// edge reads.
#[derive(Debug)]
struct Verdict {
    kind: Option<MessageKind>,
    message: Option<Message>,
    report: Report,
    status: ReceptionStatusValues,
}

impl Observer {
    /// Clock skew a timestamp may show before it is reported: s2-kit's analyzer default.
    const SKEW_TOLERANCE: Duration = Duration::from_secs(30);

    fn new() -> Self {
        // As `Analyzer::new`: v1.0.0 until a HandshakeResponse says otherwise, and the
        // `Connected` row, where a Handshake is legal too.
        Self {
            registry: Registry::default(),
            profile: WireProfile::V1_0_0,
            phase: Phase::Connected,
            seen: SeenIds::default(),
            windows: Windows::default(),
        }
    }

    fn observe(&mut self, sender: EnergyManagementRole, text: &str, now: Timestamp) -> Verdict {
        // A description whose `valid_from` has arrived is in force before this message is
        // judged against it.
        let _ = self.registry.activate_due(now);
        let message = match self.decode(text) {
            Ok(message) => message,
            Err(error) => {
                let mut report = Report::new();
                report.push(rules::DECODE_FAILED, "", error.to_string());
                return Verdict {
                    kind: error.peek().and_then(|p| p.kind),
                    message: None,
                    report,
                    status: error.status_value(),
                };
            }
        };
        let report = {
            // s2-kit's context takes the seen ids as a slice it scans; handing it only the
            // id itself when it is a repeat makes its own rule fire, in its own place in
            // the report, without the scan.
            let repeated = message.id().filter(|id| self.seen.contains(id));
            let seen = repeated.as_slice();
            let ctx = self.registry.context(
                self.profile,
                sender,
                self.phase,
                false,
                now,
                seen,
                Self::SKEW_TOLERANCE,
            );
            message.validate(&ctx)
        };
        let status = report.reception_status();
        // Refused or not, what was said is part of the conversation, as in the analyzer.
        self.record(&message, now);
        Verdict {
            kind: Some(message.kind()),
            message: Some(message),
            report,
            status,
        }
    }

    /// `decode_with`, strictly, against the session's profile: the typed parse alone for
    /// a frame that passes it, `decode_with` itself (peek, parse, error) for one that
    /// does not.
    fn decode(&self, text: &str) -> Result<Message, Box<DecodeError>> {
        let options = DecodeOptions {
            profile: self.profile,
            ..DecodeOptions::default()
        };
        if text.len() <= options.max_bytes
            && let Some(message) = parse_typed(text)
            && message.kind().exists_in(self.profile)
            && fits_profile(&message, self.profile)
        {
            return Ok(message);
        }
        s2_kit::codec::decode_with(text, &options)
            .map(|decoded| decoded.message)
            .map_err(Box::new)
    }

    /// Fold in a message this side sent: as [`Observer::observe`] does, without the
    /// parse and the checks whose report nobody reads.
    fn record_own(&mut self, message: &Message, now: Timestamp) {
        let _ = self.registry.activate_due(now);
        self.record(message, now);
    }

    /// Fold a message into what is known, whichever direction it went (as
    /// `Analyzer::record`).
    fn record(&mut self, message: &Message, now: Timestamp) {
        match message {
            // Active from the moment it is selected: the acknowledgement may not be seen.
            Message::SelectControlType(select) => {
                self.phase = Phase::selected(select.control_type);
            }
            Message::RevokeObject(revoke) => {
                self.registry.revoke(revoke.object_type, revoke.object_id);
            }
            _ => self.registry.record(message, Some(now)),
        }
        self.windows.after_record(message, &mut self.registry);
        if let Some(id) = message.id() {
            self.seen.insert(id);
        }
    }
}

/// The typed parse of `decode_with`, `serde_json::from_str::<Message>`, in one pass
/// where it can be: `None` where it fails.
///
/// s2-kit's `Message` is tagged by its `message_type` property, which serde can only find
/// by buffering the whole message into an untyped tree first and then reading the typed
/// one out of that: two passes over a large description. Every encoder we know (s2-kit,
/// s2-python's pydantic models) writes `message_type` first, and then the rest of the
/// object can go straight into the message's own type. Anything else (the tag later,
/// escaped, absent, or an error anywhere) takes s2-kit's own path, so this only ever
/// accepts what that path accepts: the message types refuse unknown properties, a second
/// `message_type` among them.
fn parse_typed(text: &str) -> Option<Message> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let direct = serde::Deserializer::deserialize_map(&mut deserializer, TagFirst)
        .ok()
        .flatten();
    match direct {
        Some(message) if deserializer.end().is_ok() => Some(message),
        _ => serde_json::from_str::<Message>(text).ok(),
    }
}

/// The visitor of [`parse_typed`]: `Ok(None)` when the first property is not a
/// `message_type` naming a message kind.
struct TagFirst;

impl<'de> serde::de::Visitor<'de> for TagFirst {
    type Value = Option<Message>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an S2 message")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        if map.next_key::<&str>()? != Some("message_type") {
            return Ok(None);
        }
        let Some(kind) = MessageKind::from_wire(map.next_value::<&str>()?) else {
            return Ok(None);
        };
        let rest = serde::de::value::MapAccessDeserializer::new(map);
        macro_rules! each_kind {
            ($($kind:ident),* $(,)?) => {
                match kind {
                    $(MessageKind::$kind => {
                        Message::$kind(serde::Deserialize::deserialize(rest)?)
                    })*
                    // A kind this s2-kit knows and the list does not: its own path.
                    #[allow(unreachable_patterns)]
                    _ => return Ok(None),
                }
            };
        }
        let message = each_kind!(
            Handshake,
            HandshakeResponse,
            ResourceManagerDetails,
            SelectControlType,
            SessionRequest,
            ReceptionStatus,
            InstructionStatusUpdate,
            PowerMeasurement,
            PowerForecast,
            RevokeObject,
            PebcPowerConstraints,
            PebcEnergyConstraint,
            PebcInstruction,
            PpbcPowerProfileDefinition,
            PpbcPowerProfileStatus,
            PpbcScheduleInstruction,
            PpbcStartInterruptionInstruction,
            PpbcEndInterruptionInstruction,
            OmbcSystemDescription,
            OmbcStatus,
            OmbcTimerStatus,
            OmbcInstruction,
            FrbcSystemDescription,
            FrbcStorageStatus,
            FrbcActuatorStatus,
            FrbcTimerStatus,
            FrbcLeakageBehaviour,
            FrbcUsageForecast,
            FrbcFillLevelTargetProfile,
            FrbcInstruction,
            DdbcSystemDescription,
            DdbcActuatorStatus,
            DdbcTimerStatus,
            DdbcAverageDemandRateForecast,
            DdbcPresentDemandStatus,
            DdbcInstruction,
        );
        // The list pairs kind and variant by name; a pair that disagreed would be refused
        // here rather than believed.
        Ok((message.kind() == kind).then_some(message))
    }
}

/// The one check `decode_with` makes after the typed parse: the two wire profiles
/// differ in whether a DDBC.SystemDescription carries `present_demand_rate`.
fn fits_profile(message: &Message, profile: WireProfile) -> bool {
    match message {
        Message::DdbcSystemDescription(description) => {
            description.present_demand_rate.is_some()
                == profile.ddbc_system_description_carries_demand_rate()
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        Timestamp::now()
    }

    #[test]
    fn not_json_is_invalid_data_with_the_nil_subject() {
        let mut edge = Edge::new(EnergyManagementRole::Cem, DEFAULT_MAX_FRAME_BYTES);
        let err = edge.inbound("hello", now()).unwrap_err();
        assert_eq!(err.status, ReceptionStatusValues::InvalidData);
        assert_eq!(err.subject, Id::NIL);
        assert!(err.reply().is_some());
    }

    #[test]
    fn schema_failure_is_invalid_message_naming_the_message() {
        let mut edge = Edge::new(EnergyManagementRole::Cem, DEFAULT_MAX_FRAME_BYTES);
        let text = r#"{"message_type":"SelectControlType","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000001","control_type":"NOPE"}"#;
        let err = edge.inbound(text, now()).unwrap_err();
        assert_eq!(err.status, ReceptionStatusValues::InvalidMessage);
        assert_eq!(err.subject.as_str(), "3d0a7e1c-1111-4a2b-9c3d-000000000001");
    }

    #[test]
    fn oversize_frames_are_refused_before_parsing() {
        let mut edge = Edge::new(EnergyManagementRole::Cem, 64);
        let err = edge.inbound(&"x".repeat(65), now()).unwrap_err();
        assert_eq!(err.status, ReceptionStatusValues::InvalidData);
        assert!(err.diagnostic.contains("exceeds"));
    }

    #[test]
    fn a_refused_reception_status_is_not_answered() {
        let mut edge = Edge::new(EnergyManagementRole::Cem, DEFAULT_MAX_FRAME_BYTES);
        let err = edge
            .inbound(
                r#"{"message_type":"ReceptionStatus","status":"BOGUS"}"#,
                now(),
            )
            .unwrap_err();
        assert!(err.reply().is_none());
    }

    const CEM_HANDSHAKE_OLD: &str = r#"{"message_type":"Handshake","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000010","role":"CEM","supported_protocol_versions":["0.0.2-beta"]}"#;
    const SELECT_NEW: &str = r#"{"message_type":"HandshakeResponse","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000011","selected_protocol_version":"1.0.0"}"#;

    fn null_label(n: u8) -> String {
        format!(
            r#"{{"message_type":"ReceptionStatus","subject_message_id":"3d0a7e1c-1111-4a2b-9c3d-0000000000{n:02}","status":"OK","diagnostic_label":null}}"#
        )
    }

    #[test]
    fn a_null_diagnostic_label_is_accepted_and_noticed_once_per_session() {
        let mut edge = Edge::new(EnergyManagementRole::Cem, DEFAULT_MAX_FRAME_BYTES);
        assert!(edge.inbound(&null_label(1), now()).is_ok());
        assert_eq!(edge.take_quirks(), [Quirk::NullDiagnosticLabel]);
        assert!(edge.inbound(&null_label(2), now()).is_ok());
        assert!(edge.take_quirks().is_empty(), "once per session");
        let mut next_session = Edge::new(EnergyManagementRole::Cem, DEFAULT_MAX_FRAME_BYTES);
        assert!(next_session.inbound(&null_label(3), now()).is_ok());
        assert_eq!(next_session.take_quirks(), [Quirk::NullDiagnosticLabel]);
    }

    #[test]
    fn a_handshake_response_without_the_cems_handshake_is_accepted_and_noticed() {
        let mut edge = Edge::new(EnergyManagementRole::Cem, DEFAULT_MAX_FRAME_BYTES);
        assert!(edge.inbound(SELECT_NEW, now()).is_ok());
        assert_eq!(edge.take_quirks(), [Quirk::NoCemHandshake]);
    }

    #[test]
    fn selecting_a_version_the_cem_did_not_list_is_accepted_and_noticed() {
        let mut edge = Edge::new(EnergyManagementRole::Cem, DEFAULT_MAX_FRAME_BYTES);
        assert!(edge.inbound(CEM_HANDSHAKE_OLD, now()).is_ok());
        assert!(edge.inbound(SELECT_NEW, now()).is_ok());
        assert_eq!(edge.take_quirks(), [Quirk::SelectedUnlistedVersion]);
    }

    /// Regression: a mutated HandshakeResponse naming a version never offered, sent
    /// mid-session, ended the session.
    #[test]
    fn a_handshake_response_after_the_handshake_is_refused_and_the_session_goes_on() {
        let mut edge = Edge::new(EnergyManagementRole::Cem, DEFAULT_MAX_FRAME_BYTES);
        assert!(edge.inbound(CEM_HANDSHAKE_OLD, now()).is_ok());
        assert!(edge.inbound(SELECT_NEW, now()).is_ok());
        let late = SELECT_NEW
            .replace("000000000011", "000000000012")
            .replace("\"1.0.0\"", "\"NaN\"");
        let err = edge.inbound(&late, now()).unwrap_err();
        assert_eq!(err.status, ReceptionStatusValues::InvalidContent);
        assert_eq!(err.subject.as_str(), "3d0a7e1c-1111-4a2b-9c3d-000000000012");
        assert!(
            err.diagnostic.contains("handshake is over"),
            "{}",
            err.diagnostic
        );
        assert!(err.reply().is_some());
        // The session goes on: the next message is judged as before.
        assert!(edge.inbound(&null_label(4), now()).is_ok());
    }

    #[test]
    fn a_conforming_cem_shows_no_quirk() {
        let mut edge = Edge::new(EnergyManagementRole::Cem, DEFAULT_MAX_FRAME_BYTES);
        let hello = CEM_HANDSHAKE_OLD.replace(r#"["0.0.2-beta"]"#, r#"["0.0.2-beta","1.0.0"]"#);
        assert!(edge.inbound(&hello, now()).is_ok());
        assert!(edge.inbound(SELECT_NEW, now()).is_ok());
        assert!(edge.take_quirks().is_empty());
    }

    /// Texts that decode, fail to decode in each of `decode_with`'s ways, or decode and
    /// break a rule only the conversation can show, in an order that exercises the state.
    /// The test conversations' message and object ids, by number.
    fn id(n: u32) -> String {
        format!("3d0a7e1c-1111-4a2b-9c3d-{n:012}")
    }

    /// An RM's FRBC.SystemDescription: actuator `id(21)` with operation mode `id(22)`.
    fn frbc_description() -> String {
        format!(
            r#"{{"message_type":"FRBC.SystemDescription","message_id":"{}","valid_from":"2024-01-01T00:00:00Z","actuators":[{{"id":"{}","supported_commodities":["ELECTRICITY"],"operation_modes":[{{"id":"{}","elements":[{{"fill_level_range":{{"start_of_range":0,"end_of_range":100}},"fill_rate":{{"start_of_range":0,"end_of_range":0.001}},"power_ranges":[{{"start_of_range":0,"end_of_range":5000,"commodity_quantity":"ELECTRIC.POWER.3_PHASE_SYMMETRIC"}}]}}],"abnormal_condition_only":false}}],"transitions":[],"timers":[]}}],"storage":{{"provides_leakage_behaviour":false,"provides_fill_level_target_profile":false,"provides_usage_forecast":false,"fill_level_range":{{"start_of_range":0,"end_of_range":100}}}}}}"#,
            id(20),
            id(21),
            id(22)
        )
    }

    /// A CEM's FRBC.Instruction for `actuator`, in operation mode `id(22)`.
    fn frbc_instruction(message: u32, instruction: u32, actuator: u32) -> String {
        format!(
            r#"{{"message_type":"FRBC.Instruction","message_id":"{}","id":"{}","actuator_id":"{}","operation_mode":"{}","operation_mode_factor":0.5,"execution_time":"2024-01-01T12:00:00Z","abnormal_condition":false}}"#,
            id(message),
            id(instruction),
            id(actuator),
            id(22)
        )
    }

    fn select_frbc() -> String {
        format!(
            r#"{{"message_type":"SelectControlType","message_id":"{}","control_type":"FILL_RATE_BASED_CONTROL"}}"#,
            id(30)
        )
    }

    fn conversation() -> Vec<(EnergyManagementRole, String)> {
        use EnergyManagementRole::{Cem, Rm};
        let measurement = encode(&Message::PowerMeasurement(PowerMeasurement {
            message_id: Id::parse(&id(1)).unwrap(),
            measurement_timestamp: now(),
            values: vec![PowerValue {
                commodity_quantity: CommodityQuantity::ElectricPowerL1,
                value: 1200.5,
            }],
        }));
        let ddbc = |demand: Option<f64>| {
            encode(&Message::DdbcSystemDescription(Box::new(
                ddbc::SystemDescription {
                    message_id: mint_id(),
                    valid_from: now(),
                    actuators: vec![],
                    present_demand_rate: demand.map(NumberRange::exactly),
                    provides_average_demand_rate_forecast: false,
                },
            )))
        };
        let description = frbc_description();
        let instruction = frbc_instruction;
        let select = select_frbc();
        let mut texts = vec![
            (Rm, "hello".to_string()),
            (Rm, String::new()),
            (Rm, "[]".to_string()),
            (Rm, "null".to_string()),
            (Rm, "{}".to_string()),
            (Rm, r#"["PowerMeasurement"]"#.to_string()),
            (Rm, format!(r#"["PowerMeasurement","{}"]"#, id(2))),
            (Rm, r#"{"message_type":"PowerMeasurement"}"#.to_string()),
            (
                Rm,
                r#"{"message_type":"Nope","message_id":"x"}"#.to_string(),
            ),
            (Rm, r#"{"message_type":7,"message_id":"x"}"#.to_string()),
            (Rm, measurement.clone()),
            (
                Rm,
                measurement.replacen("Measurement", "\\u004deasurement", 1),
            ),
            (Rm, measurement.replacen('{', r#"{"acme":1,"#, 1)),
            (
                Rm,
                measurement.replacen('{', r#"{"message_type":"PowerMeasurement","#, 1),
            ),
            (
                Rm,
                measurement.replacen('{', &format!(r#"{{"message_id":"{}","#, id(3)), 1),
            ),
            (Rm, measurement.replacen(&id(1), "not an id", 1)),
            (Rm, measurement.replacen(&format!("\"{}\"", id(1)), "5", 1)),
            (Rm, measurement.replacen("1200.5", "\"1200.5\"", 1)),
            (Rm, format!("{measurement} trailing")),
            // The tag not first: s2-kit's path, accepted or refused as there.
            (Rm, tag_last(&measurement)),
            (Rm, tag_last(&measurement).replacen('{', r#"{"acme":1,"#, 1)),
            (
                Rm,
                measurement.replacen(
                    r#""message_type":"PowerMeasurement","#,
                    r#""message_type":"PowerMeasurement","message_type":"PowerMeasurement","#,
                    1,
                ),
            ),
            (
                Rm,
                measurement.replacen(
                    r#""message_type":"PowerMeasurement""#,
                    r#""message_type":"ReceptionStatus""#,
                    1,
                ),
            ),
            (
                Rm,
                measurement.replacen("PowerMeasurement", "PowerMeasurement ", 1),
            ),
            (
                Rm,
                format!(
                    "{measurement}{}",
                    " ".repeat(DecodeOptions::DEFAULT_MAX_BYTES)
                ),
            ),
            (Cem, null_label(5)),
            (
                Cem,
                null_label(6).replacen('{', &format!(r#"{{"message_id":"{}","#, id(7)), 1),
            ),
            (Cem, instruction(40, 41, 21)),
            (Rm, description.clone()),
            (Cem, select),
            (Rm, description),
            (Cem, instruction(42, 43, 21)),
            (Cem, instruction(44, 43, 21)),
            (Cem, instruction(45, 46, 99)),
            (Rm, ddbc(None)),
            (Rm, ddbc(Some(100.0))),
            (
                Rm,
                format!(
                    r#"{{"message_type":"DDBC.PresentDemandStatus","message_id":"{}","present_demand_rate":{{"start_of_range":1,"end_of_range":1}}}}"#,
                    id(50)
                ),
            ),
            (Cem, CEM_HANDSHAKE_OLD.to_string()),
            (Cem, SELECT_NEW.to_string()),
        ];
        // Some again, now that the conversation has a history.
        texts.push((Rm, measurement));
        texts.push((Cem, null_label(5)));
        texts
    }

    /// The same message with its `message_type` moved to the end.
    fn tag_last(text: &str) -> String {
        let tag = r#""message_type":"PowerMeasurement","#;
        assert!(text.starts_with(&format!("{{{tag}")), "{text}");
        let rest = text.replacen(tag, "", 1);
        format!(
            "{},{}}}",
            &rest[..rest.len() - 1],
            tag.trim_end_matches(',')
        )
    }

    /// The edge's observer against s2-kit's own strict analyzer, the one it replaces:
    /// the same conversation gives the same kind, message, report and status frame by
    /// frame, in both wire profiles.
    #[test]
    fn the_observer_judges_as_s2_kits_strict_analyzer() {
        for profile in [WireProfile::V1_0_0, WireProfile::V0_0_2Beta] {
            let mut ours = Observer::new();
            ours.profile = profile;
            let mut reference = Analyzer::new().strict().profile(profile);
            let at = now();
            let mut seen = Vec::new();
            for (sender, text) in conversation() {
                let got = ours.observe(sender, &text, at);
                let want = reference.observe(sender, &text, at);
                let shown = &text[..text.len().min(200)];
                assert_eq!(got.kind, want.kind, "{profile:?} {shown}");
                assert_eq!(got.message, want.message, "{profile:?} {shown}");
                assert_eq!(got.report, want.report, "{profile:?} {shown}");
                assert_eq!(got.status, want.status, "{profile:?} {shown}");
                seen.push((got.kind, got.status));
            }
            assert_eq!(ours.phase, reference.phase());
            // The conversation reaches every verdict, a checked instruction among them.
            for status in [
                ReceptionStatusValues::Ok,
                ReceptionStatusValues::InvalidData,
                ReceptionStatusValues::InvalidMessage,
                ReceptionStatusValues::InvalidContent,
            ] {
                assert!(
                    seen.iter().any(|(_, s)| *s == status),
                    "{profile:?}: none {status:?}"
                );
            }
            assert!(seen.contains(&(
                Some(MessageKind::FrbcInstruction),
                ReceptionStatusValues::Ok
            )));
        }
    }

    #[test]
    fn the_observer_remembers_the_latest_512_message_ids_and_warns_of_a_repeat_among_them() {
        let measurement = |n: usize| {
            encode(&Message::PowerMeasurement(PowerMeasurement {
                message_id: Id::parse(&format!("3d0a7e1c-2222-4a2b-9c3d-{n:012}")).unwrap(),
                measurement_timestamp: now(),
                values: vec![PowerValue {
                    commodity_quantity: CommodityQuantity::ElectricPowerL1,
                    value: 1.0,
                }],
            }))
        };
        let is_repeat = |report: &Report| {
            (report.warnings()).any(|warning| warning.rule == rules::DUPLICATE_MESSAGE_ID)
        };
        let mut ours = Observer::new();
        let mut reference = Analyzer::new().strict();
        let at = now();
        let kept = remembered::SeenIds::KEPT;
        assert_eq!(kept, 512);
        // One more id than the window, then a repeat of the latest, of the oldest still
        // kept, and of the one just forgotten (s2-kit's analyzer, with its 4,096, still
        // knows it).
        let sequence = (0..=kept).chain([kept, 1, 0]);
        let mut repeats = Vec::new();
        for n in sequence {
            let text = measurement(n);
            let got = ours.observe(EnergyManagementRole::Rm, &text, at);
            let want = reference.observe(EnergyManagementRole::Rm, &text, at);
            if n != 0 || repeats.is_empty() {
                assert_eq!(got.report, want.report, "id {n}");
            } else {
                assert!(is_repeat(&want.report));
            }
            // A repeat is a warning: the message still passes, and the report says why.
            assert_eq!(got.status, ReceptionStatusValues::Ok);
            repeats.push(is_repeat(&got.report));
        }
        assert!(repeats[..=kept].iter().all(|repeat| !repeat));
        assert_eq!(&repeats[kept + 1..], &[true, true, false]);
    }

    /// A status update for instruction `instruction`, sent by the RM.
    fn status_update(message: u32, instruction: u32, status: &str) -> String {
        format!(
            r#"{{"message_type":"InstructionStatusUpdate","message_id":"{}","instruction_id":"{}","status_type":"{status}","timestamp":"2024-01-01T12:00:00Z"}}"#,
            id(message),
            id(instruction)
        )
    }

    /// What the observer's identifier lists hold on the heap, by their capacity.
    fn remembered_bytes(observer: &Observer) -> usize {
        let registry = &observer.registry;
        let bytes = |capacity: usize, size: usize| capacity * size;
        bytes(registry.instructions.capacity(), size_of::<Id>())
            + bytes(
                registry.instruction_messages.capacity(),
                size_of::<(Id, Id)>(),
            )
            + bytes(
                registry.instruction_statuses.capacity(),
                size_of::<(Id, InstructionStatus)>(),
            )
            + bytes(
                registry.published.capacity(),
                size_of::<(RevokableObjects, Id)>(),
            )
            + bytes(remembered::SeenIds::KEPT, size_of::<u64>())
    }

    #[test]
    fn a_long_instructed_session_keeps_its_unfinished_instructions_and_only_the_latest_finished() {
        use EnergyManagementRole::{Cem, Rm};
        let mut ours = Observer::new();
        let mut reference = Analyzer::new().strict();
        let at = now();
        let mut say = |sender, text: &str| {
            let got = ours.observe(sender, text, at);
            let want = reference.observe(sender, text, at);
            (got, want)
        };
        let opening = [
            (Cem, select_frbc()),
            (Rm, frbc_description()),
            // An instruction that stays in progress through everything below.
            (Cem, frbc_instruction(100, 101, 21)),
            (Rm, status_update(102, 101, "ACCEPTED")),
        ];
        for (sender, text) in opening {
            let (got, want) = say(sender, &text);
            assert_eq!(got.status, ReceptionStatusValues::Ok, "{text}");
            assert_eq!(got.report, want.report, "{text}");
        }
        // A thousand instructions, each accepted and then finished, judged as s2-kit's
        // analyzer judges them.
        let rounds = 1000;
        let round = |n: u32| 10_000 + 4 * n;
        for n in 0..rounds {
            let m = round(n);
            for (sender, text) in [
                (Cem, frbc_instruction(m, m + 1, 21)),
                (Rm, status_update(m + 2, m + 1, "ACCEPTED")),
                (Rm, status_update(m + 3, m + 1, "SUCCEEDED")),
            ] {
                let (got, want) = say(sender, &text);
                assert_eq!(got.status, ReceptionStatusValues::Ok, "round {n}: {text}");
                assert_eq!(got.report, want.report, "round {n}: {text}");
            }
        }
        // The unfinished instruction is still known: its progress passes.
        let (started, _) = say(Rm, &status_update(90, 101, "STARTED"));
        assert_eq!(started.status, ReceptionStatusValues::Ok);
        // So is one of the latest finished, whose repeated status s2-kit also passes.
        let latest = round(rounds - 1) + 1;
        let (late, want) = say(Rm, &status_update(91, latest, "SUCCEEDED"));
        assert_eq!(late.status, ReceptionStatusValues::Ok);
        assert_eq!(late.report, want.report);
        // The difference: a status for a long-finished instruction is refused as unknown,
        // where s2-kit, remembering 4,096, lets it pass.
        let (old, want) = say(Rm, &status_update(92, round(0) + 1, "SUCCEEDED"));
        assert_eq!(old.status, ReceptionStatusValues::InvalidContent);
        assert!(
            (old.report.errors()).any(|error| error.rule == rules::UNKNOWN_INSTRUCTION),
            "{:?}",
            old.report
        );
        assert_eq!(want.status, ReceptionStatusValues::Ok);
        // What is left: the unfinished one and up to twice the finished window.
        let kept = ours.registry.instructions.len();
        assert!(
            (remembered::FINISHED_INSTRUCTIONS_KEPT
                ..=2 * remembered::FINISHED_INSTRUCTIONS_KEPT + 1)
                .contains(&kept),
            "{kept}"
        );
        assert!(
            ours.registry
                .instructions
                .contains(&Id::parse(&id(101)).unwrap())
        );
        assert!(ours.registry.published.len() < remembered::PUBLISHED_KEPT);
        assert!(ours.registry.instruction_messages.len() < remembered::ECHOES_KEPT);
        let bytes = remembered_bytes(&ours);
        assert!(bytes < 40 * 1024, "{bytes} bytes");
    }

    #[test]
    fn minted_ids_are_uuids() {
        assert!(mint_id().as_uuid().is_some());
    }
}
