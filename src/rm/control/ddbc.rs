//! DDBC: a device that must meet a demand and may choose how (a hybrid heat pump: heat
//! pump and gas boiler serving one heat demand). Each actuator is a state machine of
//! modes, each mode a supply range (the demand's unit, W thermal) at a power range (W
//! electric, or the gas flow in l/s), factor 0 at the start, factor 1 at the end.
//!
//! The demand differs by version: in 0.0.2-beta it is `present_demand_rate` of the
//! SystemDescription (so a changed demand is a new description), in 1.0.0 it is
//! `DDBC.PresentDemandStatus`. A minimum on time per actuator is a timer that every
//! transition starts and blocks.

use std::collections::HashMap;

use s2gw_core::Command;
use s2gw_core::device::{ActuatorSpec, DemandState, Fuel, SupplyModeSpec};
use s2gw_core::s2::{
    Commodity, CommodityQuantity, ControlType, Duration, Id, Instructed, Message, NumberRange,
    PowerRange, Timer, Timestamp, Transition, WireProfile, ddbc, mint_id,
};

use super::{Context, ControlModule, QUANTITY};
use crate::rm::ids::IdBook;
use crate::rm::plan::Planned;

/// Natural gas's heat per litre (about 35.17 MJ/m³, the Dutch calorific value): a
/// boiler's heat input in W is this many times its gas flow in l/s.
const GAS_J_PER_LITRE: f64 = 35_170.0;

/// A change of demand worth telling: max(50, 5 %) of the supply unit.
fn demand_moved(sent: f64, now: f64) -> bool {
    (sent - now).abs() > (sent.abs() * 0.05).max(50.0)
}

/// DDBC for one device, with what this session was told.
pub(crate) struct Ddbc {
    actuators: Vec<ActuatorSpec>,
    forecast_step_s: u64,
    /// The mode last reported per actuator, this session.
    modes: HashMap<String, Id>,
    /// When each actuator's minimum on time finishes (outlives sessions, like the
    /// compressor it protects).
    min_on_until: HashMap<String, Timestamp>,
    /// The demand last told, and the forecast.
    demand_sent: Option<f64>,
    forecast_sent: Option<Vec<f64>>,
}

impl Ddbc {
    /// DDBC over these actuators.
    pub(crate) fn new(actuators: Vec<ActuatorSpec>, forecast_step_s: u64) -> Self {
        Self {
            actuators,
            forecast_step_s: forecast_step_s.max(60),
            modes: HashMap::new(),
            min_on_until: HashMap::new(),
            demand_sent: None,
            forecast_sent: None,
        }
    }

    /// The demand as the negotiated version carries it: a new description in
    /// 0.0.2-beta, a PresentDemandStatus in 1.0.0.
    fn demand(&mut self, cx: &mut Context<'_>, demand: f64, now: Timestamp) -> Message {
        self.demand_sent = Some(demand);
        match cx.profile {
            Some(WireProfile::V0_0_2Beta) => {
                system_description(cx.ids, &self.actuators, Some(demand), now).into()
            }
            _ => ddbc::PresentDemandStatus {
                message_id: mint_id(),
                present_demand_rate: NumberRange::exactly(demand),
            }
            .into(),
        }
    }

    fn forecast(&mut self, state: &DemandState, now: Timestamp) -> Option<Message> {
        if state.forecast.is_empty() || self.forecast_sent.as_ref() == Some(&state.forecast) {
            return None;
        }
        self.forecast_sent = Some(state.forecast.clone());
        let step = Duration::from_secs(self.forecast_step_s);
        Some(
            ddbc::AverageDemandRateForecast {
                message_id: mint_id(),
                start_time: now,
                elements: state
                    .forecast
                    .iter()
                    .map(|&expected| ddbc::AverageDemandRateForecastElement {
                        duration: step,
                        demand_rate_upper_limit: None,
                        demand_rate_upper_95ppr: None,
                        demand_rate_upper_68ppr: None,
                        demand_rate_expected: expected,
                        demand_rate_lower_68ppr: None,
                        demand_rate_lower_95ppr: None,
                        demand_rate_lower_limit: None,
                    })
                    .collect(),
            }
            .into(),
        )
    }

