//! Virtual resource managers: one per device, each playing the RM side of one S2 resource
//! on the bus.
//!
//! A virtual RM hosts s2-kit's sans-IO [`RmSession`](s2gw_core::s2::RmSession) (a new
//! one for every CEM link that comes up), turns the device's [`Readings`] into S2
//! messages and S2 instructions into device [`Command`](s2gw_core::Command)s at their
//! `execution_time`. Its state is published through a watch channel as an [`RmView`]
//! for the demo view, the MQTT mirror and metrics.
//!
//! # Layout
//!
//! - `core/`: the sans-IO core: bus events, device read and write results and `now` in;
//!   bus events and device calls out, and the next deadline. All decisions live here.
//! - `driver.rs`: the thin async loop around the core that does the I/O: one tokio task
//!   per device ([`spawn_virtual_rm`]).
//! - `control/`: one module per control type, each owning its description, its state
//!   and its instruction handling; the core asks the selected one. A new control type is
//!   a module and one arm in `control::module_for`.
//! - `plan.rs` (waiting and active instructions), `describe.rs` (ResourceManagerDetails,
//!   what is offered), `measure.rs` (PowerMeasurement), `ids.rs` (stable UUIDs),
//!   `clock.rs`.
//!
//! # Control types
//!
//! | device capability | control type | descriptions sent on selection | instruction becomes |
//! |---|---|---|---|
//! | `NotControllable` | NOT_CONTROLABLE | PowerMeasurement | — |
//! | `PowerEnvelope` | PEBC | PEBC.PowerConstraints (UPPER and LOWER ranges) | `LimitPower` per envelope element, `Release` at its end |
//! | `Storage` | FRBC | FRBC.StorageStatus, SystemDescription, ActuatorStatus | `SetPower` |
//! | `OperationModes` | OMBC | OMBC.SystemDescription (min on/off timers), OMBC.Status, running TimerStatus | the mode's command |
//! | `PowerProfile` | PPBC | PPBC.PowerProfileDefinition (one container, a sequence per programme), PowerProfileStatus | `StartProgramme`, `Pause`, `Resume` |
//! | `DemandDriven` | DDBC | DDBC.SystemDescription (an actuator per device actuator), PresentDemandStatus (1.0.0), ActuatorStatus, AverageDemandRateForecast | `SetActuator` |
//!
//! PowerMeasurement flows for every control type: on a change of more than
//! max(10 W, 2 %) and at least every `measurement_interval`, never while the device is
//! unavailable.
//!
//! # Instructions
//!
//! Every instruction that s2-kit accepted (it answers INVALID_CONTENT itself for unknown
//! ids and for envelopes outside the announced ranges) is checked again by the engine and
//! answered **REJECTED** when it cannot be carried out (a mode blocked by a minimum on/off
//! timer, a fill level no element covers, an envelope outside what the device can do), or
//! **ACCEPTED** at once. At its `execution_time` (at once when that has passed) it is
//! **STARTED**, the command is applied, and it is **SUCCEEDED** when the device confirmed
//! it or **ABORTED** when the device refused or failed.
//!
//! Choices where S2 is silent:
//! - SUCCEEDED is sent as soon as the device confirmed the first command, not when a PEBC
//!   envelope runs out: certification tools expect an answer within seconds. The
//!   instruction stays *active* (shown in [`RmView::active`]) until it is replaced,
//!   revoked or its envelope ends.
//! - An instruction that starts replaces the active one, which needs no further status
//!   (it is already SUCCEEDED). Instructions waiting for their time are a schedule and
//!   each runs at its own time; when several fall due at the same moment only the newest
//!   (latest `execution_time`, then latest received) runs and the others are answered
//!   **REVOKED**: replaced before they ran.
//! - RevokeObject of a waiting instruction answers REVOKED and it never runs; of the
//!   active one, the device is released (no status: it already is terminal).
//! - A later PEBC envelope step that the device refuses is logged and retried every poll
//!   interval, like a failed Release.
//!
//! # Fail-safe
//!
//! On link loss, deselection, session close for any reason, the end of an instruction's
//! validity, revocation of the active instruction and shutdown, the device gets
//! [`Command::Release`](s2gw_core::Command::Release) at once, retried every poll interval
//! until it succeeds. A Release is only sent when the engine has commanded the device
//! since the last successful Release, so a device the gateway never touched keeps whatever
//! an installer set (design rule 3).

mod clock;
mod control;
mod core;
mod describe;
mod driver;
mod ids;
mod measure;
mod plan;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use s2gw_core::device::DeviceKind;
use s2gw_core::s2::ControlType;
use s2gw_core::{CancellationToken, Device, Endpoint, Readings};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use clock::{Clock, SystemClock, TokioClock};

