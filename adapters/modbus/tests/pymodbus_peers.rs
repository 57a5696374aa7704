//! Against pymodbus 3.16 device simulators: SunSpec inverters at 40000 (1+103+123) and
//! 50000 (1+103+704), an ABB Terra AC and an SDM630.

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PyPeer, Seen, profile, unit};
use s2gw_core::{Command, Device, DeviceError};
use s2gw_modbus::config::{ModbusProfile, SunSpecOptions};
use s2gw_modbus::map::MapDevice;
use s2gw_modbus::point::WriteFc;
use s2gw_modbus::sunspec::SunSpecDevice;
use s2gw_modbus::{Target, scan};
use std::time::Duration;

/// SunSpec inverter profile with a given write function code.
fn sunspec(write: WriteFc) -> ModbusProfile {
    let mut p = profile("modbus-sunspec-inverter");
    p.sunspec = Some(SunSpecOptions {
        write: Some(write),
        rated_w: Some(5000.0),
        ..p.sunspec.unwrap()
    });
    p
}

fn inverter(peer: &PyPeer, p: &ModbusProfile) -> SunSpecDevice {
    SunSpecDevice::new(
        "inv",
        unit(&peer.addr(), 1, 1000),
        p.sunspec.as_ref().unwrap(),
        p.coalescing(),
    )
}

/// Address of a model's ID register for the chain marker + models in order.
fn model_at(base: u16, chain: &[(u16, u16)], id: u16) -> u16 {
    let mut a = base + 2;
    for (m, len) in chain {
        if *m == id {
            return a;
        }
        a += 2 + len;
    }
    panic!("model {id} not in chain")
}

const CHAIN_123: [(u16, u16); 3] = [(1, 66), (103, 50), (123, 24)];
const CHAIN_704: [(u16, u16); 3] = [(1, 66), (103, 50), (704, 65)];

