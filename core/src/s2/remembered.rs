//! How much of a session's identifiers the edge remembers, and how compactly.
//!
//! s2-kit's registry keeps each kind of identifier in a list of up to
//! [`Registry::MAX_TRACKED`] (4,096) 65-byte ids, and a session that is instructed every few
//! seconds fills its instruction lists within a day: about 1.3 MB a session, twice that in
//! list capacity, which a gateway with hundreds of sessions cannot carry. The edge judges
//! with the same rules but remembers less: what can still be referred to with effect (every
//! instruction not yet finished) in full, and of the rest only a recent window. Past a
//! window a rule that only warns (a repeated message id, a regressed status, revoking an
//! unknown object) may stay silent or warn once too often; none of them refuses a message.
//! What the lists then hold stays under 40 KB a session, however long it runs (a test
//! counts their capacity after a thousand instructions).

use std::hash::{DefaultHasher, Hash, Hasher};

use s2_kit::session::core::Registry;

use super::{Id, Message};

/// The message ids said on a session (both ways), for the duplicate-id rule, which only
/// warns.
///
/// A ring of 64-bit fingerprints: 4 KiB a session, where a set and a queue of whole ids
/// up to s2-kit's 4,096 took about 800 KB. Two different ids share a fingerprint with odds of about
/// one in 10^16 per message, and then cost a warning, never a refusal.
#[derive(Debug, Default)]
pub(super) struct SeenIds {
    fingerprints: Vec<u64>,
    /// Where the next fingerprint goes once the ring is full.
    next: usize,
}

impl SeenIds {
    /// How many of the latest ids are remembered: minutes of a busy session's traffic,
    /// ample for a repeat, which in practice is a resend of the message just sent or an
    /// encoder with one fixed id.
    pub(super) const KEPT: usize = 512;

    pub(super) fn contains(&self, id: &Id) -> bool {
        let wanted = fingerprint(id);
        // No early exit, so the scan is one vectorised pass over 4 KiB.
        self.fingerprints
            .iter()
            .fold(false, |found, &kept| found | (kept == wanted))
    }

    pub(super) fn insert(&mut self, id: Id) {
        if self.contains(&id) {
            return;
        }
        let print = fingerprint(&id);
        if self.fingerprints.len() < Self::KEPT {
            self.fingerprints.push(print);
        } else {
            self.fingerprints[self.next] = print;
            self.next = (self.next + 1) % Self::KEPT;
        }
    }
}

fn fingerprint(id: &Id) -> u64 {
    // SipHash with fixed keys: the same fingerprint in every process, so a test's
    // sequence behaves the same every run.
    let mut hasher = DefaultHasher::new();
    id.as_str().hash(&mut hasher);
    hasher.finish()
}

/// Finished instructions remembered beyond those still in progress. Only a late
/// status for one older than these (a peer's mistake) is answered differently: refused as
/// an unknown instruction where s2-kit would have warned of a regressed status.
pub(super) const FINISHED_INSTRUCTIONS_KEPT: usize = 32;

/// Revokable objects remembered; revoking an older one warns that it is unknown
/// (`S2-REV-002`, a warning) and still passes.
pub(super) const PUBLISHED_KEPT: usize = 128;

/// Instruction message ids remembered, only to explain an `instruction_id` that echoes
/// one (the commonest mistake, made on a peer's first instruction).
pub(super) const ECHOES_KEPT: usize = 32;

/// Keeps the registry's identifier lists to what the edge remembers.
#[derive(Debug, Default)]
pub(super) struct Windows {
    /// Terminal statuses recorded since finished instructions were last counted: at
    /// least as many as have finished since (a repeated status counts twice).
    finished: usize,
}

impl Windows {
    /// Trim the lists after `message` was recorded. Each list is left one short of its
    /// bound, so the next record's push fits the capacity the list already has.
    pub(super) fn after_record(&mut self, message: &Message, registry: &mut Registry) {
        keep_newest(&mut registry.published, PUBLISHED_KEPT);
        keep_newest(&mut registry.instruction_messages, ECHOES_KEPT);
        if let Message::InstructionStatusUpdate(update) = message
            && update.status_type.is_terminal()
        {
            self.finished += 1;
            // In batches, so the scan below runs once per that many instructions.
            if self.finished >= 2 * FINISHED_INSTRUCTIONS_KEPT {
                self.finished = forget_finished_instructions(registry);
            }
        }
    }
}

fn keep_newest<T>(list: &mut Vec<T>, kept: usize) {
    let room = kept.saturating_sub(1);
    if list.len() > room {
        list.drain(..list.len() - room);
    }
}

/// Forget the oldest finished instructions, with their statuses, beyond
/// [`FINISHED_INSTRUCTIONS_KEPT`]; how many finished ones are left.
fn forget_finished_instructions(registry: &mut Registry) -> usize {
    let finished: Vec<Id> = (registry.instructions.iter())
        .filter(|id| {
            (registry.instruction_statuses.iter())
                .any(|(instruction, status)| instruction == *id && status.is_terminal())
        })
        .copied()
        .collect();
    let excess = finished.len().saturating_sub(FINISHED_INSTRUCTIONS_KEPT);
    let forgotten = &finished[..excess];
    registry.instructions.retain(|id| !forgotten.contains(id));
    (registry.instruction_statuses).retain(|(instruction, _)| !forgotten.contains(instruction));
    finished.len() - excess
}
