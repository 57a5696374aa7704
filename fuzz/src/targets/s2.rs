//! S2 frames: into the link core's session ([`LinkSession`], the edge every transport's
//! inbound text passes) facing a CEM or a native RM, and through it into a live virtual RM
//! engine, as sequences, in both protocol versions.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use s2_kit::session::{CemConfig, CemSession};
use s2gw::rm::{VirtualRmConfig, spawn_virtual_rm};
use s2gw_core::s2::{
    ControlType, EnergyManagementRole, Frame, MessageKind, ProtocolVersion, Rejection, encode,
};
use s2gw_core::{BusEvent, CancellationToken, Endpoint, LinkSession, Now, Verdict};
use s2gw_sim::{SimConfig, SimModel, SystemClock};
use tokio::runtime::Runtime;

use crate::mutate::{draw, harvest_typed_ids};
use crate::runner::Target;

/// The two versions every session may run in.
const VERSIONS: [&str; 2] = ["0.0.2-beta", "1.0.0"];

/// Frames a sequence carries after its valid opening, at most.
const MAX_SEQUENCE: usize = 8;

/// One of every message s2-kit can write, every optional field set, as text, and a
/// ReceptionStatus of each status.
fn corpus() -> Vec<String> {
    let mut corpus: Vec<String> = s2_kit::testing::every_message()
        .iter()
        .map(encode)
        .collect();
    corpus.extend(statuses());
    corpus
}

fn statuses() -> Vec<String> {
    use s2gw_core::s2::ReceptionStatusValues as S;
    [
        S::Ok,
        S::InvalidData,
        S::InvalidMessage,
        S::InvalidContent,
        S::TemporaryError,
        S::PermanentError,
    ]
    .into_iter()
    .map(|status| {
        encode(&s2gw_core::s2::Message::ReceptionStatus(
            s2gw_core::s2::ReceptionStatus {
                subject_message_id: s2gw_core::s2::mint_id(),
                status,
                diagnostic_label: Some("fuzz".into()),
            },
        ))
    })
    .collect()
}

/// What a CEM may send in a session, from [`corpus`], with the control type a message
/// belongs to (`None`: any): most of the RM target's frames, so they reach the engine
/// (the rest of the corpus tries its edge).
fn cem_corpus() -> Vec<(Option<ControlType>, String)> {
    use MessageKind as K;
    s2_kit::testing::every_message()
        .iter()
        .filter_map(|m| {
            let of = match m.kind() {
                K::SelectControlType | K::SessionRequest | K::RevokeObject | K::ReceptionStatus => {
                    None
                }
                K::PebcInstruction => Some(ControlType::PowerEnvelopeBasedControl),
                K::FrbcInstruction => Some(ControlType::FillRateBasedControl),
                K::OmbcInstruction => Some(ControlType::OperationModeBasedControl),
                K::PpbcScheduleInstruction
                | K::PpbcStartInterruptionInstruction
                | K::PpbcEndInterruptionInstruction => Some(ControlType::PowerProfileBasedControl),
                K::DdbcInstruction => Some(ControlType::DemandDrivenBasedControl),
                _ => return None,
            };
            Some((of, encode(m)))
        })
        .chain(statuses().into_iter().map(|text| (None, text)))
        .collect()
}

/// A frame sequence: the version its session runs in and the texts (possibly not UTF-8).
#[derive(Debug)]
pub struct Sequence {
    /// The protocol version the opening agrees.
    pub version: &'static str,
    /// The side the frames come from.
    pub from: EnergyManagementRole,
    /// The frames after the opening, as bytes.
    pub frames: Vec<Vec<u8>>,
}

/// One run of the RM engine: its device, the opening and a frame sequence.
///
/// The frames are drawn at execution from `frames_seed`, once the RM has announced the
/// ids they may borrow (fresh UUIDs every run), so the seed stands for them here.
#[derive(Debug)]
pub struct RmRun {
    /// The protocol version the opening agrees.
    pub version: &'static str,
    /// Which sim device the engine runs.
    pub model: SimModel,
    /// Which offered control type the CEM selects (modulo the offer).
    pub select: usize,
    /// The seed of the frames after the opening.
    pub frames_seed: u64,
}

