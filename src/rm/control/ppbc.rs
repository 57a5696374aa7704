//! PPBC: an appliance with a task to do within a window (a dishwasher), in one of the
//! programmes its user allows. The CEM picks the programme and the start; it may pause an
//! interruptible programme and resume it.
//!
//! One task is one PowerProfileDefinition with one container, whose alternative sequences
//! are the programmes (phases become sequence elements). A new task (the user loaded the
//! appliance again) is a new definition. The appliance's own fail-safe is that it always
//! runs: left alone, it starts its own programme at `own_start`. So a schedule that would
//! start later than that is REJECTED: the appliance would already be running.

use s2gw_core::Command;
use s2gw_core::device::{ProgrammeSpec, TaskProgress, TaskState};
use s2gw_core::s2::{
    ControlType, Duration, Id, Instructed, Message, PowerForecastValue, Timestamp, mint_id, ppbc,
};

use super::{Context, ControlModule, QUANTITY};
use crate::rm::ids::IdBook;
use crate::rm::plan::Planned;
use s2gw_core::clock::to_timestamp;

/// PPBC for one appliance, with what this session was told.
pub(crate) struct Ppbc {
    programmes: Vec<ProgrammeSpec>,
    /// The task described in this session and its profile id.
    described: Option<(u64, Id)>,
    /// The container status last reported, to report changes only.
    reported: Option<ppbc::PowerSequenceContainerStatus>,
    /// The programme a ScheduleInstruction chose for the described task.
    scheduled: Option<String>,
}

impl Ppbc {
    /// PPBC over these programmes.
    pub(crate) fn new(programmes: Vec<ProgrammeSpec>) -> Self {
        Self {
            programmes,
            described: None,
            reported: None,
            scheduled: None,
        }
    }

    /// The definition of a task not described yet, then the status when it changed.
    fn report(&mut self, ids: &IdBook, task: Option<&TaskState>) -> Vec<Message> {
        let Some(task) = task else {
            return Vec::new();
        };
        let mut messages = Vec::new();
        if self.described.map(|(t, _)| t) != Some(task.task_id) {
            let definition = definition(ids, &self.programmes, task);
            self.described = Some((task.task_id, definition.id));
            self.reported = None;
            self.scheduled = None;
            messages.push(definition.into());
        }
        let Some((_, profile)) = self.described else {
            return messages;
        };
        let status = container_status(
            ids,
            profile,
            &self.programmes,
            task,
            self.scheduled.as_deref(),
        );
        if self.reported.as_ref() != Some(&status) {
            self.reported = Some(status.clone());
            messages.push(
                ppbc::PowerProfileStatus {
                    message_id: mint_id(),
                    sequence_container_status: vec![status],
                }
                .into(),
            );
        }
        messages
    }

    /// The programme an instruction names, checked against the described task.
    fn programme_of(
        &self,
        ids: &IdBook,
        profile: Id,
        container: Id,
        sequence: Id,
    ) -> Result<&ProgrammeSpec, String> {
        match self.described {
            Some((_, described)) if described == profile => {}
            _ => return Err(format!("{profile} is not the task described now")),
        }
        if container != container_id(ids) {
            return Err(format!("{container} is not this task's container"));
        }
        self.programmes
            .iter()
            .find(|p| sequence_id(ids, p) == sequence)
            .ok_or_else(|| format!("{sequence} is not a programme of this appliance"))
    }
}

impl ControlModule for Ppbc {
    fn control_type(&self) -> ControlType {
        ControlType::PowerProfileBasedControl
    }

    fn session_started(&mut self) {
        self.described = None;
        self.reported = None;
    }

    fn describe(&mut self, cx: &mut Context<'_>, _now: Timestamp) -> Vec<Message> {
        self.described = None;
        let task = cx.readings.and_then(|r| r.task.clone());
        self.report(cx.ids, task.as_ref())
    }

    fn readings(&mut self, cx: &mut Context<'_>, _now: Timestamp) -> Vec<Message> {
        let task = cx.readings.and_then(|r| r.task.clone());
        self.report(cx.ids, task.as_ref())
    }

    fn plan(
        &mut self,
        cx: &mut Context<'_>,
        instructed: &Instructed,
        _now: Timestamp,
    ) -> Result<Planned, String> {
        let task = cx
            .readings
            .and_then(|r| r.task.clone())
            .ok_or("the appliance has no task")?;
        let (planned, scheduled) = match &instructed.message {
            Message::PpbcScheduleInstruction(i) => {
                let programme = self.programme_of(
                    cx.ids,
                    i.power_profile_id,
                    i.sequence_container_id,
                    i.power_sequence_id,
                )?;
                schedule(instructed.id, programme, &task, i.execution_time)?
            }
            Message::PpbcStartInterruptionInstruction(i) => {
                let programme = self.programme_of(
                    cx.ids,
                    i.power_profile_id,
                    i.sequence_container_id,
                    i.power_sequence_id,
                )?;
                (
                    interrupt(instructed.id, programme, &task, i.execution_time)?,
                    None,
                )
            }
            Message::PpbcEndInterruptionInstruction(i) => {
                let programme = self.programme_of(
                    cx.ids,
                    i.power_profile_id,
                    i.sequence_container_id,
                    i.power_sequence_id,
                )?;
                (
                    resume(instructed.id, programme, &task, i.execution_time)?,
                    None,
                )
            }
            _ => return Err(format!("{} is not a PPBC instruction", instructed.kind)),
        };
        if scheduled.is_some() {
            self.scheduled = scheduled;
        }
        Ok(planned)
    }

