//! The `sim` device section of the daemon's config file.

use serde::{Deserialize, Serialize};

/// Which simulated device to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimModel {
    /// A PV inverter following the sun (production is negative power).
    Pv,
    /// An EV charger with a car that is plugged in or not.
    Ev,
    /// A home battery with a state of charge.
    Battery,
    /// An SG-Ready heat pump with four states and minimum on/off times.
    HeatPump,
    /// A household meter showing the base load.
    Meter,
    /// A dishwasher with a task to do within a window (PPBC).
    Dishwasher,
    /// A hybrid heat pump: heat pump and gas boiler serving one heat demand (DDBC).
    HybridHeatPump,
}

impl SimModel {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            SimModel::Pv => "pv",
            SimModel::Ev => "ev",
            SimModel::Battery => "battery",
            SimModel::HeatPump => "heat_pump",
            SimModel::Meter => "meter",
            SimModel::Dishwasher => "dishwasher",
            SimModel::HybridHeatPump => "hybrid_heat_pump",
        }
    }
}

/// A simulated device as written in the config file.
///
/// Every parameter is optional; a missing one takes the default named in its doc. Each
/// parameter applies to the models listed in its doc, and [`SimConfig::validate`] reports
/// one given for another model, so a typo'd or misplaced value never goes unnoticed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Which device to simulate.
    pub model: SimModel,

    /// `pv`: peak production in W (default 5000). `heat_pump`: power in the "forced"
    /// state in W (default 3500; "recommended" is 5/7 and "normal" 3/7 of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rated_w: Option<f64>,
    /// `pv`: local hour of sunrise (default 6.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunrise_h: Option<f64>,
    /// `pv`: local hour of sunset (default 18.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset_h: Option<f64>,
    /// `pv`: how much passing clouds take away at most, 0..1 (default 0.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudiness: Option<f64>,

    /// `ev`: largest charging current per phase in A (default 16, at least 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_current_a: Option<f64>,
    /// `ev`: phases wired to the charger, 1 or 3 (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<u8>,
    /// `ev`: whether a car is plugged in (default true); ignored when `plugged_hours` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugged: Option<bool>,
    /// `ev`: local hour windows `[from, to]` in which a car is plugged in; a window with
    /// `from > to` runs over midnight (e.g. `[[18.0, 7.5]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugged_hours: Option<Vec<[f64; 2]>>,

    /// `battery`: usable capacity in Wh (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_wh: Option<f64>,
    /// `battery`: largest charging power in W (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_charge_w: Option<f64>,
    /// `battery`: largest discharging power in W, a positive number (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_discharge_w: Option<f64>,
    /// `battery`: lowest state of charge in percent (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_soc: Option<f64>,
    /// `battery`: highest state of charge in percent (default 95).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_soc: Option<f64>,
    /// `battery`: state of charge at start in percent (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_soc: Option<f64>,

    /// `heat_pump`: seconds a running state must hold before it may change (default
    /// 600). `hybrid_heat_pump`: the compressor's minimum on and off time (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_on_s: Option<u64>,
    /// `heat_pump`: seconds "blocked" must hold before it may change (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_off_s: Option<u64>,

    /// `meter`: average household load in W (default 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_load_w: Option<f64>,
    /// `meter`: relative size of the random wobble on the load, 0..1 (default 0.15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<f64>,

    /// `dishwasher`: hours from loading by which the task must be done (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_h: Option<f64>,
    /// `dishwasher`: minutes after a programme ends until it is loaded again (default 30;
    /// 0 never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_min: Option<f64>,
    /// `hybrid_heat_pump`: average heat demand in W thermal (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat_demand_w: Option<f64>,
    /// `hybrid_heat_pump`: the heat pump's coefficient of performance (default 3.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cop: Option<f64>,
    /// `pv`, `ev`, `meter`: offset of local time from UTC in minutes (default 0), for the
    /// sun curve, the plug schedule and the daily load shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset_min: Option<i32>,
}

