//! One module per input surface; each is a [`Target`](crate::runner::Target).

pub mod ble;
pub mod config;
pub mod modbus;
pub mod mqtt;
pub mod s2;
