//! Mutation of valid texts, structure-aware where the text is JSON: the seeded bytes
//! become typed [`JsonMutation`]s and [`TextMutation`]s through `arbitrary`, so every
//! input is one a reader can name ("the actuator id replaced by an id the RM never
//! announced", "cut at byte 212").

use arbitrary::{Arbitrary, Unstructured};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::{Map, Number, Value};

/// Random bytes for `arbitrary` to read typed choices from.
pub fn unstructured_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill(bytes.as_mut_slice());
    bytes
}

/// One change to a JSON document, at a node picked by `at` (an index into the document's
/// nodes in depth-first order, modulo their count).
#[derive(Debug, Clone, Arbitrary)]
pub enum JsonMutation {
    /// Drop an object member (a required field goes missing).
    RemoveMember {
        /// Which node (modulo their count).
        at: u16,
    },
    /// Replace a value with one of another kind or an extreme of its own.
    Replace {
        /// Which node (modulo their count).
        at: u16,
        /// The new value.
        with: Scalar,
    },
    /// Replace a value with an id borrowed from the other side's messages (a valid
    /// reference in the wrong place, or the right place).
    BorrowId {
        /// Which node (modulo their count).
        at: u16,
        /// Which one (modulo their count).
        pick: u16,
    },
    /// Give an id-like string a fresh, never-announced UUID.
    UnknownId {
        /// Which node (modulo their count).
        at: u16,
    },
    /// Repeat an array's first element (bounded, so inputs stay small).
    Repeat {
        /// Which node (modulo their count).
        at: u16,
        /// How many more.
        times: u8,
    },
    /// Wrap a value in `depth` arrays.
    Nest {
        /// Which node (modulo their count).
        at: u16,
        /// How deep.
        depth: u16,
    },
    /// Make the message claim another type.
    Retype {
        /// Which type name (modulo the list).
        kind: u8,
    },
    /// Add a member nobody defined.
    Extra {
        /// Which node (modulo their count).
        at: u16,
        /// A suffix for its name.
        name: u8,
        /// The new value.
        with: Scalar,
    },
}

/// A leaf value chosen to break assumptions.
#[derive(Debug, Clone, Arbitrary)]
pub enum Scalar {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer, often at an edge.
    Int(i64),
    /// A float, including the largest and the tiniest.
    Float(f64),
    /// A number too large for f64 (`1e400` in text).
    HugeNumber,
    /// A string, possibly empty, long or odd unicode.
    Text(String),
    /// A long string.
    LongText(u16),
    /// An empty array.
    EmptyArray,
    /// An empty object.
    EmptyObject,
    /// A timestamp-shaped string that is not a valid one.
    BadTimestamp(u8),
}

