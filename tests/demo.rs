//! The README's first command: `s2gw demo` runs every simulated device against the demo
//! CEM, and within its first minute a newcomer sees every control type doing something —
//! with none of the demo CEM's instructions refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a newcomer should have seen by then, by the demo's own uptime.
const FIRST_MINUTE: Duration = Duration::from_secs(60);
/// How long the demo runs at least, so "nothing refused" means something: several
/// instructions per device (one every 8 s), the heat pump's min_on timer blocking every
/// move after the first, the hybrid heat pump's compressor timer running after the boiler
/// took over, and the demo CEM's first change of control types at 40 s.
const AT_LEAST: Duration = Duration::from_secs(45);
/// Wall-clock bound on the whole test, start-up and shutdown included.
const TEST_BOUND: Duration = Duration::from_secs(85);

const PV: &str = "Rooftop PV";
const EV: &str = "EV charger";
const BATTERY: &str = "Home battery";
const HEAT_PUMP: &str = "Heat pump";
const METER: &str = "House meter";
const DISHWASHER: &str = "Dishwasher";
const HYBRID: &str = "Hybrid heat pump";
const DEVICES: [&str; 7] = [PV, EV, BATTERY, HEAT_PUMP, METER, DISHWASHER, HYBRID];

/// One device line of the live view (`src/demo.rs`, fixed-width columns).
#[derive(Debug, Clone)]
struct Row {
    line: String,
    power_w: Option<f64>,
    control: String,
    active: String,
    ok: u64,
    fail: u64,
    link: String,
    /// What a device with a task or a demand is doing (empty for the others).
    state: String,
}

fn column(chars: &[char], from: usize, to: usize) -> String {
    chars
        .get(from.min(chars.len())..to.min(chars.len()))
        .unwrap_or_default()
        .iter()
        .collect::<String>()
        .trim()
        .to_string()
}

impl Row {
    fn parse(line: &str) -> Row {
        let chars: Vec<char> = line.chars().collect();
        let power = column(&chars, 17, 31);
        let (ok, fail) = column(&chars, 77, 84)
            .split_once('/')
            .map(|(ok, fail)| (ok.parse().unwrap(), fail.parse().unwrap()))
            .unwrap_or_else(|| panic!("no OK/FAIL in {line:?}"));
        Row {
            line: line.to_string(),
            power_w: power
                .strip_suffix(" W")
                .or_else(|| power.split(" W ").next())
                .and_then(|w| w.trim().parse().ok()),
            control: column(&chars, 33, 41),
            active: column(&chars, 43, 75),
            ok,
            fail,
            link: column(&chars, 86, 102),
            state: column(&chars, 104, chars.len()),
        }
    }

    /// The floor of a PEBC limit shown as active (`limit >= -3600 W`).
    fn floor_w(&self) -> Option<f64> {
        let rest = self.active.strip_prefix("limit >= ")?;
        rest.strip_suffix(" W")?.parse().ok()
    }
}

/// One printed view: the uptime in its header, a row per device, the traffic line.
#[derive(Debug, Clone, Default)]
struct Frame {
    text: String,
    uptime: Duration,
    rows: Vec<(String, Row)>,
    traffic: Option<String>,
}

impl Frame {
    fn row(&self, device: &str) -> &Row {
        self.rows
            .iter()
            .find(|(name, _)| name == device)
            .map(|(_, row)| row)
            .unwrap_or_else(|| panic!("no line for {device} in:\n{}", self.text))
    }

    fn push(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
        if let Some(device) = DEVICES.iter().find(|d| line.starts_with(**d)) {
            self.rows.push((device.to_string(), Row::parse(line)));
        } else if line.starts_with("S2 traffic:") {
            self.traffic = Some(line.to_string());
        }
    }

    fn complete(&self) -> bool {
        self.rows.len() == DEVICES.len() && self.traffic.is_some()
    }
}

/// `up 00:01:05` in a view's header.
fn uptime_of(header: &str) -> Option<Duration> {
    let hms = header.split("  up ").nth(1)?.split_whitespace().next()?;
    let parts: Vec<u64> = hms.split(':').filter_map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [h, m, s] => Some(Duration::from_secs(h * 3600 + m * 60 + s)),
        _ => None,
    }
}

/// What the first minute has shown so far, one flag per promise of the README.
#[derive(Debug, Default)]
struct Seen {
    pv_curtailed: Option<String>,
    ev_succeeded: Option<String>,
    battery_succeeded: Option<String>,
    heat_pump_moved: Option<String>,
    meter_power: Option<String>,
    dishwasher_runs: Option<String>,
    hybrid_succeeded: Option<String>,
}

