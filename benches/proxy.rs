//! `cargo bench --bench proxy`: a native RM proxied by the gateway, beside the same RM
//! talking to the same CEM directly, in the same run.
//!
//! The RM is an s2-kit `RmSession` on a tokio-tungstenite client; the CEM an s2-kit
//! `CemSession` on a tokio-tungstenite server, which answers every message with its
//! ReceptionStatus. Proxied, the RM dials the gateway daemon (`s2gw run`, release build)
//! at `/s2/rm/<id>` and the gateway dials the CEM: every frame crosses both of the
//! gateway's edges, checked each time, and every ReceptionStatus comes back the same way.
//!
//! After the handshake the RM sends PowerMeasurements whose value is their sequence
//! number, first as fast as it can (throughput: messages per second until the CEM has
//! them all), then one a millisecond (latency from the RM's send to the CEM's session
//! event, p50/p99). The run fails on a lost, repeated, reordered or refused message,
//! never on time; the targets (proxied ≥ 50 % of direct, added p50 ≤ 0.1 ms) are printed
//! as met or not.
//!
//! Under `cargo test` (no `--bench` argument) each part runs a few hundred messages.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::latency::{ms, report, verdict};
use common::{Daemon, GUARD, free_port};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use s2_kit::session::{CemConfig, CemEvent, CemSession, RmConfig, RmEvent, RmSession};
use s2_kit::types::Timestamp;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const RID: &str = "3c7d9e2a-51f4-4b8e-a0d6-7e2f9c1b4a55";
/// How long the CEM may stay silent before the missing messages count as lost.
const LOST_AFTER: Duration = Duration::from_secs(10);

fn full_run() -> bool {
    static FULL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FULL.get_or_init(|| std::env::args().any(|a| a == "--bench"))
}

/// The smoke run still sends more than a route's direction holds (`ROUTE_CAPACITY`,
/// 1,024), so both sides flooding at once, which once stalled the proxy for good, is part
/// of every `cargo test`.
fn throughput_n() -> usize {
    if full_run() { 20_000 } else { 3_000 }
}

fn latency_n() -> usize {
    if full_run() { 5_000 } else { 200 }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    println!(
        "s2gw WebSocket proxy (release build: {}): native RM → gateway → CEM, beside RM → CEM",
        !cfg!(debug_assertions)
    );
    let mut cem = CemServer::start().await;
    let mut direct = Path::open(&cem.url_for(RID), &mut cem).await;
    let direct_rate = direct.throughput().await;
    let direct_latency = direct.latency().await;
    direct.close().await;

    let gateway = Gateway::start(&cem).await;
    let mut proxied = Path::open(&gateway.native_url(), &mut cem).await;
    let proxied_rate = proxied.throughput().await;
    let proxied_latency = proxied.latency().await;
    proxied.close().await;

    let n = throughput_n();
    println!(
        "direct  RM → CEM           {direct_rate:>10.0} msg/s ({n} messages, 0 lost, order kept)"
    );
    println!(
        "proxied RM → gateway → CEM {proxied_rate:>10.0} msg/s ({n} messages, 0 lost, order kept)"
    );
    let ratio = proxied_rate / direct_rate;
    println!(
        "proxied / direct: {:.1} % (target ≥ 50 %: {})",
        ratio * 100.0,
        verdict(ratio >= 0.5)
    );
    let (d50, d99) = report("direct latency at 1,000 msg/s", 34, direct_latency);
    let (p50, p99) = report("proxied latency at 1,000 msg/s", 34, proxied_latency);
    let added = p50.saturating_sub(d50);
    println!(
        "added by the gateway: p50 {:.3} ms (target ≤ 0.1 ms: {}), p99 {:.3} ms",
        ms(added),
        verdict(added <= Duration::from_micros(100)),
        ms(p99.saturating_sub(d99))
    );
    let mut daemon = gateway.daemon;
    daemon.assert_running();
    assert!(daemon.stop(), "the daemon stops cleanly");
}

/// The `i`th measurement: its value is `i`, so the CEM tells a lost, repeated or
/// reordered message from the payload alone.
fn measurement(i: usize) -> String {
    format!(
        r#"{{"message_type":"PowerMeasurement","message_id":"{}","measurement_timestamp":"{}","values":[{{"commodity_quantity":"ELECTRIC.POWER.3_PHASE_SYMMETRIC","value":{i}}}]}}"#,
        uuid::Uuid::new_v4(),
        Timestamp::now(),
    )
}

