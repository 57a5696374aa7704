//! End to end: the s2gw daemon and its `pair` / `pairings` / `unpair` commands as
//! processes, against a LAN CEM built on s2-kit's S2 Connect server (pairing and session
//! initiation over TLS with a self-signed CA, S2 over wss admitting only the single-use
//! tokens its session service issued, and a `CemSession` on every socket): once with the
//! gateway pairing as a client (`s2gw pair`), once with the CEM pairing as a client with
//! the daemon's own pairing server (`[s2connect]`, `s2gw pairing-code`); and once with a
//! WAN CEM (`s2gw pair --wan`, its certificate from a test CA the gateway trusts).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    Broker, CEM_CODE as CODE, CemDeployment, ConnectCem as Cem, Daemon, MqttPeer, Pki, pairing_url,
    s2gw, s2gw_with, text,
};
use s2_kit::connect::proto::{NodeId, Role};

const SOON: Duration = Duration::from_secs(20);

/// The daemon's pairing server, advertised on loopback only (test traffic stays there).
const PAIRING_SERVER: &str = "[s2connect]\nlisten = \"127.0.0.1:0\"\nnames = [\"localhost\"]\n\
                              advertise_on = [\"lo\"]\n";

/// A DNS-SD instance name no other test, or another run on this machine, advertises.
fn unique_instance(what: &str) -> String {
    format!("{what}-{}-{}", std::process::id(), NodeId::generate())
}

