//! End-to-end: the s2gw daemon as a process, one simulated device of each kind, against a
//! test CEM built on s2-kit's `CemSession` over real loopback WebSockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    CemConn, Daemon, Ended, GUARD, TestCem, assert_emitted_valid, ddbc_instruction,
    frbc_instruction, free_port, ids_in, is_uuid, ombc_instruction, pebc_instruction, ppbc_pause,
    ppbc_resume, ppbc_schedule,
};
use s2_kit::message::{Message, MessageKind};
use s2_kit::session::CemEvent;
use s2_kit::types::common::{ControlType, ReceptionStatusValues};
use s2_kit::types::{Duration as S2Duration, Id, ProtocolVersion, Timestamp, frbc, ombc, pebc};
use serde_json::Value;

const NC: ControlType = ControlType::NotControllable;
const PEBC: ControlType = ControlType::PowerEnvelopeBasedControl;
const OMBC: ControlType = ControlType::OperationModeBasedControl;
const FRBC: ControlType = ControlType::FillRateBasedControl;
const PPBC: ControlType = ControlType::PowerProfileBasedControl;
const DDBC: ControlType = ControlType::DemandDrivenBasedControl;

/// How long a control-type description or a measurement may take (poll and measurement
/// intervals are 1 s in these configs).
const SOON: Duration = Duration::from_secs(15);

/// Every device the suite knows, as `[[device]]` tables.
fn device_table(id: &str) -> String {
    let sim = match id {
        "pv" => {
            // Put local noon at "now", so the panels produce about their rated power
            // whatever time the test runs; no clouds, so the numbers are exact.
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let utc_h = (secs % 86_400.0) / 3600.0;
            let offset_min = ((12.0 - utc_h) * 60.0).round() as i64;
            format!(
                "profile = \"sim-pv\"\n[device.sim]\nmodel = \"pv\"\nrated_w = 6000\ncloudiness = 0\n\
                 sunrise_h = 6\nsunset_h = 18\nutc_offset_min = {offset_min}\n"
            )
        }
        "ev" => "profile = \"sim-ev\"\n[device.sim]\nmodel = \"ev\"\nplugged = true\n".to_string(),
        "battery" => {
            "profile = \"sim-battery\"\n[device.sim]\nmodel = \"battery\"\ninitial_soc = 50\n"
                .to_string()
        }
        "heat-pump" => {
            "profile = \"sim-heat-pump\"\n[device.sim]\nmodel = \"heat_pump\"\n".to_string()
        }
        "meter" => "profile = \"sim-meter\"\n[device.sim]\nmodel = \"meter\"\n".to_string(),
        "dishwasher" => {
            "profile = \"sim-dishwasher\"\n[device.sim]\nmodel = \"dishwasher\"\n".to_string()
        }
        "hybrid-heat-pump" => {
            "profile = \"sim-hybrid-heat-pump\"\n[device.sim]\nmodel = \"hybrid_heat_pump\"\n"
                .to_string()
        }
        other => panic!("unknown test device {other}"),
    };
    format!(
        "[[device]]\nid = \"{id}\"\ncem = \"test\"\npoll_interval_s = 1\nmeasurement_interval_s = 1\n{sim}\n"
    )
}

/// A daemon config: the given devices, all on one ws-client link to `cem`.
fn config(cem: &TestCem, devices: &[&str]) -> String {
    let mut text = format!(
        "[gateway]\nname = \"s2gw-e2e\"\nstate_dir = \"@STATE_DIR@\"\nlog_level = \"info\"\n\n\
         [cem.test]\ntransport = \"ws-client\"\nurl = \"{}\"\n\n",
        cem.url()
    );
    for id in devices {
        text.push_str(&device_table(id));
    }
    text
}

const ALL: [&str; 7] = [
    "pv",
    "ev",
    "battery",
    "heat-pump",
    "meter",
    "dishwasher",
    "hybrid-heat-pump",
];

/// The control types each sim profile offers, in the profile's order of preference.
fn offered(device: &str) -> Vec<ControlType> {
    match device {
        "pv" => vec![PEBC, NC],
        "ev" => vec![OMBC, PEBC, NC],
        "battery" => vec![FRBC, NC],
        "heat-pump" => vec![OMBC, NC],
        "meter" => vec![NC],
        "dishwasher" => vec![PPBC, NC],
        "hybrid-heat-pump" => vec![DDBC, NC],
        other => panic!("unknown device {other}"),
    }
}

