//! The demo CEM: s2-kit's `CemSession` behind a real WebSocket server.
//!
//! `s2gw demo` runs it on loopback for the gateway to dial; `s2gw cem --listen ADDR` runs
//! it alone, so an installer can point a real gateway config at it and watch the whole
//! session happen. It accepts any path, plays one CEM session per connection, selects a
//! control type per resource (rotating through everything the resource offers), and sends
//! a believable instruction now and then.
//!
//! It behaves as a good CEM should: it keeps what the RM announced (PEBC limit ranges,
//! FRBC modes and fill level, OMBC transitions with their timers and TimerStatus, the
//! PPBC task with its window and programmes, the DDBC actuators with their demand and
//! timers) and only asks for what the RM would accept, so a REJECTED in the demo points at
//! the RM, not at the demo. One small planner per control type (`pebc`, `frbc`, `ombc`,
//! `ppbc`, `ddbc`) picks the next instruction; [`Planner`] decides when.

mod ddbc;
mod frbc;
mod modes;
mod ombc;
mod pebc;
mod ppbc;
mod worker;

pub use worker::{WorkerConfig, run_worker};

use std::net::SocketAddr;
use std::time::Duration as StdDuration;

use futures_util::{SinkExt, StreamExt};
use s2gw_core::CancellationToken;
use s2gw_core::s2::{
    CemConfig, CemEvent, CemSession, CloseReason, ControlType, Duration, Id, InstructionStatus,
    Message, Timestamp,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How the demo CEM behaves.
#[derive(Debug, Clone)]
pub struct DemoCemConfig {
    /// How often an instruction is sent to a resource with a controllable type.
    pub instruct_every: StdDuration,
    /// How long a control type stays selected before the next one is tried.
    pub switch_every: StdDuration,
    /// How long each PEBC envelope lasts; the gateway releases the limit after it.
    pub envelope: StdDuration,
}

impl DemoCemConfig {
    /// How often the planner is asked what is due: every second, or as often as it
    /// instructs when that is more often.
    pub fn act_every(&self) -> StdDuration {
        self.instruct_every.min(StdDuration::from_secs(1))
    }
}

impl Default for DemoCemConfig {
    fn default() -> Self {
        Self {
            instruct_every: StdDuration::from_secs(8),
            switch_every: StdDuration::from_secs(40),
            envelope: StdDuration::from_secs(20),
        }
    }
}

/// Accept connections until `shutdown`, one CEM session each.
pub async fn serve(listener: TcpListener, config: DemoCemConfig, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let config = config.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    if let Err(error) = serve_one(stream, peer, config, shutdown).await {
                        tracing::info!(%peer, %error, "demo CEM: connection ended");
                    }
                });
            }
            Err(error) => tracing::warn!(%error, "demo CEM: accept failed"),
        }
    }
}

async fn serve_one(
    stream: TcpStream,
    peer: SocketAddr,
    config: DemoCemConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    let mut tick = tokio::time::interval(config.act_every());
    let mut conversation = Conversation::open(config, Timestamp::now());
    loop {
        let step = conversation.step(Timestamp::now());
        for text in step.outgoing {
            ws.send(WsMessage::text(text)).await?;
        }
        if let Some(reason) = step.closed {
            tracing::info!(%peer, ?reason, "demo CEM: session closed");
            let _ = ws.close(None).await;
            return Ok(());
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            frame = ws.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    conversation.receive(text.as_str(), Timestamp::now());
                }
                Some(Ok(WsMessage::Close(_))) | None => {
                    conversation.transport_closed(Timestamp::now());
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
            },
            () = sleep_until(conversation.deadline()) => conversation.timeout(Timestamp::now()),
            _ = tick.tick() => conversation.act(Timestamp::now()),
        }
    }
}

/// One CEM session with its planner, apart from the transport it runs over: the
/// WebSocket server above and the MQTT worker ([`worker`]) drive the same conversation.
#[derive(Debug)]
struct Conversation {
    session: CemSession,
    plan: Planner,
}

/// What a conversation has to say after its last input.
struct Step {
    /// Texts to send, in order.
    outgoing: Vec<String>,
    /// Why the session ended, once it has.
    closed: Option<CloseReason>,
}

impl Conversation {
    /// A session opened at `now`: its Handshake is the first outgoing text.
    fn open(config: DemoCemConfig, now: Timestamp) -> Self {
        let mut session = CemSession::new(CemConfig::default());
        session.open(now);
        Self {
            session,
            plan: Planner::new(config),
        }
    }

