//! Requests per poll cycle for a 30-register map with and without coalescing, and CPU
//! time per 1,000 register reads, against tokio-modbus's server in-process.
//!
//! `cargo bench -p s2gw-modbus --bench poll` prints the figures. The CPU time is the
//! whole process (gateway side and the in-process server), read from /proc/self/stat.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{FaultServer, unit};
use s2gw_core::Device;
use s2gw_modbus::bus::Table;
use s2gw_modbus::config::{ModbusProfile, ReadingsSpec, RegisterSpec};
use s2gw_modbus::map::MapDevice;
use s2gw_modbus::point::PollGroup;
use s2gw_modbus::value::ValueType;

const POLLS: u32 = 5000;

/// 30 registers: u16/i16/u32/f32 values two to four registers apart, as on a real meter.
fn profile() -> ModbusProfile {
    let mut registers = BTreeMap::new();
    let mut address = 0u32;
    for i in 0..30 {
        let ty = [
            ValueType::U16,
            ValueType::I16,
            ValueType::U32,
            ValueType::F32,
        ][i % 4];
        registers.insert(
            format!("r{i:02}"),
            RegisterSpec {
                table: Table::Holding,
                address,
                ty: Some(ty),
                length: None,
                word_order: None,
                byte_order: None,
                scale: None,
                scale_register: None,
                not_implemented: Vec::new(),
                poll: Some(PollGroup::Fast),
                write: None,
                verify: None,
            },
        );
        address += u32::from(ty.width(1)) + 1;
    }
    ModbusProfile {
        address_base: Some(0),
        registers,
        readings: ReadingsSpec {
            power: Some("r00".into()),
            ..ReadingsSpec::default()
        },
        ..ModbusProfile::default()
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 12th, stime
    // the 13th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After ')': state is field 0, so utime and stime are 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

async fn run(server: &FaultServer, coalesce: bool) -> (f64, Duration, f64) {
    let u = unit(&server.addr, 1, 1000);
    let p = profile();
    let mut dev = MapDevice::new("bench", u.clone(), &p);
    dev.poller_mut().coalesce = coalesce;
    dev.read().await.unwrap();
    let requests_before = u.bus.stats().requests();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    for _ in 0..POLLS {
        dev.read().await.unwrap();
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let requests = (u.bus.stats().requests() - requests_before) as f64 / f64::from(POLLS);
    let register_reads = f64::from(POLLS) * 30.0;
    // Seconds per read × 1000 reads × 1000 ms/s.
    (requests, wall / POLLS, cpu / register_reads * 1_000_000.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let server = FaultServer::start().await;
    server.set(Table::Holding, 0, &[1u16; 130]);
    println!(
        "s2gw-modbus poll benchmark: 30-register map, {POLLS} polls, in-process tokio-modbus server"
    );
    for coalesce in [true, false] {
        let (requests, per_poll, cpu_ms) = run(&server, coalesce).await;
        println!(
            "  coalescing {:<3}  requests/poll {:>5.1}   wall/poll {:>8.1?}   CPU per 1000 register reads {:>6.2} ms",
            if coalesce { "on" } else { "off" },
            requests,
            per_poll,
            cpu_ms
        );
    }
}