#[tokio::test]
async fn discovery_finds_the_models_at_40000_and_50000() {
    let a = PyPeer::start(&["sunspec", "--base", "40000", "--models", "1,103,123"]).await;
    let b = PyPeer::start(&["sunspec", "--base", "50000", "--models", "1,103,704"]).await;
    for (peer, base, ids) in [(&a, 40000, [1, 103, 123]), (&b, 50000, [1, 103, 704])] {
        let mut dev = inverter(peer, &sunspec(WriteFc::Fc16));
        dev.read().await.unwrap();
        let d = dev.discovery().unwrap();
        assert_eq!(d.base, base);
        assert_eq!(d.models.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
        let report = scan(Target::Tcp(peer.addr()), None, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(report.base, base);
        let text = report.to_string();
        assert!(
            text.contains("three-phase inverter") && text.contains("1234.500 W"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn readings_are_the_registers_scaled_with_sign_and_identity() {
    let peer = PyPeer::start(&["sunspec", "--models", "1,103,123"]).await;
    let mut dev = inverter(&peer, &sunspec(WriteFc::Fc16));
    let r = dev.read().await.unwrap();
    // W = 12345 × 10^-1 produced → -1234.5 W in S2's sign; WH = 123456 × 10^0.
    assert_eq!(r.power_w, -1234.5);
    assert_eq!(r.energy_wh, Some(123456.0));
    assert_eq!(r.active, None, "no limit active, none reported");
    let info = dev.info();
    assert_eq!(info.manufacturer.as_deref(), Some("s2gw-test"));
    assert_eq!(info.serial.as_deref(), Some("SN0001"));
    assert!(info.control.iter().any(|c| matches!(c,
        s2gw_core::device::ControlCapability::PowerEnvelope { min_w, .. } if *min_w == -5000.0)));
}

#[tokio::test]
async fn a_limit_through_123_is_written_with_fc16_and_its_revert_timer() {
    let mut peer = PyPeer::start(&["sunspec", "--models", "1,103,123"]).await;
    let mut dev = inverter(&peer, &sunspec(WriteFc::Fc16));
    dev.read().await.unwrap();
    assert!(
        peer.writes().await.is_empty(),
        "reading never writes (rule 3)"
    );
    // 3000 W of 5000 W = 60 %, WMaxLimPct_SF = -1 → 600.
    dev.apply(&Command::LimitPower {
        min_w: Some(-3000.0),
        max_w: None,
    })
    .await
    .unwrap();
    let m = model_at(40000, &CHAIN_123, 123);
    let fc16 = |address, v: i64| Seen {
        fc: 16,
        address,
        values: vec![v],
    };
    assert_eq!(
        peer.writes().await,
        vec![fc16(m + 7, 120), fc16(m + 5, 600), fc16(m + 9, 1)]
    );
    dev.apply(&Command::Release).await.unwrap();
    assert_eq!(
        peer.writes().await,
        vec![fc16(m + 9, 0)],
        "release disables the limit"
    );
}

#[tokio::test]
async fn a_limit_through_704_sets_the_revert_timer_and_enables_last() {
    let mut peer = PyPeer::start(&["sunspec", "--base", "50000", "--models", "1,103,704"]).await;
    let mut dev = inverter(&peer, &sunspec(WriteFc::Fc16));
    dev.apply(&Command::LimitPower {
        min_w: Some(-3000.0),
        max_w: None,
    })
    .await
    .unwrap();
    let m = model_at(50000, &CHAIN_704, 704);
    let w = |address, values: Vec<i64>| Seen {
        fc: 16,
        address,
        values,
    };
    assert_eq!(
        peer.writes().await,
        vec![
            w(m + 18, vec![0, 120]), // WMaxLimPctRvrtTms, uint32
            w(m + 16, vec![10000]),  // revert to 100 %
            w(m + 17, vec![0]),      // ... disabled
            w(m + 15, vec![6000]),   // 60 % with SF -2
            w(m + 14, vec![1]),      // enable last
        ]
    );
    // At 100 % the limit is switched off rather than set.
    dev.apply(&Command::LimitPower {
        min_w: Some(-5000.0),
        max_w: None,
    })
    .await
    .unwrap();
    assert_eq!(peer.writes().await, vec![w(m + 14, vec![0])]);
}

#[tokio::test]
async fn an_fc6_only_device_works_when_the_profile_says_fc6() {
    let mut peer = PyPeer::start(&["sunspec", "--models", "1,103,123", "--fc6-only"]).await;
    let m = model_at(40000, &CHAIN_123, 123);
    let mut wrong = inverter(&peer, &sunspec(WriteFc::Fc16));
    let err = wrong
        .apply(&Command::LimitPower {
            min_w: Some(-2500.0),
            max_w: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeviceError::Refused(m) if m.contains("illegal data address")),
        "{err}"
    );
    peer.writes().await;
    let mut right = inverter(&peer, &sunspec(WriteFc::Fc6));
    right
        .apply(&Command::LimitPower {
            min_w: Some(-2500.0),
            max_w: None,
        })
        .await
        .unwrap();
    let seen = peer.writes().await;
    assert!(seen.iter().all(|s| s.fc == 6), "{seen:?}");
    assert!(seen.contains(&Seen {
        fc: 6,
        address: m + 5,
        values: vec![500]
    }));
}

#[tokio::test]
async fn a_device_that_fails_or_ignores_the_write_gives_an_error() {
    let failing = PyPeer::start(&["sunspec", "--models", "1,103,123", "--fail-writes"]).await;
    let err = inverter(&failing, &sunspec(WriteFc::Fc16))
        .apply(&Command::LimitPower {
            min_w: Some(-1000.0),
            max_w: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeviceError::Refused(m) if m.contains("server device failure")),
        "{err}"
    );
    let ignoring = PyPeer::start(&["sunspec", "--models", "1,103,123", "--ignore-writes"]).await;
    let err = inverter(&ignoring, &sunspec(WriteFc::Fc16))
        .apply(&Command::LimitPower {
            min_w: Some(-1000.0),
            max_w: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, DeviceError::NotConfirmed(_)), "{err}");
}

#[tokio::test]
async fn an_installers_limit_is_reported_capped_to_and_restored_on_release() {
    let mut peer =
        PyPeer::start(&["sunspec", "--models", "1,103,123", "--preset-limit", "70"]).await;
    let m = model_at(40000, &CHAIN_123, 123);
    let mut dev = inverter(&peer, &sunspec(WriteFc::Fc16));
    let r = dev.read().await.unwrap();
    assert_eq!(
        r.active,
        Some(Command::LimitPower {
            min_w: Some(-3500.0),
            max_w: None
        })
    );
    assert!(
        peer.writes().await.is_empty(),
        "the installer's limit is left alone"
    );
    // 80 % asked, but never looser than the installer's 70 %.
    dev.apply(&Command::LimitPower {
        min_w: Some(-4000.0),
        max_w: None,
    })
    .await
    .unwrap();
    assert!(peer.writes().await.contains(&Seen {
        fc: 16,
        address: m + 5,
        values: vec![700]
    }));
    dev.apply(&Command::LimitPower {
        min_w: Some(-1000.0),
        max_w: None,
    })
    .await
    .unwrap();
    peer.writes().await;
    dev.apply(&Command::Release).await.unwrap();
    let seen = peer.writes().await;
    assert!(
        seen.contains(&Seen {
            fc: 16,
            address: m + 5,
            values: vec![700]
        }),
        "{seen:?}"
    );
    assert_eq!(
        seen.last(),
        Some(&Seen {
            fc: 16,
            address: m + 9,
            values: vec![1]
        }),
        "{seen:?}"
    );
}

#[tokio::test]
async fn abb_terra_ac_readings_and_current_setpoints() {
    let mut peer = PyPeer::start(&["abb"]).await;
    let p = profile("modbus-abb-terra-ac");
    let mut dev = MapDevice::new("abb", unit(&peer.addr(), 1, 1000), &p);
    let r = dev.read().await.unwrap();
    assert_eq!(r.power_w, 11040.0);
    assert_eq!(r.energy_wh, Some(4321.0));
    assert_eq!(r.phase_power_w, Some([3680.0, 3657.0, 3703.0]));
    dev.apply(&Command::SetCurrent {
        amps: 10.0,
        phases: 3,
    })
    .await
    .unwrap();
    assert_eq!(
        peer.writes().await,
        vec![Seen {
            fc: 16,
            address: 0x4100,
            values: vec![0, 10000]
        }]
    );
    // 5 kW fits 6 A on three phases (4140 W), not 10 A.
    dev.apply(&Command::LimitPower {
        min_w: None,
        max_w: Some(5000.0),
    })
    .await
    .unwrap();
    assert_eq!(
        peer.writes().await,
        vec![Seen {
            fc: 16,
            address: 0x4100,
            values: vec![0, 6000]
        }]
    );
    let err = dev
        .apply(&Command::SetCurrent {
            amps: 4.0,
            phases: 3,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeviceError::Refused(_)),
        "below 6 A is refused"
    );
    dev.apply(&Command::Release).await.unwrap();
    assert_eq!(
        peer.writes().await,
        vec![Seen {
            fc: 16,
            address: 0x4100,
            values: vec![0, 16000]
        }]
    );
}

#[tokio::test]
async fn sdm630_float_registers_and_coalescing() {
    let peer = PyPeer::start(&["sdm630"]).await;
    let p = profile("modbus-sdm630");
    let u = unit(&peer.addr(), 1, 1000);
    let mut dev = MapDevice::new("meter", u.clone(), &p);
    let r = dev.read().await.unwrap();
    assert_eq!(r.power_w, 1100.25);
    assert_eq!(r.phase_power_w, Some([1000.5, -200.25, 300.0]));
    assert_eq!(r.energy_wh, Some(12345.5 * 1000.0));
    // The four power registers (12..=0x35) are one read with coalescing, four without.
    let before = u.bus.stats().requests();
    dev.read().await.unwrap();
    let coalesced = u.bus.stats().requests() - before;
    dev.poller_mut().coalesce = false;
    let before = u.bus.stats().requests();
    dev.read().await.unwrap();
    let single = u.bus.stats().requests() - before;
    assert_eq!((coalesced, single), (1, 4));
}
