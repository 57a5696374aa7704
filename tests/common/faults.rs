//! The fault rigs of #11's reliability campaign, shared by the short forms
//! (tests/e2e_faults.rs, one fault each, asserted) and the soak (benches/soak.rs, many
//! faults in a row, counted): each rig is the daemon process with real peers around it,
//! and each fault is one method that injects it, awaits the gateway's answer and returns
//! how long that took.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use s2_kit::types::common::{ControlType, InstructionStatus};
use s2_kit::types::{Duration as S2Duration, Id, ProtocolVersion, Timestamp, pebc};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{
    Broker, CemConn, Daemon, GUARD, M123_ENA, M123_PCT, MQTT_PASSWORD, MQTT_USER, ModbusPeer,
    MqttCem, Queue, TestCem, pebc_instruction,
};

/// How long a poll-driven effect may take (poll and measurement intervals are 1 s).
pub const SOON: Duration = Duration::from_secs(15);
/// The base topic of the MQTT rig.
pub const BASE: &str = "s2gw";

/// A simulated PV at local noon whatever the time (6 kW, no clouds), as in e2e_mqtt.
pub fn sim_pv(id: &str, cem: &str, extra: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let utc_h = (secs % 86_400.0) / 3600.0;
    let offset_min = ((12.0 - utc_h) * 60.0).round() as i64;
    format!(
        "[[device]]\nid = \"{id}\"\ncem = \"{cem}\"\n{extra}\
         poll_interval_s = 1\nmeasurement_interval_s = 1\nprofile = \"sim-pv\"\n\
         [device.sim]\nmodel = \"pv\"\nrated_w = 6000\ncloudiness = 0\nsunrise_h = 6\n\
         sunset_h = 18\nutc_offset_min = {offset_min}\n"
    )
}

/// A PEBC production limit of `limit_w` for an hour, sent; its instruction id.
pub async fn limit(conn: &mut CemConn, constraints: &pebc::PowerConstraints, limit_w: f64) -> Id {
    let instruction = pebc_instruction(
        constraints,
        -limit_w,
        0.0,
        Timestamp::now(),
        S2Duration::from_secs(3600),
    );
    let id = instruction.id;
    conn.instruct(instruction).await;
    id
}

// ----------------------------------------------------------------------------------------
// A SunSpec inverter (pymodbus, with its revert timer) behind the gateway, a WebSocket CEM
// ----------------------------------------------------------------------------------------

/// The gateway with one SunSpec inverter (model 123, the simulator's revert timer on)
/// and a test CEM on a fixed loopback port, which can be killed and come back there.
pub struct InverterRig {
    /// The inverter.
    pub peer: ModbusPeer,
    /// The daemon.
    pub daemon: Daemon,
    cem: Option<TestCem>,
    conn: Option<CemConn>,
    addr: SocketAddr,
    config: String,
    /// The device's `revert_s`.
    pub revert: Duration,
}

impl InverterRig {
    /// Start everything, curtailed to 2500 W of 5000 W (50 %) by the CEM.
    pub async fn start(revert_s: u32) -> InverterRig {
        let peer = ModbusPeer::start(&[
            "sunspec",
            "--base",
            "40000",
            "--models",
            "1,103,123",
            "--revert-timer",
        ])
        .await;
        let cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
        let config = format!(
            "[gateway]\nname = \"s2gw-faults\"\nstate_dir = \"@STATE_DIR@\"\n\n\
             [cem.test]\ntransport = \"ws-client\"\nurl = \"{}\"\n\n\
             [[device]]\nid = \"pv\"\nprofile = \"modbus-sunspec-inverter\"\ncem = \"test\"\n\
             poll_interval_s = 1\nmeasurement_interval_s = 1\n[device.modbus]\ntcp = \"{}\"\n\
             timeout_ms = 1000\nsunspec = {{ rated_w = 5000, revert_s = {revert_s} }}\n",
            cem.url(),
            peer.addr()
        );
        let daemon = Daemon::start(&config);
        let mut rig = InverterRig {
            peer,
            daemon,
            addr: cem.addr(),
            cem: Some(cem),
            conn: None,
            config,
            revert: Duration::from_secs(u64::from(revert_s)),
        };
        rig.session().await;
        rig.curtail(2500.0).await;
        rig
    }

