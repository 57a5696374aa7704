//! The virtual RM's task: one loop over bus events, device polls and deadlines.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use s2gw_core::device::DeviceInfo;
use s2gw_core::s2::{
    CloseReason, ControlType, Frame, Id, Instructed, InstructionStatus, Message, RevokableObjects,
    RmConfig, RmEvent, RmSession, SessionRequestType, Timestamp, offered_versions,
};
use s2gw_core::{
    Backoff, BusEvent, CancellationToken, Command, Device, DeviceError, DeviceStatus, Readings,
};
use tokio::sync::{mpsc, watch};

use super::clock::{Clock, to_system_time, until};
use super::control::{self, Context, ControlModule};
use super::describe::{self, s2_duration};
use super::ids::IdBook;
use super::measure::Measurer;
use super::plan::{Plan, Planned};
use super::{LinkState, RmView, VirtualRmConfig};

/// A device call that takes longer than this counts as failed, so one hung device never
/// stalls its RM.
const DEVICE_CALL_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// Consecutive failed reads after which the device is marked unavailable.
const FAILURES_BEFORE_UNAVAILABLE: u32 = 3;
/// The longest back-off between reads of an unavailable device.
const MAX_READ_BACKOFF: StdDuration = StdDuration::from_secs(60);
/// The longest the loop sleeps without looking around.
const MAX_SLEEP: StdDuration = StdDuration::from_secs(60);

/// One virtual RM.
pub(crate) struct Engine {
    config: VirtualRmConfig,
    device: Box<dyn Device>,
    info: DeviceInfo,
    bus: mpsc::Sender<BusEvent>,
    clock: Arc<dyn Clock>,
    view: watch::Sender<RmView>,
    resource_id: Id,
    offered: Vec<ControlType>,
    ids: IdBook,
    session: Option<RmSession>,
    link: LinkState,
    control: Option<ControlType>,
    readings: Option<Readings>,
    available: bool,
    read_failures: u32,
    read_backoff: Backoff,
    next_poll: Timestamp,
    measurer: Measurer,
    /// One module per control type the device offers; the selected one decides.
    modules: Vec<Box<dyn ControlModule>>,
    plan: Plan,
    retry: Option<Command>,
    retry_at: Timestamp,
    dirty: bool,
    counters: Counters,
    /// The local switch: whether the CEM may control the device at all.
    control_allowed: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    executed: u64,
    failed: u64,
    releases: u64,
    sessions: u64,
}

impl Engine {
    /// An engine for `device`, not yet running.
    pub(crate) fn new(
        config: VirtualRmConfig,
        device: Box<dyn Device>,
        bus: mpsc::Sender<BusEvent>,
        clock: Arc<dyn Clock>,
        view: watch::Sender<RmView>,
    ) -> Self {
        let info = device.info();
        let offered = describe::offered_control_types(&config, &info);
        let resource_id = describe::resource_id(&config);
        let poll = config.poll_interval.max(StdDuration::from_millis(10));
        let modules = control::modules_for(&info.control);
        let now = clock.timestamp();
        Self {
            read_backoff: Backoff::new(poll, MAX_READ_BACKOFF.max(poll)),
            config,
            device,
            info,
            bus,
            clock,
            view,
            resource_id,
            offered,
            ids: IdBook::for_resource(resource_id.as_str()),
            session: None,
            link: LinkState::Down,
            control: None,
            readings: None,
            available: false,
            read_failures: 0,
            next_poll: now,
            measurer: Measurer::default(),
            modules,
            plan: Plan::default(),
            retry: None,
            retry_at: now,
            dirty: false,
            counters: Counters::default(),
            control_allowed: true,
        }
    }

