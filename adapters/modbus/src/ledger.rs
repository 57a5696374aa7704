//! What a bus read lately and which registers the gateway controls: what the Modbus TCP
//! proxy ([`crate::proxy`]) needs to know about a bus besides its queue.
//!
//! Reads: every read through [`crate::Bus::read_shared`] is recorded while it waits in the
//! queue and for a while after it answered. A proxy read covered by one that is still
//! queued waits for that one's answer instead of costing the device a second request; one
//! covered by an answer younger than the proxy's cache age is answered from it. The
//! gateway's own reads never use somebody else's answer: a read-back after a write must
//! be read after the write.
//!
//! Claims: while a CEM instruction is active, the device that carries it out claims the
//! registers it wrote; the proxy refuses foreign writes that touch a claimed register.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::bus::Reply;
use crate::error::ModbusError;
use crate::point::Span;

/// Answers kept at most: enough for a few devices' polls, bounded against a flood.
const MAX_READS: usize = 256;

/// Answers older than this are dropped whatever cache age somebody asks for.
const MAX_AGE: Duration = Duration::from_secs(3600);

/// A read's answer, once it came: when, and what.
type Answer = Option<(Instant, Result<Reply, ModbusError>)>;

/// One read, queued or answered.
struct ReadSlot {
    unit: u8,
    span: Span,
    answer: watch::Receiver<Answer>,
}

impl ReadSlot {
    fn covers(&self, unit: u8, span: Span) -> bool {
        self.unit == unit
            && self.span.table == span.table
            && self.span.address <= span.address
            && u32::from(span.address) + u32::from(span.len)
                <= u32::from(self.span.address) + u32::from(self.span.len)
    }

    fn answered_at(&self) -> Option<Instant> {
        self.answer.borrow().as_ref().map(|(at, _)| *at)
    }
}

/// Registers one device claimed on one unit.
#[derive(Debug, Clone)]
struct Claim {
    unit: u8,
    spans: Vec<Span>,
}

/// A bus's recent reads and current claims.
#[derive(Default)]
pub(crate) struct Ledger {
    reads: Mutex<Vec<Arc<ReadSlot>>>,
    claims: Mutex<HashMap<String, Claim>>,
}

/// Where a read's answer comes from.
pub(crate) enum Source {
    /// Make the request; publish its answer with the sender.
    Request(watch::Sender<Answer>),
    /// Another read covers it: its answer, once there.
    Joined(watch::Receiver<Answer>, Span),
}

impl Ledger {
    /// How `span` of `unit` is to be read. `join` allows using a queued read or an answer
    /// younger than `max_age` (the proxy); without it the read is always made (and still
    /// recorded for others).
    pub(crate) fn source(&self, unit: u8, span: Span, join: bool, max_age: Duration) -> Source {
        let mut reads = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // A read whose caller gave up before the answer will never be answered.
        reads.retain(|r| match r.answered_at() {
            Some(at) => now - at < MAX_AGE,
            None => r.answer.has_changed().is_ok(),
        });
        if join {
            let usable = reads.iter().rev().find(|r| {
                r.covers(unit, span)
                    && match &*r.answer.borrow() {
                        None => true,
                        Some((at, Ok(_))) => now - *at <= max_age,
                        Some((_, Err(_))) => false,
                    }
            });
            if let Some(r) = usable {
                return Source::Joined(r.answer.clone(), r.span);
            }
        }
        let (tx, rx) = watch::channel(None);
        // An older answer this one covers is of no further use.
        reads.retain(|r| r.answered_at().is_none() || !covered_by(r, unit, span));
        if reads.len() >= MAX_READS {
            reads.remove(0);
        }
        reads.push(Arc::new(ReadSlot {
            unit,
            span,
            answer: rx,
        }));
        Source::Request(tx)
    }

    /// Sets `owner`'s claim (replacing its previous one); no spans drops it.
    pub(crate) fn claim(&self, owner: &str, unit: u8, spans: Vec<Span>) {
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if spans.is_empty() {
            claims.remove(owner);
        } else {
            claims.insert(owner.to_string(), Claim { unit, spans });
        }
    }

