//! The s2gw daemon: configuration, the bus, virtual resource managers and their wiring.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library, so the end-to-end tests
//! and the benchmarks drive the same code the daemon runs.

pub mod bus;
pub mod cem;
pub mod commands;
pub mod config;
pub mod demo;
pub mod gateway;
pub mod rm;
pub mod web;
