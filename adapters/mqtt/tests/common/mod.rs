//! Shared test helpers: one mosquitto per test on free loopback ports (plain with a
//! password file, and TLS with a CA made at test time), an observer client, guarded
//! waits.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use s2gw_mqtt::{MqttConfig, Secret, TlsConfig};
use tokio::sync::mpsc;

/// A failure guard, never a synchronisation: every await in a test is bounded by it.
pub const GUARD: Duration = Duration::from_secs(15);

pub const USER: &str = "gateway";
pub const PASSWORD: &str = "s3cret-pass";

pub async fn guard<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "s2gw_mqtt=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A free loopback port: bind port 0, note the port, release it.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One mosquitto with a password file, persistence, and a TLS listener.
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub tls_port: u16,
    pub ca_file: PathBuf,
    conf: PathBuf,
    child: Option<Child>,
}

impl Broker {
    pub async fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let (port, tls_port) = (free_port(), free_port());
        let ca_file = write_certs(&dir);
        let passwd = dir.path().join("passwd");
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg("-c")
            .arg(&passwd)
            .arg(USER)
            .arg(PASSWORD)
            .status()
            .expect("mosquitto_passwd (apt-get install mosquitto)");
        assert!(status.success());
        let d = dir.path().display();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\n\
                 allow_anonymous false\n\
                 password_file {d}/passwd\n\
                 persistence true\n\
                 persistence_location {d}/\n\
                 autosave_interval 1\n\
                 max_queued_messages 1000000\n\
                 max_inflight_messages 100\n\
                 log_dest file {d}/mosquitto.log\n\
                 log_type all\n\
                 set_tcp_nodelay true\n\
                 listener {port} 127.0.0.1\n\
                 listener {tls_port} 127.0.0.1\n\
                 cafile {d}/ca.pem\n\
                 certfile {d}/server.pem\n\
                 keyfile {d}/server.key\n"
            ),
        )
        .unwrap();
        let mut broker = Broker {
            dir,
            port,
            tls_port,
            ca_file,
            conf,
            child: None,
        };
        broker.spawn().await;
        broker
    }

    async fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Bounded retries of a TCP connect: the broker is listening once one succeeds.
    async fn wait_ready(&self) {
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", self.tls_port))
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("mosquitto did not start: {}", self.log());
    }

    /// SIGTERM (mosquitto saves its persistence database) and wait for the exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).unwrap();
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            guard(
                "mosquitto to exit",
                tokio::task::spawn_blocking(move || child.wait()),
            )
            .await
            .unwrap()
            .unwrap();
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// A gateway config for the plain listener, with the password and fast reconnects.
    pub fn config(&self, base: &str) -> MqttConfig {
        let mut config = MqttConfig::new("127.0.0.1");
        config.port = Some(self.port);
        config.base_topic = base.to_string();
        config.client_id = Some(format!("gw-{base}"));
        config.username = Some(USER.to_string());
        config.password = Some(Secret::new(PASSWORD));
        config.reconnect_min_ms = 20;
        config.reconnect_max_s = 1;
        config
    }

    /// The same over TLS, trusting the test CA.
    pub fn tls_config(&self, base: &str) -> MqttConfig {
        let mut config = self.config(base);
        config.host = "localhost".to_string();
        config.port = Some(self.tls_port);
        config.tls = Some(TlsConfig {
            ca_file: Some(self.ca_file.clone()),
            ..TlsConfig::default()
        });
        config
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CA and a server certificate for localhost and 127.0.0.1; returns the CA file.
fn write_certs(dir: &tempfile::TempDir) -> PathBuf {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &*ca)
        .unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(dir.path().join("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, AsRef::<rcgen::Certificate>::as_ref(&ca).pem()).unwrap();
    ca_file
}

/// A plain rumqttc client for the test's side: a subscriber that collects messages, or
/// a peer that publishes.
pub struct Peer {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<(String, Bytes, bool)>,
    /// Messages skipped while looking for another topic, kept in order for later.
    stash: std::collections::VecDeque<(String, Bytes, bool)>,
    task: tokio::task::JoinHandle<()>,
}

impl Peer {
    pub async fn connect(broker: &Broker, id: &str, filters: &[&str]) -> Peer {
        Self::connect_with(broker, id, filters, None, true).await
    }

    /// Connect; `will` is (topic, payload); `clean` false keeps a persistent session.
    pub async fn connect_with(
        broker: &Broker,
        id: &str,
        filters: &[&str],
        will: Option<(&str, &str)>,
        clean: bool,
    ) -> Peer {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
        options.set_credentials(USER, PASSWORD);
        options.set_clean_session(clean);
        options.set_max_packet_size(32 * 1024 * 1024, 32 * 1024 * 1024);
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((topic, payload)) = will {
            options.set_last_will(LastWill::new(topic, payload, QoS::AtLeastOnce, true));
        }
        let (client, eventloop) = AsyncClient::new(options, 100_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(pump(eventloop, tx, ready_tx));
        guard("the peer to connect", ready_rx).await.unwrap();
        for filter in filters {
            client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
        }
        Peer {
            client,
            rx,
            stash: Default::default(),
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .await
            .unwrap();
    }

    /// The next message on `topic`; messages on other topics are kept for later.
    pub async fn next_on(&mut self, topic: &str) -> (Bytes, bool) {
        if let Some(at) = self.stash.iter().position(|(t, _, _)| t == topic)
            && let Some((_, payload, retained)) = self.stash.remove(at)
        {
            return (payload, retained);
        }
        loop {
            let (t, payload, retained) = guard(&format!("a message on {topic}"), self.rx.recv())
                .await
                .expect("the peer stopped");
            if t == topic {
                return (payload, retained);
            }
            self.stash.push_back((t, payload, retained));
        }
    }

    /// The next message on `topic` that satisfies `pred`, as JSON.
    pub async fn json_where(
        &mut self,
        topic: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        loop {
            let (payload, _) = self.next_on(topic).await;
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&payload)
                && pred(&value)
            {
                return value;
            }
        }
    }

    /// Drop the connection without DISCONNECT.
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<(String, Bytes, bool)>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let _ = tx.send((p.topic, p.payload, p.retain));
            }
            Ok(_) => {}
            // Reconnect at a test pace (the broker may be restarting).
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