fn config(state: &Path) -> String {
    format!(
        "[gateway]\nname = \"s2gw-e2e\"\nstate_dir = \"{}\"\nlog_level = \"info\"\n\n\
         [cem.hub]\ntransport = \"s2connect\"\n\n\
         [[device]]\nid = \"battery\"\ncem = \"hub\"\npoll_interval_s = 1\n\
         measurement_interval_s = 1\nprofile = \"sim-battery\"\n[device.sim]\n\
         model = \"battery\"\ninitial_soc = 50\n",
        state.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_initiate_restart_unpair_then_initiation_is_refused_and_the_link_stays_down() {
    tokio::time::timeout(Duration::from_secs(150), whole_path(None))
        .await
        .expect("the S2 Connect path took too long");
}

/// The same path with a WAN CEM (`s2gw pair --wan`): its certificate verified against
/// the platform's trust store (the test CA, through `SSL_CERT_FILE` in the gateway's
/// processes only), the challenge bound to its domain name, the CEM serving sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_wan_with_a_cem_on_the_internet_then_sessions_restart_and_unpair_follow() {
    let pki = Pki::localhost();
    tokio::time::timeout(Duration::from_secs(150), whole_path(Some(&pki)))
        .await
        .expect("the S2 Connect path took too long");
}

async fn whole_path(wan: Option<&Pki>) {
    let mut cem = common::connect_cem(wan.map_or(CemDeployment::Lan, CemDeployment::Wan)).await;
    let env: Vec<(&str, &str)> = wan
        .map(|pki| ("SSL_CERT_FILE", pki.ca.to_str().unwrap()))
        .into_iter()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("s2gw.toml");
    let config = config(&state);
    std::fs::write(&file, &config).unwrap();
    let file = file.to_str().unwrap();

    // Before pairing: check passes and warns.
    let check = s2gw(&["check", "-c", file]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("not paired yet"), "{}", text(&check));

    // Pair as the installer would, with the code the CEM shows.
    let mut pair = vec![
        "pair", "battery", "--cem", &cem.base, "--code", CODE, "-c", file,
    ];
    if wan.is_some() {
        pair.push("--wan");
    }
    let paired = s2gw_with(&env, &pair);
    assert!(paired.status.success(), "{}", text(&paired));
    assert!(
        text(&paired).contains("paired with Acme Home hub"),
        "{}",
        text(&paired)
    );
    assert!(!text(&paired).contains(&cem.access_token));
    let listed = s2gw(&["pairings", "-c", file]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(
        text(&listed).contains(&cem.id.to_string()),
        "{}",
        text(&listed)
    );
    let trust = if wan.is_some() {
        "web PKI"
    } else {
        "pinned CA"
    };
    assert!(text(&listed).contains(trust), "{}", text(&listed));
    assert!(
        !text(&listed).contains(&cem.access_token),
        "{}",
        text(&listed)
    );
    let node_id = std::fs::read_to_string(state.join("s2connect/battery.node-id")).unwrap();
    let node_id = NodeId::parse(node_id.trim()).unwrap();

    // The daemon initiates a session and the CEM meets the battery over wss.
    let mut daemon = Daemon::start_with_env(&config, &env);
    let (node, resource) = cem.next_described().await;
    assert_eq!(node, node_id);
    daemon
        .wait_log(
            "the session initiation",
            |l| l.contains("session initiated"),
            SOON,
        )
        .await;

    // Killed and restarted: initiated again from the stored pairing, same node.
    daemon.kill();
    drop(daemon);
    let mut daemon = Daemon::start_with_env(&config, &env);
    let (node, again) = cem.next_described().await;
    assert_eq!((node, again.as_str()), (node_id, resource.as_str()));

    unpair_then_refused(&mut daemon, &cem, file, &resource, &env).await;
}

/// Unpaired while the daemon runs; the CEM drops the session: the link is lost (the
/// event on which the RM runs its fail-safe release, rule 1: see e2e_daemon's
/// cem_restart_releases_and_reconnects), and the next initiation is refused.
async fn unpair_then_refused(
    daemon: &mut Daemon,
    cem: &Cem,
    file: &str,
    resource: &str,
    env: &[(&str, &str)],
) {
    let unpaired = s2gw_with(env, &["unpair", "battery", "-c", file]);
    assert!(unpaired.status.success(), "{}", text(&unpaired));
    assert!(
        text(&unpaired).contains("unpaired from"),
        "{}",
        text(&unpaired)
    );
    cem.kick.notify_waiters();
    daemon
        .wait_log(
            "the CEM link lost",
            |l| l.contains("CEM link lost") && l.contains(resource),
            SOON,
        )
        .await;
    daemon
        .wait_log(
            "the refused initiation",
            |l| l.contains("dial failed") && l.contains("not paired"),
            SOON,
        )
        .await;
    let listed = s2gw(&["pairings", "-c", file]);
    assert!(text(&listed).contains("not paired"), "{}", text(&listed));
    assert!(
        !daemon.logs().iter().any(|l| l.contains(&cem.access_token)),
        "no access token in the log"
    );
    daemon.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cem_pairs_with_the_daemons_code_then_sessions_restart_and_unpair_follow() {
    tokio::time::timeout(Duration::from_secs(150), cem_pairs_with_the_daemon())
        .await
        .expect("the S2 Connect path took too long");
}

async fn cem_pairs_with_the_daemon() {
    let mut cem = common::connect_cem(CemDeployment::Lan).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = dir.path().join("s2gw.toml");
    let gateway = unique_instance("s2gw-e2e");
    let config = format!("{}\n{PAIRING_SERVER}", config(&state))
        .replace("name = \"s2gw-e2e\"", &format!("name = \"{gateway}\""));
    std::fs::write(&file, &config).unwrap();
    let file = file.to_str().unwrap();

    let mut daemon = Daemon::start(&config);
    let url = pairing_url(&mut daemon).await;

    // A CEM browsing for RMs finds the gateway and its node.
    let node_id = std::fs::read_to_string(state.join("s2connect/battery.node-id")).unwrap();
    let found = s2gw(&[
        "discover",
        "--rm",
        "--interface",
        "lo",
        "--wait",
        "30",
        "--name",
        &gateway,
        "-c",
        file,
    ]);
    assert!(found.status.success(), "{}", text(&found));
    assert!(
        text(&found).contains(&format!("node {}: battery", node_id.trim())),
        "{}",
        text(&found)
    );

    // The installer asks for a code; the CEM's user types it.
    let issued = s2gw(&["pairing-code", "battery", "-c", file]);
    assert!(issued.status.success(), "{}", text(&issued));
    let code = String::from_utf8_lossy(&issued.stdout).trim().to_string();
    assert!(code.starts_with("battery-"), "{code}");
    cem.pair_with(&url, &code).await;
    daemon
        .wait_log(
            "the pairing",
            |l| l.contains("the CEM paired with the gateway"),
            SOON,
        )
        .await;

    // The link's next dial initiates a session with the CEM that paired.
    let node_id = NodeId::parse(node_id.trim()).unwrap();
    let (node, resource) = cem.next_described().await;
    assert_eq!(node, node_id);
    let listed = s2gw(&["pairings", "-c", file]);
    assert!(text(&listed).contains("pinned CA"), "{}", text(&listed));

    let token = code.split_once('-').unwrap().1.to_string();
    assert!(
        !daemon.logs().iter().any(|l| l.contains(&token)),
        "no pairing code in the log"
    );

    // Killed and restarted: the same pairing, no code needed.
    daemon.kill();
    drop(daemon);
    let mut daemon = Daemon::start(&config);
    let (node, again) = cem.next_described().await;
    assert_eq!((node, again.as_str()), (node_id, resource.as_str()));
    unpair_then_refused(&mut daemon, &cem, file, &resource, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistants_start_pairing_button_shows_a_code_the_cem_pairs_with_then_withdraws_it() {
    tokio::time::timeout(Duration::from_secs(150), pairing_from_home_assistant())
        .await
        .expect("pairing from Home Assistant took too long");
}

async fn pairing_from_home_assistant() {
    let broker = Broker::start().await;
    let mut cem = common::connect_cem(CemDeployment::Lan).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let base = "s2gw-pair";
    let config = format!(
        "{}\n{}\n{PAIRING_SERVER}",
        config(&state),
        broker.mqtt_section(base)
    );
    let pairing_topic = format!("{base}/battery/pairing");
    let state_topic = format!("{base}/battery");
    let mut ha = MqttPeer::connect(
        &broker,
        "ha",
        &[
            "homeassistant/device/+/config",
            &pairing_topic,
            &state_topic,
        ],
        None,
    )
    .await;
    let mut daemon = Daemon::start(&config);
    let url = pairing_url(&mut daemon).await;

    // Discovery offers the button and the sensor; the button's press asks for a code.
    let discovery = ha
        .messages
        .wait_for(
            "the battery's discovery with a Start pairing button",
            |m| {
                m.topic.starts_with("homeassistant/device/")
                    && !m.json()["cmps"]["start_pairing"].is_null()
            },
            SOON,
        )
        .await
        .json();
    let button = &discovery["cmps"]["start_pairing"];
    assert_eq!(
        discovery["cmps"]["pairing_code"]["state_topic"],
        pairing_topic.as_str()
    );
    ha.publish(
        button["command_topic"].as_str().unwrap(),
        button["payload_press"].as_str().unwrap(),
        false,
    )
    .await;
    let shown = ha
        .wait_json("a pairing code", &pairing_topic, |v| v["code"].is_string())
        .await;
    assert!(!shown.retained, "the code is never retained");
    let code = shown.json()["code"].as_str().unwrap().to_string();
    assert!(code.starts_with("battery-"), "{code}");

    // The CEM pairs with it; the code is withdrawn and the session comes up.
    cem.pair_with(&url, &code).await;
    ha.wait_json("the code withdrawn", &pairing_topic, |v| {
        v["code"].is_null()
    })
    .await;
    let node_id = std::fs::read_to_string(state.join("s2connect/battery.node-id")).unwrap();
    let (node, _) = cem.next_described().await;
    assert_eq!(node, NodeId::parse(node_id.trim()).unwrap());

    let token = code.split_once('-').unwrap().1.to_string();
    while let Some(message) = ha.messages.try_next() {
        if message.topic != pairing_topic {
            assert!(
                !message.text.contains(&token),
                "the code only on its own topic: {}",
                message.topic
            );
        }
    }
    assert!(
        !daemon.logs().iter().any(|l| l.contains(&token)),
        "no pairing code in the log"
    );
    daemon.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_lists_a_cem_advertised_on_dns_sd_and_its_pairing_url_pairs() {
    let cem = common::connect_cem(CemDeployment::Lan).await;
    let port = url_port(&cem.base);
    let instance = unique_instance("acme-hub");
    let advertiser = s2_kit::connect::discovery::Discovery::new().unwrap();
    advertiser
        .daemon()
        .disable_interface(mdns_sd::IfKind::All)
        .unwrap();
    advertiser.daemon().enable_interface("lo").unwrap();
    let record = s2_kit::connect::proto::dnssd::ServiceRecord {
        endpoint_name: Some("Acme hub".into()),
        pairing_url: Some(format!("https://acme-hub.local:{port}/v1/")),
        roles: vec![Role::Cem],
        ..Default::default()
    };
    advertiser
        .advertise(&instance, "acme-hub.local", port, &record)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s2gw.toml");
    std::fs::write(&file, config(&dir.path().join("state"))).unwrap();
    let file = file.to_str().unwrap();
    let found = tokio::task::spawn_blocking({
        let (instance, file) = (instance.clone(), file.to_string());
        move || {
            s2gw(&[
                "discover",
                "--interface",
                "lo",
                "--wait",
                "30",
                "--name",
                &instance,
                "-c",
                &file,
            ])
        }
    })
    .await
    .unwrap();
    assert!(found.status.success(), "{}", text(&found));
    let listing = text(&found);
    assert!(
        listing.contains(&format!(
            "node {}: Home hub (Acme Home hub, CEM, CEM)",
            cem.id
        )),
        "{listing}"
    );
    // The advertised `.local` host is replaced by the address it resolved to.
    let url = listing
        .lines()
        .find_map(|l| l.trim().strip_prefix("pairing URL: "))
        .unwrap()
        .to_string();
    assert_eq!(url, format!("https://127.0.0.1:{port}/v1/"));

    // The URL discover printed is the one the installer pairs with.
    let paired = tokio::task::spawn_blocking({
        let file = file.to_string();
        move || {
            s2gw(&[
                "pair", "battery", "--cem", &url, "--code", CODE, "-c", &file,
            ])
        }
    })
    .await
    .unwrap();
    assert!(paired.status.success(), "{}", text(&paired));
    assert!(
        text(&paired).contains("paired with Acme Home hub"),
        "{}",
        text(&paired)
    );
    advertiser.shutdown().unwrap();
}

fn url_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap()
}

#[test]
fn check_names_the_pairing_code_route_and_warns_about_a_pairing_server_with_nothing_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s2gw.toml");
    let served = format!("{}\n[s2connect]\n", config(&dir.path().join("state")));
    std::fs::write(&file, &served).unwrap();
    let check = s2gw(&["check", "-c", file.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("s2gw pairing-code battery"),
        "{}",
        text(&check)
    );

    let idle = served.replace(
        "transport = \"s2connect\"",
        "url = \"ws://127.0.0.1:9/s2/{resource_id}\"",
    );
    std::fs::write(&file, idle).unwrap();
    let check = s2gw(&["check", "-c", file.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("[s2connect] serves no device"),
        "{}",
        text(&check)
    );
}
