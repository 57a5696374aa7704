//! MQTT payloads on every topic the daemon subscribes to, through a real mosquitto.
//!
//! The daemon runs in-process (`Gateway::start`) with a device of each MQTT profile, a
//! sim device, a CEM link over MQTT and a native RM over MQTT, against a mosquitto this
//! target starts on a free loopback port. Which topics the daemon subscribes to is read
//! from mosquitto's own log (`Received SUBSCRIBE`), so a new subscription is fuzzed
//! without anyone listing it here; wildcards are filled with the configured ids or
//! random levels. Payloads are mutations of what the daemon itself publishes at start
//! (state, discovery, S2 session state), of device-style JSON and of s2-kit's
//! every-message corpus, sent retained or not.
//!
//! Liveness: every 16th input ends with a bridge request the daemon must answer within
//! 5 s; a panic in any of its tasks is counted by the runner's panic hook.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use s2gw::gateway::Gateway;
use s2gw_core::CancellationToken;
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, mpsc};

use crate::mutate::draw;
use crate::runner::Target;

const BASE: &str = "fz";

/// Ids the daemon's devices have, for wildcard levels.
const IDS: [&str; 7] = ["shelly", "tasmota", "evse", "generic", "dw", "hhp", "sim"];

/// One input: a payload on a topic.
#[derive(Debug)]
pub struct Publish {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Whether it is sent retained.
    pub retain: bool,
}

/// The broker, the daemon and the fuzzer's client.
pub struct Mqtt {
    runtime: Runtime,
    _broker: Broker,
    client: AsyncClient,
    answers: Arc<Mutex<mpsc::Receiver<()>>>,
    topics: Vec<String>,
    corpus: Vec<String>,
    gateway: Option<Gateway>,
    probes: u64,
    sent: u64,
}

/// Inputs between two liveness probes.
const PROBE_EVERY: u64 = 16;

struct Broker {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// A mosquitto that owns its port. A port picked free and released can be taken by
    /// another process before mosquitto binds it (the Modbus target opens a listener per
    /// input), so a start counts only once mosquitto's own log says it listens and the
    /// process is still there; else another port is tried.
    fn start() -> anyhow::Result<Self> {
        for _ in 0..5 {
            let mut broker = Self::spawn()?;
            if broker.listening()? {
                return Ok(broker);
            }
        }
        anyhow::bail!("mosquitto did not start listening on any of five ports")
    }