// ----------------------------------------------------------------------------------------
// The CEM: an s2-kit CemSession per WebSocket connection
// ----------------------------------------------------------------------------------------

/// What one CEM connection reports to the bench.
struct CemConnection {
    /// Resolved once the resource described itself: measurements may flow.
    described: oneshot::Receiver<()>,
    /// Each measurement's sequence number and when its session event came.
    arrivals: mpsc::UnboundedReceiver<(usize, Instant)>,
}

struct CemServer {
    port: u16,
    connections: mpsc::UnboundedReceiver<CemConnection>,
}

impl CemServer {
    async fn start() -> CemServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, connections) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (described_tx, described) = oneshot::channel();
                let (arrivals_tx, arrivals) = mpsc::unbounded_channel();
                let _ = tx.send(CemConnection {
                    described,
                    arrivals,
                });
                tokio::spawn(serve(stream, described_tx, arrivals_tx));
            }
        });
        CemServer { port, connections }
    }

    fn url_for(&self, resource: &str) -> String {
        format!("ws://127.0.0.1:{}/s2/{resource}", self.port)
    }

    async fn next(&mut self) -> CemConnection {
        tokio::time::timeout(GUARD, self.connections.recv())
            .await
            .expect("a connection to the CEM")
            .unwrap()
    }
}

async fn serve(
    stream: TcpStream,
    described: oneshot::Sender<()>,
    arrivals: mpsc::UnboundedSender<(usize, Instant)>,
) {
    stream.set_nodelay(true).unwrap();
    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
    let mut session = CemSession::new(CemConfig::default());
    session.open(Timestamp::now());
    let mut described = Some(described);
    loop {
        while let Some(out) = session.poll_transmit() {
            if ws.send(WsMessage::text(out.text)).await.is_err() {
                return;
            }
        }
        while let Some(event) = session.poll_event() {
            match event {
                CemEvent::ResourceDescribed(_) => {
                    if let Some(tx) = described.take() {
                        let _ = tx.send(());
                    }
                }
                CemEvent::Measurement(m) => {
                    let _ = arrivals.send((m.values[0].value as usize, Instant::now()));
                }
                CemEvent::Closed { .. } => return,
                _ => {}
            }
        }
        match ws.next().await {
            Some(Ok(WsMessage::Text(text))) => {
                session.handle_text(text.as_str(), Timestamp::now());
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return,
        }
    }
}

// ----------------------------------------------------------------------------------------
// The gateway between them
// ----------------------------------------------------------------------------------------

struct Gateway {
    daemon: Daemon,
    port: u16,
}

impl Gateway {
    /// The daemon with one native RM slot, `rm`, whose CEM link dials `cem`. The
    /// per-session frame limit (default 100/s, against floods) is set to its highest: the
    /// bench measures the path, not the limit.
    async fn start(cem: &CemServer) -> Gateway {
        let port = free_port();
        let config = format!(
            "[gateway]\nname = \"s2gw-proxy-bench\"\nstate_dir = \"@STATE_DIR@\"\n\
             max_frames_per_s = 100000\n\n\
             [server]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [cem.bench]\ntransport = \"ws-client\"\nurl = \"{}\"\n\n\
             [[native]]\nid = \"rm\"\nresource_id = \"{RID}\"\ncem = \"bench\"\n",
            cem.url_for("{resource_id}")
        );
        let mut daemon = Daemon::start_quiet(&config);
        daemon
            .wait_log(
                "the gateway's server to listen",
                |l| l.contains("S2 WebSocket server listening"),
                GUARD,
            )
            .await;
        Gateway { daemon, port }
    }

    fn native_url(&self) -> String {
        format!("ws://127.0.0.1:{}/s2/rm/rm", self.port)
    }
}

// ----------------------------------------------------------------------------------------
// The RM and its path to the CEM
// ----------------------------------------------------------------------------------------

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An RM with its session negotiated and described, and the CEM connection it reached.
struct Path {
    sink: SplitSink<Ws, WsMessage>,
    reader: tokio::task::JoinHandle<()>,
    arrivals: mpsc::UnboundedReceiver<(usize, Instant)>,
}

impl Path {
    /// Dial `url`, run the handshake to the end, and hand the socket's reading side to a
    /// task that checks every ReceptionStatus the CEM sends back.
    async fn open(url: &str, cem: &mut CemServer) -> Path {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            tcp.set_nodelay(true).unwrap();
        }
        let (mut sink, mut stream) = ws.split();
        let mut connection = cem.next().await;
        let mut rm = RmSession::new(RmConfig::default(), s2_kit::testing::battery_details());
        rm.open(Timestamp::now());
        let mut negotiated = false;
        loop {
            while let Some(out) = rm.poll_transmit() {
                sink.send(WsMessage::text(out.text)).await.unwrap();
            }
            while let Some(event) = rm.poll_event() {
                negotiated |= matches!(event, RmEvent::Negotiated { .. });
            }
            if negotiated && (&mut connection.described).await.is_ok() {
                break;
            }
            let text = next_text(&mut stream).await;
            rm.handle_text(&text, Timestamp::now());
        }
        let reader = tokio::spawn(check_receptions(stream));
        Path {
            sink,
            reader,
            arrivals: connection.arrivals,
        }
    }

    /// Send `throughput_n()` measurements back to back; messages per second until the
    /// CEM's session has the last one.
    async fn throughput(&mut self) -> f64 {
        let n = throughput_n();
        let texts: Vec<String> = (0..n).map(measurement).collect();
        let start = Instant::now();
        let sending = async {
            for text in texts {
                self.sink.send(WsMessage::text(text)).await.unwrap();
            }
        };
        let receiving = expect_in_order(&mut self.arrivals, n);
        let ((), _) = tokio::join!(sending, receiving);
        n as f64 / start.elapsed().as_secs_f64()
    }

    /// Send `latency_n()` measurements one a millisecond; each one's time from the send
    /// to the CEM's session event.
    async fn latency(&mut self) -> Vec<Duration> {
        let n = latency_n();
        let sent_at = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let log = Arc::clone(&sent_at);
        let sending = async {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            for i in 0..n {
                tick.tick().await;
                let text = measurement(i);
                log.lock().unwrap().push(Instant::now());
                self.sink.send(WsMessage::text(text)).await.unwrap();
            }
        };
        let receiving = expect_in_order(&mut self.arrivals, n);
        let ((), arrived) = tokio::join!(sending, receiving);
        let sent_at = sent_at.lock().unwrap();
        arrived
            .iter()
            .zip(sent_at.iter())
            .map(|(at, sent)| *at - *sent)
            .collect()
    }

    /// Close the RM's side; the reader ends with the connection, and its verdict on
    /// the ReceptionStatuses (a panic) fails the run here.
    async fn close(mut self) {
        let _ = self.sink.close().await;
        tokio::time::timeout(GUARD, self.reader)
            .await
            .expect("the connection to close")
            .expect("every ReceptionStatus to say OK");
    }
}

