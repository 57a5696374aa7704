//! [`Admission`]: how many sockets the server holds at once, and how many of them one
//! peer address may hold while still in its handshake.
//!
//! Every accepted socket takes a [`Ticket`] before anything is read from it, and keeps it
//! through TLS, the HTTP upgrade and its whole session; dropping the ticket gives the
//! place back, on every path out. Beyond `max` tickets a new socket is closed at once,
//! unread: answering it (TLS, an HTTP 503) would cost what the limit is there to save.
//!
//! A slowloris peer (many sockets, each sending its handshake a byte at a time) is held
//! off twice: the handshake timeout takes each socket back, and one address may hold at
//! most a quarter of the places while in handshake, so established sessions and other
//! peers keep the rest. Once its request has been read, a socket no longer counts
//! against its address: whatever the answer (an upgrade or a refusal), the peer is past
//! the slow part, and one CEM host with many resources may hold as many sessions as it
//! has slots. The share is given back before the answer is written, so a peer that has
//! read its answer and dials again always finds its share free.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a socket was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turned {
    /// `max` sockets are held already.
    Full,
    /// This address already has its share of sockets in handshake.
    PeerBusy,
}

/// The count of held sockets, shared by the accept loop and every ticket.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    inner: Arc<Mutex<Counts>>,
    max: usize,
    per_peer: usize,
}

#[derive(Debug, Default)]
struct Counts {
    held: usize,
    /// Sockets in handshake, per address; no entry at zero.
    in_handshake: HashMap<IpAddr, usize>,
}

impl Admission {
    /// At most `max` sockets; one address at most a quarter of them (at least one) while
    /// in handshake.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            inner: Arc::default(),
            max,
            per_peer: (max / 4).max(1),
        }
    }

    /// The most sockets one address may hold in handshake.
    pub(crate) fn per_peer(&self) -> usize {
        self.per_peer
    }

    /// A place for a socket from `peer`, in handshake.
    pub(crate) fn admit(&self, peer: IpAddr) -> Result<Ticket, Turned> {
        let mut counts = self.lock();
        if counts.held >= self.max {
            return Err(Turned::Full);
        }
        let pending = counts.in_handshake.entry(peer).or_default();
        if *pending >= self.per_peer {
            return Err(Turned::PeerBusy);
        }
        *pending += 1;
        counts.held += 1;
        Ok(Ticket {
            admission: self.clone(),
            peer,
            in_handshake: true,
        })
    }

    /// Sockets held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().held
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts are plain numbers, consistent after every statement: a panic
        // elsewhere leaves nothing half-done to recover from.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Counts {
    fn handshake_over(&mut self, peer: IpAddr) {
        if let Some(pending) = self.in_handshake.get_mut(&peer) {
            *pending = pending.saturating_sub(1);
            if *pending == 0 {
                self.in_handshake.remove(&peer);
            }
        }
    }
}

/// One held socket's place.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Admission,
    peer: IpAddr,
    in_handshake: bool,
}

impl Ticket {
    /// The request is read: the socket no longer counts against its address's share.
    pub(crate) fn request_read(&mut self) {
        if std::mem::take(&mut self.in_handshake) {
            self.admission.lock().handshake_over(self.peer);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admission.lock();
        counts.held = counts.held.saturating_sub(1);
        if self.in_handshake {
            counts.handshake_over(self.peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn beyond_max_sockets_are_turned_away_until_one_is_dropped() {
        let admission = Admission::new(4);
        let mut tickets: Vec<Ticket> = (1..=4).map(|n| admission.admit(ip(n)).unwrap()).collect();
        assert_eq!(admission.admit(ip(9)).unwrap_err(), Turned::Full);
        tickets.pop();
        assert!(admission.admit(ip(9)).is_ok());
        drop(tickets);
        assert_eq!(admission.held(), 0);
    }

    #[test]
    fn one_address_holds_at_most_a_quarter_in_handshake() {
        let admission = Admission::new(8);
        assert_eq!(admission.per_peer(), 2);
        let mut first = admission.admit(ip(1)).unwrap();
        let _second = admission.admit(ip(1)).unwrap();
        assert_eq!(admission.admit(ip(1)).unwrap_err(), Turned::PeerBusy);
        assert!(admission.admit(ip(2)).is_ok(), "other peers still get in");
        first.request_read();
        let _third = admission
            .admit(ip(1))
            .expect("a socket whose request was read frees its share");
        assert_eq!(admission.held(), 3, "the dropped ip(2) ticket is gone");
    }

    #[test]
    fn a_tiny_limit_still_lets_every_address_in_once() {
        let admission = Admission::new(1);
        assert_eq!(admission.per_peer(), 1);
        let ticket = admission.admit(ip(1)).unwrap();
        assert_eq!(admission.admit(ip(2)).unwrap_err(), Turned::Full);
        drop(ticket);
        assert!(admission.admit(ip(2)).is_ok());
    }

    #[test]
    fn sessions_past_their_request_do_not_count_against_their_address() {
        let admission = Admission::new(8);
        let sessions: Vec<Ticket> = (0..6)
            .map(|_| {
                let mut ticket = admission.admit(ip(1)).unwrap();
                ticket.request_read();
                ticket
            })
            .collect();
        assert_eq!(admission.held(), 6);
        drop(sessions);
        assert_eq!(admission.held(), 0);
        assert!(admission.inner.lock().unwrap().in_handshake.is_empty());
    }
}