/// Builds the list of parameters with the models each applies to, so `validate` and the
/// docs above cannot drift apart silently.
fn given_params(c: &SimConfig) -> Vec<(&'static str, bool, &'static [SimModel])> {
    use SimModel::*;
    vec![
        ("rated_w", c.rated_w.is_some(), &[Pv, HeatPump]),
        ("sunrise_h", c.sunrise_h.is_some(), &[Pv]),
        ("sunset_h", c.sunset_h.is_some(), &[Pv]),
        ("cloudiness", c.cloudiness.is_some(), &[Pv]),
        ("max_current_a", c.max_current_a.is_some(), &[Ev]),
        ("phases", c.phases.is_some(), &[Ev]),
        ("plugged", c.plugged.is_some(), &[Ev]),
        ("plugged_hours", c.plugged_hours.is_some(), &[Ev]),
        ("capacity_wh", c.capacity_wh.is_some(), &[Battery]),
        ("max_charge_w", c.max_charge_w.is_some(), &[Battery]),
        ("max_discharge_w", c.max_discharge_w.is_some(), &[Battery]),
        ("min_soc", c.min_soc.is_some(), &[Battery]),
        ("max_soc", c.max_soc.is_some(), &[Battery]),
        ("initial_soc", c.initial_soc.is_some(), &[Battery]),
        (
            "min_on_s",
            c.min_on_s.is_some(),
            &[HeatPump, HybridHeatPump],
        ),
        ("min_off_s", c.min_off_s.is_some(), &[HeatPump]),
        ("base_load_w", c.base_load_w.is_some(), &[Meter]),
        ("noise", c.noise.is_some(), &[Meter]),
        ("window_h", c.window_h.is_some(), &[Dishwasher]),
        ("reload_min", c.reload_min.is_some(), &[Dishwasher]),
        (
            "heat_demand_w",
            c.heat_demand_w.is_some(),
            &[HybridHeatPump],
        ),
        ("cop", c.cop.is_some(), &[HybridHeatPump]),
        (
            "utc_offset_min",
            c.utc_offset_min.is_some(),
            &[Pv, Ev, Meter],
        ),
    ]
}

use s2gw_core::problems::{Problems, push};

/// Reports a value that must be a finite number greater than zero.
fn check_positive(problems: &mut Problems, key: &str, value: Option<f64>) {
    if let Some(v) = value
        && !(v.is_finite() && v > 0.0)
    {
        push(
            problems,
            key,
            format!("must be a number greater than 0, got {v}"),
        );
    }
}

/// Reports a value that must lie within `[lo, hi]`.
fn check_range(problems: &mut Problems, key: &str, value: Option<f64>, lo: f64, hi: f64) {
    if let Some(v) = value
        && !(v.is_finite() && (lo..=hi).contains(&v))
    {
        push(
            problems,
            key,
            format!("must be between {lo} and {hi}, got {v}"),
        );
    }
}

impl SimConfig {
    /// A config for `model` with every parameter at its default.
    pub fn new(model: SimModel) -> Self {
        Self {
            model,
            rated_w: None,
            sunrise_h: None,
            sunset_h: None,
            cloudiness: None,
            max_current_a: None,
            phases: None,
            plugged: None,
            plugged_hours: None,
            capacity_wh: None,
            max_charge_w: None,
            max_discharge_w: None,
            min_soc: None,
            max_soc: None,
            initial_soc: None,
            min_on_s: None,
            min_off_s: None,
            base_load_w: None,
            noise: None,
            window_h: None,
            reload_min: None,
            heat_demand_w: None,
            cop: None,
            utc_offset_min: None,
        }
    }

