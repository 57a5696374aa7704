//! `cargo bench --bench throughput`: the S2 core's speed, printed as figures.
//!
//! 1. decode + semantic check + encode, messages per second, for a PowerMeasurement and
//!    for a large FRBC.SystemDescription (the edge work every inbound frame costs);
//! 2. p50 / p99 latency of one message through the bus (RM endpoint → route → CEM
//!    endpoint), one message in flight at a time.
//!
//! Under `cargo test` (no `--bench` argument) each part runs a few iterations only, so
//! the suite proves the bench still works without spending minutes on it.

use std::time::{Duration, Instant};

use s2_kit::types::common::{ControlType, NumberRange, PowerRange, SelectControlType, Transition};
use s2_kit::types::frbc;
use s2gw::bus::Bus;
use s2gw_core::BusEvent;
use s2gw_core::s2::{
    Commodity, CommodityQuantity, Edge, EnergyManagementRole, Frame, Message, PowerMeasurement,
    PowerValue, Timestamp, encode, mint_id,
};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let scale = if full { 1 } else { 1000 };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("cannot start tokio: {error}");
            std::process::exit(1);
        }
    };

    let measurement = encode(&power_measurement());
    let description = encode(&large_frbc_description());
    println!(
        "s2gw throughput (one core per measurement, debug assertions {})",
        cfg!(debug_assertions)
    );
    codec_rate("PowerMeasurement", &measurement, None, 200_000 / scale);
    codec_rate(
        "FRBC.SystemDescription (large)",
        &description,
        Some(ControlType::FillRateBasedControl),
        2_000 / scale.min(100),
    );
    runtime.block_on(bus_latency(100_000 / scale));
}

fn power_measurement() -> Message {
    Message::PowerMeasurement(PowerMeasurement {
        message_id: mint_id(),
        measurement_timestamp: Timestamp::now(),
        values: vec![
            PowerValue {
                commodity_quantity: CommodityQuantity::ElectricPowerL1,
                value: 1200.5,
            },
            PowerValue {
                commodity_quantity: CommodityQuantity::ElectricPowerL2,
                value: 980.0,
            },
            PowerValue {
                commodity_quantity: CommodityQuantity::ElectricPowerL3,
                value: 1011.25,
            },
        ],
    })
}

/// Four actuators with twenty operation modes of ten elements each: as large as a real
/// FRBC description gets (the schema caps elements at ten per mode).
fn large_frbc_description() -> Message {
    let quantity = CommodityQuantity::ElectricPower3PhaseSymmetric;
    let actuator = |_: usize| {
        let modes: Vec<frbc::OperationMode> = (0..20)
            .map(|m| frbc::OperationMode {
                id: mint_id(),
                diagnostic_label: Some(format!("mode {m}")),
                elements: (0..10)
                    .map(|e| frbc::OperationModeElement {
                        fill_level_range: NumberRange::new(e as f64 * 10.0, e as f64 * 10.0 + 10.0),
                        fill_rate: NumberRange::new(0.0, 0.001 * m as f64),
                        power_ranges: vec![PowerRange::new(0.0, 250.0 * m as f64, quantity)],
                        running_costs: None,
                    })
                    .collect(),
                abnormal_condition_only: false,
            })
            .collect();
        let transitions = modes
            .windows(2)
            .map(|pair| Transition::simple(mint_id(), pair[0].id, pair[1].id))
            .collect();
        frbc::ActuatorDescription {
            id: mint_id(),
            diagnostic_label: Some("inverter".into()),
            supported_commodities: vec![Commodity::Electricity],
            operation_modes: modes,
            transitions,
            timers: vec![],
        }
    };
    Message::FrbcSystemDescription(Box::new(frbc::SystemDescription {
        message_id: mint_id(),
        valid_from: Timestamp::now(),
        actuators: (0..4).map(actuator).collect(),
        storage: frbc::StorageDescription {
            diagnostic_label: Some("battery".into()),
            fill_level_label: Some("%".into()),
            provides_leakage_behaviour: false,
            provides_fill_level_target_profile: false,
            provides_usage_forecast: false,
            fill_level_range: NumberRange::new(0.0, 100.0),
        },
    }))
}

/// What one inbound frame costs at the edge, and re-encoding it on the way out.
fn codec_rate(name: &str, text: &str, selected: Option<ControlType>, iterations: usize) {
    let iterations = iterations.max(1);
    let mut edge = Edge::new(EnergyManagementRole::Rm, 4 * 1024 * 1024);
    let now = Timestamp::now();
    // A description is only legal once the CEM (this side) selected its control type.
    if let Some(control_type) = selected {
        let select = Message::SelectControlType(SelectControlType {
            message_id: mint_id(),
            control_type,
        });
        edge.outbound(&Frame::new(select), now);
    }
    // A fresh message id each time would be more work than the edge itself; the edge
    // does not refuse a repeated id, the session behind it does.
    if let Err(rejection) = edge.inbound(text, now) {
        eprintln!(
            "{name}: the bench message is refused: {}",
            rejection.diagnostic
        );
        std::process::exit(1);
    }
    let started = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..iterations {
        if let Ok(frame) = edge.inbound(text, now) {
            bytes += encode(frame.message()).len();
        }
    }
    let elapsed = started.elapsed();
    println!(
        "  decode+check+encode {name:<32} {:>9.0} msg/s  ({} bytes, {iterations} iterations, {:.1} us each)",
        iterations as f64 / elapsed.as_secs_f64(),
        bytes / iterations,
        elapsed.as_secs_f64() * 1e6 / iterations as f64
    );
}

/// One message at a time from the RM side to the CEM side of a route.
async fn bus_latency(iterations: usize) {
    let iterations = iterations.max(10);
    let bus = Bus::new();
    let (rm, mut cem) = bus.route("bench");
    let frame = Frame::new(power_measurement());
    let mut samples: Vec<Duration> = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let sent = Instant::now();
        if rm.tx.send(BusEvent::Frame(frame.clone())).await.is_err() {
            break;
        }
        match cem.rx.recv().await {
            Some(BusEvent::Frame(_)) => samples.push(sent.elapsed()),
            _ => break,
        }
    }
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "  bus latency RM->CEM (one in flight)       p50 {:>6.1} us   p99 {:>6.1} us   ({} messages)",
        pick(0.50).as_secs_f64() * 1e6,
        pick(0.99).as_secs_f64() * 1e6,
        samples.len()
    );
}
