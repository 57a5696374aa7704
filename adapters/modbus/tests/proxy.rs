//! The Modbus TCP proxy against tokio-modbus's server in-process, with a tokio-modbus
//! client as the foreign tool: reads through the gateway's bus (shared with its own
//! reads, cached when asked), unit ids passed through and mapped, writes refused outside
//! `proxy_writable` and while the gateway controls a register. The daemon-level test
//! against a single-client pymodbus inverter is in tests/e2e_modbus.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::FaultServer;
use s2gw_modbus::bus::{Bus, Table};
use s2gw_modbus::config::WritableRange;
use s2gw_modbus::point::{Span, Unit};
use s2gw_modbus::{ModbusConnection, Target, start_proxy};
use tokio_modbus::client::{Context, Reader, Writer, tcp};
use tokio_modbus::{ExceptionCode, Slave};

/// A device connection to `server` with a proxy on a free loopback port.
fn connection(server: &FaultServer, tweak: impl FnOnce(&mut ModbusConnection)) -> ModbusConnection {
    let mut c = ModbusConnection::tcp(&server.addr, 1);
    c.proxy_listen = Some("127.0.0.1:0".to_string());
    tweak(&mut c);
    c
}

async fn proxy(id: &str, c: &ModbusConnection) -> SocketAddr {
    start_proxy(id, c).await.unwrap().expect("a proxy listener")
}

async fn client(at: SocketAddr, unit: u8) -> Context {
    tcp::connect_slave(at, Slave(unit)).await.unwrap()
}

/// The gateway's own unit on the shared bus the proxy uses.
fn gateway_unit(c: &ModbusConnection) -> Unit {
    Unit {
        bus: Bus::shared(&c.target().unwrap(), c.bus_settings()),
        id: c.unit(),
        timeout: Duration::from_secs(1),
    }
}

fn reads(server: &FaultServer) -> usize {
    server.log().iter().filter(|(_, fc, _)| *fc == 3).count()
}

