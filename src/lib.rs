//! The s2gw daemon: configuration, the bus, virtual resource managers and their wiring.
pub mod bus;
