//! NOT_CONTROLABLE: measurements only (the engine sends those for every control type).

use s2gw_core::s2::{ControlType, Instructed, Message, Timestamp};

use super::{Context, ControlModule};
use crate::rm::plan::Planned;

/// A device the CEM may watch but not steer.
pub(crate) struct NotControllable;

impl ControlModule for NotControllable {
    fn control_type(&self) -> ControlType {
        ControlType::NotControllable
    }

    fn describe(&mut self, _cx: &mut Context<'_>, _now: Timestamp) -> Vec<Message> {
        Vec::new()
    }

    fn plan(
        &mut self,
        _cx: &mut Context<'_>,
        instructed: &Instructed,
        _now: Timestamp,
    ) -> Result<Planned, String> {
        Err(format!(
            "{} does not fit the selected control type",
            instructed.kind
        ))
    }
}
