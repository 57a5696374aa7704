//! OMBC: discrete operation modes (SG-Ready states, charger current steps), with the
//! device's minimum on and off times as S2 timers.
//!
//! Timers: `min_on` is started by every transition and blocks every transition (a mode
//! stays on at least `min_on_s`); `off.<mode>` is started by leaving that mode and blocks
//! entering it again (at least `min_off_s` before switching back). Timers of zero length
//! are not described. The engine keeps its own picture of when each finishes and refuses
//! (REJECTED) an instruction whose transition a running timer blocks.

use std::collections::HashMap;

use s2gw_core::device::ModeSpec;
use s2gw_core::s2::{
    ControlType, Duration, Id, Instructed, Message, NumberRange, PowerRange, Timer, Timestamp,
    Transition, mint_id, ombc,
};
use s2gw_core::{Command, Readings};

use super::{Context, ControlModule, QUANTITY};
use crate::rm::ids::IdBook;
use crate::rm::plan::Planned;

/// OMBC for one device. Its timers outlive sessions: a heat pump's minimum off time
/// does not start over because the CEM reconnected.
pub(crate) struct Ombc {
    modes: Modes,
    /// The mode last reported in this session.
    mode: Option<Id>,
    timers: Timers,
}

impl Ombc {
    /// OMBC over `modes`.
    pub(crate) fn new(modes: Modes) -> Self {
        Self {
            modes,
            mode: None,
            timers: Timers::default(),
        }
    }
}

impl ControlModule for Ombc {
    fn control_type(&self) -> ControlType {
        ControlType::OperationModeBasedControl
    }

    fn session_started(&mut self) {
        self.mode = None;
    }

    fn describe(&mut self, cx: &mut Context<'_>, now: Timestamp) -> Vec<Message> {
        let mut messages = vec![system_description(cx.ids, &self.modes, now).into()];
        if let Some(current) = current_mode(&self.modes, cx.readings) {
            let mode = mode_id(cx.ids, current);
            messages.push(status(mode, 0.0, None, now).into());
            self.mode = Some(mode);
        }
        // Timers outlive sessions: a CEM that reconnects must learn which still run, or
        // its first instruction is refused for a reason it was never told.
        messages.extend(self.timers.running(now).map(Message::from));
        messages
    }

    fn released(&mut self, cx: &mut Context<'_>, now: Timestamp) -> Vec<Message> {
        // The release puts the device in its default mode: a transition like any other,
        // whose timers the device itself starts too.
        let (Some(from), Some(default)) =
            (self.mode, self.modes.modes.iter().find(|m| m.is_default))
        else {
            return Vec::new();
        };
        let to = mode_id(cx.ids, default);
        if from == to {
            return Vec::new();
        }
        let mut messages: Vec<Message> = self
            .timers
            .start(cx.ids, &self.modes, from, to, now)
            .into_iter()
            .map(Message::from)
            .collect();
        messages.push(status(to, 0.0, Some(from), now).into());
        self.mode = Some(to);
        messages
    }

    fn plan(
        &mut self,
        cx: &mut Context<'_>,
        instructed: &Instructed,
        now: Timestamp,
    ) -> Result<Planned, String> {
        plan(
            instructed,
            cx.ids,
            &self.modes,
            &self.timers,
            self.mode,
            now,
        )
    }

    fn carried_out(
        &mut self,
        cx: &mut Context<'_>,
        planned: &Planned,
        now: Timestamp,
    ) -> Vec<Message> {
        let Some(change) = planned.mode else {
            return Vec::new();
        };
        let previous = self.mode;
        let mut messages: Vec<Message> = match previous.filter(|p| *p != change.mode) {
            Some(from) => self
                .timers
                .start(cx.ids, &self.modes, from, change.mode, now)
                .into_iter()
                .map(Message::from)
                .collect(),
            None => Vec::new(),
        };
        messages.push(status(change.mode, change.factor, previous, now).into());
        self.mode = Some(change.mode);
        messages
    }
}

/// The device's modes and timings, from its `OperationModes` capability.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Modes {
    /// The modes.
    pub modes: Vec<ModeSpec>,
    /// Minimum on time, seconds.
    pub min_on_s: u64,
    /// Minimum time before switching back, seconds.
    pub min_off_s: u64,
}

fn mode_id(ids: &IdBook, mode: &ModeSpec) -> Id {
    ids.get(&format!("ombc.mode.{}", mode.name))
}

fn min_on_id(ids: &IdBook) -> Id {
    ids.get("ombc.timer.min_on")
}

fn off_id(ids: &IdBook, mode: &ModeSpec) -> Id {
    ids.get(&format!("ombc.timer.off.{}", mode.name))
}

