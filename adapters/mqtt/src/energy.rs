//! The Energy dashboard's counters: separate, only-rising energy counters per device kind
//! (grid import and export, solar production, battery charged and discharged, an EV's or
//! a consumer's energy), each from the device's own register where it has one that means
//! exactly that, else integrated from the power.
//!
//! Which counters a device has depends only on its kind ([`counters_of`]), never on live
//! values, so Home Assistant's discovery of a device never changes while it runs. The
//! integrated ones are carried in the retained state and read back at start-up, so a
//! gateway restart continues them instead of starting again at 0.

use std::time::Duration;

use s2gw_core::device::DeviceKind;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

/// A gap between two power samples longer than this is not integrated: nobody knows
/// what the device did meanwhile (the gateway was stalled or the device unreadable).
pub const MAX_INTEGRATION_GAP: Duration = Duration::from_secs(300);

/// Which way of the power a counter adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Consumption (power > 0): import, charging, consuming.
    In,
    /// Production (power < 0): export, discharging, producing.
    Out,
}

/// One counter of a device kind: its key in the state (`import_wh`), its name in Home
/// Assistant, which way of the power it counts, and whether the device's own energy
/// register (`energy_wh`) means exactly this counter for this kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CounterDef {
    pub key: &'static str,
    pub name: &'static str,
    pub flow: Flow,
    pub register: bool,
}

const fn def(key: &'static str, name: &'static str, flow: Flow, register: bool) -> CounterDef {
    CounterDef {
        key,
        name,
        flow,
        register,
    }
}

/// The counters of a kind. A meter's register is not used: meters report a total of
/// import and export (SDM630's 0x0156) as often as import alone, so both are integrated.
/// A battery's register counts both ways (throughput), so it cannot be split either.
pub(crate) fn counters_of(kind: DeviceKind) -> &'static [CounterDef] {
    const METER: &[CounterDef] = &[
        def("import_wh", "Grid import", Flow::In, false),
        def("export_wh", "Grid export", Flow::Out, false),
    ];
    const PV: &[CounterDef] = &[def("produced_wh", "Solar production", Flow::Out, true)];
    const BATTERY: &[CounterDef] = &[
        def("charged_wh", "Battery charged", Flow::In, false),
        def("discharged_wh", "Battery discharged", Flow::Out, false),
    ];
    const EV: &[CounterDef] = &[def("charged_wh", "EV charged", Flow::In, true)];
    const CONSUMER: &[CounterDef] = &[def("consumed_wh", "Energy consumed", Flow::In, true)];
    match kind {
        DeviceKind::Meter => METER,
        DeviceKind::PvInverter => PV,
        DeviceKind::Battery => BATTERY,
        DeviceKind::EvCharger => EV,
        DeviceKind::HeatPump | DeviceKind::Load => CONSUMER,
    }
}

/// Where a counter's value comes from, as its Home Assistant attribute says.
pub(crate) fn source(def: &CounterDef, reports_energy: bool) -> &'static str {
    if def.register && reports_energy {
        "device register"
    } else {
        "integrated from power"
    }
}

/// One device's counters.
#[derive(Debug, Clone)]
pub(crate) struct EnergyCounters {
    kind: DeviceKind,
    reports_energy: bool,
    /// The integrated counters' values in Wh, by key.
    integrated: Vec<(&'static str, f64)>,
    /// The last power sample and when it was taken.
    last: Option<(f64, Instant)>,
}

impl EnergyCounters {
    pub(crate) fn new(kind: DeviceKind, reports_energy: bool) -> Self {
        let integrated = counters_of(kind)
            .iter()
            .filter(|d| !(d.register && reports_energy))
            .map(|d| (d.key, 0.0))
            .collect();
        Self {
            kind,
            reports_energy,
            integrated,
            last: None,
        }
    }

    /// Whether these counters were made for this kind and register.
    pub(crate) fn fits(&self, kind: DeviceKind, reports_energy: bool) -> bool {
        self.kind == kind && self.reports_energy == reports_energy
    }

    /// A power sample (`None`: unknown). The power held since the previous sample is
    /// added (the device's reading stays valid until the next one), unless the gap is
    /// longer than [`MAX_INTEGRATION_GAP`] or the power was unknown.
    pub(crate) fn sample(&mut self, power_w: Option<f64>, now: Instant) {
        if let Some((previous, at)) = self.last {
            let elapsed = now.saturating_duration_since(at);
            if elapsed <= MAX_INTEGRATION_GAP {
                let wh = previous * elapsed.as_secs_f64() / 3600.0;
                for (key, value) in &mut self.integrated {
                    let flow = counters_of(self.kind)
                        .iter()
                        .find(|d| d.key == *key)
                        .map(|d| d.flow);
                    match flow {
                        Some(Flow::In) if wh > 0.0 => *value += wh,
                        Some(Flow::Out) if wh < 0.0 => *value -= wh,
                        _ => {}
                    }
                }
            }
        }
        self.last = power_w.filter(|p| p.is_finite()).map(|p| (p, now));
    }

