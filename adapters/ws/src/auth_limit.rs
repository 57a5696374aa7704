//! [`AuthFailures`]: failed bearer checks per peer address, and when a peer has had
//! enough of them.
//!
//! After `max` failures within a minute of its first, an address gets 429 Too Many
//! Requests for the rest of that minute, before its token is even compared: guessing
//! tokens costs a minute per `max` guesses, and a flood of bad attempts writes one log
//! line per minute, not one per attempt.
//!
//! Sans-IO: every call takes `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The window failures are counted in.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at most. Beyond, a new address is not tracked (its tokens are still
/// compared, and refused with 401): many addresses must not grow the table without bound.
const MAX_PEERS: usize = 4096;

/// What to do with an upgrade request from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Check its token.
    Open,
    /// Refuse it with 429 without looking at the token.
    Shut {
        /// Until the window ends.
        retry_after: Duration,
        /// The first refusal of this window: worth the window's one log line.
        first: bool,
    },
}

/// One address's failures in its current window.
#[derive(Debug)]
struct Window {
    opened: Instant,
    failures: u32,
    /// Whether the window's 429 line was written.
    said: bool,
}

/// Failed bearer checks per address.
#[derive(Debug)]
pub(crate) struct AuthFailures {
    max: u32,
    peers: HashMap<IpAddr, Window>,
}

impl AuthFailures {
    /// At most `max` failed checks per address per minute.
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            peers: HashMap::new(),
        }
    }

    /// Whether `peer`'s token is to be checked at all.
    pub(crate) fn gate(&mut self, peer: IpAddr, now: Instant) -> Gate {
        let Some(window) = self.peers.get_mut(&peer) else {
            return Gate::Open;
        };
        let ends = window.opened + WINDOW;
        if now >= ends {
            self.peers.remove(&peer);
            return Gate::Open;
        }
        if window.failures < self.max {
            return Gate::Open;
        }
        Gate::Shut {
            retry_after: ends - now,
            first: !std::mem::replace(&mut window.said, true),
        }
    }

    /// `peer` presented a missing or wrong token.
    pub(crate) fn failed(&mut self, peer: IpAddr, now: Instant) {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            self.peers.retain(|_, w| now < w.opened + WINDOW);
            if self.peers.len() >= MAX_PEERS {
                return;
            }
        }
        let window = self.peers.entry(peer).or_insert(Window {
            opened: now,
            failures: 0,
            said: false,
        });
        if now >= window.opened + WINDOW {
            *window = Window {
                opened: now,
                failures: 0,
                said: false,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn after_max_failures_the_peer_is_shut_out_for_the_rest_of_the_minute() {
        let mut auth = AuthFailures::new(3);
        let t0 = Instant::now();
        for n in 0..3 {
            assert_eq!(auth.gate(ip(1), t0), Gate::Open, "attempt {n}");
            auth.failed(ip(1), t0);
        }
        let at = t0 + Duration::from_secs(20);
        assert_eq!(
            auth.gate(ip(1), at),
            Gate::Shut {
                retry_after: Duration::from_secs(40),
                first: true
            }
        );
        assert_eq!(
            auth.gate(ip(1), at),
            Gate::Shut {
                retry_after: Duration::from_secs(40),
                first: false
            },
            "one log line per window"
        );
        assert_eq!(
            auth.gate(ip(1), t0 + WINDOW),
            Gate::Open,
            "the minute is over"
        );
    }

    #[test]
    fn other_peers_are_not_affected() {
        let mut auth = AuthFailures::new(1);
        let t0 = Instant::now();
        auth.failed(ip(1), t0);
        assert!(matches!(auth.gate(ip(1), t0), Gate::Shut { .. }));
        assert_eq!(auth.gate(ip(2), t0), Gate::Open);
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_never_shut_the_gate() {
        let mut auth = AuthFailures::new(2);
        let t0 = Instant::now();
        for n in 0..10u32 {
            let now = t0 + Duration::from_secs(40) * n;
            assert_eq!(auth.gate(ip(1), now), Gate::Open, "attempt {n}");
            auth.failed(ip(1), now);
        }
    }

    #[test]
    fn a_new_window_is_said_again() {
        let mut auth = AuthFailures::new(1);
        let t0 = Instant::now();
        auth.failed(ip(1), t0);
        assert!(matches!(
            auth.gate(ip(1), t0),
            Gate::Shut { first: true, .. }
        ));
        let t1 = t0 + WINDOW;
        assert_eq!(auth.gate(ip(1), t1), Gate::Open);
        auth.failed(ip(1), t1);
        assert!(matches!(
            auth.gate(ip(1), t1),
            Gate::Shut { first: true, .. }
        ));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut auth = AuthFailures::new(1);
        let t0 = Instant::now();
        for n in 0..(MAX_PEERS as u32 + 10) {
            auth.failed(IpAddr::from(n.to_be_bytes()), t0);
        }
        assert_eq!(auth.peers.len(), MAX_PEERS);
        // Once the old windows are over, new peers are tracked again.
        auth.failed(ip(1), t0 + WINDOW);
        assert!(matches!(auth.gate(ip(1), t0 + WINDOW), Gate::Shut { .. }));
        assert_eq!(auth.peers.len(), 1);
    }
}
