//! stub
#![allow(missing_docs)]
pub struct CommandMap;
pub struct MqttDevice;
pub struct MqttDeviceConfig;
pub struct ReadingMap;
