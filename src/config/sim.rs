//! `[device.sim]`: simulated devices, merged over the profile's `[sim]` and read as an
//! s2gw-sim `SimConfig` like the other adapter tables (see [`super::adapters`]).

use s2gw_core::device::DeviceKind;
use s2gw_sim::{SimConfig, SimModel};

use super::adapters::Whence;
use super::load::Cx;
use super::located::{At, read_all};
use super::profile::{Profile, kind_name};

impl Cx<'_> {
    /// Merge `[device.sim]` over the profile's `[sim]` and read it as a [`SimConfig`];
    /// problems go to the file each key came from.
    pub(crate) fn sim(
        &mut self,
        at: &At,
        device: &toml::Table,
        profile: &Profile,
    ) -> Option<SimConfig> {
        let Some(defaults) = &profile.sim else {
            at.err(
                self.errors,
                "sim",
                format!(
                    "profile `{}` has no [sim] table, so it cannot describe a simulated device",
                    profile.name
                ),
            );
            return None;
        };
        let mut merged = defaults.clone();
        for (k, v) in device {
            merged.insert(k.clone(), v.clone());
        }
        let whence = Whence {
            config: (&self.origin, at.path()),
            profile: profile.source.display_path(),
            device,
            profile_table: defaults,
            device_keys: &[],
        };
        // Every other key is checked against the model, so a bad or missing model is
        // the one problem to report.
        let Some(model) = merged.get("model") else {
            at.err(
                self.errors,
                "sim.model",
                "missing required key (pv, ev, battery, heat_pump, meter, dishwasher or hybrid_heat_pump)",
            );
            return None;
        };
        let only_model: toml::Table = [("model".to_string(), model.clone())].into_iter().collect();
        if let Err(problems) = read_all::<SimConfig>(&only_model, &[], &[]) {
            for (key, reason) in problems {
                whence.push(self.errors, "sim", &key, reason);
            }
            return None;
        }
        let config = match read_all::<SimConfig>(&merged, &["model"], &[]) {
            Ok(config) => config,
            Err(problems) => {
                for (key, reason) in problems {
                    whence.push(self.errors, "sim", &key, reason);
                }
                return None;
            }
        };
        let mut problems = config.validate();
        if !model_fits_kind(config.model, profile.kind) {
            problems.push((
                "model".to_string(),
                format!(
                    "sim model `{}` does not fit profile `{}` of kind {}",
                    config.model.as_str(),
                    profile.name,
                    kind_name(profile.kind)
                ),
            ));
        }
        let ok = problems.is_empty();
        for (key, reason) in problems {
            whence.push(self.errors, "sim", &key, reason);
        }
        ok.then_some(config)
    }
}

/// Whether a simulated model can stand for a device of `kind`.
fn model_fits_kind(model: SimModel, kind: DeviceKind) -> bool {
    matches!(
        (model, kind),
        (SimModel::Pv, DeviceKind::PvInverter)
            | (SimModel::Ev, DeviceKind::EvCharger)
            | (SimModel::Battery, DeviceKind::Battery)
            | (SimModel::HeatPump, DeviceKind::HeatPump)
            | (SimModel::Meter, DeviceKind::Meter | DeviceKind::Load)
            | (SimModel::Dishwasher, DeviceKind::Load)
            | (SimModel::HybridHeatPump, DeviceKind::HeatPump)
    )
}
