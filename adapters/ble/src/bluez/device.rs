//! [`BleDevice`]: the [`Device`] the virtual RM drives.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use s2gw_core::device::{DeviceInfo, DeviceKind};
use s2gw_core::{Command, Device, DeviceError, Readings};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::link::{self, Plan, WriteRequest};
use crate::config::{BleConnection, BleProfile};
use crate::state::{self, SensorState};

/// A write is given this long (connecting included) before it counts as failed; below
/// the virtual RM's own limit on a device call, so the RM hears a reason, not a timeout.
const WRITE_TIMEOUT: Duration = Duration::from_secs(8);

/// A BLE device: a BTHome sensor or a GATT-mapped device.
pub struct BleDevice {
    id: String,
    plan: Arc<Plan>,
    kind: DeviceKind,
    state: Arc<Mutex<SensorState>>,
    writes: Option<mpsc::Sender<WriteRequest>>,
    worker: Option<JoinHandle<()>>,
}

impl BleDevice {
    /// A device named `id`; see [`crate::build`].
    pub fn new(id: &str, connection: &BleConnection, profile: &BleProfile) -> Self {
        Self {
            id: id.to_string(),
            plan: Arc::new(Plan::new(id, connection, profile)),
            kind: state::device_kind(profile),
            state: Arc::new(Mutex::new(SensorState::new(profile, connection))),
            writes: None,
            worker: None,
        }
    }

    /// Report `kind` instead of the one guessed from the profile (meter without modes,
    /// load with): the daemon's profile says what the device is.
    pub fn with_kind(mut self, kind: DeviceKind) -> Self {
        self.kind = kind;
        self
    }

    /// Start the background task once, from inside the runtime.
    fn ensure_started(&mut self) {
        if self.worker.is_some() {
            return;
        }
        let (tx, rx) = mpsc::channel(4);
        let plan = Arc::clone(&self.plan);
        let state = Arc::clone(&self.state);
        self.worker = Some(tokio::spawn(link::run(plan, state, rx)));
        self.writes = Some(tx);
    }

    fn state(&self) -> MutexGuard<'_, SensorState> {
        // A poisoned lock means a panic elsewhere while holding it; the values inside are
        // still the latest ones written, so reading them is safe.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for BleDevice {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}

#[async_trait]
impl Device for BleDevice {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: self.kind,
            control: state::capabilities(&self.plan.profile),
            ..DeviceInfo::default()
        }
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        self.ensure_started();
        let now = Instant::now();
        let state = self.state();
        let readings = state.readings(now);
        // No usable values and a reason why (no BlueZ, no adapter, wrong bindkey): an
        // error naming the device, so the log says which BLE device is affected.
        match (state.is_fresh(now), state.problem()) {
            (false, Some(problem)) => Err(DeviceError::Unreachable(format!(
                "BLE device `{}`: {problem}",
                self.id
            ))),
            _ => Ok(readings),
        }
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        if self.plan.profile.modes.is_empty() {
            return Err(DeviceError::Refused(format!(
                "BLE device `{}` only measures; it takes no commands",
                self.id
            )));
        }
        let write = state::write_for(&self.plan.profile, command)?;
        self.ensure_started();
        let (reply, answer) = oneshot::channel();
        let down =
            || DeviceError::Unreachable(format!("BLE device `{}`: its link task stopped", self.id));
        let writes = self.writes.as_ref().ok_or_else(down)?;
        writes
            .send(WriteRequest { write, reply })
            .await
            .map_err(|_| down())?;
        match tokio::time::timeout(WRITE_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(down()),
            Err(_) => Err(DeviceError::Unreachable(format!(
                "BLE device `{}`: write not done within {} s",
                self.id,
                WRITE_TIMEOUT.as_secs()
            ))),
        }
    }
}
