//! End-to-end through the gateway: Modbus devices (pymodbus 3.16 simulators started from
//! adapters/modbus/tests/peers/modbus_peer.py, and an in-process Modbus TCP server for the
//! map profiles pymodbus does not simulate) behind the s2gw daemon process, against the
//! s2-kit test CEM over loopback WebSockets.
//!
//! The modbus crate's own tests drive its `Device`s directly (discovery, write sequences,
//! faults); these check what only the whole gateway shows: register values arriving as
//! S2 PowerMeasurements, S2 instructions becoming verified writes and
//! InstructionStatusUpdates, the fail-safe release on a lost CEM observed on the server,
//! and the `s2gw modbus` installer tools.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use common::{
    CemConn, Daemon, GUARD, Queue, TestCem, frbc_instruction, ombc_instruction, pebc_instruction,
};
use s2_kit::message::{Message, MessageKind};
use s2_kit::types::common::ControlType;
use s2_kit::types::{Duration as S2Duration, Id, ProtocolVersion, Timestamp, ombc, pebc};
use s2gw_modbus::{Table, Target, ValueType, WordOrder};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};

const NC: ControlType = ControlType::NotControllable;
const OMBC: ControlType = ControlType::OperationModeBasedControl;

/// How long a poll-driven effect may take (poll and measurement intervals are 1 s).
const SOON: Duration = Duration::from_secs(15);

/// SunSpec model chains of the peers, as (model id, length).
const CHAIN_123: [(u16, u16); 3] = [(1, 66), (103, 50), (123, 24)];
const CHAIN_704: [(u16, u16); 3] = [(1, 66), (103, 50), (704, 65)];

/// Address of a model's ID register in a chain starting (marker) at `base`.
fn model_at(base: u16, chain: &[(u16, u16)], id: u16) -> u16 {
    let mut address = base + 2;
    for (model, len) in chain {
        if *model == id {
            return address;
        }
        address += 2 + len;
    }
    panic!("model {id} not in the chain")
}

/// A write the pymodbus peer saw, as it prints it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Seen {
    fc: u8,
    address: u16,
    values: Vec<i64>,
}

fn seen(fc: u8, address: u16, values: &[i64]) -> Seen {
    Seen {
        fc,
        address,
        values: values.to_vec(),
    }
}

/// A pymodbus device simulator on a free loopback port.
struct Peer {
    port: u16,
    writes: Queue<Seen>,
    /// Clients a single-client peer turned away (`--single-client`), counted.
    refused: Queue<u64>,
    _child: Child,
}

impl Peer {
    /// Start `modbus_peer.py PORT ARGS…` and wait until it accepts connections.
    async fn start(args: &[&str]) -> Peer {
        let script = common::workspace().join("adapters/modbus/tests/peers/modbus_peer.py");
        // Port 0: the peer binds a free port itself and says which.
        let mut child = Command::new(common::python())
            .arg(&script)
            .arg("0")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the pymodbus peer {script:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (refused_tx, refused) = mpsc::unbounded_channel();
        let (listening_tx, listening) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut listening_tx = Some(listening_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(port) = value["listening"].as_u64() {
                    if let Some(tx) = listening_tx.take() {
                        let _ = tx.send(port);
                    }
                } else if let Some(n) = value["refused_client"].as_u64() {
                    let _ = refused_tx.send(n);
                } else if let Ok(write) = serde_json::from_value::<Seen>(value) {
                    let _ = tx.send(write);
                }
            }
        });
        // A peer that dies before listening closes its stdout, which ends the wait.
        let port = match tokio::time::timeout(GUARD, listening).await {
            Ok(Ok(port)) => u16::try_from(port).unwrap(),
            _ => panic!(
                "the pymodbus peer {args:?} never said where it listens (exit: {:?}): is \
                 pymodbus 3.16.1 in the venv (scripts/python-peers.sh)? See its stderr above",
                child.try_wait()
            ),
        };
        Peer {
            port,
            writes: Queue::new(rx),
            refused: Queue::new(refused),
            _child: child,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The next write (kept or new) equal to `want`.
    async fn wait_write(&mut self, want: Seen) -> Seen {
        let what = format!("the write {want:?}");
        self.writes.wait_for(&what, |w| *w == want, SOON).await
    }

    /// Read `count` holding registers at `address` straight from the server.
    async fn holding(&self, address: u16, count: u16) -> Vec<u16> {
        let read = s2gw_modbus::read_raw(
            Target::Tcp(self.addr()),
            1,
            Table::Holding,
            address,
            count,
            ValueType::U16,
            WordOrder::HighFirst,
        )
        .await
        .unwrap_or_else(|e| panic!("reading back {address}+{count}: {e}"));
        read.words
    }
}

/// A `[[device]]` on `peer` with `profile` and extra `[device.modbus]` lines.
fn device(id: &str, profile: &str, peer: &Peer, extra: &str) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\nprofile = \"{profile}\"\ncem = \"test\"\npoll_interval_s = 1\n\
         measurement_interval_s = 1\n[device.modbus]\ntcp = \"{}\"\ntimeout_ms = 2000\n{extra}\n",
        peer.addr()
    )
}

fn config(cem: &TestCem, devices: &[String]) -> String {
    format!(
        "[gateway]\nname = \"s2gw-e2e-modbus\"\nstate_dir = \"@STATE_DIR@\"\n\n\
         [cem.test]\ntransport = \"ws-client\"\nurl = \"{}\"\n\n{}",
        cem.url(),
        devices.concat()
    )
}

/// One connection per device, by device name, each past its handshake.
async fn connect(cem: &mut TestCem, n: usize) -> BTreeMap<String, CemConn> {
    let mut out = BTreeMap::new();
    for (_, mut conn) in cem.conns(n, GUARD).await {
        let (_, details) = conn.handshake().await;
        out.insert(details.name.clone().unwrap(), conn);
    }
    out
}

fn near(value: f64, target: f64) -> bool {
    (value - target).abs() < 0.01
}

/// The status types the gateway sent for `instruction`, in wire order.
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

/// Wait for an InstructionStatusUpdate for `instruction` whose status is in `any`.
async fn await_status(conn: &mut CemConn, instruction: Id, any: &[&str]) -> String {
    let id = instruction.as_str().to_string();
    let frame = conn
        .frames()
        .wait_for(
            &format!("InstructionStatusUpdate {any:?} for {id}"),
            |v| {
                v["message_type"] == "InstructionStatusUpdate"
                    && v["instruction_id"] == *id
                    && any.iter().any(|s| v["status_type"] == *s)
            },
            SOON,
        )
        .await;
    frame["status_type"].as_str().unwrap().to_string()
}

/// Instruct a production limit of `limit_w` (positive) for an hour; its instruction id.
async fn limit(conn: &mut CemConn, constraints: &pebc::PowerConstraints, limit_w: f64) -> Id {
    let instruction = pebc_instruction(
        constraints,
        -limit_w,
        0.0,
        Timestamp::now(),
        S2Duration::from_secs(3600),
    );
    let id = instruction.id;
    conn.instruct(instruction).await;
    id
}

async fn within_test<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(120), future)
        .await
        .expect("the test took too long")
}