    /// Take what the session wants sent and let the planner learn from its events.
    fn step(&mut self, now: Timestamp) -> Step {
        let mut outgoing = Vec::new();
        while let Some(out) = self.session.poll_transmit() {
            outgoing.push(out.text);
        }
        let mut closed = None;
        while let Some(event) = self.session.poll_event() {
            match event {
                CemEvent::Closed { reason, .. } => closed = Some(reason),
                event => self.plan.on_event(event, now),
            }
        }
        Step { outgoing, closed }
    }

    fn receive(&mut self, text: &str, now: Timestamp) {
        self.session.handle_text(text, now);
    }

    fn transport_closed(&mut self, now: Timestamp) {
        self.session.transport_closed(now);
    }

    fn timeout(&mut self, now: Timestamp) {
        self.session.handle_timeout(now);
    }

    /// The planner's turn: an instruction or a selection, if one is due.
    fn act(&mut self, now: Timestamp) {
        self.plan.act(&mut self.session, now);
    }

    /// When the session next needs [`Conversation::timeout`], if ever.
    fn deadline(&self) -> Option<Duration> {
        self.session
            .poll_timeout()
            .map(|at| at.saturating_duration_since(Timestamp::now()))
    }
}

async fn sleep_until(deadline: Option<Duration>) {
    match deadline {
        Some(d) => tokio::time::sleep(StdDuration::from_millis(d.as_millis())).await,
        None => std::future::pending().await,
    }
}

/// How long a selection may go unanswered before it counts as lost.
const SELECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an instruction may go without a final status before it counts as lost.
const INSTRUCTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the demo CEM knows about its resource and what it does next.
///
/// Kept apart from the socket loop, with the time passed in, so the choices are plain
/// functions of what was announced and when.
#[derive(Debug)]
pub struct Planner {
    config: DemoCemConfig,
    resource: Option<String>,
    offered: Vec<ControlType>,
    next_offer: usize,
    pending_select: bool,
    /// When a selection was sent that the RM has not confirmed yet.
    selecting: Option<Timestamp>,
    active: Option<ControlType>,
    selected_at: Option<Timestamp>,
    last_instruction: Option<Timestamp>,
    in_flight: Option<InFlight>,
    pebc: pebc::PebcPlanner,
    frbc: frbc::FrbcPlanner,
    ombc: ombc::OmbcPlanner,
    ppbc: ppbc::PpbcPlanner,
    ddbc: ddbc::DdbcPlanner,
}

/// The last instruction, until the RM has said what became of it.
#[derive(Debug)]
struct InFlight {
    id: Id,
    sent_at: Timestamp,
    /// A mode-based instruction is settled by the status that reports its new mode (after
    /// SUCCEEDED, and after the TimerStatus of the transition), a PPBC one by the next
    /// PowerProfileStatus: until then the planner's picture of the modes, the timers or
    /// the task is out of date.
    awaits_status: bool,
    succeeded: bool,
}

impl Planner {
    /// A planner that has seen nothing yet.
    pub fn new(config: DemoCemConfig) -> Self {
        Self {
            config,
            resource: None,
            offered: Vec::new(),
            next_offer: 0,
            pending_select: false,
            selecting: None,
            active: None,
            selected_at: None,
            last_instruction: None,
            in_flight: None,
            pebc: pebc::PebcPlanner::default(),
            frbc: frbc::FrbcPlanner::default(),
            ombc: ombc::OmbcPlanner::default(),
            ppbc: ppbc::PpbcPlanner::default(),
            ddbc: ddbc::DdbcPlanner::default(),
        }
    }

