//! DDBC: cover the announced demand with one actuator leading and the others making up
//! what it cannot supply. The lead changes hands once it has led for [`TURN`] and the
//! RM's timers allow every move the change needs (a hybrid heat pump's compressor has a
//! minimum on time), so heat pump and boiler take turns.

use std::collections::HashMap;

use s2gw_core::s2::{Duration, Id, Timestamp, ddbc, mint_id};

use super::modes::ModeTracker;

/// How long an actuator leads at least before the next one takes over.
const TURN: Duration = Duration::from_secs(20);
/// A change of factor smaller than this is not worth an instruction.
const FACTOR_STEP: f64 = 0.05;
/// How much more than the reported demand the actuators are set to supply. The RM
/// reports the demand again only once it moved by more than 5 %, and a device short of
/// heat may switch an actuator on by itself (a hybrid heat pump fires its boiler).
const HEADROOM: f64 = 1.06;

/// What the RM announced for DDBC, and who covers the demand.
#[derive(Debug, Default)]
pub(super) struct DdbcPlanner {
    description: Option<ddbc::SystemDescription>,
    /// The demand to cover, in the supply unit of the actuators' modes.
    demand: Option<f64>,
    actuators: HashMap<Id, ActuatorPlan>,
    /// The actuator leading, and since when; chosen afresh at every selection.
    lead: Option<(Id, Timestamp)>,
    /// The actuator the instruction on its way is for.
    asking: Option<Id>,
}

/// One actuator as the planner knows it.
#[derive(Debug, Default)]
struct ActuatorPlan {
    modes: ModeTracker,
    /// The mode and factor this planner set since the selection; `None` while the device
    /// runs the actuator on its own (and may switch it by itself).
    set: Option<(Id, f64)>,
}

/// An actuator's two modes that matter here: the one supplying most, and the one
/// supplying least (off).
struct Switch<'a> {
    actuator: &'a ddbc::ActuatorDescription,
    on: &'a ddbc::OperationMode,
    off: &'a ddbc::OperationMode,
}

impl DdbcPlanner {
    /// A DDBC.SystemDescription; in 0.0.2-beta it carries the demand too.
    pub(super) fn described(&mut self, description: ddbc::SystemDescription) {
        if let Some(rate) = description.present_demand_rate {
            self.demand = Some(middle(rate.ordered()));
        }
        self.description = Some(description);
    }

    /// A DDBC.PresentDemandStatus (1.0.0).
    pub(super) fn demand(&mut self, status: &ddbc::PresentDemandStatus) {
        self.demand = Some(middle(status.present_demand_rate.ordered()));
    }

    /// A DDBC.TimerStatus. A DDBC minimum on time only ever starts, so a report never
    /// shortens what is known.
    pub(super) fn timer(&mut self, actuator: Id, timer: Id, finished_at: Timestamp) {
        self.actuators
            .entry(actuator)
            .or_default()
            .modes
            .timers
            .report_at_least(timer, finished_at);
    }

    /// A DDBC.ActuatorStatus.
    pub(super) fn status(&mut self, status: &ddbc::ActuatorStatus, now: Timestamp) {
        let described = self
            .description
            .as_ref()
            .and_then(|d| d.actuator(&status.actuator_id));
        let (transitions, timers) = described
            .map(|a| (a.transitions.as_slice(), a.timers.as_slice()))
            .unwrap_or_default();
        self.actuators
            .entry(status.actuator_id)
            .or_default()
            .modes
            .reported(status.active_operation_mode_id, transitions, timers, now);
    }

    /// DDBC was (re)selected: the RM reports every actuator afresh, and the device forgot
    /// every setting when the previous control type released it.
    pub(super) fn selected(&mut self) {
        for plan in self.actuators.values_mut() {
            plan.modes.selected();
            plan.set = None;
        }
        self.lead = None;
        self.asking = None;
    }

    /// The instruction on its way was not carried out.
    pub(super) fn not_done(&mut self) {
        if let Some(plan) = self.asking.take().and_then(|a| self.actuators.get_mut(&a)) {
            plan.modes.not_done();
            plan.set = None;
        }
    }

