//! The web UI's tap: the last messages of every resource for the S2 inspector, the
//! instructions with their status updates, the latest description of each kind (the
//! flexibility the device page draws) and the counts `/metrics` exposes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use s2gw_core::s2::Timestamp;
use s2gw_core::{BusEvent, Frame, Rejection, Side};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::bus::Tap;

/// Messages kept per resource for the inspector and its `.s2log` download.
pub const KEPT_MESSAGES: usize = 300;
/// The most message text kept per resource: a CEM sending frames of the largest size
/// allowed cannot make the inspector hold more than this.
pub const KEPT_BYTES: usize = 2 * 1024 * 1024;
/// Instructions kept per resource for the device page.
pub const KEPT_INSTRUCTIONS: usize = 50;
/// The most the tap holds over the whole gateway, messages and instructions: each
/// resource keeps an equal share (at most [`KEPT_BYTES`]), so a gateway with 1,000
/// resources keeps about 8 KiB of each (a few dozen messages) where one with four keeps
/// 2 MiB of each. Without it, 300 messages of each resource (some 150 KB with their
/// records) would hold about 150 MB on a 1,000-device gateway.
pub const KEPT_BYTES_IN_ALL: usize = 8 * 1024 * 1024;
/// What keeping one entry or instruction costs beyond its text: the record itself and
/// its small strings (time, type), with the allocator's rounding.
const RECORD_COST: usize = 192;
/// What one status update of a kept instruction costs.
const STATUS_COST: usize = 64;
/// An instruction's text is kept up to this length (the device page shows its type and
/// statuses; the inspector has the whole message while it is kept).
const INSTRUCTION_TEXT: usize = 4096;

/// One entry of the inspector: a message that crossed the bus, or a frame refused at an
/// edge (which never crossed it).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Increasing over the whole gateway.
    pub seq: u64,
    /// When it was seen (RFC 3339).
    pub t: String,
    /// `rm>cem` or `cem>rm`: who sent it.
    pub dir: &'static str,
    /// The message type (`Handshake`, `FRBC.Instruction`, …), or `?` for a refused frame
    /// whose type could not be read.
    pub kind: String,
    /// For a ReceptionStatus, and for a refused frame: the status.
    pub status: Option<String>,
    /// Why it was refused: the ReceptionStatus's diagnostic label, or the edge's
    /// diagnostic (which names the s2-kit rule where there is one).
    pub rule: Option<String>,
    /// Whether this is a refusal: a frame refused at the edge, or a ReceptionStatus that
    /// is not OK.
    pub refused: bool,
    /// The message as it was sent (absent for a frame refused at the edge: the bus never
    /// carries it).
    pub json: Option<String>,
}

/// One instruction and the status updates the RM sent for it.
#[derive(Debug, Clone, Serialize)]
pub struct Instruction {
    /// When the CEM sent it.
    pub t: String,
    /// Its message type.
    pub kind: String,
    /// Its id.
    pub id: String,
    /// The instruction as sent.
    pub json: String,
    /// `(when, status_type)` of each InstructionStatusUpdate, in order.
    pub statuses: Vec<(String, String)>,
}

