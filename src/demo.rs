//! The live view of `s2gw demo`: a line per device and an S2 traffic summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

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
        "{:<16} {:>14}  {:<8}  {:<30}  {:>7}  {:<16}",
        "DEVICE", "POWER", "CONTROL", "ACTIVE", "OK/FAIL", "S2 LINK"
    );
    for view in views {
        let _ = writeln!(
            out,
            "{:<16} {:>14}  {:<8}  {:<30}  {:>7}  {:<16}",
            clip(&view.name, 16),
            power_label(view),
            control_type_label(view.control_type),
            clip(view.active.as_deref().unwrap_or("autonomous"), 30),
            format!(
                "{}/{}",
                view.instructions_executed, view.instructions_failed
            ),
            link_label(&view.link)
        );
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