/// SunSpec inverters at 40000 (1+103+123) and 50000 (1+103+704): the measured power is the
/// W register with W_SF applied; a PEBC production limit becomes the model's writes with
/// FC16, read back, then SUCCEEDED; a lost CEM releases both limits on the servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sunspec_inverters_measure_limit_and_release_on_a_lost_cem() {
    within_test(sunspec_inverters()).await;
}

async fn sunspec_inverters() {
    let mut p123 = Peer::start(&["sunspec", "--base", "40000", "--models", "1,103,123"]).await;
    let mut p704 = Peer::start(&["sunspec", "--base", "50000", "--models", "1,103,704"]).await;
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    // Neither chain has model 120/121, so the rating comes from the device section.
    let rated = "sunspec = { rated_w = 5000 }";
    let mut daemon = Daemon::start(&config(
        &cem,
        &[
            device("pv-123", "modbus-sunspec-inverter", &p123, rated),
            device("pv-704", "modbus-sunspec-inverter", &p704, rated),
        ],
    ));
    let mut conns = connect(&mut cem, 2).await;

    // W = 12345, W_SF = -1: 1234.5 W produced, negative in S2.
    for (name, conn) in &mut conns {
        conn.select_ready(NC).await;
        let w = conn
            .wait_power(&format!("{name}: -1234.5 W"), |w| near(w, -1234.5), SOON)
            .await;
        assert!(near(w, -1234.5), "{name}: {w}");
    }
    // Rule 3: reading never writes.
    assert_eq!(
        p123.writes.try_next(),
        None,
        "pv-123 written before any instruction"
    );
    assert_eq!(
        p704.writes.try_next(),
        None,
        "pv-704 written before any instruction"
    );

    // 2500 W of 5000 W: 50 %.
    let m123 = model_at(40000, &CHAIN_123, 123);
    let m704 = model_at(50000, &CHAIN_704, 704);
    for name in ["pv-123", "pv-704"] {
        let conn = conns.get_mut(name).unwrap();
        let constraints = conn.select_pebc(SOON).await;
        let id = limit(conn, &constraints, 2500.0).await;
        let last = await_status(conn, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await;
        assert_eq!(last, "SUCCEEDED", "{name}: {:?}", statuses_of(conn, id));
        assert_eq!(
            statuses_of(conn, id),
            ["ACCEPTED", "STARTED", "SUCCEEDED"],
            "{name}"
        );
    }
    // Model 123: revert timer first, then WMaxLimPct (SF -1), then enable; all FC16.
    for want in [
        seen(16, m123 + 7, &[120]),
        seen(16, m123 + 5, &[500]),
        seen(16, m123 + 9, &[1]),
    ] {
        p123.wait_write(want).await;
    }
    // Model 704: revert timer (u32), reversion to 100 % disabled, WMaxLimPct (SF -2),
    // enable last.
    for want in [
        seen(16, m704 + 18, &[0, 120]),
        seen(16, m704 + 16, &[10000]),
        seen(16, m704 + 17, &[0]),
        seen(16, m704 + 15, &[5000]),
        seen(16, m704 + 14, &[1]),
    ] {
        p704.wait_write(want).await;
    }
    // What the servers hold now: the limits, enabled, with the revert timers (rule 2).
    assert_eq!(p123.holding(m123 + 5, 5).await, [500, 0, 120, 0, 1]);
    assert_eq!(
        p704.holding(m704 + 14, 6).await,
        [1, 5000, 10000, 0, 0, 120]
    );

    // The CEM dies: both limits are released on the servers (rule 1).
    cem.kill().await;
    p123.wait_write(seen(16, m123 + 9, &[0])).await;
    p704.wait_write(seen(16, m704 + 14, &[0])).await;
    assert_eq!(
        p123.holding(m123 + 9, 1).await,
        [0],
        "123 limit still enabled"
    );
    assert_eq!(
        p704.holding(m704 + 14, 1).await,
        [0],
        "704 limit still enabled"
    );
    daemon.assert_running();
}

/// An inverter that refuses FC16 for one register: works when the device says FC6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fc6_only_inverter_works_when_the_profile_says_fc6() {
    within_test(fc6_only()).await;
}

async fn fc6_only() {
    let mut peer = Peer::start(&["sunspec", "--models", "1,103,123", "--fc6-only"]).await;
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let fc6 = "sunspec = { rated_w = 5000, write = \"fc6\" }";
    let _daemon = Daemon::start(&config(
        &cem,
        &[device("kostal", "modbus-sunspec-inverter", &peer, fc6)],
    ));
    let mut conn = connect(&mut cem, 1).await.remove("kostal").unwrap();
    let constraints = conn.select_pebc(SOON).await;
    let id = limit(&mut conn, &constraints, 2000.0).await;
    let last = await_status(&mut conn, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await;
    assert_eq!(last, "SUCCEEDED", "{:?}", statuses_of(&conn, id));
    let m = model_at(40000, &CHAIN_123, 123);
    // 40 % with SF -1, written with FC6.
    peer.wait_write(seen(6, m + 5, &[400])).await;
    peer.wait_write(seen(6, m + 9, &[1])).await;
    let mut all = Vec::new();
    while let Some(write) = peer.writes.try_next() {
        all.push(write);
    }
    assert!(
        all.iter().all(|w| w.fc == 6),
        "a write not with FC6: {all:?}"
    );
    assert_eq!(peer.holding(m + 5, 1).await, [400]);
}

/// A device whose writes fail (exception 04) and one that acknowledges writes but keeps
/// its old values (the read-back catches it): the CEM hears ABORTED or REJECTED, never
/// SUCCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_is_reported_to_the_cem() {
    within_test(failed_writes()).await;
}

async fn failed_writes() {
    let failing = Peer::start(&["sunspec", "--models", "1,103,123", "--fail-writes"]).await;
    let ignoring = Peer::start(&["sunspec", "--models", "1,103,123", "--ignore-writes"]).await;
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let rated = "sunspec = { rated_w = 5000 }";
    let _daemon = Daemon::start(&config(
        &cem,
        &[
            device("failing", "modbus-sunspec-inverter", &failing, rated),
            device("ignoring", "modbus-sunspec-inverter", &ignoring, rated),
        ],
    ));
    let mut conns = connect(&mut cem, 2).await;
    for (name, conn) in &mut conns {
        let constraints = conn.select_pebc(SOON).await;
        let id = limit(conn, &constraints, 1000.0).await;
        let last = await_status(conn, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await;
        assert!(
            last == "ABORTED" || last == "REJECTED",
            "{name}: a failed write ended {last} ({:?})",
            statuses_of(conn, id)
        );
    }
    // The ignoring device still holds no limit.
    let m = model_at(40000, &CHAIN_123, 123);
    assert_eq!(ignoring.holding(m + 9, 1).await, [0]);
}

/// An ABB Terra AC and an SDM630 appear with their measurements; the charger's OMBC step
/// becomes its current register written with FC16.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abb_terra_ac_and_sdm630_measure_and_the_charger_follows_a_step() {
    within_test(abb_and_sdm630()).await;
}

