//! S2 over MQTT through a real mosquitto: messages per second bus → MQTT → bus, and the
//! p50/p99 latency at 1,000 msg/s, beside mosquitto's own direct publish-to-subscribe
//! figures measured in the same run with a plain rumqttc client pair.
//!
//! The path measured: gateway A's CEM link (RM side on its bus, an s2-kit RmSession)
//! publishes on `<base>/s2/<id>/rm`; gateway B's native-RM slot (CEM side on its bus, an
//! s2-kit CemSession) receives it, checks it at its edge and hands it to its bus.
//!
//! Every gateway message carries its sequence number: the run fails if one is lost,
//! repeated or out of order (the one resource's order must hold), never on time; the
//! targets (≥ 50 % of mosquitto's direct rate, added p50 ≤ 0.2 ms and p99 ≤ 2 ms) are
//! printed as met or not.
//!
//! Run: `cargo bench -p s2gw-mqtt --bench roundtrip` (needs `mosquitto` on the PATH).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../../../tests/common/latency.rs"]
mod latency;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use latency::{report, verdict};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use s2_kit::session::{CemConfig, CemEvent, CemSession, RmConfig, RmEvent, RmSession};
use s2gw_core::s2::{Message, Timestamp};
use s2gw_core::{BusEvent, CancellationToken, Endpoint, EndpointPeer, Frame};
use s2gw_mqtt::{Mqtt, MqttConfig, MqttHandle, add_native_rm, spawn_cem_link};

const RID: &str = "6f1c2a9e-8d1b-4c55-9f0e-2b7a4d3c1e00";
/// Messages for the throughput runs: 20,000 under `cargo bench`; a smoke-sized run under
/// `cargo test` (no `--bench` argument), which proves the bench works without the wait.
fn throughput_n() -> usize {
    if full_run() { 20_000 } else { 500 }
}

/// Messages for the latency runs (one a millisecond): 5,000, or a smoke-sized run.
fn latency_n() -> usize {
    if full_run() { 5_000 } else { 200 }
}

fn full_run() -> bool {
    static FULL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FULL.get_or_init(|| std::env::args().any(|a| a == "--bench"))
}

struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn broker() -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("m.conf");
    std::fs::write(
        &conf,
        format!("user root\nallow_anonymous true\nset_tcp_nodelay true\nmax_queued_messages 1000000\nmax_inflight_messages 100\nlistener {port} 127.0.0.1\n"),
    )
    .unwrap();
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Broker {
                child,
                port,
                _dir: dir,
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("mosquitto did not start");
}

/// The `i`th measurement of a run: its value is `i`, so the receiving end can tell a
/// lost, repeated or reordered message from the payload alone.
fn measurement(i: usize) -> Frame {
    Frame::from_own_text(format!(
        r#"{{"message_type":"PowerMeasurement","message_id":"{}","measurement_timestamp":"{}","values":[{{"commodity_quantity":"ELECTRIC.POWER.3_PHASE_SYMMETRIC","value":{i}}}]}}"#,
        uuid::Uuid::new_v4(),
        Timestamp::now(),
    ))
    .unwrap()
}

/// The sequence number [`measurement`] put in a frame.
fn sequence(frame: &Frame) -> usize {
    match frame.message() {
        Message::PowerMeasurement(m) => m.values[0].value as usize,
        other => panic!("not a measurement: {other:?}"),
    }
}

/// How long B's bus may stay silent before the missing messages count as lost.
const LOST_AFTER: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- direct rumqttc pair

