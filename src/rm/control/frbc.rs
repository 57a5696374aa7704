//! FRBC: a home battery as one actuator (charge / idle / discharge) over a storage whose
//! fill level is the state of charge in percent.

use s2gw_core::s2::{
    Commodity, ControlType, Id, Instructed, Message, NumberRange, PowerRange, Timestamp,
    Transition, frbc, mint_id,
};
use s2gw_core::{Command, Readings};

use super::{Context, ControlModule, QUANTITY};
use crate::rm::ids::IdBook;
use crate::rm::plan::Planned;

/// A state of charge change that is worth a StorageStatus, percentage points.
const SOC_STEP: f64 = 0.5;

/// FRBC for one battery, with what this session was told.
pub(crate) struct Frbc {
    storage: Storage,
    /// The mode last reported in this session.
    mode: Option<Id>,
    /// The fill level last reported in this session.
    soc_sent: Option<f64>,
}

impl Frbc {
    /// FRBC over `storage`.
    pub(crate) fn new(storage: Storage) -> Self {
        Self {
            storage,
            mode: None,
            soc_sent: None,
        }
    }

    /// A StorageStatus when the fill level is known and moved enough since the last one.
    fn fill_level(&mut self, cx: &Context<'_>) -> Option<Message> {
        if !cx.available {
            return None;
        }
        let soc = cx.readings?.soc.filter(|s| s.is_finite())?;
        if self
            .soc_sent
            .is_some_and(|sent| (sent - soc).abs() < SOC_STEP)
        {
            return None;
        }
        self.soc_sent = Some(soc);
        Some(storage_status(soc).into())
    }
}

impl ControlModule for Frbc {
    fn control_type(&self) -> ControlType {
        ControlType::FillRateBasedControl
    }

    fn session_started(&mut self) {
        self.mode = None;
        self.soc_sent = None;
    }

    fn describe(&mut self, cx: &mut Context<'_>, now: Timestamp) -> Vec<Message> {
        // The fill level first: FlexMeasures' CEM plans once per SystemDescription, and
        // only when it already knows the storage's state.
        self.soc_sent = None;
        let mut messages: Vec<Message> = self.fill_level(cx).into_iter().collect();
        messages.push(system_description(cx.ids, self.storage, now).into());
        let readings = cx.readings.cloned().unwrap_or_default();
        let (mode, factor) = current_mode(cx.ids, self.storage, &readings);
        messages.push(actuator_status(cx.ids, mode, factor, None, now).into());
        self.mode = Some(mode);
        messages
    }

    fn readings(&mut self, cx: &mut Context<'_>, _now: Timestamp) -> Vec<Message> {
        self.fill_level(cx).into_iter().collect()
    }

    fn plan(
        &mut self,
        cx: &mut Context<'_>,
        instructed: &Instructed,
        _now: Timestamp,
    ) -> Result<Planned, String> {
        plan(instructed, cx.ids, self.storage)
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
        let status = actuator_status(cx.ids, change.mode, change.factor, self.mode, now);
        self.mode = Some(change.mode);
        vec![status.into()]
    }
}

/// Below this the battery counts as idle when its mode is read back from its power.
const IDLE_BAND_W: f64 = 10.0;

/// The battery's facts, from its `Storage` capability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Storage {
    /// Usable capacity, Wh.
    pub capacity_wh: f64,
    /// Largest charging power, W.
    pub max_charge_w: f64,
    /// Largest discharging power, W (positive).
    pub max_discharge_w: f64,
    /// Lowest allowed state of charge, %.
    pub min_soc: f64,
    /// Highest allowed state of charge, %.
    pub max_soc: f64,
}

/// The three modes, in the order they are described.
const MODES: [&str; 3] = ["idle", "charge", "discharge"];

impl Storage {
    /// Percent per second at `watts` (the fill rate S2 wants, in the fill level's unit).
    fn fill_rate(self, watts: f64) -> f64 {
        if self.capacity_wh > 0.0 {
            watts / self.capacity_wh * 100.0 / 3600.0
        } else {
            0.0
        }
    }

    /// The power range of a mode, ascending as s2-python and FlexMeasures require
    /// (the schema would allow either order): factor 0 at the start, factor 1 at the
    /// end. So discharging at full power is factor 0, and factor 1 is the idle end.
    fn power_range(self, mode: &str) -> NumberRange {
        match mode {
            "charge" => NumberRange::new(0.0, self.max_charge_w),
            "discharge" => NumberRange::new(-self.max_discharge_w, 0.0),
            _ => NumberRange::exactly(0.0),
        }
    }
}