fn draw_frames(rng: &mut StdRng, corpus: &[String], ids: &[(String, String)]) -> Vec<Vec<u8>> {
    let n = rng.random_range(1..=MAX_SEQUENCE);
    (0..n).map(|_| draw(rng, corpus, ids).1).collect()
}

/// What the transports do with bytes that are not UTF-8 text, then the session's verdict.
fn judge(session: &mut LinkSession, bytes: &[u8]) -> Verdict {
    match std::str::from_utf8(bytes) {
        Ok(text) => session.inbound(text, Now::read()),
        Err(_) => Verdict::Refuse(session.refuse(
            Rejection::unreadable("the frame is not UTF-8 text".into()),
            Now::read(),
        )),
    }
}

/// Every refusal but a ReceptionStatus's is answered with one.
fn check_answered(verdict: &Verdict, index: usize) -> Result<(), String> {
    if let Verdict::Refuse(refusal) = verdict {
        let rejection = match &refusal.tap {
            BusEvent::Rejected(rejection) => rejection,
            other => return Err(format!("frame {index}: refusal tapped as {other:?}")),
        };
        let is_status = rejection.kind == Some(MessageKind::ReceptionStatus);
        if refusal.reply.is_none() && !is_status {
            return Err(format!("frame {index}: refused without a ReceptionStatus"));
        }
    }
    Ok(())
}

/// Frames into the link session alone, from a CEM or from a native RM.
pub struct S2Edge {
    corpus: Vec<String>,
}

impl S2Edge {
    /// The target, with its corpus.
    pub fn new() -> Self {
        Self { corpus: corpus() }
    }
}

impl Default for S2Edge {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for S2Edge {
    type Input = Sequence;

    fn generate(&mut self, rng: &mut StdRng) -> Sequence {
        Sequence {
            version: VERSIONS[rng.random_range(0..VERSIONS.len())],
            from: if rng.random_bool(0.5) {
                EnergyManagementRole::Cem
            } else {
                EnergyManagementRole::Rm
            },
            frames: draw_frames(rng, &self.corpus, &[]),
        }
    }

    fn execute(&mut self, input: &Sequence) -> Result<(), String> {
        let mut session = LinkSession::new(input.from, 1024 * 1024, "fuzz");
        open_edge(&mut session, input.from, input.version);
        for (index, frame) in input.frames.iter().enumerate() {
            check_answered(&judge(&mut session, frame), index)?;
        }
        Ok(())
    }
}

/// A valid opening seen by the session: Handshakes and the HandshakeResponse.
fn open_edge(session: &mut LinkSession, peer: EnergyManagementRole, version: &str) {
    let v = ProtocolVersion::new(version);
    let handshake = |role| {
        encode(&s2gw_core::s2::Message::Handshake(
            s2gw_core::s2::Handshake {
                message_id: s2gw_core::s2::mint_id(),
                role,
                supported_protocol_versions: Some(vec![v.clone()]),
            },
        ))
    };
    let response = encode(&s2gw_core::s2::Message::HandshakeResponse(
        s2gw_core::s2::HandshakeResponse {
            message_id: s2gw_core::s2::mint_id(),
            selected_protocol_version: v.clone(),
        },
    ));
    let own = |text: String| Frame::from_own_text(text).ok();
    match peer {
        EnergyManagementRole::Cem => {
            if let Some(frame) = own(handshake(EnergyManagementRole::Rm)) {
                session.outbound(&frame, Now::read());
            }
            let _ = session.inbound(&handshake(EnergyManagementRole::Cem), Now::read());
            let _ = session.inbound(&response, Now::read());
        }
        EnergyManagementRole::Rm => {
            let _ = session.inbound(&handshake(EnergyManagementRole::Rm), Now::read());
            if let Some(frame) = own(response) {
                session.outbound(&frame, Now::read());
            }
        }
    }
}

/// The sim models an RM engine runs for this target: one device of every control type.
const MODELS: [SimModel; 7] = [
    SimModel::Pv,
    SimModel::Ev,
    SimModel::Battery,
    SimModel::HeatPump,
    SimModel::Meter,
    SimModel::Dishwasher,
    SimModel::HybridHeatPump,
];

/// Frames from a CEM through the link session into a live virtual RM on a sim device,
/// after a valid opening and a control-type selection.
pub struct S2Rm {
    corpus: Vec<String>,
    cem_corpus: Vec<(Option<ControlType>, String)>,
    runtime: Runtime,
    counts: Counts,
}

/// How far the frames went.
#[derive(Debug, Default, Clone)]
struct Counts {
    delivered: u64,
    refused: u64,
    /// Frames that reached the engine, by type: which types the audit covered.
    by_kind: std::collections::BTreeMap<String, u64>,
}

impl S2Rm {
    /// The target, with its corpus and a single-threaded runtime for the engines.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            corpus: corpus(),
            cem_corpus: cem_corpus(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            counts: Counts::default(),
        })
    }
}