    /// Learn from one session event that arrived at `now`.
    pub fn on_event(&mut self, event: CemEvent, now: Timestamp) {
        match event {
            CemEvent::ResourceDescribed(details) => {
                self.resource = Some(details.resource_id.to_string());
                // Controllable types first: a demo that starts on NOT_CONTROLABLE shows
                // nothing happening.
                let mut offered: Vec<ControlType> = details
                    .available_control_types
                    .iter()
                    .copied()
                    .filter(|t| *t != ControlType::NoSelection)
                    .collect();
                offered.sort_by_key(|t| *t == ControlType::NotControllable);
                self.offered = offered;
                self.pending_select = true;
            }
            CemEvent::Ready { control_type } => {
                tracing::info!(resource = ?self.resource, ?control_type, "demo CEM: control type active");
                self.active = Some(control_type);
                self.selecting = None;
                self.selected_at = Some(now);
                self.last_instruction = None;
                // Instructions for the previous type die with it (the RM drops them).
                self.in_flight = None;
                match control_type {
                    ControlType::FillRateBasedControl => self.frbc.selected(),
                    ControlType::OperationModeBasedControl => self.ombc.selected(),
                    ControlType::DemandDrivenBasedControl => self.ddbc.selected(),
                    _ => {}
                }
            }
            CemEvent::Deselected => self.active = None,
            CemEvent::Description { message, .. } => match message {
                Message::PebcPowerConstraints(c) => self.pebc.constraints(*c),
                Message::FrbcSystemDescription(d) => self.frbc.described(*d),
                Message::OmbcSystemDescription(d) => self.ombc.described(*d),
                Message::PpbcPowerProfileDefinition(d) => self.ppbc.described(*d),
                Message::DdbcSystemDescription(d) => self.ddbc.described(*d),
                _ => {}
            },
            CemEvent::Status { message, .. } => self.on_status(&message, now),
            CemEvent::TimerReported {
                actuator,
                timer,
                finished_at,
            } => match (actuator, self.active) {
                // FRBC and DDBC timers both belong to an actuator; the RM sends them for
                // the control type selected.
                (Some(actuator), Some(ControlType::DemandDrivenBasedControl)) => {
                    self.ddbc.timer(actuator, timer, finished_at);
                }
                (Some(actuator), _) => self.frbc.timer(actuator, timer, finished_at),
                (None, _) => self.ombc.timer(timer, finished_at),
            },
            CemEvent::InstructionStatus(update) => {
                let status = update.status_type;
                match status {
                    InstructionStatus::Rejected | InstructionStatus::Aborted => {
                        tracing::warn!(resource = ?self.resource, instruction = %update.instruction_id, ?status, "demo CEM: instruction not carried out");
                    }
                    _ => {
                        tracing::info!(resource = ?self.resource, instruction = %update.instruction_id, ?status, "demo CEM: instruction status");
                    }
                }
                self.on_instruction_status(update.instruction_id, status);
            }
            CemEvent::Refused {
                kind,
                status,
                report,
            } => {
                tracing::warn!(resource = ?self.resource, ?kind, ?status, diagnostic = ?report.diagnostic_label(), "demo CEM: refused a message");
            }
            CemEvent::Nacked {
                status, diagnostic, ..
            } => {
                tracing::warn!(resource = ?self.resource, ?status, ?diagnostic, "demo CEM: the resource refused a message");
            }
            _ => {}
        }
    }

    fn on_status(&mut self, message: &Message, now: Timestamp) {
        match message {
            Message::OmbcStatus(status) => self.ombc.status(status, now),
            Message::FrbcActuatorStatus(status) => self.frbc.status(status, now),
            Message::FrbcStorageStatus(status) => {
                self.frbc.storage(status);
                return;
            }
            Message::DdbcActuatorStatus(status) => self.ddbc.status(status, now),
            Message::DdbcPresentDemandStatus(status) => {
                self.ddbc.demand(status);
                return;
            }
            Message::PpbcPowerProfileStatus(status) => self.ppbc.status(status),
            _ => return,
        }
        if self.in_flight.as_ref().is_some_and(|i| i.succeeded) {
            self.in_flight = None;
        }
    }

    fn on_instruction_status(&mut self, id: Id, status: InstructionStatus) {
        let Some(in_flight) = self.in_flight.as_mut().filter(|i| i.id == id) else {
            return;
        };
        match status {
            InstructionStatus::Succeeded if in_flight.awaits_status => in_flight.succeeded = true,
            InstructionStatus::Succeeded => self.in_flight = None,
            InstructionStatus::Rejected
            | InstructionStatus::Aborted
            | InstructionStatus::Revoked => {
                self.in_flight = None;
                self.frbc.not_done();
                self.ombc.not_done();
                self.ddbc.not_done();
            }
            _ => {}
        }
    }