    /// The next setting that differs from what the demand needs, if the RM allows it at
    /// `now`; the leading actuator first, so the demand stays covered while the lead
    /// changes hands.
    pub(super) fn instruction(&mut self, now: Timestamp) -> Option<ddbc::Instruction> {
        let description = self.description.as_ref()?;
        let demand = self.demand?;
        let switches = description
            .actuators
            .iter()
            .map(switch)
            .collect::<Option<Vec<_>>>()?;
        // Nothing is chosen before every actuator's mode is known.
        let mut active = HashMap::new();
        for s in &switches {
            let mode = self.actuators.get(&s.actuator.id)?.modes.active()?;
            active.insert(s.actuator.id, mode);
        }
        let first = switches.first()?.actuator.id;
        let (mut lead, mut since) = self.lead.unwrap_or_else(|| {
            // Whichever supplies now leads first: no move is needed to start.
            let supplying = switches
                .iter()
                .find(|s| active.get(&s.actuator.id) != Some(&s.off.id));
            (supplying.map_or(first, |s| s.actuator.id), now)
        });
        if super::elapsed(since, TURN, now) {
            let at = switches
                .iter()
                .position(|s| s.actuator.id == lead)
                .unwrap_or(0);
            let next = switches[(at + 1) % switches.len()].actuator.id;
            if next != lead && self.allowed(&settings(&switches, next, demand), now) {
                lead = next;
                since = now;
            }
        }
        self.lead = Some((lead, since));
        let wanted = settings(&switches, lead, demand);
        let (actuator, mode, factor) = self.first_due(&wanted, now)?;
        let plan = self.actuators.entry(actuator).or_default();
        plan.modes.asked(mode);
        plan.set = Some((mode, factor));
        self.asking = Some(actuator);
        Some(ddbc::Instruction {
            message_id: mint_id(),
            id: mint_id(),
            execution_time: now,
            abnormal_condition: false,
            actuator_id: actuator,
            operation_mode_id: mode,
            operation_mode_factor: factor,
        })
    }

    /// Whether every move `wanted` needs is allowed at `now`.
    fn allowed(&self, wanted: &[Wanted<'_>], now: Timestamp) -> bool {
        wanted.iter().all(|w| {
            self.actuators
                .get(&w.actuator.id)
                .is_some_and(|p| p.modes.may_move(w.mode, &w.actuator.transitions, now))
        })
    }

    /// The first of `wanted` (in order) that is not what this planner set; `None` when
    /// all are, or when the first that is not needs a move a timer blocks: the others
    /// wait for it.
    fn first_due(&self, wanted: &[Wanted<'_>], now: Timestamp) -> Option<(Id, Id, f64)> {
        for w in wanted {
            let plan = self.actuators.get(&w.actuator.id)?;
            let as_set = plan
                .set
                .is_some_and(|(m, f)| m == w.mode && (f - w.factor).abs() <= FACTOR_STEP);
            if as_set && plan.modes.active() == Some(w.mode) {
                continue;
            }
            if !plan.modes.may_move(w.mode, &w.actuator.transitions, now) {
                return None;
            }
            return Some((w.actuator.id, w.mode, w.factor));
        }
        None
    }
}

/// One actuator's wanted mode and factor.
struct Wanted<'a> {
    actuator: &'a ddbc::ActuatorDescription,
    mode: Id,
    factor: f64,
}

/// What each actuator should do to cover `demand` (with [`HEADROOM`]) with `lead` first:
/// each, in turn, on at the factor that supplies what is left (within its range), or off
/// once nothing is.
fn settings<'a>(switches: &[Switch<'a>], lead: Id, demand: f64) -> Vec<Wanted<'a>> {
    let order = switches
        .iter()
        .filter(|s| s.actuator.id == lead)
        .chain(switches.iter().filter(|s| s.actuator.id != lead));
    let mut left = demand * HEADROOM;
    order
        .map(|s| {
            if left > 0.0 {
                let factor = factor_for(s.on, left);
                left -= supply(s.on, factor);
                Wanted {
                    actuator: s.actuator,
                    mode: s.on.id,
                    factor,
                }
            } else {
                Wanted {
                    actuator: s.actuator,
                    mode: s.off.id,
                    factor: 0.0,
                }
            }
        })
        .collect()
}