/// Connections by device id (the RM's name), each past the handshake and its details.
async fn connect_all(
    cem: &mut TestCem,
    n: usize,
    expect_version: &ProtocolVersion,
) -> BTreeMap<String, CemConn> {
    let conns = cem.conns(n, GUARD).await;
    let mut by_device = BTreeMap::new();
    for (path_id, mut conn) in conns {
        let (version, details) = conn.handshake().await;
        assert_eq!(
            &version, expect_version,
            "the session must follow the CEM's choice"
        );
        assert_eq!(
            details.resource_id.as_str(),
            path_id,
            "the resource id in the URL and in ResourceManagerDetails differ"
        );
        assert!(
            is_uuid(&path_id),
            "resource id {path_id} is not a UUID (s2-python peers require one)"
        );
        let name = details
            .name
            .clone()
            .expect("ResourceManagerDetails without a name");
        let got: BTreeSet<String> = details
            .available_control_types
            .iter()
            .map(|c| format!("{c:?}"))
            .collect();
        let want: BTreeSet<String> = offered(&name).iter().map(|c| format!("{c:?}")).collect();
        assert_eq!(got, want, "control types offered by {name}");
        by_device.insert(name, conn);
    }
    by_device
}

/// The gateway's own Handshake offered both versions, most preferred first.
fn assert_handshake_offers_both(conn: &CemConn) {
    let frames = conn.raw_frames();
    let handshake: Value = frames
        .iter()
        .map(|t| serde_json::from_str::<Value>(t).unwrap())
        .find(|v| v["message_type"] == "Handshake")
        .expect("the gateway sent no Handshake");
    assert_eq!(handshake["role"], "RM");
    assert_eq!(
        handshake["supported_protocol_versions"],
        serde_json::json!(["1.0.0", "0.0.2-beta"]),
        "the gateway's Handshake must offer both versions"
    );
}

/// Every id the gateway put in a message (minted or echoed) is a UUID.
fn assert_ids_are_uuids(device: &str, conn: &CemConn) {
    let mut bad = Vec::new();
    let mut checked = 0;
    for text in conn.raw_frames() {
        let value: Value = serde_json::from_str(&text).unwrap();
        for (key, id) in ids_in(&value) {
            checked += 1;
            if !is_uuid(&id) {
                bad.push(format!("{key}={id} in {}", value["message_type"]));
            }
        }
    }
    assert!(checked > 0, "{device}: no ids seen at all");
    assert!(bad.is_empty(), "{device}: ids that are not UUIDs: {bad:#?}");
}

/// The status types of one instruction, in wire order, from the raw frames.
fn statuses_of(conn: &CemConn, instruction: Id) -> Vec<String> {
    conn.raw_frames()
        .iter()
        .map(|t| serde_json::from_str::<Value>(t).unwrap())
        .filter(|v| {
            v["message_type"] == "InstructionStatusUpdate"
                && v["instruction_id"] == instruction.as_str()
        })
        .map(|v| v["status_type"].as_str().unwrap().to_string())
        .collect()
}

/// Wait for an InstructionStatusUpdate of `status` for `instruction`.
async fn await_status(conn: &mut CemConn, instruction: Id, status: &str) {
    let id = instruction.as_str().to_string();
    conn.frames()
        .wait_for(
            &format!("InstructionStatusUpdate {status} for {id}"),
            |v| {
                v["message_type"] == "InstructionStatusUpdate"
                    && v["instruction_id"] == *id
                    && v["status_type"] == status
            },
            SOON,
        )
        .await;
}

/// Instruct, and see it ACCEPTED → STARTED → SUCCEEDED, in that order.
async fn instruct_ok(conn: &mut CemConn, message: impl Into<Message>) -> Id {
    let message = message.into();
    let id = message.instruction_id().expect("not an instruction");
    conn.instruct(message).await;
    await_status(conn, id, "SUCCEEDED").await;
    assert_eq!(
        statuses_of(conn, id),
        ["ACCEPTED", "STARTED", "SUCCEEDED"],
        "the status sequence of instruction {id}"
    );
    id
}

/// Wait for a PPBC.PowerProfileStatus whose one container is in `state` (the appliance
/// reports each change once it read it back).
async fn container_state(conn: &mut CemConn, state: &str) {
    let wanted = format!("\"{state}\"");
    conn.events()
        .wait_for(
            &format!("a PPBC.PowerProfileStatus saying {state}"),
            |e| match e {
                CemEvent::Status {
                    message: Message::PpbcPowerProfileStatus(s),
                    ..
                } => s
                    .sequence_container_status
                    .iter()
                    .all(|c| serde_json::to_string(&c.status).is_ok_and(|json| json == wanted)),
                _ => false,
            },
            SOON,
        )
        .await;
}

fn near(value: f64, target: f64, tolerance: f64) -> bool {
    (value - target).abs() <= tolerance
}

fn pebc_constraints(message: Message) -> pebc::PowerConstraints {
    match message {
        Message::PebcPowerConstraints(c) => *c,
        other => panic!("expected PEBC.PowerConstraints, got {:?}", other.kind()),
    }
}

fn ombc_system(message: Message) -> ombc::SystemDescription {
    match message {
        Message::OmbcSystemDescription(s) => *s,
        other => panic!("expected OMBC.SystemDescription, got {:?}", other.kind()),
    }
}

fn frbc_system(message: Message) -> frbc::SystemDescription {
    match message {
        Message::FrbcSystemDescription(s) => *s,
        other => panic!("expected FRBC.SystemDescription, got {:?}", other.kind()),
    }
}

