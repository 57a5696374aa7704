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

/// A sample as kept: unix seconds (to 2106) and watts as `f32` (seven digits, more than
/// a chart shows), NaN while unavailable. 8 bytes instead of a [`Sample`]'s 24: an hour
/// of 1,000 devices is 14 MB, not 43.
#[derive(Clone, Copy)]
struct Packed(u32, f32);

impl Packed {
    fn of(at: u64, power: Option<f64>) -> Packed {
        Packed(
            u32::try_from(at).unwrap_or(u32::MAX),
            power.map_or(f32::NAN, |w| w as f32),
        )
    }

    fn sample(self) -> Sample {
        let power = (!self.1.is_nan()).then_some(f64::from(self.1));
        (u64::from(self.0), power)
    }
}

/// The samples of every device, by device id.
#[derive(Clone, Default)]
pub struct History {
    samples: Arc<Mutex<BTreeMap<String, VecDeque<Packed>>>>,
}

impl History {
    /// The samples of `device`, oldest first.
    pub fn of(&self, device: &str) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(device)
            .map(|s| s.iter().map(|k| k.sample()).collect())
            .unwrap_or_default()
    }

    fn record(&self, device: &str, at: u64, power: Option<f64>) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let list = samples
            .entry(device.to_string())
            .or_insert_with(|| VecDeque::with_capacity(KEPT));
        if list.len() == KEPT {
            list.pop_front();
        }
        list.push_back(Packed::of(at, power));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_kept_to_the_watt_and_an_unavailable_one_stays_unavailable() {
        let history = History::default();
        history.record("pv", 1_796_000_000, Some(-3456.5));
        history.record("pv", 1_796_000_002, None);
        assert_eq!(
            history.of("pv"),
            vec![(1_796_000_000, Some(-3456.5)), (1_796_000_002, None)]
        );
    }

    #[test]
    fn an_hour_is_kept_and_no_more() {
        let history = History::default();
        for at in 0..(KEPT as u64 + 10) {
            history.record("pv", at, Some(1.0));
        }
        let kept = history.of("pv");
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept.first().map(|s| s.0), Some(10), "the oldest went first");
    }
}