/// Counts per resource since start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Messages by (direction, type).
    pub messages: BTreeMap<(&'static str, String), u64>,
    /// Refusals by (where, status): `edge` for frames refused by the gateway's edge
    /// check, `rm` and `cem` for a ReceptionStatus that is not OK sent by that side.
    pub refusals: BTreeMap<(&'static str, String), u64>,
    /// Times each side came up: `cem` counts link (re)connections.
    pub ups: BTreeMap<&'static str, u64>,
    /// InstructionStatusUpdates by status type.
    pub instruction_statuses: BTreeMap<String, u64>,
}

/// A queue kept within a count and a cost, the oldest dropped first.
struct Log<T> {
    items: VecDeque<T>,
    /// What `items` costs to keep.
    bytes: usize,
}

impl<T> Default for Log<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T> Log<T> {
    fn push(&mut self, item: T, cost: usize) {
        self.bytes += cost;
        self.items.push_back(item);
    }

    /// Drop the oldest beyond `count` items or `bytes` (by `cost`, the cost each was
    /// counted at); the newest is always kept.
    fn trim(&mut self, count: usize, bytes: usize, cost: impl Fn(&T) -> usize) {
        while self.items.len() > count || (self.bytes > bytes && self.items.len() > 1) {
            let Some(old) = self.items.pop_front() else {
                break;
            };
            self.bytes -= cost(&old);
        }
    }
}

#[derive(Default)]
struct Resource {
    /// Costed by [`entry_cost`].
    messages: Log<Entry>,
    /// Costed by [`instruction_cost`].
    instructions: Log<Instruction>,
    /// The last message of each type the RM sent, as sent.
    latest: BTreeMap<String, String>,
    counts: Counts,
}

/// The tap. `changes` ticks on every event, for the live pages.
pub struct Traffic {
    resources: Mutex<BTreeMap<String, Resource>>,
    seq: Mutex<u64>,
    changes: watch::Sender<u64>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            resources: Mutex::default(),
            seq: Mutex::new(0),
            changes: watch::Sender::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn dir_of(from: Side) -> &'static str {
    match from {
        Side::Rm => "rm>cem",
        Side::Cem => "cem>rm",
    }
}

fn side_name(from: Side) -> &'static str {
    match from {
        Side::Rm => "rm",
        Side::Cem => "cem",
    }
}

/// `status` as S2 spells it (`INVALID_CONTENT`).
fn status_name(status: impl Serialize) -> String {
    match serde_json::to_value(status) {
        Ok(Value::String(s)) => s,
        _ => "UNKNOWN".to_string(),
    }
}