    /// Do whatever is due at `now`: select, rotate, or instruct.
    ///
    /// Called every second ([`DemoCemConfig::act_every`]). A mode-based planner whose every move is blocked by a timer
    /// returns nothing, so the instruction goes on the first call after the timer
    /// finishes.
    pub fn act(&mut self, session: &mut CemSession, now: Timestamp) {
        if self.offered.is_empty() {
            return;
        }
        if self
            .selecting
            .is_some_and(|at| !elapsed(at, SELECT_TIMEOUT, now))
        {
            // An instruction now would be for the type being left, and the RM rejects it.
            return;
        }
        let rotate = self.offered.len() > 1
            && self
                .selected_at
                .is_some_and(|at| elapsed(at, std_duration(self.config.switch_every), now));
        if self.pending_select || rotate {
            let choice = self.offered[self.next_offer % self.offered.len()];
            self.next_offer += 1;
            self.pending_select = false;
            self.selected_at = Some(now);
            self.selecting = Some(now);
            if let Err(error) = session.select_control_type(choice, now) {
                tracing::warn!(%error, "demo CEM: could not select a control type");
                self.selecting = None;
            }
            return;
        }
        if let Some(in_flight) = &self.in_flight {
            if !elapsed(in_flight.sent_at, INSTRUCTION_TIMEOUT, now) {
                return;
            }
            tracing::warn!(resource = ?self.resource, instruction = %in_flight.id, "demo CEM: no final status in time; going on");
            self.in_flight = None;
        }
        let due = self
            .last_instruction
            .is_none_or(|at| elapsed(at, std_duration(self.config.instruct_every), now));
        if !due {
            return;
        }
        let Some(instruction) = self.instruction(now) else {
            return;
        };
        let Some(id) = instruction.instruction_id() else {
            return;
        };
        self.last_instruction = Some(now);
        match session.instruct(instruction, now) {
            Ok(_) => {
                self.in_flight = Some(InFlight {
                    id,
                    sent_at: now,
                    awaits_status: self.active != Some(ControlType::PowerEnvelopeBasedControl),
                    succeeded: false,
                });
            }
            Err(error) => {
                tracing::warn!(%error, "demo CEM: could not send an instruction");
                self.frbc.not_done();
                self.ombc.not_done();
                self.ddbc.not_done();
            }
        }
    }

    /// The next instruction for the active control type, from what was announced.
    pub fn instruction(&mut self, now: Timestamp) -> Option<Message> {
        match self.active? {
            ControlType::PowerEnvelopeBasedControl => {
                let envelope = std_duration(self.config.envelope);
                self.pebc.instruction(now, envelope).map(Message::from)
            }
            ControlType::FillRateBasedControl => self.frbc.instruction(now).map(Message::from),
            ControlType::OperationModeBasedControl => self.ombc.instruction(now).map(Message::from),
            ControlType::PowerProfileBasedControl => self.ppbc.instruction(now),
            ControlType::DemandDrivenBasedControl => self.ddbc.instruction(now).map(Message::from),
            _ => None,
        }
    }
}

/// Whether `period` has passed since `since`.
fn elapsed(since: Timestamp, period: Duration, now: Timestamp) -> bool {
    since.checked_add(period).is_none_or(|at| at <= now)
}