impl Seen {
    fn look(&mut self, frame: &Frame) {
        // Only a connected device counts: the CEM is what should make things happen.
        let first = |slot: &mut Option<String>, row: &Row| {
            if row.link.starts_with("up (") {
                slot.get_or_insert_with(|| format!("{:?}: {}", frame.uptime, row.line));
            }
        };
        let pv = frame.row(PV);
        // Curtailed: a floor is active, the PV produces, and no more than the floor allows.
        if let (Some(floor), Some(power)) = (pv.floor_w(), pv.power_w)
            && power < 0.0
            && power >= floor - 1.0
        {
            first(&mut self.pv_curtailed, pv);
        }
        for (device, slot) in [
            (EV, &mut self.ev_succeeded),
            (BATTERY, &mut self.battery_succeeded),
        ] {
            let row = frame.row(device);
            if row.ok >= 1 {
                first(slot, row);
            }
        }
        let hybrid = frame.row(HYBRID);
        if hybrid.ok >= 1 && hybrid.control == "DDBC" {
            first(&mut self.hybrid_succeeded, hybrid);
        }
        // The heat pump starts in SG-Ready 2 ("normal"); any other state is a change.
        let heat_pump = frame.row(HEAT_PUMP);
        if heat_pump.active.starts_with("SG-Ready") && !heat_pump.active.starts_with("SG-Ready 2") {
            first(&mut self.heat_pump_moved, heat_pump);
        }
        let meter = frame.row(METER);
        if meter.power_w.is_some_and(|p| p > 0.0) {
            first(&mut self.meter_power, meter);
        }
        // The dishwasher waits for the CEM (it would start by itself hours later): a
        // programme running or paused after a SUCCEEDED is the CEM's doing.
        let dishwasher = frame.row(DISHWASHER);
        if dishwasher.ok >= 1
            && dishwasher.control == "PPBC"
            && (dishwasher.state.contains(" running, ") || dishwasher.state.contains(" paused "))
        {
            first(&mut self.dishwasher_runs, dishwasher);
        }
    }

    fn missing(&self) -> Vec<&'static str> {
        [
            ("PV curtailed while producing", &self.pv_curtailed),
            ("EV instruction SUCCEEDED", &self.ev_succeeded),
            ("battery instruction SUCCEEDED", &self.battery_succeeded),
            ("heat pump changed SG-Ready mode", &self.heat_pump_moved),
            ("meter reports power", &self.meter_power),
            (
                "dishwasher programme running after a SUCCEEDED",
                &self.dishwasher_runs,
            ),
            (
                "hybrid heat pump instruction SUCCEEDED",
                &self.hybrid_succeeded,
            ),
        ]
        .into_iter()
        .filter(|(_, seen)| seen.is_none())
        .map(|(what, _)| what)
        .collect()
    }
}

/// Lines of a child's stream, as they come.
fn lines_of(stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Ctrl-C, as a newcomer stops the demo.
fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -INT failed");
}

#[test]
fn the_first_minute_shows_every_control_type_at_work() {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_s2gw"))
        // --duration is only the backstop: the test stops the demo once it has seen enough.
        .args(["demo", "--plain", "--duration", "75"])
        // Warnings on stderr: every refused instruction is logged, by the RM and the CEM.
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start s2gw demo");
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());

    let mut seen = Seen::default();
    let mut frames: Vec<Frame> = Vec::new();
    let mut frame = Frame::default();
    let mut all_output = String::new();
    let mut interrupted = false;
    loop {
        let left = TEST_BOUND.saturating_sub(started.elapsed());
        let line = match stdout.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("the demo did not finish in {TEST_BOUND:?}:\n{all_output}");
            }
        };
        all_output.push_str(&line);
        all_output.push('\n');
        if line.starts_with("s2gw demo ") {
            frame = Frame {
                uptime: uptime_of(&line).unwrap_or_else(|| panic!("no uptime in {line:?}")),
                ..Frame::default()
            };
        }
        frame.push(&line);
        if !frame.complete() {
            continue;
        }
        frames.push(std::mem::take(&mut frame));
        let Some(last) = frames.last() else { continue };
        if interrupted {
            continue;
        }
        if last.uptime <= FIRST_MINUTE {
            seen.look(last);
        }
        let missing = seen.missing();
        if missing.is_empty() && last.uptime >= AT_LEAST {
            interrupt(&child);
            interrupted = true;
        } else if last.uptime > FIRST_MINUTE {
            let _ = child.kill();
            panic!("after a minute, not seen: {missing:?}\n{}", last.text);
        }
    }
    let status = child.wait().expect("the demo's exit status");
    let errors: Vec<String> = stderr.try_iter().collect();
    assert!(status.success(), "demo failed: {all_output}\n{errors:#?}");
    assert!(
        interrupted,
        "the demo ended before showing everything:\n{all_output}"
    );
    eprintln!("first minute: {seen:#?}");

    // The view printed on the way out carries the final counts of the whole run.
    let last = frames.last().expect("the demo printed its view");
    eprintln!("final view:\n{}", last.text);
    for device in DEVICES {
        let row = last.row(device);
        assert!(
            row.link.starts_with("up ("),
            "{device} is not connected: {}",
            row.line
        );
        assert_eq!(row.fail, 0, "{device} had instructions fail: {}", row.line);
    }
    for frame in &frames {
        for device in DEVICES {
            assert_eq!(frame.row(device).fail, 0, "{device}: {}", frame.text);
        }
    }
    // The hybrid heat pump's row says what each actuator does.
    let hybrid = last.row(HYBRID);
    assert!(
        hybrid.state.starts_with("demand ") && hybrid.state.contains("heat_pump "),
        "{}",
        hybrid.line
    );
    let traffic = last.traffic.as_deref().expect("a traffic summary");
    let rm_to_cem: u64 = traffic
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("a message count");
    assert!(rm_to_cem > 10, "too little traffic: {traffic}");
    assert!(
        traffic.contains(", 0 refused"),
        "the demo's own traffic was refused: {traffic}"
    );
    // No instruction was refused anywhere, not even after the last frame.
    let refusals: Vec<&String> = errors
        .iter()
        .filter(|l| l.contains("instruction rejected") || l.contains("not carried out"))
        .collect();
    assert!(refusals.is_empty(), "{refusals:#?}");
    assert!(all_output.contains("every device returns to its autonomous default"));
}