fn actuator_id(ids: &IdBook) -> Id {
    ids.get("frbc.actuator")
}

fn mode_id(ids: &IdBook, mode: &str) -> Id {
    ids.get(&format!("frbc.mode.{mode}"))
}

/// FRBC.SystemDescription: one actuator, three modes, every transition allowed.
pub(crate) fn system_description(
    ids: &IdBook,
    storage: Storage,
    now: Timestamp,
) -> frbc::SystemDescription {
    let operation_modes = MODES
        .iter()
        .map(|mode| operation_mode(ids, storage, mode))
        .collect();
    let mut transitions = Vec::new();
    for from in MODES {
        for to in MODES.iter().filter(|to| **to != from) {
            transitions.push(Transition::simple(
                ids.get(&format!("frbc.transition.{from}.{to}")),
                mode_id(ids, from),
                mode_id(ids, to),
            ));
        }
    }
    frbc::SystemDescription {
        message_id: mint_id(),
        valid_from: now,
        actuators: vec![frbc::ActuatorDescription {
            id: actuator_id(ids),
            diagnostic_label: Some("battery inverter".to_string()),
            supported_commodities: vec![Commodity::Electricity],
            operation_modes,
            transitions,
            timers: Vec::new(),
        }],
        storage: frbc::StorageDescription {
            diagnostic_label: Some("battery".to_string()),
            fill_level_label: Some("percentage state of charge".to_string()),
            provides_leakage_behaviour: false,
            provides_fill_level_target_profile: false,
            provides_usage_forecast: false,
            fill_level_range: NumberRange::new(storage.min_soc, storage.max_soc),
        },
    }
}

fn operation_mode(ids: &IdBook, storage: Storage, mode: &str) -> frbc::OperationMode {
    let power = storage.power_range(mode);
    frbc::OperationMode {
        id: mode_id(ids, mode),
        diagnostic_label: Some(mode.to_string()),
        // One element over the whole scale: the device itself stops at its SoC limits,
        // and a mode that "does not exist" at 95 % would only make instructions fail.
        elements: vec![frbc::OperationModeElement {
            fill_level_range: NumberRange::new(0.0, 100.0),
            fill_rate: NumberRange::new(
                storage.fill_rate(power.start_of_range),
                storage.fill_rate(power.end_of_range),
            ),
            power_ranges: vec![PowerRange::new(
                power.start_of_range,
                power.end_of_range,
                QUANTITY,
            )],
            running_costs: None,
        }],
        abnormal_condition_only: false,
    }
}

/// The mode and factor the battery is in, read back from its power.
pub(crate) fn current_mode(ids: &IdBook, storage: Storage, readings: &Readings) -> (Id, f64) {
    let power = readings.power_w;
    let mode = if power > IDLE_BAND_W {
        "charge"
    } else if power < -IDLE_BAND_W {
        "discharge"
    } else {
        "idle"
    };
    // Idle is a single point: every factor describes it, 0 is the plain answer.
    let factor = storage
        .power_range(mode)
        .factor_of(power)
        .map_or(0.0, |f| f.clamp(0.0, 1.0));
    (mode_id(ids, mode), factor)
}

/// FRBC.ActuatorStatus. `previous` is the mode last reported in this session (none for
/// the first status, as S2 requires).
pub(crate) fn actuator_status(
    ids: &IdBook,
    mode: Id,
    factor: f64,
    previous: Option<Id>,
    now: Timestamp,
) -> frbc::ActuatorStatus {
    frbc::ActuatorStatus {
        message_id: mint_id(),
        actuator_id: actuator_id(ids),
        active_operation_mode_id: mode,
        operation_mode_factor: factor.clamp(0.0, 1.0),
        previous_operation_mode_id: previous,
        transition_timestamp: previous.map(|_| now),
    }
}

/// FRBC.StorageStatus with the state of charge.
pub(crate) fn storage_status(soc: f64) -> frbc::StorageStatus {
    frbc::StorageStatus {
        message_id: mint_id(),
        present_fill_level: soc,
    }
}