    fn spawn() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = dir.path().display();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nallow_anonymous true\nmax_queued_messages 100000\n\
                 log_dest file {d}/mosquitto.log\nlog_type subscribe\nlog_type error\n\
                 log_type warning\nlog_type information\nlistener {port} 127.0.0.1\n"
            ),
        )?;
        let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("mosquitto is missing (apt-get install mosquitto): {e}")
            })?;
        Ok(Self { dir, child, port })
    }

    /// Waits for mosquitto's "Opening ipv4 listen socket on port P" and "running" (it
    /// bound the port) while it runs; `false` when it exited (the port was taken).
    fn listening(&mut self) -> anyhow::Result<bool> {
        let opened = format!("listen socket on port {}", self.port);
        for _ in 0..500 {
            if self.child.try_wait()?.is_some() {
                return Ok(false);
            }
            let log = self.log();
            if log.contains(&opened) && log.contains(" running") && !log.contains("Error") {
                return Ok(true);
            }
            // mosquitto's log file is the only event there is to wait for.
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(false)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Topic filters the daemon (client id `s2gw-fz`) subscribed to: `log_type subscribe`
    /// writes `<time>: <client id> <qos> <filter>` per subscription.
    fn subscriptions(&self) -> Vec<String> {
        let mut topics = Vec::new();
        for line in self.log().lines() {
            let mut fields = line.split_whitespace().skip(1);
            if let (Some("s2gw-fz"), Some(_qos), Some(filter)) =
                (fields.next(), fields.next(), fields.next())
                && !topics.iter().any(|t| t == filter)
            {
                topics.push(filter.to_string());
            }
        }
        topics
    }
}

fn config(port: u16, state: &Path) -> String {
    let rid = |n: u8| format!("3f2504e0-4f89-41d3-9a0c-0305e82c33{n:02}");
    let mut text = format!(
        "[gateway]\nstate_dir = \"{}\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
         base_topic = \"{BASE}\"\nclient_id = \"s2gw-fz\"\nreconnect_min_ms = 50\n\
         [cem.broker]\ntransport = \"mqtt\"\n",
        state.display()
    );
    let devices = [
        (
            "shelly",
            "mqtt-shelly-gen2-switch",
            "[device.mqtt]\ndevice = \"shelly\"\n",
        ),
        (
            "tasmota",
            "mqtt-tasmota-plug",
            "[device.mqtt]\ndevice = \"tasmota\"\n",
        ),
        (
            "evse",
            "mqtt-openevse",
            "[device.mqtt]\ndevice = \"evse\"\n",
        ),
        (
            "dw",
            "mqtt-dishwasher",
            "[device.mqtt]\ndevice = \"dw\"\npower = { topic = \"plug-dw/status/switch:0\", path = \"apower\" }\n",
        ),
        (
            "hhp",
            "mqtt-hybrid-heat-pump",
            "[device.mqtt]\ndevice = \"hhp\"\n",
        ),
        ("sim", "sim-battery", "[device.sim]\nmodel = \"battery\"\n"),
    ];
    for (n, (id, profile, section)) in devices.iter().enumerate() {
        text += &format!(
            "[[device]]\nid = \"{id}\"\nresource_id = \"{}\"\nprofile = \"{profile}\"\n\
             cem = \"broker\"\n{section}",
            rid(n as u8)
        );
    }
    text += &format!(
        "[[native]]\nid = \"native\"\nresource_id = \"{}\"\ncem = \"broker\"\ntransport = \"mqtt\"\n",
        rid(90)
    );
    text
}

impl Mqtt {
    /// Starts mosquitto, the daemon and the fuzzer's client, and learns the daemon's
    /// subscriptions.
    pub fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let broker = Broker::start()?;
        let state = broker.dir.path().join("state");
        let text = config(broker.port, &state);
        let loaded = s2gw::config::load_str(&text, &broker.dir.path().join("s2gw.toml"))
            .map_err(|e| anyhow::anyhow!("the MQTT target's config: {e}"))?;
        let (client, answers, seen, gateway) = runtime.block_on(async {
            let gateway = Gateway::start(&loaded, CancellationToken::new()).await?;
            let (client, answers, seen) = connect(broker.port).await?;
            anyhow::Ok((client, answers, seen, gateway))
        })?;
        let mut target = Self {
            runtime,
            _broker: broker,
            client,
            answers: Arc::new(Mutex::new(answers)),
            topics: Vec::new(),
            corpus: Vec::new(),
            gateway: Some(gateway),
            probes: 0,
            sent: 0,
        };
        // The daemon is up once it answers; by then it has subscribed and published.
        target.probe().map_err(|e| anyhow::anyhow!(e))?;
        target.topics = target._broker.subscriptions();
        if target.topics.is_empty() {
            anyhow::bail!("mosquitto's log shows no subscription of the daemon");
        }
        target.corpus = corpus(&seen);
        Ok(target)
    }

    /// A bridge request the daemon must answer within 5 s.
    fn probe(&mut self) -> Result<(), String> {
        self.probes += 1;
        let (client, answers) = (self.client.clone(), self.answers.clone());
        self.runtime.block_on(async move {
            let mut answers = answers.lock().await;
            while answers.try_recv().is_ok() {}
            client
                .publish(
                    format!("{BASE}/bridge/request/fuzzprobe"),
                    QoS::AtLeastOnce,
                    false,
                    "{}",
                )
                .await
                .map_err(|e| format!("the fuzzer's client: {e}"))?;
            match tokio::time::timeout(Duration::from_secs(5), answers.recv()).await {
                Ok(Some(())) => Ok(()),
                _ => Err("the daemon did not answer a bridge request within 5 s".to_string()),
            }
        })
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        if let Some(gateway) = self.gateway.take() {
            self.runtime.block_on(gateway.stop(Duration::from_secs(2)));
        }
    }
}

