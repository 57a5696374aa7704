//! Builds the `Device` behind a `[[device]]` from its connection section.

use std::sync::Arc;

use s2gw_core::Device;

use crate::config::{Connection, DeviceSection};

/// The device a `[[device]]` section describes, ready for its virtual RM.
///
/// Building never touches the device: connecting, and reconnecting with back-off, is the
/// adapter's job once the virtual RM starts reading.
pub fn build(device: &DeviceSection) -> Box<dyn Device> {
    match &device.connection {
        Connection::Sim(sim) => s2gw_sim::build(&device.id, sim, Arc::new(s2gw_sim::SystemClock)),
    }
}
