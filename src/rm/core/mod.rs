//! The virtual RM's decisions, free of I/O: inputs are bus events, device read and write
//! results and `now`; outputs are bus events to send and device calls to make, and the
//! next deadline. The [driver](super::driver) does the I/O.
//!
//! One device call is outstanding at a time, as if the core awaited it: while a write is
//! in flight the core takes no further session event and starts no instruction, and
//! carries on where it stopped when [`Core::write_done`] brings the result. The driver
//! delivers no other input meanwhile.
//!
//! # Layout
//! - `mod.rs`: the state, the inputs and the outputs;
//! - `session.rs`: the S2 session (s2-kit's `RmSession`) and what it reports;
//! - `instructions.rs`: planning, starting and revoking instructions;
//! - `device.rs`: reads, availability, writes, the fail-safe release.

mod device;
mod instructions;
mod session;

use std::collections::VecDeque;
use std::time::Duration as StdDuration;

use s2gw_core::device::DeviceInfo;
use s2gw_core::s2::{ControlType, Id, RmSession, Timestamp, WireProfile};
use s2gw_core::{Backoff, BusEvent, Command, DeviceError, Readings};

use super::clock::to_system_time;
use super::control::{self, Context, ControlModule};
use super::describe::{self, s2_duration};
use super::ids::IdBook;
use super::measure::Measurer;
use super::plan::{Plan, Planned};
use super::{LinkState, RmView, VirtualRmConfig};

/// The longest back-off between reads of an unavailable device.
const MAX_READ_BACKOFF: StdDuration = StdDuration::from_secs(60);

/// What the core asks the driver to do, in order.
#[derive(Debug)]
pub(crate) enum Output {
    /// Hand this to the bus.
    Bus(BusEvent),
    /// Read the device, and bring the result to [`Core::read_done`].
    Read,
    /// Write to the device, and bring the write back with its result to
    /// [`Core::write_done`].
    Write(Write),
}

/// One device write and why it was made.
#[derive(Debug)]
pub(crate) struct Write {
    /// What the device is told.
    pub command: Command,
    /// What the result decides.
    pub purpose: Purpose,
}

/// Why a write was made.
#[derive(Debug)]
pub(crate) enum Purpose {
    /// The first command of an instruction that was just STARTED.
    Instruction(Box<Planned>),
    /// The command that must reach the device: a Release or a later envelope step,
    /// retried every poll interval until it does.
    Pending,
}

/// The counters the view shows.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    executed: u64,
    failed: u64,
    releases: u64,
    sessions: u64,
}

/// One virtual RM's state and decisions.
pub(crate) struct Core {
    config: VirtualRmConfig,
    info: DeviceInfo,
    resource_id: Id,
    offered: Vec<ControlType>,
    ids: IdBook,
    /// The time of the input being handled.
    now: Timestamp,
    outbox: VecDeque<Output>,
    /// Whether a write is in flight (see the module docs).
    busy: bool,
    /// Whether the RM said `Up` on the bus (after its first read: rule 3).
    announced: bool,
    session: Option<RmSession>,
    link: LinkState,
    /// The wire shape this session agreed on.
    profile: Option<WireProfile>,
    control: Option<ControlType>,
    /// One module per control type the device offers; the selected one decides.
    modules: Vec<Box<dyn ControlModule>>,
    readings: Option<Readings>,
    available: bool,
    read_failures: u32,
    read_backoff: Backoff,
    next_poll: Timestamp,
    measurer: Measurer,
    plan: Plan,
    /// The write that still has to reach the device, and when to try it next.
    retry: Option<Command>,
    retry_at: Timestamp,
    /// Whether the device was commanded since its last successful Release.
    dirty: bool,
    counters: Counters,
    /// Lines about what can repeat for as long as the device or the CEM misbehaves
    /// (failed writes, refused messages): logged, then counted. It reads the monotonic
    /// clock itself: it decides only which lines are written, never what the core does.
    repeats: s2gw_core::LogThrottle,
    /// The local switch: whether the CEM may control the device at all.
    control_allowed: bool,
}

impl Core {
    /// A core for a device described by `info`, with the CEM allowed control or not.
    pub(crate) fn new(
        config: VirtualRmConfig,
        info: DeviceInfo,
        control_allowed: bool,
        now: Timestamp,
    ) -> Self {
        let resource_id = describe::resource_id(&config);
        let poll = config.poll_interval.max(StdDuration::from_millis(10));
        let mut core = Self {
            modules: control::modules_for(&info.control),
            read_backoff: Backoff::new(poll, MAX_READ_BACKOFF.max(poll)),
            ids: IdBook::for_resource(resource_id.as_str()),
            offered: Vec::new(),
            config,
            info,
            resource_id,
            now,
            outbox: VecDeque::new(),
            busy: false,
            announced: false,
            session: None,
            link: LinkState::Down,
            profile: None,
            control: None,
            readings: None,
            available: false,
            read_failures: 0,
            next_poll: now,
            measurer: Measurer::default(),
            plan: Plan::default(),
            retry: None,
            retry_at: now,
            dirty: false,
            counters: Counters::default(),
            repeats: s2gw_core::LogThrottle::default(),
            control_allowed,
        };
        core.offered = core.offer();
        core
    }

    // ----------------------------------------------------------------------------------
    // Inputs
    // ----------------------------------------------------------------------------------

    /// The RM starts: rule 3, the device is read before anything else happens.
    pub(crate) fn start(&mut self, now: Timestamp) {
        self.now = now;
        self.request_read();
    }

