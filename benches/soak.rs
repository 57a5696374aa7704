//! `scripts/soak.sh` (`cargo bench --bench soak`): the fault soak of #11, on loopback,
//! against the release binary, printing counts and times.
//!
//! 1. one gateway with a SunSpec inverter (pymodbus, its revert timer simulated) and a
//!    test CEM on s2-kit: CEM SIGKILL/restart cycles (release time, new session time),
//!    Modbus device restarts (isolation and recovery times), gateway SIGKILLs with the
//!    limit active (the inverter's own revert time, no gateway running), and at the end
//!    whether the inverter was left curtailed;
//! 2. S2 over MQTT on a persistent mosquitto: broker restarts under an open session, with
//!    the CEM instructing and the gateway measuring while it is down; the S2 messages lost
//!    either way (the traffic log is the reference), and the sessions it took;
//! 3. a CEM that stops reading (the demo CEM, SIGSTOPped): time until dead-peer
//!    detection (dead_after_s = 51, the least the config allows) releases the device;
//! 4. a full disk under state_dir and the traffic log: the gateway's complaints.
//!
//! Crashes (a daemon that exited by itself) and the RSS of the long-lived daemons are
//! counted throughout. The short forms of each fault are tests/e2e_faults.rs, on the
//! same rigs (tests/common/faults.rs). Under `cargo test` (no `--bench` argument) each
//! fault of parts 1 and 2 runs once, so the suite proves the soak still works; parts 3
//! and 4 then run in e2e_faults only.
//!
//! Counts come from the environment: SOAK_CEM_KILLS (100), SOAK_MODBUS_RESTARTS (20),
//! SOAK_GATEWAY_KILLS (10), SOAK_BROKER_RESTARTS (20), SOAK_REVERT_S (6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::faults::{self, InverterRig, MqttRig};

/// Times of one kind of event, for min / median / max.
#[derive(Default)]
struct Times(Vec<Duration>);

impl Times {
    fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    fn summary(&self) -> String {
        let mut v = self.0.clone();
        v.sort();
        match (v.first(), v.get(v.len() / 2), v.last()) {
            (Some(min), Some(med), Some(max)) => format!(
                "n={} min={:.3}s median={:.3}s max={:.3}s",
                v.len(),
                min.as_secs_f64(),
                med.as_secs_f64(),
                max.as_secs_f64()
            ),
            _ => "n=0".into(),
        }
    }
}

fn count(name: &str, full: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(full)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot start tokio");
    let scale = |name: &str, n: usize| if full { count(name, n) } else { 1 };
    let plan = Plan {
        cem_kills: scale("SOAK_CEM_KILLS", 100),
        modbus_restarts: scale("SOAK_MODBUS_RESTARTS", 20),
        gateway_kills: scale("SOAK_GATEWAY_KILLS", 10),
        broker_restarts: scale("SOAK_BROKER_RESTARTS", 20),
        revert_s: if full {
            count("SOAK_REVERT_S", 6) as u32
        } else {
            2
        },
        full,
    };
    let started = Instant::now();
    println!(
        "s2gw fault soak ({})",
        if full { "full" } else { "short: cargo test" }
    );
    runtime.block_on(soak(&plan));
    println!("soak done in {:.0}s", started.elapsed().as_secs_f64());
}

struct Plan {
    cem_kills: usize,
    modbus_restarts: usize,
    gateway_kills: usize,
    broker_restarts: usize,
    revert_s: u32,
    full: bool,
}

async fn soak(plan: &Plan) {
    let crashes = inverter_part(plan).await;
    let crashes = crashes + mqtt_part(plan).await;
    if plan.full {
        let (lost, released) = faults::stopped_cem_released().await;
        println!(
            "stopped CEM (SIGSTOP, ping_interval_s 50, dead_after_s 51): link lost after \
             {:.2}s, device released after {:.2}s",
            lost.as_secs_f64(),
            released.as_secs_f64()
        );
        let complaints = faults::full_disk(10).await;
        println!(
            "full disk (tmpfs 256k under state_dir and traffic_log): gateway kept serving \
             (10 PowerMeasurements and one instruction SUCCEEDED after it was full), \
             log lines about it: {}",
            complaints.len()
        );
        for line in &complaints {
            println!("  {line}");
        }
    }
    println!("crashes: {crashes}");
}