    fn cem(&mut self) -> &mut TestCem {
        self.cem.as_mut().expect("the CEM is down")
    }

    /// The current session (after [`InverterRig::session`]).
    pub fn conn(&mut self) -> &mut CemConn {
        self.conn.as_mut().expect("no session")
    }

    /// Await the gateway's next connection and its handshake; how long that took.
    pub async fn session(&mut self) -> Duration {
        let started = Instant::now();
        let mut conn = self.cem().next_conn(GUARD).await;
        conn.handshake().await;
        self.conn = Some(conn);
        started.elapsed()
    }

    /// Select PEBC and limit production to `limit_w`; returns once the instruction
    /// SUCCEEDED and the inverter holds the limit, enabled.
    pub async fn curtail(&mut self, limit_w: f64) {
        self.peer.lines.clear();
        let conn = self.conn();
        let constraints = conn.select_pebc(SOON).await;
        let id = limit(conn, &constraints, limit_w).await;
        conn.wait_instruction_status(id, InstructionStatus::Succeeded, SOON)
            .await;
        let raw = (limit_w / 5000.0 * 1000.0).round() as u16;
        assert_eq!(
            self.peer.holding(M123_PCT, 5).await,
            [raw, 0, self.revert.as_secs() as u16, 0, 1],
            "the inverter does not hold the limit (WMaxLimPct … WMaxLim_Ena)"
        );
    }

    /// Whether the inverter's limit is enabled now.
    pub async fn curtailed(&self) -> bool {
        self.peer.holding(M123_ENA, 1).await == [1]
    }

    /// The CEM dies (no close frames): (time until the gateway released the inverter,
    /// time from the CEM's return until a new session's handshake); curtailed again
    /// after.
    pub async fn kill_cem(&mut self) -> (Duration, Duration) {
        let released = self.lose_cem().await;
        let back = self.cem_back().await;
        self.curtail(2500.0).await;
        (released, back)
    }

    /// The CEM dies (no close frames): how long until the gateway released the
    /// inverter (WMaxLim_Ena = 0 written).
    pub async fn lose_cem(&mut self) -> Duration {
        self.peer.lines.clear();
        let started = Instant::now();
        if let Some(cem) = self.cem.take() {
            cem.kill().await;
        }
        self.conn = None;
        self.peer.wait_write(M123_ENA, &[0], SOON).await;
        started.elapsed()
    }

    /// The CEM comes back on its port: how long until the gateway's new session passed
    /// its handshake.
    pub async fn cem_back(&mut self) -> Duration {
        self.cem = Some(TestCem::start_on(self.addr, &[ProtocolVersion::V0_0_2_BETA]).await);
        self.session().await
    }

    /// The inverter (its Modbus server) dies and comes back with its power-on registers:
    /// (time until the gateway declared it unavailable, time from its return until the
    /// gateway read it again).
    pub async fn restart_inverter(&mut self) -> (Duration, Duration) {
        let started = Instant::now();
        self.peer.kill().await;
        self.daemon
            .wait_log(
                "the inverter to be unavailable",
                |l| l.contains("device unavailable"),
                SOON,
            )
            .await;
        let isolated = started.elapsed();
        self.peer.restart().await;
        let back = Instant::now();
        // The read back-off grows to a minute while the device is away.
        self.daemon
            .wait_log(
                "the inverter to be read again",
                |l| l.contains("device reachable again"),
                Duration::from_secs(90),
            )
            .await;
        (isolated, back.elapsed())
    }

    /// SIGKILL the gateway with the limit active: how long until the inverter's own
    /// revert timer dropped the limit, no gateway running. Then a new gateway, a new
    /// session, curtailed again.
    pub async fn kill_gateway(&mut self) -> Duration {
        self.peer.lines.clear();
        self.daemon.kill();
        let killed = Instant::now();
        self.conn = None;
        self.peer
            .wait_line(
                "the inverter's revert timer to drop the limit",
                |v| v["reverted"] == 123,
                self.revert + SOON,
            )
            .await;
        let reverted = killed.elapsed();
        assert!(!self.curtailed().await, "reverted, yet WMaxLim_Ena is 1");
        self.restart_gateway().await;
        reverted
    }

    /// A new gateway on the same config, a new session, curtailed again.
    pub async fn restart_gateway(&mut self) {
        self.daemon = Daemon::start(&self.config);
        self.session().await;
        self.curtail(2500.0).await;
    }

