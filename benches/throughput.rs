//! `cargo bench --bench throughput`: the S2 core's speed, printed as figures.
//!
//! 1. For a PowerMeasurement and for a large FRBC.SystemDescription, the same bytes
//!    three ways, messages per second:
//!    - our edge: decode + semantic check + encode (the work every inbound frame costs,
//!      and re-encoding it on the way out);
//!    - `serde_json::Value` parse + serialize: the floor any typed JSON codec in Rust
//!      stands on, so the edge's cost over plain JSON is visible;
//!    - s2-python 0.11.1 parse + serialize (`benches/peers/s2python_codec.py`, run by
//!      the Python in `S2GW_TEST_PYTHON`): what the ecosystem's reference peer spends.
//!
//!    Then the ratios edge / s2-python (target ≥ 5×) and edge / Value (target ≥ 0.5×),
//!    each printed as "target met" or "target NOT met". They are figures, never
//!    assertions: a timed assertion fails on a loaded machine, not on slow code.
//! 2. p50 / p99 latency of one message through the bus (RM endpoint → route → CEM
//!    endpoint), one message in flight at a time.
//!
//! Run it in release with the venv of `scripts/python-peers.sh`:
//!
//! ```sh
//! S2GW_TEST_PYTHON=$PWD/.venv/bin/python cargo bench --bench throughput
//! ```
//!
//! Without `S2GW_TEST_PYTHON` it fails (never skips): a comparison missing its other
//! side would read as a pass. Under `cargo test` (no `--bench` argument) each part runs
//! a few iterations only, so the suite proves the bench still works without spending
//! minutes on it.

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use s2_kit::types::common::{ControlType, NumberRange, PowerRange, SelectControlType, Transition};
use s2_kit::types::frbc;
use s2gw::bus::Bus;
use s2gw_core::BusEvent;
use s2gw_core::s2::{
    Commodity, CommodityQuantity, Edge, EnergyManagementRole, Frame, Message, PowerMeasurement,
    PowerValue, Timestamp, encode, mint_id,
};

/// The s2-python side of the comparison, next to this file.
const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/peers/s2python_codec.py"
);

/// One message measured three ways.
struct Case {
    name: &'static str,
    text: String,
    /// The control type the CEM (this side) must have selected for the edge to accept it.
    selected: Option<ControlType>,
    /// Iterations for the two Rust codecs, and for s2-python (tens of times slower: the
    /// same count would take minutes).
    iterations: usize,
    python_iterations: usize,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let scale = if full { 1 } else { 1000 };
    // First, before minutes of measuring: a missing Python is found at once.
    let python = s2python_interpreter();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => fail(&format!("cannot start tokio: {error}")),
    };

    let cases = [
        Case {
            name: "PowerMeasurement",
            text: encode(&power_measurement()),
            selected: None,
            iterations: 200_000 / scale,
            python_iterations: 20_000 / scale,
        },
        Case {
            name: "FRBC.SystemDescription (large)",
            text: encode(&large_frbc_description()),
            selected: Some(ControlType::FillRateBasedControl),
            iterations: 2_000 / scale.min(100),
            python_iterations: 200 / scale.min(100),
        },
    ];
    println!(
        "s2gw throughput (one core per measurement, debug assertions {})",
        cfg!(debug_assertions)
    );
    for case in &cases {
        println!("  {} ({} bytes)", case.name, case.text.len());
        let edge = codec_rate(case);
        let value = value_rate(case);
        let s2python = s2python_rate(&python, case);
        ratio("edge / s2-python", edge / s2python, 5.0);
        ratio("edge / serde_json::Value", edge / value, 0.5);
    }
    runtime.block_on(bus_latency(100_000 / scale));
}

/// Print why and stop: a bench that cannot measure something must not print figures
/// that look complete.
fn fail(reason: &str) -> ! {
    eprintln!("throughput bench: {reason}");
    std::process::exit(1);
}

