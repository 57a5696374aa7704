//! The BLE adapter against a mocked BlueZ (python-dbusmock's `bluez5` template) on a
//! private D-Bus bus: scanning finds a device whose service data carries a BTHome power
//! reading, and the reading comes out of the `Device` as `Readings.power_w`.
//!
//! Needs dbus-daemon and python3-dbusmock (Debian: `apt-get install dbus python3-dbusmock`);
//! the Python running tests/peers/bluez_mock.py is `S2GW_TEST_DBUSMOCK_PYTHON`, else
//! /usr/bin/python3. Missing pieces FAIL the test with a message saying what to install.

#![cfg(feature = "bluez")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use s2gw_ble::bthome::{SERVICE_UUID, encode};
use s2gw_ble::config::BindKeyText;
use s2gw_ble::{BindKey, BleConnection, BleError, BleProfile, build, check_bluez};
use s2gw_core::hex::encode as hex;
use s2gw_core::{DeviceError, DeviceStatus, Readings};

const METER: &str = "54:48:E6:8F:80:A5";
const SECRET_METER: &str = "54:48:E6:8F:80:A6";
const KEY: &str = "231d39c1d7cc1ab1aee224cd096db932";

/// The mocked BlueZ, shared by every test of this binary, driven over the helper's stdin.
struct MockBluez {
    _child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl MockBluez {
    fn send(&mut self, command: &str) {
        writeln!(self.input, "{command}").unwrap();
        let mut answer = String::new();
        self.output.read_line(&mut answer).unwrap();
        assert_eq!(answer.trim(), "ok", "mock refused `{command}`");
    }
}

/// Start the mock once and point this process's system bus at it. Setting the variable
/// happens inside the `OnceLock` initialiser, before any test of this binary has touched
/// D-Bus or started a runtime (each test calls `mock()` first), so no thread reads the
/// environment meanwhile.
fn mock() -> &'static Mutex<MockBluez> {
    static MOCK: OnceLock<Mutex<MockBluez>> = OnceLock::new();
    MOCK.get_or_init(|| {
        let python = std::env::var("S2GW_TEST_DBUSMOCK_PYTHON")
            .unwrap_or_else(|_| "/usr/bin/python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/bluez_mock.py");
        // Power 1234.56 W, packet id 1, plain.
        let first = hex(&encode(
            &[0x00, 0x01, 0x0B, 0x40, 0xE2, 0x01],
            [0; 6],
            None,
            0,
            false,
        ));
        let mut child = Command::new(&python)
            .args([
                script,
                METER,
                "BTHome meter",
                &SERVICE_UUID.to_string(),
                &first,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} for the BlueZ mock: {e}"));
        let mut output = BufReader::new(child.stdout.take().unwrap());
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
            });
        // SAFETY: see the function doc: no other thread exists that reads the environment.
        unsafe { std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", address) };
        let input = child.stdin.take().unwrap();
        Mutex::new(MockBluez {
            _child: child,
            input,
            output,
        })
    })
}

/// Read until `done` holds for the readings, or fail after 15 s with the last result.
async fn read_until(
    device: &mut Box<dyn s2gw_core::Device>,
    done: impl Fn(&Result<Readings, DeviceError>) -> bool,
) -> Result<Readings, DeviceError> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = device.read().await;
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting; last read: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn power_is(watts: f64) -> impl Fn(&Result<Readings, DeviceError>) -> bool {
    move |r| matches!(r, Ok(r) if r.status == DeviceStatus::Ok && r.power_w == watts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bthome_power_reading_reaches_the_device_readings() {
    let mock = mock();
    assert!(
        check_bluez(Some("hci0"), &["meter"])
            .await
            .unwrap()
            .starts_with("hci0")
    );
    let mut meter = build(
        "meter",
        &BleConnection::with_address(METER),
        &BleProfile::bthome(),
    );
    assert!(
        meter
            .info()
            .control
            .contains(&s2gw_core::device::ControlCapability::NotControllable)
    );

    // The advertisement BlueZ already holds.
    let r = read_until(&mut meter, power_is(1234.56)).await.unwrap();
    assert_eq!(r.energy_wh, None);

    // A new advertisement (PropertiesChanged): power 50 W and energy 1.5 kWh.
    let next = encode(
        &[0x00, 0x02, 0x0A, 0xDC, 0x05, 0x00, 0x0B, 0x88, 0x13, 0x00],
        [0; 6],
        None,
        0,
        false,
    );
    mock.lock()
        .unwrap()
        .send(&format!("adv {METER} {SERVICE_UUID} {}", hex(&next)));
    let r = read_until(&mut meter, power_is(50.0)).await.unwrap();
    assert_eq!(r.energy_wh, Some(1500.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_sensor_found_by_name_decrypts_with_its_bindkey() {
    let mock = mock();
    let key = BindKey::from_hex(KEY).unwrap();
    let address = s2gw_ble::config::parse_address(SECRET_METER).unwrap();
    // Signed power -10 W (production), counter 7.
    let sealed = encode(
        &[0x5C, 0x18, 0xFC, 0xFF, 0xFF],
        address,
        Some(&key),
        7,
        false,
    );
    {
        let mut m = mock.lock().unwrap();
        m.send(&format!("add {SECRET_METER} Secret meter"));
        m.send(&format!(
            "adv {SECRET_METER} {SERVICE_UUID} {}",
            hex(&sealed)
        ));
    }
    let connection = BleConnection {
        name: Some("Secret meter".into()),
        bindkey: Some(BindKeyText::new(KEY)),
        ..BleConnection::default()
    };
    let mut meter = build("secret", &connection, &BleProfile::bthome());
    read_until(&mut meter, power_is(-10.0)).await.unwrap();

    // The same sensor without its key: an error naming the device and the reason.
    let keyless = BleConnection {
        bindkey: None,
        ..connection
    };
    let mut blind = build("blind", &keyless, &BleProfile::bthome());
    let r = read_until(&mut blind, |r| r.is_err()).await;
    let Err(DeviceError::Unreachable(why)) = r else {
        panic!("{r:?}")
    };
    assert!(
        why.contains("`blind`") && why.contains("no bindkey"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_adapter_is_an_error_naming_the_ble_devices() {
    let _ = mock();
    let err = check_bluez(Some("hci9"), &["meter", "relay"])
        .await
        .unwrap_err();
    assert!(matches!(err, BleError::NoAdapter { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("`hci9`") && text.contains("hci0") && text.contains("`meter`, `relay`"),
        "{text}"
    );

    let connection = BleConnection {
        adapter: Some("hci9".into()),
        ..BleConnection::with_address(METER)
    };
    let mut meter = build("meter", &connection, &BleProfile::bthome());
    let r = read_until(&mut meter, |r| r.is_err()).await;
    let Err(DeviceError::Unreachable(why)) = r else {
        panic!("{r:?}")
    };
    assert!(
        why.starts_with("BLE device `meter`: no Bluetooth adapter"),
        "{why}"
    );
}
