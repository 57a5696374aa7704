//! The BTHome decoder against the bthome-ble reference package, on the committed corpus
//! (tests/data/bthome_corpus.txt, made by tests/peers/make_bthome_corpus.py).
//!
//! Needs Python with bthome-ble: `S2GW_TEST_PYTHON`, else `<workspace>/.venv/bin/python`
//! (scripts/python-peers.sh builds it). A missing interpreter or package FAILS the test:
//! an oracle that silently does not run proves nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use s2gw_ble::bthome::{self, Encoding, Scale, Value};
use s2gw_ble::{BindKey, config::parse_address};
use s2gw_core::hex::encode as hex;
use serde_json::{Value as Json, json};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    let path = std::env::var_os("S2GW_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../../.venv/bin/python"));
    assert!(
        path.exists(),
        "no Python for the bthome-ble oracle at {} (set S2GW_TEST_PYTHON or run scripts/python-peers.sh, \
         which must install bthome-ble)",
        path.display()
    );
    path
}

/// The oracle's verdict per corpus entry, by name.
fn oracle(corpus: &PathBuf) -> BTreeMap<String, Json> {
    let script = manifest_dir().join("tests/peers/bthome_oracle.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(corpus)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(3),
        "bthome-ble is not importable by the test Python; install it: .venv/bin/pip install bthome-ble==3.25.0\n{stderr}"
    );
    assert!(out.status.success(), "oracle failed: {stderr}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Json = serde_json::from_str(l).unwrap();
            (v["name"].as_str().unwrap().to_string(), v)
        })
        .collect()
}

struct Entry {
    name: String,
    address: [u8; 6],
    key: Option<BindKey>,
    data: Vec<u8>,
}

fn corpus() -> (PathBuf, Vec<Entry>) {
    let path = manifest_dir().join("tests/data/bthome_corpus.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let entries = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Entry {
                name: f[0].to_string(),
                address: parse_address(f[1]).unwrap(),
                key: (f[2] != "-").then(|| BindKey::from_hex(f[2]).unwrap()),
                data: (0..f[3].len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&f[3][i..i + 2], 16).unwrap())
                    .collect(),
            }
        })
        .collect();
    (path, entries)
}

/// Which category an object lands in on the oracle's side.
#[derive(PartialEq, Eq, PartialOrd, Ord, Clone, Copy, Debug)]
enum Cat {
    Sensor,
    Binary,
    Event,
    Info,
}

fn category(encoding: Encoding) -> Cat {
    match encoding {
        Encoding::Binary => Cat::Binary,
        Encoding::Button | Encoding::Dimmer | Encoding::Command => Cat::Event,
        Encoding::DeviceTypeId | Encoding::Firmware(_) => Cat::Info,
        _ => Cat::Sensor,
    }
}

/// The Rust result in the oracle's shape (the oracle adds `_1`, `_2` to a key whose kind
/// of measurement occurs more than once in one packet).
fn rust_view(packet: &bthome::Packet) -> Json {
    let ident = |o: &bthome::Object| (category(o.spec.encoding), o.spec.name, o.spec.unit);
    let mut counts: BTreeMap<_, usize> = BTreeMap::new();
    for o in &packet.objects {
        *counts.entry(ident(o)).or_default() += 1;
    }
    let mut seen: BTreeMap<_, usize> = BTreeMap::new();
    let (mut sensors, mut binary, mut events) =
        (serde_json::Map::new(), serde_json::Map::new(), Vec::new());
    let mut sw = json!(if packet.encrypted {
        "BTHome BLE v2 (encrypted)"
    } else {
        "BTHome BLE v2"
    });
    let mut type_id = Json::Null;
    for o in &packet.objects {
        let id = ident(o);
        let n = seen.entry(id).or_default();
        *n += 1;
        let key = if counts[&id] > 1 && id.0 != Cat::Info {
            format!("{}_{}", o.spec.name, n)
        } else {
            o.spec.name.to_string()
        };
        match &o.value {
            Value::Number(x) => drop(sensors.insert(key, json!(x))),
            Value::PacketId(x) => drop(sensors.insert(key, json!(x))),
            Value::Timestamp(x) => drop(sensors.insert(key, json!(x))),
            Value::Text(t) => drop(sensors.insert(key, json!(t))),
            Value::Raw(r) => drop(sensors.insert(key, json!(hex(r)))),
            Value::Bool(b) => drop(binary.insert(key, json!(b))),
            Value::Button(c) => event(&mut events, key, bthome::button_event_name(*c), Json::Null),
            Value::Dimmer { event: c, steps } => event(
                &mut events,
                key,
                bthome::dimmer_event_name(*c),
                json!({ "steps": steps }),
            ),
            Value::Command { opcode, args } => event(
                &mut events,
                key,
                bthome::command_event_name(*opcode),
                json!({ "args": hex(args) }),
            ),
            Value::DeviceTypeId(t) => type_id = json!(t),
            Value::Firmware(f) => sw = json!(f),
        }
    }
    events.sort_by_key(|e| e.to_string());
    json!({ "sensors": sensors, "binary": binary, "events": events, "sw_version": sw, "device_type_id": type_id })
}