/// The Python with s2-python 0.11.1, from `S2GW_TEST_PYTHON` only: guessing a default
/// would measure whatever s2-python happens to be installed there.
fn s2python_interpreter() -> PathBuf {
    let Some(path) = std::env::var_os("S2GW_TEST_PYTHON").map(PathBuf::from) else {
        fail(
            "S2GW_TEST_PYTHON is not set: this bench compares the edge with s2-python \
             0.11.1 and needs its Python. Build the venv with scripts/python-peers.sh, then \
             run S2GW_TEST_PYTHON=$PWD/.venv/bin/python cargo bench --bench throughput \
             (scripts/test.sh sets it for the test suite)",
        )
    };
    if !path.exists() {
        fail(&format!(
            "S2GW_TEST_PYTHON={} does not exist: run scripts/python-peers.sh",
            path.display()
        ));
    }
    path
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

/// One rate line, the same shape for every codec so the columns compare.
fn report(what: &str, iterations: usize, elapsed: Duration) -> f64 {
    let rate = iterations as f64 / elapsed.as_secs_f64();
    println!(
        "    {what:<34} {rate:>10.0} msg/s  ({iterations} iterations, {:.1} us each)",
        elapsed.as_secs_f64() * 1e6 / iterations as f64
    );
    rate
}

/// What one inbound frame costs at the edge, and re-encoding it on the way out.
fn codec_rate(case: &Case) -> f64 {
    let iterations = case.iterations.max(1);
    let mut edge = Edge::new(EnergyManagementRole::Rm, 4 * 1024 * 1024);
    let now = Timestamp::now();
    // A description is only legal once the CEM (this side) selected its control type.
    if let Some(control_type) = case.selected {
        let select = Message::SelectControlType(SelectControlType {
            message_id: mint_id(),
            control_type,
        });
        edge.outbound(&Frame::new(select), now);
    }
    // A fresh message id each time would be more work than the edge itself; the edge
    // does not refuse a repeated id, the session behind it does.
    if let Err(rejection) = edge.inbound(&case.text, now) {
        fail(&format!(
            "{}: the bench message is refused: {}",
            case.name, rejection.diagnostic
        ));
    }
    let started = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..iterations {
        if let Ok(frame) = edge.inbound(&case.text, now) {
            bytes += encode(frame.message()).len();
        }
    }
    let elapsed = started.elapsed();
    // Every frame was accepted and re-encoded whole, or the rate is of something else.
    if bytes != iterations * case.text.len() {
        fail(&format!(
            "{}: {bytes} bytes re-encoded over {iterations} frames of {}",
            case.name,
            case.text.len()
        ));
    }
    report("edge decode+check+encode", iterations, elapsed)
}

/// Plain JSON, no model: parse the same bytes into a `Value` and write it back out.
fn value_rate(case: &Case) -> f64 {
    let iterations = case.iterations.max(1);
    let round = || {
        serde_json::from_str::<serde_json::Value>(black_box(&case.text))
            .and_then(|value| serde_json::to_string(&value))
            .map(|text| text.len())
    };
    // The same untimed first round the edge gets.
    if let Err(error) = round() {
        fail(&format!("{}: not JSON to serde_json: {error}", case.name));
    }
    let started = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..iterations {
        bytes += round().unwrap_or(0);
    }
    let elapsed = started.elapsed();
    black_box(bytes);
    report("serde_json::Value parse+serialize", iterations, elapsed)
}

/// s2-python's parse + serialize of the same bytes, timed inside Python so the
/// interpreter's start and s2-python's import are not counted.
fn s2python_rate(python: &Path, case: &Case) -> f64 {
    let iterations = case.python_iterations.max(1);
    let mut file = match tempfile::Builder::new()
        .prefix("s2gw-codec-")
        .suffix(".json")
        .tempfile()
    {
        Ok(file) => file,
        Err(error) => fail(&format!("cannot create a temporary file: {error}")),
    };
    if let Err(error) = file.write_all(case.text.as_bytes()) {
        fail(&format!("cannot write {}: {error}", file.path().display()));
    }
    let output = match Command::new(python)
        .arg(PEER)
        .arg(file.path())
        .arg(iterations.to_string())
        .output()
    {
        Ok(output) => output,
        Err(error) => fail(&format!("cannot run {}: {error}", python.display())),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rate = match stdout.trim().parse::<f64>() {
        Ok(rate) if output.status.success() && rate > 0.0 => rate,
        _ => fail(&format!(
            "{}: {PEER} ({}) gave no rate: {}; stdout {:?}, stderr {}",
            case.name,
            python.display(),
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    };
    // Print through the same line as the Rust codecs: the peer measured the time.
    report(
        "s2-python 0.11.1 parse+serialize",
        iterations,
        Duration::from_secs_f64(iterations as f64 / rate),
    )
}

fn ratio(what: &str, value: f64, target: f64) {
    let verdict = if value >= target {
        "target met"
    } else {
        "target NOT met"
    };
    println!("    {what:<34} {value:>10.2}x      (target >= {target}x: {verdict})");
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