/// One change to the text itself, after any JSON mutations.
#[derive(Debug, Clone, Arbitrary)]
pub enum TextMutation {
    /// Cut the text at a point (a frame split by a broken transport).
    Truncate {
        /// Which node (modulo their count).
        at: u16,
    },
    /// Flip one byte.
    Flip {
        /// Which node (modulo their count).
        at: u16,
        /// The bits to flip.
        mask: u8,
    },
    /// Insert bytes.
    Insert {
        /// Which node (modulo their count).
        at: u16,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Repeat the first member textually: `{"a":1,"a":1,…}`.
    DuplicateFirstMember,
    /// Replace the text with arbitrary bytes.
    Garbage(Vec<u8>),
    /// Deeply nested arrays around the text.
    DeepNesting {
        /// How deep.
        depth: u16,
    },
}

/// The message types a frame may claim, valid or not for its sender.
const KINDS: &[&str] = &[
    "Handshake",
    "HandshakeResponse",
    "ReceptionStatus",
    "SelectControlType",
    "SessionRequest",
    "RevokeObject",
    "ResourceManagerDetails",
    "PowerMeasurement",
    "PowerForecast",
    "InstructionStatusUpdate",
    "PEBC.PowerConstraints",
    "PEBC.EnergyConstraint",
    "PEBC.Instruction",
    "FRBC.SystemDescription",
    "FRBC.Instruction",
    "FRBC.StorageStatus",
    "FRBC.ActuatorStatus",
    "FRBC.LeakageBehaviour",
    "FRBC.FillLevelTargetProfile",
    "FRBC.UsageForecast",
    "FRBC.TimerStatus",
    "OMBC.SystemDescription",
    "OMBC.Instruction",
    "OMBC.Status",
    "OMBC.TimerStatus",
    "PPBC.PowerProfileDefinition",
    "PPBC.ScheduleInstruction",
    "PPBC.StartInterruptionInstruction",
    "PPBC.EndInterruptionInstruction",
    "PPBC.PowerProfileStatus",
    "DDBC.SystemDescription",
    "DDBC.Instruction",
    "DDBC.ActuatorStatus",
    "DDBC.AverageDemandRateForecast",
    "DDBC.TimerStatus",
    "DDBC.PresentDemandStatus",
    "NoSuchMessage",
];

/// Applies `mutations` to a JSON text and then `text` to the result.
pub fn mutate(
    original: &str,
    mutations: &[JsonMutation],
    text: Option<&TextMutation>,
    ids: &[String],
) -> Vec<u8> {
    let mut bytes = match serde_json::from_str::<Value>(original) {
        Ok(mut value) => {
            for mutation in mutations {
                apply(&mut value, mutation, ids);
            }
            value.to_string().into_bytes()
        }
        Err(_) => original.as_bytes().to_vec(),
    };
    if let Some(text) = text {
        apply_text(&mut bytes, text);
    }
    bytes
}

/// Draws a mutated JSON text from `corpus`: mostly one to three structural mutations,
/// sometimes a textual one on top, sometimes the valid text unchanged.
///
/// With `ids` (what the other side announced), most texts are first *bound* to the
/// session: a fresh message id, and every reference replaced by an announced id, so
/// the frames get past the edge's reference checks and reach the engine behind it.
pub fn draw(rng: &mut StdRng, corpus: &[String], ids: &[(String, String)]) -> (usize, Vec<u8>) {
    let pick = rng.random_range(0..corpus.len().max(1));
    let Some(original) = corpus.get(pick) else {
        return (0, Vec::new());
    };
    let bound;
    let original = if !ids.is_empty() && rng.random_bool(0.8) {
        bound = bind(original, rng, ids);
        &bound
    } else {
        original
    };
    let bytes = unstructured_bytes(rng, 256);
    let mut u = Unstructured::new(&bytes);
    // Half the frames unchanged or nearly: a sequence must get past the edge to reach
    // the engine's state, and its later frames are the ones that break.
    let structural = [0u8, 0, 0, 1, 1, 2, 3][usize::from(u.int_in_range(0..=6u8).unwrap_or(0))];
    let mutations: Vec<JsonMutation> = (0..structural)
        .filter_map(|_| JsonMutation::arbitrary(&mut u).ok())
        .collect();
    let plain: Vec<String> = ids.iter().map(|(_, id)| id.clone()).collect();
    let textual = if u.ratio(1, 8).unwrap_or(false) {
        TextMutation::arbitrary(&mut u).ok()
    } else {
        None
    };
    (pick, mutate(original, &mutations, textual.as_ref(), &plain))
}

/// A fresh `message_id` and `id` (an instruction's own id must be new); every
/// reference an id the other side declared for the same thing where there is one (see
/// [`stem`]), else any; and at times no top-level `diagnostic_label` (every_message sets
/// every optional field, and 0.0.2-beta instructions have none).
fn bind(text: &str, rng: &mut StdRng, ids: &[(String, String)]) -> String {
    fn walk(value: &mut Value, rng: &mut StdRng, ids: &[(String, String)]) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if v.is_string()
                        && (key == "id" || key.ends_with("_id") || key == "operation_mode")
                    {
                        let wanted = stem(key);
                        let fitting: Vec<&String> = ids
                            .iter()
                            .filter(|(context, _)| {
                                context.contains(&wanted) || wanted.contains(context.as_str())
                            })
                            .map(|(_, id)| id)
                            .collect();
                        let pick = if fitting.is_empty() {
                            &ids[rng.random_range(0..ids.len())].1
                        } else {
                            fitting[rng.random_range(0..fitting.len())]
                        };
                        *v = Value::String(pick.clone());
                    } else {
                        walk(v, rng, ids);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, rng, ids)),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::from_str::<Value>(text) else {
        return text.to_string();
    };
    walk(&mut value, rng, ids);
    if let Value::Object(map) = &mut value {
        for own in ["message_id", "id"] {
            if map.contains_key(own) {
                map.insert(own.into(), Value::String(fresh_uuid(rng)));
            }
        }
        if rng.random_bool(0.5) {
            map.remove("diagnostic_label");
        }
    }
    value.to_string()
}

