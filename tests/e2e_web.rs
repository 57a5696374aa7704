//! End-to-end: the daemon's web UI, `/metrics` and `/healthz`, with sim devices and a
//! test CEM on s2-kit's `CemSession`; the pages in Debian's chromium (playwright-core,
//! tests/browser/web.mjs), the metrics through `promtool check metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{CemConn, Daemon, GUARD, TestCem, frbc_instruction, http, workspace};
use s2_kit::message::{Message, MessageKind};
use s2_kit::types::common::{ControlType, InstructionStatus, ReceptionStatusValues};
use s2_kit::types::{Id, ProtocolVersion, frbc};
use tokio::sync::mpsc;

const SOON: Duration = Duration::from_secs(15);

/// Ten sim devices: every model, and a second battery, PV and meter.
const DEVICES: [(&str, &str); 10] = [
    ("battery", "battery"),
    ("pv", "pv"),
    ("heat-pump", "heat_pump"),
    ("ev", "ev"),
    ("meter", "meter"),
    ("dishwasher", "dishwasher"),
    ("hybrid-heat-pump", "hybrid_heat_pump"),
    ("battery-2", "battery"),
    ("pv-2", "pv"),
    ("meter-2", "meter"),
];

fn config(cem: &TestCem, devices: &[(&str, &str)], web: &str) -> String {
    let mut text = format!(
        "[gateway]\nname = \"s2gw-web\"\nstate_dir = \"@STATE_DIR@\"\n\n{web}\n\
         [cem.test]\ntransport = \"ws-client\"\nurl = \"{}\"\n\n",
        cem.url()
    );
    for (id, model) in devices {
        let profile = format!("sim-{}", model.replace('_', "-"));
        let extra = if *model == "ev" {
            "plugged = true\n"
        } else {
            ""
        };
        text.push_str(&format!(
            "[[device]]\nid = \"{id}\"\ncem = \"test\"\nprofile = \"{profile}\"\n\
             poll_interval_s = 1\nmeasurement_interval_s = 1\n[device.sim]\nmodel = \"{model}\"\n{extra}\n"
        ));
    }
    text
}

const WEB: &str = "[web]\nlisten = \"127.0.0.1:0\"\n";

/// Where the daemon's web UI listens, from its log.
async fn web_addr(daemon: &mut Daemon) -> SocketAddr {
    let line = daemon
        .wait_log(
            "the web UI to listen",
            |l| l.contains("web UI listening"),
            GUARD,
        )
        .await;
    let addr = line
        .split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("no addr= in the web UI's log line");
    let addr: SocketAddr = addr.parse().unwrap();
    format!("127.0.0.1:{}", addr.port()).parse().unwrap()
}

/// Connections by device id, each past its handshake.
async fn connect(cem: &mut TestCem, n: usize) -> BTreeMap<String, CemConn> {
    let mut out = BTreeMap::new();
    for (_, mut conn) in cem.conns(n, GUARD).await {
        let (_, details) = conn.handshake().await;
        out.insert(details.name.clone().unwrap(), conn);
    }
    out
}

fn frbc_system(message: Message) -> frbc::SystemDescription {
    match message {
        Message::FrbcSystemDescription(s) => *s,
        other => panic!("not an FRBC.SystemDescription: {:?}", other.kind()),
    }
}

/// Select FRBC on the battery, charge it at half power and wait for SUCCEEDED.
async fn charge(battery: &mut CemConn) -> Id {
    battery
        .select_ready(ControlType::FillRateBasedControl)
        .await;
    let system = frbc_system(
        battery
            .wait_message(MessageKind::FrbcSystemDescription, SOON)
            .await,
    );
    let instruction = frbc_instruction(&system, "charge", 0.5);
    let id = instruction.id;
    battery.events().clear();
    battery.instruct(instruction).await;
    battery
        .wait_instruction_status(id, InstructionStatus::Succeeded, SOON)
        .await;
    id
}

/// A SelectControlType that fails the schema: refused at the gateway's edge.
async fn send_refused(conn: &mut CemConn) -> String {
    let id = Id::generate();
    conn.send_raw(format!(
        r#"{{"message_type":"SelectControlType","message_id":"{id}","control_type":"TURBO_MODE"}}"#
    ))
    .await;
    let status = conn.wait_reception(id.as_str(), SOON).await;
    assert_eq!(status.status, ReceptionStatusValues::InvalidMessage);
    status.diagnostic_label.unwrap_or_default()
}

