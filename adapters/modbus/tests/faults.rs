//! Against tokio-modbus's server in-process: exceptions, timeouts, a dead unit next to a
//! live one, a disconnect in the middle of a request, garbage frames; and the map
//! profiles that have no pymodbus peer (SG-Ready, Alfen Eve).

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Behaviour, FaultServer, faulty_proxy, profile, unit};
use s2gw_core::{Command, Device};
use s2gw_modbus::bus::{Bus, Table};
use s2gw_modbus::map::MapDevice;
use s2gw_modbus::point::Unit;
use s2gw_modbus::{ModbusError, Target, ValueType, WordOrder, read_raw};
use tokio_modbus::ExceptionCode;

async fn raw(addr: &str, unit: u8) -> Result<s2gw_modbus::RawRead, ModbusError> {
    read_raw(
        Target::Tcp(addr.to_string()),
        unit,
        Table::Holding,
        0,
        2,
        ValueType::U32,
        WordOrder::HighFirst,
    )
    .await
}

#[tokio::test]
async fn exceptions_are_named() {
    let server = FaultServer::start().await;
    server.set(Table::Holding, 0, &[1, 2]);
    assert_eq!(
        raw(&server.addr, 1).await.unwrap().value,
        s2gw_modbus::value::Value::Number(65538.0)
    );
    for (code, name) in [
        (ExceptionCode::IllegalFunction, "illegal function"),
        (ExceptionCode::IllegalDataAddress, "illegal data address"),
        (ExceptionCode::ServerDeviceFailure, "server device failure"),
    ] {
        server.behave(1, Behaviour::Exception(code));
        let err = raw(&server.addr, 1).await.unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[tokio::test]
async fn refused_connections_and_timeouts_say_so() {
    let port = common::free_port();
    let err = raw(&format!("127.0.0.1:{port}"), 1).await.unwrap_err();
    assert!(
        matches!(err, ModbusError::Refused { .. }) && err.to_string().contains("refused"),
        "{err}"
    );
    let server = FaultServer::start().await;
    server.set(Table::Holding, 0, &[1, 2]);
    server.behave(1, Behaviour::Silent(Duration::from_secs(5)));
    let err = raw(&server.addr, 1).await.unwrap_err();
    assert!(matches!(err, ModbusError::Timeout { unit: 1, .. }), "{err}");
}

#[tokio::test]
async fn a_dead_unit_does_not_stall_a_live_one_on_the_same_bus() {
    let server = FaultServer::start().await;
    server.set(Table::Holding, 0, &[7, 8]);
    server.behave(2, Behaviour::Silent(Duration::from_millis(300)));
    let bus = Arc::new(Bus::private(
        &Target::Tcp(server.addr.clone()),
        common::fast_settings(),
    ));
    // The live unit's own timeout is generous: on a loaded machine an in-process server
    // can be slow to answer, and this test is about the dead unit's effect, not speed.
    let live = Unit {
        bus: bus.clone(),
        id: 1,
        timeout: Duration::from_secs(2),
    };
    let dead = Unit {
        bus: bus.clone(),
        id: 2,
        timeout: Duration::from_millis(150),
    };
    let mut dead_errors = Vec::new();
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            live.read_words(Table::Holding, 0, 2),
            dead.read_words(Table::Holding, 0, 2)
        );
        assert_eq!(a.unwrap(), vec![7, 8]);
        dead_errors.push(b.unwrap_err());
    }
    // Had every dead request gone on the wire, each would have held the bus for its
    // 150 ms timeout in front of a live read. Instead the dead unit is skipped on
    // back-off: it sees at most a few requests, and the others fail at once.
    assert!(matches!(
        dead_errors[0],
        ModbusError::Timeout { unit: 2, .. }
    ));
    assert!(
        dead_errors
            .iter()
            .any(|e| matches!(e, ModbusError::BackedOff { unit: 2, .. }))
    );
    let sent_to_dead = server.log().iter().filter(|(u, _, _)| *u == 2).count();
    assert!(
        sent_to_dead <= 3,
        "{sent_to_dead} requests to the dead unit"
    );
}

#[tokio::test]
async fn a_disconnect_in_the_middle_of_a_request_is_retried_on_a_new_connection() {
    let server = FaultServer::start().await;
    server.set(Table::Holding, 0, &[3, 4]);
    let proxy = faulty_proxy(server.addr.clone(), None).await;
    let u = unit(&proxy, 1, 500);
    assert_eq!(
        u.read_words(Table::Holding, 0, 2).await.unwrap(),
        vec![3, 4]
    );
    assert_eq!(u.bus.stats().connects(), 2);
}

#[tokio::test]
async fn garbage_frames_fail_the_request_and_the_bus_recovers() {
    let server = FaultServer::start().await;
    server.set(Table::Holding, 0, &[5, 6]);
    // A frame with a wrong protocol id and nonsense after it.
    let garbage = vec![0x00, 0x00, 0xDE, 0xAD, 0x00, 0x05, 0x01, 0x03, 0x02, 0xFF];
    let proxy = faulty_proxy(server.addr.clone(), Some(garbage)).await;
    let u = unit(&proxy, 1, 500);
    // Garbage breaks the connection; the retry on a new one gets the answer.
    assert_eq!(
        u.read_words(Table::Holding, 0, 2).await.unwrap(),
        vec![5, 6]
    );
    assert_eq!(
        u.read_words(Table::Holding, 0, 2).await.unwrap(),
        vec![5, 6]
    );
}