    /// An event from the CEM side. `Up` needs the device's current description:
    /// [`Core::link_up`].
    pub(crate) fn bus(&mut self, event: BusEvent, now: Timestamp) {
        self.now = now;
        match event {
            BusEvent::Up => {
                let info = self.info.clone();
                self.link_up(info, now);
            }
            BusEvent::Frame(frame) => self.on_frame(&frame),
            BusEvent::Down { reason } | BusEvent::Close { reason, .. } => self.link_lost(&reason),
            BusEvent::Rejected(_) => {}
        }
    }

    /// A CEM link came up: a new S2 session, describing the device as it is now (it
    /// may have been unreachable when the RM started).
    pub(crate) fn link_up(&mut self, info: DeviceInfo, now: Timestamp) {
        self.now = now;
        if info.control != self.info.control {
            self.modules = control::modules_for(&info.control);
        }
        self.info = info;
        self.start_session();
    }

    /// Time passed: whatever fell due.
    pub(crate) fn tick(&mut self, now: Timestamp) {
        self.now = now;
        if self.next_poll <= now {
            self.request_read();
        }
        if self.retry.is_some() && self.retry_at <= now {
            self.retry_write();
        }
        if let Some(session) = self.session.as_mut()
            && session.poll_timeout().is_some_and(|t| t <= now)
        {
            session.handle_timeout(now);
        }
        self.drain();
        self.run_due();
        self.drain();
    }

    /// The local switch moved: release if control was taken away, and have the CEM
    /// reconnect so that the new session announces what is offered now.
    pub(crate) fn set_control_allowed(&mut self, allowed: bool, now: Timestamp) {
        self.now = now;
        if allowed == self.control_allowed {
            return;
        }
        self.control_allowed = allowed;
        tracing::info!(resource = %self.resource_id, allowed, "CEM control switched locally");
        if !allowed {
            self.drop_waiting();
            self.release("CEM control switched off locally");
        }
        self.request_reconnect(allowed);
    }

    /// The gateway stops: release the device and say goodbye on the bus.
    pub(crate) fn stop(&mut self, now: Timestamp) {
        self.now = now;
        tracing::info!(resource = %self.resource_id, "shutting down");
        self.release("shutdown");
        if self.session.is_some() {
            self.end_session();
        }
        self.outbox.push_back(Output::Bus(BusEvent::Down {
            reason: "gateway shutting down".to_string(),
        }));
    }

    // ----------------------------------------------------------------------------------
    // Outputs
    // ----------------------------------------------------------------------------------

    /// The next thing to do.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outbox.pop_front()
    }

    /// When something next falls due.
    pub(crate) fn next_deadline(&self) -> Timestamp {
        [
            self.session.as_ref().and_then(RmSession::poll_timeout),
            self.plan.next_deadline(),
            self.retry.as_ref().map(|_| self.retry_at),
        ]
        .into_iter()
        .flatten()
        .fold(self.next_poll, Timestamp::min)
    }

    /// A snapshot for the demo view, the MQTT mirror and metrics.
    pub(crate) fn view(&self) -> RmView {
        let active = match (&self.retry, self.plan.active()) {
            (Some(Command::Release), _) => Some("releasing (retrying)".to_string()),
            (_, Some(active)) => Some(active.summary.clone()),
            (_, None) => None,
        };
        RmView {
            resource_id: self.config.resource_id.clone(),
            name: self.config.name.clone(),
            kind: self.info.kind,
            readings: self.readings.clone(),
            available: self.available,
            offered: self.offered.clone(),
            control_type: self.control,
            active,
            link: self.link.clone(),
            updated: to_system_time(self.now),
            instructions_executed: self.counters.executed,
            instructions_failed: self.counters.failed,
            releases: self.counters.releases,
            sessions: self.counters.sessions,
        }
    }

    // ----------------------------------------------------------------------------------
    // Shared helpers
    // ----------------------------------------------------------------------------------

    /// What this RM offers now: nothing but measurements while control is switched off.
    fn offer(&self) -> Vec<ControlType> {
        if self.control_allowed {
            describe::offered_control_types(&self.config, &self.info)
        } else {
            vec![ControlType::NotControllable]
        }
    }

    /// Run `f` on the selected control type's module, with what it may use.
    fn with_selected<R>(
        &mut self,
        f: impl FnOnce(&mut dyn ControlModule, &mut Context<'_>) -> R,
    ) -> Option<R> {
        let (modules, mut cx, selected) = self.modules_in_context();
        let selected = selected?;
        let module = modules.iter_mut().find(|m| m.control_type() == selected)?;
        Some(f(module.as_mut(), &mut cx))
    }

    /// The control modules, what they may use, and which one is selected.
    fn modules_in_context(
        &mut self,
    ) -> (
        &mut [Box<dyn ControlModule>],
        Context<'_>,
        Option<ControlType>,
    ) {
        let cx = Context {
            ids: &self.ids,
            readings: self.readings.as_ref(),
            available: self.available,
            kind: self.info.kind,
            profile: self.profile,
        };
        (&mut self.modules, cx, self.control)
    }

    fn after(&self, duration: StdDuration) -> Timestamp {
        self.now
            .checked_add(s2_duration(duration))
            .unwrap_or(self.now)
    }
}

/// How a read ended, for [`Core::read_done`].
pub(crate) type ReadResult = Result<Readings, DeviceError>;

#[cfg(test)]
mod tests;
