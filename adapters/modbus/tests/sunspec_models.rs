//! SunSpec models beyond 101–103: the float inverters 111–113 and DER AC measurements
//! (701), against pymodbus simulators built from the SunSpec model definitions
//! (sunspec/models json/model_111..113.json, model_701.json); and what "curtailed"
//! means: an enable flag at 1 with 100 % is not a limit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{PyPeer, Seen, profile, unit};
use s2gw_core::{Command, Device, DeviceStatus};
use s2gw_modbus::config::{EnvelopeSpec, SunSpecOptions};
use s2gw_modbus::map::MapDevice;
use s2gw_modbus::sunspec::SunSpecDevice;

fn device(peer: &PyPeer, base: Option<u16>) -> SunSpecDevice {
    let p = profile("modbus-sunspec-inverter");
    let opts = SunSpecOptions {
        rated_w: Some(5000.0),
        bases: base.map(|b| vec![b]),
        ..p.sunspec.clone().unwrap()
    };
    SunSpecDevice::new("inv", unit(&peer.addr(), 1, 1000), &opts, p.coalescing())
}

/// Address of a model's ID register in a chain whose marker is at 40000.
fn model_at(chain: &[(u16, u16)], id: u16) -> u16 {
    let mut a = 40002;
    for (m, len) in chain {
        if *m == id {
            return a;
        }
        a += 2 + len;
    }
    panic!("model {id} not in chain")
}

fn fc16(address: u16, v: i64) -> Seen {
    Seen {
        fc: 16,
        address,
        values: vec![v],
    }
}

#[tokio::test]
async fn float_inverters_111_to_113_give_float_power_energy_and_state() {
    for model in ["111", "112", "113"] {
        let models = format!("1,{model},123");
        let mut peer = PyPeer::start(&["sunspec", "--models", &models]).await;
        let mut dev = device(&peer, None);
        let r = dev.read().await.unwrap();
        // W = 1234.5 (float32, no scale factor) produced: -1234.5 W in S2.
        assert_eq!(r.power_w, -1234.5, "model {model}");
        assert_eq!(r.energy_wh, Some(123456.0), "model {model}");
        assert_eq!(r.status, DeviceStatus::Ok, "model {model}");
        // Controlled through 123 like the integer inverters: 2500 of 5000 W = 50 %.
        dev.apply(&Command::LimitPower {
            min_w: Some(-2500.0),
            max_w: None,
        })
        .await
        .unwrap();
        let m123 = model_at(&[(1, 66), (111, 60), (123, 24)], 123);
        assert_eq!(
            peer.writes().await,
            [fc16(m123 + 7, 120), fc16(m123 + 5, 500), fc16(m123 + 9, 1)],
            "model {model}"
        );
    }
}

#[tokio::test]
async fn der_701_gives_total_and_phase_power_and_energy_and_704_limits() {
    let mut peer = PyPeer::start(&["sunspec", "--models", "1,701,704"]).await;
    let mut dev = device(&peer, None);
    let r = dev.read().await.unwrap();
    // W 12345 and WL1..3 4115 with W_SF -1; TotWhInj 123456 with TotWh_SF 0.
    assert_eq!(r.power_w, -1234.5);
    assert_eq!(r.phase_power_w, Some([-411.5, -411.5, -411.5]));
    assert_eq!(r.energy_wh, Some(123456.0));
    assert_eq!(r.status, DeviceStatus::Ok);
    dev.apply(&Command::LimitPower {
        min_w: Some(-1000.0),
        max_w: None,
    })
    .await
    .unwrap();
    let m704 = model_at(&[(1, 66), (701, 153), (704, 65)], 704);
    let seen = peer.writes().await;
    assert_eq!(seen.last(), Some(&fc16(m704 + 14, 1)), "{seen:?}");
    assert!(
        seen.contains(&fc16(m704 + 15, 2000)),
        "20 % at SF -2: {seen:?}"
    );
}