impl Modes {
    /// The mode with this id.
    pub(crate) fn by_id(&self, ids: &IdBook, id: Id) -> Option<&ModeSpec> {
        self.modes.iter().find(|m| mode_id(ids, m) == id)
    }

    /// Timers started and blocking for the move `from` → `to`.
    fn timers_of(&self, ids: &IdBook, from: &ModeSpec, to: &ModeSpec) -> (Vec<Id>, Vec<Id>) {
        let mut start = Vec::new();
        let mut block = Vec::new();
        if self.min_on_s > 0 {
            start.push(min_on_id(ids));
            block.push(min_on_id(ids));
        }
        if self.min_off_s > 0 {
            start.push(off_id(ids, from));
            block.push(off_id(ids, to));
        }
        (start, block)
    }
}

/// OMBC.SystemDescription: every mode, a transition between every pair, the timers.
pub(crate) fn system_description(
    ids: &IdBook,
    modes: &Modes,
    now: Timestamp,
) -> ombc::SystemDescription {
    let operation_modes = modes
        .modes
        .iter()
        .map(|m| ombc::OperationMode {
            id: mode_id(ids, m),
            diagnostic_label: Some(m.label.clone()),
            power_ranges: vec![PowerRange::new(m.min_w, m.max_w, QUANTITY)],
            running_costs: None,
            abnormal_condition_only: false,
        })
        .collect();
    let mut transitions = Vec::new();
    for from in &modes.modes {
        for to in modes.modes.iter().filter(|to| to.name != from.name) {
            let (start_timers, blocking_timers) = modes.timers_of(ids, from, to);
            transitions.push(Transition {
                start_timers,
                blocking_timers,
                ..Transition::simple(
                    ids.get(&format!("ombc.transition.{}.{}", from.name, to.name)),
                    mode_id(ids, from),
                    mode_id(ids, to),
                )
            });
        }
    }
    ombc::SystemDescription {
        message_id: mint_id(),
        valid_from: now,
        operation_modes,
        transitions,
        timers: timers(ids, modes),
    }
}

fn timers(ids: &IdBook, modes: &Modes) -> Vec<Timer> {
    let mut timers = Vec::new();
    if modes.min_on_s > 0 {
        timers.push(Timer {
            id: min_on_id(ids),
            diagnostic_label: Some("minimum on time".to_string()),
            duration: Duration::from_secs(modes.min_on_s),
        });
    }
    if modes.min_off_s > 0 {
        for mode in &modes.modes {
            timers.push(Timer {
                id: off_id(ids, mode),
                diagnostic_label: Some(format!("minimum time before returning to {}", mode.name)),
                duration: Duration::from_secs(modes.min_off_s),
            });
        }
    }
    timers
}

/// The mode the device is in: the one whose command it reports following, else its
/// autonomous default, else the first.
pub(crate) fn current_mode<'a>(
    modes: &'a Modes,
    readings: Option<&Readings>,
) -> Option<&'a ModeSpec> {
    let reported = readings.and_then(|r| r.active.as_ref());
    reported
        .and_then(|active| modes.modes.iter().find(|m| m.command == *active))
        .or_else(|| modes.modes.iter().find(|m| m.is_default))
        .or_else(|| modes.modes.first())
}

/// OMBC.Status.
pub(crate) fn status(mode: Id, factor: f64, previous: Option<Id>, now: Timestamp) -> ombc::Status {
    ombc::Status {
        message_id: mint_id(),
        active_operation_mode_id: mode,
        operation_mode_factor: factor.clamp(0.0, 1.0),
        previous_operation_mode_id: previous,
        transition_timestamp: previous.map(|_| now),
    }
}

/// When each running timer finishes.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    finish: HashMap<Id, Timestamp>,
}

impl Timers {
    /// Start the timers of the move `from` → `to` at `now`; returns the TimerStatus
    /// messages to send.
    pub(crate) fn start(
        &mut self,
        ids: &IdBook,
        modes: &Modes,
        from: Id,
        to: Id,
        now: Timestamp,
    ) -> Vec<ombc::TimerStatus> {
        let (Some(from), Some(to)) = (
            modes.by_id(ids, from).cloned(),
            modes.by_id(ids, to).cloned(),
        ) else {
            return Vec::new();
        };
        let (start, _) = modes.timers_of(ids, &from, &to);
        let durations: HashMap<Id, Duration> = timers(ids, modes)
            .into_iter()
            .map(|t| (t.id, t.duration))
            .collect();
        let mut statuses = Vec::new();
        for timer in start {
            let finished_at = durations
                .get(&timer)
                .and_then(|d| now.checked_add(*d))
                .unwrap_or(now);
            self.finish.insert(timer, finished_at);
            statuses.push(ombc::TimerStatus {
                message_id: mint_id(),
                timer_id: timer,
                finished_at,
            });
        }
        statuses
    }

