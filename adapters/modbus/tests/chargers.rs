//! Charger profiles from their makers' register tables against pymodbus simulators
//! built from the same tables (adapters/modbus/tests/peers/modbus_peer.py).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{PyPeer, Seen, fast_settings, profile, unit};
use s2gw_core::{Command, Device, DeviceStatus};
use s2gw_modbus::map::MapDevice;
use s2gw_modbus::point::Unit;
use s2gw_modbus::{Bus, Target};

fn fc16(address: u16, v: i64) -> Seen {
    Seen {
        fc: 16,
        address,
        values: vec![v],
    }
}

fn fc6(address: u16, v: i64) -> Seen {
    Seen {
        fc: 6,
        address,
        values: vec![v],
    }
}

fn current(amps: f64) -> Command {
    Command::SetCurrent { amps, phases: 3 }
}

/// go-eCharger (API v2 Modbus table): power in 0.01 kW, energy in 0.1 kWh, phase power
/// in 0.1 kW; a current is FORCE_STATE 0 then AMPERE_VOLATILE with FC16 (the charger
/// refuses FC6); off is FORCE_STATE 1 alone (AMPERE_VOLATILE takes 6..32 A only);
/// release is neutral and 16 A.
#[tokio::test]
async fn go_e_readings_current_steps_off_and_release() {
    let mut peer = PyPeer::start(&["goe"]).await;
    let p = profile("modbus-go-e");
    let mut dev = MapDevice::new("goe", unit(&peer.addr(), 1, 1000), &p);
    let r = dev.read().await.unwrap();
    assert_eq!(r.power_w, 3600.0);
    assert_eq!(r.energy_wh, Some(1_234_500.0));
    assert_eq!(r.phase_power_w, Some([1200.0, 1200.0, 1200.0]));
    assert_eq!(r.status, DeviceStatus::Ok, "CAR_STATE 2: charging");
    assert!(peer.writes().await.is_empty(), "reading never writes");

    dev.apply(&Command::SetCurrent {
        amps: 10.0,
        phases: 3,
    })
    .await
    .unwrap();
    assert_eq!(peer.writes().await, [fc16(337, 0), fc16(299, 10)]);

    dev.apply(&Command::SetCurrent {
        amps: 0.0,
        phases: 3,
    })
    .await
    .unwrap();
    assert_eq!(
        peer.writes().await,
        [fc16(337, 1)],
        "off leaves the current alone"
    );

    // 5 kW fits 6 A on three phases (4140 W), not 10 A.
    dev.apply(&Command::LimitPower {
        min_w: None,
        max_w: Some(5000.0),
    })
    .await
    .unwrap();
    assert_eq!(peer.writes().await, [fc16(337, 0), fc16(299, 6)]);

    dev.apply(&Command::Release).await.unwrap();
    assert_eq!(peer.writes().await, [fc16(337, 0), fc16(299, 16)]);
}

/// KEBA P30 (Modbus TCP programmers guide V1.02; the failsafe registers and the 0.1 Wh
/// energy unit as evcc found them): unit 255, one u32 per read (the simulator refuses
/// longer reads, as the guide says the charger does), power in mW and energy in 0.1 Wh;
/// every command writes the failsafe timeout first, then the current in mA and the
/// enable register, all with FC6 (the simulator refuses FC16); off is the enable
/// register alone; release enables at 16 A.
#[tokio::test]
async fn keba_p30_reads_one_pair_at_a_time_and_writes_fc6_with_its_failsafe_timeout() {
    let mut peer = PyPeer::start(&["keba"]).await;
    let p = profile("modbus-keba-p30");
    let mut dev = MapDevice::new("keba", unit(&peer.addr(), 255, 1000), &p);
    let r = dev.read().await.unwrap();
    assert_eq!(r.power_w, 7360.0);
    assert!((r.energy_wh.unwrap() - 12_345_678.9).abs() < 1e-3, "{r:?}");
    assert_eq!(r.status, DeviceStatus::Ok, "charging state 3: charging");
    assert!(peer.writes().await.is_empty(), "reading never writes");

    dev.apply(&current(10.0)).await.unwrap();
    assert_eq!(
        peer.writes().await,
        [fc6(5018, 60), fc6(5004, 10000), fc6(5014, 1)]
    );
    dev.apply(&current(0.0)).await.unwrap();
    assert_eq!(
        peer.writes().await,
        [fc6(5018, 60), fc6(5014, 0)],
        "off leaves the current alone"
    );
    dev.apply(&Command::Release).await.unwrap();
    assert_eq!(
        peer.writes().await,
        [fc6(5018, 60), fc6(5004, 16000), fc6(5014, 1)]
    );
}

/// Heidelberg Energy Control (register table, layout 1.0.7) over RTU framing: input
/// registers for state, phase currents (0.1 A), power and energy; a command disables
/// standby, arms the watchdog (60 s) with a 16 A failsafe current and writes the current
/// in 0.1 A, all with FC6, the write the table lists (the simulator refuses FC16), and
/// read back; 0 A is 261 = 0.
#[tokio::test]
async fn heidelberg_ec_over_rtu_arms_its_watchdog_and_sets_the_current() {
    let mut peer = PyPeer::start(&["heidelberg", "--framer", "rtu"]).await;
    let p = profile("modbus-heidelberg-ec");
    let bus = Bus::private(&Target::RtuOverTcp(peer.addr()), fast_settings());
    let unit = Unit {
        bus: Arc::new(bus),
        id: 1,
        timeout: Duration::from_millis(1000),
    };
    let mut dev = MapDevice::new("heidelberg", unit, &p);
    let r = dev.read().await.unwrap();
    assert_eq!(r.power_w, 11040.0);
    assert_eq!(r.phase_power_w, Some([3680.0, 3657.0, 3703.0]));
    assert_eq!(r.energy_wh, Some(4_321_000.0));
    assert_eq!(r.status, DeviceStatus::Ok, "state 7: C2, charging");
    assert!(peer.writes().await.is_empty(), "reading never writes");

    let armed = [fc6(258, 4), fc6(257, 60000), fc6(262, 160)];
    dev.apply(&current(10.0)).await.unwrap();
    assert_eq!(peer.writes().await, [&armed[..], &[fc6(261, 100)]].concat());
    dev.apply(&current(0.0)).await.unwrap();
    assert_eq!(peer.writes().await, [&armed[..], &[fc6(261, 0)]].concat());
    dev.apply(&Command::Release).await.unwrap();
    assert_eq!(peer.writes().await, [&armed[..], &[fc6(261, 160)]].concat());
}