/// An S2 duration for a std one (whole milliseconds, as S2 counts them).
fn std_duration(d: StdDuration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    //! The demo CEM against the real virtual RM and the real simulated devices, on tokio's
    //! paused clock: hours of demo in well under a second, the same every run.

    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Arc;
    use std::time::{Duration as StdDuration, UNIX_EPOCH};

    use s2gw_core::s2::{Frame, MessageKind};
    use s2gw_core::{BusEvent, CancellationToken, Endpoint, EndpointPeer};
    use s2gw_sim::{SimConfig, SimModel};
    use tokio::sync::watch;

    use super::*;
    use crate::rm::{self, Clock, RmView, TokioClock, VirtualRmConfig};

    const RESOURCE: &str = "0d6f7c2e-6a51-4c6e-9f43-3c1d2b1a9e01";
    /// Noon UTC on an ordinary day, so the PV sees the sun without any offset.
    const NOON: u64 = 20_000 * 86_400 + 12 * 3600;

    /// What the demo CEM saw and did over a run.
    struct Run {
        events: Vec<CemEvent>,
        views: Vec<RmView>,
    }

    impl Run {
        fn statuses(&self, wanted: InstructionStatus) -> usize {
            self.events
                .iter()
                .filter(|e| matches!(e, CemEvent::InstructionStatus(u) if u.status_type == wanted))
                .count()
        }

        fn assert_nothing_refused(&self) {
            for bad in [
                InstructionStatus::Rejected,
                InstructionStatus::Aborted,
                InstructionStatus::Revoked,
            ] {
                assert_eq!(self.statuses(bad), 0, "{bad:?} in {:#?}", self.events);
            }
            assert!(
                !self
                    .events
                    .iter()
                    .any(|e| matches!(e, CemEvent::Refused { .. } | CemEvent::Nacked { .. })),
                "{:#?}",
                self.events
            );
        }

        /// The OMBC.Status messages that report a transition (not a first report).
        fn ombc_moves(&self) -> Vec<(Id, Id)> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    CemEvent::Status {
                        message: Message::OmbcStatus(s),
                        ..
                    } => s
                        .previous_operation_mode_id
                        .map(|p| (p, s.active_operation_mode_id)),
                    _ => None,
                })
                .collect()
        }
    }

    /// Exchange frames until both sides are quiet; every CEM event goes to the planner.
    async fn pump(
        cem: &mut CemSession,
        peer: &mut EndpointPeer,
        planner: &mut Planner,
        clock: &TokioClock,
        events: &mut Vec<CemEvent>,
    ) {
        loop {
            while let Some(out) = cem.poll_transmit() {
                let frame = Frame::from_own_text(out.text).unwrap();
                peer.tx.send(BusEvent::Frame(frame)).await.unwrap();
            }
            // Quiet is "nothing for 20 ms" of paused time: every task is idle by then.
            let event = tokio::time::timeout(StdDuration::from_millis(20), peer.rx.recv()).await;
            let Ok(Some(event)) = event else {
                break;
            };
            if let BusEvent::Frame(frame) = &event {
                cem.handle_message(frame.message().clone(), clock.timestamp());
            }
            while let Some(event) = cem.poll_event() {
                planner.on_event(event.clone(), clock.timestamp());
                events.push(event);
            }
        }
    }

    /// The demo CEM (default timings) driving one simulated device for `minutes`.
    async fn run(model: SimModel, minutes: u64) -> Run {
        let origin = UNIX_EPOCH + StdDuration::from_secs(NOON);
        let clock = TokioClock::starting_at(origin);
        let device = s2gw_sim::build(
            "demo",
            &SimConfig::new(model),
            Arc::new(s2gw_sim::TokioClock::starting_at(origin)),
        );
        let (endpoint, mut peer) = Endpoint::pair(64);
        let shutdown = CancellationToken::new();
        let (task, mut view) = rm::spawn_virtual_rm(
            VirtualRmConfig::new(RESOURCE, "demo device"),
            device,
            endpoint,
            Arc::new(clock),
            shutdown.clone(),
        );
        assert!(matches!(peer.rx.recv().await, Some(BusEvent::Up)));
        peer.tx.send(BusEvent::Up).await.unwrap();
        let mut cem = CemSession::new(CemConfig::default());
        cem.open(clock.timestamp());
        let mut planner = Planner::new(DemoCemConfig::default());
        let mut events = Vec::new();
        let mut views = Vec::new();
        let end = tokio::time::Instant::now() + StdDuration::from_secs(minutes * 60);
        while tokio::time::Instant::now() < end {
            pump(&mut cem, &mut peer, &mut planner, &clock, &mut events).await;
            planner.act(&mut cem, clock.timestamp());
            pump(&mut cem, &mut peer, &mut planner, &clock, &mut events).await;
            cem.handle_timeout(clock.timestamp());
            views.push(watch::Receiver::borrow_and_update(&mut view).clone());
            tokio::time::sleep(StdDuration::from_secs(1)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        Run { events, views }
    }

    #[tokio::test(start_paused = true)]
    async fn the_heat_pump_changes_mode_only_when_its_timers_allow() {
        // 25 minutes: OMBC and NOT_CONTROLABLE alternate every 40 s, so the heat pump is
        // released to "normal" between selections, and min_on is 600 s.
        let run = run(SimModel::HeatPump, 25).await;
        run.assert_nothing_refused();
        let moves = run.ombc_moves();
        // One move at once, then one each time min_on (counted from the release back to
        // normal) has run out while OMBC is selected: at about 12 and 24 minutes.
        assert_eq!(moves.len(), 3, "{moves:?}");
        assert!(moves.iter().all(|(from, to)| from != to));
        assert_eq!(run.statuses(InstructionStatus::Succeeded), 3);
        // The RM reported timers, and the CEM waited for them.
        assert!(
            run.events
                .iter()
                .any(|e| matches!(e, CemEvent::TimerReported { .. }))
        );
        let last = run.views.last().unwrap();
        assert_eq!(
            (last.instructions_executed, last.instructions_failed),
            (3, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_battery_charges_and_discharges_without_a_rejection() {
        let run = run(SimModel::Battery, 5).await;
        run.assert_nothing_refused();
        let powers: Vec<f64> = run
            .views
            .iter()
            .filter_map(|v| v.readings.as_ref().map(|r| r.power_w))
            .collect();
        assert!(
            powers.iter().any(|p| *p > 1000.0),
            "never charged: {powers:?}"
        );
        assert!(
            powers.iter().any(|p| *p < -1000.0),
            "never discharged: {powers:?}"
        );
        assert!(run.statuses(InstructionStatus::Succeeded) >= 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ev_follows_modes_and_envelopes_without_a_rejection() {
        let run = run(SimModel::Ev, 5).await;
        run.assert_nothing_refused();
        assert!(!run.ombc_moves().is_empty());
        // PEBC is selected second (after 40 s) and sends envelopes too.
        let pebc = run
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    CemEvent::Description {
                        kind: MessageKind::PebcPowerConstraints,
                        ..
                    }
                )
            })
            .count();
        assert!(pebc >= 1);
        assert!(run.statuses(InstructionStatus::Succeeded) >= 6);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pv_is_curtailed_inside_its_announced_range() {
        let run = run(SimModel::Pv, 3).await;
        run.assert_nothing_refused();
        let curtailed = run.views.iter().any(|v| {
            v.active.as_deref().is_some_and(|a| a.starts_with("limit"))
                && v.readings.as_ref().is_some_and(|r| r.power_w < -1000.0)
        });
        assert!(curtailed, "never curtailed while producing");
        assert!(run.statuses(InstructionStatus::Succeeded) >= 3);
    }

    /// The container states the RM reported, each change once.
    fn container_states(run: &Run) -> Vec<s2gw_core::s2::ppbc::PowerSequenceStatus> {
        let mut states = Vec::new();
        for event in &run.events {
            if let CemEvent::Status {
                message: Message::PpbcPowerProfileStatus(s),
                ..
            } = event
            {
                for c in &s.sequence_container_status {
                    if states.last() != Some(&c.status) {
                        states.push(c.status);
                    }
                }
            }
        }
        states
    }

    #[tokio::test(start_paused = true)]
    async fn the_dishwasher_is_scheduled_paused_and_resumed_once() {
        use s2gw_core::s2::ppbc::PowerSequenceStatus as S;
        // Three minutes: PPBC, NOT_CONTROLABLE, PPBC again, ... every 40 s.
        let run = run(SimModel::Dishwasher, 3).await;
        run.assert_nothing_refused();
        assert_eq!(
            container_states(&run),
            [
                S::NotScheduled,
                S::Scheduled,
                S::Executing,
                S::Interrupted,
                S::Executing
            ]
        );
        // Schedule, pause, resume; nothing more while the programme runs.
        assert_eq!(run.statuses(InstructionStatus::Succeeded), 3);
        let schedules = run
            .events
            .iter()
            .filter(|e| {
                matches!(e, CemEvent::Status { message: Message::PpbcPowerProfileStatus(s), .. }
                if s.sequence_container_status.iter().any(|c| c.status == S::Scheduled))
            })
            .count();
        assert_eq!(schedules, 1);
        let paused = run.views.iter().any(|v| {
            v.readings
                .as_ref()
                .and_then(|r| r.task.as_ref())
                .is_some_and(|t| {
                    matches!(t.progress, s2gw_core::device::TaskProgress::Paused { .. })
                })
        });
        assert!(paused, "the programme was never paused");
    }

    #[tokio::test(start_paused = true)]
    async fn the_hybrid_heat_pump_takes_turns_as_its_timers_allow() {
        // Twelve minutes: DDBC and NOT_CONTROLABLE alternate every 40 s; the heat pump's
        // minimum on time (300 s) restarts with every switch, the release's included.
        let run = run(SimModel::HybridHeatPump, 12).await;
        run.assert_nothing_refused();
        let description = run
            .events
            .iter()
            .find_map(|e| match e {
                CemEvent::Description {
                    message: Message::DdbcSystemDescription(d),
                    ..
                } => Some(d.clone()),
                _ => None,
            })
            .expect("a DDBC.SystemDescription");
        let boiler = description
            .actuators
            .iter()
            .find(|a| a.diagnostic_label.as_deref() == Some("gas boiler"))
            .unwrap();
        let boiler_on = boiler
            .operation_modes
            .iter()
            .find(|m| m.diagnostic_label.as_deref() == Some("boiler on"))
            .unwrap()
            .id;
        // Moves the RM reported, per actuator: (actuator, from, to).
        let moves: Vec<(Id, Id, Id)> = run
            .events
            .iter()
            .filter_map(|e| match e {
                CemEvent::Status {
                    message: Message::DdbcActuatorStatus(s),
                    ..
                } => s
                    .previous_operation_mode_id
                    .filter(|p| *p != s.active_operation_mode_id)
                    .map(|p| (s.actuator_id, p, s.active_operation_mode_id)),
                _ => None,
            })
            .collect();
        let boiler_took_over = moves
            .iter()
            .filter(|(a, _, to)| *a == boiler.id && *to == boiler_on)
            .count();
        // At once, and again once the compressor's minimum on time, restarted when the
        // release between selections switched it back on, has run out.
        assert_eq!(boiler_took_over, 2, "{moves:?}");
        // Every time the heat pump stopped (only the CEM stops it), it had run its 300 s
        // since it last changed, the first time aside: it had never changed then.
        let mut changes = Vec::new();
        for view in &run.views {
            let mode = view
                .readings
                .as_ref()
                .and_then(|r| r.demand.as_ref())
                .and_then(|d| d.actuators.iter().find(|a| a.actuator == "heat_pump"))
                .map(|a| a.mode.clone());
            if mode.is_some() && changes.last().map(|(_, m)| m) != Some(&mode) {
                changes.push((view.updated, mode));
            }
        }
        let stops: Vec<_> = changes
            .windows(2)
            .filter(|w| w[1].1.as_deref() == Some("off"))
            .map(|w| w[1].0.duration_since(w[0].0).unwrap())
            .collect();
        assert_eq!(stops.len(), 2, "{changes:?}");
        assert!(stops[1] >= StdDuration::from_secs(300), "{stops:?}");
        assert!(run.events.iter().any(|e| matches!(
            e,
            CemEvent::TimerReported {
                actuator: Some(_),
                ..
            }
        )));
        assert!(run.statuses(InstructionStatus::Succeeded) >= 6);
        let last = run.views.last().unwrap();
        assert_eq!(last.instructions_failed, 0);
    }

    #[test]
    fn an_envelope_stays_inside_the_announced_ranges() {
        use s2gw_core::s2::{CommodityQuantity, NumberRange, pebc as p};
        let now = Timestamp::from_unix(NOON as i64, 0);
        let range = |limit_type, lo, hi| p::AllowedLimitRange {
            commodity_quantity: CommodityQuantity::ElectricPower3PhaseSymmetric,
            limit_type,
            range_boundary: NumberRange::new(lo, hi),
            abnormal_condition_only: false,
        };
        let mut planner = Planner::new(DemoCemConfig::default());
        planner.on_event(
            CemEvent::Description {
                kind: MessageKind::PebcPowerConstraints,
                message: Message::from(p::PowerConstraints {
                    message_id: s2gw_core::s2::mint_id(),
                    id: s2gw_core::s2::mint_id(),
                    valid_from: now,
                    valid_until: None,
                    consequence_type: p::PowerEnvelopeConsequenceType::Vanish,
                    allowed_limit_ranges: vec![
                        range(p::PowerEnvelopeLimitType::UpperLimit, 0.0, 0.0),
                        // Written the wrong way round on purpose: still a range.
                        range(p::PowerEnvelopeLimitType::LowerLimit, 0.0, -6000.0),
                    ],
                }),
            },
            now,
        );
        planner.active = Some(ControlType::PowerEnvelopeBasedControl);
        let mut lowers = Vec::new();
        for _ in 0..3 {
            let Some(Message::PebcInstruction(i)) = planner.instruction(now) else {
                panic!("no envelope");
            };
            let element = &i.power_envelopes[0].power_envelope_elements[0];
            assert_eq!(element.upper_limit, 0.0);
            lowers.push(element.lower_limit);
        }
        assert_eq!(lowers, [-3600.0, -1800.0, -6000.0]);
    }
}
