//! `/metrics`: the gateway in the Prometheus text format.
//!
//! Built at each scrape from the same snapshots the pages show (the views, the web tap's
//! counts, the device statistics), in a fresh `prometheus-client` registry; only the poll
//! duration histograms live across scrapes. prometheus-client writes OpenMetrics, whose
//! counter families are named without `_total`; [`to_prometheus_text`] turns that into
//! the Prometheus text format 0.0.4 that every Prometheus and `promtool check metrics`
//! read.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::gateway::metered::{DeviceLabel, PollDurations};
use crate::rm::LinkState;

use super::state::WebData;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MessageLabels {
    resource: String,
    direction: String,
    r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    resource: String,
    /// `edge` (the gateway's edge check), `rm` or `cem` (that side's ReceptionStatus).
    by: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    resource: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

type Counters<L> = Family<L, Counter>;
type Gauges<L> = Family<L, Gauge>;
type FloatGauges<L> = Family<L, Gauge<f64, std::sync::atomic::AtomicU64>>;

fn resource(id: &str) -> ResourceLabel {
    ResourceLabel {
        resource: id.to_string(),
    }
}

fn device(id: &str) -> DeviceLabel {
    DeviceLabel {
        device: id.to_string(),
    }
}

/// The whole exposition.
pub fn render(data: &WebData, polls: &PollDurations) -> String {
    let mut registry = Registry::with_prefix("s2gw");
    s2_metrics(&mut registry, data);
    device_metrics(&mut registry, data, polls);
    gateway_metrics(&mut registry, data);
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return "# the metrics could not be encoded\n".to_string();
    }
    to_prometheus_text(&text)
}

fn s2_metrics(registry: &mut Registry, data: &WebData) {
    let names: std::collections::BTreeMap<String, String> = data
        .resources()
        .into_iter()
        .map(|(id, rid)| (rid, id))
        .collect();
    let messages = Counters::<MessageLabels>::default();
    let refusals = Counters::<RefusalLabels>::default();
    let ups = Counters::<ResourceLabel>::default();
    let statuses = Counters::<StatusLabels>::default();
    for (rid, counts) in data.traffic.counts() {
        let Some(id) = names.get(&rid) else { continue };
        for ((dir, kind), n) in &counts.messages {
            let direction = if *dir == "rm>cem" {
                "rm_to_cem"
            } else {
                "cem_to_rm"
            };
            messages
                .get_or_create(&MessageLabels {
                    resource: id.clone(),
                    direction: direction.to_string(),
                    r#type: kind.clone(),
                })
                .inc_by(*n);
        }
        for ((by, status), n) in &counts.refusals {
            refusals
                .get_or_create(&RefusalLabels {
                    resource: id.clone(),
                    by: (*by).to_string(),
                    status: status.clone(),
                })
                .inc_by(*n);
        }
        let cem_ups = counts.ups.get("cem").copied().unwrap_or(0);
        ups.get_or_create(&resource(id)).inc_by(cem_ups);
        for (status, n) in &counts.instruction_statuses {
            statuses
                .get_or_create(&StatusLabels {
                    resource: id.clone(),
                    status: status.clone(),
                })
                .inc_by(*n);
        }
    }
    let connected = Gauges::<ResourceLabel>::default();
    let sessions = Counters::<ResourceLabel>::default();
    for d in &data.devices {
        let view = d.view.borrow();
        let up = matches!(view.link, LinkState::Connected(_));
        connected.get_or_create(&resource(&d.id)).set(i64::from(up));
        sessions
            .get_or_create(&resource(&d.id))
            .inc_by(view.sessions);
    }
    registry.register(
        "s2_messages",
        "S2 messages that crossed the gateway, by resource, direction and message type",
        messages,
    );
    registry.register(
        "s2_refusals",
        "S2 messages refused, by resource, refusing party (edge: the gateway's edge check; rm, cem: that side's ReceptionStatus) and status",
        refusals,
    );
    registry.register(
        "s2_link_connections",
        "Times the CEM side of a resource came up (the first connection and every reconnect)",
        ups,
    );
    registry.register(
        "s2_instruction_status_updates",
        "InstructionStatusUpdates the RM sent, by resource and status",
        statuses,
    );
    registry.register(
        "s2_session_connected",
        "Whether the resource's S2 session is past its handshake (1) or not (0)",
        connected,
    );
    registry.register(
        "s2_sessions",
        "S2 sessions the virtual RM started since the gateway started",
        sessions,
    );
}