/// The value of the sample `name{labels}` (labels as written, in order).
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (key, value) = l.rsplit_once(' ')?;
        (key == name_and_labels).then(|| value.parse().ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_what_the_cem_counted() {
    let mut cem = TestCem::start(&[ProtocolVersion::V1_0_0]).await;
    let devices = &DEVICES[..3];
    let mut daemon = Daemon::start(&config(&cem, devices, WEB));
    let addr = web_addr(&mut daemon).await;
    let mut conns = connect(&mut cem, devices.len()).await;
    let instruction = charge(conns.get_mut("battery").unwrap()).await;
    send_refused(conns.get_mut("pv").unwrap()).await;

    // The edge answers a refused frame itself and tells the taps after: the CEM can hold
    // its ReceptionStatus before the refusal is counted. Scrape until it is.
    let refusal = "s2gw_s2_refusals_total{resource=\"pv\",by=\"edge\",status=\"INVALID_MESSAGE\"}";
    let deadline = tokio::time::Instant::now() + SOON;
    let reply = loop {
        let reply = http(addr, "GET", "/metrics", &[], "").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if sample(&reply.body, refusal).is_some() || tokio::time::Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        reply.headers
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: scripts/system-deps.sh installs Debian's prometheus");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(reply.body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        reply.body
    );
    let m = &reply.body;

    // What the CEM sent, it counted; the gateway counts the same (these types are sent
    // once and never again in this test).
    let battery = &conns["battery"];
    for kind in ["HandshakeResponse", "SelectControlType", "FRBC.Instruction"] {
        let sent = battery.sent().iter().filter(|(k, _)| k == kind).count() as f64;
        let key = format!(
            "s2gw_s2_messages_total{{resource=\"battery\",direction=\"cem_to_rm\",type=\"{kind}\"}}"
        );
        assert_eq!(sample(m, &key), Some(sent), "{key}\n{m}");
    }
    // What the CEM received, likewise.
    let received = |kind: &str| {
        battery
            .raw_frames()
            .iter()
            .filter(|f| f.contains(&format!("\"message_type\":\"{kind}\"")))
            .count() as f64
    };
    for kind in [
        "ResourceManagerDetails",
        "FRBC.SystemDescription",
        "InstructionStatusUpdate",
    ] {
        let key = format!(
            "s2gw_s2_messages_total{{resource=\"battery\",direction=\"rm_to_cem\",type=\"{kind}\"}}"
        );
        assert_eq!(sample(m, &key), Some(received(kind)), "{key}\n{m}");
    }
    // Instruction outcomes: each status the CEM saw for its instruction.
    let statuses: Vec<String> = battery
        .raw_frames()
        .iter()
        .filter_map(|f| serde_json::from_str::<serde_json::Value>(f).ok())
        .filter(|v| v["instruction_id"] == instruction.as_str())
        .map(|v| v["status_type"].as_str().unwrap().to_string())
        .collect();
    assert!(statuses.contains(&"SUCCEEDED".to_string()), "{statuses:?}");
    for status in &statuses {
        let key = format!(
            "s2gw_s2_instruction_status_updates_total{{resource=\"battery\",status=\"{status}\"}}"
        );
        let want = statuses.iter().filter(|s| *s == status).count() as f64;
        assert_eq!(sample(m, &key), Some(want), "{key}\n{m}");
    }
    // The refusal the CEM got for its bad frame.
    let refused: Vec<_> = conns["pv"]
        .receptions()
        .into_iter()
        .filter(|r| r.status == ReceptionStatusValues::InvalidMessage)
        .collect();
    assert_eq!(sample(m, refusal), Some(refused.len() as f64), "{m}");
    for (id, _) in devices {
        let label = format!("{{device=\"{id}\"}}");
        assert_eq!(
            sample(m, &format!("s2gw_device_available{label}")),
            Some(1.0)
        );
        assert!(
            sample(
                m,
                &format!("s2gw_device_poll_duration_seconds_count{label}")
            )
            .unwrap()
                >= 1.0
        );
        assert_eq!(
            sample(
                m,
                &format!("s2gw_s2_session_connected{{resource=\"{id}\"}}")
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                m,
                &format!("s2gw_s2_link_connections_total{{resource=\"{id}\"}}")
            ),
            Some(1.0)
        );
    }
    assert!(sample(m, "s2gw_process_resident_memory_bytes").unwrap() > 1e6);

    // The inspector's download is a transcript s2-kit reads.
    let log = http(addr, "GET", "/api/inspector/battery/s2log", &[], "").await;
    assert_eq!(log.status, 200);
    assert!(
        log.header("content-disposition")
            .is_some_and(|d| d.contains("battery.s2log")),
        "{:?}",
        log.headers
    );
    let entries = s2_kit::testing::read_s2log(&log.body);
    assert!(
        entries.iter().any(|e| e.text.contains("FRBC.Instruction")),
        "the instruction is in the download"
    );
    assert!(sample(m, "s2gw_process_open_sockets").unwrap() >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_200_when_every_session_is_up_and_503_with_the_problem_when_not() {
    let mut cem = TestCem::start(&[ProtocolVersion::V1_0_0]).await;
    let devices = &DEVICES[..2];
    let mut daemon = Daemon::start(&config(&cem, devices, WEB));
    let addr = web_addr(&mut daemon).await;
    let conns = connect(&mut cem, devices.len()).await;
    let health = poll_health(addr, 200).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["devices"].as_array().unwrap().len(), 2);

    cem.kill().await;
    drop(conns);
    let health = poll_health(addr, 503).await;
    assert_eq!(health["status"], "degraded");
    let problems = health["problems"].to_string();
    assert!(problems.contains("no S2 session"), "{health}");
}

/// `/healthz` once it answers `status` (polled: a link's loss has no event to await
/// here), bounded by a deadline.
async fn poll_health(addr: SocketAddr, status: u16) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let reply = http(addr, "GET", "/healthz", &[], "").await;
        if reply.status == status {
            return serde_json::from_str(&reply.body).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz is still {}: {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_without_a_password_the_daemon_refuses_to_start() {
    let cem = TestCem::start(&[ProtocolVersion::V1_0_0]).await;
    let text = config(&cem, &DEVICES[..1], "[web]\nlisten = \"0.0.0.0:0\"\n");
    let mut daemon = Daemon::start(&text);
    let line = daemon
        .wait_log("the refusal", |l| l.contains("web.listen"), GUARD)
        .await;
    assert!(
        line.contains("needs a password") && line.contains("password_file"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_password_the_ui_needs_a_login_csrf_and_locks_out_guessers() {
    let cem = TestCem::start(&[ProtocolVersion::V1_0_0]).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("web-password");
    std::fs::write(&secret, "correct horse\n").unwrap();
    let web = format!(
        "[web]\nlisten = \"0.0.0.0:0\"\npassword_file = \"{}\"\n",
        secret.display()
    );
    let mut daemon = Daemon::start(&config(&cem, &DEVICES[..1], &web));
    let addr = web_addr(&mut daemon).await;

    for path in [
        "/api/overview",
        "/api/session",
        "/metrics",
        "/api/inspector/battery",
    ] {
        let reply = http(addr, "GET", path, &[], "").await;
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        assert!(!reply.body.is_empty(), "a 401 says why");
    }
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let login = http(addr, "POST", "/login", &form, "password=correct+horse").await;
    assert_eq!(login.status, 204, "{}", login.body);
    let cookie = login.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let with_cookie = [("Cookie", session.as_str())];
    let reply = http(addr, "GET", "/api/session", &with_cookie, "").await;
    assert_eq!(reply.status, 200);
    let csrf = serde_json::from_str::<serde_json::Value>(&reply.body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !reply.body.contains("correct horse"),
        "no secret is rendered"
    );

    // An action without the CSRF token is refused; with it, it is done.
    let json = ("Content-Type", "application/json");
    let body = r#"{"allowed": false}"#;
    let path = "/api/device/battery/control";
    let reply = http(addr, "POST", path, &[with_cookie[0], json], body).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("CSRF"), "{}", reply.body);
    let token = [with_cookie[0], json, ("X-CSRF-Token", csrf.as_str())];
    let reply = http(addr, "POST", path, &token, "not json").await;
    assert_eq!(
        reply.status, 400,
        "a bad body gets a reason: {}",
        reply.body
    );
    let reply = http(addr, "POST", path, &token, body).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let reply = http(addr, "GET", "/api/device/nope", &with_cookie, "").await;
    assert_eq!(reply.status, 404);

    // Wrong passwords: five, then even the right one waits.
    for _ in 0..5 {
        let reply = http(addr, "POST", "/login", &form, "password=guess").await;
        assert_eq!(reply.status, 401, "{}", reply.body);
    }
    let reply = http(addr, "POST", "/login", &form, "password=correct+horse").await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert!(reply.body.contains("try again"), "{}", reply.body);
    daemon.assert_running();
}

/// The browser driver, a line at a time.
struct Browser {
    child: std::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Browser {
    fn start(url: &str, shots: &std::path::Path) -> Browser {
        let status = Command::new(workspace().join("scripts/browser-deps.sh"))
            .status()
            .expect("cannot run scripts/browser-deps.sh");
        assert!(status.success(), "scripts/browser-deps.sh failed");
        assert!(
            std::path::Path::new("/usr/bin/chromium").exists(),
            "no /usr/bin/chromium: scripts/system-deps.sh installs Debian's chromium"
        );
        let mut child = Command::new("node")
            .arg(workspace().join("tests/browser/web.mjs"))
            .arg(url)
            .arg(shots)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start node");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[browser] {line}");
                let _ = tx.send(line);
            }
        });
        Browser { child, lines }
    }

    /// Send a command and await the step's answer: its detail after `ok STEP `.
    async fn step(&mut self, command: &str, step: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let line = common::within(
            &format!("the browser's {step} step"),
            Duration::from_secs(60),
            self.lines.recv(),
        )
        .await
        .unwrap_or_else(|| panic!("the browser driver ended before its {step} step"));
        let prefix = format!("ok {step}");
        assert!(line.starts_with(&prefix), "browser: {line}");
        line[prefix.len()..].trim().to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_every_device_live_release_it_and_show_refusals_in_a_real_browser() {
    let mut cem = TestCem::start(&[ProtocolVersion::V1_0_0]).await;
    let mut daemon = Daemon::start(&config(&cem, &DEVICES, WEB));
    let addr = web_addr(&mut daemon).await;
    let mut conns = connect(&mut cem, DEVICES.len()).await;
    let shots = workspace().join("target/web-screenshots");
    let mut browser = Browser::start(&format!("http://{addr}/"), &shots);

    let overview = browser.step(&DEVICES.len().to_string(), "overview").await;
    eprintln!("page weight and phone overflow: {overview}");
    let overflow: i64 = overview
        .rsplit("phone_overflow=")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        overflow <= 0,
        "the overview must fit a phone's width: {overview}"
    );

    // The device changes: the CEM's instruction makes the battery charge; the page
    // shows the power the CEM is told within 2 s.
    let battery = conns.get_mut("battery").unwrap();
    charge(battery).await;
    let watts = battery
        .wait_power("the battery charging", |p| p > 100.0, SOON)
        .await;
    let live = browser
        .step(&format!("expect battery {watts}"), "live")
        .await;
    eprintln!("the page showed the new power after {live}");

    // The switch on the page releases the device: the RM reconnects offering only
    // NOT_CONTROLABLE.
    browser.step("toggle battery", "device").await;
    let mut conn = cem.next_conn(SOON).await;
    let (_, details) = conn.handshake().await;
    assert_eq!(details.name.as_deref(), Some("battery"));
    assert_eq!(
        details.available_control_types,
        vec![ControlType::NotControllable],
        "with CEM control off the battery offers only NOT_CONTROLABLE"
    );

    // The inspector shows the refusal with the rule the CEM was told.
    let diagnostic = send_refused(conns.get_mut("pv").unwrap()).await;
    let rule = browser.step("refused pv", "inspector").await;
    assert!(
        diagnostic.starts_with(&rule[..rule.len().min(40)])
            || rule.contains(&diagnostic[..diagnostic.len().min(40)]),
        "the page shows `{rule}`, the CEM was told `{diagnostic}`"
    );
    let verdict = browser.step("config", "config").await;
    assert_eq!(verdict, "OK");
    for page in [
        "overview",
        "overview-phone",
        "device",
        "inspector",
        "config",
    ] {
        assert!(
            shots.join(format!("{page}.png")).is_file(),
            "no screenshot of {page}"
        );
    }
    daemon.assert_running();
}