#[tokio::test]
async fn an_enabled_limit_at_100_percent_is_not_curtailing_and_is_restored_exactly() {
    for (models, chain, id, pct_off, ena_off, hundred) in [
        (
            "1,103,123",
            [(1, 66), (103, 50), (123, 24)],
            123,
            5,
            9,
            1000,
        ),
        (
            "1,103,704",
            [(1, 66), (103, 50), (704, 65)],
            704,
            15,
            14,
            10000,
        ),
    ] {
        let mut peer =
            PyPeer::start(&["sunspec", "--models", models, "--preset-limit", "100"]).await;
        let m = model_at(&chain, id);
        let mut dev = device(&peer, None);
        let r = dev.read().await.unwrap();
        assert_eq!(r.active, None, "{models}: enabled at 100 % limits nothing");
        // Not capped: 90 % is allowed although the installer's flag is on.
        dev.apply(&Command::LimitPower {
            min_w: Some(-4500.0),
            max_w: None,
        })
        .await
        .unwrap();
        let sf = if id == 123 { 10 } else { 100 };
        assert!(
            peer.writes().await.contains(&fc16(m + pct_off, 90 * sf)),
            "{models}"
        );
        dev.apply(&Command::Release).await.unwrap();
        let seen = peer.writes().await;
        assert!(
            seen.contains(&fc16(m + pct_off, hundred)),
            "{models}: {seen:?}"
        );
        assert_eq!(
            seen.last(),
            Some(&fc16(m + ena_off, 1)),
            "{models}: the flag is put back as found: {seen:?}"
        );
    }
}

/// The `modbus-fronius` profile against a simulator of the Fronius Datamanager's float
/// map (42,0410,2049): common block of 65 registers, 113 at register 40070, 123 at 40238;
/// a limit of half of WMax is WMaxLimPct 5000 at SF -2 in register 40243, the revert
/// timer in 40245 first and WMaxLim_Ena in 40247 last.
#[tokio::test]
async fn fronius_float_map_measures_and_limits_through_123() {
    let mut peer = PyPeer::start(&["fronius"]).await;
    let p = profile("modbus-fronius");
    let mut dev = SunSpecDevice::new(
        "fronius",
        unit(&peer.addr(), 1, 1000),
        p.sunspec.as_ref().unwrap(),
        p.coalescing(),
    );
    let r = dev.read().await.unwrap();
    assert_eq!(r.power_w, -1234.5);
    assert_eq!(r.energy_wh, Some(123456.0));
    assert_eq!(r.active, None);
    let d = dev.discovery().unwrap();
    let ids: Vec<u16> = d.models.iter().map(|m| m.id).collect();
    assert_eq!(ids, [1, 113, 120, 121, 122, 123, 160]);
    let at = |id| d.models.iter().find(|m| m.id == id).unwrap().address;
    // Protocol addresses: register numbers minus one.
    assert_eq!(
        (at(113), at(120), at(121), at(123)),
        (40069, 40131, 40159, 40237)
    );
    assert_eq!(dev.info().manufacturer.as_deref(), Some("Fronius"));
    assert!(peer.writes().await.is_empty(), "reading never writes");
    // 2500 of WMax 5000 W.
    dev.apply(&Command::LimitPower {
        min_w: Some(-2500.0),
        max_w: None,
    })
    .await
    .unwrap();
    assert_eq!(
        peer.writes().await,
        [fc16(40244, 120), fc16(40242, 5000), fc16(40246, 1)]
    );
    dev.apply(&Command::Release).await.unwrap();
    assert_eq!(peer.writes().await, [fc16(40246, 0)]);
}