    /// An ActuatorStatus for every actuator whose mode changed since it was reported.
    fn actuator_statuses(
        &mut self,
        ids: &IdBook,
        state: &DemandState,
        now: Timestamp,
    ) -> Vec<Message> {
        let mut messages = Vec::new();
        for reading in &state.actuators {
            let mode = mode_id(ids, &reading.actuator, &reading.mode);
            let previous = self.modes.get(&reading.actuator).copied();
            if previous == Some(mode) {
                continue;
            }
            self.modes.insert(reading.actuator.clone(), mode);
            // A change the device made on its own starts its minimum on time too: the
            // compressor does not care who switched it.
            if previous.is_some()
                && let Some(until) = self.start_min_on(&reading.actuator, now)
            {
                messages.push(timer_status(ids, &reading.actuator, until).into());
            }
            messages.push(
                ddbc::ActuatorStatus {
                    message_id: mint_id(),
                    actuator_id: actuator_id(ids, &reading.actuator),
                    active_operation_mode_id: mode,
                    operation_mode_factor: reading.factor.clamp(0.0, 1.0),
                    previous_operation_mode_id: previous,
                    transition_timestamp: previous.map(|_| now),
                }
                .into(),
            );
        }
        messages
    }

    /// Start an actuator's minimum on time at `now`, if it has one; when it finishes.
    fn start_min_on(&mut self, actuator: &str, now: Timestamp) -> Option<Timestamp> {
        let spec = self.actuators.iter().find(|a| a.name == actuator)?;
        if spec.min_on_s == 0 {
            return None;
        }
        let until = now.checked_add(Duration::from_secs(spec.min_on_s))?;
        self.min_on_until.insert(actuator.to_string(), until);
        Some(until)
    }

    /// The actuator and mode an id names.
    fn find(
        &self,
        ids: &IdBook,
        actuator: Id,
        mode: Id,
    ) -> Option<(&ActuatorSpec, &SupplyModeSpec)> {
        let spec = self
            .actuators
            .iter()
            .find(|a| actuator_id(ids, &a.name) == actuator)?;
        let mode = spec
            .modes
            .iter()
            .find(|m| mode_id(ids, &spec.name, &m.name) == mode)?;
        Some((spec, mode))
    }
}

impl ControlModule for Ddbc {
    fn control_type(&self) -> ControlType {
        ControlType::DemandDrivenBasedControl
    }

    fn session_started(&mut self) {
        self.modes.clear();
        self.demand_sent = None;
        self.forecast_sent = None;
    }

    fn describe(&mut self, cx: &mut Context<'_>, now: Timestamp) -> Vec<Message> {
        self.session_started();
        let Some(state) = cx.readings.and_then(|r| r.demand.clone()) else {
            return vec![system_description(cx.ids, &self.actuators, None, now).into()];
        };
        let mut messages = Vec::new();
        match cx.profile {
            Some(WireProfile::V0_0_2Beta) => messages.push(self.demand(cx, state.demand, now)),
            _ => {
                messages.push(system_description(cx.ids, &self.actuators, None, now).into());
                messages.push(self.demand(cx, state.demand, now));
            }
        }
        messages.extend(self.actuator_statuses(cx.ids, &state, now));
        messages.extend(
            self.min_on_until
                .iter()
                .filter(|(_, at)| **at > now)
                .map(|(actuator, at)| timer_status(cx.ids, actuator, *at).into()),
        );
        messages.extend(self.forecast(&state, now));
        messages
    }

    fn readings(&mut self, cx: &mut Context<'_>, now: Timestamp) -> Vec<Message> {
        let Some(state) = cx.readings.and_then(|r| r.demand.clone()) else {
            return Vec::new();
        };
        let mut messages = Vec::new();
        if self
            .demand_sent
            .is_none_or(|sent| demand_moved(sent, state.demand))
        {
            messages.push(self.demand(cx, state.demand, now));
        }
        messages.extend(self.actuator_statuses(cx.ids, &state, now));
        messages.extend(self.forecast(&state, now));
        messages
    }

    fn plan(
        &mut self,
        cx: &mut Context<'_>,
        instructed: &Instructed,
        now: Timestamp,
    ) -> Result<Planned, String> {
        let Message::DdbcInstruction(instruction) = &instructed.message else {
            return Err(format!("{} is not a DDBC.Instruction", instructed.kind));
        };
        let (actuator, mode) = self
            .find(
                cx.ids,
                instruction.actuator_id,
                instruction.operation_mode_id,
            )
            .ok_or("no such actuator and mode")?;
        let current = self.modes.get(&actuator.name).copied();
        let at = instruction.execution_time.max(now);
        if current.is_some_and(|c| c != instruction.operation_mode_id)
            && let Some(until) = self.min_on_until.get(&actuator.name).filter(|u| **u > at)
        {
            return Err(format!(
                "{} must stay in its mode until {until} (minimum on time)",
                actuator.label
            ));
        }
        let factor = instruction.operation_mode_factor.clamp(0.0, 1.0);
        let command = Command::SetActuator {
            actuator: actuator.name.clone(),
            mode: mode.name.clone(),
            factor,
        };
        let summary = format!("{}: {}", actuator.label, command.summary());
        Ok(
            Planned::once(instruction.id, instruction.execution_time, command, summary)
                .entering(instruction.operation_mode_id, factor),
        )
    }