/// NOT_CONTROLABLE: selected, acknowledged, and a PowerMeasurement follows.
async fn select_not_controllable(conn: &mut CemConn) -> f64 {
    conn.select_ready(NC).await;
    conn.events().clear();
    conn.wait_power("a PowerMeasurement after NOT_CONTROLABLE", |_| true, SOON)
        .await
}

/// The whole conversation with every device, for one protocol version: (a) to (e).
async fn every_device_every_control_type(version: ProtocolVersion) {
    let mut cem = TestCem::start(std::slice::from_ref(&version)).await;
    let mut daemon = Daemon::start(&config(&cem, &ALL));
    // (a) A session per device, the CEM's version, details with UUIDs.
    let mut conns = connect_all(&mut cem, ALL.len(), &version).await;
    daemon.assert_running();
    let names: BTreeSet<&str> = conns.keys().map(String::as_str).collect();
    assert_eq!(names, ALL.into_iter().collect(), "one session per device");
    for conn in conns.values() {
        assert_handshake_offers_both(conn);
    }

    // Ids of messages sent on purpose outside the session, with the status they earn.
    let mut expected_bad: BTreeMap<String, ReceptionStatusValues> = BTreeMap::new();

    // ---- meter: NOT_CONTROLABLE only --------------------------------------------------
    {
        let meter = conns.get_mut("meter").unwrap();
        let w = select_not_controllable(meter).await;
        // The sim's 400 W base load follows the day (×0.6 at night, ×2.0 at the 19:00
        // UTC evening peak) ± 15 %, so the bounds hold at any hour the test runs.
        assert!(
            (80.0..=920.0).contains(&w),
            "the meter's load is 400 W shaped over the day ± noise, got {w}"
        );
    }

    // ---- PV: NOT_CONTROLABLE, then PEBC with a curtailment --------------------------
    {
        let pv = conns.get_mut("pv").unwrap();
        let w = select_not_controllable(pv).await;
        assert!(
            w < -4000.0,
            "the PV at (simulated) noon produces about 6 kW, got {w}"
        );
        pv.select_ready(PEBC).await;
        let constraints = pebc_constraints(
            pv.wait_message(MessageKind::PebcPowerConstraints, SOON)
                .await,
        );
        let ranges: Vec<(String, f64, f64)> = constraints
            .allowed_limit_ranges
            .iter()
            .map(|r| {
                (
                    format!("{:?}", r.limit_type),
                    r.range_boundary.start_of_range,
                    r.range_boundary.end_of_range,
                )
            })
            .collect();
        assert!(
            ranges
                .iter()
                .any(|(t, lo, hi)| t.contains("Lower") && *lo == -6000.0 && *hi == 0.0),
            "PV lower-limit range should be -6000..0 W: {ranges:?}"
        );
        // Curtail production to 1 kW for an hour.
        let limit = pebc_instruction(
            &constraints,
            -1000.0,
            0.0,
            Timestamp::now(),
            S2Duration::from_secs(3600),
        );
        pv.events().clear();
        instruct_ok(pv, limit).await;
        pv.wait_power(
            "the PV curtailed to -1000 W",
            |w| near(w, -1000.0, 20.0),
            SOON,
        )
        .await;

        // An envelope outside the announced ranges: s2-kit's edge refuses it
        // (INVALID_CONTENT, S2-PEBC-006) and it never reaches the device. It goes
        // around the CEM's own session, which would refuse to send it.
        let too_far = pebc_instruction(
            &constraints,
            -7000.0,
            0.0,
            Timestamp::now(),
            S2Duration::from_secs(60),
        );
        let too_far_id = too_far.id;
        let message_id = too_far.message_id.as_str().to_string();
        pv.send_raw(s2_kit::encode(&Message::from(too_far))).await;
        let status = pv.wait_reception(&message_id, SOON).await;
        assert_eq!(
            status.status,
            ReceptionStatusValues::InvalidContent,
            "an envelope outside the allowed ranges: {status:?}"
        );
        assert!(
            status
                .diagnostic_label
                .as_deref()
                .is_some_and(|d| d.contains("S2-PEBC-006")),
            "the diagnostic names the rule: {status:?}"
        );
        expected_bad.insert(message_id, ReceptionStatusValues::InvalidContent);

        // An envelope that was over before it arrived: within the ranges, so it reaches
        // the virtual RM, which cannot carry it out: REJECTED.
        let past = Timestamp::now()
            .checked_sub(S2Duration::from_secs(600))
            .unwrap();
        let expired = pebc_instruction(&constraints, -500.0, 0.0, past, S2Duration::from_secs(60));
        let expired_id = expired.id;
        pv.instruct(expired).await;
        await_status(pv, expired_id, "REJECTED").await;
        assert_eq!(statuses_of(pv, expired_id), ["REJECTED"]);
        assert!(
            statuses_of(pv, too_far_id).is_empty(),
            "a refused message must not be processed"
        );
        // Neither touched the device: still curtailed to 1 kW.
        pv.events().clear();
        pv.wait_power("the PV still at -1000 W", |w| near(w, -1000.0, 20.0), SOON)
            .await;
    }

    // ---- EV: NOT_CONTROLABLE, OMBC (10 A x 3), PEBC (<= 4140 W = 6 A x 3) ------------
    {
        let ev = conns.get_mut("ev").unwrap();
        let w = select_not_controllable(ev).await;
        assert!(
            near(w, 11_040.0, 50.0),
            "the EV charges at 16 A x 3 x 230 V on its own, got {w}"
        );
        ev.select_ready(OMBC).await;
        let system = ombc_system(
            ev.wait_message(MessageKind::OmbcSystemDescription, SOON)
                .await,
        );
        ev.wait_message(MessageKind::OmbcStatus, SOON).await;
        let ten_amps = ombc_instruction(&system, "10 A on 3 phase(s)");
        ev.events().clear();
        instruct_ok(ev, ten_amps).await;
        ev.wait_message(MessageKind::OmbcStatus, SOON).await;
        ev.wait_power("the EV at 10 A x 3", |w| near(w, 6900.0, 50.0), SOON)
            .await;

        ev.select_ready(PEBC).await;
        let constraints = pebc_constraints(
            ev.wait_message(MessageKind::PebcPowerConstraints, SOON)
                .await,
        );
        let limit = pebc_instruction(
            &constraints,
            0.0,
            4140.0,
            Timestamp::now(),
            S2Duration::from_secs(3600),
        );
        ev.events().clear();
        instruct_ok(ev, limit).await;
        ev.wait_power(
            "the EV limited to 6 A x 3 (4140 W)",
            |w| near(w, 4140.0, 40.0),
            SOON,
        )
        .await;
    }

    // ---- battery: FRBC charge at half power, then NOT_CONTROLABLE ---------------------
    {
        let battery = conns.get_mut("battery").unwrap();
        battery.select_ready(FRBC).await;
        let system = frbc_system(
            battery
                .wait_message(MessageKind::FrbcSystemDescription, SOON)
                .await,
        );
        battery
            .wait_message(MessageKind::FrbcActuatorStatus, SOON)
            .await;
        match battery
            .wait_message(MessageKind::FrbcStorageStatus, SOON)
            .await
        {
            Message::FrbcStorageStatus(s) => assert!(
                near(s.present_fill_level, 50.0, 1.0),
                "initial SoC 50 %, got {}",
                s.present_fill_level
            ),
            other => panic!("{:?}", other.kind()),
        }
        let charge = frbc_instruction(&system, "charge", 0.5);
        battery.events().clear();
        instruct_ok(battery, charge).await;
        battery
            .wait_message(MessageKind::FrbcActuatorStatus, SOON)
            .await;
        battery
            .wait_power(
                "the battery charging at 2500 W",
                |w| near(w, 2500.0, 30.0),
                SOON,
            )
            .await;
        select_not_controllable(battery).await;
    }

    // ---- heat pump: OMBC forced, then a move its minimum-on timer blocks ---------------
    {
        let hp = conns.get_mut("heat-pump").unwrap();
        hp.select_ready(OMBC).await;
        let system = ombc_system(
            hp.wait_message(MessageKind::OmbcSystemDescription, SOON)
                .await,
        );
        hp.wait_message(MessageKind::OmbcStatus, SOON).await;
        assert!(
            !system.timers.is_empty(),
            "the heat pump describes its minimum on/off timers"
        );
        let forced = ombc_instruction(&system, "SG-Ready 4: switch-on forced");
        hp.events().clear();
        instruct_ok(hp, forced).await;
        hp.wait_power(
            "the heat pump forced on (3500 W ± 5 %)",
            |w| near(w, 3500.0, 190.0),
            SOON,
        )
        .await;
        let back = ombc_instruction(&system, "SG-Ready 2: normal operation");
        let back_id = back.id;
        hp.instruct(back).await;
        await_status(hp, back_id, "REJECTED").await;
        assert_eq!(statuses_of(hp, back_id), ["REJECTED"]);
        select_not_controllable(hp).await;
    }

    // ---- dishwasher: PPBC, Eco scheduled now, its drying paused and resumed -------------
    {
        let dishwasher = conns.get_mut("dishwasher").unwrap();
        dishwasher.select_ready(PPBC).await;
        let profile = match dishwasher
            .wait_message(MessageKind::PpbcPowerProfileDefinition, SOON)
            .await
        {
            Message::PpbcPowerProfileDefinition(p) => *p,
            other => panic!("{:?}", other.kind()),
        };
        container_state(dishwasher, "NOT_SCHEDULED").await;
        let container = &profile.power_sequence_containers[0];
        assert_eq!(container.power_sequences.len(), 2, "Eco and Quick");
        assert!(
            container.power_sequences[0].is_interruptible,
            "Eco's drying may wait"
        );
        dishwasher.events().clear();
        instruct_ok(dishwasher, ppbc_schedule(&profile, 0)).await;
        container_state(dishwasher, "EXECUTING").await;
        dishwasher
            .wait_power("Eco's first phase (120 W)", |w| near(w, 120.0, 1.0), SOON)
            .await;
        // Once it runs, the task cannot be scheduled again.
        let again = ppbc_schedule(&profile, 0);
        let again_id = again.id;
        dishwasher.instruct(again).await;
        await_status(dishwasher, again_id, "REJECTED").await;
        instruct_ok(dishwasher, ppbc_pause(&profile, 0)).await;
        container_state(dishwasher, "INTERRUPTED").await;
        instruct_ok(dishwasher, ppbc_resume(&profile, 0)).await;
        container_state(dishwasher, "EXECUTING").await;
    }

    // ---- hybrid heat pump: DDBC, the boiler takes the demand, the heat pump stops ------
    {
        let hybrid = conns.get_mut("hybrid-heat-pump").unwrap();
        hybrid.select_ready(DDBC).await;
        let system = match hybrid
            .wait_message(MessageKind::DdbcSystemDescription, SOON)
            .await
        {
            Message::DdbcSystemDescription(s) => *s,
            other => panic!("{:?}", other.kind()),
        };
        assert_eq!(system.actuators.len(), 2, "heat pump and gas boiler");
        // The demand: a field of the description in 0.0.2-beta, a message in 1.0.0.
        let demand = if version == ProtocolVersion::V0_0_2_BETA {
            system
                .present_demand_rate
                .expect("0.0.2-beta carries the demand")
        } else {
            assert!(system.present_demand_rate.is_none());
            match hybrid
                .wait_message(MessageKind::DdbcPresentDemandStatus, SOON)
                .await
            {
                Message::DdbcPresentDemandStatus(d) => d.present_demand_rate,
                other => panic!("{:?}", other.kind()),
            }
        };
        assert!(
            (2000.0..=8000.0).contains(&demand.start_of_range),
            "about 5 kW of heat, got {demand:?}"
        );
        hybrid
            .wait_message(MessageKind::DdbcActuatorStatus, SOON)
            .await;
        hybrid
            .wait_message(MessageKind::DdbcAverageDemandRateForecast, SOON)
            .await;
        let boiler_on = ddbc_instruction(&system, "gas boiler", "boiler on", 0.5);
        hybrid.events().clear();
        instruct_ok(hybrid, boiler_on).await;
        // 11.5 kW of gas heat covers the demand: the heat pump stops by itself (its
        // compressor's minimum time starts), leaving the boiler's pump.
        hybrid
            .wait_power(
                "only the boiler's pump (40 W)",
                |w| near(w, 40.0, 1.0),
                SOON,
            )
            .await;
        hybrid
            .events()
            .wait_for(
                "the heat pump's minimum on time",
                |e| {
                    matches!(
                        e,
                        CemEvent::TimerReported {
                            actuator: Some(_),
                            ..
                        }
                    )
                },
                SOON,
            )
            .await;
        let back_on = ddbc_instruction(&system, "heat pump", "heat pump on", 1.0);
        let back_on_id = back_on.id;
        hybrid.instruct(back_on).await;
        await_status(hybrid, back_on_id, "REJECTED").await;
        select_not_controllable(hybrid).await;
    }

    // (d) Every message the CEM sent got its ReceptionStatus, OK unless sent bad on
    // purpose; (e) everything the gateway sent validates against this version's schema;
    // (a) every id the gateway used is a UUID.
    let version_str = version.as_str().to_string();
    let mut seen_types = BTreeSet::new();
    for (device, conn) in conns.iter_mut() {
        for (kind, id) in conn.sent() {
            if kind == "ReceptionStatus" {
                continue;
            }
            let id = id.unwrap_or_else(|| panic!("{device}: sent {kind} without an id"));
            let status = conn.reception_for(&id, SOON).await;
            let expected = expected_bad
                .get(&id)
                .copied()
                .unwrap_or(ReceptionStatusValues::Ok);
            assert_eq!(
                status.status, expected,
                "{device}: ReceptionStatus for {kind} {id}: {status:?}"
            );
        }
        let counts = assert_emitted_valid(&version_str, &conn.raw_frames());
        seen_types.extend(counts.into_keys());
        assert_ids_are_uuids(device, conn);
    }
    for kind in [
        "Handshake",
        "ResourceManagerDetails",
        "ReceptionStatus",
        "PowerMeasurement",
        "InstructionStatusUpdate",
        "PEBC.PowerConstraints",
        "OMBC.SystemDescription",
        "OMBC.Status",
        "OMBC.TimerStatus",
        "FRBC.SystemDescription",
        "FRBC.ActuatorStatus",
        "FRBC.StorageStatus",
        "PPBC.PowerProfileDefinition",
        "PPBC.PowerProfileStatus",
        "DDBC.SystemDescription",
        "DDBC.ActuatorStatus",
        "DDBC.AverageDemandRateForecast",
        "DDBC.TimerStatus",
    ] {
        assert!(
            seen_types.contains(kind),
            "no {kind} was schema-checked: {seen_types:?}"
        );
    }
    daemon.assert_running();
}

