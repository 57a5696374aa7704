//! The live view of `s2gw demo`: a line per device and an S2 traffic summary.
//!
//! A line reads: the device, its power, the control type the CEM selected, the active
//! instruction, instructions carried out and failed, the S2 link, and, for a device with
//! a task or a demand (PPBC, DDBC), what it is doing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use s2gw_core::device::TaskProgress;
use s2gw_core::s2::ControlType;

use crate::bus::taps::RouteCounters;
use crate::rm::{LinkState, RmView};

/// The short name people know a control type by.
pub fn control_type_label(control_type: Option<ControlType>) -> &'static str {
    match control_type {
        None | Some(ControlType::NoSelection) => "-",
        Some(ControlType::NotControllable) => "NOT_CTRL",
        Some(ControlType::PowerEnvelopeBasedControl) => "PEBC",
        Some(ControlType::FillRateBasedControl) => "FRBC",
        Some(ControlType::OperationModeBasedControl) => "OMBC",
        Some(ControlType::PowerProfileBasedControl) => "PPBC",
        Some(ControlType::DemandDrivenBasedControl) => "DDBC",
        Some(_) => "?",
    }
}

fn link_label(link: &LinkState) -> String {
    match link {
        LinkState::Down => "down".to_string(),
        LinkState::Handshaking => "handshaking".to_string(),
        LinkState::Connected(version) => format!("up ({version})"),
    }
}

fn power_label(view: &RmView) -> String {
    match &view.readings {
        _ if !view.available => "unavailable".to_string(),
        None => "-".to_string(),
        Some(readings) => match readings.soc {
            Some(soc) => format!("{:.0} W {soc:>3.0}%", readings.power_w),
            None => format!("{:.0} W", readings.power_w),
        },
    }
}

/// What a device with a task (its programme and how far it got) or a demand (the demand
/// and each actuator's mode) is doing; empty for other devices and while unavailable.
fn state_label(view: &RmView) -> String {
    let Some(readings) = view.readings.as_ref().filter(|_| view.available) else {
        return String::new();
    };
    let minutes = |secs: f64| (secs.max(0.0) / 60.0).floor();
    if let Some(task) = &readings.task {
        return match &task.progress {
            TaskProgress::Waiting => "waiting to start".to_string(),
            TaskProgress::Running {
                programme,
                elapsed_s,
            } => format!("{programme} running, {:.0} min in", minutes(*elapsed_s)),
            TaskProgress::Paused {
                programme,
                elapsed_s,
            } => format!("{programme} paused at {:.0} min", minutes(*elapsed_s)),
            TaskProgress::Finished { programme } => format!("{programme} done"),
        };
    }
    if let Some(demand) = &readings.demand {
        let actuators: Vec<String> = demand
            .actuators
            .iter()
            .map(|a| {
                if a.factor > 0.0 {
                    format!("{} {} {:.0} %", a.actuator, a.mode, a.factor * 100.0)
                } else {
                    format!("{} {}", a.actuator, a.mode)
                }
            })
            .collect();
        return format!(
            "demand {:.1} kW: {}",
            demand.demand / 1000.0,
            actuators.join(", ")
        );
    }
    String::new()
}

/// `text` with every RFC 3339 instant in it (as S2 timestamps print) cut to its time of
/// day, so an instruction's summary fits its column: `at 2024-10-04T12:00:06.180Z` reads
/// `at 12:00:06 UTC`.
fn short_instants(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if let Some(len) = instant_at(&bytes[i..]) {
            out.push_str(&text[copied..i]);
            out.push_str(&text[i + 11..i + 19]);
            out.push_str(" UTC");
            i += len;
            copied = i;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// The length of the `YYYY-MM-DDTHH:MM:SS[.fff]Z` at the start of `bytes`, if one is.
fn instant_at(bytes: &[u8]) -> Option<usize> {
    const SHAPE: &[u8; 19] = b"0000-00-00T00:00:00";
    let head = bytes.get(..SHAPE.len())?;
    let shaped = head.iter().zip(SHAPE).all(|(b, s)| match s {
        b'0' => b.is_ascii_digit(),
        other => b == other,
    });
    if !shaped {
        return None;
    }
    let mut len = SHAPE.len();
    if bytes.get(len) == Some(&b'.') {
        len += 1;
        while bytes.get(len).is_some_and(u8::is_ascii_digit) {
            len += 1;
        }
    }
    (bytes.get(len) == Some(&b'Z')).then_some(len + 1)
}

/// The whole view as text: a header, one line per device, the traffic summary.
pub fn render(
    views: &[RmView],
    counters: &BTreeMap<String, RouteCounters>,
    uptime: Duration,
) -> String {
    let mut out = String::new();
    let secs = uptime.as_secs();
    let _ = writeln!(
        out,
        "s2gw demo  {} devices  up {:02}:{:02}:{:02}  (Ctrl-C stops)\n",
        views.len(),
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    let _ = writeln!(
        out,
        "{:<16} {:>14}  {:<8}  {:<32}  {:>7}  {:<16}  STATE",
        "DEVICE", "POWER", "CONTROL", "ACTIVE", "OK/FAIL", "S2 LINK"
    );
    for view in views {
        let active = view
            .active
            .as_deref()
            .map_or_else(|| "autonomous".to_string(), short_instants);
        let line = format!(
            "{:<16} {:>14}  {:<8}  {:<32}  {:>7}  {:<16}  {}",
            clip(&view.name, 16),
            power_label(view),
            control_type_label(view.control_type),
            clip(&active, 32),
            format!(
                "{}/{}",
                view.instructions_executed, view.instructions_failed
            ),
            link_label(&view.link),
            clip(&state_label(view), 60)
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out.push('\n');
    out.push_str(&traffic_summary(counters));
    out
}

/// One paragraph of S2 traffic totals over every route.
pub fn traffic_summary(counters: &BTreeMap<String, RouteCounters>) -> String {
    let mut total = RouteCounters::default();
    for route in counters.values() {
        total.rm_to_cem += route.rm_to_cem;
        total.cem_to_rm += route.cem_to_rm;
        total.rejected += route.rejected;
        for (kind, n) in &route.by_kind {
            *total.by_kind.entry(kind.clone()).or_default() += n;
        }
    }
    let mut kinds: Vec<_> = total.by_kind.into_iter().collect();
    kinds.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let top: Vec<String> = kinds
        .iter()
        .take(6)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    format!(
        "S2 traffic: {} RM->CEM, {} CEM->RM, {} refused at the edge\n  {}\n",
        total.rm_to_cem,
        total.cem_to_rm,
        total.rejected,
        top.join(", ")
    )
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut clipped: String = text.chars().take(width.saturating_sub(1)).collect();
    clipped.push('~');
    clipped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_cut_to_their_time_of_day() {
        assert_eq!(
            short_instants("Eco 50 °C at 2024-10-04T12:00:06.180Z"),
            "Eco 50 °C at 12:00:06 UTC"
        );
        assert_eq!(
            short_instants("at 2024-10-04T12:00:06Z."),
            "at 12:00:06 UTC."
        );
        // Not an instant: left alone.
        assert_eq!(short_instants("2024-10-04 12:00"), "2024-10-04 12:00");
        assert_eq!(short_instants("2024-10-04T12:00:06"), "2024-10-04T12:00:06");
        assert_eq!(short_instants("limit >= -3600 W"), "limit >= -3600 W");
    }
}
