//! The demo CEM: s2-kit's `CemSession` behind a real WebSocket server.
//!
//! `s2gw demo` runs it on loopback for the gateway to dial; `s2gw cem --listen ADDR` runs
//! it alone, so an installer can point a real gateway config at it and watch the whole
//! session happen. It accepts any path, plays one CEM session per connection, selects a
//! control type per resource (rotating through everything the resource offers), and sends
//! a believable instruction now and then.

use std::net::SocketAddr;
use std::time::Duration as StdDuration;

use futures_util::{SinkExt, StreamExt};
use s2_kit::types::common::{CommodityQuantity, ControlType};
use s2_kit::types::{frbc, ombc, pebc};
use s2gw_core::CancellationToken;
use s2gw_core::s2::{CemConfig, CemEvent, CemSession, Id, Message, Timestamp, mint_id};
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
    let mut session = CemSession::new(CemConfig::default());
    session.open(Timestamp::now());
    let mut plan = Planner::new(config.clone());
    let mut tick = tokio::time::interval(StdDuration::from_secs(1));
    loop {
        while let Some(out) = session.poll_transmit() {
            ws.send(WsMessage::text(out.text)).await?;
        }
        while let Some(event) = session.poll_event() {
            if let CemEvent::Closed { reason, .. } = &event {
                tracing::info!(%peer, ?reason, "demo CEM: session closed");
                let _ = ws.close(None).await;
                return Ok(());
            }
            plan.on_event(event);
        }
        let deadline = session
            .poll_timeout()
            .map(|at| at.saturating_duration_since(Timestamp::now()));
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return Ok(());
            }
            frame = ws.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    session.handle_text(text.as_str(), Timestamp::now());
                }
                Some(Ok(WsMessage::Close(_))) | None => {
                    session.transport_closed(Timestamp::now());
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.into()),
            },
            () = sleep_for(deadline) => session.handle_timeout(Timestamp::now()),
            _ = tick.tick() => plan.act(&mut session, Timestamp::now()),
        }
    }
}

async fn sleep_for(deadline: Option<s2_kit::Duration>) {
    match deadline {
        Some(d) => tokio::time::sleep(StdDuration::from_millis(d.as_millis())).await,
        None => std::future::pending().await,
    }
}

/// What the demo CEM knows about its resource and what it does next.
///
/// Kept apart from the socket loop so the choices are plain functions of what was
/// described.
#[derive(Debug)]
pub struct Planner {
    config: DemoCemConfig,
    resource: Option<String>,
    offered: Vec<ControlType>,
    next_offer: usize,
    active: Option<ControlType>,
    selected_at: Option<std::time::Instant>,
    last_instruction: Option<std::time::Instant>,
    step: u64,
    constraints: Option<pebc::PowerConstraints>,
    frbc: Option<frbc::SystemDescription>,
    ombc: Option<ombc::SystemDescription>,
    pending_select: bool,
}

impl Planner {
    /// A planner that has seen nothing yet.
    pub fn new(config: DemoCemConfig) -> Self {
        Self {
            config,
            resource: None,
            offered: Vec::new(),
            next_offer: 0,
            active: None,
            selected_at: None,
            last_instruction: None,
            // Step 0 would be each description's first mode, which is usually "off" or
            // "idle": a demo that opens by switching everything off shows nothing.
            step: 1,
            constraints: None,
            frbc: None,
            ombc: None,
            pending_select: false,
        }
    }

