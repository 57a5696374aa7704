//! `[gateway]`: settings of the daemon as a whole.

use std::num::NonZeroU32;
use std::path::PathBuf;

use serde::Deserialize;

use super::load::Cx;
use super::located::{Count, Text, Uint};

/// Default `gateway.name`.
pub const DEFAULT_GATEWAY_NAME: &str = "s2gw";
/// Default `gateway.state_dir` (what systemd's `StateDirectory=s2gw` creates).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/s2gw";
/// Default `gateway.log_level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// `[gateway]`: settings of the daemon as a whole. Every key has a default, so the section
/// may be left out.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySection {
    /// `name`: used in logs and to derive stable resource ids (default `s2gw`). Two
    /// gateways talking to one CEM need different names.
    pub name: String,
    /// `state_dir`: where the daemon keeps state (default `/var/lib/s2gw`).
    pub state_dir: PathBuf,
    /// `max_frame_bytes`: S2 frames larger than this are refused (default 1 MiB).
    pub max_frame_bytes: usize,
    /// `max_frames_per_s`: frames per second a peer may send in one S2-ws-json session,
    /// server or client link; beyond, each is answered TEMPORARY_ERROR (default 100).
    pub max_frames_per_s: NonZeroU32,
    /// `traffic_log`: record every S2 message to this s2-kit `.s2log` transcript.
    pub traffic_log: Option<PathBuf>,
    /// `log_level`: a `tracing` filter (default `info`); `RUST_LOG` overrides it.
    pub log_level: String,
}

/// `[gateway]` as written. Fields in alphabetical order: serde lists them in declaration
/// order in `unknown key (known keys: …)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayToml {
    log_level: Option<Text>,
    max_frame_bytes: Option<Uint<{ 64 * 1024 * 1024 }>>,
    max_frames_per_s: Option<Count<100_000>>,
    name: Option<Text>,
    state_dir: Option<Text>,
    traffic_log: Option<Text>,
}

impl Cx<'_> {
    /// Read `[gateway]` (an empty table when the file has none).
    pub(crate) fn gateway(&mut self, table: &toml::Table) -> Option<GatewaySection> {
        let mark = self.mark();
        let (raw, at) = self.read::<GatewayToml>(table, "gateway")?;
        let name = raw
            .name
            .map_or_else(|| DEFAULT_GATEWAY_NAME.to_string(), |t| t.0);
        if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control)
        {
            at.err(self.errors, "name", "must be 1 to 64 printable characters");
        }
        let state_dir = raw
            .state_dir
            .map_or_else(|| DEFAULT_STATE_DIR.to_string(), |t| t.0);
        if state_dir.is_empty() {
            at.err(self.errors, "state_dir", "must not be empty");
        }
        let max_frame_bytes = raw
            .max_frame_bytes
            .map_or(s2gw_core::s2::DEFAULT_MAX_FRAME_BYTES as u64, |u| u.0);
        if max_frame_bytes < 1024 {
            at.err(
                self.errors,
                "max_frame_bytes",
                format!("must be at least 1024 bytes, got {max_frame_bytes}"),
            );
        }
        let traffic_log = raw.traffic_log.map(|t| t.0);
        if traffic_log.as_deref() == Some("") {
            at.err(
                self.errors,
                "traffic_log",
                "must not be empty (leave the key out to log no traffic)",
            );
        }
        let log_level = raw
            .log_level
            .map_or_else(|| DEFAULT_LOG_LEVEL.to_string(), |t| t.0);
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            at.err(
                self.errors,
                "log_level",
                format!("not a valid tracing filter (such as `info` or `s2gw=debug,info`): {e}"),
            );
        }
        if !self.clean_since(mark) {
            return None;
        }
        Some(GatewaySection {
            name,
            state_dir: self.resolve(&state_dir),
            max_frame_bytes: usize::try_from(max_frame_bytes).unwrap_or(usize::MAX),
            max_frames_per_s: raw
                .max_frames_per_s
                .and_then(|c| NonZeroU32::new(u32::try_from(c.0).ok()?))
                .unwrap_or(s2gw_ws::DEFAULT_MAX_FRAMES_PER_S),
            traffic_log: traffic_log.map(|p| self.resolve(&p)),
            log_level,
        })
    }
}
