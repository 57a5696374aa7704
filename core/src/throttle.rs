//! [`LogThrottle`]: the first few occurrences of a problem get a line each, the rest are
//! counted and summed up at most once per interval.
//!
//! For everything that can repeat for as long as a peer or a device misbehaves: MQTT
//! payloads that are dropped, device writes that keep failing, messages the RM session
//! refuses. (Refused S2 frames at the edge have their own, richer tally:
//! [`RefusalLog`](crate::link::RefusalLog).) Each user keeps one throttle per thing that
//! can misbehave (a link, a device), so one noisy peer cannot silence another's first
//! lines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Occurrences of one reason logged one by one before only counts are kept.
pub const INDIVIDUAL: u64 = 5;

/// The shortest time between two summary lines of one reason.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// What to do about one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Noted {
    /// Write its line. `last` when later ones of the same reason are only counted.
    Log {
        /// No further occurrence of this reason gets a line of its own.
        last: bool,
    },
    /// Write one summary line: `suppressed` occurrences (this one included) since the
    /// last line of this reason.
    Summary {
        /// How many were not logged one by one.
        suppressed: u64,
    },
    /// Counted for the next summary.
    Counted,
}

#[derive(Debug, Default)]
struct Tally {
    seen: u64,
    pending: u64,
    last_line: Option<Instant>,
}

/// One throttle: tallies by reason (a short fixed text such as `"retained S2 message"`).
#[derive(Debug)]
pub struct LogThrottle {
    individual: u64,
    interval: Duration,
    tallies: BTreeMap<&'static str, Tally>,
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self::new(INDIVIDUAL, SUMMARY_INTERVAL)
    }
}

impl LogThrottle {
    /// A throttle that logs `individual` occurrences of each reason, then a summary at
    /// most every `interval`.
    pub fn new(individual: u64, interval: Duration) -> Self {
        Self {
            individual,
            interval,
            tallies: BTreeMap::new(),
        }
    }

    /// Note one occurrence of `reason` at `now`.
    pub fn note(&mut self, reason: &'static str, now: Instant) -> Noted {
        let tally = self.tallies.entry(reason).or_default();
        tally.seen = tally.seen.saturating_add(1);
        if tally.seen <= self.individual {
            tally.last_line = Some(now);
            return Noted::Log {
                last: tally.seen == self.individual,
            };
        }
        tally.pending += 1;
        let due = tally
            .last_line
            .is_none_or(|at| now.saturating_duration_since(at) >= self.interval);
        if !due {
            return Noted::Counted;
        }
        tally.last_line = Some(now);
        Noted::Summary {
            suppressed: std::mem::take(&mut tally.pending),
        }
    }

    /// Notes one occurrence and writes what is due: `line` for an occurrence logged on
    /// its own, a WARN summary naming `reason` and the count otherwise.
    pub fn warn(&mut self, reason: &'static str, now: Instant, line: impl FnOnce()) {
        match self.note(reason, now) {
            Noted::Log { last } => {
                line();
                if last {
                    tracing::warn!(
                        reason,
                        "more of the same are counted, not logged one by one (a summary at most every {} s)",
                        self.interval.as_secs()
                    );
                }
            }
            Noted::Summary { suppressed } => {
                tracing::warn!(reason, suppressed, "repeated since the last line");
            }
            Noted::Counted => {}
        }
    }

    /// Occurrences counted but not yet summed up, by reason.
    pub fn pending(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.tallies
            .iter()
            .filter(|(_, t)| t.pending > 0)
            .map(|(reason, t)| (*reason, t.pending))
    }
}

impl Drop for LogThrottle {
    /// What was counted since the last line is not lost when its owner goes.
    fn drop(&mut self) {
        for (reason, suppressed) in self.pending() {
            tracing::warn!(reason, suppressed, "repeated since the last line");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrences_are_logged_then_one_summary_per_interval() {
        let mut throttle = LogThrottle::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(throttle.note("bad", t0), Noted::Log { last: false });
        assert_eq!(throttle.note("bad", t0), Noted::Log { last: true });
        for _ in 0..1000 {
            assert_eq!(
                throttle.note("bad", t0 + Duration::from_secs(1)),
                Noted::Counted
            );
        }
        assert_eq!(
            throttle.note("bad", t0 + Duration::from_secs(61)),
            Noted::Summary { suppressed: 1001 }
        );
        assert_eq!(
            throttle.note("bad", t0 + Duration::from_secs(62)),
            Noted::Counted
        );
        assert_eq!(throttle.pending().collect::<Vec<_>>(), vec![("bad", 1)]);
    }

    #[test]
    fn each_reason_has_its_own_first_lines() {
        let mut throttle = LogThrottle::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(throttle.note("a", t0), Noted::Log { last: true });
        assert_eq!(throttle.note("a", t0), Noted::Counted);
        assert_eq!(throttle.note("b", t0), Noted::Log { last: true });
    }

    #[test]
    fn a_flood_writes_a_bounded_number_of_lines() {
        let mut throttle = LogThrottle::default();
        let t0 = Instant::now();
        let lines = (0..20_000u64)
            .map(|i| throttle.note("flood", t0 + Duration::from_millis(i)))
            .filter(|n| *n != Noted::Counted)
            .count();
        // 20 s of one every millisecond: five lines and no summary yet.
        assert_eq!(lines, 5);
    }
}
