//! MQTT: one mosquitto per test, a client for the test's side, and a CEM on MQTT.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use s2_kit::session::{CemConfig, CemSession};
use s2_kit::types::common::SessionRequestType;
use s2_kit::types::{ProtocolVersion, Timestamp};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::session::{Cmd, Pipes, drain_events, record_inbound, record_transmit};
use super::{Carrier, CemSide, GUARD, Queue, within};

/// The broker's user for the gateway and the test clients.
pub const MQTT_USER: &str = "gateway";
/// Its password (in the broker's password file, and in [`Broker::password_file`]).
pub const MQTT_PASSWORD: &str = "s3cret-pass";

/// Debian's mosquitto on a free loopback port, with a password file; killed on drop.
pub struct Broker {
    dir: tempfile::TempDir,
    /// The plain listener's port.
    pub port: u16,
    child: Child,
}

/// Where Debian puts mosquitto (`/usr/sbin` is not on every user's PATH).
fn mosquitto_binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if sbin.exists() {
        return sbin;
    }
    PathBuf::from("mosquitto")
}

impl Broker {
    /// Start one; fails (never skips) without mosquitto.
    pub async fn start() -> Broker {
        Self::start_with(false, true).await
    }

    /// Start one that logs only warnings and errors: for a bench's traffic, a log line
    /// per packet would cost the broker more than the packet.
    pub async fn start_quiet() -> Broker {
        Self::start_with(false, false).await
    }

    /// Start one that keeps persistent sessions and their queued QoS 1 messages on disk
    /// over a restart ([`Broker::stop`], [`Broker::start_again`]).
    pub async fn start_persistent() -> Broker {
        Self::start_with(true, true).await
    }

    async fn start_with(persistent: bool, log_all: bool) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let passwd = dir.path().join("passwd");
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg("-c")
            .arg(&passwd)
            .arg(MQTT_USER)
            .arg(MQTT_PASSWORD)
            .status()
            .expect("mosquitto_passwd is missing: apt-get install mosquitto (.ci/run does)");
        assert!(status.success(), "mosquitto_passwd failed");
        std::fs::write(
            dir.path().join("gateway.password"),
            format!("{MQTT_PASSWORD}\n"),
        )
        .unwrap();
        let d = dir.path().display();
        let persistence = if persistent {
            format!("persistence true\npersistence_location {d}/\n")
        } else {
            String::new()
        };
        let log_types = if log_all {
            "log_type all\n"
        } else {
            "log_type error\nlog_type warning\n"
        };
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "user root\nallow_anonymous false\npassword_file {d}/passwd\n\
                 max_queued_messages 100000\nlog_dest file {d}/mosquitto.log\n{log_types}\
                 set_tcp_nodelay true\n{persistence}listener {port} 127.0.0.1\n"
            ),
        )
        .unwrap();
        let child = spawn_mosquitto(dir.path());
        let broker = Broker { dir, port, child };
        broker.wait_ready().await;
        broker
    }

    /// SIGTERM, as `systemctl restart mosquitto` does, and wait until it exited (a
    /// persistent broker saves its sessions on the way out).
    pub async fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + GUARD;
        // No async exit notification for a std child: polling its status is the wait.
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "mosquitto did not stop"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Start it again on the same port with the same configuration (after
    /// [`Broker::stop`]).
    pub async fn start_again(&mut self) {
        self.child = spawn_mosquitto(self.dir.path());
        self.wait_ready().await;
    }

    /// Bounded connect attempts: the broker is up once one succeeds.
    async fn wait_ready(&self) {
        for _ in 0..500 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            // Polling a port that is not open yet has no event to await.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("mosquitto did not start: {}", self.log());
    }

    /// mosquitto's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// A file holding the gateway's password.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("gateway.password")
    }

    /// The daemon's `[mqtt]` section for this broker (password from the file).
    pub fn mqtt_section(&self, base: &str) -> String {
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {}\nbase_topic = \"{base}\"\n\
             client_id = \"s2gw-{base}\"\nusername = \"{MQTT_USER}\"\npassword_file = \"{}\"\n\
             reconnect_min_ms = 50\nreconnect_max_s = 2\n",
            self.port,
            self.password_file().display()
        )
    }
}