async fn abb_and_sdm630() {
    let mut abb = Peer::start(&["abb"]).await;
    let sdm = Peer::start(&["sdm630"]).await;
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let _daemon = Daemon::start(&config(
        &cem,
        &[
            device("wallbox", "modbus-abb-terra-ac", &abb, ""),
            device("grid", "modbus-sdm630", &sdm, ""),
        ],
    ));
    let mut conns = connect(&mut cem, 2).await;

    // SDM630: 1100.25 W total (f32 input registers), as its three phases add up.
    let grid = conns.get_mut("grid").unwrap();
    grid.select_ready(NC).await;
    grid.wait_power("the SDM630's 1100.25 W", |w| near(w, 1100.25), SOON)
        .await;

    // ABB: 11040 W (phase currents × 230 V: 3680 + 3657 + 3703 W).
    let wallbox = conns.get_mut("wallbox").unwrap();
    wallbox.select_ready(OMBC).await;
    wallbox
        .wait_power("the charger's 11040 W", |w| near(w, 11040.0), SOON)
        .await;
    let system = match wallbox
        .wait_message(MessageKind::OmbcSystemDescription, SOON)
        .await
    {
        Message::OmbcSystemDescription(s) => *s,
        other => panic!("expected OMBC.SystemDescription, got {:?}", other.kind()),
    };
    let step = ombc_instruction(&system, "6 A on 3 phase(s)");
    let id = step.id;
    wallbox.instruct(step).await;
    let last = await_status(wallbox, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await;
    assert_eq!(last, "SUCCEEDED", "{:?}", statuses_of(wallbox, id));
    // 6 A in mA, u32 high word first, at 0x4100.
    abb.wait_write(seen(16, 0x4100, &[0, 6000])).await;
    assert_eq!(abb.holding(0x4100, 2).await, [0, 6000]);
    assert_ombc_modes(&system);
}

/// The charger offers off and its current steps, the maximum as the default.
fn assert_ombc_modes(system: &ombc::SystemDescription) {
    let labels: Vec<String> = system
        .operation_modes
        .iter()
        .filter_map(|m| m.diagnostic_label.clone())
        .collect();
    for want in ["Charging off", "6 A on 3 phase(s)", "16 A on 3 phase(s)"] {
        assert!(labels.iter().any(|l| l == want), "no {want}: {labels:?}");
    }
}

// ----------------------------------------------------------------------------------------
// Profiles from makers' tables: KEBA P30, Heidelberg Energy Control, SMA, SolarEdge
// ----------------------------------------------------------------------------------------

/// One charger through the daemon as OMBC: the measured power, the 6 A step becomes
/// `step` (waited for in order) and SUCCEEDED, and a lost CEM writes `release`.
async fn charger_step_and_release(
    peer: &mut Peer,
    device_section: String,
    watts: f64,
    step: &[Seen],
    release: &[Seen],
) {
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let mut daemon = Daemon::start(&config(&cem, &[device_section]));
    let mut conn = connect(&mut cem, 1).await.remove("wallbox").unwrap();
    conn.select_ready(OMBC).await;
    conn.wait_power(
        &format!("the charger's {watts} W"),
        |w| near(w, watts),
        SOON,
    )
    .await;
    let system = ombc_system(&mut conn).await;
    assert_ombc_modes(&system);
    // Rule 3: reading never writes.
    assert_eq!(
        peer.writes.try_next(),
        None,
        "written before any instruction"
    );

    let instruction = ombc_instruction(&system, "6 A on 3 phase(s)");
    let id = instruction.id;
    conn.instruct(instruction).await;
    for want in step {
        peer.wait_write(want.clone()).await;
    }
    let last = await_status(&mut conn, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await;
    assert_eq!(last, "SUCCEEDED", "{:?}", statuses_of(&conn, id));

    // The CEM dies: the charger goes back to its maximum (rule 1).
    cem.kill().await;
    for want in release {
        peer.wait_write(want.clone()).await;
    }
    daemon.assert_running();
}

/// The KEBA P30 profile through the daemon (unit 255, one u32 per read, FC6 writes: the
/// simulator refuses anything else, as the charger does): 7360 W measured; the 6 A step
/// writes the failsafe timeout, 6000 mA and enable; a lost CEM writes 16000 mA, enabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keba_p30_measures_follows_a_step_and_releases_on_a_lost_cem() {
    within_test(async {
        let mut peer = Peer::start(&["keba"]).await;
        let section = device("wallbox", "modbus-keba-p30", &peer, "");
        charger_step_and_release(
            &mut peer,
            section,
            7360.0,
            &[
                seen(6, 5018, &[60]),
                seen(6, 5004, &[6000]),
                seen(6, 5014, &[1]),
            ],
            &[
                seen(6, 5018, &[60]),
                seen(6, 5004, &[16000]),
                seen(6, 5014, &[1]),
            ],
        )
        .await;
    })
    .await;
}

/// The Heidelberg Energy Control profile through the daemon over RTU framing: 11040 W
/// measured from the input registers; the 6 A step disables standby, arms the watchdog
/// (60 s) with a 16 A failsafe current, then writes 60 (0.1 A) to 261, all with FC6 (the
/// table lists no FC16; the simulator refuses it); a lost CEM writes 160; the box holds
/// it, read back over RTU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heidelberg_ec_over_rtu_arms_its_watchdog_follows_a_step_and_releases_on_a_lost_cem() {
    within_test(async {
        let mut peer = Peer::start(&["heidelberg", "--framer", "rtu"]).await;
        let section = format!(
            "[[device]]\nid = \"wallbox\"\nprofile = \"modbus-heidelberg-ec\"\ncem = \"test\"\n\
             poll_interval_s = 1\nmeasurement_interval_s = 1\n[device.modbus]\n\
             rtu_over_tcp = \"{}\"\ntimeout_ms = 2000\n",
            peer.addr()
        );
        let armed = [
            seen(6, 258, &[4]),
            seen(6, 257, &[60000]),
            seen(6, 262, &[160]),
        ];
        charger_step_and_release(
            &mut peer,
            section,
            11040.0,
            &[&armed[..], &[seen(6, 261, &[60])]].concat(),
            &[&armed[..], &[seen(6, 261, &[160])]].concat(),
        )
        .await;
        let held = s2gw_modbus::read_raw(
            Target::RtuOverTcp(peer.addr()),
            1,
            Table::Holding,
            257,
            6,
            ValueType::U16,
            WordOrder::HighFirst,
        )
        .await
        .unwrap();
        assert_eq!(held.words, [60000, 4, 1, 0, 160, 160]);
    })
    .await;
}