/// The fuzzer's client: bridge answers go to the channel; the first second of what the
/// daemon publishes (retained state and discovery included) is kept as corpus.
async fn connect(port: u16) -> anyhow::Result<(AsyncClient, mpsc::Receiver<()>, Vec<String>)> {
    let mut options = MqttOptions::new("fuzzer", "127.0.0.1", port);
    // As large as the daemon's own limit: a fuzzed payload must reach the broker, not
    // break the fuzzer's connection.
    options.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut events) = AsyncClient::new(options, 1024);
    let probe_answers = format!("{BASE}/bridge/response/fuzzprobe");
    client.subscribe(&probe_answers, QoS::AtLeastOnce).await?;
    let resubscriber = client.clone();
    client.subscribe("#", QoS::AtMostOnce).await?;
    let (answered, answers) = mpsc::channel(16);
    let (seen_tx, mut seen_rx) = mpsc::channel(4096);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic.ends_with("bridge/response/fuzzprobe") {
                        let _ = answered.try_send(());
                    } else {
                        let _ = seen_tx.try_send(String::from_utf8_lossy(&p.payload).into_owned());
                    }
                }
                // A clean session forgets the subscription: say it again on every
                // reconnect, so a dropped connection cannot pass for a dead daemon.
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = resubscriber.try_subscribe(probe_answers.clone(), QoS::AtLeastOnce);
                }
                Ok(_) => {}
                // The broker lives as long as the target; a reconnect is rumqttc's job.
                Err(error) => {
                    eprintln!("mqtt target: the fuzzer's own connection: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let mut seen = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Some(text)) = tokio::time::timeout_at(until, seen_rx.recv()).await {
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    // The corpus is in; the fuzzer's own payloads need not come back.
    client.unsubscribe("#").await?;
    Ok((client, answers, seen))
}

/// What the daemon published, device-style JSON, and s2-kit's every message.
fn corpus(seen: &[String]) -> Vec<String> {
    let mut corpus: Vec<String> = seen.to_vec();
    corpus.extend(
        [
            r#"{"id":0,"source":"init","output":true,"apower":812.3,"voltage":231.2,"current":3.6,"aenergy":{"total":12000.2}}"#,
            r#"{"StatusSNS":{"ENERGY":{"Power":812,"Total":12.0,"Today":1.2}},"POWER":"ON"}"#,
            r#"{"state":"online"}"#,
            r#"{"state":"offline"}"#,
            r#"{"cem_control":"ON"}"#,
            r#"{"cem_control":"OFF"}"#,
            "online",
            "offline",
            "ON",
            "1234.5",
        ]
        .map(String::from),
    );
    corpus.extend(
        s2_kit::testing::every_message()
            .iter()
            .map(s2gw_core::s2::encode),
    );
    corpus
}

impl Target for Mqtt {
    type Input = Publish;

    fn generate(&mut self, rng: &mut StdRng) -> Publish {
        let filter = &self.topics[rng.random_range(0..self.topics.len())];
        let topic = filter
            .split('/')
            .map(|level| match level {
                "+" => IDS[rng.random_range(0..IDS.len())].to_string(),
                "#" => format!("x{}", rng.random_range(0..4u8)),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/");
        let (_, payload) = draw(rng, &self.corpus, &[]);
        Publish {
            topic,
            payload,
            retain: rng.random_bool(0.1),
        }
    }

    fn execute(&mut self, input: &Publish) -> Result<(), String> {
        let client = self.client.clone();
        let (topic, payload, retain) = (input.topic.clone(), input.payload.clone(), input.retain);
        self.runtime.block_on(async move {
            client
                .publish(topic, QoS::AtLeastOnce, retain, payload)
                .await
                .map_err(|e| format!("the fuzzer's client: {e}"))
        })?;
        self.sent += 1;
        // A round trip per input would make the broker the bottleneck: one in
        // PROBE_EVERY, after the payloads before it (one connection keeps their order).
        if self.sent.is_multiple_of(PROBE_EVERY) {
            self.probe()?;
        }
        Ok(())
    }

    fn notes(&self) -> String {
        format!(
            "{} topic filters the daemon subscribes to, {} bridge probes answered",
            self.topics.len(),
            self.probes
        )
    }
}
