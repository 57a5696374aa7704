//! The core on its own: no tokio, no device, no bus; a real s2-kit `CemSession` on the
//! other side, and time that moves only when a test says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;

use s2gw_core::device::{ControlCapability, DeviceInfo, DeviceKind};
use s2gw_core::s2::{
    CemConfig, CemEvent, CemSession, ControlType, Duration, Frame, InstructionStatus, Message,
    Timestamp, frbc,
};
use s2gw_core::{BusEvent, Command, DeviceError, Readings};

use super::{Core, Output, Write};
use crate::rm::VirtualRmConfig;

fn battery() -> DeviceInfo {
    DeviceInfo {
        kind: DeviceKind::Battery,
        control: vec![ControlCapability::Storage {
            capacity_wh: 10_000.0,
            max_charge_w: 5000.0,
            max_discharge_w: 5000.0,
            min_soc: 10.0,
            max_soc: 90.0,
        }],
        ..DeviceInfo::default()
    }
}

/// The core between a CEM and a device that the test answers for.
struct Pump {
    core: Core,
    cem: CemSession,
    now: Timestamp,
    /// Device calls the core asked for and the test has not answered yet.
    pending: VecDeque<Output>,
    bus: Vec<BusEvent>,
    events: Vec<CemEvent>,
}

impl Pump {
    fn new() -> Self {
        let now = Timestamp::UNIX_EPOCH
            .checked_add(Duration::from_secs(1_750_000_000))
            .unwrap();
        let config = VirtualRmConfig::new("6f1c1a52-3c1e-4d1a-9a0e-2b0c5c1f0a02", "battery");
        Self {
            core: Core::new(config, battery(), true, now),
            cem: CemSession::new(CemConfig::default()),
            now,
            pending: VecDeque::new(),
            bus: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Move everything between the core and the CEM until both are quiet; device calls
    /// wait in `pending`.
    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            while let Some(output) = self.core.poll_output() {
                moved = true;
                match output {
                    Output::Bus(BusEvent::Frame(frame)) => {
                        self.cem.handle_message(frame.message().clone(), self.now);
                        self.events
                            .extend(std::iter::from_fn(|| self.cem.poll_event()));
                    }
                    Output::Bus(event) => self.bus.push(event),
                    device => self.pending.push_back(device),
                }
            }
            while let Some(out) = self.cem.poll_transmit() {
                moved = true;
                let frame = Frame::from_own_text(out.text).unwrap();
                self.core.bus(BusEvent::Frame(frame), self.now);
            }
            if !moved {
                return;
            }
        }
    }

    fn answer_read(&mut self, power_w: f64) {
        match self.pending.pop_front() {
            Some(Output::Read) => {}
            other => panic!("expected a read, got {other:?}"),
        }
        let readings = Readings {
            power_w,
            soc: Some(50.0),
            ..Readings::default()
        };
        self.core.read_done(Ok(readings), self.now);
        self.exchange();
    }