/// The SMA profile through the daemon (unit 126 from the profile): the Sunny Tripower's
/// 17-model chain is discovered, -1234.5 W measured; a 2500 W limit (of WMax 5000 W)
/// is the revert timer, WMaxLimPct 500 and enable on 123 at 40343, SUCCEEDED; a lost
/// CEM puts 100 % back and leaves the enable flag at 1, as SMA keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sma_limits_through_123_and_restores_its_enabled_100_percent_on_a_lost_cem() {
    within_test(async {
        let mut peer = Peer::start(&["sma"]).await;
        let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
        let mut daemon = Daemon::start(&config(&cem, &[device("pv", "modbus-sma", &peer, "")]));
        let mut conn = connect(&mut cem, 1).await.remove("pv").unwrap();
        let constraints = conn.select_pebc(SOON).await;
        conn.wait_power("the inverter's -1234.5 W", |w| near(w, -1234.5), SOON)
            .await;
        assert_eq!(
            peer.writes.try_next(),
            None,
            "written before any instruction"
        );

        let id = limit(&mut conn, &constraints, 2500.0).await;
        for want in [
            seen(16, 40350, &[120]),
            seen(16, 40348, &[500]),
            seen(16, 40352, &[1]),
        ] {
            peer.wait_write(want).await;
        }
        let last = await_status(&mut conn, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await;
        assert_eq!(last, "SUCCEEDED", "{:?}", statuses_of(&conn, id));
        assert_eq!(peer.holding(40348, 5).await, [500, 0, 120, 0, 1]);

        cem.kill().await;
        peer.wait_write(seen(16, 40348, &[1000])).await;
        assert_eq!(peer.holding(40348, 5).await[0], 1000);
        assert_eq!(
            peer.holding(40352, 1).await,
            [1],
            "the flag as SMA keeps it"
        );
        daemon.assert_running();
    })
    .await;
}

/// A 32-bit SolarEdge power control value as written: low word first.
fn low_first(address: u16, bits: u32) -> Seen {
    seen(
        16,
        address,
        &[i64::from(bits & 0xFFFF), i64::from(bits >> 16)],
    )
}

/// The SolarEdge profile through the daemon: the SunSpec W (W_SF -1) as -1234.5 W; a
/// 2000 W production limit on an inverter of 8000 W (the device section's envelope)
/// writes only what the inverter does not hold already of the non-volatile settings
/// (the 120 s command timeout becomes 60 s; the fallback is 100 % already), enables
/// dynamic power control, then writes a dynamic limit of 25 % (float32, low word first),
/// SUCCEEDED; the heartbeat (`refresh_s = 2` here) re-writes the dynamic limit alone,
/// never the settings its maker says not to rewrite; a lost CEM writes 100 % back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solaredge_measures_limits_through_dynamic_power_control_and_releases_on_a_lost_cem() {
    within_test(async {
        let mut peer = Peer::start(&["solaredge"]).await;
        let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
        let extra = "envelope = { min_w = -8000, max_w = 0 }\nrefresh_s = 2";
        let mut daemon = Daemon::start(&config(
            &cem,
            &[device("pv", "modbus-solaredge", &peer, extra)],
        ));
        let mut conn = connect(&mut cem, 1).await.remove("pv").unwrap();
        let constraints = conn.select_pebc(SOON).await;
        conn.wait_power("the inverter's -1234.5 W", |w| near(w, -1234.5), SOON)
            .await;
        assert_eq!(
            peer.writes.try_next(),
            None,
            "written before any instruction"
        );

        let id = limit(&mut conn, &constraints, 2000.0).await;
        let quarter = low_first(0xF322, 25f32.to_bits());
        for want in [
            low_first(0xF310, 60),
            seen(16, 0xF300, &[1]),
            quarter.clone(),
        ] {
            peer.wait_write(want).await;
        }
        let last = await_status(&mut conn, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await;
        assert_eq!(last, "SUCCEEDED", "{:?}", statuses_of(&conn, id));
        let f322 = 25f32.to_bits();
        assert_eq!(
            peer.holding(0xF322, 2).await,
            [(f322 & 0xFFFF) as u16, (f322 >> 16) as u16]
        );
        assert_eq!(peer.holding(0xF310, 2).await, [60, 0]);

        // The heartbeat: the dynamic limit again, and nothing else of the limit's writes
        // (the fallback limit never: the inverter held 100 % from the start).
        peer.wait_write(quarter.clone()).await;
        let mut others = Vec::new();
        while let Some(w) = peer.writes.try_next() {
            // A later heartbeat of a slow run writes the same again: not a settings write.
            if w != quarter {
                others.push(w);
            }
        }
        assert_eq!(others, [], "written besides the dynamic limit");

        cem.kill().await;
        peer.wait_write(low_first(0xF322, 100f32.to_bits())).await;
        let full = 100f32.to_bits();
        assert_eq!(
            peer.holding(0xF322, 2).await,
            [(full & 0xFFFF) as u16, (full >> 16) as u16]
        );
        daemon.assert_running();
    })
    .await;
}

// ----------------------------------------------------------------------------------------
// The installer tools
// ----------------------------------------------------------------------------------------

/// `s2gw ARGS…`: exit success, stdout, stderr.
async fn s2gw(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_s2gw"))
        .args(args)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(GUARD, out)
        .await
        .expect("the s2gw tool hung")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_scan_and_read_report_values_and_clear_errors() {
    within_test(tools()).await;
}

async fn tools() {
    let peer = Peer::start(&["sunspec", "--base", "50000", "--models", "1,103,704"]).await;
    let addr = peer.addr();

    let (ok, out, err) = s2gw(&["modbus", "scan", "--tcp", &addr, "--unit", "1"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("marker at 50000 (3 models)"), "{out}");
    assert!(
        out.contains("three-phase inverter") && out.contains("1234.500 W"),
        "{out}"
    );
    assert!(out.contains("704"), "{out}");

    // The SunS marker as one u32, and WH (u32 at 103+24) in both word orders.
    let (ok, out, err) = s2gw(&[
        "modbus",
        "read",
        "--tcp",
        &addr,
        "--unit",
        "1",
        "--table",
        "holding",
        "--address",
        "50000",
        "--count",
        "2",
        "--type",
        "u32",
        "--word-order",
        "big",
    ])
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "0x5375 0x6E53 = 1400204883");
    let wh = (model_at(50000, &CHAIN_704, 103) + 24).to_string();
    let (ok, out, _) = s2gw(&[
        "modbus",
        "read",
        "--tcp",
        &addr,
        "--address",
        &wh,
        "--type",
        "u32",
    ])
    .await;
    assert!(ok && out.trim().ends_with("= 123456"), "{out}");
    let (ok, out, _) = s2gw(&[
        "modbus",
        "read",
        "--tcp",
        &addr,
        "--address",
        &wh,
        "--type",
        "u32",
        "--word-order",
        "little",
    ])
    .await;
    assert!(
        ok && out
            .trim()
            .ends_with(&format!("= {}", 123456u32.rotate_left(16))),
        "{out}"
    );

    // A Modbus exception, by name.
    let (ok, _, err) = s2gw(&["modbus", "read", "--tcp", &addr, "--address", "9"]).await;
    assert!(
        !ok && err.contains("exception 02 (illegal data address)"),
        "{err}"
    );

    // Nothing listening: refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (ok, _, err) = s2gw(&["modbus", "scan", "--tcp", &closed_addr]).await;
    assert!(!ok && err.contains("refused"), "{err}");

    // Something accepts but never answers: a timeout naming the unit and the time.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let (ok, _, err) = s2gw(&[
        "modbus",
        "scan",
        "--tcp",
        &silent_addr,
        "--unit",
        "3",
        "--timeout-ms",
        "300",
    ])
    .await;
    assert!(
        !ok && err.contains("unit 3") && err.contains("did not answer within 300 ms"),
        "{err}"
    );
    drop(silent);

    // Usage errors are clap's: no bus given.
    let (ok, _, err) = s2gw(&["modbus", "scan"]).await;
    assert!(!ok && err.contains("--tcp"), "{err}");
}