    /// Who claims a register of `span` on `unit`, if anybody.
    pub(crate) fn claimed(&self, unit: u8, span: Span) -> Option<String> {
        let claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        claims
            .iter()
            .find(|(_, c)| c.unit == unit && c.spans.iter().any(|s| overlaps(*s, span)))
            .map(|(owner, _)| owner.clone())
    }
}

fn covered_by(older: &ReadSlot, unit: u8, newer: Span) -> bool {
    ReadSlot {
        unit,
        span: newer,
        answer: older.answer.clone(),
    }
    .covers(older.unit, older.span)
}

fn overlaps(a: Span, b: Span) -> bool {
    let end = |s: Span| u32::from(s.address) + u32::from(s.len);
    a.table == b.table && u32::from(a.address) < end(b) && u32::from(b.address) < end(a)
}

/// The part `want` of an answer to a read of `got`.
pub(crate) fn slice(reply: &Reply, got: Span, want: Span) -> Result<Reply, ModbusError> {
    let from = usize::from(want.address - got.address);
    let to = from + usize::from(want.len);
    let short = || ModbusError::Data(format!("a shared read of {got:?} answered short"));
    match reply {
        Reply::Words(w) => w.get(from..to).map(|w| Reply::Words(w.to_vec())),
        Reply::Bits(b) => b.get(from..to).map(|b| Reply::Bits(b.to_vec())),
        Reply::Written => None,
    }
    .ok_or_else(short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Table;

    fn span(table: Table, address: u16, len: u16) -> Span {
        Span {
            table,
            address,
            len,
        }
    }

    fn answer(tx: &watch::Sender<Answer>, words: Vec<u16>) {
        tx.send_replace(Some((Instant::now(), Ok(Reply::Words(words)))));
    }

    #[tokio::test]
    async fn a_covered_read_joins_a_queued_one_and_uses_a_fresh_answer() {
        let ledger = Ledger::default();
        let big = span(Table::Holding, 100, 10);
        let small = span(Table::Holding, 102, 2);
        let Source::Request(tx) = ledger.source(1, big, false, Duration::ZERO) else {
            panic!("the first read must be made");
        };
        let Source::Joined(mut rx, got) = ledger.source(1, small, true, Duration::ZERO) else {
            panic!("a covered proxy read joins the queued one");
        };
        answer(&tx, (0..10).collect());
        rx.changed().await.unwrap();
        let (_, reply) = rx.borrow().clone().unwrap();
        assert_eq!(
            slice(&reply.unwrap(), got, small).unwrap(),
            Reply::Words(vec![2, 3])
        );
        assert!(matches!(
            ledger.source(1, small, true, Duration::from_secs(5)),
            Source::Joined(..)
        ));
        assert!(
            matches!(
                ledger.source(1, small, true, Duration::ZERO),
                Source::Request(_)
            ),
            "no cache: an answered read is not reused"
        );
        assert!(
            matches!(
                ledger.source(2, small, true, Duration::from_secs(5)),
                Source::Request(_)
            ),
            "another unit's answer is not this unit's"
        );
        assert!(
            matches!(
                ledger.source(1, small, false, Duration::from_secs(5)),
                Source::Request(_)
            ),
            "the gateway's own reads are always made"
        );
    }

    #[test]
    fn claims_cover_overlapping_spans_of_their_unit_only() {
        let ledger = Ledger::default();
        ledger.claim("pv", 1, vec![span(Table::Holding, 40, 2)]);
        assert_eq!(
            ledger.claimed(1, span(Table::Holding, 41, 5)).as_deref(),
            Some("pv")
        );
        assert_eq!(ledger.claimed(1, span(Table::Holding, 42, 5)), None);
        assert_eq!(ledger.claimed(2, span(Table::Holding, 40, 1)), None);
        assert_eq!(ledger.claimed(1, span(Table::Coil, 40, 1)), None);
        ledger.claim("pv", 1, Vec::new());
        assert_eq!(ledger.claimed(1, span(Table::Holding, 40, 1)), None);
    }
}