#[tokio::test]
async fn sg_ready_modes_switch_two_coils_with_fc5() {
    let server = FaultServer::start().await;
    server.set(Table::Coil, 0, &[0, 0]);
    server.set(Table::Input, 0, &[1800]);
    let mut dev = MapDevice::new(
        "hp",
        unit(&server.addr, 1, 500),
        &profile("modbus-sg-ready"),
    );
    assert_eq!(dev.read().await.unwrap().power_w, 1800.0);
    dev.apply(&Command::SetMode {
        mode: "recommended".into(),
    })
    .await
    .unwrap();
    assert_eq!(server.get(Table::Coil, 0, 2), vec![0, 1]);
    dev.apply(&Command::SetMode {
        mode: "forced".into(),
    })
    .await
    .unwrap();
    assert_eq!(server.get(Table::Coil, 0, 2), vec![1, 1]);
    dev.apply(&Command::Release).await.unwrap();
    assert_eq!(
        server.get(Table::Coil, 0, 2),
        vec![0, 0],
        "release is SG-Ready normal"
    );
    let writes: Vec<u8> = server
        .log()
        .iter()
        .map(|(_, fc, _)| *fc)
        .filter(|fc| [5, 15, 6, 16].contains(fc))
        .collect();
    assert!(writes.iter().all(|fc| *fc == 5), "{writes:?}");
    let info = dev.info();
    assert!(info.control.iter().any(|c| matches!(c,
        s2gw_core::device::ControlCapability::OperationModes { min_on_s: 600, min_off_s: 300, modes } if modes.len() == 4)));
}

fn f32_words(v: f32) -> [u16; 2] {
    let b = v.to_bits();
    [(b >> 16) as u16, b as u16]
}

#[tokio::test]
async fn alfen_eve_floats_phases_and_heartbeat_rewrites() {
    let server = FaultServer::start().await;
    server.set(Table::Holding, 344, &f32_words(7360.0));
    let e = 123456.5f64.to_bits();
    server.set(
        Table::Holding,
        374,
        &[
            (e >> 48) as u16,
            (e >> 32) as u16,
            (e >> 16) as u16,
            e as u16,
        ],
    );
    server.set(Table::Holding, 1201, &[0x4332, 0, 0, 0, 0]); // "C2"
    server.set(Table::Holding, 1210, &f32_words(16.0));
    server.set(Table::Holding, 1215, &[3]);
    let mut p = profile("modbus-alfen-eve");
    p.refresh_s = Some(1);
    let mut dev = MapDevice::new("eve", unit(&server.addr, 1, 500), &p);
    let r = dev.read().await.unwrap();
    assert_eq!((r.power_w, r.energy_wh), (7360.0, Some(123456.5)));
    assert_eq!(r.status, s2gw_core::DeviceStatus::Ok);
    dev.apply(&Command::SetCurrent {
        amps: 8.0,
        phases: 1,
    })
    .await
    .unwrap();
    assert_eq!(server.get(Table::Holding, 1210, 2), f32_words(8.0));
    assert_eq!(server.get(Table::Holding, 1215, 1), vec![1]);
    // Before the validity runs out the setpoint is written again, on a later poll.
    let writes = |s: &FaultServer| {
        s.log()
            .iter()
            .filter(|(_, fc, a)| *fc == 16 && *a == 1210)
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while writes(&server) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat re-write"
        );
        dev.read().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.set(Table::Holding, 1201, &[0x4600, 0, 0, 0, 0]); // "F"
    assert!(matches!(
        dev.read().await.unwrap().status,
        s2gw_core::DeviceStatus::Fault(_)
    ));
}

/// Found by the fuzz campaign (#11): a SunSpec battery whose ChaState read 42,360 % under
/// a wild scale factor was passed on as the state of charge, and so as an FRBC fill level
/// outside the range the RM announces. Now it is no reading; power still is.
#[tokio::test]
async fn a_state_of_charge_beyond_100_percent_is_no_reading() {
    let server = FaultServer::start().await;
    let mut chain = vec![0x5375, 0x6e53];
    for (id, len) in [(1u16, 66u16), (103, 50), (124, 24)] {
        let start = chain.len();
        chain.push(id);
        chain.push(len);
        chain.extend(std::iter::repeat_n(0, usize::from(len)));
        if id == 103 {
            chain[start + 14] = 1500; // W
        }
        if id == 124 {
            chain[start + 8] = 4236; // ChaState
            chain[start + 22] = 1; // ChaState_SF: ×10, so 42,360 %
        }
    }
    chain.extend([0xFFFF, 0]);
    server.set(Table::Holding, 40000, &chain);
    let mut device = s2gw_modbus::build_on(
        "battery",
        unit(&server.addr, 1, 1000),
        &profile("modbus-sunspec-storage"),
    );
    let readings = device.read().await.unwrap();
    assert_eq!(readings.power_w, -1500.0, "produced: {readings:?}");
    assert_eq!(readings.soc, None, "{readings:?}");
    server.set(Table::Holding, 40002 + 68 + 52 + 22, &[0]); // ChaState_SF back to ×1
    server.set(Table::Holding, 40002 + 68 + 52 + 8, &[42]); // and a real 42 %
    let readings = device.read().await.unwrap();
    assert_eq!(readings.soc, Some(42.0), "{readings:?}");
}
