//! S2 messages built from descriptions, and what the tests read out of messages.

use s2_kit::types::common::{
    CommodityQuantity, PowerMeasurement, ReceptionStatus, ReceptionStatusValues,
};
use s2_kit::types::{Duration as S2Duration, Id, Timestamp, ddbc, frbc, ombc, pebc, ppbc};
use serde_json::Value;

/// The total electric power of a measurement (W, consumption positive).
pub fn total_power(measurement: &PowerMeasurement) -> f64 {
    measurement
        .values
        .iter()
        .filter(|v| {
            matches!(
                v.commodity_quantity,
                CommodityQuantity::ElectricPowerL1
                    | CommodityQuantity::ElectricPowerL2
                    | CommodityQuantity::ElectricPowerL3
                    | CommodityQuantity::ElectricPower3PhaseSymmetric
            )
        })
        .map(|v| v.value)
        .sum()
}

/// A PEBC.Instruction within `constraints`: one envelope element of `duration`.
pub fn pebc_instruction(
    constraints: &pebc::PowerConstraints,
    lower_w: f64,
    upper_w: f64,
    execution_time: Timestamp,
    duration: S2Duration,
) -> pebc::Instruction {
    let quantity = constraints
        .allowed_limit_ranges
        .first()
        .map(|r| r.commodity_quantity)
        .expect("PowerConstraints without ranges");
    pebc::Instruction {
        message_id: Id::generate(),
        id: Id::generate(),
        execution_time,
        abnormal_condition: false,
        power_constraints_id: constraints.id,
        power_envelopes: vec![pebc::PowerEnvelope {
            id: Id::generate(),
            commodity_quantity: quantity,
            power_envelope_elements: vec![pebc::PowerEnvelopeElement::new(
                duration, lower_w, upper_w,
            )],
        }],
    }
}

/// An OMBC.Instruction for the mode labelled `label` (its diagnostic label) in `system`.
pub fn ombc_instruction(system: &ombc::SystemDescription, label: &str) -> ombc::Instruction {
    let mode = system
        .operation_modes
        .iter()
        .find(|m| m.diagnostic_label.as_deref() == Some(label))
        .unwrap_or_else(|| {
            let labels: Vec<_> = system
                .operation_modes
                .iter()
                .map(|m| m.diagnostic_label.clone())
                .collect();
            panic!("no OMBC mode labelled {label:?}; modes: {labels:?}")
        });
    ombc::Instruction {
        message_id: Id::generate(),
        id: Id::generate(),
        execution_time: Timestamp::now(),
        operation_mode_id: mode.id,
        operation_mode_factor: 1.0,
        abnormal_condition: false,
    }
}

/// An FRBC.Instruction for the mode labelled `label` of the first actuator, at `factor`.
pub fn frbc_instruction(
    system: &frbc::SystemDescription,
    label: &str,
    factor: f64,
) -> frbc::Instruction {
    let actuator = system.actuators.first().expect("no FRBC actuator");
    let mode = actuator
        .operation_modes
        .iter()
        .find(|m| m.diagnostic_label.as_deref() == Some(label))
        .unwrap_or_else(|| panic!("no FRBC mode labelled {label:?}"));
    frbc::Instruction {
        message_id: Id::generate(),
        id: Id::generate(),
        actuator_id: actuator.id,
        operation_mode: mode.id,
        operation_mode_factor: factor,
        execution_time: Timestamp::now(),
        abnormal_condition: false,
    }
}

/// Every string under `value` that sits at a key named `id` or ending in `_id` (the ids a
/// message mints or names), with its key.
/// A DDBC.Instruction for the actuator labelled `actuator`, into its mode labelled `mode`,
/// at `factor`, due now.
pub fn ddbc_instruction(
    system: &ddbc::SystemDescription,
    actuator: &str,
    mode: &str,
    factor: f64,
) -> ddbc::Instruction {
    let actuator = system
        .actuators
        .iter()
        .find(|a| a.diagnostic_label.as_deref() == Some(actuator))
        .unwrap_or_else(|| panic!("no DDBC actuator labelled {actuator:?}"));
    let mode = actuator
        .operation_modes
        .iter()
        .find(|m| m.diagnostic_label.as_deref() == Some(mode))
        .unwrap_or_else(|| panic!("no DDBC mode labelled {mode:?}"));
    ddbc::Instruction {
        message_id: Id::generate(),
        id: Id::generate(),
        execution_time: Timestamp::now(),
        abnormal_condition: false,
        actuator_id: actuator.id,
        operation_mode_id: mode.id,
        operation_mode_factor: factor,
    }
}

/// What a PPBC instruction names: the profile, its first container, and the sequence at
/// `sequence` in it.
pub fn ppbc_target(profile: &ppbc::PowerProfileDefinition, sequence: usize) -> (Id, Id, Id) {
    let container = &profile.power_sequence_containers[0];
    (
        profile.id,
        container.id,
        container.power_sequences[sequence].id,
    )
}

/// The three PPBC instructions carry the same fields; one builder shape serves all.
macro_rules! ppbc_instruction {
    ($(#[$doc:meta])* $name:ident -> $ty:ident) => {
        $(#[$doc])*
        pub fn $name(profile: &ppbc::PowerProfileDefinition, sequence: usize) -> ppbc::$ty {
            let (power_profile_id, sequence_container_id, power_sequence_id) =
                ppbc_target(profile, sequence);
            ppbc::$ty {
                message_id: Id::generate(),
                id: Id::generate(),
                power_profile_id,
                sequence_container_id,
                power_sequence_id,
                execution_time: Timestamp::now(),
                abnormal_condition: false,
            }
        }
    };
}

ppbc_instruction!(
    /// A PPBC.ScheduleInstruction for the sequence at `sequence`, due now.
    ppbc_schedule -> ScheduleInstruction
);
ppbc_instruction!(
    /// A PPBC.StartInterruptionInstruction for the sequence at `sequence`, due now.
    ppbc_pause -> StartInterruptionInstruction
);
ppbc_instruction!(
    /// A PPBC.EndInterruptionInstruction for the sequence at `sequence`, due now.
    ppbc_resume -> EndInterruptionInstruction
);

pub fn ids_in(value: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    collect_ids(value, &mut out);
    out
}

fn collect_ids(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let is_id = key == "id" || key.ends_with("_id");
                match v {
                    Value::String(s) if is_id => out.push((key.clone(), s.clone())),
                    Value::Array(items) if key.ends_with("_ids") || key.ends_with("_timers") => {
                        for item in items {
                            if let Value::String(s) = item {
                                out.push((key.clone(), s.clone()));
                            }
                        }
                    }
                    other => collect_ids(other, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_ids(v, out)),
        _ => {}
    }
}

/// Whether `text` is a UUID in its canonical hyphenated form.
pub fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok() && text.len() == 36
}

/// The status the gateway answered `subject` with, if it answered it.
pub fn status_of(receptions: &[ReceptionStatus], subject: &str) -> Option<ReceptionStatusValues> {
    receptions
        .iter()
        .find(|r| r.subject_message_id.as_str() == subject)
        .map(|r| r.status)
}
