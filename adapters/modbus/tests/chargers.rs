//! Charger profiles from their makers' register tables against pymodbus simulators
//! built from the same tables (adapters/modbus/tests/peers/modbus_peer.py).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PyPeer, Seen, profile, unit};
use s2gw_core::{Command, Device, DeviceStatus};
use s2gw_modbus::map::MapDevice;

fn fc16(address: u16, v: i64) -> Seen {
    Seen {
        fc: 16,
        address,
        values: vec![v],
    }
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
