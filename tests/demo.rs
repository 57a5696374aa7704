//! The README's first command: `s2gw demo` runs every simulated device against the demo
//! CEM and shows them connected, controlled and counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn the_demo_connects_every_device_and_exits_cleanly() {
    let output = Command::new(env!("CARGO_BIN_EXE_s2gw"))
        .args(["demo", "--duration", "8", "--plain"])
        .output()
        .expect("cannot start s2gw demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The view is printed every five seconds; the last one is after five seconds.
    let last = stdout
        .rsplit("s2gw demo ")
        .next()
        .expect("the demo printed its view");
    for device in [
        "Rooftop PV",
        "EV charger",
        "Home battery",
        "Heat pump",
        "House meter",
    ] {
        let line = last
            .lines()
            .find(|l| l.starts_with(device))
            .unwrap_or_else(|| panic!("no line for {device} in:\n{last}"));
        assert!(line.contains("up ("), "{device} is not connected: {line}");
    }
    let traffic = last
        .lines()
        .find(|l| l.starts_with("S2 traffic:"))
        .expect("a traffic summary");
    let rm_to_cem: u64 = traffic
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("a message count");
    assert!(rm_to_cem > 10, "too little traffic: {traffic}");
    assert!(
        traffic.contains("0 refused"),
        "the demo's own traffic was refused: {traffic}"
    );
    // A controllable device is being controlled, not just measured.
    assert!(
        last.lines()
            .any(|l| l.starts_with("EV charger") && !l.contains("autonomous")),
        "the demo CEM instructed nothing:\n{last}"
    );
    assert!(stdout.contains("every device returns to its autonomous default"));
}