fn fresh_uuid(rng: &mut StdRng) -> String {
    let n: u128 = rng.random();
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn apply(value: &mut Value, mutation: &JsonMutation, ids: &[String]) {
    match mutation {
        JsonMutation::RemoveMember { at } => {
            if let Some(Value::Object(map)) = node(value, *at, |v| v.is_object()) {
                let key = map.keys().nth(usize::from(*at) % map.len().max(1)).cloned();
                if let Some(key) = key {
                    map.remove(&key);
                }
            }
        }
        JsonMutation::Replace { at, with } => {
            if let Some(target) = node(value, *at, |_| true) {
                *target = scalar(with);
            }
        }
        JsonMutation::BorrowId { at, pick } => {
            if let (Some(target), Some(id)) = (
                node(value, *at, |v| v.is_string()),
                ids.get(usize::from(*pick) % ids.len().max(1)),
            ) {
                *target = Value::String(id.clone());
            }
        }
        JsonMutation::UnknownId { at } => {
            if let Some(target) = node(value, *at, |v| v.is_string()) {
                *target = Value::String(uuid_like(*at));
            }
        }
        JsonMutation::Repeat { at, times } => {
            if let Some(Value::Array(items)) = node(value, *at, |v| v.is_array())
                && let Some(first) = items.first().cloned()
            {
                items.extend(std::iter::repeat_n(first, usize::from(*times % 64)));
            }
        }
        JsonMutation::Nest { at, depth } => {
            if let Some(target) = node(value, *at, |_| true) {
                let mut wrapped = target.take();
                for _ in 0..(depth % 200) {
                    wrapped = Value::Array(vec![wrapped]);
                }
                *target = wrapped;
            }
        }
        JsonMutation::Retype { kind } => {
            if let Value::Object(map) = value {
                let kind = KINDS[usize::from(*kind) % KINDS.len()];
                map.insert("message_type".into(), Value::String(kind.into()));
            }
        }
        JsonMutation::Extra { at, name, with } => {
            if let Some(Value::Object(map)) = node(value, *at, |v| v.is_object()) {
                map.insert(format!("extra_{name}"), scalar(with));
            }
        }
    }
}

/// The `at`-th node (modulo the count) among those `wanted` accepts, depth first.
fn node(value: &mut Value, at: u16, wanted: impl Fn(&Value) -> bool + Copy) -> Option<&mut Value> {
    let count = count_nodes(value, wanted);
    if count == 0 {
        return None;
    }
    let mut index = usize::from(at) % count;
    find_node(value, &mut index, wanted)
}

fn count_nodes(value: &Value, wanted: impl Fn(&Value) -> bool + Copy) -> usize {
    let own = usize::from(wanted(value));
    own + match value {
        Value::Array(items) => items.iter().map(|v| count_nodes(v, wanted)).sum(),
        Value::Object(map) => map.values().map(|v| count_nodes(v, wanted)).sum(),
        _ => 0,
    }
}

fn find_node<'a>(
    value: &'a mut Value,
    index: &mut usize,
    wanted: impl Fn(&Value) -> bool + Copy,
) -> Option<&'a mut Value> {
    if wanted(value) {
        if *index == 0 {
            return Some(value);
        }
        *index -= 1;
    }
    match value {
        Value::Array(items) => items.iter_mut().find_map(|v| find_node(v, index, wanted)),
        Value::Object(map) => map.values_mut().find_map(|v| find_node(v, index, wanted)),
        _ => None,
    }
}