/// How one virtual RM presents its device.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualRmConfig {
    /// The S2 `resource_id` (should be a UUID: s2-python and `s2energy` parse it as one).
    pub resource_id: String,
    /// The human-readable name in ResourceManagerDetails.
    pub name: String,
    /// The control types to offer: the profile's list, intersected with what the device
    /// offers. Empty offers everything the device offers.
    pub control_types: Vec<ControlType>,
    /// How often the device is read.
    pub poll_interval: Duration,
    /// The longest time between two PowerMeasurements while the device is available.
    pub measurement_interval: Duration,
    /// The `instruction_processing_delay` announced in ResourceManagerDetails.
    pub instruction_processing_delay: Duration,
    /// Overrides the device's manufacturer.
    pub manufacturer: Option<String>,
    /// Overrides the device's model.
    pub model: Option<String>,
    /// Overrides the device's serial number.
    pub serial: Option<String>,
    /// Overrides the device's firmware version.
    pub firmware: Option<String>,
}

impl VirtualRmConfig {
    /// A configuration with the defaults: everything the device offers, read every
    /// second, measured at least every ten seconds, one second processing delay.
    pub fn new(resource_id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            resource_id: resource_id.into(),
            name: name.into(),
            control_types: Vec::new(),
            poll_interval: Duration::from_secs(1),
            measurement_interval: Duration::from_secs(10),
            instruction_processing_delay: Duration::from_secs(1),
            manufacturer: None,
            model: None,
            serial: None,
            firmware: None,
        }
    }
}

/// The state of the S2 link as the virtual RM sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(tag = "state", content = "version", rename_all = "snake_case")]
pub enum LinkState {
    /// No CEM link.
    #[default]
    Down,
    /// A link is up and the handshake is under way.
    Handshaking,
    /// A protocol version was agreed.
    Connected(String),
}

/// A snapshot of one virtual RM, for the demo view, the MQTT mirror and metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RmView {
    /// The S2 resource id.
    pub resource_id: String,
    /// The resource's name.
    pub name: String,
    /// What kind of device it is.
    pub kind: DeviceKind,
    /// The last readings (`None` until the device was first read).
    pub readings: Option<Readings>,
    /// Whether the device is reachable and reporting.
    pub available: bool,
    /// The control types offered to a CEM.
    pub offered: Vec<ControlType>,
    /// The control type the CEM selected, if any.
    pub control_type: Option<ControlType>,
    /// The active instruction or limit, for people.
    pub active: Option<String>,
    /// The S2 link.
    pub link: LinkState,
    /// When anything in this view last changed.
    pub updated: SystemTime,
    /// Instructions carried out (SUCCEEDED).
    pub instructions_executed: u64,
    /// Instructions REJECTED or ABORTED.
    pub instructions_failed: u64,
    /// Releases applied (fail-safe returns to autonomous behaviour).
    pub releases: u64,
    /// S2 sessions started since the RM came up.
    pub sessions: u64,
}

impl RmView {
    fn initial(config: &VirtualRmConfig, kind: DeviceKind, now: SystemTime) -> Self {
        Self {
            resource_id: config.resource_id.clone(),
            name: config.name.clone(),
            kind,
            readings: None,
            available: false,
            offered: Vec::new(),
            control_type: None,
            active: None,
            link: LinkState::Down,
            updated: now,
            instructions_executed: 0,
            instructions_failed: 0,
            releases: 0,
            sessions: 0,
        }
    }
}

/// Start the virtual RM for one device.
///
/// It reads the device once, announces itself on the bus (`BusEvent::Up`) and then serves
/// one S2 session per CEM link until `shutdown` is cancelled, when it releases the device
/// and returns.
pub fn spawn_virtual_rm(
    config: VirtualRmConfig,
    device: Box<dyn Device>,
    endpoint: Endpoint,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> (JoinHandle<()>, watch::Receiver<RmView>) {
    // A gate nobody can close: the CEM may always control the device.
    let (_open, gate) = watch::channel(true);
    spawn_gated_virtual_rm(config, device, endpoint, clock, gate, shutdown)
}

/// Like [`spawn_virtual_rm`], with a local switch that can take control away from the CEM
/// (the Home Assistant "CEM control allowed" switch).
///
/// While `control_allowed` is `false` the device runs on its own: the RM releases it at
/// once, offers only NOT_CONTROLABLE, and refuses every instruction (REJECTED). The CEM
/// learns of each change through a SessionRequest RECONNECT: the new session's
/// ResourceManagerDetails carry the new offer, which is the one place S2 lets an RM
/// change what it offers.
pub fn spawn_gated_virtual_rm(
    config: VirtualRmConfig,
    device: Box<dyn Device>,
    endpoint: Endpoint,
    clock: Arc<dyn Clock>,
    control_allowed: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> (JoinHandle<()>, watch::Receiver<RmView>) {
    let mut control_allowed = control_allowed;
    let allowed = *control_allowed.borrow_and_update();
    let view = RmView::initial(&config, device.info().kind, clock.now());
    let (view_tx, view_rx) = watch::channel(view);
    let driver = driver::Driver::new(config, device, endpoint.tx, clock, view_tx, allowed);
    let handle = tokio::spawn(driver.run(endpoint.rx, control_allowed, shutdown));
    (handle, view_rx)
}
