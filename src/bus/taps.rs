//! The taps every gateway has: per-resource counters and the traffic log.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use s2gw_core::s2::Timestamp;
use s2gw_core::{BusEvent, Side};
use serde::Serialize;

use super::Tap;

/// What crossed one route, for the demo view, bridge info and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteCounters {
    /// Messages from the RM side to the CEM.
    pub rm_to_cem: u64,
    /// Messages from the CEM side to the RM.
    pub cem_to_rm: u64,
    /// Frames refused at either edge.
    pub rejected: u64,
    /// Times a side came up.
    pub ups: u64,
    /// Times a side went down.
    pub downs: u64,
    /// Messages per message type, both directions.
    pub by_kind: BTreeMap<String, u64>,
}

/// Counts everything per resource.
#[derive(Debug, Default)]
pub struct Counters {
    routes: Mutex<BTreeMap<String, RouteCounters>>,
}

impl Counters {
    /// A copy of every route's counters.
    pub fn snapshot(&self) -> BTreeMap<String, RouteCounters> {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Tap for Counters {
    fn observe(&self, resource_id: &str, from: Side, event: &BusEvent) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let counters = routes.entry(resource_id.to_string()).or_default();
        match event {
            BusEvent::Frame(frame) => {
                match from {
                    Side::Rm => counters.rm_to_cem += 1,
                    Side::Cem => counters.cem_to_rm += 1,
                }
                *counters
                    .by_kind
                    .entry(frame.kind().as_str().to_string())
                    .or_default() += 1;
            }
            BusEvent::Rejected(_) => counters.rejected += 1,
            BusEvent::Up => counters.ups += 1,
            BusEvent::Down { .. } => counters.downs += 1,
            BusEvent::Close { .. } => {}
        }
    }
}

/// Records every S2 message as one line of an s2-kit `.s2log` transcript.
///
/// The lines are what `s2_kit::testing::read_s2log` and `s2-kit replay` read
/// (`{"t","dir","msg"}`), plus a `resource` field so one file can hold a whole gateway;
/// s2-kit ignores the extra field. Writing happens on a thread of its own so the bus
/// never waits for a disk.
pub struct TrafficLog {
    lines: Option<std::sync::mpsc::Sender<String>>,
    writer: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl TrafficLog {
    /// Append to the transcript at `path`, creating it if needed.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (lines, rx) = std::sync::mpsc::channel::<String>();
        let owned = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("s2gw-traffic-log".into())
            .spawn(move || write_lines(file, rx, &owned))?;
        Ok(Self {
            lines: Some(lines),
            writer: Some(writer),
            path: path.to_path_buf(),
        })
    }

    /// Where the transcript goes.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_lines(file: std::fs::File, rx: std::sync::mpsc::Receiver<String>, path: &Path) {
    let mut out = std::io::BufWriter::new(file);
    while let Ok(line) = rx.recv() {
        let mut result = writeln!(out, "{line}");
        // Flush when the queue is drained, so the file is current whenever the bus is
        // quiet, without a syscall per line under load.
        if result.is_ok() {
            let mut more = rx.try_iter();
            result = more.try_for_each(|line| writeln!(out, "{line}"));
        }
        if let Err(error) = result.and_then(|()| out.flush()) {
            tracing::error!(path = %path.display(), %error, "traffic log write failed; logging stops");
            return;
        }
    }
}

impl Tap for TrafficLog {
    fn observe(&self, resource_id: &str, from: Side, event: &BusEvent) {
        let BusEvent::Frame(frame) = event else {
            return;
        };
        let dir = match from {
            Side::Rm => "rm>cem",
            Side::Cem => "cem>rm",
        };
        // The message text is already JSON: splice it in rather than re-encoding it.
        let line = format!(
            r#"{{"t":"{}","dir":"{dir}","resource":{},"msg":{}}}"#,
            Timestamp::now(),
            serde_json::Value::String(resource_id.to_string()),
            frame.text()
        );
        if let Some(lines) = &self.lines {
            let _ = lines.send(line);
        }
    }
}

impl Drop for TrafficLog {
    /// The last route is gone (the gateway is stopping): write what is still queued
    /// before the process exits, so a recording never loses its last messages.
    fn drop(&mut self) {
        drop(self.lines.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Shared handles to the standard taps, for the parts of the daemon that read them.
#[derive(Clone, Default)]
pub struct StandardTaps {
    /// Per-resource counters.
    pub counters: Arc<Counters>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2gw_core::s2::{EnergyManagementRole, Frame, Message, mint_id, offered_versions};

    fn handshake() -> Frame {
        Frame::new(Message::Handshake(s2gw_core::s2::Handshake {
            message_id: mint_id(),
            role: EnergyManagementRole::Rm,
            supported_protocol_versions: Some(offered_versions()),
        }))
    }

    #[test]
    fn the_traffic_log_is_an_s2log_s2_kit_reads_back_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("traffic.s2log");
        let log = TrafficLog::open(&path).unwrap();
        let frames: Vec<Frame> = (0..100).map(|_| handshake()).collect();
        for frame in &frames {
            log.observe("r1", Side::Rm, &BusEvent::Frame(frame.clone()));
        }
        log.observe("r1", Side::Cem, &BusEvent::Up);
        // Dropping the last handle writes everything still queued.
        drop(log);

        let text = std::fs::read_to_string(&path).unwrap();
        let entries = s2_kit::testing::read_s2log(&text);
        assert_eq!(
            entries.len(),
            100,
            "one transcript line per frame, nothing else"
        );
        assert!(
            entries
                .iter()
                .all(|e| e.direction == s2_kit::testing::Direction::RmToCem)
        );
        let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert_eq!(json(&entries[42].text), json(frames[42].text()));
        assert!(text.lines().all(|l| l.contains(r#""resource":"r1""#)));
    }

    #[test]
    fn counters_count_per_resource_and_direction() {
        let counters = Counters::default();
        counters.observe("a", Side::Rm, &BusEvent::Frame(handshake()));
        counters.observe("a", Side::Cem, &BusEvent::Up);
        counters.observe("b", Side::Cem, &BusEvent::Frame(handshake()));
        let snapshot = counters.snapshot();
        assert_eq!(snapshot["a"].rm_to_cem, 1);
        assert_eq!(snapshot["a"].ups, 1);
        assert_eq!(snapshot["b"].cem_to_rm, 1);
        assert_eq!(snapshot["b"].by_kind["Handshake"], 1);
    }
}
