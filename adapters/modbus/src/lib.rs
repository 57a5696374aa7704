//! Modbus adapter for s2gw (work in progress).

pub mod bus;
pub mod config;
pub mod error;
pub mod map;
pub mod point;
pub mod target;
pub mod value;
