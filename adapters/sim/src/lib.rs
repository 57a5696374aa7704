//! Simulated devices for demos and tests: a PV inverter, an EV charger, a home battery,
//! an SG-Ready heat pump, a household meter, a dishwasher and a hybrid heat pump, each a
//! [`s2gw_core::Device`].
//!
//! They behave plausibly rather than exactly: power follows the time of day, energy and
//! state of charge integrate over the time between calls, and commands are obeyed or
//! refused the way a real device would. Time comes from an injected [`Clock`] and all
//! "randomness" is derived from the device id, so a test on a [`ManualClock`] sees the
//! same numbers every run.

mod battery;
mod clock;
mod common;
mod config;
mod dishwasher;
mod ev;
mod heat_pump;
mod hybrid_heat_pump;
mod meter;
mod noise;
mod pv;

use std::sync::Arc;

use s2gw_core::Device;

pub use battery::Battery;
pub use clock::{Clock, ManualClock, SystemClock, TokioClock};
pub use config::{SimConfig, SimModel};
pub use dishwasher::Dishwasher;
pub use ev::EvCharger;
pub use heat_pump::HeatPump;
pub use hybrid_heat_pump::HybridHeatPump;
pub use meter::Meter;
pub use pv::{PvInverter, utc_offset_for_midday_at};

/// Builds the simulated device `config` describes, named `id`.
///
/// Never fails: a parameter that makes no sense falls back to its default, so call
/// [`SimConfig::validate`] first to tell the user about it.
pub fn build(id: &str, config: &SimConfig, clock: Arc<dyn Clock>) -> Box<dyn Device> {
    match config.model {
        SimModel::Pv => Box::new(PvInverter::new(id, config, clock)),
        SimModel::Ev => Box::new(EvCharger::new(id, config, clock)),
        SimModel::Battery => Box::new(Battery::new(id, config, clock)),
        SimModel::HeatPump => Box::new(HeatPump::new(id, config, clock)),
        SimModel::Meter => Box::new(Meter::new(id, config, clock)),
        SimModel::Dishwasher => Box::new(Dishwasher::new(id, config, clock)),
        SimModel::HybridHeatPump => Box::new(HybridHeatPump::new(id, config, clock)),
    }
}

#[cfg(test)]
mod tests;