    /// Kill the gateway and start it again at once, before the inverter's revert timer
    /// ran out: the limit the new gateway finds is its predecessor's.
    pub async fn crash_and_restart_gateway(&mut self) {
        self.daemon.kill();
        self.conn = None;
        self.daemon = Daemon::start(&self.config);
        self.session().await;
    }
}

// ----------------------------------------------------------------------------------------
// S2 over MQTT: a CEM on a persistent broker
// ----------------------------------------------------------------------------------------

/// The gateway on a broker that persists sessions, a simulated PV routed to a CEM on
/// MQTT (persistent session too), the traffic log on: what the gateway put on its bus is
/// the reference for what must arrive.
pub struct MqttRig {
    /// The broker.
    pub broker: Broker,
    /// The daemon.
    pub daemon: Daemon,
    /// The CEM.
    pub cem: MqttCem,
    constraints: pebc::PowerConstraints,
    rid: String,
}

impl MqttRig {
    /// Start everything; the CEM has selected PEBC.
    pub async fn start() -> MqttRig {
        let broker = Broker::start_persistent().await;
        let rid = Id::generate().as_str().to_string();
        let config = format!(
            "[gateway]\nname = \"s2gw-faults\"\nstate_dir = \"@STATE_DIR@\"\n\
             traffic_log = \"@STATE_DIR@/traffic.s2log\"\n\n[cem.broker]\ntransport = \"mqtt\"\n\
             {}{}",
            broker.mqtt_section(BASE),
            sim_pv("pv", "broker", &format!("resource_id = \"{rid}\"\n"))
        );
        let mut daemon = Daemon::start(&config);
        daemon
            .wait_log("the daemon to run", |l| l.contains("s2gw running"), GUARD)
            .await;
        let mut cem = MqttCem::start_persistent(&broker, BASE, &rid).await;
        cem.handshake().await;
        let constraints = cem.select_pebc(GUARD).await;
        MqttRig {
            broker,
            daemon,
            cem,
            constraints,
            rid,
        }
    }

    /// Restart the broker; while it is down the CEM sends an instruction and the gateway
    /// goes on measuring (both queued in their clients). Returns once the instruction's
    /// ReceptionStatus and a newer PowerMeasurement arrived: the restart's duration.
    pub async fn restart_broker(&mut self) -> Duration {
        let started = Instant::now();
        self.broker.stop().await;
        let instruction = pebc_instruction(
            &self.constraints,
            -3000.0,
            0.0,
            Timestamp::now(),
            S2Duration::from_secs(600),
        );
        let message_id = instruction.message_id;
        self.cem.instruct(instruction).await;
        self.broker.start_again().await;
        let down = started.elapsed();
        self.cem.reception_for(message_id.as_str(), GUARD).await;
        self.cem.events().clear();
        self.cem
            .wait_power("a PowerMeasurement after the restart", |_| true, GUARD)
            .await;
        down
    }

    /// The S2 messages (by message id) the gateway's bus carried for this resource that
    /// never reached the CEM, and the CEM's messages the bus never carried: awaited
    /// until both are empty or `timeout` passed (the last ones may be on their way).
    pub async fn lost(&self, timeout: Duration) -> (BTreeSet<String>, BTreeSet<String>) {
        let deadline = Instant::now() + timeout;
        loop {
            let lost = self.lost_now();
            if (lost.0.is_empty() && lost.1.is_empty()) || Instant::now() >= deadline {
                return lost;
            }
            // The traffic log and the broker have no event to await: poll with a deadline.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn lost_now(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let log = traffic_log(&self.daemon.dir().join("state/traffic.s2log"), &self.rid);
        let received: BTreeSet<String> = self
            .cem
            .raw_frames()
            .iter()
            .filter_map(|t| message_id(&serde_json::from_str(t).ok()?))
            .collect();
        let sent: BTreeSet<String> = self
            .cem
            .sent()
            .into_iter()
            .filter(|(kind, _)| kind != "ReceptionStatus")
            .filter_map(|(_, id)| id)
            .collect();
        let to_cem = log.rm_to_cem.difference(&received).cloned().collect();
        let to_rm = sent.difference(&log.cem_to_rm).cloned().collect();
        (to_cem, to_rm)
    }

    /// How many S2 sessions the CEM has seen.
    pub fn sessions(&self) -> u32 {
        *self.cem.sessions.borrow()
    }
}

/// The message ids of one resource's traffic, by direction.
struct Traffic {
    rm_to_cem: BTreeSet<String>,
    cem_to_rm: BTreeSet<String>,
}

fn message_id(msg: &Value) -> Option<String> {
    msg["message_id"].as_str().map(str::to_string)
}

fn traffic_log(path: &Path, rid: &str) -> Traffic {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Traffic {
        rm_to_cem: BTreeSet::new(),
        cem_to_rm: BTreeSet::new(),
    };
    // The last line may still be half written.
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["resource"] != rid || v["msg"]["message_type"] == "ReceptionStatus" {
            continue;
        }
        let Some(id) = message_id(&v["msg"]) else {
            continue;
        };
        match v["dir"].as_str() {
            Some("rm>cem") => out.rm_to_cem.insert(id),
            Some("cem>rm") => out.cem_to_rm.insert(id),
            _ => false,
        };
    }
    out
}

