//! Interop: an s2-python 0.11.1 Resource Manager (tests/peers/s2python_rm.py) dials the
//! gateway's server at /s2/rm/<id> and is proxied to the test CEM (s2-kit `CemSession`)
//! on WebSocket. The scenario is common's, shared with e2e_mqtt's CEM on MQTT.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::{
    Daemon, Ended, GUARD, TestCem, check_s2python, free_port, s2python_rm_scenario,
    spawn_s2python_rm,
};
use s2_kit::types::{Id, ProtocolVersion};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s2python_rm_through_the_gateway() {
    tokio::time::timeout(Duration::from_secs(120), s2python_rm())
        .await
        .expect("the interop test took too long");
}

async fn s2python_rm() {
    check_s2python();

    // The CEM would prefer 1.0.0; s2-python offers only 0.0.2-beta, so that is agreed.
    let mut cem = TestCem::start(&[ProtocolVersion::V1_0_0, ProtocolVersion::V0_0_2_BETA]).await;
    let port = free_port();
    let resource_id = Id::generate().as_str().to_string();
    let config = format!(
        "[gateway]\nname = \"s2gw-interop\"\nstate_dir = \"@STATE_DIR@\"\n\n\
         [server]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [cem.test]\ntransport = \"ws-client\"\nurl = \"{}\"\n\n\
         [[native]]\nid = \"py-rm\"\nresource_id = \"{resource_id}\"\ncem = \"test\"\n",
        cem.url()
    );
    let mut daemon = Daemon::start(&config);
    daemon
        .wait_log(
            "the gateway's server to listen",
            |l| l.contains("S2 WebSocket server listening") && l.contains(&port.to_string()),
            GUARD,
        )
        .await;

    // The s2-python RM, its output as a queue of lines.
    let url = format!("ws://127.0.0.1:{port}/s2/rm/py-rm");
    let mut peer = spawn_s2python_rm(&url, &resource_id, 40);

    let mut conn = cem.next_conn(GUARD).await;
    assert_eq!(conn.resource_id(), resource_id);
    s2python_rm_scenario(&mut conn, &mut peer, &resource_id).await;

    // The gateway closes the CEM side once the native RM is gone.
    let ended = conn.ended(GUARD).await;
    assert!(
        matches!(ended, Ended::CloseFrame(_)),
        "the CEM link should be closed cleanly, got {ended:?}"
    );
    daemon.assert_running();
}