    /// Continue from the values a previous run left in its retained state: they are
    /// added to what this run counted before the read-back (nothing, or next to it).
    pub(crate) fn restore(&mut self, saved: &Value) {
        for (key, value) in &mut self.integrated {
            if let Some(old) = saved.get(*key).and_then(Value::as_f64)
                && old.is_finite()
                && old > 0.0
            {
                *value += old;
            }
        }
    }

    /// The counters for the state JSON: key → Wh (rounded to whole Wh, as the
    /// discovery's display precision says), and `energy_sources`: key → where it comes
    /// from. A register counter is the device's `energy_wh`, unknown when that is.
    pub(crate) fn to_json(&self, register_wh: Option<f64>) -> (Map<String, Value>, Value) {
        let mut values = Map::new();
        let mut sources = Map::new();
        for d in counters_of(self.kind) {
            let value = match self.integrated.iter().find(|(k, _)| *k == d.key) {
                Some((_, wh)) => Some(*wh),
                None => register_wh,
            };
            values.insert(d.key.into(), json!(value.map(f64::round)));
            sources.insert(d.key.into(), json!(source(d, self.reports_energy)));
        }
        (values, Value::Object(sources))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_battery_counts_charge_and_discharge_apart() {
        let t0 = Instant::now();
        let mut c = EnergyCounters::new(DeviceKind::Battery, true);
        c.sample(Some(1000.0), t0);
        c.sample(Some(-2000.0), t0 + Duration::from_secs(180));
        c.sample(None, t0 + Duration::from_secs(360));
        // Unknown power adds nothing afterwards.
        c.sample(Some(500.0), t0 + Duration::from_secs(400));
        let (values, sources) = c.to_json(Some(99.0));
        assert_eq!(values["charged_wh"], json!(50.0));
        assert_eq!(values["discharged_wh"], json!(100.0));
        assert_eq!(sources["charged_wh"], "integrated from power");
    }

    #[test]
    fn a_meter_splits_import_and_export_and_skips_long_gaps() {
        let t0 = Instant::now();
        let mut c = EnergyCounters::new(DeviceKind::Meter, true);
        c.sample(Some(-3600.0), t0);
        c.sample(Some(3600.0), t0 + Duration::from_secs(10));
        c.sample(Some(0.0), t0 + Duration::from_secs(20));
        c.sample(Some(0.0), t0 + MAX_INTEGRATION_GAP * 3);
        let (values, _) = c.to_json(Some(1.0));
        assert_eq!(values["export_wh"], json!(10.0));
        assert_eq!(values["import_wh"], json!(10.0));
        c.sample(Some(7200.0), t0 + MAX_INTEGRATION_GAP * 4);
        c.sample(Some(0.0), t0 + MAX_INTEGRATION_GAP * 6);
        assert_eq!(c.to_json(None).0["import_wh"], json!(10.0), "gap skipped");
    }

    #[test]
    fn a_pv_register_is_the_production_else_it_is_integrated() {
        let with = EnergyCounters::new(DeviceKind::PvInverter, true);
        let (values, sources) = with.to_json(Some(12000.201));
        assert_eq!(values["produced_wh"], json!(12000.0));
        assert_eq!(sources["produced_wh"], "device register");
        assert_eq!(with.to_json(None).0["produced_wh"], Value::Null);

        let t0 = Instant::now();
        let mut without = EnergyCounters::new(DeviceKind::PvInverter, false);
        without.sample(Some(-6000.0), t0);
        without.sample(Some(-6000.0), t0 + Duration::from_secs(60));
        let (values, sources) = without.to_json(Some(5.0));
        assert_eq!(values["produced_wh"], json!(100.0));
        assert_eq!(sources["produced_wh"], "integrated from power");
    }

    #[test]
    fn restored_counters_continue_upwards() {
        let mut c = EnergyCounters::new(DeviceKind::Meter, false);
        c.restore(&json!({"import_wh": 1234.0, "export_wh": "x"}));
        c.restore(&json!({"export_wh": -5.0}));
        let (values, _) = c.to_json(None);
        assert_eq!(values["import_wh"], json!(1234.0));
        assert_eq!(values["export_wh"], json!(0.0));
    }
}