fn device_metrics(registry: &mut Registry, data: &WebData, polls: &PollDurations) {
    let available = Gauges::<DeviceLabel>::default();
    let power = FloatGauges::<DeviceLabel>::default();
    let soc = FloatGauges::<DeviceLabel>::default();
    let errors = Counters::<DeviceLabel>::default();
    let commands = Counters::<DeviceLabel>::default();
    let command_errors = Counters::<DeviceLabel>::default();
    let allowed = Gauges::<DeviceLabel>::default();
    for d in &data.devices {
        let label = device(&d.id);
        let view = d.view.borrow();
        available
            .get_or_create(&label)
            .set(i64::from(view.available));
        allowed
            .get_or_create(&label)
            .set(i64::from(d.gate.allowed()));
        if let Some(r) = view.readings.as_ref().filter(|_| view.available) {
            power.get_or_create(&label).set(r.power_w);
            if let Some(s) = r.soc {
                soc.get_or_create(&label).set(s);
            }
        }
        errors.get_or_create(&label).inc_by(d.stats.poll_errors());
        commands.get_or_create(&label).inc_by(d.stats.commands());
        command_errors
            .get_or_create(&label)
            .inc_by(d.stats.command_errors());
    }
    registry.register(
        "device_available",
        "Whether the device is reachable and reporting (1) or not (0)",
        available,
    );
    registry.register(
        "device_cem_control_allowed",
        "Whether the CEM may control the device (the CEM-control switch)",
        allowed,
    );
    registry.register(
        "device_power_watts",
        "The device's active power, consumption positive (absent while unavailable)",
        power,
    );
    registry.register(
        "device_state_of_charge_percent",
        "The device's state of charge, for storage (absent while unavailable)",
        soc,
    );
    registry.register(
        "device_poll_duration_seconds",
        "How long reading the device took",
        polls.clone(),
    );
    registry.register(
        "device_poll_errors",
        "Reads that failed or found the device unavailable",
        errors,
    );
    registry.register("device_commands", "Commands sent to the device", commands);
    registry.register(
        "device_command_errors",
        "Commands the device refused or failed",
        command_errors,
    );
}

fn gateway_metrics(registry: &mut Registry, data: &WebData) {
    let info = Gauges::<VersionLabel>::default();
    info.get_or_create(&VersionLabel {
        version: env!("CARGO_PKG_VERSION").to_string(),
    })
    .set(1);
    registry.register("build_info", "The s2gw version (always 1)", info);
    let uptime = Gauge::<i64>::default();
    uptime.set(i64::try_from(data.started.elapsed().as_secs()).unwrap_or(i64::MAX));
    registry.register(
        "uptime_seconds",
        "Seconds since the gateway started",
        uptime,
    );
    if let Some(mqtt) = &data.mqtt {
        let status = *mqtt.borrow();
        let connected = Gauge::<i64>::default();
        connected.set(i64::from(status.connected));
        registry.register(
            "mqtt_connected",
            "Whether the MQTT connection is up (1) or not (0)",
            connected,
        );
        let connects = Counter::<u64>::default();
        connects.inc_by(status.connects);
        registry.register(
            "mqtt_connections",
            "Times the MQTT connection came up",
            connects,
        );
    }
    let process = super::process::sample();
    let rss = Gauge::<i64>::default();
    rss.set(i64::try_from(process.rss_bytes).unwrap_or(i64::MAX));
    registry.register(
        "process_resident_memory_bytes",
        "Resident memory of the s2gw process",
        rss,
    );
    let sockets = Gauge::<i64>::default();
    sockets.set(i64::try_from(process.sockets).unwrap_or(i64::MAX));
    registry.register(
        "process_open_sockets",
        "Sockets the s2gw process has open",
        sockets,
    );
    let fds = Gauge::<i64>::default();
    fds.set(i64::try_from(process.fds).unwrap_or(i64::MAX));
    registry.register(
        "process_open_fds",
        "File descriptors the s2gw process has open",
        fds,
    );
}

/// OpenMetrics text (as prometheus-client writes it) as the Prometheus text format 0.0.4:
/// a counter family is named after its `_total` sample, and the `# UNIT` and `# EOF`
/// lines, which that format does not have, are dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::BTreeSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_families_take_the_name_of_their_total_sample() {
        let om = "# HELP s2gw_x Things.\n# TYPE s2gw_x counter\ns2gw_x_total{a=\"b\"} 3\n\
                  # HELP s2gw_g A gauge.\n# TYPE s2gw_g gauge\n# UNIT s2gw_g watts\ns2gw_g 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP s2gw_x_total Things.\n# TYPE s2gw_x_total counter\ns2gw_x_total{a=\"b\"} 3\n\
             # HELP s2gw_g A gauge.\n# TYPE s2gw_g gauge\ns2gw_g 1\n"
        );
    }
}
