//! PPBC: start one of the appliance's programmes soon, then pause an interruptible one
//! and resume it, once per task, each step only as the RM's definition and status allow.

use s2gw_core::s2::{Duration, Id, Message, Timestamp, mint_id, ppbc};

/// How far ahead a programme is scheduled: soon, so the demo shows it running, yet late
/// enough for the view to show it SCHEDULED first.
const START_IN: Duration = Duration::from_secs(5);
/// How long a programme stays paused before it is resumed.
const PAUSE_FOR: Duration = Duration::from_secs(16);

/// What the RM announced for PPBC, and what this planner did to the task described now.
#[derive(Debug, Default)]
pub(super) struct PpbcPlanner {
    definition: Option<ppbc::PowerProfileDefinition>,
    /// The status of the described task's container, as last reported.
    status: Option<ppbc::PowerSequenceContainerStatus>,
    /// A programme was scheduled for this task.
    scheduled: bool,
    /// When the pause was asked for; a task is paused once.
    paused_at: Option<Timestamp>,
    /// The pause was ended.
    resumed: bool,
}

impl PpbcPlanner {
    /// A PPBC.PowerProfileDefinition. The RM describes its task again at every
    /// selection; only a new one (the appliance was loaded again) starts afresh.
    pub(super) fn described(&mut self, definition: ppbc::PowerProfileDefinition) {
        if self.definition.as_ref().map(|d| d.id) != Some(definition.id) {
            self.status = None;
            self.scheduled = false;
            self.paused_at = None;
            self.resumed = false;
        }
        self.definition = Some(definition);
    }

    /// A PPBC.PowerProfileStatus: the described task's container status is kept.
    pub(super) fn status(&mut self, status: &ppbc::PowerProfileStatus) {
        let Some(profile) = self.definition.as_ref().map(|d| d.id) else {
            return;
        };
        if let Some(container) = status
            .sequence_container_status
            .iter()
            .find(|s| s.power_profile_id == profile)
        {
            self.status = Some(container.clone());
        }
    }

    /// The next step for the task, if one is due at `now`: schedule it while nobody has,
    /// pause it while an interruptible programme runs, resume it after [`PAUSE_FOR`].
    pub(super) fn instruction(&mut self, now: Timestamp) -> Option<Message> {
        let definition = self.definition.as_ref()?;
        let status = self.status.as_ref()?;
        let container = definition.container(&status.sequence_container_id)?;
        let target = Target {
            profile: definition.id,
            container: container.id,
        };
        use ppbc::PowerSequenceStatus as S;
        match status.status {
            S::NotScheduled if !self.scheduled => {
                let (sequence, at) = schedule(definition, container, now)?;
                self.scheduled = true;
                Some(
                    ppbc::ScheduleInstruction {
                        message_id: mint_id(),
                        id: mint_id(),
                        power_profile_id: target.profile,
                        sequence_container_id: target.container,
                        power_sequence_id: sequence,
                        execution_time: at,
                        abnormal_condition: false,
                    }
                    .into(),
                )
            }
            S::Executing if self.paused_at.is_none() => {
                let sequence = status.selected_sequence_id?;
                // The RM refuses to interrupt a sequence that is not interruptible.
                if !container.sequence(&sequence)?.is_interruptible {
                    return None;
                }
                self.paused_at = Some(now);
                Some(
                    ppbc::StartInterruptionInstruction {
                        message_id: mint_id(),
                        id: mint_id(),
                        power_profile_id: target.profile,
                        sequence_container_id: target.container,
                        power_sequence_id: sequence,
                        execution_time: now,
                        abnormal_condition: false,
                    }
                    .into(),
                )
            }
            S::Interrupted
                if !self.resumed
                    && self
                        .paused_at
                        .is_some_and(|at| super::elapsed(at, PAUSE_FOR, now)) =>
            {
                let sequence = status.selected_sequence_id?;
                self.resumed = true;
                Some(
                    ppbc::EndInterruptionInstruction {
                        message_id: mint_id(),
                        id: mint_id(),
                        power_profile_id: target.profile,
                        sequence_container_id: target.container,
                        power_sequence_id: sequence,
                        execution_time: now,
                        abnormal_condition: false,
                    }
                    .into(),
                )
            }
            _ => None,
        }
    }
}

/// Which container an instruction is about.
struct Target {
    profile: Id,
    container: Id,
}

/// The programme to schedule and its start: [`START_IN`] from `now` (not before the
/// window opens), an interruptible programme if one fits, else the first that fits.
///
/// "Fits" is stricter than ending inside the window: left alone the appliance starts a
/// programme of its own in time to finish by the window's end, and the RM refuses a
/// start later than that. The definition does not say which programme is the
/// appliance's own, so the start must leave room for the longest one.
fn schedule(
    definition: &ppbc::PowerProfileDefinition,
    container: &ppbc::PowerSequenceContainer,
    now: Timestamp,
) -> Option<(Id, Timestamp)> {
    let at = now.checked_add(START_IN)?.max(definition.start_time);
    let longest = container
        .power_sequences
        .iter()
        .map(ppbc::PowerSequence::total_duration)
        .max()?;
    if at > definition.end_time.checked_sub(longest)? {
        return None;
    }
    let fits = |s: &&ppbc::PowerSequence| {
        !s.abnormal_condition_only
            && at
                .checked_add(s.total_duration())
                .is_some_and(|end| end <= definition.end_time)
    };
    let sequences = &container.power_sequences;
    let chosen = sequences
        .iter()
        .filter(fits)
        .find(|s| s.is_interruptible)
        .or_else(|| sequences.iter().find(fits))?;
    Some((chosen.id, at))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix(1_750_000_000 + secs, 0)
    }

    fn sequence(minutes: u64, interruptible: bool) -> ppbc::PowerSequence {
        ppbc::PowerSequence {
            id: mint_id(),
            elements: vec![ppbc::PowerSequenceElement {
                duration: Duration::from_secs(minutes * 60),
                power_values: Vec::new(),
            }],
            is_interruptible: interruptible,
            max_pause_before: None,
            abnormal_condition_only: false,
        }
    }

    /// A window of `hours` from `at(0)`: Eco (130 min, interruptible) and Quick (30 min).
    fn definition(hours: i64) -> ppbc::PowerProfileDefinition {
        ppbc::PowerProfileDefinition {
            message_id: mint_id(),
            id: mint_id(),
            start_time: at(0),
            end_time: at(hours * 3600),
            power_sequence_containers: vec![ppbc::PowerSequenceContainer {
                id: mint_id(),
                power_sequences: vec![sequence(130, true), sequence(30, false)],
            }],
        }
    }

    #[test]
    fn a_programme_starts_soon_and_never_after_the_appliance_would_itself() {
        let d = definition(8);
        let container = &d.power_sequence_containers[0];
        let eco = container.power_sequences[0].id;
        // Soon, and the interruptible one.
        assert_eq!(schedule(&d, container, at(60)), Some((eco, at(65))));
        // Not before the window opens.
        assert_eq!(schedule(&d, container, at(-60)), Some((eco, at(0))));
        // The appliance starts Eco by itself 130 min before the end; Quick would still
        // fit the window after that, but the appliance would be running by then.
        let own_start = 8 * 3600 - 130 * 60;
        assert_eq!(
            schedule(&d, container, at(own_start - 5)),
            Some((eco, at(own_start)))
        );
        assert_eq!(schedule(&d, container, at(own_start - 4)), None);
    }
}