impl Target for S2Rm {
    type Input = RmRun;

    fn generate(&mut self, rng: &mut StdRng) -> RmRun {
        RmRun {
            version: VERSIONS[rng.random_range(0..VERSIONS.len())],
            model: MODELS[rng.random_range(0..MODELS.len())],
            select: rng.random_range(0..8),
            frames_seed: rng.random(),
        }
    }

    fn execute(&mut self, input: &RmRun) -> Result<(), String> {
        let work = drive_rm(input, &self.corpus, &self.cem_corpus, &mut self.counts);
        self.runtime.block_on(async {
            match tokio::time::timeout(Duration::from_secs(5), work).await {
                Ok(result) => result,
                Err(_) => Err("the RM engine did not settle within 5 s".into()),
            }
        })
    }

    fn notes(&self) -> String {
        let kinds: Vec<String> = self
            .counts
            .by_kind
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        format!(
            "{} frames reached the engine, {} were refused at the edge; reached: {}",
            self.counts.delivered,
            self.counts.refused,
            kinds.join(", ")
        )
    }
}

/// The RM engine's side of one run: the engine, its bus endpoint, the session facing the
/// CEM and everything the engine said.
struct Rig {
    peer: s2gw_core::bus::EndpointPeer,
    session: LinkSession,
    cem: CemSession,
    from_rm: Vec<BusEvent>,
    task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
}

async fn drive_rm(
    input: &RmRun,
    corpus: &[String],
    cem_corpus: &[(Option<ControlType>, String)],
    counts: &mut Counts,
) -> Result<(), String> {
    let mut rig = Rig::start(input).await?;
    let selected = rig.open_and_select(input.select).await?;
    // Three runs in four send what a CEM may send under the selected type; the fourth,
    // anything at all.
    let corpus: Vec<String> = if input.frames_seed.is_multiple_of(4) {
        corpus.to_vec()
    } else {
        cem_corpus
            .iter()
            .filter(|(of, _)| of.is_none_or(|t| t == selected))
            .map(|(_, text)| text.clone())
            .collect()
    };
    let mut ids = Vec::new();
    for event in &rig.from_rm {
        if let BusEvent::Frame(frame) = event {
            harvest_typed_ids(frame.text(), &mut ids);
        }
    }
    let opening = rig.from_rm.len();
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(input.frames_seed);
    let frames = draw_frames(&mut rng, &corpus, &ids);
    let mut delivered = Vec::new();
    for (index, bytes) in frames.iter().enumerate() {
        let verdict = judge(&mut rig.session, bytes);
        check_answered(&verdict, index)?;
        counts.refused += u64::from(matches!(verdict, Verdict::Refuse(_)));
        if let Verdict::Deliver(frame) = verdict {
            counts.delivered += 1;
            *counts
                .by_kind
                .entry(format!("{:?}", frame.kind()))
                .or_default() += 1;
            delivered.push(frame.clone());
            rig.send(BusEvent::Frame(frame)).await?;
        }
        rig.settle().await;
    }
    rig.check_session_kept(opening, &delivered)?;
    rig.stop().await
}

