//! stub
#![allow(missing_docs)]
pub trait BridgeData: Send + Sync {}
pub fn spawn_bridge() {}