impl Traffic {
    /// Ticks (a new sequence number) whenever something was seen.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The kept messages of `resource_id` after `since` (a `seq`), oldest first.
    pub fn messages(&self, resource_id: &str, since: u64) -> Vec<Entry> {
        lock(&self.resources)
            .get(resource_id)
            .map(|r| {
                r.messages
                    .items
                    .iter()
                    .filter(|e| e.seq > since)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The kept instructions of `resource_id`, newest first.
    pub fn instructions(&self, resource_id: &str) -> Vec<Instruction> {
        lock(&self.resources)
            .get(resource_id)
            .map(|r| r.instructions.items.iter().rev().cloned().collect())
            .unwrap_or_default()
    }

    /// The last message of each type the RM of `resource_id` sent.
    pub fn latest(&self, resource_id: &str) -> BTreeMap<String, String> {
        lock(&self.resources)
            .get(resource_id)
            .map(|r| r.latest.clone())
            .unwrap_or_default()
    }

    /// The counts of every resource seen, by resource id.
    pub fn counts(&self) -> BTreeMap<String, Counts> {
        lock(&self.resources)
            .iter()
            .map(|(id, r)| (id.clone(), r.counts.clone()))
            .collect()
    }

    /// The kept messages of `resource_id` as an s2-kit `.s2log` transcript (the traffic
    /// log's line format).
    pub fn s2log(&self, resource_id: &str) -> String {
        let resource = Value::String(resource_id.to_string());
        let mut out = String::new();
        for e in self.messages(resource_id, 0) {
            if let Some(json) = &e.json {
                out.push_str(&format!(
                    "{{\"t\":\"{}\",\"dir\":\"{}\",\"resource\":{resource},\"msg\":{json}}}\n",
                    e.t, e.dir
                ));
            }
        }
        out
    }

    fn next_seq(&self) -> u64 {
        let mut seq = lock(&self.seq);
        *seq += 1;
        *seq
    }

    fn frame(&self, resource: &mut Resource, from: Side, frame: &Frame, seq: u64, t: String) {
        let kind = frame.kind().as_str().to_string();
        let dir = dir_of(from);
        *resource
            .counts
            .messages
            .entry((dir, kind.clone()))
            .or_default() += 1;
        let mut entry = Entry {
            seq,
            t: t.clone(),
            dir,
            kind: kind.clone(),
            status: None,
            rule: None,
            refused: false,
            json: Some(frame.text().to_string()),
        };
        if kind == "ReceptionStatus"
            || kind == "InstructionStatusUpdate"
            || kind.ends_with(".Instruction")
        {
            let value: Value = serde_json::from_str(frame.text()).unwrap_or(Value::Null);
            let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_string);
            if kind == "ReceptionStatus" {
                entry.status = field("status");
                entry.rule = field("diagnostic_label");
                entry.refused = entry.status.as_deref().is_some_and(|s| s != "OK");
                if let (true, Some(status)) = (entry.refused, &entry.status) {
                    *resource
                        .counts
                        .refusals
                        .entry((side_name(from), status.clone()))
                        .or_default() += 1;
                }
            } else if kind == "InstructionStatusUpdate" {
                let status = field("status_type").unwrap_or_else(|| "UNKNOWN".into());
                *resource
                    .counts
                    .instruction_statuses
                    .entry(status.clone())
                    .or_default() += 1;
                let id = field("instruction_id").unwrap_or_default();
                let instructions = &mut resource.instructions;
                if let Some(i) = instructions.items.iter_mut().find(|i| i.id == id) {
                    i.statuses.push((t.clone(), status));
                    instructions.bytes += STATUS_COST;
                }
            } else if from == Side::Cem {
                let instruction = Instruction {
                    t: t.clone(),
                    kind: kind.clone(),
                    id: field("id")
                        .or_else(|| field("message_id"))
                        .unwrap_or_default(),
                    json: truncated(frame.text(), INSTRUCTION_TEXT),
                    statuses: Vec::new(),
                };
                let cost = instruction_cost(&instruction);
                resource.instructions.push(instruction, cost);
            }
        }
        if from == Side::Rm {
            resource.latest.insert(kind, frame.text().to_string());
        }
        resource.push(entry);
    }

    fn rejected(resource: &mut Resource, from: Side, rejection: &Rejection, seq: u64, t: String) {
        let status = status_name(rejection.status);
        *resource
            .counts
            .refusals
            .entry(("edge", status.clone()))
            .or_default() += 1;
        resource.push(Entry {
            seq,
            t,
            dir: dir_of(from),
            kind: rejection
                .kind
                .map_or_else(|| "?".to_string(), |k| k.as_str().to_string()),
            status: Some(status),
            rule: Some(rejection.diagnostic.clone()),
            refused: true,
            json: None,
        });
    }
}

fn entry_cost(entry: &Entry) -> usize {
    RECORD_COST
        + entry.json.as_ref().map_or(0, String::len)
        + entry.rule.as_ref().map_or(0, String::len)
}

fn instruction_cost(instruction: &Instruction) -> usize {
    RECORD_COST + instruction.json.len() + instruction.statuses.len() * STATUS_COST
}

/// One resource's share of [`KEPT_BYTES_IN_ALL`] when the tap knows `resources`.
fn share(resources: usize) -> usize {
    (KEPT_BYTES_IN_ALL / resources.max(1)).min(KEPT_BYTES)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl Resource {
    fn push(&mut self, entry: Entry) {
        let cost = entry_cost(&entry);
        self.messages.push(entry, cost);
    }

    /// Keep at most [`KEPT_MESSAGES`] messages in three quarters of `share`, and
    /// [`KEPT_INSTRUCTIONS`] instructions in the last quarter.
    fn trim(&mut self, share: usize) {
        self.messages.trim(KEPT_MESSAGES, share / 4 * 3, entry_cost);
        self.instructions
            .trim(KEPT_INSTRUCTIONS, share / 4, instruction_cost);
    }
}

impl Tap for Traffic {
    fn observe(&self, resource_id: &str, from: Side, event: &BusEvent) {
        let seq = self.next_seq();
        let t = Timestamp::now().to_string();
        {
            let mut resources = lock(&self.resources);
            let share = share(resources.len() + usize::from(!resources.contains_key(resource_id)));
            let resource = resources.entry(resource_id.to_string()).or_default();
            match event {
                BusEvent::Frame(frame) => self.frame(resource, from, frame, seq, t),
                BusEvent::Rejected(rejection) => Self::rejected(resource, from, rejection, seq, t),
                BusEvent::Up => *resource.counts.ups.entry(side_name(from)).or_default() += 1,
                BusEvent::Down { .. } | BusEvent::Close { .. } => {}
            }
            resource.trim(share);
        }
        self.changes.send_replace(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2gw_core::s2::{Id, ReceptionStatusValues};

    fn frame(text: &str) -> BusEvent {
        let message = s2gw_core::s2::decode(text).unwrap();
        BusEvent::Frame(Frame::new(message))
    }

    #[test]
    fn a_refusal_at_the_edge_is_kept_with_its_rule_and_counted() {
        let traffic = Traffic::default();
        let rejection = Rejection {
            kind: None,
            status: ReceptionStatusValues::InvalidData,
            subject: Id::NIL,
            diagnostic: "S2-MSG-001: not JSON".into(),
        };
        traffic.observe("r", Side::Cem, &BusEvent::Rejected(Box::new(rejection)));
        let kept = traffic.messages("r", 0);
        assert_eq!(kept.len(), 1);
        assert!(kept[0].refused);
        assert_eq!(kept[0].status.as_deref(), Some("INVALID_DATA"));
        assert_eq!(kept[0].rule.as_deref(), Some("S2-MSG-001: not JSON"));
        assert_eq!(
            traffic.counts()["r"].refusals[&("edge", "INVALID_DATA".to_string())],
            1
        );
        assert_eq!(
            traffic.s2log("r"),
            "",
            "a refused frame never crossed the bus"
        );
    }

    #[test]
    fn what_is_kept_stays_bounded_in_count() {
        let traffic = Traffic::default();
        let text = r#"{"message_type":"ReceptionStatus","subject_message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000001","status":"OK"}"#;
        for _ in 0..(KEPT_MESSAGES + 50) {
            traffic.observe("r", Side::Rm, &frame(text));
        }
        let kept = traffic.messages("r", 0);
        assert_eq!(kept.len(), KEPT_MESSAGES);
        assert_eq!(
            traffic.counts()["r"].messages[&("rm>cem", "ReceptionStatus".to_string())],
            (KEPT_MESSAGES + 50) as u64,
            "the counts go on"
        );
        assert_eq!(traffic.s2log("r").lines().count(), KEPT_MESSAGES);
    }

    #[test]
    fn a_gateway_with_many_resources_keeps_an_equal_share_of_one_budget() {
        let traffic = Traffic::default();
        let text = r#"{"message_type":"ReceptionStatus","subject_message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000001","status":"OK"}"#;
        let resources: Vec<String> = (0..1000).map(|i| format!("r{i}")).collect();
        for _ in 0..100 {
            for r in &resources {
                traffic.observe(r, Side::Rm, &frame(text));
            }
        }
        let held: usize = lock(&traffic.resources)
            .values()
            .map(|r| r.messages.bytes + r.instructions.bytes)
            .sum();
        assert!(
            held <= KEPT_BYTES_IN_ALL,
            "{held} bytes held, budget {KEPT_BYTES_IN_ALL}"
        );
        let kept = traffic.messages("r999", 0);
        let each = share(1000) / 4 * 3 / (RECORD_COST + text.len());
        assert_eq!(kept.len(), each, "every resource keeps its share");
        assert_eq!(
            kept.last().map(|e| e.seq),
            Some(100 * 1000),
            "the newest message is the one kept last"
        );
    }
}
