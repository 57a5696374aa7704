//! End-to-end tests of the virtual RM against a real s2-kit `CemSession`, on tokio's
//! paused clock: the RM's endpoint is pumped by hand, no sockets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use s2gw_core::device::{ControlCapability, DeviceInfo, DeviceKind, ModeSpec};
use s2gw_core::s2::{
    CemConfig, CemEvent, CemSession, ControlType, Duration as S2Duration, Frame, Id,
    InstructionStatus, Message, MessageKind, ProtocolVersion, ReceptionStatusValues,
    RevokableObjects, SessionRequestType, Timestamp, frbc, ombc, pebc,
};
use s2gw_core::{
    BusEvent, CancellationToken, Command, Device, DeviceError, DeviceStatus, Endpoint,
    EndpointPeer, Readings,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    Clock, LinkState, RmView, TokioClock, VirtualRmConfig, spawn_gated_virtual_rm, spawn_virtual_rm,
};

const RESOURCE: &str = "6f1c1a52-3c1e-4d1a-9a0e-2b0c5c1f0a01";

// ---------------------------------------------------------------------------------------
// A device that records what it was told
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct DeviceState {
    readings: Readings,
    applied: Vec<Command>,
    refuse: bool,
}

#[derive(Clone)]
struct TestDevice {
    info: DeviceInfo,
    state: Arc<Mutex<DeviceState>>,
}

#[async_trait]
impl Device for TestDevice {
    fn info(&self) -> DeviceInfo {
        self.info.clone()
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        Ok(self.state.lock().unwrap().readings.clone())
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        let mut state = self.state.lock().unwrap();
        if state.refuse {
            return Err(DeviceError::Refused("test device refuses".into()));
        }
        state.applied.push(command.clone());
        Ok(())
    }
}

fn modes() -> Vec<ModeSpec> {
    let mode = |name: &str, min_w, max_w, is_default| ModeSpec {
        name: name.to_string(),
        label: name.to_string(),
        min_w,
        max_w,
        command: Command::SetMode {
            mode: name.to_string(),
        },
        is_default,
    };
    vec![
        mode("normal", 0.0, 1500.0, true),
        mode("boost", 2000.0, 3000.0, false),
        mode("blocked", 0.0, 0.0, false),
    ]
}

/// A device that can do everything, so one fixture serves every control type.
fn everything() -> TestDevice {
    TestDevice {
        info: DeviceInfo {
            kind: DeviceKind::Battery,
            manufacturer: Some("ACME".into()),
            three_phase: false,
            control: vec![
                ControlCapability::NotControllable,
                ControlCapability::PowerEnvelope {
                    min_w: -5000.0,
                    max_w: 5000.0,
                },
                ControlCapability::Storage {
                    capacity_wh: 10_000.0,
                    max_charge_w: 5000.0,
                    max_discharge_w: 5000.0,
                    min_soc: 10.0,
                    max_soc: 90.0,
                },
                ControlCapability::OperationModes {
                    modes: modes(),
                    min_on_s: 600,
                    min_off_s: 300,
                },
            ],
            ..DeviceInfo::default()
        },
        state: Arc::new(Mutex::new(DeviceState {
            readings: Readings {
                power_w: 1200.0,
                soc: Some(55.0),
                ..Readings::default()
            },
            ..DeviceState::default()
        })),
    }
}

// ---------------------------------------------------------------------------------------
// The harness: a CemSession on one side of the RM's endpoint
// ---------------------------------------------------------------------------------------