    /// Serve until `shutdown`, then release the device and return.
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<BusEvent>,
        mut gate: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        self.control_allowed = *gate.borrow_and_update();
        let mut gate_open = true;
        // Rule 3: read before anything is written.
        let now = self.now();
        self.poll(now).await;
        self.send_to_bus(BusEvent::Up).await;
        self.publish_view();
        loop {
            let sleep = tokio::time::sleep(self.sleep_for());
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                changed = gate.changed(), if gate_open => match changed {
                    Ok(()) => {
                        let allowed = *gate.borrow_and_update();
                        self.on_control_allowed(allowed).await;
                    }
                    // The switch's owner is gone; the last setting stays.
                    Err(_) => gate_open = false,
                },
                event = rx.recv() => match event {
                    Some(event) => self.on_bus(event).await,
                    None => {
                        tracing::warn!(resource = %self.resource_id, "the bus went away");
                        break;
                    }
                },
                () = sleep => self.on_tick().await,
            }
            self.publish_view();
        }
        self.stop().await;
        self.publish_view();
    }

    fn now(&self) -> Timestamp {
        self.clock.timestamp()
    }

    /// How long until the next thing falls due.
    fn sleep_for(&self) -> StdDuration {
        let now = self.now();
        let mut next = Some(self.next_poll);
        let mut consider = |t: Option<Timestamp>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.session.as_ref().and_then(RmSession::poll_timeout));
        consider(self.plan.next_deadline());
        consider(self.retry.as_ref().map(|_| self.retry_at));
        let wait = next.map_or(MAX_SLEEP, |t| until(now, t));
        wait.clamp(StdDuration::from_millis(1), MAX_SLEEP)
    }

    async fn on_tick(&mut self) {
        let now = self.now();
        if self.next_poll <= now {
            self.poll(now).await;
        }
        if self.retry.is_some() && self.retry_at <= now {
            self.retry_write(now).await;
        }
        if let Some(session) = self.session.as_mut()
            && session.poll_timeout().is_some_and(|t| t <= now)
        {
            session.handle_timeout(now);
        }
        self.drain().await;
        self.run_due(now).await;
        self.drain().await;
    }

    // ----------------------------------------------------------------------------------
    // The device
    // ----------------------------------------------------------------------------------

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        match tokio::time::timeout(DEVICE_CALL_TIMEOUT, self.device.read()).await {
            Ok(result) => result,
            Err(_) => Err(DeviceError::Unreachable("read timed out".to_string())),
        }
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        // Anything attempted may have changed the device, so it needs a Release later.
        self.dirty = true;
        match tokio::time::timeout(DEVICE_CALL_TIMEOUT, self.device.apply(command)).await {
            Ok(result) => result,
            Err(_) => Err(DeviceError::Unreachable("command timed out".to_string())),
        }
    }

    async fn poll(&mut self, now: Timestamp) {
        match self.read().await {
            Ok(readings) => {
                if !self.available && self.read_failures > 0 {
                    tracing::info!(resource = %self.resource_id, "device reachable again");
                }
                self.read_failures = 0;
                self.read_backoff.reset();
                self.available = !matches!(readings.status, DeviceStatus::Unavailable(_));
                self.readings = Some(readings);
                self.next_poll = after(now, self.config.poll_interval);
            }
            Err(error) => self.read_failed(now, &error),
        }
        self.report_readings(now, false);
        self.drain().await;
    }

    /// A failed read: retried every poll interval at first, then, once the device counts
    /// as unavailable, with a growing back-off; no values are made up meanwhile.
    fn read_failed(&mut self, now: Timestamp, error: &DeviceError) {
        self.read_failures = self.read_failures.saturating_add(1);
        if self.read_failures < FAILURES_BEFORE_UNAVAILABLE {
            tracing::warn!(resource = %self.resource_id, %error, "device read failed");
            self.next_poll = after(now, self.config.poll_interval);
            return;
        }
        if self.available || self.read_failures == FAILURES_BEFORE_UNAVAILABLE {
            tracing::error!(resource = %self.resource_id, %error, "device unavailable");
        }
        self.available = false;
        if let Some(readings) = self.readings.as_mut() {
            readings.status = DeviceStatus::Unavailable(error.to_string());
        }
        self.next_poll = after(now, self.read_backoff.next_delay());
    }

    /// Return the device to its autonomous behaviour (fail-safe rule 1), now, and keep
    /// trying every poll interval until it worked.
    async fn release(&mut self, why: &str) {
        let now = self.now();
        if let Some(active) = self.plan.end_active() {
            tracing::info!(resource = %self.resource_id, instruction = %active.id, "instruction no longer active");
        }
        if !self.dirty {
            // Rule 3: what the gateway did not set, it does not clear.
            tracing::debug!(resource = %self.resource_id, why, "nothing to release");
            self.retry = None;
            return;
        }
        tracing::info!(resource = %self.resource_id, why, "fail-safe: releasing the device");
        self.retry = Some(Command::Release);
        self.retry_write(now).await;
    }

    /// Write the command that still has to reach the device (a Release or a later
    /// envelope step); on failure, try again one poll interval later.
    async fn retry_write(&mut self, now: Timestamp) {
        let Some(command) = self.retry.clone() else {
            return;
        };
        match self.apply(&command).await {
            Ok(()) => {
                self.retry = None;
                if command == Command::Release {
                    self.dirty = false;
                    self.counters.releases = self.counters.releases.saturating_add(1);
                    tracing::info!(resource = %self.resource_id, "device released");
                }
            }
            Err(error) => {
                tracing::error!(
                    resource = %self.resource_id,
                    command = %command.summary(),
                    %error,
                    "device write failed; retrying"
                );
                self.retry_at = after(now, self.config.poll_interval);
            }
        }
    }

    // ----------------------------------------------------------------------------------
    // The bus and the session
    // ----------------------------------------------------------------------------------

    async fn send_to_bus(&mut self, event: BusEvent) {
        if self.bus.send(event).await.is_err() {
            tracing::debug!(resource = %self.resource_id, "bus closed; event dropped");
        }
    }

    async fn on_bus(&mut self, event: BusEvent) {
        match event {
            BusEvent::Up => self.start_session().await,
            BusEvent::Frame(frame) => self.on_frame(&frame).await,
            BusEvent::Down { reason } | BusEvent::Close { reason, .. } => {
                self.link_lost(&reason).await;
            }
            BusEvent::Rejected(_) => {}
        }
    }

    async fn start_session(&mut self) {
        if self.session.is_some() {
            self.link_lost("a new link replaced the old one").await;
        }
        let now = self.now();
        // The device may have been unreachable when the RM started; ask again.
        let info = self.device.info();
        if info.control != self.info.control {
            self.modules = control::modules_for(&info.control);
        }
        self.info = info;
        self.offered = self.offer();
        let details = describe::details(
            &self.config,
            self.resource_id,
            &self.info,
            self.offered.clone(),
        );
        let config = RmConfig::default().offering(offered_versions());
        let mut session = RmSession::new(config, details);
        session.open(now);
        self.session = Some(session);
        self.link = LinkState::Handshaking;
        self.control = None;
        self.measurer.reset();
        for module in &mut self.modules {
            module.session_started();
        }
        self.counters.sessions = self.counters.sessions.saturating_add(1);
        tracing::info!(resource = %self.resource_id, "CEM link up: S2 session opened");
        self.drain().await;
    }

    async fn on_frame(&mut self, frame: &Frame) {
        let now = self.now();
        let Some(session) = self.session.as_mut() else {
            tracing::debug!(resource = %self.resource_id, kind = ?frame.kind(), "frame without a session; ignored");
            return;
        };
        session.handle_message(frame.message().clone(), now);
        self.drain().await;
        self.run_due(now).await;
        self.drain().await;
    }

    async fn link_lost(&mut self, reason: &str) {
        let now = self.now();
        tracing::info!(resource = %self.resource_id, reason, "CEM link lost");
        match self.session.as_mut() {
            Some(session) => session.transport_closed(now),
            None => return,
        }
        self.drain().await;
        // In case the session was already closed and said nothing more.
        self.end_session();
    }

    fn end_session(&mut self) {
        self.session = None;
        self.link = LinkState::Down;
        self.control = None;
        self.plan.clear();
    }

    /// Send what the session queued, then act on what it reported, until it is quiet.
    async fn drain(&mut self) {
        loop {
            self.flush().await;
            let Some(event) = self.session.as_mut().and_then(RmSession::poll_event) else {
                break;
            };
            self.on_session_event(event).await;
        }
    }

    async fn flush(&mut self) {
        let mut frames = Vec::new();
        if let Some(session) = self.session.as_mut() {
            while let Some(out) = session.poll_transmit() {
                frames.push(out.text);
            }
        }
        for text in frames {
            match Frame::from_own_text(text) {
                Ok(frame) => self.send_to_bus(BusEvent::Frame(frame)).await,
                Err(error) => {
                    tracing::error!(resource = %self.resource_id, %error, "s2-kit produced a frame it cannot decode");
                }
            }
        }
    }

    async fn on_session_event(&mut self, event: RmEvent) {
        let id = self.resource_id;
        match event {
            RmEvent::Negotiated { version, .. } => {
                tracing::info!(resource = %id, %version, "S2 protocol version agreed");
                self.link = LinkState::Connected(version.to_string());
            }
            RmEvent::Ready { control_type } => self.on_selected(control_type).await,
            RmEvent::Deselected => {
                tracing::info!(resource = %id, "control type deselected");
                self.control = None;
                self.release("control type deselected").await;
                self.drop_waiting();
            }
            RmEvent::Instruction(instructed) => self.on_instruction(&instructed).await,
            RmEvent::Revoked {
                object_type,
                object_id,
            } => self.on_revoked(object_type, object_id).await,
            RmEvent::Closed { reason, .. } => self.on_closed(reason).await,
            RmEvent::Refused {
                kind,
                status,
                report,
            } => {
                tracing::warn!(resource = %id, ?kind, ?status, %report, "refused a message from the CEM");
            }
            RmEvent::Nacked {
                handle,
                status,
                diagnostic,
                ..
            } => {
                tracing::warn!(resource = %id, kind = ?handle.kind, ?status, ?diagnostic, "the CEM refused a message");
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

    async fn on_closed(&mut self, reason: CloseReason) {
        tracing::info!(resource = %self.resource_id, %reason, "S2 session closed");
        let close = match &reason {
            CloseReason::PeerRequested(SessionRequestType::Terminate) => Some(false),
            CloseReason::PeerRequested(SessionRequestType::Reconnect)
            | CloseReason::LocallyRequested(SessionRequestType::Reconnect) => Some(true),
            CloseReason::TransportClosed | CloseReason::Local => None,
            _ => Some(false),
        };
        self.release(&format!("session closed: {reason}")).await;
        if let Some(reconnect) = close {
            // The ReceptionStatus for the SessionRequest goes out before the close.
            self.flush().await;
            self.send_to_bus(BusEvent::Close {
                reconnect,
                reason: reason.to_string(),
            })
            .await;
        }
        self.end_session();
    }

    /// What this RM offers now: nothing but measurements while control is switched off.
    fn offer(&self) -> Vec<ControlType> {
        if self.control_allowed {
            describe::offered_control_types(&self.config, &self.info)
        } else {
            vec![ControlType::NotControllable]
        }
    }

    /// The local switch moved: release if control was taken away, and have the CEM
    /// reconnect so that the new session announces what is offered now.
    async fn on_control_allowed(&mut self, allowed: bool) {
        if allowed == self.control_allowed {
            return;
        }
        self.control_allowed = allowed;
        tracing::info!(resource = %self.resource_id, allowed, "CEM control switched locally");
        if !allowed {
            self.drop_waiting();
            self.release("CEM control switched off locally").await;
        }
        let now = self.now();
        let diagnostic = if allowed {
            "CEM control switched on locally: reconnect to see the new offer"
        } else {
            "CEM control switched off locally: reconnect to see the new offer"
        };
        if let Some(session) = self.session.as_mut()
            && let Err(error) = session.request_session(
                SessionRequestType::Reconnect,
                Some(diagnostic.to_string()),
                now,
            )
        {
            tracing::warn!(resource = %self.resource_id, %error, "could not ask the CEM to reconnect");
        }
        self.drain().await;
    }

    async fn stop(&mut self) {
        tracing::info!(resource = %self.resource_id, "shutting down");
        self.release("shutdown").await;
        if self.session.is_some() {
            self.end_session();
        }
        // The bus may already be gone; nothing is waited for on the way out.
        let _ = self.bus.try_send(BusEvent::Down {
            reason: "gateway shutting down".to_string(),
        });
    }

    fn send(&mut self, message: impl Into<Message>) {
        let message = message.into();
        let kind = message.kind();
        let now = self.now();
        if let Some(session) = self.session.as_mut()
            && let Err(error) = session.send(message, now)
        {
            tracing::warn!(resource = %self.resource_id, ?kind, %error, "message not sent");
        }
    }

    fn status(&mut self, instruction: Id, status: InstructionStatus) {
        let now = self.now();
        if let Some(session) = self.session.as_mut()
            && let Err(error) = session.instruction_status(instruction, status, now)
        {
            tracing::warn!(resource = %self.resource_id, %instruction, ?status, %error, "status not sent");
        }
    }

    // ----------------------------------------------------------------------------------
    // Control types
    // ----------------------------------------------------------------------------------

    async fn on_selected(&mut self, control_type: ControlType) {
        tracing::info!(resource = %self.resource_id, ?control_type, "control type selected");
        if self.control.is_some_and(|c| c != control_type) {
            self.release("control type changed").await;
            self.drop_waiting();
        }
        self.control = Some(control_type);
        let now = self.now();
        let descriptions = self
            .with_selected(|module, cx| module.describe(cx, now))
            .unwrap_or_default();
        for message in descriptions {
            self.send(message);
        }
        self.report_readings(now, true);
    }

    /// PowerMeasurement (on change, on the heartbeat, or `force`d right after a
    /// selection), then what the selected control type reports with new readings.
    fn report_readings(&mut self, now: Timestamp, force: bool) {
        if !matches!(self.link, LinkState::Connected(_)) || !self.available {
            return;
        }
        let Some(readings) = self.readings.clone() else {
            return;
        };
        let interval = self.config.measurement_interval;
        if let Some(measurement) = self
            .measurer
            .next(&readings, &self.info, interval, now, force)
        {
            self.send(measurement);
        }
        let statuses = self
            .with_selected(|module, cx| module.readings(cx, now))
            .unwrap_or_default();
        for message in statuses {
            self.send(message);
        }
    }

    /// Run `f` on the selected control type's module, with what it may use.
    fn with_selected<R>(
        &mut self,
        f: impl FnOnce(&mut dyn ControlModule, &mut Context<'_>) -> R,
    ) -> Option<R> {
        let Engine {
            modules,
            ids,
            readings,
            available,
            info,
            control,
            ..
        } = self;
        let selected = (*control)?;
        let module = modules.iter_mut().find(|m| m.control_type() == selected)?;
        let mut cx = Context {
            ids,
            readings: readings.as_ref(),
            available: *available,
            kind: info.kind,
        };
        Some(f(module.as_mut(), &mut cx))
    }

    // ----------------------------------------------------------------------------------
    // Instructions
    // ----------------------------------------------------------------------------------

    async fn on_instruction(&mut self, instructed: &Instructed) {
        let now = self.now();
        tracing::info!(resource = %self.resource_id, instruction = %instructed.explanation, "instruction received");
        let planned = if self.control_allowed {
            self.plan_instruction(instructed, now)
        } else {
            Err("CEM control is switched off locally".to_string())
        };
        match planned {
            Ok(planned) => {
                self.status(instructed.id, InstructionStatus::Accepted);
                self.plan.add(planned);
                self.run_due(now).await;
            }
            Err(reason) => {
                tracing::warn!(resource = %self.resource_id, instruction = %instructed.id, reason, "instruction rejected");
                self.counters.failed = self.counters.failed.saturating_add(1);
                self.status(instructed.id, InstructionStatus::Rejected);
            }
        }
    }

    fn plan_instruction(
        &mut self,
        instructed: &Instructed,
        now: Timestamp,
    ) -> Result<Planned, String> {
        if !instructed.explanation.is_actionable() {
            return Err(instructed.explanation.to_string());
        }
        if !self.available {
            return Err("the device is unavailable".to_string());
        }
        if self.control.is_none() {
            return Err("no control type is selected".to_string());
        }
        self.with_selected(|module, cx| module.plan(cx, instructed, now))
            .unwrap_or_else(|| Err("the selected control type is not offered".to_string()))
    }

    /// Start what is due, apply due envelope steps, end what ran out.
    async fn run_due(&mut self, now: Timestamp) {
        let (start, overtaken) = self.plan.take_due(now);
        for planned in overtaken {
            tracing::info!(resource = %self.resource_id, instruction = %planned.id, "replaced before it ran");
            self.status(planned.id, InstructionStatus::Revoked);
        }
        if let Some(planned) = start {
            self.execute(planned, now).await;
        }
        if let Some(command) = self.plan.take_due_step(now) {
            self.retry = Some(command);
            self.retry_write(now).await;
        }
        if self.plan.active_expired(now) {
            self.release("instruction validity ended").await;
        }
    }

    async fn execute(&mut self, planned: Planned, now: Timestamp) {
        let Some(first) = planned.steps.first().map(|s| s.command.clone()) else {
            return;
        };
        self.status(planned.id, InstructionStatus::Started);
        match self.apply(&first).await {
            Ok(()) => {
                tracing::info!(resource = %self.resource_id, instruction = %planned.id, command = %first.summary(), "instruction carried out");
                // A newer command replaces any write still being retried.
                self.retry = None;
                self.status(planned.id, InstructionStatus::Succeeded);
                self.counters.executed = self.counters.executed.saturating_add(1);
                let statuses = self
                    .with_selected(|module, cx| module.carried_out(cx, &planned, now))
                    .unwrap_or_default();
                self.plan.activate(planned);
                for message in statuses {
                    self.send(message);
                }
            }
            Err(error) => {
                // Rule 4: a failed write is reported, never dropped.
                tracing::error!(resource = %self.resource_id, instruction = %planned.id, %error, "device refused the instruction");
                self.counters.failed = self.counters.failed.saturating_add(1);
                self.status(planned.id, InstructionStatus::Aborted);
            }
        }
    }

    async fn on_revoked(&mut self, object_type: RevokableObjects, object_id: Id) {
        if object_type.owner() != s2gw_core::s2::EnergyManagementRole::Cem {
            return;
        }
        if self.plan.revoke_waiting(object_id).is_some() {
            tracing::info!(resource = %self.resource_id, instruction = %object_id, "instruction revoked before it ran");
            self.status(object_id, InstructionStatus::Revoked);
        } else if self.plan.active().is_some_and(|a| a.id == object_id) {
            self.release("active instruction revoked").await;
        } else {
            tracing::debug!(resource = %self.resource_id, instruction = %object_id, "revoked instruction is neither waiting nor active");
        }
    }

    /// Waiting instructions die with their control type; S2 allows no status for them
    /// once the control type is gone, so they are logged.
    fn drop_waiting(&mut self) {
        for planned in self.plan.clear() {
            tracing::info!(resource = %self.resource_id, instruction = %planned.id, "waiting instruction dropped with its control type");
        }
    }

    // ----------------------------------------------------------------------------------
    // The view
    // ----------------------------------------------------------------------------------

    fn publish_view(&self) {
        let active = match (&self.retry, self.plan.active()) {
            (Some(Command::Release), _) => Some("releasing (retrying)".to_string()),
            (_, Some(active)) => Some(active.summary.clone()),
            (_, None) => None,
        };
        let next = RmView {
            resource_id: self.config.resource_id.clone(),
            name: self.config.name.clone(),
            kind: self.info.kind,
            readings: self.readings.clone(),
            available: self.available,
            offered: self.offered.clone(),
            control_type: self.control,
            active,
            link: self.link.clone(),
            updated: to_system_time(self.now()),
            instructions_executed: self.counters.executed,
            instructions_failed: self.counters.failed,
            releases: self.counters.releases,
            sessions: self.counters.sessions,
        };
        self.view.send_if_modified(|view| {
            let changed = RmView {
                updated: view.updated,
                ..next.clone()
            } != *view;
            if changed {
                *view = next;
            }
            changed
        });
    }
}

/// `now` plus a std duration.
fn after(now: Timestamp, duration: StdDuration) -> Timestamp {
    now.checked_add(s2_duration(duration)).unwrap_or(now)
}