/// The actuator's modes supplying most and least, outside abnormal conditions; `None`
/// when that is one mode.
fn switch(actuator: &ddbc::ActuatorDescription) -> Option<Switch<'_>> {
    let normal = || {
        actuator
            .operation_modes
            .iter()
            .filter(|m| !m.abnormal_condition_only)
    };
    let upper = |m: &&ddbc::OperationMode| m.supply_range.ordered().1;
    let on = normal().max_by(|a, b| upper(a).total_cmp(&upper(b)))?;
    let off = normal().min_by(|a, b| upper(a).total_cmp(&upper(b)))?;
    (on.id != off.id).then_some(Switch { actuator, on, off })
}

/// The factor at which `mode` supplies `wanted`, as near as its range allows.
fn factor_for(mode: &ddbc::OperationMode, wanted: f64) -> f64 {
    let (lo, hi) = mode.supply_range.ordered();
    if hi <= lo {
        return 0.0;
    }
    ((wanted - lo) / (hi - lo)).clamp(0.0, 1.0)
}

/// What `mode` supplies at `factor` (0 at the start of its range, 1 at the end).
fn supply(mode: &ddbc::OperationMode, factor: f64) -> f64 {
    let (lo, hi) = mode.supply_range.ordered();
    lo + (hi - lo) * factor
}

fn middle((lo, hi): (f64, f64)) -> f64 {
    (lo + hi) / 2.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use s2gw_core::s2::NumberRange;

    use super::*;

    fn mode(label: &str, lo: f64, hi: f64) -> ddbc::OperationMode {
        ddbc::OperationMode {
            id: mint_id(),
            diagnostic_label: Some(label.to_string()),
            power_ranges: Vec::new(),
            supply_range: NumberRange::new(lo, hi),
            running_costs: None,
            abnormal_condition_only: false,
        }
    }

    fn actuator(on: (f64, f64)) -> ddbc::ActuatorDescription {
        ddbc::ActuatorDescription {
            id: mint_id(),
            diagnostic_label: None,
            supported_commodities: Vec::new(),
            operation_modes: vec![mode("off", 0.0, 0.0), mode("on", on.0, on.1)],
            transitions: Vec::new(),
            timers: Vec::new(),
        }
    }

    /// The heat supplied by `wanted`.
    fn supplied(switches: &[Switch<'_>], wanted: &[Wanted<'_>]) -> f64 {
        wanted
            .iter()
            .map(|w| {
                let s = switches
                    .iter()
                    .find(|s| s.actuator.id == w.actuator.id)
                    .unwrap();
                let m = if w.mode == s.on.id { s.on } else { s.off };
                supply(m, w.factor)
            })
            .sum()
    }

    #[test]
    fn the_lead_covers_the_demand_and_the_rest_makes_up_what_it_cannot() {
        let heat_pump = actuator((1500.0, 6000.0));
        let boiler = actuator((3000.0, 20_000.0));
        let switches: Vec<Switch<'_>> = [&heat_pump, &boiler]
            .into_iter()
            .map(|a| switch(a).unwrap())
            .collect();
        // The heat pump alone, with headroom; the boiler off.
        let wanted = settings(&switches, heat_pump.id, 4000.0);
        assert_eq!(wanted[0].mode, switches[0].on.id);
        assert_eq!(wanted[1].mode, switches[1].off.id);
        let heat = supplied(&switches, &wanted);
        assert!((heat - 4000.0 * HEADROOM).abs() < 1e-6, "{heat}");
        // More than the heat pump can do: the boiler at its minimum makes up the rest.
        let wanted = settings(&switches, heat_pump.id, 7000.0);
        assert_eq!(wanted[0].factor, 1.0);
        assert_eq!((wanted[1].mode, wanted[1].factor), (switches[1].on.id, 0.0));
        assert!(supplied(&switches, &wanted) >= 7000.0);
        // The boiler leading: first in the list (it goes on first), the heat pump off.
        let wanted = settings(&switches, boiler.id, 4000.0);
        assert_eq!(wanted[0].actuator.id, boiler.id);
        assert_eq!(wanted[1].mode, switches[0].off.id);
        assert!(supplied(&switches, &wanted) >= 4000.0);
    }
}
