//! OMBC: step through the operation modes one described transition at a time, each only
//! once the RM's timers allow it.

use s2gw_core::s2::{Id, Timestamp, mint_id, ombc};

use super::modes::ModeTracker;

/// What the RM announced for OMBC, and the next mode to ask for.
#[derive(Debug, Default)]
pub(super) struct OmbcPlanner {
    description: Option<ombc::SystemDescription>,
    modes: ModeTracker,
}

impl OmbcPlanner {
    /// An OMBC.SystemDescription.
    pub(super) fn described(&mut self, description: ombc::SystemDescription) {
        self.description = Some(description);
    }

    /// An OMBC.TimerStatus.
    pub(super) fn timer(&mut self, timer: Id, finished_at: Timestamp) {
        self.modes.timers.report(timer, finished_at);
    }

    /// An OMBC.Status.
    pub(super) fn status(&mut self, status: &ombc::Status, now: Timestamp) {
        let (transitions, timers) = self
            .description
            .as_ref()
            .map(|d| (d.transitions.as_slice(), d.timers.as_slice()))
            .unwrap_or_default();
        self.modes
            .reported(status.active_operation_mode_id, transitions, timers, now);
    }

    /// OMBC was (re)selected.
    pub(super) fn selected(&mut self) {
        self.modes.selected();
    }

    /// The instruction on its way was not carried out.
    pub(super) fn not_done(&mut self) {
        self.modes.not_done();
    }

    /// The move to the next mode, if one is allowed at `now`.
    pub(super) fn instruction(&mut self, now: Timestamp) -> Option<ombc::Instruction> {
        let description = self.description.as_ref()?;
        let modes: Vec<Id> = description.operation_modes.iter().map(|m| m.id).collect();
        let usable = |id: Id| {
            description
                .operation_mode(&id)
                .is_some_and(|m| !m.abnormal_condition_only)
        };
        let mode = self
            .modes
            .next(&modes, &description.transitions, now, usable)?;
        self.modes.asked(mode);
        Some(ombc::Instruction {
            message_id: mint_id(),
            id: mint_id(),
            execution_time: now,
            operation_mode_id: mode,
            operation_mode_factor: 0.0,
            abnormal_condition: false,
        })
    }
}
