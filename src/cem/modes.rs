//! What the mode-based control types (OMBC, FRBC, DDBC) share: the RM's timers, the
//! transition rule they enforce, and the mode the RM last reported.

use std::collections::HashMap;

use s2gw_core::s2::{Id, Timer, Timestamp, Transition};

/// When each timer finishes, as the RM's TimerStatus messages said.
#[derive(Debug, Default, Clone)]
pub(super) struct TimerBook {
    finished_at: HashMap<Id, Timestamp>,
}

impl TimerBook {
    /// A TimerStatus: `timer` finishes at `finished_at` (in the past: it is not running).
    pub(super) fn report(&mut self, timer: Id, finished_at: Timestamp) {
        self.finished_at.insert(timer, finished_at);
    }

    /// A TimerStatus that cannot shorten what is known already. For timers that only
    /// ever start (never stop early) a shorter report is stale: the RM repeats its timers
    /// at every selection, and a change the device made while another control type was
    /// selected may have restarted the device's own protection since, unseen by the RM
    /// but assumed here (see [`ModeTracker::reported`]).
    pub(super) fn report_at_least(&mut self, timer: Id, finished_at: Timestamp) {
        let known = self.finished_at.entry(timer).or_insert(finished_at);
        *known = (*known).max(finished_at);
    }

    /// When the last running blocking timer of `transition` finishes; `None` when none
    /// was ever reported.
    pub(super) fn free_at(&self, transition: &Transition) -> Option<Timestamp> {
        transition
            .blocking_timers
            .iter()
            .filter_map(|timer| self.finished_at.get(timer))
            .max()
            .copied()
    }

    /// Whether `transition` may be taken at `now`: S2 forbids it while any of its
    /// blocking timers has not finished, and the RM rejects an instruction that tries.
    pub(super) fn allows(&self, transition: &Transition, now: Timestamp) -> bool {
        self.free_at(transition).is_none_or(|at| at <= now)
    }

    /// Count `transition` as taken at `at` although no TimerStatus said so: its start
    /// timers run from then for their described durations. Never shortens a timer.
    fn assume_started(&mut self, transition: &Transition, timers: &[Timer], at: Timestamp) {
        for id in &transition.start_timers {
            let Some(until) = timers
                .iter()
                .find(|t| t.id == *id)
                .and_then(|t| at.checked_add(t.duration))
            else {
                continue;
            };
            let finished_at = self.finished_at.entry(*id).or_insert(until);
            *finished_at = (*finished_at).max(until);
        }
    }
}

/// The described transition `from` → `to`, if it may be used outside an abnormal
/// condition.
pub(super) fn transition(transitions: &[Transition], from: Id, to: Id) -> Option<&Transition> {
    transitions
        .iter()
        .find(|t| t.from == from && t.to == to && !t.abnormal_condition_only)
}

/// One actuator's mode as the CEM knows it (OMBC's whole system counts as one actuator).
#[derive(Debug, Default, Clone)]
pub(super) struct ModeTracker {
    /// The mode the RM reported for the present selection; `None` until it has.
    active: Option<Id>,
    /// The mode last reported in this session, kept across selections.
    last_seen: Option<Id>,
    /// The mode the instruction on its way asked for.
    asked: Option<Id>,
    /// The timers the RM reported, kept across selections: their `finished_at` are
    /// instants, and the RM keeps running them while another control type is selected.
    pub(super) timers: TimerBook,
}

impl ModeTracker {
    /// The control type was (re)selected. The RM reports its mode afresh, and the old
    /// report may be stale by then (the device went back to its default when the other
    /// control type took over), so nothing is chosen until it has.
    pub(super) fn selected(&mut self) {
        self.active = None;
        self.asked = None;
    }

    /// An instruction for `mode` was sent.
    pub(super) fn asked(&mut self, mode: Id) {
        self.asked = Some(mode);
    }

    /// The instruction on its way was not carried out.
    pub(super) fn not_done(&mut self) {
        self.asked = None;
    }

    /// The RM reports `mode` as active.
    ///
    /// A change nobody asked for (S2 lets an RM change mode on its own; here the fail-safe
    /// release between selections does) started no timer the RM told of, but the device's
    /// own protection may have restarted with it. So it counts as the described
    /// transition taken now: a later instruction waits as long as it would after that
    /// transition, which is never shorter than what the RM itself enforces.
    pub(super) fn reported(
        &mut self,
        mode: Id,
        transitions: &[Transition],
        timers: &[Timer],
        now: Timestamp,
    ) {
        if let Some(before) = self.last_seen
            && before != mode
            && self.asked != Some(mode)
            && let Some(taken) = transition(transitions, before, mode)
        {
            self.timers.assume_started(taken, timers, now);
        }
        self.active = Some(mode);
        self.last_seen = Some(mode);
        self.asked = None;
    }

