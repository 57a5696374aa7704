//! Instructions between ACCEPTED and their end: waiting for their `execution_time`, or
//! active (carried out, possibly with further envelope steps and an end of validity).

use std::collections::VecDeque;

use s2gw_core::Command;
use s2gw_core::s2::{Id, Timestamp};

/// One command at one time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Step {
    /// When it takes effect.
    pub at: Timestamp,
    /// What the device is told.
    pub command: Command,
}

/// The operation mode an instruction puts an actuator in (FRBC, OMBC): what its control
/// type reports once the first command was confirmed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ModeChange {
    /// The mode entered.
    pub mode: Id,
    /// At what factor.
    pub factor: f64,
}

/// An accepted instruction, translated into device commands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planned {
    /// The instruction's id (what its status updates name).
    pub id: Id,
    /// When it starts.
    pub execute_at: Timestamp,
    /// The commands, the first at `execute_at`, in time order. Never empty.
    pub steps: Vec<Step>,
    /// When its validity ends and the device is released, if it ends.
    pub ends_at: Option<Timestamp>,
    /// The mode it enters, for control types with modes.
    pub mode: Option<ModeChange>,
    /// For people.
    pub summary: String,
    /// Arrival order, to tell which of two simultaneous instructions is newer.
    pub seq: u64,
}

impl Planned {
    /// An instruction that is one command at one time.
    pub(crate) fn once(id: Id, at: Timestamp, command: Command, summary: String) -> Self {
        Self {
            id,
            execute_at: at,
            summary,
            steps: vec![Step { at, command }],
            ends_at: None,
            mode: None,
            seq: 0,
        }
    }

    /// The same, putting its actuator in `mode` at `factor`.
    pub(crate) fn entering(self, mode: Id, factor: f64) -> Self {
        Self {
            mode: Some(ModeChange { mode, factor }),
            ..self
        }
    }
}

/// The instruction being followed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Active {
    /// Its id.
    pub id: Id,
    /// For people.
    pub summary: String,
    /// Steps still to come.
    pub steps: VecDeque<Step>,
    /// When it ends.
    pub ends_at: Option<Timestamp>,
}

/// Waiting and active instructions of one session.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    waiting: Vec<Planned>,
    active: Option<Active>,
    seq: u64,
}

impl Plan {
    /// Queue an accepted instruction.
    pub(crate) fn add(&mut self, mut planned: Planned) {
        self.seq = self.seq.saturating_add(1);
        planned.seq = self.seq;
        self.waiting.push(planned);
    }

    /// The instruction to start now, if any is due, and the due ones it overtook (those
    /// never run: they were replaced before their turn).
    pub(crate) fn take_due(&mut self, now: Timestamp) -> (Option<Planned>, Vec<Planned>) {
        let (mut due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|p| p.execute_at <= now);
        self.waiting = waiting;
        due.sort_by(|a, b| a.execute_at.cmp(&b.execute_at).then(a.seq.cmp(&b.seq)));
        let newest = due.pop().map(|p| skip_past_steps(p, now));
        (newest, due)
    }

    /// Make an instruction whose first step was carried out the active one.
    pub(crate) fn activate(&mut self, planned: Planned) {
        let mut steps: VecDeque<Step> = planned.steps.into();
        steps.pop_front();
        self.active = Some(Active {
            id: planned.id,
            summary: planned.summary,
            steps,
            ends_at: planned.ends_at,
        });
    }

    /// The active instruction's step due now, if any (later steps already due overtake
    /// earlier ones: only the one in force matters).
    pub(crate) fn take_due_step(&mut self, now: Timestamp) -> Option<Command> {
        let active = self.active.as_mut()?;
        let mut due = None;
        while active.steps.front().is_some_and(|s| s.at <= now) {
            due = active.steps.pop_front().map(|s| s.command);
        }
        due
    }

    /// Whether the active instruction's validity has ended.
    pub(crate) fn active_expired(&self, now: Timestamp) -> bool {
        self.active
            .as_ref()
            .and_then(|a| a.ends_at)
            .is_some_and(|end| end <= now)
    }

    /// Withdraw a waiting instruction.
    pub(crate) fn revoke_waiting(&mut self, id: Id) -> Option<Planned> {
        let index = self.waiting.iter().position(|p| p.id == id)?;
        Some(self.waiting.remove(index))
    }

    /// The active instruction.
    pub(crate) fn active(&self) -> Option<&Active> {
        self.active.as_ref()
    }

    /// Forget the active instruction (it was released or revoked).
    pub(crate) fn end_active(&mut self) -> Option<Active> {
        self.active.take()
    }

    /// Forget everything (the session or the control type ended), returning the
    /// instructions that were still waiting.
    pub(crate) fn clear(&mut self) -> Vec<Planned> {
        self.active = None;
        std::mem::take(&mut self.waiting)
    }

    /// When something next falls due.
    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        let waiting = self.waiting.iter().map(|p| p.execute_at).min();
        let step = self
            .active
            .as_ref()
            .and_then(|a| a.steps.front().map(|s| s.at));
        let end = self.active.as_ref().and_then(|a| a.ends_at);
        [waiting, step, end].into_iter().flatten().min()
    }
}

/// Drop the steps of an instruction that started late and are already over, so the
/// first remaining step is the one in force now.
fn skip_past_steps(mut planned: Planned, now: Timestamp) -> Planned {
    let over = planned
        .steps
        .windows(2)
        .take_while(|pair| pair.get(1).is_some_and(|next| next.at <= now))
        .count();
    planned.steps.drain(..over);
    planned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix(1_700_000_000 + secs, 0)
    }

    fn planned(id: &'static str, start: i64, steps: &[i64]) -> Planned {
        Planned {
            id: Id::new_const(id),
            execute_at: at(start),
            steps: steps
                .iter()
                .map(|s| Step {
                    at: at(*s),
                    command: Command::LimitPower {
                        min_w: Some(*s as f64),
                        max_w: None,
                    },
                })
                .collect(),
            ends_at: steps.last().map(|s| at(*s + 10)),
            mode: None,
            summary: id.to_string(),
            seq: 0,
        }
    }

    #[test]
    fn simultaneous_instructions_keep_the_newest() {
        let mut plan = Plan::default();
        plan.add(planned("aa", 10, &[10]));
        plan.add(planned("bb", 10, &[10]));
        plan.add(planned("cc", 20, &[20]));
        assert_eq!(plan.next_deadline(), Some(at(10)));
        let (start, overtaken) = plan.take_due(at(10));
        assert_eq!(start.map(|p| p.id), Some(Id::new_const("bb")));
        assert_eq!(overtaken.len(), 1);
        assert_eq!(plan.next_deadline(), Some(at(20)));
    }

    #[test]
    fn a_late_start_begins_with_the_step_in_force() {
        let mut plan = Plan::default();
        plan.add(planned("aa", 0, &[0, 60, 120]));
        let (start, _) = plan.take_due(at(90));
        let start = start.map(|p| p.steps.len());
        assert_eq!(start, Some(2));
    }
}