/// (a)–(e) with a CEM that speaks only the released version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_with_a_0_0_2_beta_cem() {
    tokio::time::timeout(
        Duration::from_secs(180),
        every_device_every_control_type(ProtocolVersion::V0_0_2_BETA),
    )
    .await
    .expect("the whole conversation took too long");
}

/// (a)–(e) with a CEM that speaks only S2 JSON 1.0.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_with_a_1_0_0_cem() {
    tokio::time::timeout(
        Duration::from_secs(180),
        every_device_every_control_type(ProtocolVersion::V1_0_0),
    )
    .await
    .expect("the whole conversation took too long");
}

/// (f) Bad input at the edge: each gets the right ReceptionStatus and the session lives
/// on; a frame over the hard cap closes with 1009 and the gateway dials back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_answered_and_the_session_survives() {
    tokio::time::timeout(Duration::from_secs(120), bad_input())
        .await
        .expect("the bad-input test took too long");
}

async fn bad_input() {
    let mut cem = TestCem::start(&[ProtocolVersion::V1_0_0, ProtocolVersion::V0_0_2_BETA]).await;
    let mut daemon = Daemon::start(&config(&cem, &["pv"]));
    let mut conn = cem.next_conn(GUARD).await;
    let resource = conn.resource_id().to_string();
    let (version, _details) = conn.handshake().await;
    assert_eq!(version, ProtocolVersion::V1_0_0, "the CEM's first choice");
    conn.select_ready(PEBC).await;
    let constraints = pebc_constraints(
        conn.wait_message(MessageKind::PebcPowerConstraints, SOON)
            .await,
    );
    let nil = Id::NIL.as_str().to_string();

    // Not JSON.
    conn.send_raw("this is { not JSON").await;
    let status = conn.wait_reception(&nil, SOON).await;
    assert_eq!(
        status.status,
        ReceptionStatusValues::InvalidData,
        "{status:?}"
    );

    // Fails the schema: a control type that does not exist.
    let id = Id::generate();
    conn.send_raw(format!(
        r#"{{"message_type":"SelectControlType","message_id":"{id}","control_type":"TURBO_MODE"}}"#
    ))
    .await;
    let status = conn.wait_reception(id.as_str(), SOON).await;
    assert_eq!(
        status.status,
        ReceptionStatusValues::InvalidMessage,
        "{status:?}"
    );

    // An unknown message type.
    let id = Id::generate();
    conn.send_raw(format!(
        r#"{{"message_type":"XYZ.Teleport","message_id":"{id}","destination":"mars"}}"#
    ))
    .await;
    let status = conn.wait_reception(id.as_str(), SOON).await;
    assert_eq!(
        status.status,
        ReceptionStatusValues::InvalidMessage,
        "{status:?}"
    );

    // An instruction naming ids the RM never announced.
    let mut unknown = pebc_instruction(
        &constraints,
        -1000.0,
        0.0,
        Timestamp::now(),
        S2Duration::from_secs(60),
    );
    unknown.power_constraints_id = Id::generate();
    let unknown_id = unknown.id;
    let message_id = unknown.message_id.as_str().to_string();
    conn.send_raw(s2_kit::encode(&Message::from(unknown))).await;
    let status = conn.wait_reception(&message_id, SOON).await;
    assert_eq!(
        status.status,
        ReceptionStatusValues::InvalidContent,
        "{status:?}"
    );

    // A HandshakeResponse after the handshake, naming a version never offered: refused,
    // and the session goes on (it used to end the session).
    let id = Id::generate();
    conn.send_raw(format!(
        r#"{{"message_type":"HandshakeResponse","message_id":"{id}","selected_protocol_version":"NaN"}}"#
    ))
    .await;
    let status = conn.wait_reception(id.as_str(), SOON).await;
    assert_eq!(
        status.status,
        ReceptionStatusValues::InvalidContent,
        "{status:?}"
    );

    // 1.5 MiB: over gateway.max_frame_bytes (1 MiB), under the hard cap (4 MiB).
    let id = Id::generate();
    let pad = "x".repeat(1536 * 1024);
    conn.send_raw(format!(
        r#"{{"message_type":"SelectControlType","message_id":"{id}","control_type":"NOT_CONTROLABLE","pad":"{pad}"}}"#
    ))
    .await;
    let status = conn.wait_reception(&nil, SOON).await;
    assert_eq!(
        status.status,
        ReceptionStatusValues::InvalidData,
        "{status:?}"
    );
    assert!(
        status
            .diagnostic_label
            .as_deref()
            .is_some_and(|d| d.contains("exceeds")),
        "{status:?}"
    );

    // The session is still up: a valid message is answered OK and acted on.
    let handle = conn.select(NC).await;
    let status = conn.wait_reception(handle.id.as_str(), SOON).await;
    assert_eq!(status.status, ReceptionStatusValues::Ok);
    conn.events()
        .wait_for(
            "Ready(NOT_CONTROLABLE)",
            |e| matches!(e, CemEvent::Ready { control_type } if *control_type == NC),
            SOON,
        )
        .await;
    assert!(
        statuses_of(&conn, unknown_id).is_empty(),
        "the refused instruction must not have been processed"
    );
    assert_emitted_valid(version.as_str(), &conn.raw_frames());

    // 5 MiB: over the hard cap: a clean close with 1009, then the gateway comes back.
    let pad = "y".repeat(5 * 1024 * 1024);
    let _ = conn
        .try_send_raw(format!(
            r#"{{"message_type":"SelectControlType","message_id":"{}","control_type":"NOT_CONTROLABLE","pad":"{pad}"}}"#,
            Id::generate()
        ))
        .await;
    let ended = conn.ended(SOON).await;
    assert_eq!(
        ended,
        Ended::CloseFrame(Some(1009)),
        "a frame over the hard cap"
    );
    let mut again = cem.next_conn(Duration::from_secs(30)).await;
    assert_eq!(
        again.resource_id(),
        resource,
        "the same resource dials back"
    );
    let (version, _) = again.handshake().await;
    assert_eq!(version, ProtocolVersion::V1_0_0);
    select_not_controllable(&mut again).await;
    daemon.assert_running();
}

