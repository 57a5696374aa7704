//! The power of every device over the last hour, for the device page's chart.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use s2gw_core::CancellationToken;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::rm::RmView;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: one hour.
pub const KEPT: usize = 1800;

/// One sample: unix seconds, and watts (`None` while the device was unavailable).
pub type Sample = (u64, Option<f64>);

/// The samples of every device, by device id.
#[derive(Clone, Default)]
pub struct History {
    samples: Arc<Mutex<BTreeMap<String, VecDeque<Sample>>>>,
}

impl History {
    /// The samples of `device`, oldest first.
    pub fn of(&self, device: &str) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(device)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    fn record(&self, device: &str, at: u64, power: Option<f64>) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let list = samples.entry(device.to_string()).or_default();
        if list.len() == KEPT {
            list.pop_front();
        }
        list.push_back((at, power));
    }

    /// Sample every view every [`SAMPLE_EVERY`] until `shutdown`.
    pub fn spawn(
        &self,
        views: Vec<(String, watch::Receiver<RmView>)>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let history = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                for (id, view) in &views {
                    let power = {
                        let v = view.borrow();
                        v.readings
                            .as_ref()
                            .filter(|_| v.available)
                            .map(|r| r.power_w)
                    };
                    history.record(id, now, power);
                }
            }
        })
    }
}