// ----------------------------------------------------------------------------------------
// A CEM that stops reading: the demo CEM process, SIGSTOPped
// ----------------------------------------------------------------------------------------

/// `s2gw cem` (the demo CEM) as a child process on a free loopback port.
pub struct DemoCem {
    child: tokio::process::Child,
    /// Its log lines.
    pub lines: Queue<String>,
    /// Where it listens.
    pub port: u16,
}

impl DemoCem {
    /// Start it and wait until it listens.
    pub async fn start() -> DemoCem {
        Self::start_with(&[]).await
    }

    /// Start it with `args` after `--listen ADDR`, and wait until it listens.
    pub async fn start_with(args: &[&str]) -> DemoCem {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let command: Vec<&str> = ["cem", "--listen", &listen]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        let (child, lines) = spawn_logged(&command, &[], "demo-cem");
        let mut cem = DemoCem { child, lines, port };
        cem.lines
            .wait_for("the demo CEM to listen", |l| l.contains("listening"), GUARD)
            .await;
        cem
    }

    /// The URL for a ws-client link.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/s2/{{resource_id}}", self.port)
    }

    /// Send `signal` (STOP, CONT, …) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the demo CEM has exited");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }
}

/// `s2gw <args>` as a child process (killed on drop), its stdout and stderr lines
/// echoed with `tag` and queued to await.
fn spawn_logged(
    args: &[&str],
    env: &[(&str, &str)],
    tag: &'static str,
) -> (tokio::process::Child, Queue<String>) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_s2gw"))
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `s2gw {}`: {e}", args.join(" ")));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{tag}] {line}");
                let _ = tx.send(super::strip_ansi(&line));
            }
        });
    }
    (child, Queue::new(rx))
}

/// `s2gw cem --mqtt` (a cloud CEM worker of group `s2gw-cems`) as a child process.
pub struct CemWorker {
    child: tokio::process::Child,
    /// Its log lines.
    pub lines: Queue<String>,
}

impl CemWorker {
    /// The workers' shared subscription group.
    pub const GROUP: &'static str = "s2gw-cems";

    /// Start worker `name` for the gateways under `bases` and wait until it takes offers
    /// (its shared subscription is in place: a gateway started after this reaches it).
    pub async fn start(broker: &Broker, name: &str, bases: &str) -> CemWorker {
        let mqtt = format!("127.0.0.1:{}", broker.port);
        let args = [
            "cem",
            "--mqtt",
            &mqtt,
            "--group",
            Self::GROUP,
            "--bases",
            bases,
            "--name",
            name,
            "--mqtt-user",
            MQTT_USER,
        ];
        // The worker's own lines only: the demo CEM's line per instruction status, from
        // a thousand sessions, would be queued here unread for the whole run.
        let env = [
            ("S2GW_CEM_MQTT_PASSWORD", MQTT_PASSWORD),
            ("RUST_LOG", "warn,s2gw::cem::worker=info"),
        ];
        let (child, lines) = spawn_logged(&args, &env, "cem-worker");
        let mut worker = CemWorker { child, lines };
        worker
            .lines
            .wait_for(
                "the CEM worker to take offers",
                |l| l.contains("taking offers"),
                GUARD,
            )
            .await;
        worker
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the CEM worker has exited")
    }

