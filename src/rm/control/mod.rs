//! The control types, one module each: what it describes when selected, the state it
//! keeps, how it turns an instruction into device steps and what it reports once they
//! were carried out. The engine knows none of that; it asks the selected
//! [`ControlModule`].
//!
//! # Adding a control type
//!
//! Write `control/<type>.rs` with a struct implementing [`ControlModule`], and give its
//! device capability one arm in `module_for`. Nothing else in the engine changes.

mod ddbc;
mod frbc;
mod not_controllable;
mod ombc;
mod pebc;
mod ppbc;

use s2gw_core::Readings;
use s2gw_core::device::{ControlCapability, DeviceKind};
use s2gw_core::s2::{CommodityQuantity, ControlType, Instructed, Message, Timestamp, WireProfile};

use super::ids::IdBook;
use super::plan::Planned;

/// The quantity every control type's powers are stated in: the device's total power.
pub(crate) const QUANTITY: CommodityQuantity = CommodityQuantity::ElectricPower3PhaseSymmetric;

/// What a control module may look at and use while it decides.
pub(crate) struct Context<'a> {
    /// The resource's stable ids.
    pub ids: &'a IdBook,
    /// The device's last readings, if it was read.
    pub readings: Option<&'a Readings>,
    /// Whether the device is reachable and reporting.
    pub available: bool,
    /// What kind of device it is.
    pub kind: DeviceKind,
    /// The wire shape the session agreed on, once it did (DDBC differs by version).
    pub profile: Option<WireProfile>,
}

/// One control type of one device. Created once per RM (state that outlives a session,
/// such as OMBC's timers, stays), told when a session starts.
pub(crate) trait ControlModule: Send {
    /// The S2 control type it implements.
    fn control_type(&self) -> ControlType;

    /// A new S2 session began: forget what was reported in the previous one.
    fn session_started(&mut self) {}

    /// The CEM selected this control type: the descriptions and first statuses.
    fn describe(&mut self, cx: &mut Context<'_>, now: Timestamp) -> Vec<Message>;

    /// New readings, whether selected or not: the statuses that follow them, which the
    /// core sends only while this type is selected. A module that is not selected keeps
    /// watching (a device switching by itself starts its timers all the same).
    fn readings(&mut self, _cx: &mut Context<'_>, _now: Timestamp) -> Vec<Message> {
        Vec::new()
    }

    /// An instruction s2-kit accepted, as device steps; or why it cannot be carried out
    /// (answered REJECTED).
    fn plan(
        &mut self,
        cx: &mut Context<'_>,
        instructed: &Instructed,
        now: Timestamp,
    ) -> Result<Planned, String>;

    /// The device was released to its autonomous behaviour (fail-safe): what changed,
    /// to report if this type is selected. Called on every module, selected or not.
    fn released(&mut self, _cx: &mut Context<'_>, _now: Timestamp) -> Vec<Message> {
        Vec::new()
    }

    /// The device confirmed the instruction's first command: the statuses to report.
    fn carried_out(
        &mut self,
        _cx: &mut Context<'_>,
        _planned: &Planned,
        _now: Timestamp,
    ) -> Vec<Message> {
        Vec::new()
    }
}

/// The modules for a device's capabilities, in the device's order: one arm per type.
pub(crate) fn modules_for(capabilities: &[ControlCapability]) -> Vec<Box<dyn ControlModule>> {
    capabilities.iter().map(module_for).collect()
}

fn module_for(capability: &ControlCapability) -> Box<dyn ControlModule> {
    match capability.clone() {
        ControlCapability::NotControllable => Box::new(not_controllable::NotControllable),
        ControlCapability::PowerEnvelope { min_w, max_w } => {
            Box::new(pebc::Pebc::new(min_w, max_w))
        }
        ControlCapability::Storage {
            capacity_wh,
            max_charge_w,
            max_discharge_w,
            min_soc,
            max_soc,
        } => Box::new(frbc::Frbc::new(frbc::Storage {
            capacity_wh,
            max_charge_w,
            max_discharge_w,
            min_soc,
            max_soc,
        })),
        ControlCapability::OperationModes {
            modes,
            min_on_s,
            min_off_s,
        } => Box::new(ombc::Ombc::new(ombc::Modes {
            modes,
            min_on_s,
            min_off_s,
        })),
        ControlCapability::PowerProfile { programmes } => Box::new(ppbc::Ppbc::new(programmes)),
        ControlCapability::DemandDriven {
            actuators,
            forecast_step_s,
        } => Box::new(ddbc::Ddbc::new(actuators, forecast_step_s)),
    }
}

/// The control type each capability gives, in the device's order.
pub(crate) fn control_types_of(capabilities: &[ControlCapability]) -> Vec<ControlType> {
    capabilities
        .iter()
        .map(|c| module_for(c).control_type())
        .collect()
}