struct Harness {
    cem: CemSession,
    peer: EndpointPeer,
    clock: Arc<TokioClock>,
    state: Arc<Mutex<DeviceState>>,
    events: Vec<CemEvent>,
    from_rm: Vec<BusEvent>,
    sent_ids: Vec<Id>,
    view: watch::Receiver<RmView>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Harness {
    async fn start(device: TestDevice, cem_config: CemConfig) -> Self {
        let state = device.state.clone();
        Self::start_with(Box::new(device), state, cem_config).await
    }

    /// Any device; `state` records commands only for a [`TestDevice`].
    async fn start_with(
        device: Box<dyn Device>,
        state: Arc<Mutex<DeviceState>>,
        cem_config: CemConfig,
    ) -> Self {
        Self::start_full(device, state, cem_config, None).await
    }

    /// With the local "CEM control allowed" switch.
    async fn start_gated(device: TestDevice, gate: watch::Receiver<bool>) -> Self {
        let state = device.state.clone();
        Self::start_full(Box::new(device), state, CemConfig::default(), Some(gate)).await
    }

    async fn start_full(
        device: Box<dyn Device>,
        state: Arc<Mutex<DeviceState>>,
        cem_config: CemConfig,
        gate: Option<watch::Receiver<bool>>,
    ) -> Self {
        // Logs show with `--nocapture`; RUST_LOG picks the level (warnings by default).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let clock = Arc::new(TokioClock::starting_at(
            UNIX_EPOCH + Duration::from_secs(1_750_000_000),
        ));
        let (endpoint, peer) = Endpoint::pair(64);
        let shutdown = CancellationToken::new();
        let config = VirtualRmConfig::new(RESOURCE, "test battery");
        let (task, view) = match gate {
            Some(gate) => spawn_gated_virtual_rm(
                config,
                device,
                endpoint,
                clock.clone(),
                gate,
                shutdown.clone(),
            ),
            None => spawn_virtual_rm(config, device, endpoint, clock.clone(), shutdown.clone()),
        };
        let mut harness = Self {
            cem: CemSession::new(cem_config),
            peer,
            clock,
            state,
            events: Vec::new(),
            from_rm: Vec::new(),
            sent_ids: Vec::new(),
            view,
            shutdown,
            task,
        };
        harness.pump().await;
        assert!(matches!(harness.from_rm.first(), Some(BusEvent::Up)));
        // The CEM link comes up.
        harness.peer.tx.send(BusEvent::Up).await.unwrap();
        let now = harness.now();
        harness.cem.open(now);
        harness.pump().await;
        harness
    }

    /// A session with `control_type` selected.
    async fn selected(device: TestDevice, control_type: ControlType) -> Self {
        let h = Self::start(device, CemConfig::default()).await;
        h.select(control_type).await
    }

    async fn select(self, control_type: ControlType) -> Self {
        let mut h = self;
        let now = h.now();
        h.cem.select_control_type(control_type, now).unwrap();
        h.pump().await;
        assert!(
            h.events
                .iter()
                .any(|e| matches!(e, CemEvent::Ready { control_type: c } if *c == control_type)),
            "{control_type:?} was not activated: {:#?}",
            h.events
        );
        h
    }

    fn now(&self) -> Timestamp {
        self.clock.timestamp()
    }

    /// Exchange frames until both sides are quiet.
    async fn pump(&mut self) {
        loop {
            let now = self.now();
            while let Some(out) = self.cem.poll_transmit() {
                let frame = Frame::from_own_text(out.text).unwrap();
                if let Some(id) = frame.id() {
                    self.sent_ids.push(id);
                }
                self.peer.tx.send(BusEvent::Frame(frame)).await.unwrap();
            }
            let event = tokio::time::timeout(Duration::from_millis(20), self.peer.rx.recv()).await;
            let Ok(Some(event)) = event else {
                break;
            };
            if let BusEvent::Frame(frame) = &event {
                self.cem.handle_message(frame.message().clone(), now);
            }
            self.from_rm.push(event);
            while let Some(event) = self.cem.poll_event() {
                self.events.push(event);
            }
        }
    }

    /// Let virtual time pass, pumping as it goes.
    async fn advance(&mut self, by: Duration) {
        let until = tokio::time::Instant::now() + by;
        while tokio::time::Instant::now() < until {
            let step = (until - tokio::time::Instant::now()).min(Duration::from_millis(500));
            tokio::time::sleep(step).await;
            let now = self.now();
            self.cem.handle_timeout(now);
            self.pump().await;
        }
    }

    fn applied(&self) -> Vec<Command> {
        self.state.lock().unwrap().applied.clone()
    }

    fn statuses(&self, instruction: Id) -> Vec<InstructionStatus> {
        self.events
            .iter()
            .filter_map(|e| match e {
                CemEvent::InstructionStatus(u) if u.instruction_id == instruction => {
                    Some(u.status_type)
                }
                _ => None,
            })
            .collect()
    }

    fn description(&self, kind: MessageKind) -> Option<Message> {
        self.events.iter().find_map(|e| match e {
            CemEvent::Description { kind: k, message } if *k == kind => Some(message.clone()),
            CemEvent::Status { kind: k, message } if *k == kind => Some(message.clone()),
            _ => None,
        })
    }

    fn kinds_from_rm(&self) -> Vec<MessageKind> {
        self.from_rm
            .iter()
            .filter_map(|e| match e {
                BusEvent::Frame(f) => Some(f.kind()),
                _ => None,
            })
            .collect()
    }

    fn power_constraints(&self) -> pebc::PowerConstraints {
        match self.description(MessageKind::PebcPowerConstraints) {
            Some(Message::PebcPowerConstraints(c)) => *c,
            other => panic!("no PowerConstraints: {other:?}"),
        }
    }

    fn frbc_system(&self) -> frbc::SystemDescription {
        match self.description(MessageKind::FrbcSystemDescription) {
            Some(Message::FrbcSystemDescription(s)) => *s,
            other => panic!("no FRBC.SystemDescription: {other:?}"),
        }
    }

    fn ombc_system(&self) -> ombc::SystemDescription {
        match self.description(MessageKind::OmbcSystemDescription) {
            Some(Message::OmbcSystemDescription(s)) => *s,
            other => panic!("no OMBC.SystemDescription: {other:?}"),
        }
    }

    /// Send a PEBC envelope (lower limits, one minute each) starting `delay` from now.
    async fn curtail(&mut self, delay: Duration, lower: &[f64]) -> Id {
        let constraints = self.power_constraints();
        // The upper limit left open: the top of the UPPER_LIMIT range.
        let upper = constraints
            .allowed_limit_ranges
            .iter()
            .find(|r| r.limit_type == pebc::PowerEnvelopeLimitType::UpperLimit)
            .map(|r| r.range_boundary.end_of_range)
            .unwrap();
        let start = self
            .now()
            .checked_add(S2Duration::from_millis(delay.as_millis() as u64))
            .unwrap();
        let id = s2gw_core::s2::mint_id();
        let instruction = pebc::Instruction {
            message_id: s2gw_core::s2::mint_id(),
            id,
            execution_time: start,
            abnormal_condition: false,
            power_constraints_id: constraints.id,
            power_envelopes: vec![pebc::PowerEnvelope {
                id: s2gw_core::s2::mint_id(),
                commodity_quantity: super::control::QUANTITY,
                power_envelope_elements: lower
                    .iter()
                    .map(|l| pebc::PowerEnvelopeElement::new(S2Duration::from_secs(60), *l, upper))
                    .collect(),
            }],
        };
        let now = self.now();
        self.cem.instruct(instruction, now).unwrap();
        self.pump().await;
        id
    }

    async fn ombc_to(&mut self, label: &str) -> Id {
        let system = self.ombc_system();
        let mode = system
            .operation_modes
            .iter()
            .find(|m| m.diagnostic_label.as_deref() == Some(label))
            .unwrap();
        let id = s2gw_core::s2::mint_id();
        let now = self.now();
        let instruction = ombc::Instruction {
            message_id: s2gw_core::s2::mint_id(),
            id,
            execution_time: now,
            operation_mode_id: mode.id,
            operation_mode_factor: 1.0,
            abnormal_condition: false,
        };
        self.cem.instruct(instruction, now).unwrap();
        self.pump().await;
        id
    }

    /// Every message the CEM sent got a ReceptionStatus from the RM.
    fn assert_every_message_acknowledged(&self) {
        let acked: Vec<Id> = self
            .from_rm
            .iter()
            .filter_map(|e| match e {
                BusEvent::Frame(f) => match f.message() {
                    Message::ReceptionStatus(rs) => Some(rs.subject_message_id),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        for id in &self.sent_ids {
            assert!(acked.contains(id), "no ReceptionStatus for {id}");
        }
    }

    async fn stop(self) -> Vec<Command> {
        self.shutdown.cancel();
        self.task.await.unwrap();
        self.state.lock().unwrap().applied.clone()
    }
}

fn limit(min_w: f64) -> Command {
    Command::LimitPower {
        min_w: Some(min_w),
        max_w: None,
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn handshake_follows_the_version_the_cem_selects() {
    for version in [ProtocolVersion::V0_0_2_BETA, ProtocolVersion::V1_0_0] {
        let config = CemConfig::default().supporting([version.clone()]);
        let h = Harness::start(everything(), config).await;
        assert!(
            h.events.iter().any(
                |e| matches!(e, CemEvent::Negotiated { version: v, .. } if v.matches(&version))
            ),
            "{version}: {:#?}",
            h.events
        );
        let details = h
            .events
            .iter()
            .find_map(|e| match e {
                CemEvent::ResourceDescribed(d) => Some(d.clone()),
                _ => None,
            })
            .expect("ResourceManagerDetails");
        assert_eq!(details.resource_id.as_str(), RESOURCE);
        assert!(details.message_id.as_uuid().is_some());
        assert_eq!(details.available_control_types.len(), 4);
        assert_eq!(
            h.view.borrow().link,
            LinkState::Connected(version.to_string())
        );
        // Every message the RM sent carries a UUID.
        for event in &h.from_rm {
            if let BusEvent::Frame(frame) = event
                && let Some(id) = frame.id()
            {
                assert!(id.as_uuid().is_some(), "{id} is not a UUID");
            }
        }
        h.assert_every_message_acknowledged();
        h.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn every_control_type_sends_its_descriptions() {
    let expected: [(ControlType, &[MessageKind]); 4] = [
        (
            ControlType::NotControllable,
            &[MessageKind::PowerMeasurement],
        ),
        (
            ControlType::PowerEnvelopeBasedControl,
            &[
                MessageKind::PebcPowerConstraints,
                MessageKind::PowerMeasurement,
            ],
        ),
        (
            ControlType::FillRateBasedControl,
            &[
                MessageKind::FrbcSystemDescription,
                MessageKind::FrbcActuatorStatus,
                MessageKind::FrbcStorageStatus,
                MessageKind::PowerMeasurement,
            ],
        ),
        (
            ControlType::OperationModeBasedControl,
            &[
                MessageKind::OmbcSystemDescription,
                MessageKind::OmbcStatus,
                MessageKind::PowerMeasurement,
            ],
        ),
    ];
    for (control_type, kinds) in expected {
        let h = Harness::selected(everything(), control_type).await;
        let sent = h.kinds_from_rm();
        for kind in kinds {
            assert!(
                sent.contains(kind),
                "{control_type:?}: no {kind:?} in {sent:?}"
            );
        }
        // Nothing the RM sent was refused by the CEM.
        assert!(
            !h.events
                .iter()
                .any(|e| matches!(e, CemEvent::Refused { .. })),
            "{control_type:?}: {:#?}",
            h.events
        );
        assert_eq!(h.view.borrow().control_type, Some(control_type));
        h.assert_every_message_acknowledged();
        h.stop().await;
    }
}

/// FlexMeasures' CEM asks its planner for a schedule once per FRBC.SystemDescription, and
/// only when it already has an FRBC.StorageStatus: the fill level goes first.
#[tokio::test(start_paused = true)]
async fn frbc_sends_the_fill_level_before_the_system_description() {
    let h = Harness::selected(everything(), ControlType::FillRateBasedControl).await;
    let sent = h.kinds_from_rm();
    let at = |kind| sent.iter().position(|k| *k == kind);
    let storage = at(MessageKind::FrbcStorageStatus).expect("a StorageStatus");
    let system = at(MessageKind::FrbcSystemDescription).expect("a SystemDescription");
    assert!(storage < system, "{sent:?}");
    let statuses = sent
        .iter()
        .filter(|k| **k == MessageKind::FrbcStorageStatus)
        .count();
    assert_eq!(
        statuses, 1,
        "one StorageStatus for one fill level: {sent:?}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn pebc_constraints_have_upper_and_lower_ranges_with_uuid_ids() {
    let h = Harness::selected(everything(), ControlType::PowerEnvelopeBasedControl).await;
    let constraints = h.power_constraints();
    assert!(constraints.id.as_uuid().is_some());
    assert!(constraints.allowed_limit_ranges.len() >= 2);
    for limit_type in [
        pebc::PowerEnvelopeLimitType::UpperLimit,
        pebc::PowerEnvelopeLimitType::LowerLimit,
    ] {
        assert!(
            constraints
                .allowed_limit_ranges
                .iter()
                .any(|r| r.limit_type == limit_type)
        );
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pebc_envelope_runs_step_by_step_and_is_released_at_its_end() {
    let mut h = Harness::selected(everything(), ControlType::PowerEnvelopeBasedControl).await;
    let id = h
        .curtail(Duration::from_secs(30), &[-2000.0, -1000.0])
        .await;
    assert_eq!(h.statuses(id), [InstructionStatus::Accepted]);
    assert!(h.applied().is_empty(), "nothing before execution_time");

    h.advance(Duration::from_secs(29)).await;
    assert!(h.applied().is_empty());
    h.advance(Duration::from_secs(2)).await;
    assert_eq!(
        h.statuses(id),
        [
            InstructionStatus::Accepted,
            InstructionStatus::Started,
            InstructionStatus::Succeeded
        ]
    );
    assert_eq!(h.applied(), [limit(-2000.0)]);
    assert_eq!(h.view.borrow().instructions_executed, 1);
    assert!(h.view.borrow().active.is_some());

    h.advance(Duration::from_secs(60)).await;
    assert_eq!(h.applied(), [limit(-2000.0), limit(-1000.0)]);

    // Validity ends 120 s after the start: the device is released (rule 1).
    h.advance(Duration::from_secs(60)).await;
    assert_eq!(
        h.applied(),
        [limit(-2000.0), limit(-1000.0), Command::Release]
    );
    assert!(h.view.borrow().active.is_none());
    h.assert_every_message_acknowledged();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_out_of_range_envelope_is_refused_and_never_applied() {
    let config = CemConfig::default().without_outbound_validation();
    let mut h = Harness::start(everything(), config).await;
    let now = h.now();
    h.cem
        .select_control_type(ControlType::PowerEnvelopeBasedControl, now)
        .unwrap();
    h.pump().await;
    let id = h.curtail(Duration::ZERO, &[-9000.0]).await;
    // s2-kit's own check (S2-PEBC-006) refuses it with INVALID_CONTENT before the engine
    // sees it; the transport edge would refuse it the same way.
    assert!(
        h.events.iter().any(|e| matches!(
            e,
            CemEvent::Nacked {
                status: ReceptionStatusValues::InvalidContent,
                ..
            }
        )),
        "{:#?}",
        h.events
    );
    assert!(h.statuses(id).is_empty());
    h.advance(Duration::from_secs(5)).await;
    assert!(h.applied().is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_transition_blocked_by_a_timer_is_rejected() {
    let mut h = Harness::selected(everything(), ControlType::OperationModeBasedControl).await;
    let first = h.ombc_to("boost").await;
    assert_eq!(
        h.statuses(first),
        [
            InstructionStatus::Accepted,
            InstructionStatus::Started,
            InstructionStatus::Succeeded
        ]
    );
    assert!(
        h.kinds_from_rm().contains(&MessageKind::OmbcTimerStatus),
        "timers started by the transition are reported"
    );
    // The 600 s minimum on time has not passed.
    let second = h.ombc_to("normal").await;
    assert_eq!(h.statuses(second), [InstructionStatus::Rejected]);
    assert_eq!(
        h.applied(),
        [Command::SetMode {
            mode: "boost".into()
        }]
    );
    assert_eq!(h.view.borrow().instructions_failed, 1);
    // Once both timers ran out the move is allowed.
    h.advance(Duration::from_secs(601)).await;
    let third = h.ombc_to("normal").await;
    assert_eq!(
        h.statuses(third).last(),
        Some(&InstructionStatus::Succeeded)
    );
    h.stop().await;
}

/// The timers the CEM was told of, as (timer, finished at).
fn timers_reported(h: &Harness) -> Vec<(Id, Timestamp)> {
    h.events
        .iter()
        .filter_map(|e| match e {
            CemEvent::TimerReported {
                timer, finished_at, ..
            } => Some((*timer, *finished_at)),
            _ => None,
        })
        .collect()
}

/// Timers outlive sessions, so a CEM that reconnects while one runs is told of it when
/// it selects OMBC again, and is not refused for a reason it never heard.
#[tokio::test(start_paused = true)]
async fn running_timers_are_announced_again_in_a_new_session() {
    let mut h = Harness::selected(everything(), ControlType::OperationModeBasedControl).await;
    h.ombc_to("boost").await;
    let started = timers_reported(&h);
    assert!(!started.is_empty());
    // A release moves the device to its default: keep it from interfering.
    h.state.lock().unwrap().refuse = true;
    h.peer
        .tx
        .send(BusEvent::Down {
            reason: "socket closed".into(),
        })
        .await
        .unwrap();
    h.pump().await;
    h.advance(Duration::from_secs(60)).await;
    reconnect_and_read_offer(&mut h).await;
    let h = h.select(ControlType::OperationModeBasedControl).await;
    let again = timers_reported(&h);
    let min_on = *started.iter().max_by_key(|(_, at)| *at).unwrap();
    assert!(
        again.contains(&min_on),
        "the running minimum on time is announced again: {again:?}"
    );
    h.state.lock().unwrap().refuse = false;
    h.stop().await;
}

/// The fail-safe release moves a device to its default mode, which starts the same
/// timers as any transition: the RM knows, and a CEM is told.
#[tokio::test(start_paused = true)]
async fn a_release_out_of_a_mode_starts_that_transitions_timers() {
    let mut h = Harness::selected(everything(), ControlType::OperationModeBasedControl).await;
    h.ombc_to("boost").await;
    h.advance(Duration::from_secs(601)).await;
    // Deselecting releases; boost → normal starts the minimum on time again.
    let now = h.now();
    h.cem
        .select_control_type(ControlType::NoSelection, now)
        .unwrap();
    h.pump().await;
    assert_eq!(h.applied().last(), Some(&Command::Release));
    h.events.clear();
    let mut h = h.select(ControlType::OperationModeBasedControl).await;
    assert!(
        timers_reported(&h).iter().any(|(_, at)| *at > h.now()),
        "the release's timers are running"
    );
    let back = h.ombc_to("boost").await;
    assert_eq!(h.statuses(back), [InstructionStatus::Rejected]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_device_that_refuses_gives_aborted() {
    let mut h = Harness::selected(everything(), ControlType::PowerEnvelopeBasedControl).await;
    h.state.lock().unwrap().refuse = true;
    let id = h.curtail(Duration::ZERO, &[-2000.0]).await;
    assert_eq!(
        h.statuses(id),
        [
            InstructionStatus::Accepted,
            InstructionStatus::Started,
            InstructionStatus::Aborted
        ]
    );
    assert_eq!(h.view.borrow().instructions_failed, 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_revoked_instruction_never_runs() {
    let mut h = Harness::selected(everything(), ControlType::PowerEnvelopeBasedControl).await;
    let id = h.curtail(Duration::from_secs(60), &[-2000.0]).await;
    let now = h.now();
    h.cem
        .revoke(RevokableObjects::PebcInstruction, id, now)
        .unwrap();
    h.pump().await;
    assert_eq!(
        h.statuses(id),
        [InstructionStatus::Accepted, InstructionStatus::Revoked]
    );
    h.advance(Duration::from_secs(120)).await;
    assert!(h.applied().is_empty());
    h.assert_every_message_acknowledged();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn link_loss_releases_the_device() {
    let mut h = Harness::selected(everything(), ControlType::PowerEnvelopeBasedControl).await;
    h.curtail(Duration::ZERO, &[-2000.0, -2000.0]).await;
    assert_eq!(h.applied(), [limit(-2000.0)]);
    h.peer
        .tx
        .send(BusEvent::Down {
            reason: "socket closed".into(),
        })
        .await
        .unwrap();
    h.pump().await;
    assert_eq!(h.applied(), [limit(-2000.0), Command::Release]);
    assert_eq!(h.view.borrow().link, LinkState::Down);
    // The envelope's remaining step never runs without a session.
    h.advance(Duration::from_secs(180)).await;
    assert_eq!(h.applied(), [limit(-2000.0), Command::Release]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn deselection_releases_the_device() {
    let mut h = Harness::selected(everything(), ControlType::PowerEnvelopeBasedControl).await;
    h.curtail(Duration::ZERO, &[-2000.0]).await;
    let now = h.now();
    h.cem
        .select_control_type(ControlType::NoSelection, now)
        .unwrap();
    h.pump().await;
    assert_eq!(h.applied(), [limit(-2000.0), Command::Release]);
    assert_eq!(h.view.borrow().control_type, None);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn terminate_releases_and_closes_without_reconnect() {
    let mut h = Harness::selected(everything(), ControlType::PowerEnvelopeBasedControl).await;
    h.curtail(Duration::ZERO, &[-2000.0]).await;
    let now = h.now();
    h.cem
        .request_session(SessionRequestType::Terminate, None, now)
        .unwrap();
    h.pump().await;
    assert_eq!(h.applied(), [limit(-2000.0), Command::Release]);
    assert!(h.from_rm.iter().any(|e| matches!(
        e,
        BusEvent::Close {
            reconnect: false,
            ..
        }
    )));
    h.assert_every_message_acknowledged();
    // A new link gets a new session.
    h.peer.tx.send(BusEvent::Up).await.unwrap();
    h.cem = CemSession::new(CemConfig::default());
    let now = h.now();
    h.cem.open(now);
    h.events.clear();
    h.pump().await;
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, CemEvent::ResourceDescribed(_)))
    );
    assert_eq!(h.view.borrow().sessions, 2);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_frbc_instruction_becomes_a_power_setpoint() {
    let mut h = Harness::selected(everything(), ControlType::FillRateBasedControl).await;
    let system = h.frbc_system();
    let actuator = system.actuators.first().unwrap();
    assert!(actuator.id.as_uuid().is_some());
    assert_eq!(actuator.operation_modes.len(), 3);
    let charge = actuator
        .operation_modes
        .iter()
        .find(|m| m.diagnostic_label.as_deref() == Some("charge"))
        .unwrap();
    let id = s2gw_core::s2::mint_id();
    let now = h.now();
    h.cem
        .instruct(
            frbc::Instruction {
                message_id: s2gw_core::s2::mint_id(),
                id,
                actuator_id: actuator.id,
                operation_mode: charge.id,
                operation_mode_factor: 0.5,
                execution_time: now,
                abnormal_condition: false,
            },
            now,
        )
        .unwrap();
    h.pump().await;
    assert_eq!(h.applied(), [Command::SetPower { watts: 2500.0 }]);
    assert_eq!(h.statuses(id).last(), Some(&InstructionStatus::Succeeded));
    // The actuator's new mode is reported.
    let statuses = h
        .kinds_from_rm()
        .iter()
        .filter(|k| **k == MessageKind::FrbcActuatorStatus)
        .count();
    assert_eq!(statuses, 2);
    h.assert_every_message_acknowledged();
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_ombc_instruction_becomes_the_modes_command() {
    let mut h = Harness::selected(everything(), ControlType::OperationModeBasedControl).await;
    let system = h.ombc_system();
    assert!(system.timers.iter().all(|t| t.id.as_uuid().is_some()));
    assert!(system.transitions.iter().all(|t| t.id.as_uuid().is_some()));
    let id = h.ombc_to("boost").await;
    assert_eq!(
        h.applied(),
        [Command::SetMode {
            mode: "boost".into()
        }]
    );
    assert_eq!(h.statuses(id).last(), Some(&InstructionStatus::Succeeded));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn measurements_follow_changes_and_the_heartbeat_but_not_an_unavailable_device() {
    let mut h = Harness::selected(everything(), ControlType::NotControllable).await;
    let count = |h: &Harness| {
        h.kinds_from_rm()
            .iter()
            .filter(|k| **k == MessageKind::PowerMeasurement)
            .count()
    };
    let start = count(&h);
    // A change of 5 W is noise; the heartbeat still comes after ten seconds.
    h.state.lock().unwrap().readings.power_w = 1205.0;
    h.advance(Duration::from_secs(5)).await;
    assert_eq!(count(&h), start);
    h.advance(Duration::from_secs(6)).await;
    assert_eq!(count(&h), start + 1);
    // A real change goes out at the next poll.
    h.state.lock().unwrap().readings.power_w = 3000.0;
    h.advance(Duration::from_secs(1)).await;
    assert_eq!(count(&h), start + 2);
    // Unavailable: nothing, however long.
    h.state.lock().unwrap().readings.status = DeviceStatus::Unavailable("gone".into());
    let before = count(&h);
    h.advance(Duration::from_secs(30)).await;
    assert_eq!(count(&h), before);
    assert!(!h.view.borrow().available);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_what_the_engine_set() {
    let mut h = Harness::selected(everything(), ControlType::PowerEnvelopeBasedControl).await;
    h.curtail(Duration::ZERO, &[-2000.0]).await;
    let applied = h.stop().await;
    assert_eq!(applied, [limit(-2000.0), Command::Release]);
}

#[tokio::test(start_paused = true)]
async fn a_device_never_commanded_is_not_released() {
    let mut h = Harness::selected(everything(), ControlType::PowerEnvelopeBasedControl).await;
    h.peer
        .tx
        .send(BusEvent::Down {
            reason: "gone".into(),
        })
        .await
        .unwrap();
    h.pump().await;
    assert!(h.stop().await.is_empty(), "rule 3: never clobber");
}

#[test]
fn the_clock_types_are_usable_as_trait_objects() {
    let clocks: Vec<Arc<dyn Clock>> = vec![
        Arc::new(super::SystemClock),
        Arc::new(TokioClock::starting_at(SystemTime::UNIX_EPOCH)),
    ];
    assert_eq!(clocks.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_simulated_pv_inverter_is_curtailed_and_released() {
    use s2gw_sim::{SimConfig, SimModel};
    // 2025-06-15 12:00 UTC: the simulated sun is up.
    let start = UNIX_EPOCH + Duration::from_secs(1_749_988_800);
    let sim_clock = Arc::new(s2gw_sim::TokioClock::starting_at(start));
    let mut config = SimConfig::new(SimModel::Pv);
    config.cloudiness = Some(0.0);
    let device = s2gw_sim::build("pv-1", &config, sim_clock);
    let state = Arc::new(Mutex::new(DeviceState::default()));
    let h = Harness::start_with(device, state, CemConfig::default()).await;
    let mut h = h.select(ControlType::PowerEnvelopeBasedControl).await;
    h.advance(Duration::from_secs(2)).await;
    let producing = h
        .view
        .borrow()
        .readings
        .as_ref()
        .map(|r| r.power_w)
        .unwrap();
    assert!(
        producing < -1000.0,
        "the sun should shine at noon: {producing} W"
    );

    let id = h.curtail(Duration::ZERO, &[-500.0]).await;
    assert_eq!(h.statuses(id).last(), Some(&InstructionStatus::Succeeded));
    h.advance(Duration::from_secs(5)).await;
    let curtailed = h
        .view
        .borrow()
        .readings
        .as_ref()
        .map(|r| r.power_w)
        .unwrap();
    assert!(curtailed >= -510.0, "curtailed to 500 W: {curtailed} W");

    // After the one-minute envelope the inverter produces freely again.
    h.advance(Duration::from_secs(60)).await;
    let released = h
        .view
        .borrow()
        .readings
        .as_ref()
        .map(|r| r.power_w)
        .unwrap();
    assert!(released < -1000.0, "released: {released} W");
    assert_eq!(h.view.borrow().releases, 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn switching_cem_control_off_releases_and_reoffers_measurements_only() {
    let (switch, gate) = watch::channel(true);
    let h = Harness::start_gated(everything(), gate).await;
    let mut h = h.select(ControlType::PowerEnvelopeBasedControl).await;
    h.curtail(Duration::ZERO, &[-2000.0]).await;

    switch.send(false).unwrap();
    h.pump().await;
    assert_eq!(h.applied(), [limit(-2000.0), Command::Release]);
    assert!(h.events.iter().any(|e| matches!(
        e,
        CemEvent::SessionRequested {
            request: SessionRequestType::Reconnect,
            ..
        }
    )));
    assert!(h.from_rm.iter().any(|e| matches!(
        e,
        BusEvent::Close {
            reconnect: true,
            ..
        }
    )));

    // The link reconnects: the new session offers measurements only.
    let offer = reconnect_and_read_offer(&mut h).await;
    assert_eq!(offer, [ControlType::NotControllable]);

    // Switched back on: another reconnect, and the full offer again.
    switch.send(true).unwrap();
    h.pump().await;
    let offer = reconnect_and_read_offer(&mut h).await;
    assert!(
        offer.contains(&ControlType::PowerEnvelopeBasedControl),
        "{offer:?}"
    );
    h.stop().await;
}

/// Bring the CEM link up again with a fresh CEM session and return what the RM offers.
async fn reconnect_and_read_offer(h: &mut Harness) -> Vec<ControlType> {
    h.peer.tx.send(BusEvent::Up).await.unwrap();
    h.cem = CemSession::new(CemConfig::default());
    let now = h.now();
    h.cem.open(now);
    h.events.clear();
    h.pump().await;
    h.events
        .iter()
        .find_map(|e| match e {
            CemEvent::ResourceDescribed(details) => Some(details.available_control_types.clone()),
            _ => None,
        })
        .expect("the new session describes the resource")
}

// ---------------------------------------------------------------------------------------
// DDBC: what the device does by itself counts, selected or not
// ---------------------------------------------------------------------------------------

fn heat_pump_only() -> TestDevice {
    use s2gw_core::device::{ActuatorSpec, Fuel, SupplyModeSpec};
    let mode = |name: &str, supply: f64, power: f64, is_default| SupplyModeSpec {
        name: name.to_string(),
        label: name.to_string(),
        supply_min: 0.0,
        supply_max: supply,
        power_min_w: 0.0,
        power_max_w: power,
        is_default,
    };
    TestDevice {
        info: DeviceInfo {
            kind: DeviceKind::HeatPump,
            control: vec![
                ControlCapability::NotControllable,
                ControlCapability::DemandDriven {
                    actuators: vec![ActuatorSpec {
                        name: "heat_pump".into(),
                        label: "heat pump".into(),
                        fuel: Fuel::Electricity,
                        modes: vec![
                            mode("off", 0.0, 0.0, false),
                            mode("on", 6000.0, 1700.0, true),
                        ],
                        min_on_s: 300,
                    }],
                    forecast_step_s: 3600,
                },
            ],
            ..DeviceInfo::default()
        },
        state: Arc::new(Mutex::new(DeviceState {
            readings: demand_readings("on"),
            ..DeviceState::default()
        })),
    }
}

fn demand_readings(mode: &str) -> Readings {
    use s2gw_core::device::{ActuatorState, DemandState};
    Readings {
        power_w: 800.0,
        demand: Some(DemandState {
            demand: 3000.0,
            forecast: vec![3000.0],
            actuators: vec![ActuatorState {
                actuator: "heat_pump".into(),
                mode: mode.into(),
                factor: 0.5,
            }],
        }),
        ..Readings::default()
    }
}

/// A heat pump that switched off by itself while the CEM had another control type
/// selected has a running compressor timer: DDBC, selected later, says so and refuses
/// the move it blocks, rather than letting the device refuse it (ABORTED).
#[tokio::test(start_paused = true)]
async fn a_mode_the_device_left_by_itself_starts_its_timer_even_unselected() {
    let mut h = Harness::selected(heat_pump_only(), ControlType::NotControllable).await;
    h.state.lock().unwrap().readings = demand_readings("off");
    h.advance(Duration::from_secs(2)).await;
    h.events.clear();
    let mut h = h.select(ControlType::DemandDrivenBasedControl).await;
    assert!(
        timers_reported(&h).iter().any(|(_, at)| *at > h.now()),
        "the compressor's minimum time is announced: {:?}",
        timers_reported(&h)
    );
    let system = match h.description(MessageKind::DdbcSystemDescription) {
        Some(Message::DdbcSystemDescription(s)) => *s,
        other => panic!("no DDBC.SystemDescription: {other:?}"),
    };
    let actuator = &system.actuators[0];
    let on = actuator
        .operation_modes
        .iter()
        .find(|m| m.diagnostic_label.as_deref() == Some("on"))
        .unwrap();
    let id = s2gw_core::s2::mint_id();
    let now = h.now();
    h.cem
        .instruct(
            s2gw_core::s2::ddbc::Instruction {
                message_id: s2gw_core::s2::mint_id(),
                id,
                execution_time: now,
                abnormal_condition: false,
                actuator_id: actuator.id,
                operation_mode_id: on.id,
                operation_mode_factor: 1.0,
            },
            now,
        )
        .unwrap();
    h.pump().await;
    assert_eq!(h.statuses(id), [InstructionStatus::Rejected]);
    h.stop().await;
}