async fn direct_pair(
    port: u16,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(bytes::Bytes, Instant)>,
) {
    // Fresh ids per pair: a reused client id would take over the previous pair's session.
    static PAIR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PAIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let connect = |id: &str| {
        let mut o = MqttOptions::new(format!("{id}-{n}"), "127.0.0.1", port);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_keep_alive(Duration::from_secs(30));
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        let (client, mut eventloop) = AsyncClient::new(o, 100_000);
        eventloop.set_network_options(network);
        (client, eventloop)
    };
    let (sub, mut sub_loop) = connect("bench-sub");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    sub.subscribe("direct/t", QoS::AtLeastOnce).await.unwrap();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let _keep = sub;
        loop {
            match sub_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.payload, Instant::now()));
                }
                Ok(other) => {
                    if std::env::var_os("BENCH_DEBUG").is_some() {
                        eprintln!("sub: {other:?}");
                    }
                }
                Err(e) => {
                    eprintln!("sub: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
            }
        }
    });
    ready_rx.await.unwrap();
    let (publ, mut pub_loop) = connect("bench-pub");
    tokio::spawn(async move {
        loop {
            match pub_loop.poll().await {
                Ok(event) => {
                    if std::env::var_os("BENCH_DEBUG").is_some() {
                        eprintln!("pub: {event:?}");
                    }
                }
                Err(e) => {
                    eprintln!("pub: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });
    (publ, rx)
}

async fn direct_throughput(port: u16) -> f64 {
    let (publ, mut rx) = direct_pair(port).await;
    eprintln!("(direct pair connected)");
    let payload = measurement(0).text().to_string();
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..throughput_n() {
            publ.publish("direct/t", QoS::AtLeastOnce, false, payload.clone())
                .await
                .unwrap();
        }
        publ
    });
    for i in 0..throughput_n() {
        if tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .is_err()
        {
            panic!(
                "direct pair stalled after {i} of {} messages",
                throughput_n()
            );
        }
    }
    let rate = throughput_n() as f64 / start.elapsed().as_secs_f64();
    let _ = sender.await;
    rate
}

async fn direct_latency(port: u16) -> Vec<Duration> {
    let (publ, mut rx) = direct_pair(port).await;
    let text = measurement(0).text().to_string();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let s = sent.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0..latency_n() {
            tick.tick().await;
            let payload = format!("{i:08}{text}");
            s.lock().unwrap().insert(i, Instant::now());
            publ.publish("direct/t", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    });
    let mut out = Vec::with_capacity(latency_n());
    for _ in 0..latency_n() {
        let (payload, at) = rx.recv().await.unwrap();
        let i: usize = std::str::from_utf8(&payload[..8]).unwrap().parse().unwrap();
        let t0 = sent.lock().unwrap()[&i];
        out.push(at - t0);
    }
    out
}

// ---------------------------------------------------------------- through the gateway

struct Path {
    a_bus: EndpointPeer,
    b_bus: EndpointPeer,
    _shutdown: CancellationToken,
    _handles: (MqttHandle, MqttHandle),
}

fn config(port: u16, id: &str) -> MqttConfig {
    let mut c = MqttConfig::new("127.0.0.1");
    c.port = Some(port);
    c.base_topic = "bench".into();
    c.client_id = Some(id.into());
    c.discovery = false;
    c
}

fn frames(texts: impl Iterator<Item = String>) -> Vec<Frame> {
    texts.map(|t| Frame::from_own_text(t).unwrap()).collect()
}

/// Two gateways on one broker, an RM session on A's bus and a CEM session on B's,
/// negotiated and described before anything is measured.
async fn path(port: u16) -> Path {
    let shutdown = CancellationToken::new();
    let (a, _) = Mqtt::start(config(port, "bench-a"), shutdown.clone()).unwrap();
    let (b, _) = Mqtt::start(config(port, "bench-b"), shutdown.clone()).unwrap();
    let (a_end, mut a_bus) = Endpoint::pair(1024);
    let (b_end, mut b_bus) = Endpoint::pair(1024);
    let mut states = a
        .subscribe(&a.topic(&format!("s2/{RID}/state")), 64)
        .await
        .unwrap();
    spawn_cem_link(a.clone(), RID.into(), a_end, shutdown.clone());
    add_native_rm(b.clone(), RID.into(), b_end);
    a.status().wait_for(|s| s.connected).await.unwrap();
    b.status().wait_for(|s| s.connected).await.unwrap();
    // Each side publishes its state only after it subscribed: once both were seen, a
    // message from either side cannot reach an empty topic.
    let mut sides = std::collections::HashSet::new();
    while sides.len() < 2 {
        let m = states.recv().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        sides.insert(v["side"].as_str().unwrap().to_string());
    }
    eprintln!("(both sides subscribed)");
    // Both gateways see each other as the peer; one retained presence serves both.
    a.publish_retained(a.topic(&format!("s2/{RID}/peer")), r#"{"state":"online"}"#)
        .await
        .unwrap();

    let mut rm = RmSession::new(RmConfig::default(), s2_kit::testing::battery_details());
    rm.open(Timestamp::now());
    let mut cem = CemSession::new(CemConfig::default());
    cem.open(Timestamp::now());
    a_bus.tx.send(BusEvent::Up).await.unwrap();
    for f in frames(std::iter::from_fn(|| rm.poll_transmit().map(|o| o.text))) {
        a_bus.tx.send(BusEvent::Frame(f)).await.unwrap();
    }
    let (mut negotiated, mut described, mut cem_started) = (false, false, false);
    while !(negotiated && described) {
        tokio::select! {
            Some(event) = a_bus.rx.recv() => if let BusEvent::Frame(f) = event {
                rm.handle_text(f.text(), Timestamp::now());
                for f in frames(std::iter::from_fn(|| rm.poll_transmit().map(|o| o.text))) {
                    a_bus.tx.send(BusEvent::Frame(f)).await.unwrap();
                }
                while let Some(e) = rm.poll_event() {
                    negotiated |= matches!(e, RmEvent::Negotiated { .. });
                }
            },
            Some(event) = b_bus.rx.recv() => {
                match event {
                    BusEvent::Up => cem_started = true,
                    BusEvent::Frame(f) => { cem.handle_text(f.text(), Timestamp::now()); }
                    _ => {}
                }
                if cem_started {
                    for f in frames(std::iter::from_fn(|| cem.poll_transmit().map(|o| o.text))) {
                        b_bus.tx.send(BusEvent::Frame(f)).await.unwrap();
                    }
                }
                while let Some(e) = cem.poll_event() {
                    described |= matches!(e, CemEvent::ResourceDescribed(_));
                }
            }
        }
    }
    eprintln!("(sessions negotiated)");
    Path {
        a_bus,
        b_bus,
        _shutdown: shutdown,
        _handles: (a, b),
    }
}

/// The next measurement frame on B's bus (ReceptionStatus traffic of the handshake and
/// anything else is skipped).
async fn next_measurement(b_bus: &mut EndpointPeer) -> (Frame, Instant) {
    loop {
        match b_bus.rx.recv().await.unwrap() {
            BusEvent::Frame(f) if f.kind() == s2gw_core::s2::MessageKind::PowerMeasurement => {
                return (f, Instant::now());
            }
            BusEvent::Rejected(r) => panic!("refused at B's edge: {r:?}"),
            _ => {}
        }
    }
}

/// The measurement that must come next on B's bus, `expected` of `n`: the run fails
/// (never on time, only on correctness) when one is lost, repeated or out of order.
async fn next_in_order(b_bus: &mut EndpointPeer, expected: usize, n: usize) -> (Frame, Instant) {
    let Ok((frame, at)) = tokio::time::timeout(LOST_AFTER, next_measurement(b_bus)).await else {
        panic!("lost: {} of {n} messages never arrived", n - expected);
    };
    assert_eq!(
        sequence(&frame),
        expected,
        "per-resource order broken (or a message lost or repeated)"
    );
    (frame, at)
}

async fn gateway_throughput(p: &mut Path) -> f64 {
    let tx = p.a_bus.tx.clone();
    let start = Instant::now();
    tokio::spawn(async move {
        for i in 0..throughput_n() {
            tx.send(BusEvent::Frame(measurement(i))).await.unwrap();
        }
    });
    for expected in 0..throughput_n() {
        next_in_order(&mut p.b_bus, expected, throughput_n()).await;
    }
    throughput_n() as f64 / start.elapsed().as_secs_f64()
}

async fn gateway_latency(p: &mut Path) -> Vec<Duration> {
    let tx = p.a_bus.tx.clone();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let s = sent.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0..latency_n() {
            tick.tick().await;
            let f = measurement(i);
            s.lock().unwrap().insert(f.id().unwrap(), Instant::now());
            tx.send(BusEvent::Frame(f)).await.unwrap();
        }
    });
    let mut out = Vec::with_capacity(latency_n());
    for expected in 0..latency_n() {
        let (f, at) = next_in_order(&mut p.b_bus, expected, latency_n()).await;
        let t0 = sent.lock().unwrap()[&f.id().unwrap()];
        out.push(at - t0);
    }
    out
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let b = broker().await;
    println!(
        "S2 over MQTT through mosquitto (127.0.0.1:{}), QoS 1, PowerMeasurement payloads",
        b.port
    );
    let direct_rate = direct_throughput(b.port).await;
    println!(
        "{:<44} {:>10.0} msg/s  ({} messages)",
        "mosquitto direct publish→subscribe",
        direct_rate,
        throughput_n()
    );
    let mut p = path(b.port).await;
    let gw_rate = gateway_throughput(&mut p).await;
    println!(
        "{:<44} {:>10.0} msg/s  ({} messages)",
        "gateway bus→MQTT→bus (edge-checked both ends)",
        gw_rate,
        throughput_n()
    );
    let ratio = gw_rate / direct_rate;
    println!(
        "{:<44} {:>10.1} %      (target ≥ 50 %: {})",
        "gateway / mosquitto direct, same run",
        ratio * 100.0,
        verdict(ratio >= 0.5)
    );
    let (d50, d99) = report(
        "mosquitto direct at 1000 msg/s",
        44,
        direct_latency(b.port).await,
    );
    let (g50, g99) = report(
        "gateway bus→MQTT→bus at 1000 msg/s",
        44,
        gateway_latency(&mut p).await,
    );
    let (added50, added99) = (
        (g50.as_secs_f64() - d50.as_secs_f64()) * 1e3,
        (g99.as_secs_f64() - d99.as_secs_f64()) * 1e3,
    );
    println!(
        "{:<44} p50 {added50:>8.3} ms   p99 {added99:>8.3} ms",
        "added by the gateway (difference)",
    );
    println!(
        "{:<44} p50 ≤ 0.2 ms, p99 ≤ 2 ms: {}",
        "added latency target",
        verdict(added50 <= 0.2 && added99 <= 2.0)
    );
    println!(
        "{:<44} 0 lost, order kept ({} + {} messages)",
        "gateway path correctness",
        throughput_n(),
        latency_n()
    );
}
