//! End-to-end through the gateway: a BTHome power meter advertised by a mocked BlueZ
//! (python3-dbusmock's `bluez5` template on a private system bus, started by
//! adapters/ble/tests/peers/bluez_mock.py) reaches the s2-kit test CEM as PowerMeasurements
//! through the s2gw daemon process; and without BlueZ the BLE device is named in the log
//! while the other devices carry on.
//!
//! Needs dbus-daemon and python3-dbusmock (Debian: `apt-get install dbus python3-dbusmock`;
//! `.ci/run` installs them). The Python is `S2GW_TEST_DBUSMOCK_PYTHON`, else
//! /usr/bin/python3. A missing piece fails the test with a message saying what to install.
//! Only built with the `ble` feature: without it the gateway refuses BLE devices (see
//! tests/config_errors.rs and the README).
#![cfg(feature = "ble")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use common::{Daemon, GUARD, TestCem};
use s2_kit::types::ProtocolVersion;
use s2_kit::types::common::ControlType;
use s2gw_ble::bthome::{SERVICE_UUID, encode};

const METER: &str = "54:48:E6:8F:80:A5";
const SOON: Duration = Duration::from_secs(20);

/// The mocked BlueZ: a private bus with `hci0` and one BTHome meter.
struct MockBluez {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    address: String,
}

impl MockBluez {
    /// Start the mock with the meter advertising BTHome `objects` (plain, packet id 1).
    fn start(objects: &[u8]) -> MockBluez {
        let python = std::env::var("S2GW_TEST_DBUSMOCK_PYTHON")
            .unwrap_or_else(|_| "/usr/bin/python3".into());
        let script = common::workspace().join("adapters/ble/tests/peers/bluez_mock.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .args([METER, "BTHome meter", &SERVICE_UUID.to_string()])
            .arg(hex(&encode(objects, [0; 6], None, 0, false)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} for the BlueZ mock: {e}"));
        let mut output = BufReader::new(child.stdout.take().unwrap());
        // The helper prints the bus address once BlueZ is mocked, or dies trying.
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        let address = line
            .trim()
            .strip_prefix("DBUS_SYSTEM_BUS_ADDRESS=")
            .unwrap_or_else(|| {
                panic!(
                    "the BlueZ mock did not start (needs dbus-daemon and python3-dbusmock: \
                     apt-get install dbus python3-dbusmock); its stderr is above"
                )
            })
            .to_string();
        let input = child.stdin.take().unwrap();
        MockBluez {
            child,
            input,
            output,
            address,
        }
    }

    /// A new advertisement from the meter (PropertiesChanged on the mocked bus).
    fn advertise(&mut self, objects: &[u8], packet_id: u8) {
        let mut plain = vec![0x00, packet_id];
        plain.extend_from_slice(objects);
        let command = format!(
            "adv {METER} {SERVICE_UUID} {}",
            hex(&encode(&plain, [0; 6], None, 0, false))
        );
        writeln!(self.input, "{command}").unwrap();
        let mut answer = String::new();
        self.output.read_line(&mut answer).unwrap();
        assert_eq!(answer.trim(), "ok", "the mock refused `{command}`");
    }
}

impl Drop for MockBluez {
    fn drop(&mut self) {
        // `quit` lets the helper stop its dbus-daemon and mock; killing it at once would
        // orphan them. Killing is the fallback for a helper that does not finish.
        let _ = writeln!(self.input, "quit");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn config(cem: &TestCem, extra: &str) -> String {
    format!(
        "[gateway]\nname = \"s2gw-e2e-ble\"\nstate_dir = \"@STATE_DIR@\"\n\n\
         [cem.test]\ntransport = \"ws-client\"\nurl = \"{}\"\n\n\
         [[device]]\nid = \"plug\"\nprofile = \"ble-bthome-meter\"\ncem = \"test\"\n\
         poll_interval_s = 1\nmeasurement_interval_s = 1\n\
         [device.ble]\naddress = \"{METER}\"\n{extra}",
        cem.url()
    )
}

async fn within_test<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(90), future)
        .await
        .expect("the test took too long")
}

/// BTHome power 1234.56 W (object 0x0B, 0.01 W, 24 bit) → PowerMeasurement 1234.56 W;
/// then a new advertisement with 50 W follows through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bthome_power_reading_reaches_the_cem_as_a_power_measurement() {
    within_test(bthome_to_cem()).await;
}

async fn bthome_to_cem() {
    let mut mock = MockBluez::start(&[0x00, 0x01, 0x0B, 0x40, 0xE2, 0x01]);
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let bus = mock.address.clone();
    let mut daemon =
        Daemon::start_with_env(&config(&cem, ""), &[("DBUS_SYSTEM_BUS_ADDRESS", &bus)]);
    daemon
        .wait_log(
            "the start-up BlueZ check",
            |l| l.contains("BLE ready") && l.contains("plug"),
            SOON,
        )
        .await;
    let mut conn = cem.next_conn(GUARD).await;
    let (_, details) = conn.handshake().await;
    assert_eq!(details.name.as_deref(), Some("plug"));
    assert_eq!(
        details.available_control_types,
        [ControlType::NotControllable]
    );
    conn.select_ready(ControlType::NotControllable).await;
    let w = conn
        .wait_power(
            "the BTHome meter's 1234.56 W",
            |w| (w - 1234.56).abs() < 0.001,
            SOON,
        )
        .await;
    assert!((w - 1234.56).abs() < 0.001, "{w}");

    // Power 50 W (0x001388 × 0.01), packet id 2.
    mock.advertise(&[0x0B, 0x88, 0x13, 0x00], 2);
    conn.wait_power(
        "the next advertisement's 50 W",
        |w| (w - 50.0).abs() < 0.001,
        SOON,
    )
    .await;
    daemon.assert_running();
}

/// No BlueZ on the bus: the start-up check names the BLE device; a sim device on the same
/// gateway is measured all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_bluez_the_ble_device_is_named_and_the_others_keep_running() {
    within_test(no_bluez()).await;
}

async fn no_bluez() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = format!("unix:path={}", dir.path().join("no-bus").display());
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let meter = "[[device]]\nid = \"sim-meter\"\nprofile = \"sim-meter\"\ncem = \"test\"\n\
                 poll_interval_s = 1\nmeasurement_interval_s = 1\n[device.sim]\nmodel = \"meter\"\n";
    let mut daemon = Daemon::start_with_env(
        &config(&cem, meter),
        &[("DBUS_SYSTEM_BUS_ADDRESS", &nowhere)],
    );
    let line = daemon
        .wait_log(
            "the BLE start-up error",
            |l| l.contains("BLE unavailable"),
            SOON,
        )
        .await;
    assert!(
        line.contains("`plug`"),
        "the error must name the device: {line}"
    );
    // Both resources connect; the sim meter is measured.
    let conns = cem.conns(2, GUARD).await;
    let mut measured = false;
    for (_, mut conn) in conns {
        let (_, details) = conn.handshake().await;
        if details.name.as_deref() == Some("sim-meter") {
            conn.select_ready(ControlType::NotControllable).await;
            conn.wait_power("the sim meter's power", |_| true, SOON)
                .await;
            measured = true;
        }
    }
    assert!(measured, "the sim meter never connected");
    daemon.assert_running();
}