    fn carried_out(
        &mut self,
        cx: &mut Context<'_>,
        _planned: &Planned,
        _now: Timestamp,
    ) -> Vec<Message> {
        // The appliance's own report (next readings) says what changed; the scheduled
        // programme is already known, so the status can follow at once.
        let task = cx.readings.and_then(|r| r.task.clone());
        self.report(cx.ids, task.as_ref())
    }
}

/// A ScheduleInstruction: start `programme` at `at`, if it fits the task's window.
fn schedule(
    id: Id,
    programme: &ProgrammeSpec,
    task: &TaskState,
    at: Timestamp,
) -> Result<(Planned, Option<String>), String> {
    if !matches!(task.progress, TaskProgress::Waiting) {
        return Err("the task has already started".to_string());
    }
    let own_start = to_timestamp(task.own_start);
    if at > own_start {
        return Err(format!(
            "the appliance starts by itself at {own_start}, before {at}"
        ));
    }
    let end = at
        .checked_add(Duration::from_secs(programme.duration_s()))
        .ok_or("the programme runs past the end of time")?;
    let latest_end = to_timestamp(task.latest_end);
    if end > latest_end {
        return Err(format!(
            "{} would end at {end}, after the task's end {latest_end}",
            programme.name
        ));
    }
    let command = Command::StartProgramme {
        programme: programme.name.clone(),
    };
    Ok((
        Planned::once(id, at, command, format!("{} at {at}", programme.label)),
        Some(programme.name.clone()),
    ))
}

fn interrupt(
    id: Id,
    programme: &ProgrammeSpec,
    task: &TaskState,
    at: Timestamp,
) -> Result<Planned, String> {
    if !programme.interruptible {
        return Err(format!("{} cannot be interrupted", programme.name));
    }
    match &task.progress {
        TaskProgress::Running { programme: p, .. } if *p == programme.name => Ok(Planned::once(
            id,
            at,
            Command::Pause,
            format!("{} paused", programme.label),
        )),
        _ => Err(format!("{} is not running", programme.name)),
    }
}

fn resume(
    id: Id,
    programme: &ProgrammeSpec,
    task: &TaskState,
    at: Timestamp,
) -> Result<Planned, String> {
    match &task.progress {
        TaskProgress::Paused { programme: p, .. } if *p == programme.name => Ok(Planned::once(
            id,
            at,
            Command::Resume,
            format!("{} resumed", programme.label),
        )),
        _ => Err(format!("{} is not paused", programme.name)),
    }
}

fn container_id(ids: &IdBook) -> Id {
    ids.get("ppbc.container")
}

fn sequence_id(ids: &IdBook, programme: &ProgrammeSpec) -> Id {
    ids.get(&format!("ppbc.sequence.{}", programme.name))
}

/// The task as a PowerProfileDefinition: its window and one container of programmes.
fn definition(
    ids: &IdBook,
    programmes: &[ProgrammeSpec],
    task: &TaskState,
) -> ppbc::PowerProfileDefinition {
    let start_time = to_timestamp(task.earliest_start);
    // Each task is its own profile; the start time keeps ids apart across restarts,
    // where the appliance numbers its tasks from 1 again.
    let id = ids.get(&format!(
        "ppbc.profile.{}.{}",
        task.task_id,
        start_time.unix_secs()
    ));
    let power_sequences = programmes
        .iter()
        .map(|p| ppbc::PowerSequence {
            id: sequence_id(ids, p),
            elements: p
                .phases
                .iter()
                .map(|phase| ppbc::PowerSequenceElement {
                    duration: Duration::from_secs(phase.duration_s),
                    power_values: vec![PowerForecastValue::expected(phase.power_w, QUANTITY)],
                })
                .collect(),
            is_interruptible: p.interruptible,
            max_pause_before: None,
            abnormal_condition_only: false,
        })
        .collect();
    ppbc::PowerProfileDefinition {
        message_id: mint_id(),
        id,
        start_time,
        end_time: to_timestamp(task.latest_end),
        power_sequence_containers: vec![ppbc::PowerSequenceContainer {
            id: container_id(ids),
            power_sequences,
        }],
    }
}

/// How the task's one container is getting on.
fn container_status(
    ids: &IdBook,
    profile: Id,
    programmes: &[ProgrammeSpec],
    task: &TaskState,
    scheduled: Option<&str>,
) -> ppbc::PowerSequenceContainerStatus {
    use ppbc::PowerSequenceStatus as S;
    let seq = |ids: &IdBook, name: &str| ids.get(&format!("ppbc.sequence.{name}"));
    let (status, selected, progress) = match &task.progress {
        TaskProgress::Waiting => match scheduled {
            Some(name) => (S::Scheduled, Some(seq(ids, name)), None),
            None => (S::NotScheduled, None, None),
        },
        TaskProgress::Running {
            programme,
            elapsed_s,
        } => (S::Executing, Some(seq(ids, programme)), Some(*elapsed_s)),
        TaskProgress::Paused {
            programme,
            elapsed_s,
        } => (S::Interrupted, Some(seq(ids, programme)), Some(*elapsed_s)),
        // A finished sequence ran its whole length.
        TaskProgress::Finished { programme } => {
            let whole = programmes
                .iter()
                .find(|p| p.name == *programme)
                .map_or(0, ProgrammeSpec::duration_s);
            (S::Finished, Some(seq(ids, programme)), Some(whole as f64))
        }
    };
    ppbc::PowerSequenceContainerStatus {
        power_profile_id: profile,
        sequence_container_id: container_id(ids),
        selected_sequence_id: selected,
        // Whole minutes: a running programme's status is worth a message a minute, not
        // one every poll.
        progress: progress.map(|s| Duration::from_secs(s.max(0.0) as u64 / 60 * 60)),
        status,
    }
}