impl Rig {
    async fn start(input: &RmRun) -> Result<Self, String> {
        let (endpoint, peer) = Endpoint::pair(64);
        let shutdown = CancellationToken::new();
        let sim = SimConfig::new(input.model);
        let clock = Arc::new(SystemClock);
        let device = s2gw_sim::build("fuzz", &sim, clock.clone());
        let config = VirtualRmConfig::new("3f2504e0-4f89-41d3-9a0c-0305e82c3301", "fuzz");
        let (task, _view) = spawn_virtual_rm(config, device, endpoint, clock, shutdown.clone());
        let cem =
            CemSession::new(CemConfig::default().supporting([ProtocolVersion::new(input.version)]));
        let mut rig = Self {
            peer,
            session: LinkSession::new(EnergyManagementRole::Cem, 1024 * 1024, "fuzz"),
            cem,
            from_rm: Vec::new(),
            task,
            shutdown,
        };
        rig.settle().await;
        rig.from_rm.clear();
        rig.send(BusEvent::Up).await?;
        Ok(rig)
    }

    async fn send(&mut self, event: BusEvent) -> Result<(), String> {
        self.peer
            .tx
            .send(event)
            .await
            .map_err(|_| "the RM engine stopped taking events".to_string())
    }

    /// Lets the engine run until it is idle, collecting what it sends.
    async fn settle(&mut self) {
        loop {
            for _ in 0..8 {
                tokio::task::yield_now().await;
            }
            let mut got = false;
            while let Ok(event) = self.peer.rx.try_recv() {
                if let BusEvent::Frame(frame) = &event {
                    self.session.outbound(frame, Now::read());
                }
                self.from_rm.push(event);
                got = true;
            }
            if !got {
                return;
            }
        }
    }

    /// The valid part: s2-kit's CEM session agrees the version and selects a type.
    async fn open_and_select(&mut self, select: usize) -> Result<ControlType, String> {
        let now = s2gw_core::s2::Timestamp::now();
        self.cem.open(now);
        self.exchange().await?;
        let offered = self
            .cem
            .details()
            .map(|d| d.available_control_types.clone())
            .unwrap_or_default();
        let choice = offered
            .get(select % offered.len().max(1))
            .copied()
            .unwrap_or(ControlType::NoSelection);
        let _ = self.cem.select_control_type(choice, now);
        self.exchange().await?;
        Ok(choice)
    }

    async fn exchange(&mut self) -> Result<(), String> {
        let mut seen = self.from_rm.len();
        loop {
            let mut sent = false;
            while let Some(out) = self.cem.poll_transmit() {
                if let Verdict::Deliver(frame) = self.session.inbound(&out.text, Now::read()) {
                    self.send(BusEvent::Frame(frame)).await?;
                    sent = true;
                }
            }
            self.settle().await;
            let now = s2gw_core::s2::Timestamp::now();
            for event in &self.from_rm[seen..] {
                if let BusEvent::Frame(frame) = event {
                    self.cem.handle_message(frame.message().clone(), now);
                }
            }
            let grew = self.from_rm.len() > seen;
            seen = self.from_rm.len();
            if !sent && !grew {
                return Ok(());
            }
        }
    }

    /// No frame ends a session but a valid SessionRequest, or a ReceptionStatus
    /// PERMANENT_ERROR (S2's "the session cannot go on" from the peer); the engine is
    /// still running.
    fn check_session_kept(&self, opening: usize, delivered: &[Frame]) -> Result<(), String> {
        let requested = delivered.iter().any(|f| match f.message() {
            s2gw_core::s2::Message::SessionRequest(_) => true,
            s2gw_core::s2::Message::ReceptionStatus(r) => {
                r.status == s2gw_core::s2::ReceptionStatusValues::PermanentError
            }
            _ => false,
        });
        let ended = self.from_rm[opening..]
            .iter()
            .find(|e| matches!(e, BusEvent::Close { .. } | BusEvent::Down { .. }));
        if let (Some(event), false) = (ended, requested) {
            let kinds: Vec<_> = delivered.iter().map(Frame::kind).collect();
            return Err(format!(
                "the session ended without a SessionRequest: {event:?} after {kinds:?}"
            ));
        }
        if self.task.is_finished() {
            return Err("the RM engine's task ended".into());
        }
        Ok(())
    }

    async fn stop(self) -> Result<(), String> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(()) => Ok(()),
            Err(error) if error.is_panic() => Err("the RM engine panicked".into()),
            Err(error) => Err(format!("the RM engine's task failed: {error}")),
        }
    }
}
