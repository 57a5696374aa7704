//! stub
#![allow(missing_docs)]
pub struct DeviceState;
pub struct StateMirror;
