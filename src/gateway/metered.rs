//! A device wrapper that times and counts every read and command, for `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use s2gw_core::Device;
use s2gw_core::device::{Command, DeviceError, DeviceInfo, DeviceStatus, Readings};

/// The buckets of the poll duration histogram, in seconds: a sim device answers in
/// microseconds, Modbus TCP in milliseconds, a slow RTU bus or a BLE radio in seconds.
pub const POLL_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The label of per-device metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    /// The config's device id.
    pub device: String,
}

/// Every device's poll duration histogram, one family for `/metrics`.
pub type PollDurations = Family<DeviceLabel, Histogram, fn() -> Histogram>;

/// An empty [`PollDurations`].
pub fn poll_durations() -> PollDurations {
    fn histogram() -> Histogram {
        Histogram::new(POLL_BUCKETS)
    }
    Family::new_with_constructor(histogram)
}

/// What one device's reads and commands did since start.
#[derive(Debug)]
pub struct DeviceStats {
    poll_duration: Histogram,
    poll_errors: AtomicU64,
    commands: AtomicU64,
    command_errors: AtomicU64,
}

impl DeviceStats {
    /// The statistics of `device`, its poll durations kept in `family`.
    pub fn new(family: &PollDurations, device: &str) -> Self {
        let label = DeviceLabel {
            device: device.to_string(),
        };
        Self {
            poll_duration: family.get_or_create(&label).clone(),
            poll_errors: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            command_errors: AtomicU64::new(0),
        }
    }

    /// Reads that failed or found the device unavailable.
    pub fn poll_errors(&self) -> u64 {
        self.poll_errors.load(Ordering::Relaxed)
    }

    /// Commands sent to the device.
    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    /// Commands the device refused or failed.
    pub fn command_errors(&self) -> u64 {
        self.command_errors.load(Ordering::Relaxed)
    }
}

/// `inner`, with every call counted in `stats`.
pub struct Metered {
    inner: Box<dyn Device>,
    stats: Arc<DeviceStats>,
}

impl Metered {
    /// Wrap `inner`.
    pub fn new(inner: Box<dyn Device>, stats: Arc<DeviceStats>) -> Self {
        Self { inner, stats }
    }
}

#[async_trait]
impl Device for Metered {
    fn info(&self) -> DeviceInfo {
        self.inner.info()
    }

    async fn read(&mut self) -> Result<Readings, DeviceError> {
        let started = Instant::now();
        let result = self.inner.read().await;
        self.stats
            .poll_duration
            .observe(started.elapsed().as_secs_f64());
        // A device that answers "unavailable" failed the read as much as one that errs.
        let failed = result
            .as_ref()
            .map_or(true, |r| matches!(r.status, DeviceStatus::Unavailable(_)));
        if failed {
            self.stats.poll_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn apply(&mut self, command: &Command) -> Result<(), DeviceError> {
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let result = self.inner.apply(command).await;
        if result.is_err() {
            self.stats.command_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}