fn scalar(scalar: &Scalar) -> Value {
    match scalar {
        Scalar::Null => Value::Null,
        Scalar::Bool(b) => Value::Bool(*b),
        Scalar::Int(i) => Value::Number((*i).into()),
        Scalar::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        // serde_json cannot hold it; the text mutation path makes real ones. A string
        // of digits is the closest a Value gets.
        Scalar::HugeNumber => Value::String("1e400".into()),
        Scalar::Text(s) => Value::String(s.clone()),
        Scalar::LongText(n) => Value::String("x".repeat(usize::from(*n))),
        Scalar::EmptyArray => Value::Array(Vec::new()),
        Scalar::EmptyObject => Value::Object(Map::new()),
        Scalar::BadTimestamp(n) => Value::String(
            [
                "2025-13-01T00:00:00Z",
                "2025-06-01T25:61:61Z",
                "9999-12-31T23:59:59.999999999+14:00",
                "0000-01-01T00:00:00Z",
                "2025-06-01",
                "yesterday",
                "2025-06-01T12:00:00",
                "-2025-06-01T12:00:00Z",
            ][usize::from(*n) % 8]
                .into(),
        ),
    }
}

fn uuid_like(seed: u16) -> String {
    format!("{seed:08x}-dead-4bad-8bad-{:012x}", u64::from(seed) * 7919)
}

/// Applies one textual mutation in place.
pub fn apply_text(bytes: &mut Vec<u8>, mutation: &TextMutation) {
    match mutation {
        TextMutation::Truncate { at } => {
            let at = usize::from(*at) % (bytes.len() + 1);
            bytes.truncate(at);
        }
        TextMutation::Flip { at, mask } => {
            if !bytes.is_empty() {
                let at = usize::from(*at) % bytes.len();
                bytes[at] ^= mask | 1;
            }
        }
        TextMutation::Insert { at, bytes: more } => {
            let at = usize::from(*at) % (bytes.len() + 1);
            bytes.splice(at..at, more.iter().copied());
        }
        TextMutation::DuplicateFirstMember => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            if let (Some(open), Some(comma)) = (text.find('{'), text.find(','))
                && open < comma
            {
                let member = &text[open + 1..comma];
                *bytes = format!("{{{member},{}", &text[open + 1..]).into_bytes();
            }
        }
        TextMutation::Garbage(garbage) => *bytes = garbage.clone(),
        TextMutation::DeepNesting { depth } => {
            let depth = usize::from(*depth);
            let mut nested = Vec::with_capacity(bytes.len() + 2 * depth);
            nested.extend(std::iter::repeat_n(b'[', depth));
            nested.append(bytes);
            nested.extend(std::iter::repeat_n(b']', depth));
            *bytes = nested;
        }
    }
}

/// Every id the other side declared, with what it names: the message type for a
/// message's own `id`, the array it sits in for an element's (`actuators`,
/// `operation_modes`, ...), the key itself for a reference. For binding references
/// ([`bind`] matches a reference key to the ids whose context names the same thing) and
/// for [`JsonMutation::BorrowId`].
pub fn harvest_ids(text: &str, into: &mut Vec<String>) {
    let mut typed = Vec::new();
    harvest_typed_ids(text, &mut typed);
    for (_, id) in typed {
        if !into.contains(&id) {
            into.push(id);
        }
    }
}

/// [`harvest_ids`] with each id's context, normalised (see [`stem`]).
pub fn harvest_typed_ids(text: &str, into: &mut Vec<(String, String)>) {
    fn walk(value: &Value, context: &str, into: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match v {
                        Value::String(s) if key == "id" || key.ends_with("_id") => {
                            let named = if key == "id" { context } else { key.as_str() };
                            let entry = (stem(named), s.clone());
                            if !into.contains(&entry) {
                                into.push(entry);
                            }
                        }
                        _ => walk(v, key, into),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, context, into)),
            _ => {}
        }
    }
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        let kind = value
            .get("message_type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        walk(&value, &kind, into);
    }
}

/// A name reduced so a reference key and its declaration's context compare:
/// lower case, no `_id`, no separators, no `s` (plurals: `operation_modes` ~
/// `operation_mode_id`, `power_sequences_containers` ~ `sequence_container_id`).
pub fn stem(name: &str) -> String {
    name.trim_end_matches("_id")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| *c != 's')
        .collect()
}
