//! [`LogWindow`]: one log line per window for an event that may come in floods.
//!
//! Sans-IO: the caller asks at each event whether to write, and writes how many events
//! went unwritten since its last line.

use std::time::{Duration, Instant};

/// One line per `window`; the events in between are counted.
#[derive(Debug)]
pub(crate) struct LogWindow {
    window: Duration,
    last: Option<Instant>,
    unsaid: u64,
}

impl LogWindow {
    /// At most one line per `window`.
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            last: None,
            unsaid: 0,
        }
    }

    /// One event at `now`: `Some(n)` to write a line for it, `n` the events since the
    /// last line that got none; `None` to stay quiet.
    pub(crate) fn note(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.window);
        if !due {
            self.unsaid += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unsaid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_one_line_per_window_counting_the_rest() {
        let minute = Duration::from_secs(60);
        let mut log = LogWindow::new(minute);
        let t0 = Instant::now();
        assert_eq!(log.note(t0), Some(0));
        for s in 1..60 {
            assert_eq!(log.note(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(log.note(t0 + minute), Some(59));
        assert_eq!(log.note(t0 + minute), None);
    }
}