    fn carried_out(
        &mut self,
        cx: &mut Context<'_>,
        planned: &Planned,
        now: Timestamp,
    ) -> Vec<Message> {
        let Some(change) = planned.mode else {
            return Vec::new();
        };
        let Some(Command::SetActuator { actuator, .. }) = planned.steps.first().map(|s| &s.command)
        else {
            return Vec::new();
        };
        let Some(spec) = self.actuators.iter().find(|a| a.name == *actuator).cloned() else {
            return Vec::new();
        };
        let previous = self.modes.insert(spec.name.clone(), change.mode);
        let mut messages = Vec::new();
        if previous.is_some_and(|p| p != change.mode)
            && let Some(until) = self.start_min_on(&spec.name, now)
        {
            messages.push(timer_status(cx.ids, &spec.name, until).into());
        }
        messages.push(
            ddbc::ActuatorStatus {
                message_id: mint_id(),
                actuator_id: actuator_id(cx.ids, &spec.name),
                active_operation_mode_id: change.mode,
                operation_mode_factor: change.factor,
                previous_operation_mode_id: previous,
                transition_timestamp: previous.map(|_| now),
            }
            .into(),
        );
        messages
    }
}

fn actuator_id(ids: &IdBook, actuator: &str) -> Id {
    ids.get(&format!("ddbc.actuator.{actuator}"))
}

fn mode_id(ids: &IdBook, actuator: &str, mode: &str) -> Id {
    ids.get(&format!("ddbc.mode.{actuator}.{mode}"))
}

fn min_on_id(ids: &IdBook, actuator: &str) -> Id {
    ids.get(&format!("ddbc.timer.{actuator}.min_on"))
}

fn timer_status(ids: &IdBook, actuator: &str, finished_at: Timestamp) -> ddbc::TimerStatus {
    ddbc::TimerStatus {
        message_id: mint_id(),
        timer_id: min_on_id(ids, actuator),
        actuator_id: actuator_id(ids, actuator),
        finished_at,
    }
}

/// DDBC.SystemDescription; `present_demand` only for 0.0.2-beta, where it belongs.
fn system_description(
    ids: &IdBook,
    actuators: &[ActuatorSpec],
    present_demand: Option<f64>,
    now: Timestamp,
) -> ddbc::SystemDescription {
    ddbc::SystemDescription {
        message_id: mint_id(),
        valid_from: now,
        actuators: actuators.iter().map(|a| actuator(ids, a)).collect(),
        present_demand_rate: present_demand.map(NumberRange::exactly),
        provides_average_demand_rate_forecast: true,
    }
}

fn actuator(ids: &IdBook, spec: &ActuatorSpec) -> ddbc::ActuatorDescription {
    let (commodity, quantity, per_w) = match spec.fuel {
        Fuel::Electricity => (Commodity::Electricity, QUANTITY, 1.0),
        Fuel::Gas => (
            Commodity::Gas,
            CommodityQuantity::NaturalGasFlowRate,
            1.0 / GAS_J_PER_LITRE,
        ),
    };
    let operation_modes = spec
        .modes
        .iter()
        .map(|m| ddbc::OperationMode {
            id: mode_id(ids, &spec.name, &m.name),
            diagnostic_label: Some(m.label.clone()),
            power_ranges: vec![PowerRange::new(
                m.power_min_w * per_w,
                m.power_max_w * per_w,
                quantity,
            )],
            supply_range: NumberRange::new(m.supply_min, m.supply_max),
            running_costs: None,
            abnormal_condition_only: false,
        })
        .collect();
    let timer = (spec.min_on_s > 0).then(|| min_on_id(ids, &spec.name));
    let mut transitions = Vec::new();
    for from in &spec.modes {
        for to in spec.modes.iter().filter(|to| to.name != from.name) {
            let timers: Vec<Id> = timer.into_iter().collect();
            transitions.push(Transition {
                start_timers: timers.clone(),
                blocking_timers: timers,
                ..Transition::simple(
                    ids.get(&format!(
                        "ddbc.transition.{}.{}.{}",
                        spec.name, from.name, to.name
                    )),
                    mode_id(ids, &spec.name, &from.name),
                    mode_id(ids, &spec.name, &to.name),
                )
            });
        }
    }
    ddbc::ActuatorDescription {
        id: actuator_id(ids, &spec.name),
        diagnostic_label: Some(spec.label.clone()),
        supported_commodities: vec![commodity],
        operation_modes,
        transitions,
        timers: timer
            .map(|id| Timer {
                id,
                diagnostic_label: Some("minimum on time".to_string()),
                duration: Duration::from_secs(spec.min_on_s),
            })
            .into_iter()
            .collect(),
    }
}