// ----------------------------------------------------------------------------------------
// SunSpec storage (model 124)
// ----------------------------------------------------------------------------------------

const FRBC: ControlType = ControlType::FillRateBasedControl;
const CHAIN_124: [(u16, u16); 3] = [(1, 66), (103, 50), (124, 24)];

/// A SunSpec battery inverter (1+103+124 at 40000) with the `modbus-sunspec-storage`
/// profile: FRBC describes the battery with the SoC from ChaState; "charge" at 0.5 becomes
/// the storage writes (revert timer first, rule 2), read back, SUCCEEDED; a lost CEM sets
/// StorCtl_Mod back to 0. A second battery whose StorCtl_Mod was set by an installer is
/// left alone at start-up and gets exactly its settings back on release (rule 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sunspec_storage_follows_frbc_and_releases_on_a_lost_cem() {
    within_test(sunspec_storage()).await;
}

async fn sunspec_storage() {
    let mut ours = Peer::start(&["sunspec", "--models", "1,103,124"]).await;
    let mut theirs =
        Peer::start(&["sunspec", "--models", "1,103,124", "--preset-storctl", "2"]).await;
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let mut daemon = Daemon::start(&config(
        &cem,
        &[
            device("battery", "modbus-sunspec-storage", &ours, ""),
            device("installed", "modbus-sunspec-storage", &theirs, ""),
        ],
    ));
    let mut conns = connect(&mut cem, 2).await;
    let m = model_at(40000, &CHAIN_124, 124);
    // Offsets in model 124.
    let (stor_ctl, out_w, in_w, rvrt) = (m + 5, m + 12, m + 13, m + 15);

    for (name, conn) in &mut conns {
        conn.select_ready(FRBC).await;
        let system = match conn
            .wait_message(MessageKind::FrbcSystemDescription, SOON)
            .await
        {
            Message::FrbcSystemDescription(s) => *s,
            other => panic!(
                "{name}: expected FRBC.SystemDescription, got {:?}",
                other.kind()
            ),
        };
        // WChaMax = 5000 W (SF 0): "charge" spans 0..5000 W; the profile's SoC range.
        let charge = system.actuators[0]
            .operation_modes
            .iter()
            .find(|m| m.diagnostic_label.as_deref() == Some("charge"))
            .unwrap_or_else(|| panic!("{name}: no charge mode"));
        let range = &charge.elements[0].power_ranges[0];
        assert!(
            near(range.start_of_range, 0.0) && near(range.end_of_range, 5000.0),
            "{name}: charge range {range:?}"
        );
        assert!(
            near(system.storage.fill_level_range.start_of_range, 10.0)
                && near(system.storage.fill_level_range.end_of_range, 100.0),
            "{name}: {:?}",
            system.storage.fill_level_range
        );
        // ChaState = 655 with ChaState_SF = -1.
        let soc = conn
            .frames()
            .wait_for(
                &format!("{name}: FRBC.StorageStatus at 65.5 %"),
                |v| {
                    v["message_type"] == "FRBC.StorageStatus"
                        && v["present_fill_level"]
                            .as_f64()
                            .is_some_and(|f| near(f, 65.5))
                },
                SOON,
            )
            .await;
        assert!(near(soc["present_fill_level"].as_f64().unwrap(), 65.5));

        // Rule 3: nothing written before an instruction, the installer's setting included.
        let peer = if name == "battery" {
            &mut ours
        } else {
            &mut theirs
        };
        assert_eq!(
            peer.writes.try_next(),
            None,
            "{name} written before any instruction"
        );
        if name == "installed" {
            assert_eq!(
                peer.holding(stor_ctl, 1).await,
                [2],
                "installer's StorCtl_Mod touched"
            );
        }

        // Charge at half of 5000 W: 50 % of WChaMax, InOutWRte_SF = -1.
        let instruction = frbc_instruction(&system, "charge", 0.5);
        let id = instruction.id;
        conn.instruct(instruction).await;
        let last = await_status(conn, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await;
        assert_eq!(last, "SUCCEEDED", "{name}: {:?}", statuses_of(conn, id));
        let minus_500 = i64::from((-500i16) as u16);
        for want in [
            seen(16, rvrt, &[120]),
            seen(16, in_w, &[500]),
            seen(16, out_w, &[minus_500]),
            seen(16, stor_ctl, &[3]),
        ] {
            peer.wait_write(want).await;
        }
        // The device holds the setpoint with its revert timer (rule 2).
        let held = peer.holding(stor_ctl, 11).await;
        assert_eq!(
            (held[0], held[7], held[8], held[10]),
            (3, (-500i16) as u16, 500, 120),
            "{name}: StorCtl_Mod, OutWRte, InWRte, InOutWRte_RvrtTms = {held:?}"
        );
    }

    // The CEM dies: ours goes back to StorCtl_Mod = 0; the installer's settings come back
    // exactly as they were (StorCtl_Mod 2, InWRte 20 %, OutWRte 30 %, no revert timer).
    cem.kill().await;
    ours.wait_write(seen(16, stor_ctl, &[0])).await;
    assert_eq!(
        ours.holding(stor_ctl, 1).await,
        [0],
        "ours still controlled"
    );
    for want in [
        seen(16, rvrt, &[0]),
        seen(16, in_w, &[200]),
        seen(16, out_w, &[300]),
        seen(16, stor_ctl, &[2]),
    ] {
        theirs.wait_write(want).await;
    }
    let held = theirs.holding(stor_ctl, 11).await;
    assert_eq!(
        (held[0], held[7], held[8], held[10]),
        (2, 300, 200, 0),
        "the installer's storage settings: {held:?}"
    );
    daemon.assert_running();
}

// ----------------------------------------------------------------------------------------
// Map profiles without a pymodbus peer: an in-process Modbus TCP server
// ----------------------------------------------------------------------------------------

/// A write the in-process server applied: function code, address, registers or coils.
#[derive(Debug, Clone, PartialEq)]
struct Written {
    fc: u8,
    address: u16,
    values: Vec<u16>,
}

fn written(fc: u8, address: u16, values: &[u16]) -> Written {
    Written {
        fc,
        address,
        values: values.to_vec(),
    }
}

type Tables = std::sync::Arc<std::sync::Mutex<BTreeMap<(u8, u16), u16>>>;

/// tokio-modbus's TCP server in the test process, on a loopback port: the four tables
/// (unset addresses read 0), and every write recorded on a channel after it is applied
/// and before it is answered, so a test awaits the write instead of polling for it.
struct MemServer {
    addr: String,
    tables: Tables,
    writes: Queue<Written>,
    accept: tokio::task::JoinHandle<()>,
}

/// Table keys: the read function codes (1 coils, 2 discrete inputs, 3 holding, 4 input).
const COILS: u8 = 1;
const HOLDING: u8 = 3;
const INPUT: u8 = 4;

impl MemServer {
    async fn start() -> MemServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tables = Tables::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let service = MemService {
            tables: tables.clone(),
            writes: tx,
        };
        let accept = tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = |stream, socket_addr| {
                let service = service.clone();
                async move {
                    tokio_modbus::server::tcp::accept_tcp_connection(
                        stream,
                        socket_addr,
                        move |_| Ok(Some(service.clone())),
                    )
                }
            };
            let _ = server.serve(&on_connected, |_error| {}).await;
        });
        MemServer {
            addr,
            tables,
            writes: Queue::new(rx),
            accept,
        }
    }

    fn set(&self, table: u8, address: u16, words: &[u16]) {
        let mut t = self.tables.lock().unwrap();
        for (i, w) in words.iter().enumerate() {
            t.insert((table, address + i as u16), *w);
        }
    }

    fn get(&self, table: u8, address: u16, count: u16) -> Vec<u16> {
        let t = self.tables.lock().unwrap();
        (address..address + count)
            .map(|a| t.get(&(table, a)).copied().unwrap_or(0))
            .collect()
    }

    /// The next write (kept or new) equal to `want`.
    async fn wait_write(&mut self, want: Written) -> Written {
        let what = format!("the write {want:?}");
        self.writes.wait_for(&what, |w| *w == want, SOON).await
    }
}

