//! PEBC: a device that can be bounded, not driven (a curtailable PV inverter, a charger
//! that can only be limited).

use s2gw_core::Command;
use s2gw_core::device::DeviceKind;
use s2gw_core::s2::{ControlType, Instructed, Message, NumberRange, Timestamp, pebc};

use super::{Context, ControlModule, QUANTITY};
use crate::rm::ids::IdBook;
use crate::rm::plan::{Planned, Step};

/// PEBC for one device: its envelope is all it needs.
pub(crate) struct Pebc {
    envelope: Envelope,
}

impl Pebc {
    /// A device that can be limited anywhere in `[min_w, max_w]`.
    pub(crate) fn new(min_w: f64, max_w: f64) -> Self {
        Self {
            envelope: Envelope { min_w, max_w },
        }
    }
}

impl ControlModule for Pebc {
    fn control_type(&self) -> ControlType {
        ControlType::PowerEnvelopeBasedControl
    }

    fn describe(&mut self, cx: &mut Context<'_>, now: Timestamp) -> Vec<Message> {
        vec![constraints(cx.ids, self.envelope, cx.kind, now).into()]
    }

    fn plan(
        &mut self,
        _cx: &mut Context<'_>,
        instructed: &Instructed,
        now: Timestamp,
    ) -> Result<Planned, String> {
        plan(instructed, self.envelope, now)
    }
}

/// What the device can be limited to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Envelope {
    /// Most production (negative).
    pub min_w: f64,
    /// Most consumption.
    pub max_w: f64,
}

impl Envelope {
    /// The range a LOWER_LIMIT may take: from the device's floor up to zero. A limit can
    /// curtail what the device does on its own, never force it to do more.
    pub(crate) fn lower_range(self) -> NumberRange {
        NumberRange::new(self.min_w, self.min_w.max(self.max_w.min(0.0)))
    }

    /// The range an UPPER_LIMIT may take: from zero up to the device's ceiling.
    pub(crate) fn upper_range(self) -> NumberRange {
        NumberRange::new(self.max_w.min(self.min_w.max(0.0)), self.max_w)
    }
}

/// PEBC.PowerConstraints: one UPPER_LIMIT and one LOWER_LIMIT range, open-ended.
pub(crate) fn constraints(
    ids: &IdBook,
    envelope: Envelope,
    kind: DeviceKind,
    now: Timestamp,
) -> pebc::PowerConstraints {
    let range = |limit_type, range_boundary| pebc::AllowedLimitRange {
        commodity_quantity: QUANTITY,
        limit_type,
        range_boundary,
        abnormal_condition_only: false,
    };
    pebc::PowerConstraints {
        message_id: s2gw_core::s2::mint_id(),
        id: ids.get("pebc.constraints"),
        valid_from: now,
        valid_until: None,
        // Curtailed sunshine is gone; a limited charge or load happens later.
        consequence_type: if kind == DeviceKind::PvInverter {
            pebc::PowerEnvelopeConsequenceType::Vanish
        } else {
            pebc::PowerEnvelopeConsequenceType::Defer
        },
        allowed_limit_ranges: vec![
            range(
                pebc::PowerEnvelopeLimitType::UpperLimit,
                envelope.upper_range(),
            ),
            range(
                pebc::PowerEnvelopeLimitType::LowerLimit,
                envelope.lower_range(),
            ),
        ],
    }
}

/// A PEBC.Instruction as device steps: one `LimitPower` per envelope element, at its
/// time, and the end of the last element as the end of validity.
pub(crate) fn plan(
    instructed: &Instructed,
    envelope: Envelope,
    now: Timestamp,
) -> Result<Planned, String> {
    let Message::PebcInstruction(instruction) = &instructed.message else {
        return Err("not a PEBC.Instruction".to_string());
    };
    let elements = instruction
        .envelope_for(QUANTITY)
        .map(|e| e.power_envelope_elements.as_slice())
        .unwrap_or_default();
    if elements.is_empty() {
        return Err(format!("no envelope for {}", QUANTITY.as_str()));
    }
    let mut steps = Vec::with_capacity(elements.len());
    let mut at = instruction.execution_time;
    for element in elements {
        steps.push(Step {
            at,
            command: limit(element, envelope)?,
        });
        at = at
            .checked_add(element.duration)
            .ok_or_else(|| "envelope runs past the end of time".to_string())?;
    }
    if at <= now {
        return Err(format!("the envelope ended at {at}, before it arrived"));
    }
    Ok(Planned {
        id: instruction.id,
        execute_at: instruction.execution_time,
        summary: summary(&steps),
        steps,
        ends_at: Some(at),
        mode: None,
        seq: 0,
    })
}

/// One element as a device command. A bound at the device's own extreme is no bound, so
/// it is left open (the adapter then leaves that side alone).
fn limit(element: &pebc::PowerEnvelopeElement, envelope: Envelope) -> Result<Command, String> {
    let (lower, upper) = (element.lower_limit, element.upper_limit);
    if !envelope.lower_range().contains(lower) || !envelope.upper_range().contains(upper) {
        return Err(format!(
            "limits {lower}..{upper} W are outside what the device allows ({}..{} W)",
            envelope.min_w, envelope.max_w
        ));
    }
    Ok(Command::LimitPower {
        min_w: (lower > envelope.min_w).then_some(lower),
        max_w: (upper < envelope.max_w).then_some(upper),
    })
}

fn summary(steps: &[Step]) -> String {
    let first = steps
        .first()
        .map(|s| s.command.summary())
        .unwrap_or_default();
    match steps.len() {
        0 | 1 => first,
        n => format!("{first} (+{} steps)", n - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2gw_core::s2::Duration;

    #[test]
    fn pv_ranges_curtail_production_only() {
        let pv = Envelope {
            min_w: -5000.0,
            max_w: 0.0,
        };
        assert_eq!(pv.lower_range(), NumberRange::new(-5000.0, 0.0));
        assert_eq!(pv.upper_range(), NumberRange::new(0.0, 0.0));
        let charger = Envelope {
            min_w: 0.0,
            max_w: 11000.0,
        };
        assert_eq!(charger.lower_range(), NumberRange::new(0.0, 0.0));
        assert_eq!(charger.upper_range(), NumberRange::new(0.0, 11000.0));
    }

    #[test]
    fn limits_outside_the_device_are_refused_and_extremes_stay_open() {
        let pv = Envelope {
            min_w: -5000.0,
            max_w: 0.0,
        };
        let element = pebc::PowerEnvelopeElement::new(Duration::from_secs(60), -3000.0, 0.0);
        assert_eq!(
            limit(&element, pv),
            Ok(Command::LimitPower {
                min_w: Some(-3000.0),
                max_w: None
            })
        );
        let too_far = pebc::PowerEnvelopeElement::new(Duration::from_secs(60), -6000.0, 0.0);
        assert!(limit(&too_far, pv).is_err());
    }
}