/// The arrival times of measurements 0..n, which must come in that order.
async fn expect_in_order(
    arrivals: &mut mpsc::UnboundedReceiver<(usize, Instant)>,
    n: usize,
) -> Vec<Instant> {
    let mut out = Vec::with_capacity(n);
    for expected in 0..n {
        let Ok(Some((seq, at))) = tokio::time::timeout(LOST_AFTER, arrivals.recv()).await else {
            panic!(
                "lost: {} of {n} messages never reached the CEM",
                n - expected
            );
        };
        assert_eq!(
            seq, expected,
            "order broken (or a message lost or repeated)"
        );
        out.push(at);
    }
    out
}

async fn next_text(stream: &mut SplitStream<Ws>) -> String {
    loop {
        let frame = tokio::time::timeout(GUARD, stream.next())
            .await
            .expect("the handshake to go on")
            .expect("the connection to stay open")
            .unwrap();
        if let WsMessage::Text(text) = frame {
            return text.to_string();
        }
    }
}

/// Every ReceptionStatus the RM gets must say OK: the CEM (and, proxied, the gateway's
/// edges) took every measurement.
async fn check_receptions(mut stream: SplitStream<Ws>) {
    // The connection's end (cleanly or not) ends the check: a lost message is the
    // arrivals' business.
    while let Some(Ok(frame)) = stream.next().await {
        let WsMessage::Text(text) = frame else {
            continue;
        };
        let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
        if value["message_type"] == "ReceptionStatus" {
            assert_eq!(value["status"], "OK", "a message was refused: {value}");
        }
    }
}