impl Drop for MemServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What the server does with one request.
#[derive(Clone)]
struct MemService {
    tables: Tables,
    writes: mpsc::UnboundedSender<Written>,
}

impl tokio_modbus::server::Service for MemService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Option<Response>, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        std::future::ready(self.answer(request.request).map(Some))
    }
}

impl MemService {
    fn read(&self, table: u8, address: u16, n: u16) -> Vec<u16> {
        let t = self.tables.lock().unwrap();
        (address..address + n)
            .map(|a| t.get(&(table, a)).copied().unwrap_or(0))
            .collect()
    }

    fn write(&self, fc: u8, table: u8, address: u16, values: Vec<u16>) {
        let mut t = self.tables.lock().unwrap();
        for (i, v) in values.iter().enumerate() {
            t.insert((table, address + i as u16), *v);
        }
        let _ = self.writes.send(Written {
            fc,
            address,
            values,
        });
    }

    fn answer(&self, request: Request<'static>) -> Result<Response, ExceptionCode> {
        let bits = |words: Vec<u16>| words.into_iter().map(|w| w != 0).collect();
        Ok(match request {
            Request::ReadCoils(a, n) => Response::ReadCoils(bits(self.read(COILS, a, n))),
            Request::ReadDiscreteInputs(a, n) => {
                Response::ReadDiscreteInputs(bits(self.read(2, a, n)))
            }
            Request::ReadHoldingRegisters(a, n) => {
                Response::ReadHoldingRegisters(self.read(HOLDING, a, n))
            }
            Request::ReadInputRegisters(a, n) => {
                Response::ReadInputRegisters(self.read(INPUT, a, n))
            }
            Request::WriteSingleCoil(a, on) => {
                self.write(5, COILS, a, vec![u16::from(on)]);
                Response::WriteSingleCoil(a, on)
            }
            Request::WriteSingleRegister(a, w) => {
                self.write(6, HOLDING, a, vec![w]);
                Response::WriteSingleRegister(a, w)
            }
            Request::WriteMultipleCoils(a, coils) => {
                let n = coils.len() as u16;
                self.write(15, COILS, a, coils.iter().map(|c| u16::from(*c)).collect());
                Response::WriteMultipleCoils(a, n)
            }
            Request::WriteMultipleRegisters(a, words) => {
                let n = words.len() as u16;
                self.write(16, HOLDING, a, words.to_vec());
                Response::WriteMultipleRegisters(a, n)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        })
    }
}

fn f32_words(v: f32) -> Vec<u16> {
    let b = v.to_bits();
    vec![(b >> 16) as u16, b as u16]
}

/// A `[[device]]` with `profile` on the in-process server.
fn mem_device(id: &str, profile: &str, server: &MemServer) -> String {
    format!(
        "[[device]]\nid = \"{id}\"\nprofile = \"{profile}\"\ncem = \"test\"\npoll_interval_s = 1\n\
         measurement_interval_s = 1\n[device.modbus]\ntcp = \"{}\"\ntimeout_ms = 2000\n",
        server.addr
    )
}

async fn ombc_system(conn: &mut CemConn) -> ombc::SystemDescription {
    match conn
        .wait_message(MessageKind::OmbcSystemDescription, SOON)
        .await
    {
        Message::OmbcSystemDescription(s) => *s,
        other => panic!("expected OMBC.SystemDescription, got {:?}", other.kind()),
    }
}

/// The Alfen Eve profile through the daemon: the f32 power register as the measured power;
/// an OMBC step becomes the phases and the f32 max current written with FC16, then
/// SUCCEEDED; a lost CEM writes the profile's default (16 A on 3 phases) back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alfen_eve_measures_follows_a_step_and_releases_on_a_lost_cem() {
    within_test(alfen_eve()).await;
}

async fn alfen_eve() {
    let mut server = MemServer::start().await;
    server.set(HOLDING, 344, &f32_words(7360.5));
    let e = 123456.5f64.to_bits();
    server.set(
        HOLDING,
        374,
        &[
            (e >> 48) as u16,
            (e >> 32) as u16,
            (e >> 16) as u16,
            e as u16,
        ],
    );
    server.set(HOLDING, 1201, &[0x4332, 0, 0, 0, 0]); // "C2": charging
    server.set(HOLDING, 1210, &f32_words(16.0));
    server.set(HOLDING, 1215, &[3]);
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let mut daemon = Daemon::start(&config(
        &cem,
        &[mem_device("eve", "modbus-alfen-eve", &server)],
    ));
    let mut conn = connect(&mut cem, 1).await.remove("eve").unwrap();

    conn.select_ready(OMBC).await;
    conn.wait_power("the Eve's 7360.5 W", |w| near(w, 7360.5), SOON)
        .await;
    let system = ombc_system(&mut conn).await;
    assert_ombc_modes(&system);
    // Rule 3: reading never writes.
    assert_eq!(
        server.writes.try_next(),
        None,
        "written before any instruction"
    );

    // 6 A on one phase: phases first, then the f32 current, both FC16.
    let step = ombc_instruction(&system, "6 A on 1 phase(s)");
    let id = step.id;
    conn.instruct(step).await;
    server.wait_write(written(16, 1215, &[1])).await;
    server.wait_write(written(16, 1210, &f32_words(6.0))).await;
    let last = await_status(&mut conn, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await;
    assert_eq!(last, "SUCCEEDED", "{:?}", statuses_of(&conn, id));
    assert_eq!(server.get(HOLDING, 1210, 2), f32_words(6.0));
    assert_eq!(server.get(HOLDING, 1215, 1), [1]);

    // The CEM dies: the charger goes back to the default, 16 A on 3 phases.
    cem.kill().await;
    server.wait_write(written(16, 1215, &[3])).await;
    server.wait_write(written(16, 1210, &f32_words(16.0))).await;
    assert_eq!(server.get(HOLDING, 1210, 2), f32_words(16.0));
    assert_eq!(server.get(HOLDING, 1215, 1), [3]);
    daemon.assert_running();
}

/// The SG-Ready profile through the daemon: OMBC offers the four states; "forced" becomes
/// both coils on with FC5, then SUCCEEDED; a lost CEM turns the coils back to "normal".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sg_ready_switches_coils_and_returns_to_normal_on_a_lost_cem() {
    within_test(sg_ready()).await;
}

