//! RTU framing against pymodbus 3.16 servers that speak RTU frames (CRC, no MBAP header):
//! over a TCP socket (`Target::RtuOverTcp`, a serial-to-Ethernet converter in transparent
//! mode), and over a real serial line: a pseudo-terminal that `socat` links to the same
//! kind of server (`Target::Rtu`, through tokio-serial).

// Helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{PyPeer, Seen, fast_settings, profile};
use s2gw_core::{Command, Device};
use s2gw_modbus::bus::Bus;
use s2gw_modbus::map::MapDevice;
use s2gw_modbus::point::Unit;
use s2gw_modbus::target::{Parity, SerialLine};
use s2gw_modbus::{ModbusError, Table, Target, ValueType, WordOrder, read_raw};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command as Process};

/// Every test is bounded.
async fn bounded<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("the test took too long")
}

/// Unit 1 on a private bus to `target`.
fn unit_on(target: Target) -> Unit {
    Unit {
        bus: Arc::new(Bus::private(&target, fast_settings())),
        id: 1,
        timeout: Duration::from_millis(1000),
    }
}

/// The SDM630 meter's readings and the ABB charger's current setpoint (written with FC16,
/// read back) through `target`; `abb` sees the writes.
async fn sdm630_and_abb(sdm630: Target, abb_target: Target, abb: &mut PyPeer) {
    let mut meter = MapDevice::new("meter", unit_on(sdm630), &profile("modbus-sdm630"));
    let r = meter.read().await.unwrap();
    assert_eq!(r.power_w, 1100.25);
    assert_eq!(r.phase_power_w, Some([1000.5, -200.25, 300.0]));
    assert_eq!(r.energy_wh, Some(12345.5 * 1000.0));

    let mut charger = MapDevice::new("abb", unit_on(abb_target), &profile("modbus-abb-terra-ac"));
    let r = charger.read().await.unwrap();
    assert_eq!(r.power_w, 11040.0);
    charger
        .apply(&Command::SetCurrent {
            amps: 10.0,
            phases: 3,
        })
        .await
        .unwrap();
    assert_eq!(
        abb.writes().await,
        vec![Seen {
            fc: 16,
            address: 0x4100,
            values: vec![0, 10000]
        }]
    );
    // What the server holds, read over RTU framing on a connection of its own (the
    // serial line is the charger bus's: a serial port has one user at a time).
    let held = read_raw(
        Target::RtuOverTcp(abb.addr()),
        1,
        Table::Holding,
        0x4100,
        2,
        ValueType::U16,
        WordOrder::HighFirst,
    )
    .await
    .unwrap();
    assert_eq!(held.words, [0, 10000]);
}

#[tokio::test]
async fn rtu_over_tcp_reads_a_meter_and_writes_a_charger() {
    bounded(async {
        let sdm = PyPeer::start(&["sdm630", "--framer", "rtu"]).await;
        let mut abb = PyPeer::start(&["abb", "--framer", "rtu"]).await;
        sdm630_and_abb(
            Target::RtuOverTcp(sdm.addr()),
            Target::RtuOverTcp(abb.addr()),
            &mut abb,
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn mbap_against_an_rtu_server_fails_instead_of_misreading() {
    bounded(async {
        // The framings differ: talking MBAP to an RTU server (a wrong `tcp =` for a
        // converter) must be an error, never values.
        let sdm = PyPeer::start(&["sdm630", "--framer", "rtu"]).await;
        let mut meter = MapDevice::new(
            "meter",
            unit_on(Target::Tcp(sdm.addr())),
            &profile("modbus-sdm630"),
        );
        let result = meter.read().await;
        assert!(result.is_err(), "MBAP read an RTU server: {result:?}");
    })
    .await;
}

/// `socat` linking a pseudo-terminal at `link` to a TCP endpoint: a serial line whose
/// far end is the pymodbus RTU server. Killed on drop.
struct SerialBridge {
    _child: Child,
    link: PathBuf,
}

impl Drop for SerialBridge {
    fn drop(&mut self) {
        // socat removes its link when it exits cleanly; a kill leaves it behind.
        let _ = std::fs::remove_file(&self.link);
    }
}

/// A path in the temporary directory no other test (or run) uses.
fn unique_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("s2gw-{name}-{}-{n}", std::process::id()))
}

impl SerialBridge {
    async fn start(tcp: &str) -> SerialBridge {
        let link = unique_path("ttyRTU");
        let mut child = Process::new("socat")
            .args(["-d", "-d"])
            .arg(format!("pty,raw,echo=0,link={}", link.display()))
            .arg(format!("tcp:{tcp}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start socat (apt-get install socat) for the serial RTU test: {e}")
            });
        // Ready: socat says so once the pty exists and the TCP side is connected.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("starting data transfer loop") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "socat never linked the pty to {tcp}");
        // Keep draining its stderr so socat never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        SerialBridge {
            _child: child,
            link,
        }
    }

    fn target(&self) -> Target {
        Target::Rtu(SerialLine {
            path: self.link.display().to_string(),
            baud: 19200,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        })
    }
}

#[tokio::test]
async fn serial_rtu_on_a_pty_reads_a_meter_and_writes_a_charger() {
    bounded(async {
        let sdm = PyPeer::start(&["sdm630", "--framer", "rtu"]).await;
        let mut abb = PyPeer::start(&["abb", "--framer", "rtu"]).await;
        let sdm_line = SerialBridge::start(&sdm.addr()).await;
        let abb_line = SerialBridge::start(&abb.addr()).await;
        sdm630_and_abb(sdm_line.target(), abb_line.target(), &mut abb).await;
    })
    .await;
}

#[tokio::test]
async fn a_missing_serial_device_is_a_connect_error_naming_it() {
    bounded(async {
        let path = unique_path("ttyNONE").display().to_string();
        let target = Target::Rtu(SerialLine {
            path: path.clone(),
            baud: 9600,
            parity: Parity::Even,
            data_bits: 8,
            stop_bits: 1,
        });
        let err = read_raw(
            target,
            1,
            Table::Holding,
            0,
            1,
            ValueType::U16,
            WordOrder::HighFirst,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, ModbusError::Connect { target, .. } if target.contains(&path)),
            "{err}"
        );
    })
    .await;
}