    /// Everything wrong with this config, as `(key, reason)` pairs; empty when it is fine.
    ///
    /// [`crate::build`] never fails (it falls back to defaults for nonsense), so the daemon
    /// calls this first to tell the user instead of silently simulating something else.
    pub fn validate(&self) -> Problems {
        let mut problems = Problems::new();
        for (key, given, models) in given_params(self) {
            if given && !models.contains(&self.model) {
                let names: Vec<&str> = models.iter().map(|m| m.as_str()).collect();
                push(
                    &mut problems,
                    key,
                    format!(
                        "does not apply to model {} (only to {})",
                        self.model.as_str(),
                        names.join(", ")
                    ),
                );
            }
        }
        self.validate_pv(&mut problems);
        self.validate_ev(&mut problems);
        self.validate_battery(&mut problems);
        check_range(&mut problems, "window_h", self.window_h, 1.0, 48.0);
        check_range(&mut problems, "reload_min", self.reload_min, 0.0, 1440.0);
        check_positive(&mut problems, "heat_demand_w", self.heat_demand_w);
        check_range(&mut problems, "cop", self.cop, 1.0, 10.0);
        self.validate_common(&mut problems);
        problems
    }

    fn validate_pv(&self, problems: &mut Problems) {
        check_positive(problems, "rated_w", self.rated_w);
        check_range(problems, "sunrise_h", self.sunrise_h, 0.0, 24.0);
        check_range(problems, "sunset_h", self.sunset_h, 0.0, 24.0);
        check_range(problems, "cloudiness", self.cloudiness, 0.0, 1.0);
        let rise = self.sunrise_h.unwrap_or(crate::pv::DEFAULT_SUNRISE_H);
        let set = self.sunset_h.unwrap_or(crate::pv::DEFAULT_SUNSET_H);
        if (self.sunrise_h.is_some() || self.sunset_h.is_some()) && rise >= set {
            push(
                problems,
                "sunset_h",
                format!("sunset ({set}) must come after sunrise ({rise})"),
            );
        }
    }

    fn validate_ev(&self, problems: &mut Problems) {
        if let Some(a) = self.max_current_a
            && !(a.is_finite() && a >= crate::ev::MIN_CURRENT_A)
        {
            push(
                problems,
                "max_current_a",
                format!("must be at least 6 A (the IEC 61851 minimum), got {a}"),
            );
        }
        if let Some(p) = self.phases
            && p != 1
            && p != 3
        {
            push(problems, "phases", format!("must be 1 or 3, got {p}"));
        }
        for (i, [from, to]) in self.plugged_hours.iter().flatten().enumerate() {
            let ok = |h: &f64| h.is_finite() && (0.0..=24.0).contains(h);
            if !ok(from) || !ok(to) {
                push(
                    problems,
                    &format!("plugged_hours[{i}]"),
                    format!("hours must be between 0 and 24, got [{from}, {to}]"),
                );
            }
        }
    }

    fn validate_battery(&self, problems: &mut Problems) {
        check_positive(problems, "capacity_wh", self.capacity_wh);
        check_positive(problems, "max_charge_w", self.max_charge_w);
        check_positive(problems, "max_discharge_w", self.max_discharge_w);
        check_range(problems, "min_soc", self.min_soc, 0.0, 100.0);
        check_range(problems, "max_soc", self.max_soc, 0.0, 100.0);
        check_range(problems, "initial_soc", self.initial_soc, 0.0, 100.0);
        let lo = self.min_soc.unwrap_or(crate::battery::DEFAULT_MIN_SOC);
        let hi = self.max_soc.unwrap_or(crate::battery::DEFAULT_MAX_SOC);
        if lo >= hi {
            push(
                problems,
                "min_soc",
                format!("min_soc ({lo}) must be below max_soc ({hi})"),
            );
        }
    }

    fn validate_common(&self, problems: &mut Problems) {
        check_positive(problems, "base_load_w", self.base_load_w);
        check_range(problems, "noise", self.noise, 0.0, 1.0);
        if let Some(m) = self.utc_offset_min
            && !(-14 * 60..=14 * 60).contains(&m)
        {
            push(
                problems,
                "utc_offset_min",
                format!("must be between -840 and 840 minutes, got {m}"),
            );
        }
    }
}
