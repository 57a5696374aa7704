//! `cargo bench --bench scale`: the gateway's footprint with N simulated devices.
//!
//! For N = 1, 10, 100 and 1,000 it starts the demo CEM (`s2gw cem`) and the daemon
//! (`s2gw run`) as processes, N sim devices of every kind (1 s polling, one S2 session
//! each), and prints the daemon's resident memory, CPU (share of one core over a
//! window, the demo CEM instructing as usual; in user code and in the kernel), threads,
//! and the time from start until every session is up. In the same run it measures one s2-python 0.11.1 RM process
//! (`tests/peers/s2python_rm.py`, against the same demo CEM) for comparison.
//!
//! Then the long run: 100 devices whose demo CEM instructs each one every 50 ms instead
//! of every 8 s, so a session lives through a day's worth of instructions in minutes.
//! It prints the resident memory at intervals: whatever a session remembers of its
//! conversation shows as growth, and where that is bounded, as a plateau.
//!
//! Under `cargo test` (no `--bench` argument) it runs N = 1 and 5 with a short window and
//! a short long run, so the suite proves the bench still works.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::faults::DemoCem;
use common::{Daemon, sim_devices, spawn_s2python_rm};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (sizes, window): (&[usize], _) = if full {
        (&[1, 10, 100, 1000], Duration::from_secs(30))
    } else {
        (&[1, 5], Duration::from_secs(2))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "s2gw scale (release build: {}; CPU over {} s, share of one core)",
        !cfg!(debug_assertions),
        window.as_secs()
    );
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>9} {:>8} {:>7} {:>7} {:>8} {:>13}",
        "N", "RSS", "anon", "file", "per dev", "CPU", "user", "kernel", "threads", "all up after"
    );
    for &n in sizes {
        let figures = runtime.block_on(measure(n, window));
        println!(
            "{n:>6} {:>7.1} MB {:>7.1} MB {:>7.1} MB {:>6.1} KB {:>7.2}% {:>6.2}% {:>6.2}% {:>8} {:>10.3} s",
            mib(figures.rss_kib),
            mib(figures.anon_kib),
            mib(figures.file_kib),
            figures.rss_kib as f64 / n as f64,
            figures.cpu.user + figures.cpu.kernel,
            figures.cpu.user,
            figures.cpu.kernel,
            figures.threads,
            figures.all_up.as_secs_f64()
        );
    }
    let (long_n, samples) = if full {
        (100, &[30, 60, 120, 240, 480, 720][..])
    } else {
        (3, &[1, 2][..])
    };
    println!(
        "long run: {long_n} devices, each instructed every {LONG_RUN_INSTRUCT_MS} ms \
         (the demo's default is 8,000 ms)"
    );
    println!("{:>8} {:>10} {:>10}", "after", "RSS", "anon");
    for (after, rss_kib, anon_kib) in runtime.block_on(long_run(long_n, samples)) {
        println!(
            "{:>6} s {:>7.1} MB {:>7.1} MB",
            after.as_secs(),
            mib(rss_kib),
            mib(anon_kib)
        );
    }
    let python = runtime.block_on(s2python_rm_rss());
    println!(
        "one s2-python 0.11.1 RM process (same demo CEM): {:.1} MB",
        mib(python)
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What one run measured.
struct Figures {
    /// Resident memory: `anon` (heap, stacks) plus `file` (the binary's touched pages,
    /// shared with every other process mapping it).
    rss_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    /// Share of one core, split as the kernel accounts it.
    cpu: Cpu,
    threads: u64,
    all_up: Duration,
}

async fn measure(n: usize, window: Duration) -> Figures {
    let cem = DemoCem::start().await;
    let started = Instant::now();
    let mut daemon = Daemon::start_quiet(&config(n, &cem.url()));
    wait_until_up(&mut daemon, n).await;
    let all_up = started.elapsed();
    // Start-up work (profiles, the first selections) is over once every session is
    // up; the window then sees only the steady state.
    let before = cpu_ticks(daemon.pid());
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let after = cpu_ticks(daemon.pid());
    let share = |ticks: u64| ticks as f64 / USER_HZ / t0.elapsed().as_secs_f64() * 100.0;
    let cpu = Cpu {
        user: share(after.0 - before.0),
        kernel: share(after.1 - before.1),
    };
    let figures = Figures {
        rss_kib: status_field(daemon.pid(), "VmRSS:"),
        anon_kib: status_field(daemon.pid(), "RssAnon:"),
        file_kib: status_field(daemon.pid(), "RssFile:"),
        cpu,
        threads: status_field(daemon.pid(), "Threads:"),
        all_up,
    };
    daemon.assert_running();
    assert!(daemon.stop(), "the daemon stops cleanly");
    figures
}

/// How often the long run's demo CEM instructs each device.
const LONG_RUN_INSTRUCT_MS: u64 = 50;

/// `n` devices instructed every [`LONG_RUN_INSTRUCT_MS`]: the daemon's RSS and anonymous
/// memory `samples` seconds after every session was up.
async fn long_run(n: usize, samples: &[u64]) -> Vec<(Duration, u64, u64)> {
    let every = LONG_RUN_INSTRUCT_MS.to_string();
    let cem = DemoCem::start_with(&["--instruct-every-ms", &every]).await;
    let mut daemon = Daemon::start_quiet(&config(n, &cem.url()));
    wait_until_up(&mut daemon, n).await;
    let t0 = Instant::now();
    let mut figures = Vec::new();
    for &at in samples {
        let at = Duration::from_secs(at);
        tokio::time::sleep(at.saturating_sub(t0.elapsed())).await;
        figures.push((
            t0.elapsed(),
            status_field(daemon.pid(), "VmRSS:"),
            status_field(daemon.pid(), "RssAnon:"),
        ));
    }
    daemon.assert_running();
    assert!(daemon.stop(), "the daemon stops cleanly");
    figures
}

/// Wait for `n` sessions to open.
async fn wait_until_up(daemon: &mut Daemon, n: usize) {
    for _ in 0..n {
        daemon
            .wait_log(
                "every S2 session to be up",
                |l| l.contains("CEM link up: S2 session opened"),
                Duration::from_secs(120),
            )
            .await;
    }
}

/// The daemon's config: `n` sim devices on one CEM link (`cem`: its URL) to the demo CEM.
fn config(n: usize, cem: &str) -> String {
    format!(
        "[gateway]\nname = \"scale\"\nstate_dir = \"@STATE_DIR@\"\n\n\
         [cem.demo]\ntransport = \"ws-client\"\nurl = \"{cem}\"\n{}",
        sim_devices(n, "demo")
    )
}

/// One s2-python RM's resident memory once the demo CEM has selected its control type.
async fn s2python_rm_rss() -> u64 {
    let cem = DemoCem::start().await;
    let url = format!("ws://127.0.0.1:{}/s2/python", cem.port);
    let mut rm = spawn_s2python_rm(&url, "9f2b3c3e-1d7a-4c59-9a51-0c8f3f2a7b10", 60);
    rm.lines
        .wait_for(
            "the s2-python RM to be selected",
            |l| l.starts_with("SAW selected"),
            Duration::from_secs(60),
        )
        .await;
    status_field(rm.pid(), "VmRSS:")
}

/// CPU as a share of one core: in the process's own code, and in the kernel on its
/// behalf (the sockets, timers and wake-ups of a session per device).
struct Cpu {
    user: f64,
    kernel: f64,
}

/// User and system CPU time of `pid`, in clock ticks (/proc/PID/stat fields 14 and 15).
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    (
        fields[11].parse::<u64>().unwrap(),
        fields[12].parse::<u64>().unwrap(),
    )
}

/// Clock ticks per second in /proc: Linux's USER_HZ, 100 on every architecture.
const USER_HZ: f64 = 100.0;

/// A numeric field of /proc/PID/status (`VmRSS:` in KiB, `Threads:`).
fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