/// The `modbus-sma` profile against a simulator of a Sunny Tripower's SunSpec chain (17
/// models, as OpenEMS reads them): discovery lands on 103 at 40185 and 123 at 40343
/// behind the filler models; WMaxLim_Ena at 1 with 100 % (as SMA keeps it) is no limit;
/// a limit of half of WMax is the revert timer, WMaxLimPct 500 (SF -1), enable; release
/// puts 100 % back with the flag as found (1).
#[tokio::test]
async fn sma_sunspec_chain_is_discovered_and_its_enabled_100_percent_is_restored() {
    let mut peer = PyPeer::start(&["sma"]).await;
    let p = profile("modbus-sma");
    let mut dev = SunSpecDevice::new(
        "sma",
        unit(&peer.addr(), 126, 1000),
        p.sunspec.as_ref().unwrap(),
        p.coalescing(),
    );
    let r = dev.read().await.unwrap();
    assert_eq!(r.power_w, -1234.5);
    assert_eq!(r.active, None, "enabled at 100 % limits nothing");
    let d = dev.discovery().unwrap();
    let ids: Vec<u16> = d.models.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        [
            1, 11, 12, 103, 120, 121, 122, 123, 124, 126, 127, 128, 131, 132, 160, 129, 130
        ]
    );
    let at = |id| d.models.iter().find(|m| m.id == id).unwrap().address;
    assert_eq!(
        (at(103), at(120), at(121), at(123), at(160)),
        (40185, 40237, 40265, 40343, 40621)
    );
    assert_eq!(dev.info().manufacturer.as_deref(), Some("SMA"));
    assert!(peer.writes().await.is_empty(), "reading never writes");

    dev.apply(&Command::LimitPower {
        min_w: Some(-2500.0),
        max_w: None,
    })
    .await
    .unwrap();
    assert_eq!(
        peer.writes().await,
        [fc16(40350, 120), fc16(40348, 500), fc16(40352, 1)]
    );
    dev.apply(&Command::Release).await.unwrap();
    let seen = peer.writes().await;
    assert!(seen.contains(&fc16(40348, 1000)), "{seen:?}");
    assert_eq!(seen.last(), Some(&fc16(40352, 1)), "{seen:?}");
}

/// A 32-bit SolarEdge power control value as the peer prints it: low word first.
fn low_first(address: u16, words: u32) -> Seen {
    Seen {
        fc: 16,
        address,
        values: vec![i64::from(words & 0xFFFF), i64::from(words >> 16)],
    }
}

/// The `modbus-solaredge` profile against a simulator of SolarEdge's SunSpec map and
/// its Enhanced Dynamic Power Control registers: the SunSpec W with W_SF; a limit makes
/// sure of the fallback (100 %, held already: not written) and the command timeout
/// (120 s held: 60 s written), then the enable and the dynamic limit as a percentage of
/// the envelope's production bound (the inverter's max active power), float32 low word
/// first; the next limit writes the dynamic limit alone, as the settings stay in the
/// inverter's non-volatile memory; release is 100 %.
#[tokio::test]
async fn solaredge_measures_sunspec_and_limits_through_its_dynamic_power_control() {
    let mut peer = PyPeer::start(&["solaredge"]).await;
    let mut p = profile("modbus-solaredge");
    // What the device section says for an 8 kW inverter.
    p.envelope = Some(EnvelopeSpec {
        min_w: -8000.0,
        max_w: 0.0,
    });
    assert_eq!(p.validate(), Vec::<(String, String)>::new());
    let mut dev = MapDevice::new("se", unit(&peer.addr(), 1, 1000), &p);
    let r = dev.read().await.unwrap();
    assert_eq!(r.power_w, -1234.5);
    assert_eq!(r.energy_wh, Some(123456.0));
    assert_eq!(r.status, DeviceStatus::Ok);
    assert!(peer.writes().await.is_empty(), "reading never writes");

    // 2000 W of 8000 W: 25 %.
    dev.apply(&Command::LimitPower {
        min_w: Some(-2000.0),
        max_w: Some(0.0),
    })
    .await
    .unwrap();
    assert_eq!(
        peer.writes().await,
        [
            low_first(0xF310, 60),
            fc16(0xF300, 1),
            low_first(0xF322, 25f32.to_bits()),
        ]
    );
    // 4000 W: 50 %, and nothing else rewritten.
    dev.apply(&Command::LimitPower {
        min_w: Some(-4000.0),
        max_w: Some(0.0),
    })
    .await
    .unwrap();
    assert_eq!(peer.writes().await, [low_first(0xF322, 50f32.to_bits())]);
    dev.apply(&Command::Release).await.unwrap();
    assert_eq!(peer.writes().await, [low_first(0xF322, 100f32.to_bits())]);
}