/// Part 1; the crashes seen.
async fn inverter_part(plan: &Plan) -> usize {
    let mut rig = InverterRig::start(plan.revert_s).await;
    let rss_start = rig.daemon.rss_kib().unwrap_or(0);
    let mut crashes = 0;
    let (mut released, mut back) = (Times::default(), Times::default());
    for n in 0..plan.cem_kills {
        let (r, b) = rig.kill_cem().await;
        released.push(r);
        back.push(b);
        crashes += crashed(&mut rig.daemon, "CEM kill", n);
        progress("CEM kills", n, plan.cem_kills);
    }
    println!(
        "CEM SIGKILL/restart x{}: release {}; new session {}",
        plan.cem_kills,
        released.summary(),
        back.summary()
    );
    let (mut isolated, mut recovered) = (Times::default(), Times::default());
    for n in 0..plan.modbus_restarts {
        let (i, r) = rig.restart_inverter().await;
        isolated.push(i);
        recovered.push(r);
        crashes += crashed(&mut rig.daemon, "Modbus restart", n);
        progress("Modbus restarts", n, plan.modbus_restarts);
    }
    println!(
        "Modbus device (pymodbus) restarts x{}: unavailable after {}; read again after {}",
        plan.modbus_restarts,
        isolated.summary(),
        recovered.summary()
    );
    let rss_end = rig.daemon.rss_kib().unwrap_or(0);
    println!(
        "RSS of the gateway over parts 1a and 1b (one process): {rss_start} KiB -> {rss_end} \
         KiB ({:+} KiB)",
        rss_end as i64 - rss_start as i64
    );
    let mut reverted = Times::default();
    for n in 0..plan.gateway_kills {
        reverted.push(rig.kill_gateway().await);
        crashes += crashed(&mut rig.daemon, "gateway kill", n);
        progress("gateway kills", n, plan.gateway_kills);
    }
    println!(
        "gateway SIGKILL with a limit active x{} (revert_s {}): the inverter's revert timer \
         dropped the limit after {}",
        plan.gateway_kills,
        plan.revert_s,
        reverted.summary()
    );
    // The last CEM goes away, then the gateway stops: nothing may stay curtailed.
    rig.lose_cem().await;
    rig.daemon.stop();
    let curtailed = usize::from(rig.curtailed().await);
    println!("devices left curtailed or forced after the last release: {curtailed}");
    crashes
}

/// Part 2; the crashes seen.
async fn mqtt_part(plan: &Plan) -> usize {
    let mut rig = MqttRig::start().await;
    let rss_start = rig.daemon.rss_kib().unwrap_or(0);
    let mut crashes = 0;
    let mut down = Times::default();
    for n in 0..plan.broker_restarts {
        down.push(rig.restart_broker().await);
        crashes += crashed(&mut rig.daemon, "broker restart", n);
        progress("broker restarts", n, plan.broker_restarts);
    }
    let (to_cem, to_rm) = rig.lost(Duration::from_secs(20)).await;
    let rss_end = rig.daemon.rss_kib().unwrap_or(0);
    println!(
        "mosquitto restarts x{} (down {}): S2 messages lost on the persistent session: \
         {} gateway->CEM, {} CEM->gateway; S2 sessions: {}; gateway RSS {rss_start} KiB -> \
         {rss_end} KiB ({:+} KiB)",
        plan.broker_restarts,
        down.summary(),
        to_cem.len(),
        to_rm.len(),
        rig.sessions(),
        rss_end as i64 - rss_start as i64
    );
    for id in to_cem.iter().chain(&to_rm) {
        println!("  lost: {id}");
    }
    crashes
}

fn crashed(daemon: &mut common::Daemon, what: &str, n: usize) -> usize {
    match daemon.exited() {
        Some(status) => {
            println!("CRASH after {what} {n}: {status}\n{}", daemon.log_tail(40));
            1
        }
        None => 0,
    }
}

fn progress(what: &str, n: usize, of: usize) {
    if (n + 1).is_multiple_of(10) || n + 1 == of {
        eprintln!("[soak] {what}: {}/{of}", n + 1);
        println!("  {what}: {}/{of}", n + 1);
    }
}