    /// The mode the RM reported for the present selection; `None` until it has.
    pub(super) fn active(&self) -> Option<Id> {
        self.active
    }

    /// Whether asking for `to` at `now` is allowed: staying in the active mode always
    /// is, a move only along a described transition whose blocking timers have all
    /// finished. `false` while the active mode is unknown.
    pub(super) fn may_move(&self, to: Id, transitions: &[Transition], now: Timestamp) -> bool {
        self.active.is_some_and(|active| {
            active == to
                || transition(transitions, active, to).is_some_and(|t| self.timers.allows(t, now))
        })
    }

    /// The first of `modes` after the active one (in their order, round and round) that
    /// `usable` accepts and that a described transition leads to whose blocking timers
    /// have all finished at `now`. `None` when the active mode is unknown or every move is
    /// blocked for now: the caller asks again later.
    pub(super) fn next(
        &self,
        modes: &[Id],
        transitions: &[Transition],
        now: Timestamp,
        usable: impl Fn(Id) -> bool,
    ) -> Option<Id> {
        let active = self.active?;
        let start = modes.iter().position(|m| *m == active).map_or(0, |i| i + 1);
        (0..modes.len())
            .map(|k| modes[(start + k) % modes.len()])
            .filter(|mode| *mode != active)
            .find(|mode| {
                usable(*mode)
                    && transition(transitions, active, *mode)
                        .is_some_and(|t| self.timers.allows(t, now))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2gw_core::s2::Duration;

    fn id(n: u128) -> Id {
        Id::from_uuid(uuid::Uuid::from_u128(n))
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix(1_750_000_000 + secs, 0)
    }

    /// Three modes; every move starts and is blocked by timer 10 ("min on").
    fn system() -> (Vec<Id>, Vec<Transition>, Vec<Timer>) {
        let modes = vec![id(1), id(2), id(3)];
        let mut transitions = Vec::new();
        for from in &modes {
            for to in modes.iter().filter(|to| *to != from) {
                transitions.push(Transition {
                    start_timers: vec![id(10)],
                    blocking_timers: vec![id(10)],
                    ..Transition::simple(id(100), *from, *to)
                });
            }
        }
        let timers = vec![Timer {
            id: id(10),
            diagnostic_label: None,
            duration: Duration::from_secs(600),
        }];
        (modes, transitions, timers)
    }

    #[test]
    fn the_next_mode_waits_for_its_blocking_timers() {
        let (modes, transitions, timers) = system();
        let mut tracker = ModeTracker::default();
        assert_eq!(tracker.next(&modes, &transitions, at(0), |_| true), None);
        tracker.reported(id(1), &transitions, &timers, at(0));
        assert_eq!(
            tracker.next(&modes, &transitions, at(0), |_| true),
            Some(id(2))
        );
        assert_eq!(
            tracker.next(&modes, &transitions, at(0), |m| m != id(2)),
            Some(id(3))
        );
        tracker.timers.report(id(10), at(600));
        assert_eq!(tracker.next(&modes, &transitions, at(599), |_| true), None);
        assert_eq!(
            tracker.next(&modes, &transitions, at(600), |_| true),
            Some(id(2))
        );
    }

    #[test]
    fn an_unasked_change_counts_as_the_transition_taken_then() {
        let (modes, transitions, timers) = system();
        let mut tracker = ModeTracker::default();
        tracker.reported(id(1), &transitions, &timers, at(0));
        // Asked and done: the RM's own TimerStatus is what counts.
        tracker.asked(id(2));
        tracker.timers.report(id(10), at(100));
        tracker.reported(id(2), &transitions, &timers, at(1));
        tracker.selected();
        // Nothing is chosen before the RM reports its mode for the new selection.
        assert_eq!(tracker.next(&modes, &transitions, at(700), |_| true), None);
        // Back in mode 1 after a reselection without being asked: 600 s from now.
        tracker.reported(id(1), &transitions, &timers, at(50));
        assert_eq!(tracker.next(&modes, &transitions, at(100), |_| true), None);
        assert_eq!(
            tracker.next(&modes, &transitions, at(650), |_| true),
            Some(id(2))
        );
    }
}
