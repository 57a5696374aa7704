//! When to send a PowerMeasurement, and what it says.

use s2gw_core::device::DeviceInfo;
use s2gw_core::s2::{CommodityQuantity, PowerMeasurement, PowerValue, Timestamp, mint_id};
use s2gw_core::{DeviceStatus, Readings};

/// A change smaller than this is noise: max(10 W, 2 % of the last value sent).
const MIN_CHANGE_W: f64 = 10.0;
const MIN_CHANGE_RATIO: f64 = 0.02;

/// Remembers what was last reported, to send on change and on a heartbeat.
#[derive(Debug, Default)]
pub(crate) struct Measurer {
    last: Option<(f64, Timestamp)>,
    warned_no_phases: bool,
}

impl Measurer {
    /// Forget what was sent (a new session starts from nothing).
    pub(crate) fn reset(&mut self) {
        self.last = None;
    }

    /// When a heartbeat measurement is due, if one was ever sent.
    pub(crate) fn due_at(&self, interval: std::time::Duration) -> Option<Timestamp> {
        let interval = super::describe::s2_duration(interval);
        self.last.and_then(|(_, at)| at.checked_add(interval))
    }

    /// The measurement to send now, if any: on a significant change, when the interval
    /// has passed, or when `force`d (a control type was just selected). Never for
    /// readings the device says are not trustworthy: no values are made up.
    pub(crate) fn next(
        &mut self,
        readings: &Readings,
        info: &DeviceInfo,
        interval: std::time::Duration,
        now: Timestamp,
        force: bool,
    ) -> Option<PowerMeasurement> {
        if matches!(readings.status, DeviceStatus::Unavailable(_)) || !readings.power_w.is_finite()
        {
            return None;
        }
        let due = match self.last {
            None => true,
            Some((last, _)) if changed(last, readings.power_w) => true,
            Some(_) => self.due_at(interval).is_some_and(|at| at <= now),
        };
        if !(due || force) {
            return None;
        }
        let values = self.values(readings, info)?;
        self.last = Some((readings.power_w, now));
        Some(PowerMeasurement {
            message_id: mint_id(),
            measurement_timestamp: now,
            values,
        })
    }

    fn values(&mut self, readings: &Readings, info: &DeviceInfo) -> Option<Vec<PowerValue>> {
        if !info.three_phase {
            return Some(vec![PowerValue::new(
                CommodityQuantity::ElectricPower3PhaseSymmetric,
                readings.power_w,
            )]);
        }
        let Some([l1, l2, l3]) = readings.phase_power_w else {
            // Announced per phase, so a total cannot be sent instead; splitting it
            // evenly would be making values up.
            if !self.warned_no_phases {
                self.warned_no_phases = true;
                tracing::warn!("three-phase device reported no per-phase power; not measured");
            }
            return None;
        };
        Some(vec![
            PowerValue::new(CommodityQuantity::ElectricPowerL1, l1),
            PowerValue::new(CommodityQuantity::ElectricPowerL2, l2),
            PowerValue::new(CommodityQuantity::ElectricPowerL3, l3),
        ])
    }
}

/// Whether `now` differs from `last` by more than max(10 W, 2 %).
fn changed(last: f64, now: f64) -> bool {
    (now - last).abs() > MIN_CHANGE_W.max(last.abs() * MIN_CHANGE_RATIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_changes_are_noise() {
        assert!(!changed(1000.0, 1015.0));
        assert!(changed(1000.0, 1021.0));
        assert!(!changed(0.0, 9.0));
        assert!(changed(0.0, 11.0));
    }

    #[test]
    fn nothing_is_measured_while_unavailable() {
        let mut m = Measurer::default();
        let readings = Readings {
            status: DeviceStatus::Unavailable("gone".into()),
            ..Readings::default()
        };
        let now = Timestamp::from_unix(1_700_000_000, 0);
        let info = DeviceInfo::default();
        assert!(
            m.next(
                &readings,
                &info,
                std::time::Duration::from_secs(10),
                now,
                true
            )
            .is_none()
        );
    }
}
