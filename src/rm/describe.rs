//! What the resource says about itself: ResourceManagerDetails and the control types it
//! offers.

use s2gw_core::device::{ControlCapability, DeviceInfo, DeviceKind};
use s2gw_core::s2::{
    Commodity, CommodityQuantity, ControlType, Duration, Id, ResourceManagerDetails, Role,
    RoleType, mint_id,
};

use super::VirtualRmConfig;

/// The S2 control type a device capability maps to.
pub(crate) fn control_type_of(capability: &ControlCapability) -> ControlType {
    match capability {
        ControlCapability::NotControllable => ControlType::NotControllable,
        ControlCapability::PowerEnvelope { .. } => ControlType::PowerEnvelopeBasedControl,
        ControlCapability::Storage { .. } => ControlType::FillRateBasedControl,
        ControlCapability::OperationModes { .. } => ControlType::OperationModeBasedControl,
    }
}

/// The control types to offer: the configured list intersected with the device's (in the
/// device's order of preference); everything the device offers when none are configured.
/// Never empty: a device that offers nothing usable is still measurable.
pub(crate) fn offered_control_types(
    config: &VirtualRmConfig,
    info: &DeviceInfo,
) -> Vec<ControlType> {
    let mut offered: Vec<ControlType> = Vec::new();
    for capability in &info.control {
        let control_type = control_type_of(capability);
        let wanted =
            config.control_types.is_empty() || config.control_types.contains(&control_type);
        if wanted && !offered.contains(&control_type) {
            offered.push(control_type);
        }
    }
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
