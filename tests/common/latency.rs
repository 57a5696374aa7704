//! The benches' latency figures: percentiles, milliseconds and how a target is called.
//! Reported, never asserted: a slow machine must not fail a run. Also used by
//! `adapters/mqtt/benches/roundtrip.rs` (through `#[path]`), so it needs nothing else
//! from this harness.

use std::time::Duration;

/// The `p` quantile (0..=1) of latencies sorted ascending; `sorted` must not be empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Print p50 and p99 of `latencies` after `label` (padded to `width`) and return them.
pub fn report(label: &str, width: usize, mut latencies: Vec<Duration>) -> (Duration, Duration) {
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "{label:<width$} p50 {:>8.3} ms   p99 {:>8.3} ms",
        ms(p50),
        ms(p99)
    );
    (p50, p99)
}

/// A duration in milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How a bench names a target's outcome.
pub fn verdict(met: bool) -> &'static str {
    if met { "target met" } else { "target NOT met" }
}
