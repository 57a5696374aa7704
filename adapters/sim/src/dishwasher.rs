//! A dishwasher: a task (the loaded machine) to be done within a window, in one of two
//! programmes, one of them with an interruptible drying phase. Left alone it starts its
//! own programme late enough to be done at the end of the window: it always runs.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use s2gw_core::device::{
    ControlCapability, DeviceInfo, DeviceKind, PhaseSpec, ProgrammeSpec, TaskProgress, TaskState,
    Watts,
};
use s2gw_core::{Command, Device, DeviceError, DeviceStatus, Readings};

use crate::clock::{Clock, unix_secs};
use crate::common::{self, EnergyCounter};
use crate::config::SimConfig;

const DEFAULT_WINDOW_H: f64 = 8.0;
const DEFAULT_RELOAD_MIN: f64 = 30.0;
const STANDBY_W: Watts = 1.0;
const PAUSED_W: Watts = 5.0;

/// The two programmes: the machine's own choice first.
fn programmes() -> Vec<ProgrammeSpec> {
    let phase = |minutes: u64, power_w| PhaseSpec {
        duration_s: minutes * 60,
        power_w,
    };
    vec![
        ProgrammeSpec {
            name: "eco".to_string(),
            label: "Eco 50 °C".to_string(),
            phases: vec![
                phase(10, 120.0),
                phase(25, 1900.0),
                phase(45, 150.0),
                phase(50, 40.0),
            ],
            // The long drying phase may wait.
            interruptible: true,
        },
        ProgrammeSpec {
            name: "quick".to_string(),
            label: "Quick 45 °C".to_string(),
            phases: vec![phase(15, 2100.0), phase(15, 200.0)],
            interruptible: false,
        },
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Waiting,
    Running {
        programme: usize,
        /// When it started, shifted later by every pause.
        since: f64,
    },
    Paused {
        programme: usize,
        elapsed_s: f64,
    },
    Finished {
        programme: usize,
        at: f64,
    },
}

/// A simulated dishwasher.
pub struct Dishwasher {
    id: String,
    programmes: Vec<ProgrammeSpec>,
    window_s: f64,
    reload_s: f64,
    task_id: u64,
    loaded_at: f64,
    phase: Phase,
    active: Option<Command>,
    clock: Arc<dyn Clock>,
    energy: EnergyCounter,
}

impl Dishwasher {
    /// A dishwasher, loaded now, from the `dishwasher` parameters of `config`.
    pub fn new(id: &str, config: &SimConfig, clock: Arc<dyn Clock>) -> Self {
        let now = unix_secs(clock.now());
        Self {
            id: id.to_string(),
            programmes: programmes(),
            window_s: common::positive_or(config.window_h, DEFAULT_WINDOW_H) * 3600.0,
            reload_s: config.reload_min.unwrap_or(DEFAULT_RELOAD_MIN).max(0.0) * 60.0,
            task_id: 1,
            loaded_at: now,
            phase: Phase::Waiting,
            active: None,
            clock,
            energy: EnergyCounter::new(now),
        }
    }

    fn duration_s(&self, programme: usize) -> f64 {
        self.programmes
            .get(programme)
            .map_or(0.0, |p| p.duration_s() as f64)
    }

    /// When it starts its own programme (the first) by itself.
    fn own_start(&self) -> f64 {
        self.loaded_at + self.window_s - self.duration_s(0)
    }

    /// Move time on: start by itself when due, finish, load the next task.
    fn advance(&mut self) -> f64 {
        let now = unix_secs(self.clock.now());
        let (programmes, phase) = (&self.programmes, &self.phase);
        self.energy.advance(now, |t| power_at(programmes, phase, t));
        match self.phase {
            Phase::Waiting if now >= self.own_start() => {
                tracing::info!(device = %self.id, "sim dishwasher starts by itself");
                self.phase = Phase::Running {
                    programme: 0,
                    since: self.own_start(),
                };
            }
            Phase::Running { programme, since } if now - since >= self.duration_s(programme) => {
                self.phase = Phase::Finished {
                    programme,
                    at: since + self.duration_s(programme),
                };
                self.active = None;
            }
            Phase::Finished { at, .. } if self.reload_s > 0.0 && now >= at + self.reload_s => {
                self.task_id += 1;
                self.loaded_at = now;
                self.phase = Phase::Waiting;
            }
            _ => {}
        }
        now
    }

    fn task(&self, now: f64) -> TaskState {
        let name = |i: usize| {
            self.programmes
                .get(i)
                .map(|p| p.name.clone())
                .unwrap_or_default()
        };
        let progress = match &self.phase {
            Phase::Waiting => TaskProgress::Waiting,
            Phase::Running { programme, since } => TaskProgress::Running {
                programme: name(*programme),
                elapsed_s: now - since,
            },
            Phase::Paused {
                programme,
                elapsed_s,
            } => TaskProgress::Paused {
                programme: name(*programme),
                elapsed_s: *elapsed_s,
            },
            Phase::Finished { programme, .. } => TaskProgress::Finished {
                programme: name(*programme),
            },
        };
        TaskState {
            task_id: self.task_id,
            earliest_start: time(self.loaded_at),
            latest_end: time(self.loaded_at + self.window_s),
            own_start: time(self.own_start()),
            progress,
        }
    }

    fn start(&mut self, now: f64, name: &str) -> Result<(), DeviceError> {
        let Some(programme) = self.programmes.iter().position(|p| p.name == name) else {
            return Err(DeviceError::Refused(format!("no programme {name:?}")));
        };
        match self.phase {
            Phase::Waiting => {
                self.phase = Phase::Running {
                    programme,
                    since: now,
                };
                Ok(())
            }
            _ => Err(DeviceError::Refused(
                "the dishwasher is not waiting to start".to_string(),
            )),
        }
    }

    fn pause(&mut self, now: f64) -> Result<(), DeviceError> {
        match self.phase {
            Phase::Running { programme, since }
                if self
                    .programmes
                    .get(programme)
                    .is_some_and(|p| p.interruptible) =>
            {
                self.phase = Phase::Paused {
                    programme,
                    elapsed_s: now - since,
                };
                Ok(())
            }
            _ => Err(DeviceError::Refused(
                "only a running interruptible programme can be paused".to_string(),
            )),
        }
    }

    fn resume(&mut self, now: f64) -> Result<(), DeviceError> {
        match self.phase {
            Phase::Paused {
                programme,
                elapsed_s,
            } => {
                self.phase = Phase::Running {
                    programme,
                    since: now - elapsed_s,
                };
                Ok(())
            }
            _ => Err(DeviceError::Refused("nothing is paused".to_string())),
        }
    }
}

/// The power in `phase` at `t`.
fn power_at(programmes: &[ProgrammeSpec], phase: &Phase, t: f64) -> Watts {
    match phase {
        Phase::Running { programme, since } => {
            let Some(p) = programmes.get(*programme) else {
                return STANDBY_W;
            };
            let mut left = t - since;
            for step in &p.phases {
                if left < step.duration_s as f64 {
                    return step.power_w;
                }
                left -= step.duration_s as f64;
            }
            STANDBY_W
        }
        Phase::Paused { .. } => PAUSED_W,
        Phase::Waiting | Phase::Finished { .. } => STANDBY_W,
    }
}

fn time(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0))
}