fn spawn_mosquitto(dir: &std::path::Path) -> Child {
    Command::new(mosquitto_binary())
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto is missing: apt-get install mosquitto (.ci/run does)")
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message the test's MQTT client received.
#[derive(Debug, Clone)]
pub struct MqttMsg {
    /// Its topic.
    pub topic: String,
    /// Its payload, as text.
    pub text: String,
    /// Whether the broker delivered it as retained.
    pub retained: bool,
}

impl MqttMsg {
    /// The payload as JSON (Null when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// A plain MQTT client on the test's side: Home Assistant, a user, a CEM.
pub struct MqttPeer {
    client: rumqttc::AsyncClient,
    /// Every message received, to await by predicate.
    pub messages: Queue<MqttMsg>,
    subacks: mpsc::UnboundedReceiver<()>,
    task: JoinHandle<()>,
}

impl MqttPeer {
    /// Connect as `id` and subscribe to `filters` (awaiting the SUBACKs, so nothing
    /// published afterwards is missed); `will` is an LWT (topic, payload), retained.
    pub async fn connect(
        broker: &Broker,
        id: &str,
        filters: &[&str],
        will: Option<(&str, &str)>,
    ) -> MqttPeer {
        Self::connect_with(broker, id, filters, will, true).await
    }

    /// Like [`MqttPeer::connect`]; `clean: false` keeps a persistent session (its
    /// subscriptions and queued QoS 1 messages survive a broker restart).
    pub async fn connect_with(
        broker: &Broker,
        id: &str,
        filters: &[&str],
        will: Option<(&str, &str)>,
        clean: bool,
    ) -> MqttPeer {
        use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
        options.set_credentials(MQTT_USER, MQTT_PASSWORD);
        options.set_clean_session(clean);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(32 * 1024 * 1024, 32 * 1024 * 1024);
        if let Some((topic, payload)) = will {
            options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
        }
        let (client, eventloop) = AsyncClient::new(options, 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (sub_tx, subacks) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(mqtt_pump(eventloop, tx, sub_tx, ready_tx));
        within("the test's MQTT client to connect", GUARD, ready_rx)
            .await
            .unwrap();
        let mut peer = MqttPeer {
            client,
            messages: Queue::new(rx),
            subacks,
            task,
        };
        for filter in filters {
            peer.subscribe(filter).await;
        }
        peer
    }

    /// Subscribe (QoS 1) and wait for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        within("a SUBACK", GUARD, self.subacks.recv())
            .await
            .unwrap();
    }

    /// Publish with QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.into())
            .await
            .unwrap();
    }

    /// The first message on `topic` (received or to come) whose JSON satisfies `pred`.
    pub async fn wait_json(
        &mut self,
        what: &str,
        topic: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> MqttMsg {
        self.messages
            .wait_for(what, |m| m.topic == topic && pred(&m.json()), GUARD)
            .await
    }

    /// Drop the connection without DISCONNECT (the broker publishes the LWT).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for MqttPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn mqtt_pump(
    mut eventloop: rumqttc::EventLoop,
    tx: mpsc::UnboundedSender<MqttMsg>,
    subacks: mpsc::UnboundedSender<()>,
    ready: oneshot::Sender<()>,
) {
    use rumqttc::{Event, Packet};
    let mut ready = Some(ready);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = subacks.send(());
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = tx.send(MqttMsg {
                    topic: p.topic,
                    text: String::from_utf8_lossy(&p.payload).to_string(),
                    retained: p.retain,
                });
            }
            Ok(_) => {}
            // The test fails on its own guards; here, only keep a test pace.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A CEM that lives on MQTT (docs/s2-over-mqtt.md, the peer of a gateway's RM side):
/// one s2-kit `CemSession` per session the gateway opens on `<base>/s2/<id>/state`.
///
/// The session API is [`CemSide`]'s, which it dereferences to; its events follow every
/// session in turn.
pub struct MqttCem {
    side: CemSide,
    /// Sessions started so far.
    pub sessions: watch::Receiver<u32>,
    task: JoinHandle<()>,
}

impl MqttCem {
    /// Connect for resource `resource_id` under `base`, with presence and its LWT.
    pub async fn start(broker: &Broker, base: &str, resource_id: &str) -> MqttCem {
        Self::start_with(broker, base, resource_id, true).await
    }

    /// Like [`MqttCem::start`], on a persistent MQTT session (`clean: false`) and
    /// without an LWT: mosquitto publishes every client's will when it shuts down, so a
    /// CEM with one ends its S2 session at every broker restart (peer offline); this one
    /// shows what the persistent session itself carries over a restart.
    pub async fn start_persistent(broker: &Broker, base: &str, resource_id: &str) -> MqttCem {
        Self::start_with(broker, base, resource_id, false).await
    }

    async fn start_with(broker: &Broker, base: &str, resource_id: &str, clean: bool) -> MqttCem {
        let prefix = format!("{base}/s2/{resource_id}");
        let peer_topic = format!("{prefix}/peer");
        let peer = MqttPeer::connect_with(
            broker,
            &format!("cem-{resource_id}"),
            &[&format!("{prefix}/rm"), &format!("{prefix}/state")],
            clean.then_some((peer_topic.as_str(), r#"{"state":"offline"}"#)),
            clean,
        )
        .await;
        let (side, cmd_rx, pipes) = CemSide::new(Carrier::Mqtt);
        let (sessions_tx, sessions) = watch::channel(0);
        let pipes = CemPipes {
            side: pipes,
            sessions: sessions_tx,
        };
        let task = tokio::spawn(run_mqtt_cem(peer, prefix, cmd_rx, pipes));
        MqttCem {
            side,
            sessions,
            task,
        }
    }
}

impl Deref for MqttCem {
    type Target = CemSide;

    fn deref(&self) -> &CemSide {
        &self.side
    }
}

impl DerefMut for MqttCem {
    fn deref_mut(&mut self) -> &mut CemSide {
        &mut self.side
    }
}

impl Drop for MqttCem {
    fn drop(&mut self) {
        // Stopped before `side` runs the oracles on what it saw.
        self.task.abort();
    }
}

/// Where an MQTT CEM's task reports.
struct CemPipes {
    side: Pipes,
    sessions: watch::Sender<u32>,
}

/// The CEM's session state as the gateway's `state` topic drives it.
struct MqttCemState {
    session: Option<CemSession>,
    session_id: Option<String>,
    /// RM messages that came before the `state` that opened their session.
    early: Vec<String>,
    present: bool,
}

async fn run_mqtt_cem(
    mut peer: MqttPeer,
    prefix: String,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    pipes: CemPipes,
) {
    let (rm_topic, cem_topic) = (format!("{prefix}/rm"), format!("{prefix}/cem"));
    let (state_topic, peer_topic) = (format!("{prefix}/state"), format!("{prefix}/peer"));
    let mut st = MqttCemState {
        session: None,
        session_id: None,
        early: Vec::new(),
        present: false,
    };
    loop {
        if let Some(session) = st.session.as_mut() {
            while let Some(out) = session.poll_transmit() {
                record_transmit(&pipes.side.log, &out);
                peer.publish(&cem_topic, out.text, false).await;
            }
            drain_events(session, &pipes.side);
        }
        let wake = st
            .session
            .as_ref()
            .and_then(CemSession::poll_timeout)
            .map(|t| Duration::from(t.saturating_duration_since(Timestamp::now())))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            msg = peer.messages.rx.recv() => {
                let Some(msg) = msg else { return };
                if msg.topic == state_topic {
                    if !st.present {
                        // The gateway is subscribed once its state is there: now say hello.
                        st.present = true;
                        peer.publish(&peer_topic, r#"{"state":"online"}"#, true).await;
                    }
                    on_gateway_state(&mut st, &msg.json(), &pipes);
                } else if msg.topic == rm_topic {
                    on_rm_text(&mut st, &msg.text, &pipes);
                }
            }
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return };
                run_cmd(st.session.as_mut(), cmd);
            }
            () = tokio::time::sleep(wake) => {
                if let Some(session) = st.session.as_mut() {
                    session.handle_timeout(Timestamp::now());
                }
            }
        }
    }
}

fn on_gateway_state(st: &mut MqttCemState, state: &Value, pipes: &CemPipes) {
    let open = state["state"] == "open";
    let id = state["session"].as_str().map(str::to_string);
    if open && id.is_some() && id != st.session_id {
        if let Some(mut old) = st.session.take() {
            old.transport_closed(Timestamp::now());
        }
        let mut session = CemSession::new(
            CemConfig::default()
                .supporting([ProtocolVersion::V0_0_2_BETA, ProtocolVersion::V1_0_0]),
        );
        session.open(Timestamp::now());
        st.session = Some(session);
        st.session_id = id;
        pipes.sessions.send_modify(|n| *n += 1);
        for text in std::mem::take(&mut st.early) {
            on_rm_text(st, &text, pipes);
        }
    } else if !open {
        if let Some(mut old) = st.session.take() {
            old.transport_closed(Timestamp::now());
            while let Some(event) = old.poll_event() {
                let _ = pipes.side.events.send(event);
            }
        }
        st.session_id = None;
        st.early.clear();
    }
}

fn on_rm_text(st: &mut MqttCemState, text: &str, pipes: &CemPipes) {
    let Some(session) = st.session.as_mut() else {
        st.early.push(text.to_string());
        return;
    };
    record_inbound(&pipes.side, text);
    session.handle_text(text, Timestamp::now());
}

fn run_cmd(session: Option<&mut CemSession>, cmd: Cmd) {
    let now = Timestamp::now();
    let none = || "no session is open".to_string();
    match cmd {
        Cmd::Select(control_type, reply) => {
            let r = session.ok_or_else(none).and_then(|s| {
                s.select_control_type(control_type, now)
                    .map_err(|e| e.to_string())
            });
            let _ = reply.send(r);
        }
        Cmd::Instruct(message, reply) => {
            let r = session
                .ok_or_else(none)
                .and_then(|s| s.instruct(*message, now).map_err(|e| e.to_string()));
            let _ = reply.send(r);
        }
        Cmd::Revoke(object_type, id, reply) => {
            let r = session
                .ok_or_else(none)
                .and_then(|s| s.revoke(object_type, id, now).map_err(|e| e.to_string()));
            let _ = reply.send(r);
        }
        Cmd::Terminate(reply) => {
            let r = session.ok_or_else(none).and_then(|s| {
                s.request_session(SessionRequestType::Terminate, Some("test over".into()), now)
                    .map_err(|e| e.to_string())
            });
            let _ = reply.send(r);
        }
        Cmd::Raw(_, reply) => {
            let _ = reply.send(Err("raw frames are not supported over MQTT".into()));
        }
    }
}
