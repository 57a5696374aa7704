//! The campaign runner: inputs from a seed, each judged for panics, hangs and what the
//! target itself checks, with the process's memory watched over the run.

use std::fmt::Debug;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

/// One input surface of the gateway.
pub trait Target {
    /// One input: whatever the target feeds the gateway in one go (a frame sequence, a
    /// Modbus reply script, a config text).
    type Input: Debug;

    /// Draws the next input. Everything random comes from `rng`, so a seed and an index
    /// reproduce an input exactly.
    fn generate(&mut self, rng: &mut StdRng) -> Self::Input;

    /// Feeds one input to the gateway's code. `Err` is a broken invariant (a session that
    /// ended, a frame left unanswered, a call that did not return in time).
    fn execute(&mut self, input: &Self::Input) -> Result<(), String>;

    /// What the target counted over the run (how deep the inputs went), for the report.
    fn notes(&self) -> String {
        String::new()
    }
}

/// The bounds one run holds every input to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// An input that takes longer is a hang.
    pub time_per_input: Duration,
    /// Resident memory may grow by this much after the warm-up; more is unbounded growth.
    pub memory_growth_kb: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            time_per_input: Duration::from_secs(2),
            memory_growth_kb: 64 * 1024,
        }
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    /// The target's name.
    pub target: String,
    /// Inputs executed.
    pub inputs: u64,
    /// Inputs that panicked.
    pub panics: u64,
    /// Inputs that took longer than the time bound.
    pub hangs: u64,
    /// Inputs whose invariant check failed.
    pub violations: u64,
    /// Resident memory after the warm-up, kB.
    pub rss_after_warmup_kb: u64,
    /// The highest resident memory seen, kB.
    pub peak_rss_kb: u64,
    /// Whether memory grew past the bound after the warm-up.
    pub unbounded_growth: bool,
    /// The slowest input.
    pub slowest: Duration,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The first failures, for the reader: index and what went wrong.
    pub failures: Vec<(u64, String)>,
    /// The target's own counts.
    pub notes: String,
}

impl Report {
    /// Whether the run found nothing.
    pub fn is_clean(&self) -> bool {
        self.panics == 0 && self.hangs == 0 && self.violations == 0 && !self.unbounded_growth
    }

    /// One line per figure, as the README's campaign table quotes them.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} inputs in {:.1} s ({:.0}/s), {} panics, {} hangs, {} invariant violations, \
             RSS {} kB after warm-up, peak {} kB{}, slowest input {:.1} ms{}{}",
            self.target,
            self.inputs,
            self.elapsed.as_secs_f64(),
            self.inputs as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.panics,
            self.hangs,
            self.violations,
            self.rss_after_warmup_kb,
            self.peak_rss_kb,
            if self.unbounded_growth {
                " (UNBOUNDED GROWTH)"
            } else {
                ""
            },
            self.slowest.as_secs_f64() * 1000.0,
            if self.notes.is_empty() { "" } else { "; " },
            self.notes,
        )
    }
}

/// Inputs between two progress lines on stderr.
const PROGRESS_EVERY: u64 = 50_000;

/// Panics seen by the hook, in any thread.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Failures kept in the report and written as reproducers.
const KEPT_FAILURES: usize = 20;

/// Inputs before memory is taken as the baseline: allocators and caches settle first.
fn warmup(count: u64) -> u64 {
    (count / 10).clamp(1, 10_000)
}

