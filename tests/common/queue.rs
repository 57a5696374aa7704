//! Waiting in the end-to-end tests: a queue awaited by predicate, and the guard that turns
//! a hang into a failure. Nothing here sleeps to let something happen.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;

/// The usual failure guard for one awaited step.
pub const GUARD: Duration = Duration::from_secs(20);

/// Await `future`, failing the test with `what` if it takes longer than `timeout`.
pub async fn within<F: std::future::Future>(what: &str, timeout: Duration, future: F) -> F::Output {
    match tokio::time::timeout(timeout, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// A queue of items awaited by predicate. Items that do not match are kept (in order) for
/// later waits, so the order in which a test asks does not have to be the wire order.
pub struct Queue<T> {
    // The MQTT CEM's task selects on its peer's channel directly.
    pub(super) rx: mpsc::UnboundedReceiver<T>,
    backlog: VecDeque<T>,
}

impl<T> Queue<T> {
    /// A queue over a channel.
    pub fn new(rx: mpsc::UnboundedReceiver<T>) -> Self {
        Queue {
            rx,
            backlog: VecDeque::new(),
        }
    }
}

impl<T: std::fmt::Debug + Clone> Queue<T> {
    /// The first item (kept or new) that satisfies `pred`, removed from the queue.
    pub async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&T) -> bool,
        timeout: Duration,
    ) -> T {
        self.wait_map(what, |item| pred(item).then(|| item.clone()), timeout)
            .await
    }

    /// The first item for which `f` gives `Some`, removed from the queue; `f`'s answer.
    pub async fn wait_map<R>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&T) -> Option<R>,
        timeout: Duration,
    ) -> R {
        if let Some(i) = self.backlog.iter().position(|item| f(item).is_some()) {
            let item = self.backlog.remove(i).unwrap();
            return f(&item).unwrap();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(item)) => {
                    if let Some(r) = f(&item) {
                        return r;
                    }
                    self.backlog.push_back(item);
                }
                Ok(None) => panic!(
                    "the connection ended while waiting for {what}; unmatched: {}",
                    self.describe_backlog()
                ),
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; unmatched: {}",
                    self.describe_backlog()
                ),
            }
        }
    }

    /// The oldest item received and not yet taken, without waiting.
    pub fn try_next(&mut self) -> Option<T> {
        self.backlog.pop_front().or_else(|| self.rx.try_recv().ok())
    }

    /// Forget everything received so far: later waits see only what comes next.
    pub fn clear(&mut self) {
        self.backlog.clear();
        while self.rx.try_recv().is_ok() {}
    }

    fn describe_backlog(&self) -> String {
        let n = self.backlog.len();
        let tail: Vec<String> = self
            .backlog
            .iter()
            .skip(n.saturating_sub(12))
            .map(|item| {
                let text = format!("{item:?}");
                text.chars().take(200).collect()
            })
            .collect();
        format!("{n} items, the last: {tail:#?}")
    }
}
