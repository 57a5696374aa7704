//! What the resource says about itself: ResourceManagerDetails and the control types it
//! offers.

use s2gw_core::device::{DeviceInfo, DeviceKind};
use s2gw_core::s2::{
    Commodity, CommodityQuantity, ControlType, Duration, Id, ResourceManagerDetails, Role,
    RoleType, mint_id,
};

use super::VirtualRmConfig;
use super::control::control_types_of;

/// The control types to offer: the configured list intersected with the device's (in the
/// device's order of preference); everything the device offers when none are configured.
/// Never empty: a device that offers nothing usable is still measurable.
pub(crate) fn offered_control_types(
    config: &VirtualRmConfig,
    info: &DeviceInfo,
) -> Vec<ControlType> {
    let supported = control_types_of(&info.control);
    // The configured list (the profile's, or the device's narrowing of it) is in order of
    // preference, and a CEM that takes the first type offered must get the most useful
    // one; without a list, the device's own order stands.
    let mut offered: Vec<ControlType> = if config.control_types.is_empty() {
        supported.clone()
    } else {
        config
            .control_types
            .iter()
            .copied()
            .filter(|wanted| supported.contains(wanted))
            .collect()
    };
    let mut seen = Vec::new();
    offered.retain(|t| {
        let first = !seen.contains(t);
        seen.push(*t);
        first
    });
    if offered.is_empty() {
        offered.push(ControlType::NotControllable);
    }
    offered
}

/// The quantities measurements are reported in: one per phase when the device reports
/// per phase, otherwise the total as three-phase symmetric.
pub(crate) fn measured_quantities(info: &DeviceInfo) -> Vec<CommodityQuantity> {
    if info.three_phase {
        vec![
            CommodityQuantity::ElectricPowerL1,
            CommodityQuantity::ElectricPowerL2,
            CommodityQuantity::ElectricPowerL3,
        ]
    } else {
        vec![CommodityQuantity::ElectricPower3PhaseSymmetric]
    }
}

/// The role the device kind plays with electricity.
fn role_of(kind: DeviceKind) -> RoleType {
    match kind {
        DeviceKind::PvInverter => RoleType::EnergyProducer,
        DeviceKind::Battery => RoleType::EnergyStorage,
        DeviceKind::EvCharger | DeviceKind::HeatPump | DeviceKind::Meter | DeviceKind::Load => {
            RoleType::EnergyConsumer
        }
    }
}

/// The resource id from the configuration. A configured id that is not a legal S2 id is
/// replaced by a minted UUID (and logged), rather than failing the whole RM.
pub(crate) fn resource_id(config: &VirtualRmConfig) -> Id {
    match Id::parse(&config.resource_id) {
        Ok(id) => {
            if id.as_uuid().is_none() {
                tracing::warn!(
                    resource = %config.resource_id,
                    "resource_id is not a UUID; s2-python and s2energy peers will refuse it"
                );
            }
            id
        }
        Err(error) => {
            let minted = mint_id();
            tracing::error!(
                resource = %config.resource_id,
                %error,
                %minted,
                "resource_id is not a legal S2 id; using a minted UUID for this run"
            );
            minted
        }
    }
}

/// ResourceManagerDetails from the configuration and the device's facts; the session
/// replaces the `message_id` with a fresh one each time it sends them.
pub(crate) fn details(
    config: &VirtualRmConfig,
    resource_id: Id,
    info: &DeviceInfo,
    offered: Vec<ControlType>,
) -> ResourceManagerDetails {
    let or = |configured: &Option<String>, device: &Option<String>| {
        configured.clone().or_else(|| device.clone())
    };
    ResourceManagerDetails {
        message_id: mint_id(),
        resource_id,
        name: Some(config.name.clone()),
        roles: vec![Role::new(role_of(info.kind), Commodity::Electricity)],
        manufacturer: or(&config.manufacturer, &info.manufacturer),
        model: or(&config.model, &info.model),
        serial_number: or(&config.serial, &info.serial),
        firmware_version: or(&config.firmware, &info.firmware),
        instruction_processing_delay: s2_duration(config.instruction_processing_delay),
        available_control_types: offered,
        currency: None,
        provides_forecast: false,
        provides_power_measurement_types: measured_quantities(info),
    }
}

/// An S2 duration (milliseconds) for a std one, saturating.
pub(crate) fn s2_duration(duration: std::time::Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2gw_core::device::ControlCapability;

    #[test]
    fn the_configured_order_of_preference_wins_over_the_devices_order() {
        let info = DeviceInfo {
            control: vec![
                ControlCapability::NotControllable,
                ControlCapability::PowerEnvelope {
                    min_w: -5000.0,
                    max_w: 0.0,
                },
            ],
            ..DeviceInfo::default()
        };
        let mut config = VirtualRmConfig::new("r", "r");
        assert_eq!(
            offered_control_types(&config, &info),
            [
                ControlType::NotControllable,
                ControlType::PowerEnvelopeBasedControl
            ]
        );
        config.control_types = vec![
            ControlType::PowerEnvelopeBasedControl,
            ControlType::FillRateBasedControl,
            ControlType::NotControllable,
        ];
        // FRBC is not something this device can do, so it is not offered.
        assert_eq!(
            offered_control_types(&config, &info),
            [
                ControlType::PowerEnvelopeBasedControl,
                ControlType::NotControllable
            ]
        );
    }
}
