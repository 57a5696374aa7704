//! [`RefusalLog`]: which refusals get a log line of their own and when a summary is due.
//!
//! A peer that sends nothing but bad frames must not turn the gateway's log into a copy
//! of its traffic. The first few refusals of a session are worth a line each (they name
//! the problem); after that only counts are kept, written at most once per interval and
//! once more when the session ends. Every refusal still reaches the taps as
//! `BusEvent::Rejected`, so metrics see them all.
//!
//! Pure bookkeeping: it decides, the caller writes the lines.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::s2::ReceptionStatusValues;

/// Refusals of a session logged one by one before only counts are kept.
pub const DEFAULT_INDIVIDUAL: u64 = 5;

/// The shortest time between two summary lines of one session.
pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Distinct rule ids counted by name in one summary; more fold into
/// [`Summary::other_rules`], so a flood cannot grow the tally without bound.
const MAX_RULES: usize = 32;

/// What [`RefusalLog::record`] decided about one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// Write a line for this refusal. `last` when it is the last one the session gets
    /// before only counts are kept.
    Individually {
        /// No further refusal of this session gets a line of its own.
        last: bool,
    },
    /// Counted for the next summary.
    Counted,
}

/// Refusals counted since the last summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// How many.
    pub refused: u64,
    /// How many per ReceptionStatus sent (or owed, for a refused ReceptionStatus).
    pub by_status: BTreeMap<ReceptionStatusValues, u64>,
    /// How many per s2-kit rule id named at the start of the diagnostic.
    pub by_rule: BTreeMap<String, u64>,
    /// How many named no rule (unreadable frames, schema failures), or a rule beyond the
    /// first few distinct ones.
    pub other_rules: u64,
}

impl Summary {
    fn add(&mut self, status: ReceptionStatusValues, rule: Option<&str>) {
        self.refused += 1;
        *self.by_status.entry(status).or_default() += 1;
        match rule {
            Some(rule) if self.by_rule.contains_key(rule) || self.by_rule.len() < MAX_RULES => {
                *self.by_rule.entry(rule.to_string()).or_default() += 1;
            }
            _ => self.other_rules += 1,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(status, n)| format!("{status:?} {n}"))
            .collect();
        write!(f, "{}", statuses.join(", "))?;
        let mut rules: Vec<String> = self
            .by_rule
            .iter()
            .map(|(rule, n)| format!("{rule} {n}"))
            .collect();
        if self.other_rules > 0 {
            rules.push(format!("no rule {}", self.other_rules));
        }
        write!(f, "; {}", rules.join(", "))
    }
}

/// The refusal log throttle of one session.
#[derive(Debug)]
pub struct RefusalLog {
    individual: u64,
    interval: Duration,
    /// Refusals recorded in this session.
    seen: u64,
    pending: Summary,
    /// No summary before this; set once counting starts.
    not_before: Option<Instant>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self::new(DEFAULT_INDIVIDUAL, DEFAULT_SUMMARY_INTERVAL)
    }
}

impl RefusalLog {
    /// A throttle that logs the first `individual` refusals one by one and then a summary
    /// at most every `interval`.
    pub fn new(individual: u64, interval: Duration) -> Self {
        Self {
            individual,
            interval,
            seen: 0,
            pending: Summary::default(),
            not_before: None,
        }
    }

    /// Note one refusal at `now`: `rule` is the s2-kit rule id its diagnostic names, if any
    /// (see [`rule_of`]).
    pub fn record(
        &mut self,
        status: ReceptionStatusValues,
        rule: Option<&str>,
        now: Instant,
    ) -> Logged {
        self.seen += 1;
        if self.seen <= self.individual {
            return Logged::Individually {
                last: self.seen == self.individual,
            };
        }
        self.pending.add(status, rule);
        // The first summary comes an interval after counting began, not at once: a burst
        // that ends quickly gets one line at the end rather than two.
        self.not_before.get_or_insert(now + self.interval);
        Logged::Counted
    }

    /// When the next summary may be written, while there are counts to write.
    pub fn due(&self) -> Option<Instant> {
        if self.pending.refused == 0 {
            return None;
        }
        self.not_before
    }

    /// The summary, if one is due at `now`; the next one comes an interval later at the
    /// earliest.
    pub fn poll(&mut self, now: Instant) -> Option<Summary> {
        if self.due().is_none_or(|due| now < due) {
            return None;
        }
        self.not_before = Some(now + self.interval);
        Some(std::mem::take(&mut self.pending))
    }

    /// The session is over: what was counted and not yet written, if anything.
    pub fn finish(&mut self) -> Option<Summary> {
        if self.pending.refused == 0 {
            return None;
        }
        Some(std::mem::take(&mut self.pending))
    }
}