    /// Learn from one session event.
    pub fn on_event(&mut self, event: CemEvent) {
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
                self.selected_at = Some(std::time::Instant::now());
                self.last_instruction = None;
            }
            CemEvent::Description { message, .. } => self.learn(message),
            CemEvent::InstructionStatus(update) => {
                tracing::info!(resource = ?self.resource, instruction = %update.instruction_id, status = ?update.status_type, "demo CEM: instruction status");
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

    fn learn(&mut self, message: Message) {
        match message {
            Message::PebcPowerConstraints(c) => self.constraints = Some(*c),
            Message::FrbcSystemDescription(d) => self.frbc = Some(*d),
            Message::OmbcSystemDescription(d) => self.ombc = Some(*d),
            _ => {}
        }
    }

    /// Do whatever is due: select, rotate, or instruct.
    pub fn act(&mut self, session: &mut CemSession, now: Timestamp) {
        if self.offered.is_empty() {
            return;
        }
        let rotate = self
            .selected_at
            .is_some_and(|at| at.elapsed() >= self.config.switch_every)
            && self.offered.len() > 1;
        if self.pending_select || rotate {
            let choice = self.offered[self.next_offer % self.offered.len()];
            self.next_offer += 1;
            self.pending_select = false;
            self.selected_at = Some(std::time::Instant::now());
            if let Err(error) = session.select_control_type(choice, now) {
                tracing::warn!(%error, "demo CEM: could not select a control type");
            }
            return;
        }
        let due = self
            .last_instruction
            .is_none_or(|at| at.elapsed() >= self.config.instruct_every);
        if !due {
            return;
        }
        let Some(instruction) = self.instruction(now) else {
            return;
        };
        self.last_instruction = Some(std::time::Instant::now());
        self.step += 1;
        if let Err(error) = session.instruct(instruction, now) {
            tracing::warn!(%error, "demo CEM: could not send an instruction");
        }
    }

    /// The next instruction for the active control type, from what was described.
    pub fn instruction(&self, now: Timestamp) -> Option<Message> {
        match self.active? {
            ControlType::PowerEnvelopeBasedControl => self.pebc(now),
            ControlType::FillRateBasedControl => self.frbc(now),
            ControlType::OperationModeBasedControl => self.ombc(now),
            _ => None,
        }
    }

    /// How far to open the envelope this step: 30 %, 60 %, 100 %, round and round.
    fn fraction(&self) -> f64 {
        [0.3, 0.6, 1.0][(self.step % 3) as usize]
    }

    fn pebc(&self, now: Timestamp) -> Option<Message> {
        let constraints = self.constraints.as_ref()?;
        let quantity = constraints
            .allowed_limit_ranges
            .first()
            .map_or(CommodityQuantity::ElectricPower3PhaseSymmetric, |r| {
                r.commodity_quantity
            });
        let f = self.fraction();
        let mut lower = f64::MIN;
        let mut upper = f64::MAX;
        for range in constraints
            .allowed_limit_ranges
            .iter()
            .filter(|r| r.commodity_quantity == quantity && !r.abnormal_condition_only)
        {
            let (start, end) = (
                range.range_boundary.start_of_range,
                range.range_boundary.end_of_range,
            );
            let (lo, hi) = (start.min(end), start.max(end));
            match range.limit_type {
                // The most permissive floor is the lowest one.
                pebc::PowerEnvelopeLimitType::LowerLimit => lower = hi - (hi - lo) * f,
                pebc::PowerEnvelopeLimitType::UpperLimit => upper = lo + (hi - lo) * f,
            }
        }
        if lower == f64::MIN || upper == f64::MAX || lower > upper {
            return None;
        }
        let duration = s2_kit::Duration::from_millis(self.config.envelope.as_millis() as u64);
        Some(Message::PebcInstruction(Box::new(pebc::Instruction {
            message_id: mint_id(),
            id: mint_id(),
            execution_time: now,
            abnormal_condition: false,
            power_constraints_id: constraints.id,
            power_envelopes: vec![pebc::PowerEnvelope {
                id: mint_id(),
                commodity_quantity: quantity,
                power_envelope_elements: vec![pebc::PowerEnvelopeElement::new(
                    duration, lower, upper,
                )],
            }],
        })))
    }

    fn frbc(&self, now: Timestamp) -> Option<Message> {
        let description = self.frbc.as_ref()?;
        let actuator = description.actuators.first()?;
        let modes: Vec<Id> = actuator
            .operation_modes
            .iter()
            .filter(|m| !m.abnormal_condition_only)
            .map(|m| m.id)
            .collect();
        let mode = *modes.get((self.step as usize) % modes.len().max(1))?;
        Some(Message::FrbcInstruction(Box::new(frbc::Instruction {
            message_id: mint_id(),
            id: mint_id(),
            actuator_id: actuator.id,
            operation_mode: mode,
            operation_mode_factor: 0.5,
            execution_time: now,
            abnormal_condition: false,
        })))
    }

    fn ombc(&self, now: Timestamp) -> Option<Message> {
        let description = self.ombc.as_ref()?;
        let modes: Vec<Id> = description
            .operation_modes
            .iter()
            .filter(|m| !m.abnormal_condition_only)
            .map(|m| m.id)
            .collect();
        let mode = *modes.get((self.step as usize) % modes.len().max(1))?;
        Some(Message::OmbcInstruction(Box::new(ombc::Instruction {
            message_id: mint_id(),
            id: mint_id(),
            execution_time: now,
            operation_mode_id: mode,
            operation_mode_factor: 0.0,
            abnormal_condition: false,
        })))
    }
}
