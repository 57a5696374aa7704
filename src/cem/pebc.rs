//! PEBC: envelopes whose limits lie inside the ranges the RM announced, closing and
//! opening in turn.

use s2gw_core::s2::{CommodityQuantity, Duration, Timestamp, mint_id, pebc};

/// How far each envelope is open, in turn: 1.0 is the whole announced range (no limit),
/// less closes it from the permissive end. Curtailing first shows PEBC at work at once.
const OPENNESS: [f64; 3] = [0.6, 0.3, 1.0];

/// What the RM announced for PEBC, and the next envelope.
#[derive(Debug, Default)]
pub(super) struct PebcPlanner {
    constraints: Option<pebc::PowerConstraints>,
    step: usize,
}

impl PebcPlanner {
    /// A PEBC.PowerConstraints.
    pub(super) fn constraints(&mut self, constraints: pebc::PowerConstraints) {
        self.constraints = Some(constraints);
    }

    /// The next envelope, lasting `duration` (or until the constraints end), if the
    /// constraints in force at `now` allow one.
    pub(super) fn instruction(
        &mut self,
        now: Timestamp,
        duration: Duration,
    ) -> Option<pebc::Instruction> {
        let constraints = self.constraints.as_ref()?;
        if constraints.valid_from > now || constraints.valid_until.is_some_and(|u| u <= now) {
            return None;
        }
        let duration = constraints.valid_until.map_or(duration, |until| {
            duration.min(until.saturating_duration_since(now))
        });
        let quantity = constraints
            .allowed_limit_ranges
            .iter()
            .find(|r| !r.abnormal_condition_only)?
            .commodity_quantity;
        let openness = OPENNESS[self.step % OPENNESS.len()];
        let lower = limit(
            constraints,
            quantity,
            pebc::PowerEnvelopeLimitType::LowerLimit,
            openness,
        )?;
        let upper = limit(
            constraints,
            quantity,
            pebc::PowerEnvelopeLimitType::UpperLimit,
            openness,
        )?;
        if lower > upper {
            return None;
        }
        self.step += 1;
        Some(pebc::Instruction {
            message_id: mint_id(),
            id: mint_id(),
            execution_time: now,
            abnormal_condition: false,
            power_constraints_id: constraints.id,
            power_envelopes: vec![pebc::PowerEnvelope {
                id: mint_id(),
                commodity_quantity: quantity,
                power_envelope_elements: vec![pebc::PowerEnvelopeElement::new(
                    duration, lower, upper,
                )],
            }],
        })
    }
}

/// A `limit_type` limit for `quantity`, `openness` of the way from the announced range's
/// strict end to its permissive one (the lowest floor, the highest ceiling); `None` when
/// no such range was announced, since every element needs both limits.
fn limit(
    constraints: &pebc::PowerConstraints,
    quantity: CommodityQuantity,
    limit_type: pebc::PowerEnvelopeLimitType,
    openness: f64,
) -> Option<f64> {
    let range = constraints.allowed_limit_ranges.iter().find(|r| {
        r.commodity_quantity == quantity && r.limit_type == limit_type && !r.abnormal_condition_only
    })?;
    let (lo, hi) = range.range_boundary.ordered();
    let value = if limit_type == pebc::PowerEnvelopeLimitType::LowerLimit {
        hi - (hi - lo) * openness
    } else {
        lo + (hi - lo) * openness
    };
    // Rounding must not carry a limit past the range's end: the RM rejects that.
    Some(value.clamp(lo, hi))
}
