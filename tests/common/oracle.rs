//! The oracles every message the gateway emits must satisfy: the official JSON schema of
//! the session's version, the ascending ranges s2-python's validators demand, and
//! s2-python 0.11.1's own parser, which is what FlexMeasures and most S2 CEMs in Python
//! run on what they receive. s2-python speaks 0.0.2-beta; a 1.0.0 message differs from
//! it only in DDBC (see s2-kit's `WireProfile`), and real Python CEMs select 1.0.0 while
//! parsing with 0.0.2-beta models, so every other 1.0.0 message is put to it as well.
//!
//! [`assert_emitted_valid`] runs them all; every [`super::CemConn`] and
//! [`super::MqttCem`] runs it on what it received when it is dropped, so no end-to-end
//! test can forget it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use super::{Schemas, python, workspace};

/// The protocol version s2-python speaks.
const S2PYTHON_VERSION: &str = "0.0.2-beta";

/// Check every one of `frames` (the gateway's output in one session of `version`) against
/// every oracle; fails the test naming each refused message and why. Returns how many
/// messages of each type were checked.
pub fn assert_emitted_valid(version: &str, frames: &[String]) -> BTreeMap<String, usize> {
    let counts = schemas().assert_all(version, frames);
    let mut failures: Vec<String> = frames.iter().filter_map(|f| descending_range(f)).collect();
    let for_s2python: Vec<String> = frames
        .iter()
        .filter(|text| version == S2PYTHON_VERSION || !is_ddbc(text))
        .cloned()
        .collect();
    failures.extend(s2python_refusals(&for_s2python));
    assert!(
        failures.is_empty(),
        "{} of {} messages of a {version} session are refused:\n{}",
        failures.len(),
        frames.len(),
        failures.join("\n")
    );
    counts
}

/// The one place the two versions' models differ.
fn is_ddbc(text: &str) -> bool {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["message_type"].as_str().map(|t| t.starts_with("DDBC.")))
        .unwrap_or(false)
}

/// The schemas, loaded once per test binary.
pub fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(Schemas::load)
}

/// The first range in `text` whose start lies above its end, described; s2-python
/// refuses such a range ("start_of_range should not be higher than end_of_range") though
/// the schema allows it.
pub fn descending_range(text: &str) -> Option<String> {
    let value: Value = serde_json::from_str(text).ok()?;
    let mut found = None;
    walk(&value, "", &mut |path, object| {
        let (Some(start), Some(end)) = (
            object.get("start_of_range").and_then(Value::as_f64),
            object.get("end_of_range").and_then(Value::as_f64),
        ) else {
            return;
        };
        if start > end && found.is_none() {
            let kind = value["message_type"].as_str().unwrap_or("?");
            found = Some(format!(
                "{kind}: descending range {start} > {end} at {path}"
            ));
        }
    });
    found
}

fn walk(value: &Value, path: &str, visit: &mut impl FnMut(&str, &serde_json::Map<String, Value>)) {
    match value {
        Value::Object(object) => {
            visit(path, object);
            for (key, child) in object {
                walk(child, &format!("{path}/{key}"), visit);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{path}/{i}"), visit);
            }
        }
        _ => {}
    }
}

/// s2-python's verdict on each frame that it refuses: `"<type>: <reason>"`. Each frame
/// is first put in the shape s2-python's models expect where they contradict the
/// official schema (see [`adapt_to_s2python_defects`]); everything else is judged as
/// sent.
pub fn s2python_refusals(frames: &[String]) -> Vec<String> {
    let mut oracle = s2python().lock().unwrap_or_else(|e| e.into_inner());
    frames
        .iter()
        .filter_map(|text| {
            let adapted = adapt_to_s2python_defects(text);
            let verdict = oracle.verdict(&adapted);
            verdict
                .strip_prefix("REFUSED ")
                .map(|reason| format!("s2-python refused {reason}\n  in {text}"))
        })
        .collect()
}

/// Where s2-python 0.11.1's models contradict the official schema (and the standard),
/// the gateway follows the schema; to let s2-python judge the rest of such a message,
/// the contradicted fields are rewritten into s2-python's shape:
/// - `DDBC.OperationMode`: s2-python requires an `id` besides the schema's `Id` (erratum
///   E4), and its `supply_range` NumberRange is a list of them;
/// - `PPBC.PowerSequenceContainerStatus.progress` is a Duration in the schema and a UUID
///   in s2-python, so no value can satisfy both: it is left out.
fn adapt_to_s2python_defects(text: &str) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(text) else {
        return text.to_string();
    };
    match value["message_type"].as_str() {
        Some("DDBC.SystemDescription") => {
            for actuator in value["actuators"].as_array_mut().into_iter().flatten() {
                for mode in actuator["operation_modes"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                {
                    if let Some(object) = mode.as_object_mut() {
                        if let Some(id) = object.get("Id").cloned() {
                            object.insert("id".to_string(), id);
                        }
                        if let Some(range) = object.remove("supply_range") {
                            object.insert("supply_range".to_string(), Value::Array(vec![range]));
                        }
                    }
                }
            }
        }
        Some("PPBC.PowerProfileStatus") => {
            for status in value["sequence_container_status"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if let Some(object) = status.as_object_mut() {
                    object.remove("progress");
                }
            }
        }
        _ => return text.to_string(),
    }
    value.to_string()
}

/// One long-lived `tests/peers/s2python_oracle.py` per test binary: importing s2-python
/// takes longer than judging a whole session.
fn s2python() -> &'static Mutex<S2Python> {
    static ORACLE: OnceLock<Mutex<S2Python>> = OnceLock::new();
    ORACLE.get_or_init(|| Mutex::new(S2Python::start()))
}

struct S2Python {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl S2Python {
    fn start() -> S2Python {
        let script = workspace().join("tests/peers/s2python_oracle.py");
        let mut child = Command::new(python())
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        S2Python {
            _child: child,
            stdin,
            stdout,
        }
    }

    /// `OK <type>` or `REFUSED <type> <reason>`, for one message.
    fn verdict(&mut self, text: &str) -> String {
        // One message per line: re-encoded compactly, so a pretty-printed frame from a
        // proxied peer cannot split across lines.
        let line = serde_json::from_str::<Value>(text)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| text.replace('\n', " "));
        writeln!(self.stdin, "{line}").expect("the s2-python oracle is gone");
        self.stdin.flush().expect("the s2-python oracle is gone");
        let mut verdict = String::new();
        let read = self
            .stdout
            .read_line(&mut verdict)
            .expect("the s2-python oracle is gone");
        assert!(read > 0, "the s2-python oracle exited");
        verdict.trim_end().to_string()
    }
}