/// The s2-kit rule id a diagnostic starts with (`"S2-PEBC-006: …"`, `"S2-NUM-004 at
/// /path: …"`), if it starts with one.
pub fn rule_of(diagnostic: &str) -> Option<&str> {
    let end = diagnostic
        .find(|c: char| c == ':' || c.is_whitespace())
        .unwrap_or(diagnostic.len());
    let id = &diagnostic[..end];
    let well_formed = id.len() <= 24
        && id.strip_prefix("S2-").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-')
        });
    well_formed.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReceptionStatusValues::{InvalidContent, InvalidData, InvalidMessage};

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_refusals_are_logged_one_by_one_then_counted() {
        let mut log = RefusalLog::new(3, MINUTE);
        let t0 = Instant::now();
        let decisions: Vec<Logged> = (0..5).map(|_| log.record(InvalidData, None, t0)).collect();
        assert_eq!(
            decisions,
            [
                Logged::Individually { last: false },
                Logged::Individually { last: false },
                Logged::Individually { last: true },
                Logged::Counted,
                Logged::Counted,
            ]
        );
        assert_eq!(log.finish().map(|s| s.refused), Some(2));
    }

    #[test]
    fn a_flood_gets_at_most_one_summary_per_interval() {
        let mut log = RefusalLog::new(5, MINUTE);
        let t0 = Instant::now();
        let mut lines = 0;
        let mut summarised = 0;
        // 10 000 refusals over ten minutes, one every 60 ms.
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_millis(60) * i;
            if let Logged::Individually { .. } = log.record(InvalidData, None, now) {
                lines += 1;
            }
            if let Some(summary) = log.poll(now) {
                lines += 1;
                summarised += summary.refused;
            }
        }
        let rest = log.finish().map_or(0, |s| s.refused);
        // Five individual lines, nine summaries (at 1, 2, … 9 minutes after counting
        // began), one at the end: and every refusal is counted in exactly one of them.
        assert_eq!(lines, 5 + 9);
        assert_eq!(summarised + rest + 5, 10_000);
        assert!(rest > 0);
    }

    #[test]
    fn no_summary_is_due_before_the_interval_or_without_counts() {
        let mut log = RefusalLog::new(1, MINUTE);
        let t0 = Instant::now();
        log.record(InvalidData, None, t0);
        assert_eq!(
            log.due(),
            None,
            "an individually logged refusal is not counted"
        );
        log.record(InvalidData, None, t0);
        assert_eq!(log.due(), Some(t0 + MINUTE));
        assert!(log.poll(t0 + MINUTE - Duration::from_millis(1)).is_none());
        assert!(log.poll(t0 + MINUTE).is_some());
        assert_eq!(log.due(), None, "nothing counted since");
        // A refusal long after the last summary is due at once: the interval has passed.
        let later = t0 + MINUTE * 5;
        log.record(InvalidData, None, later);
        assert!(log.poll(later).is_some());
        log.record(InvalidData, None, later);
        assert_eq!(log.due(), Some(later + MINUTE));
        assert!(log.finish().is_some());
        assert!(log.finish().is_none(), "finish takes the counts");
    }

    #[test]
    fn summaries_count_per_status_and_per_rule() {
        let mut log = RefusalLog::new(0, MINUTE);
        let t0 = Instant::now();
        log.record(InvalidContent, Some("S2-PEBC-006"), t0);
        log.record(InvalidContent, Some("S2-PEBC-006"), t0);
        log.record(InvalidContent, Some("S2-ID-002"), t0);
        log.record(InvalidData, None, t0);
        log.record(InvalidMessage, None, t0);
        let summary = log.poll(t0 + MINUTE).unwrap();
        assert_eq!(summary.refused, 5);
        assert_eq!(summary.by_status[&InvalidContent], 3);
        assert_eq!(summary.by_status[&InvalidData], 1);
        assert_eq!(summary.by_status[&InvalidMessage], 1);
        assert_eq!(summary.by_rule["S2-PEBC-006"], 2);
        assert_eq!(summary.by_rule["S2-ID-002"], 1);
        assert_eq!(summary.other_rules, 2);
        assert_eq!(
            summary.to_string(),
            "InvalidData 1, InvalidMessage 1, InvalidContent 3; S2-ID-002 1, S2-PEBC-006 2, no rule 2"
        );
    }

    #[test]
    fn the_rule_tally_is_bounded() {
        let mut log = RefusalLog::new(0, MINUTE);
        let t0 = Instant::now();
        for i in 0..100 {
            log.record(InvalidContent, Some(&format!("S2-X-{i:03}")), t0);
        }
        let summary = log.finish().unwrap();
        assert_eq!(summary.by_rule.len(), MAX_RULES);
        assert_eq!(summary.other_rules, 100 - MAX_RULES as u64);
    }

    #[test]
    fn rule_ids_are_read_from_the_start_of_the_diagnostic() {
        assert_eq!(
            rule_of("S2-PEBC-006: no such constraint"),
            Some("S2-PEBC-006")
        );
        assert_eq!(rule_of("S2-NUM-004 at /factor: 1.3"), Some("S2-NUM-004"));
        assert_eq!(rule_of("S2-ID-001"), Some("S2-ID-001"));
        assert_eq!(rule_of("frame of 5000 bytes exceeds the limit"), None);
        assert_eq!(rule_of("S2-: empty"), None);
        assert_eq!(rule_of("S2-lower-1: not an id"), None);
        assert_eq!(rule_of(""), None);
    }
}