fn event(events: &mut Vec<Json>, key: String, name: Option<&str>, props: Json) {
    // The oracle fires no event for "no event" codes.
    if let Some(name) = name {
        events.push(json!([key, name, props]));
    }
}

/// Numbers agree exactly, except objects with a non-decimal scale (0.35 °C), which the
/// oracle rounds to one decimal and the decoder does not.
fn numbers_agree(ours: &Json, theirs: &Json, loose: bool) -> bool {
    match (ours.as_f64(), theirs.as_f64()) {
        (Some(a), Some(b)) if loose => (a - b).abs() <= 0.05 + 1e-9,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        _ => ours == theirs,
    }
}

fn compare(entry: &Entry, ours: &Json, theirs: &Json, loose: bool) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut their_sensors = theirs["sensors"].as_object().cloned().unwrap_or_default();
    // The oracle reports the RSSI we handed it as a sensor; it is not in the data.
    their_sensors.remove("signal_strength");
    let our_sensors = ours["sensors"].as_object().cloned().unwrap_or_default();
    let keys: std::collections::BTreeSet<&String> =
        their_sensors.keys().chain(our_sensors.keys()).collect();
    for k in keys {
        let (a, b) = (
            our_sensors.get(k).unwrap_or(&Json::Null),
            their_sensors.get(k).unwrap_or(&Json::Null),
        );
        if !numbers_agree(a, b, loose) {
            diffs.push(format!("{}: sensor {k}: ours {a}, oracle {b}", entry.name));
        }
    }
    for field in ["binary", "events", "device_type_id"] {
        if ours[field] != theirs[field] {
            diffs.push(format!(
                "{}: {field}: ours {}, oracle {}",
                entry.name, ours[field], theirs[field]
            ));
        }
    }
    // The version string is metadata; after a refusal only the data must be absent.
    let both = ours["sw_version"] != Json::Null && theirs["sw_version"] != Json::Null;
    if both && ours["sw_version"] != theirs["sw_version"] {
        diffs.push(format!(
            "{}: sw_version: ours {}, oracle {}",
            entry.name, ours["sw_version"], theirs["sw_version"]
        ));
    }
    diffs
}

#[test]
fn decoder_agrees_with_bthome_ble_on_the_whole_corpus() {
    let (path, entries) = corpus();
    let verdicts = oracle(&path);
    assert_eq!(verdicts.len(), entries.len(), "oracle skipped entries");
    let mut diffs = Vec::new();
    let mut covered = std::collections::BTreeSet::new();
    let mut encrypted_ok = 0;
    for entry in &entries {
        let theirs = &verdicts[&entry.name];
        match bthome::decode(&entry.data, entry.address, entry.key.as_ref()) {
            Ok(packet) => {
                encrypted_ok += usize::from(packet.encrypted);
                covered.extend(packet.objects.iter().map(|o| o.spec.id));
                let loose = packet
                    .objects
                    .iter()
                    .any(|o| matches!(o.spec.encoding, Encoding::Int(_, Scale::Mul(_))));
                diffs.extend(compare(entry, &rust_view(&packet), theirs, loose));
            }
            Err(error) => {
                // Refused: the oracle must have nothing either.
                let nothing =
                    json!({ "sensors": {}, "binary": {}, "events": [], "device_type_id": null });
                diffs.extend(
                    compare(entry, &nothing, theirs, false)
                        .into_iter()
                        .map(|d| format!("{d} (we refused: {error})")),
                );
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} disagreements:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    let missing: Vec<String> = bthome::OBJECTS
        .iter()
        .filter(|s| !covered.contains(&s.id))
        .map(|s| format!("{:#04x}", s.id))
        .collect();
    assert!(
        missing.is_empty(),
        "object ids not covered by the corpus: {missing:?}"
    );
    assert!(
        encrypted_ok >= 5,
        "too few encrypted entries decoded: {encrypted_ok}"
    );
}
