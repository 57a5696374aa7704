//! The campaign's short form, in the test suite: 10,000 inputs per target with a fixed
//! seed, through the runner binary (the `config` target needs its own network namespace,
//! which the binary sets up). Any panic, hang, broken invariant or unbounded growth fails
//! the test with the runner's report, which names the input and how to replay it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

const COUNT: &str = "10000";
const SEED: &str = "1";

fn campaign(target: &str) {
    run(target, "0", COUNT);
}

/// Runs `count` inputs of `target` from input `first` of the seed; fails on any finding.
fn run(target: &str, first: &str, count: &str) {
    let crashes = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_s2gw-fuzz"))
        .args([
            target,
            "--first",
            first,
            "--count",
            count,
            "--seed",
            SEED,
            "--crashes",
        ])
        .arg(crashes.path())
        .output()
        .expect("the fuzz runner starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{target}: the campaign found something:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("{count} inputs"))
            && stdout.contains("0 panics, 0 hangs, 0 invariant violations"),
        "{target}: unexpected report:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
}

#[test]
fn s2_frames_into_the_edge_never_panic_and_every_refusal_is_answered() {
    campaign("s2-edge");
}

#[test]
fn s2_sequences_into_a_live_rm_never_end_its_session_or_its_task() {
    campaign("s2-rm");
}

#[test]
fn hostile_modbus_answers_never_hang_a_call_or_make_a_reading_s2_cannot_carry() {
    campaign("modbus");
}

#[test]
fn mqtt_payloads_on_every_subscribed_topic_never_stop_the_daemon_answering() {
    campaign("mqtt");
}

#[test]
fn bthome_adverts_and_gatt_values_never_panic_the_decoder_or_the_state() {
    campaign("ble");
}

#[test]
fn fuzzed_configs_and_profiles_get_named_problems_or_start_and_stop_cleanly() {
    campaign("config");
}