/// Runs inputs `first .. first + count` of `seed` through `target`.
///
/// A panic is caught and counted (the panic hook is silenced meanwhile, so a campaign of
/// a million inputs does not print a million backtraces); an input that overruns the
/// time bound is counted as a hang, and one that never returns ends the process from a
/// watchdog thread after ten times the bound, naming the input. Each failure's input is
/// written to `crash_dir` (when given) as `<target>-<seed>-<index>.txt`, with the command
/// that reproduces it.
pub fn run<T: Target>(
    name: &str,
    target: &mut T,
    seed: u64,
    first: u64,
    count: u64,
    limits: Limits,
    crash_dir: Option<PathBuf>,
) -> Report {
    let mut report = Report {
        target: name.to_string(),
        ..Report::default()
    };
    let current = Arc::new(AtomicU64::new(u64::MAX));
    let started_at = Arc::new(AtomicU64::new(0));
    let clock = Instant::now();
    spawn_watchdog(
        name,
        seed,
        &current,
        &started_at,
        clock,
        limits.time_per_input,
    );
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {
        PANICS.fetch_add(1, Ordering::SeqCst);
    }));
    let warm = warmup(count);
    for index in first..first + count {
        let mut rng = input_rng(seed, index);
        let input = target.generate(&mut rng);
        started_at.store(clock.elapsed().as_millis() as u64, Ordering::SeqCst);
        current.store(index, Ordering::SeqCst);
        let began = Instant::now();
        let panics_before = PANICS.load(Ordering::SeqCst);
        let outcome = catch_unwind(AssertUnwindSafe(|| target.execute(&input)));
        // A panic in a task the input reached (the daemon's, the engine's) is caught by
        // its runtime, but the hook saw it.
        let outcome = match outcome {
            Ok(_) if PANICS.load(Ordering::SeqCst) != panics_before => {
                Err(Box::new("a task panicked") as Box<dyn std::any::Any + Send>)
            }
            other => other,
        };
        let took = began.elapsed();
        current.store(u64::MAX, Ordering::SeqCst);
        report.inputs += 1;
        report.slowest = report.slowest.max(took);
        let failure = match outcome {
            Err(panic) => {
                report.panics += 1;
                Some(format!("panic: {}", panic_text(panic.as_ref())))
            }
            Ok(_) if took > limits.time_per_input => {
                report.hangs += 1;
                Some(format!("hang: took {took:?}"))
            }
            Ok(Err(violation)) => {
                report.violations += 1;
                Some(violation)
            }
            Ok(Ok(())) => None,
        };
        if let Some(what) = failure {
            keep_failure(
                &mut report,
                name,
                seed,
                index,
                &what,
                &input,
                crash_dir.as_ref(),
            );
        }
        watch_memory(&mut report, index - first, warm, limits);
        if (index - first + 1).is_multiple_of(PROGRESS_EVERY) {
            // A long campaign stopped early still leaves its figures.
            report.elapsed = clock.elapsed();
            eprintln!("progress: {}", report.summary());
        }
    }
    std::panic::set_hook(previous_hook);
    report.elapsed = clock.elapsed();
    report.notes = target.notes();
    report
}

/// Each input's own generator: inputs do not depend on each other, so one is replayed
/// with `--first INDEX --count 1`.
fn input_rng(seed: u64, index: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

fn keep_failure<I: Debug>(
    report: &mut Report,
    name: &str,
    seed: u64,
    index: u64,
    what: &str,
    input: &I,
    crash_dir: Option<&PathBuf>,
) {
    if report.failures.len() >= KEPT_FAILURES {
        return;
    }
    report.failures.push((index, what.to_string()));
    let Some(dir) = crash_dir else { return };
    let path = dir.join(format!("{name}-{seed}-{index}.txt"));
    let text = format!(
        "# {what}\n# reproduce: cargo run --release -p s2gw-fuzz -- {name} --seed {seed} \
         --first {index} --count 1\n{input:#?}\n"
    );
    let written = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text));
    if let Err(error) = written {
        eprintln!("cannot write {}: {error}", path.display());
    }
}

fn watch_memory(report: &mut Report, done: u64, warm: u64, limits: Limits) {
    // Reading /proc costs more than a small input: sample.
    if !done.is_multiple_of(256) && done + 1 != warm {
        return;
    }
    let rss = rss_kb();
    report.peak_rss_kb = report.peak_rss_kb.max(rss);
    if done + 1 == warm || (report.rss_after_warmup_kb == 0 && done >= warm) {
        report.rss_after_warmup_kb = rss;
    }
    if report.rss_after_warmup_kb > 0 && rss > report.rss_after_warmup_kb + limits.memory_growth_kb
    {
        report.unbounded_growth = true;
    }
}

/// This process's resident set, kB (0 where /proc is not there).
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn spawn_watchdog(
    name: &str,
    seed: u64,
    current: &Arc<AtomicU64>,
    started_at: &Arc<AtomicU64>,
    clock: Instant,
    bound: Duration,
) {
    let (name, current, started_at) = (name.to_string(), current.clone(), started_at.clone());
    let deadline = bound * 10;
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(bound.min(Duration::from_millis(500)));
            let index = current.load(Ordering::SeqCst);
            if index == u64::MAX {
                continue;
            }
            let since = clock.elapsed().as_millis() as u64 - started_at.load(Ordering::SeqCst);
            if since > deadline.as_millis() as u64 && current.load(Ordering::SeqCst) == index {
                let _ = writeln!(
                    std::io::stderr(),
                    "{name}: input {index} of seed {seed} has not returned after {since} ms: \
                     a hang (reproduce with --seed {seed} --first {index} --count 1)"
                );
                std::process::exit(3);
            }
        }
    });
}
