//! The s2gw daemon: configuration, the bus, virtual resource managers and their wiring.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library, so the end-to-end tests
//! and the benchmarks drive the same code the daemon runs.

pub mod bridge;
pub mod bus;
pub mod cem;
pub mod cli;
pub mod config;
pub mod demo;
pub mod devices;
pub mod gateway;
pub mod mqtt_wiring;
pub mod rm;