    fn take_write(&mut self) -> Write {
        match self.pending.pop_front() {
            Some(Output::Write(write)) => write,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn answer_write(&mut self, write: Write, result: Result<(), DeviceError>) {
        self.core.write_done(write, result, self.now);
        self.exchange();
    }

    fn connected_with_frbc() -> (Pump, frbc::SystemDescription) {
        let mut pump = Pump::new();
        pump.core.start(pump.now);
        pump.exchange();
        pump.answer_read(0.0);
        pump.core.link_up(battery(), pump.now);
        pump.cem.open(pump.now);
        pump.exchange();
        pump.cem
            .select_control_type(ControlType::FillRateBasedControl, pump.now)
            .unwrap();
        pump.exchange();
        let system = pump
            .events
            .iter()
            .find_map(|e| match e {
                CemEvent::Description {
                    message: Message::FrbcSystemDescription(s),
                    ..
                } => Some((**s).clone()),
                _ => None,
            })
            .expect("a SystemDescription");
        (pump, system)
    }

    fn instruct(&mut self, system: &frbc::SystemDescription, label: &str) -> s2gw_core::s2::Id {
        let actuator = &system.actuators[0];
        let mode = actuator
            .operation_modes
            .iter()
            .find(|m| m.diagnostic_label.as_deref() == Some(label))
            .unwrap();
        let id = s2gw_core::s2::mint_id();
        let instruction = frbc::Instruction {
            message_id: s2gw_core::s2::mint_id(),
            id,
            actuator_id: actuator.id,
            operation_mode: mode.id,
            operation_mode_factor: 0.5,
            execution_time: self.now,
            abnormal_condition: false,
        };
        self.cem.instruct(instruction, self.now).unwrap();
        self.exchange();
        id
    }

    fn statuses(&self, id: s2gw_core::s2::Id) -> Vec<InstructionStatus> {
        self.events
            .iter()
            .filter_map(|e| match e {
                CemEvent::InstructionStatus(u) if u.instruction_id == id => Some(u.status_type),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn the_device_is_read_before_the_rm_says_up() {
    let mut pump = Pump::new();
    pump.core.start(pump.now);
    pump.exchange();
    assert!(pump.bus.is_empty(), "nothing before the first read");
    assert!(matches!(pump.pending.front(), Some(Output::Read)));
    pump.answer_read(0.0);
    assert!(matches!(pump.bus.as_slice(), [BusEvent::Up]));
}

#[test]
fn an_instruction_is_started_before_its_write_and_succeeds_only_after_it() {
    let (mut pump, system) = Pump::connected_with_frbc();
    let id = pump.instruct(&system, "charge");
    assert_eq!(
        pump.statuses(id),
        [InstructionStatus::Accepted, InstructionStatus::Started]
    );
    let write = pump.take_write();
    assert_eq!(write.command, Command::SetPower { watts: 2500.0 });
    pump.answer_write(write, Ok(()));
    assert_eq!(
        pump.statuses(id),
        [
            InstructionStatus::Accepted,
            InstructionStatus::Started,
            InstructionStatus::Succeeded
        ]
    );
}

#[test]
fn a_refused_write_aborts_the_instruction() {
    let (mut pump, system) = Pump::connected_with_frbc();
    let id = pump.instruct(&system, "discharge");
    let write = pump.take_write();
    assert_eq!(write.command, Command::SetPower { watts: -2500.0 });
    pump.answer_write(write, Err(DeviceError::Refused("no".into())));
    assert_eq!(pump.statuses(id).last(), Some(&InstructionStatus::Aborted));
}

#[test]
fn while_a_write_is_in_flight_the_next_instruction_waits_for_its_result() {
    let (mut pump, system) = Pump::connected_with_frbc();
    let first = pump.instruct(&system, "charge");
    let second = pump.instruct(&system, "discharge");
    // The second is acknowledged by s2-kit but not yet taken: one write at a time.
    assert!(pump.statuses(second).is_empty());
    assert_eq!(pump.pending.len(), 1);
    let write = pump.take_write();
    pump.answer_write(write, Ok(()));
    assert_eq!(
        pump.statuses(first).last(),
        Some(&InstructionStatus::Succeeded)
    );
    assert_eq!(
        pump.statuses(second),
        [InstructionStatus::Accepted, InstructionStatus::Started]
    );
    let write = pump.take_write();
    assert_eq!(write.command, Command::SetPower { watts: -2500.0 });
}

#[test]
fn a_lost_link_releases_a_device_the_gateway_commanded() {
    let (mut pump, system) = Pump::connected_with_frbc();
    pump.instruct(&system, "charge");
    let write = pump.take_write();
    pump.answer_write(write, Ok(()));
    pump.core.bus(
        BusEvent::Down {
            reason: "test".into(),
        },
        pump.now,
    );
    pump.exchange();
    let release = pump.take_write();
    assert_eq!(release.command, Command::Release);
    pump.answer_write(release, Ok(()));
    assert_eq!(pump.core.view().releases, 1);
}