async fn sg_ready() {
    let mut server = MemServer::start().await;
    server.set(COILS, 0, &[0, 0]);
    server.set(INPUT, 0, &[1800]);
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let mut daemon = Daemon::start(&config(
        &cem,
        &[mem_device("hp", "modbus-sg-ready", &server)],
    ));
    let mut conn = connect(&mut cem, 1).await.remove("hp").unwrap();

    conn.select_ready(OMBC).await;
    conn.wait_power("the heat pump's 1800 W", |w| near(w, 1800.0), SOON)
        .await;
    let system = ombc_system(&mut conn).await;
    let labels: Vec<String> = system
        .operation_modes
        .iter()
        .filter_map(|m| m.diagnostic_label.clone())
        .collect();
    let forced = "SG-Ready 4: switch-on command";
    for want in [
        "SG-Ready 1: blocked by the utility",
        "SG-Ready 2: normal operation",
        "SG-Ready 3: switch-on recommended",
        forced,
    ] {
        assert!(labels.iter().any(|l| l == want), "no {want}: {labels:?}");
    }
    assert_eq!(
        server.writes.try_next(),
        None,
        "written before any instruction"
    );

    // Forced: relay 1 and relay 2 on, each with FC5.
    let step = ombc_instruction(&system, forced);
    let id = step.id;
    conn.instruct(step).await;
    server.wait_write(written(5, 0, &[1])).await;
    server.wait_write(written(5, 1, &[1])).await;
    let last = await_status(&mut conn, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await;
    assert_eq!(last, "SUCCEEDED", "{:?}", statuses_of(&conn, id));
    assert_eq!(server.get(COILS, 0, 2), [1, 1]);

    // The CEM dies: both relays off, SG-Ready "normal".
    cem.kill().await;
    server.wait_write(written(5, 0, &[0])).await;
    server.wait_write(written(5, 1, &[0])).await;
    assert_eq!(server.get(COILS, 0, 2), [0, 0], "not back to normal");
    let mut all = Vec::new();
    while let Some(w) = server.writes.try_next() {
        all.push(w);
    }
    assert!(
        all.iter().all(|w| w.fc == 5),
        "a coil write not with FC5: {all:?}"
    );
    daemon.assert_running();
}

// ----------------------------------------------------------------------------------------
// Modbus TCP proxy
// ----------------------------------------------------------------------------------------

/// The owner's other Modbus tool: adapters/modbus/tests/peers/modbus_client.py (pymodbus),
/// one connection kept open, one JSON request and answer a line.
struct Tool {
    stdin: tokio::process::ChildStdin,
    answers: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    _child: Child,
}

impl Tool {
    async fn start(port: u16) -> Tool {
        let script = common::workspace().join("adapters/modbus/tests/peers/modbus_client.py");
        let mut child = Command::new(common::python())
            .arg(&script)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the pymodbus client {script:?}: {e}"));
        Tool {
            stdin: child.stdin.take().unwrap(),
            answers: BufReader::new(child.stdout.take().unwrap()).lines(),
            _child: child,
        }
    }

    async fn ask(&mut self, request: Value) -> Value {
        use tokio::io::AsyncWriteExt;
        let line = format!("{request}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(SOON, self.answers.next_line())
            .await
            .unwrap_or_else(|_| panic!("no answer to {request}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the client exited before answering {request}"));
        serde_json::from_str(&answer).unwrap()
    }

    async fn write(&mut self, address: u16, values: &[u16]) -> Value {
        self.ask(serde_json::json!({"write": "hr", "address": address, "values": values}))
            .await
    }
}

/// The port the daemon's proxy listens on, from its log.
async fn proxy_port(daemon: &mut Daemon) -> u16 {
    let line = daemon
        .wait_log(
            "the proxy listening",
            |l| l.contains("modbus proxy listening on"),
            SOON,
        )
        .await;
    let after = line.split("listening on 127.0.0.1:").nth(1).unwrap();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// An inverter that accepts one Modbus TCP client (pymodbus, 1+103+123): s2gw polls it
/// and re-exports it; the owner's tool reads through the proxy at the same time and gets
/// the device's values, while connecting directly is refused. A write inside
/// `proxy_writable` lands; one outside is refused with exception 02, and one to the
/// limit registers while the CEM's limit is active with exception 06, without reaching
/// the device; once the lost CEM's limit is released they are writable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_client_inverter_is_shared_through_the_proxy_and_guarded_while_instructed() {
    within_test(proxy()).await;
}

async fn proxy() {
    let mut peer = Peer::start(&["sunspec", "--models", "1,103,123", "--single-client"]).await;
    let m103 = model_at(40000, &CHAIN_123, 103);
    let m123 = model_at(40000, &CHAIN_123, 123);
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    // Model 123 from Conn_WinTms (offset 2) to WMaxLim_Ena (9) may be written by others.
    let extra = format!(
        "sunspec = {{ rated_w = 5000 }}\nproxy_listen = \"127.0.0.1:0\"\n\
         proxy_writable = [{{ table = \"holding\", address = {}, count = 8 }}]",
        m123 + 2
    );
    let mut daemon = Daemon::start(&config(
        &cem,
        &[device("pv", "modbus-sunspec-inverter", &peer, &extra)],
    ));
    let port = proxy_port(&mut daemon).await;
    let mut conn = connect(&mut cem, 1).await.remove("pv").unwrap();
    conn.select_ready(NC).await;
    conn.wait_power("-1234.5 W", |w| near(w, -1234.5), SOON)
        .await;

    // The device takes one client: the owner's tool cannot reach it directly...
    let mut direct = Tool::start(peer.port).await;
    let answer = direct
        .ask(serde_json::json!({"read": "hr", "address": m103 + 14, "count": 2}))
        .await;
    assert!(answer.get("values").is_none(), "{answer}");
    peer.refused
        .wait_for("the direct client refused", |_| true, SOON)
        .await;
    // ...but through the proxy, while the gateway polls every second.
    let mut tool = Tool::start(port).await;
    let answer = tool
        .ask(serde_json::json!({"reads": 40, "read": "hr", "address": m103 + 14, "count": 2}))
        .await;
    let all = answer["all"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(all.len(), 40);
    assert!(
        all.iter().all(|v| *v == serde_json::json!([12345, 0xFFFF])),
        "{answer}"
    );
    let marker = tool
        .ask(serde_json::json!({"read": "hr", "address": 40000, "count": 2}))
        .await;
    assert_eq!(marker["values"], serde_json::json!([0x5375, 0x6E53]));
    // The gateway keeps measuring.
    conn.wait_power(
        "-1234.5 W after the tool's reads",
        |w| near(w, -1234.5),
        SOON,
    )
    .await;

    // Allowed: lands on the device.
    assert_eq!(tool.write(m123 + 2, &[30]).await["ok"], true);
    peer.wait_write(seen(16, m123 + 2, &[30])).await;
    // Not in proxy_writable: illegal data address, never sent.
    assert_eq!(tool.write(40004, &[1]).await["exception"], 2);

    // A CEM limit is active: its registers are the gateway's.
    let constraints = conn.select_pebc(SOON).await;
    let id = limit(&mut conn, &constraints, 2500.0).await;
    assert_eq!(
        await_status(&mut conn, id, &["SUCCEEDED", "ABORTED", "REJECTED"]).await,
        "SUCCEEDED"
    );
    peer.wait_write(seen(16, m123 + 9, &[1])).await;
    peer.writes.clear();
    for (address, value) in [(m123 + 9, 0), (m123 + 5, 1000), (m123 + 7, 0)] {
        assert_eq!(
            tool.write(address, &[value]).await["exception"],
            6,
            "a write to {address} while the limit is active"
        );
    }
    let limit_regs = tool
        .ask(serde_json::json!({"read": "hr", "address": m123 + 5, "count": 5}))
        .await;
    assert_eq!(limit_regs["values"], serde_json::json!([500, 0, 120, 0, 1]));
    assert_eq!(
        peer.writes.try_next(),
        None,
        "a refused write reached the device"
    );
    // Outside the claimed registers the writable range stays writable.
    assert_eq!(tool.write(m123 + 2, &[31]).await["ok"], true);
    let refusals = daemon
        .logs()
        .iter()
        .filter(|l| l.contains("modbus proxy:") && l.contains("refused"))
        .count();
    assert!(refusals >= 1, "refused writes are logged");

    // The CEM is lost: the limit is released, and the registers are free again.
    cem.kill().await;
    peer.wait_write(seen(16, m123 + 9, &[0])).await;
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let answer = tool.write(m123 + 5, &[800]).await;
        if answer["ok"] == true {
            break;
        }
        assert_eq!(answer["exception"], 6, "{answer}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after the release"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peer.wait_write(seen(16, m123 + 5, &[800])).await;
    assert_eq!(
        peer.refused.try_next(),
        None,
        "the device turned away a client besides the direct one"
    );
    daemon.assert_running();
}

// ----------------------------------------------------------------------------------------
// s2gw modbus detect
// ----------------------------------------------------------------------------------------

/// `s2gw modbus detect` on loopback: a SunSpec inverter, a SunSpec battery, an SDM630, an
/// ABB Terra AC, a go-eCharger, a KEBA P30 (unit 255), and SolarEdge, SMA and Fronius
/// (SunSpec, told apart by the maker's name) simulators are each found with the right
/// profile; a Modbus server that
/// is none of them and a closed port are listed as not identified. The printed devices,
/// pasted under a gateway and CEM section, pass `s2gw check` and measure in the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_detect_finds_every_simulator_and_proposes_a_config_that_works() {
    within_test(detect()).await;
}

async fn detect() {
    let inverter = Peer::start(&["sunspec", "--models", "1,103,123"]).await;
    let battery = Peer::start(&["sunspec", "--base", "50000", "--models", "1,103,124"]).await;
    let meter = Peer::start(&["sdm630"]).await;
    let charger = Peer::start(&["abb"]).await;
    let goe = Peer::start(&["goe"]).await;
    let keba = Peer::start(&["keba"]).await;
    let solaredge = Peer::start(&["solaredge"]).await;
    let sma = Peer::start(&["sma"]).await;
    let fronius = Peer::start(&["fronius"]).await;
    let stranger = MemServer::start().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let stranger_port = stranger.addr.rsplit_once(':').unwrap().1.to_string();
    let ports = [
        inverter.port.to_string(),
        battery.port.to_string(),
        meter.port.to_string(),
        charger.port.to_string(),
        goe.port.to_string(),
        keba.port.to_string(),
        solaredge.port.to_string(),
        sma.port.to_string(),
        fronius.port.to_string(),
        stranger_port.clone(),
        closed.to_string(),
    ]
    .join(",");
    let (ok, out, err) = s2gw(&[
        "modbus",
        "detect",
        "--host",
        "127.0.0.1",
        "--port",
        &ports,
        "--timeout-ms",
        "500",
        "--cem",
        "test",
    ])
    .await;
    assert!(ok, "detect failed: {err}\n{out}");
    for (peer, profile, unit) in [
        (&inverter, "modbus-sunspec-inverter", 1),
        (&battery, "modbus-sunspec-storage", 1),
        (&meter, "modbus-sdm630", 1),
        (&charger, "modbus-abb-terra-ac", 1),
        (&goe, "modbus-go-e", 1),
        // The KEBA's profile sets unit 255; the SolarEdge is SunSpec with SolarEdge's
        // name in its common model.
        (&keba, "modbus-keba-p30", 255),
        (&solaredge, "modbus-solaredge", 1),
        // SunSpec with a maker's name in the common model: the maker's profile (the
        // SMA chain has a model 124, which alone would mean a battery).
        (&sma, "modbus-sma", 1),
        (&fronius, "modbus-fronius", 1),
    ] {
        let want = format!(
            "profile = \"{profile}\"\ncem = \"test\"\n[device.modbus]\ntcp = \"{}\"\nunit = {unit}\n",
            peer.addr()
        );
        assert!(
            out.contains(&want),
            "no {profile} at {}:\n{out}",
            peer.addr()
        );
    }
    assert!(
        out.contains("SunSpec at 40000, models 1, 103, 123"),
        "{out}"
    );
    assert!(
        out.contains("SunSpec at 50000, models 1, 103, 124"),
        "{out}"
    );
    let unknown = out.split("# Not identified:\n").nth(1).unwrap_or_default();
    assert!(
        unknown.contains(&format!(
            "127.0.0.1:{stranger_port}: answers, but not identified"
        )),
        "{out}"
    );
    assert!(
        unknown.contains(&format!("127.0.0.1:{closed}: connection to")),
        "{out}"
    );
    assert_eq!(out.matches("[[device]]").count(), 9, "{out}");

    // The proposal is a config: check accepts it, the daemon runs it.
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let text = config(&cem, std::slice::from_ref(&out));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s2gw.toml");
    std::fs::write(
        &path,
        text.replace("@STATE_DIR@", &dir.path().display().to_string()),
    )
    .unwrap();
    let (ok, check_out, check_err) = s2gw(&["check", "-c", path.to_str().unwrap()]).await;
    assert!(
        ok,
        "s2gw check refused the proposal: {check_out}{check_err}\n{out}"
    );
    let _daemon = Daemon::start(&text);
    let mut conns = connect(&mut cem, 9).await;
    let expected = [
        ("go-e", 3600.0),
        ("keba-p30", 7360.0),
        ("solaredge", -1234.5),
        ("sma", -1234.5),
        ("fronius", -1234.5),
        ("sunspec-inverter", -1234.5),
        ("sunspec-storage", -1234.5),
        ("sdm630", 1100.25),
        ("abb-terra-ac", 11040.0),
    ];
    for (prefix, watts) in expected {
        let (name, conn) = conns
            .iter_mut()
            .find(|(n, _)| n.starts_with(prefix))
            .unwrap_or_else(|| panic!("no device {prefix}*"));
        conn.select_ready(NC).await;
        let w = conn
            .wait_power(&format!("{name}: {watts} W"), |w| near(w, watts), SOON)
            .await;
        assert!(near(w, watts), "{name}: {w}");
    }
}