/// A CEM that floods the gateway's ws-client link past `gateway.max_frames_per_s`: the
/// frames beyond the rate are answered TEMPORARY_ERROR naming each one's message_id and
/// are not processed; the session stays up and takes the CEM's next paced message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cem_over_the_frame_rate_is_told_to_retry_and_the_session_survives() {
    within_test(frame_rate()).await;
}

async fn frame_rate() {
    let mut cem = TestCem::start(&[ProtocolVersion::V1_0_0]).await;
    let text = config(&cem, &["pv"]).replace(
        "log_level = \"info\"\n",
        "log_level = \"info\"\nmax_frames_per_s = 5\n",
    );
    let mut daemon = Daemon::start(&text);
    let mut conn = cem.next_conn(GUARD).await;
    conn.handshake().await;

    // Forty frames at once: an unknown message type, so those within the rate are
    // refused INVALID_MESSAGE by the edge; the rest never reach it.
    let ids: Vec<Id> = (0..40).map(|_| Id::generate()).collect();
    for id in &ids {
        conn.send_raw(format!(
            r#"{{"message_type":"XYZ.Teleport","message_id":"{id}"}}"#
        ))
        .await;
    }
    let mut temporary = 0;
    for id in &ids {
        let status = conn.reception_for(id.as_str(), SOON).await;
        match status.status {
            ReceptionStatusValues::TemporaryError => {
                temporary += 1;
                assert!(
                    status
                        .diagnostic_label
                        .as_deref()
                        .is_some_and(|d| d.contains("more than 5 frames per second")),
                    "{status:?}"
                );
            }
            ReceptionStatusValues::InvalidMessage => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    // At most the burst of 5 plus what a few seconds of sending earn passed the rate.
    assert!(temporary >= 25, "only {temporary} of 40 were over the rate");

    // Paced, the CEM is heard again on the same session: its selection is acted on.
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let handle = conn.select(NC).await;
        let status = conn.wait_reception(handle.id.as_str(), SOON).await;
        match status.status {
            ReceptionStatusValues::Ok => break,
            ReceptionStatusValues::TemporaryError if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!("the selection got {other:?}"),
        }
    }
    conn.events()
        .wait_for(
            "Ready(NOT_CONTROLABLE)",
            |e| matches!(e, CemEvent::Ready { control_type } if *control_type == NC),
            SOON,
        )
        .await;
    assert!(
        daemon
            .logs()
            .iter()
            .any(|l| l.contains("more than 5 frames per second")),
        "the refusals are logged (throttled)"
    );
    daemon.assert_running();
}

/// The status line the daemon's S2 server answers a WebSocket upgrade with, presenting
/// `token`.
async fn upgrade_status(port: u16, token: &str) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "GET /s2/rm/nobody HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut line = String::new();
    tokio::io::BufReader::new(tcp)
        .read_line(&mut line)
        .await
        .unwrap();
    line.trim_end().to_string()
}

