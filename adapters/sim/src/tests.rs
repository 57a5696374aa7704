//! Behaviour of the simulated devices on a manual clock.

use std::sync::Arc;
use std::time::Duration;

use s2gw_core::device::{ControlCapability, DeviceKind};
use s2gw_core::{Command, Device, DeviceError, Readings};

use crate::{
    Battery, Clock, EvCharger, HeatPump, ManualClock, Meter, PvInverter, SimConfig, SimModel,
    build, utc_offset_for_midday_at,
};

/// Midnight UTC of some ordinary day (2024-10-04).
const DAY: u64 = 20_000 * 86_400;
const HOUR: u64 = 3600;

fn clock_at(secs: u64) -> (Arc<ManualClock>, Arc<dyn Clock>) {
    let clock = ManualClock::shared_from_unix(secs);
    let dynamic: Arc<dyn Clock> = clock.clone();
    (clock, dynamic)
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * HOUR)
}

async fn read(device: &mut dyn Device) -> Readings {
    device.read().await.expect("simulated read never fails")
}

fn refused(result: Result<(), DeviceError>) -> String {
    match result {
        Err(DeviceError::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn approx(actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{actual} is not within {tolerance} of {expected}"
    );
}

// ---- PV ----

fn pv(clock: Arc<dyn Clock>) -> PvInverter {
    PvInverter::new("pv1", &SimConfig::new(SimModel::Pv), clock)
}

#[tokio::test]
async fn pv_produces_at_noon_and_not_at_night() {
    let (clock, dynamic) = clock_at(DAY);
    let mut pv = pv(dynamic);
    assert_eq!(read(&mut pv).await.power_w, 0.0, "midnight");
    clock.advance(hours(12));
    let noon = read(&mut pv).await.power_w;
    // 5 kW rated, clouds take at most 20 %.
    assert!((-5000.0..=-4000.0).contains(&noon), "noon: {noon}");
    clock.advance(hours(8));
    assert_eq!(read(&mut pv).await.power_w, 0.0, "20:00");
}

#[tokio::test]
async fn pv_limit_caps_production_and_release_removes_it() {
    let (_clock, dynamic) = clock_at(DAY + 12 * HOUR);
    let mut pv = pv(dynamic);
    let limit = Command::LimitPower {
        min_w: Some(-1000.0),
        max_w: Some(0.0),
    };
    pv.apply(&limit).await.expect("limit accepted");
    let r = read(&mut pv).await;
    assert_eq!(r.power_w, -1000.0);
    assert_eq!(r.active, Some(limit));
    pv.apply(&Command::Release).await.expect("release accepted");
    let r = read(&mut pv).await;
    assert!(r.power_w < -4000.0, "{}", r.power_w);
    assert_eq!(r.active, None);
}

#[tokio::test]
async fn pv_refuses_what_an_inverter_cannot_do() {
    let (_clock, dynamic) = clock_at(DAY + 12 * HOUR);
    let mut pv = pv(dynamic);
    let force_consume = Command::LimitPower {
        min_w: Some(500.0),
        max_w: None,
    };
    refused(pv.apply(&force_consume).await);
    refused(pv.apply(&Command::SetPower { watts: -100.0 }).await);
    assert_eq!(read(&mut pv).await.active, None);
}

#[tokio::test]
async fn pv_energy_integrates_the_sun_curve() {
    let (clock, dynamic) = clock_at(DAY);
    let mut pv = pv(dynamic);
    let mut last = 0.0;
    for _ in 0..24 {
        clock.advance(hours(1));
        let e = read(&mut pv).await.energy_wh.expect("pv counts energy");
        assert!(e >= last, "energy went down: {last} -> {e}");
        last = e;
    }
    // A clear day gives 5 kW * 12 h * 2/pi; clouds take up to 20 %.
    let clear = 5000.0 * 12.0 * 2.0 / std::f64::consts::PI;
    assert!((0.8 * clear..=clear).contains(&last), "{last} vs {clear}");
}

#[tokio::test]
async fn pv_energy_respects_the_limit_in_force() {
    let (clock, dynamic) = clock_at(DAY + 11 * HOUR);
    let mut pv = pv(dynamic);
    pv.apply(&Command::LimitPower {
        min_w: Some(-1000.0),
        max_w: None,
    })
    .await
    .expect("limit accepted");
    clock.advance(hours(2));
    approx(read(&mut pv).await.energy_wh.unwrap_or(0.0), 2000.0, 1e-6);
}

#[tokio::test]
async fn pv_follows_local_time() {
    let mut config = SimConfig::new(SimModel::Pv);
    config.utc_offset_min = Some(-6 * 60);
    let (_clock, dynamic) = clock_at(DAY + 12 * HOUR);
    // Noon UTC is 06:00 local: sunrise, nothing yet.
    let mut pv = PvInverter::new("pv1", &config, dynamic);
    assert_eq!(read(&mut pv).await.power_w, 0.0);
}

#[tokio::test]
async fn a_midday_offset_makes_the_pv_produce_at_any_hour() {
    for at in [
        0,
        3 * HOUR + 17 * 60,
        12 * HOUR,
        18 * HOUR,
        23 * HOUR + 59 * 60,
    ] {
        let (clock, dynamic) = clock_at(DAY + at);
        let mut config = SimConfig::new(SimModel::Pv);
        let offset = utc_offset_for_midday_at(&config, clock.now());
        config.utc_offset_min = Some(offset);
        assert!(
            config.validate().is_empty(),
            "{offset}: {:?}",
            config.validate()
        );
        let mut pv = PvInverter::new("pv1", &config, dynamic);
        // At the top of the curve: 5 kW rated, clouds take at most 20 %.
        let now = read(&mut pv).await.power_w;
        assert!((-5000.0..=-4000.0).contains(&now), "{at} s: {now} W");
        // The curve itself is unchanged: six hours on, the sun sets.
        clock.advance(hours(6));
        assert_eq!(read(&mut pv).await.power_w, 0.0, "{at} s + 6 h");
    }
    // The midday of a custom day is halfway between its sunrise and sunset.
    let mut config = SimConfig::new(SimModel::Pv);
    (config.sunrise_h, config.sunset_h) = (Some(8.0), Some(16.0));
    let (clock, _) = clock_at(DAY + 15 * HOUR);
    assert_eq!(utc_offset_for_midday_at(&config, clock.now()), -180);
}

// ---- EV ----

fn ev(config: &SimConfig, clock: Arc<dyn Clock>) -> EvCharger {
    EvCharger::new("ev1", config, clock)
}

#[tokio::test]
async fn ev_charges_at_max_by_default() {
    let (_clock, dynamic) = clock_at(DAY);
    let mut ev = ev(&SimConfig::new(SimModel::Ev), dynamic);
    let r = read(&mut ev).await;
    approx(r.power_w, 3.0 * 230.0 * 16.0, 1e-9);
    assert_eq!(r.active, None);
}

#[tokio::test]
async fn ev_refuses_below_six_amps_and_keeps_its_setting() {
    let (_clock, dynamic) = clock_at(DAY);
    let mut ev = ev(&SimConfig::new(SimModel::Ev), dynamic);
    let why = refused(
        ev.apply(&Command::SetCurrent {
            amps: 3.0,
            phases: 3,
        })
        .await,
    );
    assert!(why.contains("6 A"), "{why}");
    approx(read(&mut ev).await.power_w, 11_040.0, 1e-9);
}

#[tokio::test]
async fn ev_refuses_out_of_range_settings() {
    let (_clock, dynamic) = clock_at(DAY);
    let mut one_phase = SimConfig::new(SimModel::Ev);
    one_phase.phases = Some(1);
    let mut ev = ev(&one_phase, dynamic);
    refused(
        ev.apply(&Command::SetCurrent {
            amps: 10.0,
            phases: 3,
        })
        .await,
    );
    refused(
        ev.apply(&Command::SetCurrent {
            amps: 20.0,
            phases: 1,
        })
        .await,
    );
    refused(
        ev.apply(&Command::SetCurrent {
            amps: 10.0,
            phases: 2,
        })
        .await,
    );
    refused(ev.apply(&Command::SetPower { watts: 2000.0 }).await);
    refused(
        ev.apply(&Command::SetMode {
            mode: "6A-3p".into(),
        })
        .await,
    );
}

#[tokio::test]
async fn ev_obeys_ten_amps_three_phases_and_off() {
    let (clock, dynamic) = clock_at(DAY);
    let mut ev = ev(&SimConfig::new(SimModel::Ev), dynamic);
    let ten = Command::SetCurrent {
        amps: 10.0,
        phases: 3,
    };
    ev.apply(&ten).await.expect("10 A accepted");
    let r = read(&mut ev).await;
    approx(r.power_w, 6900.0, 1e-9);
    assert_eq!(r.phase_power_w, Some([2300.0; 3]));
    assert_eq!(r.active, Some(ten));
    clock.advance(hours(1));
    approx(read(&mut ev).await.energy_wh.unwrap_or(0.0), 6900.0, 1e-6);
    ev.apply(&Command::SetCurrent {
        amps: 0.0,
        phases: 3,
    })
    .await
    .expect("off accepted");
    assert_eq!(read(&mut ev).await.power_w, 0.0);
}

#[tokio::test]
async fn ev_draws_nothing_without_a_car() {
    let (clock, dynamic) = clock_at(DAY);
    let mut config = SimConfig::new(SimModel::Ev);
    config.plugged = Some(false);
    let mut ev = ev(&config, dynamic);
    assert_eq!(read(&mut ev).await.power_w, 0.0);
    clock.advance(hours(1));
    ev.set_plugged(true);
    clock.advance(hours(1));
    let r = read(&mut ev).await;
    approx(r.power_w, 11_040.0, 1e-9);
    // Only the plugged hour counts.
    approx(r.energy_wh.unwrap_or(0.0), 11_040.0, 1e-6);
}

#[tokio::test]
async fn ev_follows_its_plug_schedule() {
    let (clock, dynamic) = clock_at(DAY + 12 * HOUR);
    let mut config = SimConfig::new(SimModel::Ev);
    config.plugged_hours = Some(vec![[18.0, 7.0]]);
    let mut ev = ev(&config, dynamic);
    assert_eq!(read(&mut ev).await.power_w, 0.0, "noon: car away");
    clock.advance(hours(8));
    assert!(read(&mut ev).await.power_w > 0.0, "20:00: car home");
    clock.advance(hours(10));
    assert!(read(&mut ev).await.power_w > 0.0, "06:00: still home");
    clock.advance(hours(2));
    assert_eq!(read(&mut ev).await.power_w, 0.0, "08:00: gone");
}

#[tokio::test]
async fn ev_power_limit_picks_the_largest_step_that_fits() {
    let (_clock, dynamic) = clock_at(DAY);
    let mut ev = ev(&SimConfig::new(SimModel::Ev), dynamic);
    for (max_w, expected) in [
        (4000.0, 3680.0),
        (5000.0, 4140.0),
        (7000.0, 6900.0),
        (1000.0, 0.0),
        (50_000.0, 11_040.0),
    ] {
        let limit = Command::LimitPower {
            min_w: None,
            max_w: Some(max_w),
        };
        ev.apply(&limit).await.expect("limit accepted");
        let r = read(&mut ev).await;
        approx(r.power_w, expected, 1e-9);
        assert_eq!(r.active, Some(limit));
    }
    ev.apply(&Command::Release).await.expect("release accepted");
    approx(read(&mut ev).await.power_w, 11_040.0, 1e-9);
}

#[tokio::test]
async fn ev_offers_current_steps_as_modes() {
    let (_clock, dynamic) = clock_at(DAY);
    let mut ev = ev(&SimConfig::new(SimModel::Ev), dynamic);
    let info = ev.info();
    assert_eq!(info.kind, DeviceKind::EvCharger);
    assert!(info.three_phase);
    assert!(info.control.contains(&ControlCapability::PowerEnvelope {
        min_w: 0.0,
        max_w: 11_040.0
    }));
    let modes = info
        .control
        .iter()
        .find_map(|c| match c {
            ControlCapability::OperationModes { modes, .. } => Some(modes.clone()),
            _ => None,
        })
        .expect("operation modes offered");
    let names: Vec<&str> = modes.iter().map(|m| m.name.as_str()).collect();
    for expected in ["off", "6A-1p", "6A-3p", "10A-3p", "16A-1p", "16A-3p"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let defaults: Vec<&str> = modes
        .iter()
        .filter(|m| m.is_default)
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(defaults, ["16A-3p"]);
    // Every mode's own command puts the charger at the mode's power.
    for mode in &modes {
        ev.apply(&mode.command)
            .await
            .expect("mode command accepted");
        approx(read(&mut ev).await.power_w, mode.max_w, 1e-9);
        ev.apply(&Command::SetMode {
            mode: mode.name.clone(),
        })
        .await
        .expect("mode name accepted");
        approx(read(&mut ev).await.power_w, mode.max_w, 1e-9);
    }
}

// ---- battery ----

fn battery(clock: Arc<dyn Clock>) -> Battery {
    Battery::new("bat1", &SimConfig::new(SimModel::Battery), clock)
}

#[tokio::test]
async fn battery_soc_rises_by_the_integrated_energy() {
    let (clock, dynamic) = clock_at(DAY);
    let mut bat = battery(dynamic);
    assert_eq!(read(&mut bat).await.soc, Some(50.0));
    bat.apply(&Command::SetPower { watts: 2000.0 })
        .await
        .expect("setpoint accepted");
    clock.advance(Duration::from_secs(1800));
    let r = read(&mut bat).await;
    // 1 kWh into 10 kWh is 10 %.
    approx(r.soc.unwrap_or(0.0), 60.0, 1e-9);
    approx(r.energy_wh.unwrap_or(0.0), 1000.0, 1e-9);
    assert_eq!(r.power_w, 2000.0);
}

#[tokio::test]
async fn battery_stops_at_max_soc() {
    let (clock, dynamic) = clock_at(DAY);
    let mut bat = battery(dynamic);
    bat.apply(&Command::SetPower { watts: 5000.0 })
        .await
        .expect("setpoint accepted");
    clock.advance(hours(2));
    let r = read(&mut bat).await;
    assert_eq!(r.soc, Some(95.0));
    assert_eq!(r.power_w, 0.0);
    // Only the 45 % that fitted was moved.
    approx(r.energy_wh.unwrap_or(0.0), 4500.0, 1e-9);
    // Discharging from the top works again.
    bat.apply(&Command::SetPower { watts: -1000.0 })
        .await
        .expect("setpoint accepted");
    clock.advance(hours(1));
    let r = read(&mut bat).await;
    approx(r.soc.unwrap_or(0.0), 85.0, 1e-9);
    assert_eq!(r.power_w, -1000.0);
}

#[tokio::test]
async fn battery_stops_at_min_soc_and_clamps_setpoints() {
    let (clock, dynamic) = clock_at(DAY);
    let mut bat = battery(dynamic);
    bat.apply(&Command::SetPower { watts: -9000.0 })
        .await
        .expect("setpoint accepted");
    let r = read(&mut bat).await;
    assert_eq!(r.power_w, -5000.0);
    assert_eq!(r.active, Some(Command::SetPower { watts: -5000.0 }));
    clock.advance(hours(3));
    let r = read(&mut bat).await;
    assert_eq!(r.soc, Some(5.0));
    assert_eq!(r.power_w, 0.0);
    bat.apply(&Command::Release)
        .await
        .expect("release accepted");
    let r = read(&mut bat).await;
    assert_eq!((r.power_w, r.active), (0.0, None));
    refused(bat.apply(&Command::SetPower { watts: f64::NAN }).await);
    refused(
        bat.apply(&Command::SetMode {
            mode: "charge".into(),
        })
        .await,
    );
}

#[tokio::test]
async fn battery_describes_its_storage() {
    let (_clock, dynamic) = clock_at(DAY);
    let bat = battery(dynamic);
    assert!(bat.info().control.contains(&ControlCapability::Storage {
        capacity_wh: 10_000.0,
        max_charge_w: 5000.0,
        max_discharge_w: 5000.0,
        min_soc: 5.0,
        max_soc: 95.0,
    }));
}

// ---- heat pump ----

fn heat_pump(clock: Arc<dyn Clock>) -> HeatPump {
    HeatPump::new("hp1", &SimConfig::new(SimModel::HeatPump), clock)
}

fn set_mode(mode: &str) -> Command {
    Command::SetMode { mode: mode.into() }
}

#[tokio::test]
async fn heat_pump_refuses_changes_inside_min_on_time_and_accepts_after() {
    let (clock, dynamic) = clock_at(DAY);
    let mut hp = heat_pump(dynamic);
    // The state found at start has run long enough.
    hp.apply(&set_mode("forced"))
        .await
        .expect("forced accepted");
    approx(read(&mut hp).await.power_w, 3500.0, 3500.0 * 0.05);
    clock.advance(Duration::from_secs(100));
    let why = refused(hp.apply(&set_mode("normal")).await);
    assert!(why.contains("500 s"), "{why}");
    let r = read(&mut hp).await;
    assert_eq!(r.active, Some(set_mode("forced")));
    clock.advance(Duration::from_secs(500));
    hp.apply(&set_mode("recommended"))
        .await
        .expect("accepted after min on time");
    approx(read(&mut hp).await.power_w, 2500.0, 2500.0 * 0.05);
}

#[tokio::test]
async fn heat_pump_keeps_blocked_for_min_off_time() {
    let (clock, dynamic) = clock_at(DAY);
    let mut hp = heat_pump(dynamic);
    hp.apply(&set_mode("blocked"))
        .await
        .expect("blocked accepted");
    assert_eq!(read(&mut hp).await.power_w, 0.0);
    clock.advance(Duration::from_secs(200));
    let why = refused(hp.apply(&set_mode("forced")).await);
    assert!(why.contains("100 s"), "{why}");
    // Asking for the state it is already in is no change, so never refused.
    hp.apply(&set_mode("blocked")).await.expect("same state");
    clock.advance(Duration::from_secs(100));
    hp.apply(&set_mode("forced"))
        .await
        .expect("accepted after min off");
}

#[tokio::test]
async fn heat_pump_release_always_works() {
    let (clock, dynamic) = clock_at(DAY);
    let mut hp = heat_pump(dynamic);
    hp.apply(&set_mode("blocked"))
        .await
        .expect("blocked accepted");
    clock.advance(Duration::from_secs(1));
    hp.apply(&Command::Release)
        .await
        .expect("release bypasses timers");
    let r = read(&mut hp).await;
    approx(r.power_w, 1500.0, 1500.0 * 0.05);
    assert_eq!(r.active, None);
    refused(hp.apply(&set_mode("turbo")).await);
    refused(hp.apply(&Command::SetPower { watts: 1.0 }).await);
}

#[tokio::test]
async fn heat_pump_offers_the_four_sg_ready_states() {
    let (_clock, dynamic) = clock_at(DAY);
    let hp = heat_pump(dynamic);
    let info = hp.info();
    let Some(ControlCapability::OperationModes {
        modes,
        min_on_s,
        min_off_s,
    }) = info.control.get(1)
    else {
        panic!("no operation modes in {:?}", info.control);
    };
    assert_eq!((*min_on_s, *min_off_s), (600, 300));
    let names: Vec<&str> = modes.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["blocked", "normal", "recommended", "forced"]);
    for m in modes {
        assert_eq!(m.command, set_mode(&m.name));
        assert_eq!(m.is_default, m.name == "normal");
    }
}

// ---- meter ----

#[tokio::test]
async fn meter_shows_positive_power_with_an_evening_peak() {
    let (clock, dynamic) = clock_at(DAY);
    let mut meter = Meter::new("meter1", &SimConfig::new(SimModel::Meter), dynamic);
    let mut last_energy = 0.0;
    let mut by_hour = Vec::new();
    for _ in 0..96 {
        clock.advance(Duration::from_secs(900));
        let r = read(&mut meter).await;
        assert!(r.power_w > 0.0, "{}", r.power_w);
        let e = r.energy_wh.unwrap_or(-1.0);
        assert!(e >= last_energy, "{last_energy} -> {e}");
        last_energy = e;
        by_hour.push(r.power_w);
    }
    // Index 75 is 19:00, index 11 is 03:00.
    assert!(by_hour[75] > 2.0 * by_hour[11], "{by_hour:?}");
    assert!((5_000.0..=15_000.0).contains(&last_energy), "{last_energy}");
    refused(meter.apply(&set_mode("on")).await);
    meter
        .apply(&Command::Release)
        .await
        .expect("release is harmless");
}

// ---- clock, determinism, build ----

#[tokio::test]
async fn same_id_same_numbers_other_id_other_numbers() {
    let config = SimConfig::new(SimModel::Meter);
    let (_clock, dynamic) = clock_at(DAY + 10 * HOUR);
    let a = read(&mut *build("m", &config, dynamic.clone()))
        .await
        .power_w;
    let b = read(&mut *build("m", &config, dynamic.clone()))
        .await
        .power_w;
    let c = read(&mut *build("other", &config, dynamic)).await.power_w;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test]
async fn a_clock_stepping_back_never_lowers_the_counters() {
    let (clock, dynamic) = clock_at(DAY + 12 * HOUR);
    let mut meter = build("m", &SimConfig::new(SimModel::Meter), dynamic);
    clock.advance(hours(1));
    let before = read(&mut *meter).await.energy_wh.unwrap_or(0.0);
    clock.set(std::time::UNIX_EPOCH + Duration::from_secs(DAY));
    let after = read(&mut *meter).await.energy_wh.unwrap_or(0.0);
    assert_eq!(before, after);
}

#[tokio::test]
async fn build_makes_the_model_asked_for() {
    let (_clock, dynamic) = clock_at(DAY);
    for (model, kind, label) in [
        (
            SimModel::Pv,
            DeviceKind::PvInverter,
            "Simulated PV inverter",
        ),
        (SimModel::Ev, DeviceKind::EvCharger, "Simulated EV charger"),
        (
            SimModel::Battery,
            DeviceKind::Battery,
            "Simulated home battery",
        ),
        (
            SimModel::HeatPump,
            DeviceKind::HeatPump,
            "Simulated SG-Ready heat pump",
        ),
        (
            SimModel::Meter,
            DeviceKind::Meter,
            "Simulated household meter",
        ),
    ] {
        let device = build("dev7", &SimConfig::new(model), dynamic.clone());
        let info = device.info();
        assert_eq!(info.kind, kind);
        assert_eq!(info.model.as_deref(), Some(label));
        assert_eq!(info.manufacturer.as_deref(), Some("s2gw"));
        assert_eq!(info.serial.as_deref(), Some("SIM-dev7"));
        assert_eq!(
            info.control.first(),
            Some(&ControlCapability::NotControllable)
        );
    }
}

#[test]
fn tokio_clock_starts_where_told() {
    let start = std::time::UNIX_EPOCH + Duration::from_secs(DAY);
    let clock = crate::TokioClock::starting_at(start);
    assert!(clock.now() >= start);
}

// ---- config ----

fn parse(json: &str) -> Result<SimConfig, serde_json::Error> {
    serde_json::from_str(json)
}

fn keys(config: &SimConfig) -> Vec<String> {
    config.validate().into_iter().map(|(key, _)| key).collect()
}

#[test]
fn config_parses_and_rejects_unknown_keys() {
    let c = parse(r#"{"model": "heat_pump", "min_on_s": 900}"#).expect("valid");
    assert_eq!((c.model, c.min_on_s), (SimModel::HeatPump, Some(900)));
    assert!(parse(r#"{"model": "heat_pump", "min_on": 900}"#).is_err());
    assert!(parse(r#"{"model": "heat-pump"}"#).is_err());
    assert!(parse(r#"{"rated_w": 5000}"#).is_err());
    // Config files write whole numbers for float parameters.
    let b = parse(r#"{"model": "battery", "capacity_wh": 10000}"#).expect("valid");
    assert_eq!(b.capacity_wh, Some(10_000.0));
}

#[test]
fn default_configs_are_valid() {
    for model in [
        SimModel::Pv,
        SimModel::Ev,
        SimModel::Battery,
        SimModel::HeatPump,
        SimModel::Meter,
    ] {
        assert_eq!(SimConfig::new(model).validate(), Vec::new(), "{model:?}");
    }
}

#[test]
fn validate_reports_nonsense_by_key() {
    let mut bat = SimConfig::new(SimModel::Battery);
    bat.capacity_wh = Some(-10.0);
    bat.min_soc = Some(90.0);
    bat.max_soc = Some(80.0);
    assert_eq!(keys(&bat), ["capacity_wh", "min_soc"]);

    let mut ev = SimConfig::new(SimModel::Ev);
    ev.max_current_a = Some(5.0);
    ev.phases = Some(2);
    ev.plugged_hours = Some(vec![[18.0, 30.0]]);
    assert_eq!(keys(&ev), ["max_current_a", "phases", "plugged_hours[0]"]);

    let mut pv = SimConfig::new(SimModel::Pv);
    pv.sunrise_h = Some(19.0);
    pv.cloudiness = Some(1.5);
    assert_eq!(keys(&pv), ["cloudiness", "sunset_h"]);
}

#[test]
fn validate_reports_parameters_of_another_model() {
    let mut pv = SimConfig::new(SimModel::Pv);
    pv.capacity_wh = Some(10_000.0);
    pv.utc_offset_min = Some(60);
    let problems = pv.validate();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].0, "capacity_wh");
    assert!(problems[0].1.contains("battery"), "{}", problems[0].1);
}

#[tokio::test]
async fn build_falls_back_on_nonsense() {
    let (_clock, dynamic) = clock_at(DAY);
    let mut config = SimConfig::new(SimModel::Battery);
    config.capacity_wh = Some(f64::NAN);
    config.min_soc = Some(90.0);
    config.max_soc = Some(10.0);
    let mut bat = build("b", &config, dynamic);
    let r = read(&mut *bat).await;
    assert_eq!(r.soc, Some(50.0));
}

// ---- Dishwasher ----

fn dishwasher(clock: Arc<dyn Clock>) -> crate::Dishwasher {
    crate::Dishwasher::new("dw1", &SimConfig::new(SimModel::Dishwasher), clock)
}

fn progress(readings: &Readings) -> s2gw_core::device::TaskProgress {
    readings
        .task
        .clone()
        .expect("a dishwasher always has a task")
        .progress
}

#[tokio::test]
async fn a_dishwasher_left_alone_starts_by_itself_and_is_done_in_time() {
    use s2gw_core::device::TaskProgress;
    let (clock, dynamic) = clock_at(DAY);
    let mut dw = dishwasher(dynamic);
    let task = read(&mut dw).await.task.unwrap();
    assert_eq!(task.progress, TaskProgress::Waiting);
    // Eco takes 130 min: it starts 130 min before the end of the 8 h window.
    let own_start = task.own_start.duration_since(task.earliest_start).unwrap();
    assert_eq!(own_start, Duration::from_secs(8 * HOUR - 130 * 60));
    clock.advance(own_start + Duration::from_secs(60));
    assert!(
        matches!(progress(&read(&mut dw).await), TaskProgress::Running { programme, .. } if programme == "eco")
    );
    clock.advance(Duration::from_secs(130 * 60));
    assert!(matches!(
        progress(&read(&mut dw).await),
        TaskProgress::Finished { .. }
    ));
    // Loaded again after 30 minutes: a new task.
    clock.advance(Duration::from_secs(31 * 60));
    let next = read(&mut dw).await.task.unwrap();
    assert_eq!((next.task_id, next.progress), (2, TaskProgress::Waiting));
}

#[tokio::test]
async fn a_dishwasher_runs_the_programme_it_is_told_and_pauses_only_eco() {
    use s2gw_core::device::TaskProgress;
    let (clock, dynamic) = clock_at(DAY);
    let mut dw = dishwasher(dynamic);
    let quick = Command::StartProgramme {
        programme: "quick".into(),
    };
    dw.apply(&quick).await.unwrap();
    approx(read(&mut dw).await.power_w, 2100.0, 0.1);
    refused(dw.apply(&Command::Pause).await);
    refused(dw.apply(&quick).await);
    // A new task with Eco: paused, the machine idles; released, it carries on.
    clock.advance(Duration::from_secs(61 * 60));
    read(&mut dw).await;
    dw.apply(&Command::StartProgramme {
        programme: "eco".into(),
    })
    .await
    .unwrap();
    clock.advance(Duration::from_secs(600));
    dw.apply(&Command::Pause).await.unwrap();
    let paused = read(&mut dw).await;
    approx(paused.power_w, 5.0, 0.1);
    assert!(
        matches!(progress(&paused), TaskProgress::Paused { elapsed_s, .. } if (elapsed_s - 600.0).abs() < 1.0)
    );
    dw.apply(&Command::Release).await.unwrap();
    assert!(matches!(
        progress(&read(&mut dw).await),
        TaskProgress::Running { .. }
    ));
}

// ---- Hybrid heat pump ----

fn hybrid(clock: Arc<dyn Clock>) -> crate::HybridHeatPump {
    crate::HybridHeatPump::new("hy1", &SimConfig::new(SimModel::HybridHeatPump), clock)
}

fn actuator_mode(readings: &Readings, actuator: &str) -> String {
    readings
        .demand
        .as_ref()
        .and_then(|d| d.actuators.iter().find(|a| a.actuator == actuator))
        .map(|a| a.mode.clone())
        .expect("both actuators report")
}

#[tokio::test]
async fn a_hybrid_heat_pump_meets_the_demand_with_the_heat_pump_first() {
    let (_clock, dynamic) = clock_at(DAY + 12 * HOUR);
    let mut hy = hybrid(dynamic);
    let readings = read(&mut hy).await;
    let demand = readings.demand.clone().unwrap();
    assert!(
        demand.demand > 1500.0 && demand.demand < 6000.0,
        "{}",
        demand.demand
    );
    assert_eq!(demand.forecast.len(), 6);
    assert_eq!(actuator_mode(&readings, "heat_pump"), "on");
    assert_eq!(actuator_mode(&readings, "boiler"), "off");
    // The heat pump's electricity is its heat over the COP of 3.5.
    approx(readings.power_w, demand.demand / 3.5, 50.0);
}

#[tokio::test]
async fn a_hybrid_heat_pump_lets_the_boiler_take_over_and_protects_its_compressor() {
    let (clock, dynamic) = clock_at(DAY + 12 * HOUR);
    let mut hy = hybrid(dynamic);
    read(&mut hy).await;
    let boiler_on = Command::SetActuator {
        actuator: "boiler".into(),
        mode: "on".into(),
        factor: 0.5,
    };
    hy.apply(&boiler_on).await.unwrap();
    let readings = read(&mut hy).await;
    assert_eq!(
        actuator_mode(&readings, "heat_pump"),
        "off",
        "the boiler covers it all"
    );
    approx(readings.power_w, 40.0, 0.1);
    let heat_pump_on = Command::SetActuator {
        actuator: "heat_pump".into(),
        mode: "on".into(),
        factor: 1.0,
    };
    assert!(refused(hy.apply(&heat_pump_on).await).contains("compressor"));
    clock.advance(Duration::from_secs(301));
    hy.apply(&heat_pump_on).await.unwrap();
    hy.apply(&Command::Release).await.unwrap();
    assert_eq!(actuator_mode(&read(&mut hy).await, "boiler"), "off");
}
