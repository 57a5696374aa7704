//! Instructions: checked and planned by the selected control type, ACCEPTED or REJECTED,
//! STARTED at their `execution_time`, revoked, replaced, ended.

use s2gw_core::s2::{EnergyManagementRole, Id, Instructed, InstructionStatus, RevokableObjects};

use super::{Core, Purpose};
use crate::rm::plan::Planned;

impl Core {
    pub(super) fn on_instruction(&mut self, instructed: &Instructed) {
        tracing::info!(resource = %self.resource_id, instruction = %instructed.explanation, "instruction received");
        let planned = if self.control_allowed {
            self.plan_instruction(instructed)
        } else {
            Err("CEM control is switched off locally".to_string())
        };
        match planned {
            Ok(planned) => {
                self.status(instructed.id, InstructionStatus::Accepted);
                self.plan.add(planned);
                self.run_due();
            }
            Err(reason) => {
                tracing::warn!(resource = %self.resource_id, instruction = %instructed.id, reason, "instruction rejected");
                self.counters.failed = self.counters.failed.saturating_add(1);
                self.status(instructed.id, InstructionStatus::Rejected);
            }
        }
    }

    fn plan_instruction(&mut self, instructed: &Instructed) -> Result<Planned, String> {
        if !instructed.explanation.is_actionable() {
            return Err(instructed.explanation.to_string());
        }
        if !self.available {
            return Err("the device is unavailable".to_string());
        }
        if self.control.is_none() {
            return Err("no control type is selected".to_string());
        }
        let now = self.now;
        self.with_selected(|module, cx| module.plan(cx, instructed, now))
            .unwrap_or_else(|| Err("the selected control type is not offered".to_string()))
    }

    /// Start what is due, apply due envelope steps, end what ran out. Stops at a write
    /// and is run again once its result is in.
    pub(super) fn run_due(&mut self) {
        if self.busy {
            return;
        }
        let now = self.now;
        let (start, overtaken) = self.plan.take_due(now);
        for planned in overtaken {
            tracing::info!(resource = %self.resource_id, instruction = %planned.id, "replaced before it ran");
            self.status(planned.id, InstructionStatus::Revoked);
        }
        if let Some(planned) = start {
            self.execute(planned);
            if self.busy {
                return;
            }
        }
        if let Some(command) = self.plan.take_due_step(now) {
            self.retry = Some(command);
            self.retry_write();
            return;
        }
        if self.plan.active_expired(now) {
            self.release("instruction validity ended");
        }
    }

    fn execute(&mut self, planned: Planned) {
        let Some(first) = planned.steps.first().map(|s| s.command.clone()) else {
            return;
        };
        self.status(planned.id, InstructionStatus::Started);
        self.push_write(first, Purpose::Instruction(Box::new(planned)));
    }

    pub(super) fn on_revoked(&mut self, object_type: RevokableObjects, object_id: Id) {
        if object_type.owner() != EnergyManagementRole::Cem {
            return;
        }
        if self.plan.revoke_waiting(object_id).is_some() {
            tracing::info!(resource = %self.resource_id, instruction = %object_id, "instruction revoked before it ran");
            self.status(object_id, InstructionStatus::Revoked);
        } else if self.plan.active().is_some_and(|a| a.id == object_id) {
            self.release("active instruction revoked");
        } else {
            tracing::debug!(resource = %self.resource_id, instruction = %object_id, "revoked instruction is neither waiting nor active");
        }
    }

    /// Waiting instructions die with their control type; S2 allows no status for them
    /// once the control type is gone, so they are logged.
    pub(super) fn drop_waiting(&mut self) {
        for planned in self.plan.clear() {
            tracing::info!(resource = %self.resource_id, instruction = %planned.id, "waiting instruction dropped with its control type");
        }
    }
}