/// An FRBC.Instruction as a power setpoint: the power s2-kit resolved from the mode and
/// factor, or the mode's range interpolated by the factor.
pub(crate) fn plan(
    instructed: &Instructed,
    ids: &IdBook,
    storage: Storage,
) -> Result<Planned, String> {
    let Message::FrbcInstruction(instruction) = &instructed.message else {
        return Err("not an FRBC.Instruction".to_string());
    };
    let mode = MODES
        .iter()
        .find(|m| mode_id(ids, m) == instruction.operation_mode)
        .ok_or_else(|| {
            format!(
                "{} is not a mode of this battery",
                instruction.operation_mode
            )
        })?;
    let factor = instruction.operation_mode_factor;
    let watts = instructed
        .explanation
        .electric_power()
        .unwrap_or_else(|| storage.power_range(mode).at_factor(factor));
    if !(-storage.max_discharge_w..=storage.max_charge_w).contains(&watts) {
        return Err(format!("{watts} W is outside the battery's range"));
    }
    let command = Command::SetPower { watts };
    let summary = format!("{mode}: {}", command.summary());
    Ok(
        Planned::once(instruction.id, instruction.execution_time, command, summary)
            .entering(instruction.operation_mode, factor),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATTERY: Storage = Storage {
        capacity_wh: 10_000.0,
        max_charge_w: 5000.0,
        max_discharge_w: 4000.0,
        min_soc: 10.0,
        max_soc: 90.0,
    };

    fn readings(power_w: f64) -> Readings {
        Readings {
            power_w,
            ..Readings::default()
        }
    }

    /// s2-python refuses `start_of_range > end_of_range` (INVALID_DATA), and FlexMeasures'
    /// FRBC arithmetic assumes ascending ranges; the schema allows both, so only this
    /// test keeps the order.
    #[test]
    fn every_range_of_the_description_ascends() {
        let ids = IdBook::default();
        let system = system_description(&ids, BATTERY, Timestamp::UNIX_EPOCH);
        let mut ranges = vec![system.storage.fill_level_range];
        for mode in &system.actuators[0].operation_modes {
            for element in &mode.elements {
                ranges.push(element.fill_level_range);
                ranges.push(element.fill_rate);
                ranges.extend(
                    element
                        .power_ranges
                        .iter()
                        .map(|p| NumberRange::new(p.start_of_range, p.end_of_range)),
                );
            }
        }
        for range in ranges {
            assert!(range.start_of_range <= range.end_of_range, "{range:?}");
        }
    }

    #[test]
    fn discharging_at_full_power_is_factor_zero_both_ways() {
        let ids = IdBook::default();
        let discharge = mode_id(&ids, "discharge");
        assert_eq!(
            current_mode(&ids, BATTERY, &readings(-4000.0)),
            (discharge, 0.0)
        );
        assert_eq!(
            current_mode(&ids, BATTERY, &readings(-1000.0)),
            (discharge, 0.75)
        );
        assert_eq!(BATTERY.power_range("discharge").at_factor(0.0), -4000.0);
        assert_eq!(BATTERY.power_range("discharge").at_factor(0.75), -1000.0);
        let charge = mode_id(&ids, "charge");
        assert_eq!(
            current_mode(&ids, BATTERY, &readings(1250.0)),
            (charge, 0.25)
        );
        let idle = mode_id(&ids, "idle");
        assert_eq!(current_mode(&ids, BATTERY, &readings(3.0)), (idle, 0.0));
    }

    #[test]
    fn fill_rates_start_where_their_power_ranges_start() {
        let ids = IdBook::default();
        let system = system_description(&ids, BATTERY, Timestamp::UNIX_EPOCH);
        for mode in &system.actuators[0].operation_modes {
            let element = &mode.elements[0];
            let power = element.power_ranges[0];
            assert_eq!(
                element.fill_rate.start_of_range,
                BATTERY.fill_rate(power.start_of_range)
            );
            assert_eq!(
                element.fill_rate.end_of_range,
                BATTERY.fill_rate(power.end_of_range)
            );
        }
    }

    #[test]
    fn fill_rates_follow_capacity() {
        let storage = Storage {
            capacity_wh: 10_000.0,
            max_charge_w: 5000.0,
            max_discharge_w: 5000.0,
            min_soc: 10.0,
            max_soc: 90.0,
        };
        // 5 kW into 10 kWh is 50 % an hour.
        assert!((storage.fill_rate(5000.0) * 3600.0 - 50.0).abs() < 1e-9);
        let ids = IdBook::default();
        let system = system_description(&ids, storage, Timestamp::UNIX_EPOCH);
        assert_eq!(system.actuators.len(), 1);
        assert_eq!(
            system.storage.fill_level_range,
            NumberRange::new(10.0, 90.0)
        );
    }
}