    /// SIGKILL: no orderly stop, the broker publishes its will.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("cannot kill the CEM worker");
    }
}

/// The gateway with a simulated PV on the demo CEM, with the shortest dead-peer
/// detection the config allows (ping every 50 s, dead after 51 s): the CEM curtails it,
/// then stops (SIGSTOP). Returns (time until the link counted as lost, time until the
/// PV was released), both from the SIGSTOP.
pub async fn stopped_cem_released() -> (Duration, Duration) {
    let cem = DemoCem::start().await;
    let config = format!(
        "[gateway]\nname = \"s2gw-faults\"\nstate_dir = \"@STATE_DIR@\"\n\n\
         [cem.demo]\nurl = \"{}\"\nping_interval_s = 50\ndead_after_s = 51\n\n{}",
        cem.url(),
        sim_pv("pv", "demo", "control_types = [\"PEBC\"]\n")
    );
    let mut daemon = Daemon::start(&config);
    // The demo curtails first: the gateway has something to release.
    daemon
        .wait_log(
            "the demo CEM's first instruction",
            |l| l.contains("instruction carried out"),
            Duration::from_secs(60),
        )
        .await;
    cem.signal("STOP");
    let stopped = Instant::now();
    daemon
        .wait_log(
            "the link to count as lost",
            |l| l.contains("CEM link lost"),
            Duration::from_secs(120),
        )
        .await;
    let lost = stopped.elapsed();
    daemon
        .wait_log(
            "the PV to be released",
            |l| l.contains("device released"),
            SOON,
        )
        .await;
    let released = stopped.elapsed();
    cem.signal("CONT");
    daemon.assert_running();
    (lost, released)
}

// ----------------------------------------------------------------------------------------
// A full disk under state_dir and the traffic log
// ----------------------------------------------------------------------------------------

/// A small tmpfs, mounted for the test (as root) and unmounted when dropped.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mount `size` (such as "256k") of tmpfs on a fresh directory.
    pub fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .expect("cannot run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (the full-disk test runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    /// The mount point.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Fill it, leaving about `free` bytes.
    pub fn fill_leaving(&self, free: u64) {
        let stat = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(self.dir.path())
            .output()
            .unwrap();
        let avail: u64 = String::from_utf8_lossy(&stat.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df says nothing");
        let filler = vec![0u8; avail.saturating_sub(free) as usize];
        std::fs::write(self.dir.path().join("filler"), filler).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The gateway with `state_dir` and the traffic log on a tmpfs with a few KiB left: the
/// traffic log fills it. Once the gateway complained, the CEM goes on for `go_on`
/// PowerMeasurements and one instruction, which must SUCCEED. Returns the gateway's log
/// lines about the disk.
pub async fn full_disk(go_on: u32) -> Vec<String> {
    let disk = SmallDisk::mount("256k");
    let mut cem = TestCem::start(&[ProtocolVersion::V0_0_2_BETA]).await;
    let dir = disk.path();
    std::fs::create_dir(dir.join("state")).unwrap();
    let config = format!(
        "[gateway]\nname = \"s2gw-faults\"\nstate_dir = \"{d}/state\"\n\
         traffic_log = \"{d}/state/traffic.s2log\"\n\n[cem.test]\nurl = \"{}\"\n\n{}",
        cem.url(),
        sim_pv("pv", "test", ""),
        d = dir.display()
    );
    disk.fill_leaving(4096);
    let mut daemon = Daemon::start(&config);
    let mut conn = cem.next_conn(GUARD).await;
    conn.handshake().await;
    conn.select_ready(ControlType::NotControllable).await;
    let is_complaint = |l: &str| l.contains("traffic log") || l.contains("No space");
    daemon
        .wait_log("the gateway to notice the full disk", is_complaint, SOON)
        .await;
    conn.events().clear();
    for n in 0..go_on {
        conn.wait_power(
            &format!("PowerMeasurement {n} on a full disk"),
            |_| true,
            SOON,
        )
        .await;
    }
    let constraints = conn.select_pebc(SOON).await;
    let id = limit(&mut conn, &constraints, 2000.0).await;
    conn.wait_instruction_status(id, InstructionStatus::Succeeded, SOON)
        .await;
    daemon.assert_running();
    daemon
        .logs()
        .into_iter()
        .filter(|l| is_complaint(l))
        .collect()
}
