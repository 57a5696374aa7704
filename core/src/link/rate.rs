//! [`FrameRate`]: the most frames per second one session's peer may send.
//!
//! A token bucket: a peer may send a burst of one second's worth of frames at once and,
//! after that, on average the limit per second. Frames beyond it are refused before the
//! edge parses them (so a flood costs a peek at two fields, not a full decode and the
//! semantic rules) and are answered TEMPORARY_ERROR: S2's word for "not processed now,
//! send it again later". The session stays up: a CEM that bursts its instructions once
//! keeps its session and only re-sends what was refused, where closing would cost both
//! sides a new handshake and every device a trip through its fail-safe.
//!
//! Sans-IO: [`FrameRate::admit`] takes `now`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// The burst a session may send at once: one second's worth of its limit.
const BURST: Duration = Duration::from_secs(1);

/// The frame-rate limit of one session.
#[derive(Debug, Clone)]
pub struct FrameRate {
    limit: NonZeroU32,
    /// What one frame costs: a second divided by the limit.
    cost: Duration,
    /// Time saved up, at most [`BURST`]; a frame passes when it covers `cost`.
    credit: Duration,
    /// When `credit` was last brought up to date; `None` before the first frame.
    at: Option<Instant>,
}

impl FrameRate {
    /// At most `limit` frames per second, with a burst of `limit` frames.
    pub fn per_second(limit: NonZeroU32) -> Self {
        Self {
            limit,
            cost: BURST / limit.get(),
            credit: BURST,
            at: None,
        }
    }

    /// The limit, in frames per second.
    pub fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    /// Whether a frame arriving at `now` is within the limit; it is counted if it is.
    /// Refused frames cost nothing, so a peer that floods still gets the limit through.
    pub fn admit(&mut self, now: Instant) -> bool {
        let now = match self.at {
            Some(at) => {
                self.credit = (self.credit + now.saturating_duration_since(at)).min(BURST);
                // Never backwards: an earlier `now` must not make the next one earn twice.
                at.max(now)
            }
            None => now,
        };
        self.at = Some(now);
        match self.credit.checked_sub(self.cost) {
            Some(left) => {
                self.credit = left;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(limit: u32) -> FrameRate {
        FrameRate::per_second(NonZeroU32::new(limit).unwrap())
    }

    #[test]
    fn a_burst_of_the_limit_passes_and_the_next_frame_is_refused() {
        let mut rate = rate(10);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(rate.admit(t0), "frame {i} of the burst");
        }
        assert!(!rate.admit(t0), "the eleventh frame in the same instant");
    }

    #[test]
    fn credit_comes_back_at_the_limit() {
        let mut rate = rate(10);
        let t0 = Instant::now();
        while rate.admit(t0) {}
        assert!(!rate.admit(t0 + Duration::from_millis(99)));
        assert!(
            rate.admit(t0 + Duration::from_millis(100)),
            "one frame per 100 ms"
        );
        assert!(!rate.admit(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn a_steady_peer_at_the_limit_is_never_refused() {
        let mut rate = rate(50);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            assert!(rate.admit(t0 + Duration::from_millis(20) * i), "frame {i}");
        }
    }

    #[test]
    fn a_flooding_peer_gets_the_limit_through_and_no_more() {
        let mut rate = rate(20);
        let t0 = Instant::now();
        // 200 frames per second for 5 seconds.
        let passed = (0..1000u32)
            .filter(|i| rate.admit(t0 + Duration::from_millis(5) * *i))
            .count();
        // The burst, then 20 a second for the remaining ~5 s.
        assert!((115..=121).contains(&passed), "{passed} passed");
    }

    #[test]
    fn idle_time_saves_up_at_most_one_burst() {
        let mut rate = rate(5);
        let t0 = Instant::now();
        assert!(rate.admit(t0));
        let later = t0 + Duration::from_secs(3600);
        let passed = (0..20).filter(|_| rate.admit(later)).count();
        assert_eq!(passed, 5);
    }

    #[test]
    fn a_clock_that_goes_nowhere_or_back_earns_nothing() {
        let mut rate = rate(1);
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(rate.admit(t0));
        assert!(!rate.admit(t0 - Duration::from_secs(5)));
        assert!(!rate.admit(t0));
    }
}