    /// A TimerStatus for every timer still running at `now`.
    fn running(&self, now: Timestamp) -> impl Iterator<Item = ombc::TimerStatus> + '_ {
        self.finish
            .iter()
            .filter(move |(_, finished)| **finished > now)
            .map(|(timer, finished)| ombc::TimerStatus {
                message_id: mint_id(),
                timer_id: *timer,
                finished_at: *finished,
            })
    }

    /// The first timer that still runs at `at` and blocks the move `from` → `to`.
    fn blocking(
        &self,
        ids: &IdBook,
        modes: &Modes,
        from: &ModeSpec,
        to: &ModeSpec,
        at: Timestamp,
    ) -> Option<(Id, Timestamp)> {
        let (_, block) = modes.timers_of(ids, from, to);
        block
            .into_iter()
            .filter_map(|t| self.finish.get(&t).map(|f| (t, *f)))
            .find(|(_, finished)| *finished > at)
    }
}

/// An OMBC.Instruction as the mode's command.
pub(crate) fn plan(
    instructed: &Instructed,
    ids: &IdBook,
    modes: &Modes,
    timers: &Timers,
    active: Option<Id>,
    now: Timestamp,
) -> Result<Planned, String> {
    let Message::OmbcInstruction(instruction) = &instructed.message else {
        return Err("not an OMBC.Instruction".to_string());
    };
    let target = modes
        .by_id(ids, instruction.operation_mode_id)
        .cloned()
        .ok_or_else(|| {
            format!(
                "{} is not a mode of this device",
                instruction.operation_mode_id
            )
        })?;
    let from = active.and_then(|id| modes.by_id(ids, id).cloned());
    if let Some(from) = from.filter(|f| f.name != target.name) {
        let at = instruction.execution_time.max(now);
        if let Some((timer, finished)) = timers.blocking(ids, modes, &from, &target, at) {
            return Err(format!(
                "switching from {} to {} is blocked by timer {timer} until {finished}",
                from.name, target.name
            ));
        }
    }
    let factor = instruction.operation_mode_factor;
    let command = command_at(&target, factor);
    let summary = format!("{}: {}", target.label, command.summary());
    Ok(
        Planned::once(instruction.id, instruction.execution_time, command, summary)
            .entering(instruction.operation_mode_id, factor),
    )
}

/// The mode's command at a factor: a setpoint or a charging current is interpolated over
/// the mode's power range; anything else is the mode's command as it stands.
fn command_at(mode: &ModeSpec, factor: f64) -> Command {
    let range = NumberRange::new(mode.min_w, mode.max_w);
    let watts = range.at_factor(factor.clamp(0.0, 1.0));
    match &mode.command {
        Command::SetPower { .. } => Command::SetPower { watts },
        Command::SetCurrent { amps, phases } if mode.max_w > mode.min_w && mode.max_w > 0.0 => {
            Command::SetCurrent {
                amps: amps * watts / mode.max_w,
                phases: *phases,
            }
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(name: &str, command: Command, min_w: f64, max_w: f64) -> ModeSpec {
        ModeSpec {
            name: name.to_string(),
            label: name.to_string(),
            min_w,
            max_w,
            command,
            is_default: name == "normal",
        }
    }

    #[test]
    fn charger_current_is_interpolated_and_sg_ready_is_not() {
        let charger = mode(
            "3p",
            Command::SetCurrent {
                amps: 16.0,
                phases: 3,
            },
            4140.0,
            11040.0,
        );
        assert_eq!(
            command_at(&charger, 1.0),
            Command::SetCurrent {
                amps: 16.0,
                phases: 3
            }
        );
        let sg = mode(
            "boost",
            Command::SetMode {
                mode: "boost".into(),
            },
            2000.0,
            3000.0,
        );
        assert_eq!(command_at(&sg, 0.3), sg.command);
    }

    #[test]
    fn every_pair_has_a_transition_with_timers() {
        let modes = Modes {
            modes: vec![
                mode("normal", Command::Release, 0.0, 1000.0),
                mode(
                    "boost",
                    Command::SetMode {
                        mode: "boost".into(),
                    },
                    2000.0,
                    3000.0,
                ),
                mode("off", Command::SetMode { mode: "off".into() }, 0.0, 0.0),
            ],
            min_on_s: 600,
            min_off_s: 300,
        };
        let ids = IdBook::default();
        let system = system_description(&ids, &modes, Timestamp::UNIX_EPOCH);
        assert_eq!(system.transitions.len(), 6);
        assert_eq!(system.timers.len(), 4);
        assert!(system.timers.iter().all(|t| t.id.as_uuid().is_some()));
    }
}