#[tokio::test]
async fn proxied_reads_are_answered_from_a_gateway_read_no_older_than_the_cache_age() {
    let server = FaultServer::start().await;
    server.set(
        Table::Holding,
        100,
        &[10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
    );
    let c = connection(&server, |c| c.proxy_cache_ms = Some(60_000));
    let at = proxy("cached", &c).await;
    let gateway = gateway_unit(&c);
    assert_eq!(
        gateway.read_words(Table::Holding, 100, 8).await.unwrap(),
        [10, 11, 12, 13, 14, 15, 16, 17]
    );
    assert_eq!(reads(&server), 1);
    let mut tool = client(at, 1).await;
    for _ in 0..20 {
        let words = tool.read_holding_registers(102, 3).await.unwrap().unwrap();
        assert_eq!(words, [12, 13, 14]);
    }
    assert_eq!(
        reads(&server),
        1,
        "reads covered by the gateway's read cost the device nothing"
    );
    // Not covered: asked of the device.
    let words = tool.read_holding_registers(106, 4).await.unwrap().unwrap();
    assert_eq!(words, [16, 17, 18, 19]);
    assert_eq!(reads(&server), 2);
}

#[tokio::test]
async fn without_a_cache_every_proxied_read_reaches_the_device_and_sees_new_values() {
    let server = FaultServer::start().await;
    server.set(Table::Holding, 0, &[1]);
    let c = connection(&server, |_| {});
    let at = proxy("uncached", &c).await;
    gateway_unit(&c)
        .read_words(Table::Holding, 0, 1)
        .await
        .unwrap();
    let mut tool = client(at, 1).await;
    assert_eq!(
        tool.read_holding_registers(0, 1).await.unwrap().unwrap(),
        [1]
    );
    server.set(Table::Holding, 0, &[2]);
    assert_eq!(
        tool.read_holding_registers(0, 1).await.unwrap().unwrap(),
        [2]
    );
    assert_eq!(reads(&server), 3);
}

#[tokio::test]
async fn unit_ids_are_passed_through_or_mapped_and_unknown_ones_refused() {
    let server = FaultServer::start().await;
    server.set(Table::Holding, 5, &[55]);
    let passed = connection(&server, |c| c.unit = Some(3));
    let at = proxy("passed", &passed).await;
    // A second device on the same listener, seen by clients as unit 7, is unit 1.
    let mapped = connection(&server, |c| {
        c.proxy_listen = Some(at.to_string());
        c.proxy_unit = Some(7);
    });
    assert_eq!(proxy("mapped", &mapped).await, at, "one listener, shared");
    let mut tool3 = client(at, 3).await;
    assert_eq!(
        tool3.read_holding_registers(5, 1).await.unwrap().unwrap(),
        [55]
    );
    let mut tool7 = client(at, 7).await;
    assert_eq!(
        tool7.read_holding_registers(5, 1).await.unwrap().unwrap(),
        [55]
    );
    let units: Vec<u8> = server.log().iter().map(|(u, _, _)| *u).collect();
    assert_eq!(units, [3, 1]);
    let mut tool9 = client(at, 9).await;
    assert_eq!(
        tool9.read_holding_registers(5, 1).await.unwrap(),
        Err(ExceptionCode::GatewayPathUnavailable)
    );
    // A third device may not take a unit id another one has.
    let clash = connection(&server, |c| {
        c.proxy_listen = Some(at.to_string());
        c.proxy_unit = Some(7);
    });
    let err = start_proxy("clash", &clash).await.unwrap_err();
    assert!(err.to_string().contains("already device `mapped`"), "{err}");
}

#[tokio::test]
async fn writes_land_only_in_writable_ranges_and_never_on_claimed_registers() {
    let server = FaultServer::start().await;
    server.set(Table::Holding, 199, &[0; 6]);
    server.set(Table::Coil, 0, &[0; 3]);
    let c = connection(&server, |c| {
        c.proxy_writable = vec![
            WritableRange {
                table: Table::Holding,
                address: 200,
                count: 4,
            },
            WritableRange {
                table: Table::Coil,
                address: 0,
                count: 2,
            },
        ];
    });
    let at = proxy("writes", &c).await;
    let mut tool = client(at, 1).await;
    tool.write_multiple_registers(200, &[7, 8])
        .await
        .unwrap()
        .unwrap();
    tool.write_single_register(203, 9).await.unwrap().unwrap();
    tool.write_single_coil(1, true).await.unwrap().unwrap();
    assert_eq!(server.get(Table::Holding, 200, 4), [7, 8, 0, 9]);
    assert_eq!(server.get(Table::Coil, 1, 1), [1]);

    // Outside the ranges, or reaching past one: illegal data address, nothing written.
    let before = server.log().len();
    assert_eq!(
        tool.write_single_register(199, 1).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        tool.write_multiple_registers(202, &[1, 1, 1])
            .await
            .unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        tool.write_single_coil(2, true).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    // Functions that are not plain reads and writes (FC23 writes too).
    assert_eq!(
        tool.read_write_multiple_registers(200, 1, 200, &[5])
            .await
            .unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );

    // While a CEM instruction holds 201: busy, even though the range is writable.
    let bus = Bus::shared(&Target::Tcp(server.addr.clone()), c.bus_settings());
    let held = Span {
        table: Table::Holding,
        address: 201,
        len: 1,
    };
    bus.claim("pv", 1, vec![held]);
    for _ in 0..50 {
        assert_eq!(
            tool.write_multiple_registers(200, &[1, 1]).await.unwrap(),
            Err(ExceptionCode::ServerDeviceBusy)
        );
    }
    assert_eq!(
        server.log().len(),
        before,
        "no refused write reached the device"
    );
    assert_eq!(server.get(Table::Holding, 200, 2), [7, 8]);
    // Its neighbour is not held.
    tool.write_single_register(202, 3).await.unwrap().unwrap();
    // Released: writable again.
    bus.claim("pv", 1, Vec::new());
    tool.write_multiple_registers(200, &[1, 1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.get(Table::Holding, 200, 4), [1, 1, 3, 9]);
}

#[tokio::test]
async fn a_device_exception_and_a_silent_device_reach_the_client_as_exceptions() {
    let server = FaultServer::start().await;
    let c = connection(&server, |c| c.timeout_ms = Some(200));
    let at = proxy("faults", &c).await;
    let mut tool = client(at, 1).await;
    server.behave(
        1,
        common::Behaviour::Exception(ExceptionCode::IllegalDataAddress),
    );
    assert_eq!(
        tool.read_input_registers(9, 1).await.unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    server.behave(1, common::Behaviour::Silent(Duration::from_secs(1)));
    assert_eq!(
        tool.read_input_registers(9, 1).await.unwrap(),
        Err(ExceptionCode::GatewayTargetDevice)
    );
}
