//! Exponential back-off with jitter, shared by every adapter that reconnects.

use std::time::Duration;

use rand::Rng;

/// Exponential back-off with "full jitter" between a floor and a ceiling.
///
/// Jitter matters on a gateway: after a CEM restart every resource of every gateway
/// redials, and without it they all arrive in the same millisecond.
#[derive(Debug, Clone)]
pub struct Backoff {
    floor: Duration,
    ceiling: Duration,
    attempt: u32,
}

impl Backoff {
    /// A back-off from `floor` doubling up to `ceiling`.
    pub fn new(floor: Duration, ceiling: Duration) -> Self {
        Self {
            floor,
            ceiling: ceiling.max(floor),
            attempt: 0,
        }
    }

    /// The S2 default: one second, doubling to a minute.
    pub fn s2_default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// The upper bound of the next delay, without jitter.
    pub fn ceiling_for_attempt(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX);
        self.floor.saturating_mul(factor).min(self.ceiling)
    }

    /// The next delay: uniformly between half the bound and the bound, then doubles
    /// the bound.
    pub fn next_delay(&mut self) -> Duration {
        let bound = self.ceiling_for_attempt();
        self.attempt = self.attempt.saturating_add(1);
        let half = bound / 2;
        let spread = bound.saturating_sub(half).as_millis() as u64;
        let extra = if spread == 0 {
            0
        } else {
            rand::rng().random_range(0..=spread)
        };
        half + Duration::from_millis(extra)
    }

    /// Forget the failures: the next delay starts from the floor again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays have been handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_ceiling_and_stay_within_bounds() {
        let mut backoff = Backoff::s2_default();
        let mut bounds = Vec::new();
        for _ in 0..10 {
            let bound = backoff.ceiling_for_attempt();
            let delay = backoff.next_delay();
            assert!(
                delay <= bound && delay >= bound / 2,
                "{delay:?} vs {bound:?}"
            );
            bounds.push(bound.as_secs());
        }
        assert_eq!(bounds, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        backoff.reset();
        assert_eq!(backoff.ceiling_for_attempt(), Duration::from_secs(1));
    }
}