/// `[server]`'s limits reach the server: after `max_failed_auth_per_min` wrong tokens an
/// address gets 429, the right token included, for the rest of the minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_limits_of_the_config_are_applied() {
    within_test(server_limits()).await;
}

async fn server_limits() {
    let cem = TestCem::start(&[ProtocolVersion::V1_0_0]).await;
    let port = free_port();
    let text = format!(
        "{}[server]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = 7\n\
         handshake_timeout_s = 3\nmax_failed_auth_per_min = 2\n",
        config(&cem, &["pv"])
    );
    let mut daemon = Daemon::start_with_env(&text, &[("S2GW_SERVER__TOKEN", "s3cret")]);
    let listening = daemon
        .wait_log(
            "the gateway's server to listen",
            |l| l.contains("S2 WebSocket server listening") && l.contains(&port.to_string()),
            GUARD,
        )
        .await;
    for setting in [
        "max_connections=7",
        "handshake_timeout=3s",
        "max_failed_auth_per_min=2",
    ] {
        assert!(listening.contains(setting), "{setting} in {listening}");
    }
    // At max_connections = 7 one address may hold one socket in handshake: a socket
    // from 127.0.0.1 that is not ours (other tests share the loopback address) makes
    // the server close ours unread. An unanswered upgrade is no failed bearer check,
    // so the first answered one is the first that counts.
    let deadline = tokio::time::Instant::now() + GUARD;
    let first = loop {
        let status = upgrade_status(port, "guess").await;
        if !status.is_empty() || tokio::time::Instant::now() > deadline {
            break status;
        }
    };
    assert_eq!(first, "HTTP/1.1 401 Unauthorized");
    assert_eq!(
        upgrade_status(port, "guess").await,
        "HTTP/1.1 401 Unauthorized"
    );
    for token in ["guess", "s3cret"] {
        assert_eq!(
            upgrade_status(port, token).await,
            "HTTP/1.1 429 Too Many Requests",
            "{token}"
        );
    }
    assert!(
        !daemon.logs().iter().any(|l| l.contains("s3cret")),
        "no token in the log"
    );
    daemon.assert_running();
}

