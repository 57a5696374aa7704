//! FRBC: step the first actuator through its operation modes, using only modes that are
//! described at the present fill level and that would move it somewhere it can go.

use s2gw_core::s2::{Id, Timestamp, frbc, mint_id};

use super::modes::ModeTracker;

/// Where in each mode's range the instructions run: half power, so a newcomer sees the
/// battery charge and discharge without hitting its limits at once.
const FACTOR: f64 = 0.5;

/// What the RM announced for FRBC, and the next mode to ask for.
#[derive(Debug, Default)]
pub(super) struct FrbcPlanner {
    description: Option<frbc::SystemDescription>,
    fill_level: Option<f64>,
    modes: ModeTracker,
}

impl FrbcPlanner {
    /// The actuator this planner drives: the first one described.
    fn actuator(&self) -> Option<&frbc::ActuatorDescription> {
        self.description.as_ref()?.actuators.first()
    }

    /// Whether a message about `actuator` concerns the one driven (before any description
    /// nothing is known to tell them apart, so it does).
    fn drives(&self, actuator: Id) -> bool {
        self.actuator().is_none_or(|a| a.id == actuator)
    }

    /// An FRBC.SystemDescription.
    pub(super) fn described(&mut self, description: frbc::SystemDescription) {
        self.description = Some(description);
    }

    /// An FRBC.StorageStatus.
    pub(super) fn storage(&mut self, status: &frbc::StorageStatus) {
        self.fill_level = Some(status.present_fill_level);
    }

    /// An FRBC.TimerStatus.
    pub(super) fn timer(&mut self, actuator: Id, timer: Id, finished_at: Timestamp) {
        if self.drives(actuator) {
            self.modes.timers.report(timer, finished_at);
        }
    }

    /// An FRBC.ActuatorStatus.
    pub(super) fn status(&mut self, status: &frbc::ActuatorStatus, now: Timestamp) {
        if !self.drives(status.actuator_id) {
            return;
        }
        let (transitions, timers) = self
            .actuator()
            .map(|a| (a.transitions.clone(), a.timers.clone()))
            .unwrap_or_default();
        self.modes
            .reported(status.active_operation_mode_id, &transitions, &timers, now);
    }

    /// FRBC was (re)selected.
    pub(super) fn selected(&mut self) {
        self.modes.selected();
    }

    /// The instruction on its way was not carried out.
    pub(super) fn not_done(&mut self) {
        self.modes.not_done();
    }

    /// The move to the next mode, if one is allowed at `now`.
    pub(super) fn instruction(&mut self, now: Timestamp) -> Option<frbc::Instruction> {
        let description = self.description.as_ref()?;
        let actuator = description.actuators.first()?;
        // Which element of a mode applies depends on the fill level: without it no mode
        // can be checked, and the RM sends it before its description anyway.
        let level = self.fill_level?;
        let (lowest, highest) = description.storage.fill_level_range.ordered();
        let usable = |id: Id| {
            let Some(mode) = actuator.operation_mode(&id) else {
                return false;
            };
            // A mode without an element at this fill level does not exist here: the RM
            // rejects it.
            let Some(element) = mode.element_at(level) else {
                return false;
            };
            // Filling a full store or emptying an empty one is accepted and does nothing.
            let rate = element.fill_rate.at_factor(FACTOR);
            let pointless = (rate > 0.0 && level >= highest) || (rate < 0.0 && level <= lowest);
            !mode.abnormal_condition_only && !pointless
        };
        let modes: Vec<Id> = actuator.operation_modes.iter().map(|m| m.id).collect();
        let mode = self
            .modes
            .next(&modes, &actuator.transitions, now, usable)?;
        let actuator_id = actuator.id;
        self.modes.asked(mode);
        Some(frbc::Instruction {
            message_id: mint_id(),
            id: mint_id(),
            actuator_id,
            operation_mode: mode,
            operation_mode_factor: FACTOR,
            execution_time: now,
            abnormal_condition: false,
        })
    }
}
