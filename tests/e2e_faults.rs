//! Faults, one at a time, through the daemon process (#11's reliability campaign; the
//! soak, benches/soak.rs, repeats them and counts): a CEM killed, a Modbus device
//! restarting, the gateway killed with a SunSpec limit active (the inverter's own revert
//! timer, simulated by the pymodbus peer, drops it), a gateway restarted over its own
//! limit, a broker restart on the S2-over-MQTT link, a CEM that stops reading, and a full
//! disk under the traffic log. The rigs are in tests/common/faults.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::faults::{self, InverterRig, MqttRig, SOON};
use common::{M123_ENA, M123_PCT};

async fn within_test<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(180), future)
        .await
        .expect("the test took too long")
}

/// A CEM killed without close frames: the gateway releases the inverter (WMaxLim_Ena
/// = 0 written), dials the CEM again when it is back, and the new session curtails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cem_releases_the_device_and_the_session_is_established_again() {
    within_test(async {
        let mut rig = InverterRig::start(120).await;
        let (released, back) = rig.kill_cem().await;
        assert!(
            released < Duration::from_secs(5),
            "released after {released:?}"
        );
        assert!(back < SOON, "new session after {back:?}");
        assert!(
            rig.curtailed().await,
            "the new session's limit is not enabled"
        );
        rig.daemon.assert_running();
    })
    .await;
}

/// The inverter's Modbus server dies: the gateway declares it unavailable (and only
/// that: it keeps running), reads it again once it is back, and writes the limit it
/// lost with its registers again (at the latest at half the revert time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_modbus_device_is_isolated_then_recovers_with_its_limit() {
    within_test(async {
        let mut rig = InverterRig::start(4).await;
        let (isolated, back) = rig.restart_inverter().await;
        assert!(isolated < SOON, "unavailable after {isolated:?}");
        assert!(back < Duration::from_secs(60), "read again after {back:?}");
        // The power-on registers have no limit; the gateway's limit is still active.
        rig.peer.wait_write(M123_ENA, &[1], rig.revert + SOON).await;
        assert!(rig.curtailed().await);
        rig.daemon.assert_running();
    })
    .await;
}

/// SIGKILL with a limit active: nothing of the gateway runs, and the inverter's own
/// revert timer (WMaxLimPct_RvrtTms = revert_s, re-written at half of it) drops the limit
/// within revert_s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_leaves_the_limit_to_the_inverters_revert_timer() {
    within_test(async {
        let mut rig = InverterRig::start(4).await;
        let reverted = rig.kill_gateway().await;
        assert!(
            reverted <= rig.revert + Duration::from_millis(500),
            "the limit outlived the gateway by {reverted:?} (revert_s {:?})",
            rig.revert
        );
        rig.daemon.assert_running();
    })
    .await;
}

/// A gateway killed and started again before the revert timer ran out finds its
/// predecessor's limit on the inverter. That limit has a revert timer, so it is not an
/// installer's standing limit: the new gateway must not keep it as a cap (a looser limit
/// from the CEM is written as asked) nor restore it on release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_over_its_own_limit_does_not_keep_it() {
    within_test(async {
        let mut rig = InverterRig::start(60).await;
        rig.crash_and_restart_gateway().await;
        // 4000 W of 5000 W: 80 %, looser than the 50 % the killed gateway left.
        rig.curtail(4000.0).await;
        assert_eq!(rig.peer.holding(M123_PCT, 1).await, [800]);
        // Released means released: not back to the old gateway's limit.
        rig.lose_cem().await;
        assert!(!rig.curtailed().await, "the old limit came back on release");
        rig.daemon.assert_running();
    })
    .await;
}

/// The broker restarts (SIGTERM, persistence on) under an open S2-over-MQTT session:
/// while it is down the CEM instructs and the gateway measures; after it, every S2
/// message the gateway's bus carried reached the CEM and the other way round, in the
/// same session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_s2_message_of_the_persistent_session() {
    within_test(async {
        let mut rig = MqttRig::start().await;
        rig.restart_broker().await;
        let (to_cem, to_rm) = rig.lost(Duration::from_secs(10)).await;
        assert!(to_cem.is_empty(), "never reached the CEM: {to_cem:?}");
        assert!(to_rm.is_empty(), "never reached the gateway: {to_rm:?}");
        assert_eq!(rig.sessions(), 1, "the session did not survive the restart");
        rig.daemon.assert_running();
    })
    .await;
}

/// A CEM that stops reading (SIGSTOP: its TCP stack still acknowledges, it answers no
/// ping) is dropped after dead_after_s (51 s, the least the config allows) and the
/// device it curtailed is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cem_that_stops_reading_is_dropped_after_dead_after_and_the_device_released() {
    within_test(async {
        let (lost, released) = faults::stopped_cem_released().await;
        assert!(
            lost >= Duration::from_secs(50) && lost <= Duration::from_secs(56),
            "link lost {lost:?} after SIGSTOP (dead_after_s = 51)"
        );
        assert!(
            released <= lost + Duration::from_secs(3),
            "released after {released:?}"
        );
    })
    .await;
}

/// A full disk under state_dir and the traffic log: the gateway says so once and goes on
/// measuring and carrying out instructions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_once_and_the_gateway_keeps_serving() {
    within_test(async {
        let complaints = faults::full_disk(5).await;
        assert_eq!(complaints.len(), 1, "{complaints:#?}");
    })
    .await;
}