#[async_trait]
impl Device for Dishwasher {
    fn info(&self) -> DeviceInfo {
        let mut info = common::info(&self.id, DeviceKind::Load, "Simulated dishwasher");
        info.control = vec![
            ControlCapability::PowerProfile {
                programmes: self.programmes.clone(),
            },
            ControlCapability::NotControllable,
        ];
        info
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        let now = self.advance();
        Ok(Readings {
            power_w: power_at(&self.programmes, &self.phase, now),
            energy_wh: Some(self.energy.wh()),
            status: DeviceStatus::Ok,
            active: self.active.clone(),
            task: Some(self.task(now)),
            ..Readings::default()
        })
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        let now = self.advance();
        tracing::debug!(device = %self.id, command = %command.summary(), "sim dishwasher");
        let result = match command {
            // On its own it carries on: a paused programme resumes, a waiting task
            // starts at its own time.
            Command::Release => match self.phase {
                Phase::Paused { .. } => self.resume(now),
                _ => Ok(()),
            },
            Command::StartProgramme { programme } => self.start(now, programme),
            Command::Pause => self.pause(now),
            Command::Resume => self.resume(now),
            other => Err(DeviceError::Refused(format!(
                "a dishwasher takes a programme, a pause or a resume, not `{}`",
                other.summary()
            ))),
        };
        if result.is_ok() {
            self.active = (*command != Command::Release).then(|| command.clone());
        }
        result
    }
}