/// (g) The CEM dies: the EV is released to its default while the CEM is away, the
/// gateway dials again with back-off, and the new session shows the EV at full power.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cem_restart_releases_and_reconnects() {
    tokio::time::timeout(Duration::from_secs(150), cem_restart())
        .await
        .expect("the CEM restart test took too long");
}

async fn cem_restart() {
    let versions = [ProtocolVersion::V0_0_2_BETA];
    let mut cem = TestCem::start(&versions).await;
    let addr = cem.addr();
    let mut daemon = Daemon::start(&config(&cem, &["ev"]));
    let mut ev = cem.next_conn(GUARD).await;
    let resource = ev.resource_id().to_string();
    ev.handshake().await;
    ev.select_ready(OMBC).await;
    let system = ombc_system(
        ev.wait_message(MessageKind::OmbcSystemDescription, SOON)
            .await,
    );
    let six_amps = ombc_instruction(&system, "6 A on 3 phase(s)");
    ev.events().clear();
    instruct_ok(&mut ev, six_amps).await;
    ev.wait_power(
        "the EV at 6 A x 3 (4140 W)",
        |w| near(w, 4140.0, 40.0),
        SOON,
    )
    .await;

    cem.kill().await;
    let release = daemon
        .wait_log(
            "the fail-safe release of the EV",
            |l| l.contains("fail-safe: releasing the device") && l.contains(&resource),
            SOON,
        )
        .await;
    daemon
        .wait_log(
            "the EV released",
            |l| l.contains("device released") && l.contains(&resource),
            SOON,
        )
        .await;
    // It keeps trying while the CEM is away.
    daemon
        .wait_log(
            "a failed dial while the CEM is away",
            |l| l.contains("dial failed") && l.contains(&resource),
            SOON,
        )
        .await;

    let mut cem = TestCem::start_on(addr, &versions).await;
    let mut ev = cem.next_conn(Duration::from_secs(70)).await;
    assert_eq!(ev.resource_id(), resource);
    let (version, _) = ev.handshake().await;
    assert_eq!(version, ProtocolVersion::V0_0_2_BETA, "re-handshaken");
    let first = ev
        .events()
        .wait_map(
            "the first PowerMeasurement after the reconnect",
            |e| match e {
                CemEvent::Measurement(m) => Some(common::total_power(m)),
                _ => None,
            },
            SOON,
        )
        .await;
    assert!(
        near(first, 11_040.0, 50.0),
        "after the fail-safe ({release}) the EV is back at 16 A x 3 = 11040 W, got {first}"
    );
    daemon.assert_running();
}

/// ResourceManagerDetails lists the control types "in the profile's order of preference"
/// (config/s2gw.toml, `control_types`; the sim-pv profile: "Most preferred first: a CEM
/// that can curtail selects PEBC"), so a CEM that takes the first offered gets the
/// profile's favourite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_types_are_offered_in_the_profiles_order() {
    let version = ProtocolVersion::V0_0_2_BETA;
    let mut cem = TestCem::start(std::slice::from_ref(&version)).await;
    let _daemon = Daemon::start(&config(&cem, &ALL));
    let conns = within_test(cem.conns(ALL.len(), GUARD)).await;
    let mut wrong = Vec::new();
    for (_, mut conn) in conns {
        let (_, details) = within_test(conn.handshake()).await;
        let name = details.name.clone().unwrap();
        if details.available_control_types != offered(&name) {
            wrong.push(format!(
                "{name}: offered {:?}, the profile prefers {:?}",
                details.available_control_types,
                offered(&name)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "not in the profile's order:\n{}",
        wrong.join("\n")
    );
}

async fn within_test<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("the test took too long")
}
