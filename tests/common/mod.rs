//! The end-to-end test harness: a test CEM on s2-kit's real `CemSession` over loopback
//! WebSockets, the daemon as a child process, and the official S2 JSON schemas.
//!
//! Every wait is on a channel, bounded by a timeout that only turns a hang into a
//! failure; nothing here sleeps to let something happen.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err,
    missing_docs
)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use s2_kit::message::{Message, MessageKind};
use s2_kit::session::{CemConfig, CemEvent, CemSession, MessageHandle};
use s2_kit::types::common::{
    CommodityQuantity, ControlType, PowerMeasurement, ReceptionStatus, ReceptionStatusValues,
    ResourceManagerDetails, RevokableObjects, SessionRequestType,
};
use s2_kit::types::{Duration as S2Duration, Id, ProtocolVersion, Timestamp, frbc, ombc, pebc};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

mod oracle;
mod python_peer;
pub use oracle::assert_emitted_valid;
#[allow(unused_imports)] // not every test binary runs a Python peer
pub use python_peer::PythonPeer;

/// The usual failure guard for one awaited step.
pub const GUARD: Duration = Duration::from_secs(20);

/// Await `future`, failing the test with `what` if it takes longer than `timeout`.
pub async fn within<F: std::future::Future>(what: &str, timeout: Duration, future: F) -> F::Output {
    match tokio::time::timeout(timeout, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

// ----------------------------------------------------------------------------------------
// Paths: the Python peer and the shared folder
// ----------------------------------------------------------------------------------------

/// The workspace root (the s2gw package is at the root).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter with s2-python 0.11.1: `$S2GW_TEST_PYTHON`, else the
/// workspace's `.venv`. Fails (never skips) when there is none.
pub fn python() -> PathBuf {
    let path = std::env::var_os("S2GW_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "no Python for the s2-python peer at {}: run scripts/test.sh, or ./scripts/python-peers.sh \
         (or `python3 -m venv .venv && .venv/bin/pip install 's2-python[ws]==0.11.1'`), \
         or set S2GW_TEST_PYTHON",
        path.display()
    );
    path
}

/// The shared folder with the official schemas: `$S2GW_SHARED`, else `<workspace>/../shared`.
pub fn shared_dir() -> PathBuf {
    let path = std::env::var_os("S2GW_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared"));
    assert!(
        path.join("s2-json-schema").is_dir(),
        "no S2 JSON schemas under {}/s2-json-schema: set S2GW_SHARED to the shared folder \
         (scripts/test.sh does)",
        path.display()
    );
    path
}

// ----------------------------------------------------------------------------------------
// The test CEM
// ----------------------------------------------------------------------------------------

/// A CEM that listens on loopback and runs one s2-kit `CemSession` per connection.
pub struct TestCem {
    addr: SocketAddr,
    versions: Vec<ProtocolVersion>,
    conns: mpsc::UnboundedReceiver<CemConn>,
    accept: JoinHandle<()>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TestCem {
    /// Listen on 127.0.0.1 on a free port, supporting `versions` (most preferred first).
    pub async fn start(versions: &[ProtocolVersion]) -> TestCem {
        Self::start_on("127.0.0.1:0".parse().unwrap(), versions).await
    }

    /// Listen on `addr` (to come back on the port a killed CEM had).
    pub async fn start_on(addr: SocketAddr, versions: &[ProtocolVersion]) -> TestCem {
        assert!(
            addr.ip().is_loopback(),
            "test peers listen on loopback only"
        );
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("test CEM cannot listen on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let (conn_tx, conns) = mpsc::unbounded_channel();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            versions.to_vec(),
            conn_tx,
            Arc::clone(&tasks),
        ));
        TestCem {
            addr,
            versions: versions.to_vec(),
            conns,
            accept,
            tasks,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL the gateway's `ws-client` link should dial.
    pub fn url(&self) -> String {
        format!("ws://{}/s2/{{resource_id}}", self.addr)
    }

    /// The next connection the gateway made (after its WebSocket upgrade).
    pub async fn next_conn(&mut self, timeout: Duration) -> CemConn {
        within("a connection from the gateway", timeout, self.conns.recv())
            .await
            .expect("the test CEM's accept loop ended")
    }

    /// The next `n` connections, by the resource id in their path.
    pub async fn conns(&mut self, n: usize, timeout: Duration) -> BTreeMap<String, CemConn> {
        let mut out = BTreeMap::new();
        while out.len() < n {
            let conn = self.next_conn(timeout).await;
            out.insert(conn.resource_id().to_string(), conn);
        }
        out
    }

    /// Drop the listener and every connection, as a crashed CEM would: no close frames.
    pub async fn kill(mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().unwrap());
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for TestCem {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.tasks.lock().unwrap().iter() {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    versions: Vec<ProtocolVersion>,
    conn_tx: mpsc::UnboundedSender<CemConn>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            continue;
        };
        tcp.set_nodelay(true).unwrap();
        let versions = versions.clone();
        let conn_tx = conn_tx.clone();
        let task = tokio::spawn(async move {
            let mut path = String::new();
            let upgrade = tokio_tungstenite::accept_hdr_async(
                tcp,
                |request: &Request, response: Response| {
                    path = request.uri().path().to_string();
                    Ok(response)
                },
            );
            let Ok(Ok(ws)) = tokio::time::timeout(GUARD, upgrade).await else {
                return;
            };
            serve(ws, path, versions, conn_tx).await;
        });
        tasks.lock().unwrap().push(task);
    }
}

/// What one connection has seen, shared between its task and its handle.
#[derive(Debug, Default)]
struct Log {
    /// Every text frame from the gateway, in order.
    raw: Vec<String>,
    /// Every ReceptionStatus from the gateway.
    receptions: Vec<ReceptionStatus>,
    /// Every frame this CEM sent: (message_type, message_id) where readable.
    sent: Vec<(String, Option<String>)>,
    /// The agreed version.
    version: Option<ProtocolVersion>,
}

/// How the connection ended, once it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The gateway sent a close frame with this code (None: a close frame without one).
    CloseFrame(Option<u16>),
    /// The transport ended without a close frame.
    Dropped,
}

type Reply<T> = oneshot::Sender<T>;

enum Cmd {
    Select(ControlType, Reply<Result<MessageHandle, String>>),
    Instruct(Box<Message>, Reply<Result<MessageHandle, String>>),
    Revoke(RevokableObjects, Id, Reply<Result<MessageHandle, String>>),
    Terminate(Reply<Result<MessageHandle, String>>),
    Raw(String, Reply<Result<(), String>>),
}

/// One connection from the gateway: one S2 session, from the CEM's side.
pub struct CemConn {
    path: String,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: Events,
    frames: Frames,
    log: Arc<Mutex<Log>>,
    ended: watch::Receiver<Option<Ended>>,
}

async fn serve(
    ws: WebSocketStream<TcpStream>,
    path: String,
    versions: Vec<ProtocolVersion>,
    conn_tx: mpsc::UnboundedSender<CemConn>,
) {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (raw_tx, raw_rx) = mpsc::unbounded_channel();
    let (ended_tx, ended_rx) = watch::channel(None);
    let log: Arc<Mutex<Log>> = Arc::default();
    let conn = CemConn {
        path,
        cmds: cmd_tx,
        events: Events {
            rx: ev_rx,
            backlog: VecDeque::new(),
        },
        frames: Frames {
            rx: raw_rx,
            backlog: VecDeque::new(),
        },
        log: Arc::clone(&log),
        ended: ended_rx,
    };
    if conn_tx.send(conn).is_err() {
        return;
    }
    let session = CemSession::new(CemConfig::default().supporting(versions));
    let ended = run_session(ws, session, cmd_rx, ev_tx, raw_tx, log).await;
    let _ = ended_tx.send(Some(ended));
}

async fn run_session(
    mut ws: WebSocketStream<TcpStream>,
    mut session: CemSession,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<CemEvent>,
    raw: mpsc::UnboundedSender<Value>,
    log: Arc<Mutex<Log>>,
) -> Ended {
    session.open(Timestamp::now());
    loop {
        if let Err(ended) = pump(&mut ws, &mut session, &events, &log).await {
            return ended;
        }
        let wake = session
            .poll_timeout()
            .map(|t| Duration::from(t.saturating_duration_since(Timestamp::now())))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(WsMessage::Text(text))) => {
                    let text = text.to_string();
                    record_inbound(&log, &raw, &text);
                    session.handle_text(&text, Timestamp::now());
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    session.transport_closed(Timestamp::now());
                    drain_events(&mut session, &events, &log);
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.flush()).await;
                    return Ended::CloseFrame(code);
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    session.transport_closed(Timestamp::now());
                    drain_events(&mut session, &events, &log);
                    return Ended::Dropped;
                }
            },
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else {
                    let _ = ws.close(None).await;
                    return Ended::Dropped;
                };
                let now = Timestamp::now();
                match cmd {
                    Cmd::Select(control_type, reply) => {
                        let _ = reply.send(
                            session.select_control_type(control_type, now).map_err(|e| e.to_string()),
                        );
                    }
                    Cmd::Instruct(message, reply) => {
                        let _ = reply.send(session.instruct(*message, now).map_err(|e| e.to_string()));
                    }
                    Cmd::Revoke(object_type, id, reply) => {
                        let _ = reply.send(session.revoke(object_type, id, now).map_err(|e| e.to_string()));
                    }
                    Cmd::Terminate(reply) => {
                        let _ = reply.send(
                            session
                                .request_session(SessionRequestType::Terminate, Some("test over".into()), now)
                                .map_err(|e| e.to_string()),
                        );
                    }
                    Cmd::Raw(text, reply) => {
                        record_sent_text(&log, &text);
                        let result = ws.send(WsMessage::text(text)).await.map_err(|e| e.to_string());
                        let _ = reply.send(result);
                    }
                }
            }
            () = tokio::time::sleep(wake) => session.handle_timeout(Timestamp::now()),
        }
    }
}

/// Send what the session queued and pass on what it reported.
async fn pump(
    ws: &mut WebSocketStream<TcpStream>,
    session: &mut CemSession,
    events: &mpsc::UnboundedSender<CemEvent>,
    log: &Arc<Mutex<Log>>,
) -> Result<(), Ended> {
    loop {
        let mut quiet = true;
        while let Some(out) = session.poll_transmit() {
            quiet = false;
            log.lock().unwrap().sent.push((
                out.kind.as_str().to_string(),
                out.message_id.map(|id| id.as_str().to_string()),
            ));
            if ws.send(WsMessage::text(out.text)).await.is_err() {
                session.transport_closed(Timestamp::now());
                drain_events(session, events, log);
                return Err(Ended::Dropped);
            }
        }
        if drain_events(session, events, log) {
            quiet = false;
        }
        if quiet {
            return Ok(());
        }
    }
}

fn drain_events(
    session: &mut CemSession,
    events: &mpsc::UnboundedSender<CemEvent>,
    log: &Arc<Mutex<Log>>,
) -> bool {
    let mut any = false;
    while let Some(event) = session.poll_event() {
        any = true;
        if let CemEvent::Negotiated { version, .. } = &event {
            log.lock().unwrap().version = Some(version.clone());
        }
        let _ = events.send(event);
    }
    any
}

fn record_inbound(log: &Arc<Mutex<Log>>, raw: &mpsc::UnboundedSender<Value>, text: &str) {
    let mut log = log.lock().unwrap();
    log.raw.push(text.to_string());
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        if value["message_type"] == "ReceptionStatus"
            && let Ok(Message::ReceptionStatus(status)) = s2_kit::decode(text)
        {
            log.receptions.push(status);
        }
        let _ = raw.send(value);
    }
}

fn record_sent_text(log: &Arc<Mutex<Log>>, text: &str) {
    let (kind, id) = match serde_json::from_str::<Value>(text) {
        Ok(value) => (
            value["message_type"].as_str().unwrap_or("?").to_string(),
            value["message_id"].as_str().map(str::to_string),
        ),
        Err(_) => ("(not JSON)".to_string(), None),
    };
    log.lock().unwrap().sent.push((kind, id));
}

impl CemConn {
    /// The request path the gateway dialled.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The last path segment: the gateway's `{resource_id}`.
    pub fn resource_id(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }

    /// The session's CemEvents, to await by predicate.
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// The raw JSON frames from the gateway, to await by predicate.
    pub fn frames(&mut self) -> &mut Frames {
        &mut self.frames
    }

    /// The agreed protocol version, once negotiated.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.log.lock().unwrap().version.clone()
    }

    /// Every text frame received from the gateway so far.
    pub fn raw_frames(&self) -> Vec<String> {
        self.log.lock().unwrap().raw.clone()
    }

    /// Every ReceptionStatus received from the gateway so far.
    pub fn receptions(&self) -> Vec<ReceptionStatus> {
        self.log.lock().unwrap().receptions.clone()
    }

    /// Every frame this CEM sent: (message_type, message_id).
    pub fn sent(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().unwrap().sent.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> T {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .expect("the CEM connection has ended");
        within("the CEM connection task", GUARD, rx)
            .await
            .expect("the CEM connection ended before answering")
    }

    /// Select a control type (the session reports `Ready` when the gateway acknowledged).
    pub async fn select(&self, control_type: ControlType) -> MessageHandle {
        self.call(|r| Cmd::Select(control_type, r))
            .await
            .unwrap_or_else(|e| panic!("the CEM session refused to select {control_type:?}: {e}"))
    }

    /// Send an instruction through the session (validated by s2-kit before it goes).
    pub async fn instruct(&self, message: impl Into<Message>) -> MessageHandle {
        let message = message.into();
        let kind = message.kind();
        self.call(|r| Cmd::Instruct(Box::new(message), r))
            .await
            .unwrap_or_else(|e| panic!("the CEM session refused to send {kind:?}: {e}"))
    }

    /// Revoke an object this CEM published (an instruction).
    pub async fn revoke(&self, object_type: RevokableObjects, id: Id) -> MessageHandle {
        self.call(|r| Cmd::Revoke(object_type, id, r))
            .await
            .unwrap_or_else(|e| panic!("the CEM session refused to revoke {id}: {e}"))
    }

    /// Send SessionRequest TERMINATE.
    pub async fn terminate(&self) -> MessageHandle {
        self.call(Cmd::Terminate)
            .await
            .unwrap_or_else(|e| panic!("the CEM session refused to terminate: {e}"))
    }

    /// Put one text frame on the wire, bypassing the session (for bad input).
    pub async fn send_raw(&self, text: impl Into<String>) {
        let text = text.into();
        self.call(|r| Cmd::Raw(text, r))
            .await
            .unwrap_or_else(|e| panic!("sending a raw frame failed: {e}"));
    }

    /// Like [`send_raw`](Self::send_raw), but a failed send is returned, not a failure:
    /// a frame over the gateway's hard cap may be cut off.
    pub async fn try_send_raw(&self, text: impl Into<String>) -> Result<(), String> {
        let text = text.into();
        self.call(|r| Cmd::Raw(text, r)).await
    }

    /// The ReceptionStatus whose subject is `subject` (already received or still to come).
    /// The ReceptionStatus for `subject`, whether it came long ago (from the log) or is
    /// still to come. For subjects that are answered once (not the nil UUID).
    pub async fn reception_for(&mut self, subject: &str, timeout: Duration) -> ReceptionStatus {
        let logged = self
            .receptions()
            .into_iter()
            .find(|r| r.subject_message_id.as_str() == subject);
        match logged {
            Some(status) => status,
            None => self.wait_reception(subject, timeout).await,
        }
    }

    /// The next ReceptionStatus for `subject` not yet taken by an earlier wait.
    pub async fn wait_reception(&mut self, subject: &str, timeout: Duration) -> ReceptionStatus {
        let subject = subject.to_string();
        let value = self
            .frames
            .wait_for(
                &format!("a ReceptionStatus for {subject}"),
                |v| v["message_type"] == "ReceptionStatus" && v["subject_message_id"] == *subject,
                timeout,
            )
            .await;
        match s2_kit::decode(&value.to_string()) {
            Ok(Message::ReceptionStatus(status)) => status,
            other => panic!("not a ReceptionStatus: {other:?}"),
        }
    }

    /// How the connection ended (waits for the end).
    pub async fn ended(&mut self, timeout: Duration) -> Ended {
        let ended = within(
            "the connection to end",
            timeout,
            self.ended.wait_for(Option::is_some),
        )
        .await
        .expect("the connection task vanished");
        ended.clone().unwrap()
    }

    /// Wait for the handshake and the details: returns the agreed version and the details.
    pub async fn handshake(&mut self) -> (ProtocolVersion, ResourceManagerDetails) {
        let version = self
            .events
            .wait_map(
                "the protocol version to be agreed",
                |e| match e {
                    CemEvent::Negotiated { version, .. } => Some(version.clone()),
                    _ => None,
                },
                GUARD,
            )
            .await;
        let details = self
            .events
            .wait_map(
                "ResourceManagerDetails",
                |e| match e {
                    CemEvent::ResourceDescribed(details) => Some((**details).clone()),
                    _ => None,
                },
                GUARD,
            )
            .await;
        (version, details)
    }

    /// Select `control_type` and wait until the gateway acknowledged it.
    pub async fn select_ready(&mut self, control_type: ControlType) {
        self.select(control_type).await;
        self.events
            .wait_for(
                &format!("Ready({control_type:?})"),
                |e| matches!(e, CemEvent::Ready { control_type: c } if *c == control_type),
                GUARD,
            )
            .await;
    }

    /// The next description or status of `kind`.
    pub async fn wait_message(&mut self, kind: MessageKind, timeout: Duration) -> Message {
        self.events
            .wait_map(
                &format!("{kind:?}"),
                |e| match e {
                    CemEvent::Description { kind: k, message }
                    | CemEvent::Status { kind: k, message }
                        if *k == kind =>
                    {
                        Some(message.clone())
                    }
                    _ => None,
                },
                timeout,
            )
            .await
    }

    /// The next PowerMeasurement whose total electric power satisfies `pred`.
    pub async fn wait_power(
        &mut self,
        what: &str,
        pred: impl Fn(f64) -> bool,
        timeout: Duration,
    ) -> f64 {
        self.events
            .wait_map(
                what,
                |e| match e {
                    CemEvent::Measurement(m) => Some(total_power(m)).filter(|p| pred(*p)),
                    _ => None,
                },
                timeout,
            )
            .await
    }

    /// The InstructionStatusUpdate statuses of `instruction` until one satisfies `last`.
    pub async fn wait_instruction_status(
        &mut self,
        instruction: Id,
        status: s2_kit::types::common::InstructionStatus,
        timeout: Duration,
    ) {
        self.events
            .wait_for(
                &format!("InstructionStatusUpdate {status:?} for {instruction}"),
                |e| {
                    matches!(e, CemEvent::InstructionStatus(u)
                        if u.instruction_id == instruction && u.status_type == status)
                },
                timeout,
            )
            .await;
    }
}

/// A queue of items awaited by predicate. Items that do not match are kept (in order) for
/// later waits, so the order in which a test asks does not have to be the wire order.
pub struct Queue<T> {
    rx: mpsc::UnboundedReceiver<T>,
    backlog: VecDeque<T>,
}

/// The CemEvents of one connection.
pub type Events = Queue<CemEvent>;
/// The raw JSON frames of one connection.
pub type Frames = Queue<Value>;

impl<T> Queue<T> {
    /// A queue over a channel.
    pub fn new(rx: mpsc::UnboundedReceiver<T>) -> Self {
        Queue {
            rx,
            backlog: VecDeque::new(),
        }
    }
}

impl<T: std::fmt::Debug + Clone> Queue<T> {
    /// The first item (kept or new) that satisfies `pred`, removed from the queue.
    pub async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&T) -> bool,
        timeout: Duration,
    ) -> T {
        self.wait_map(what, |item| pred(item).then(|| item.clone()), timeout)
            .await
    }

    /// The first item for which `f` gives `Some`, removed from the queue; `f`'s answer.
    pub async fn wait_map<R>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&T) -> Option<R>,
        timeout: Duration,
    ) -> R {
        if let Some(i) = self.backlog.iter().position(|item| f(item).is_some()) {
            let item = self.backlog.remove(i).unwrap();
            return f(&item).unwrap();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(item)) => {
                    if let Some(r) = f(&item) {
                        return r;
                    }
                    self.backlog.push_back(item);
                }
                Ok(None) => panic!(
                    "the connection ended while waiting for {what}; unmatched: {}",
                    self.describe_backlog()
                ),
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; unmatched: {}",
                    self.describe_backlog()
                ),
            }
        }
    }

    /// The oldest item received and not yet taken, without waiting.
    pub fn try_next(&mut self) -> Option<T> {
        self.backlog.pop_front().or_else(|| self.rx.try_recv().ok())
    }

    /// Forget everything received so far: later waits see only what comes next.
    pub fn clear(&mut self) {
        self.backlog.clear();
        while self.rx.try_recv().is_ok() {}
    }

    fn describe_backlog(&self) -> String {
        let n = self.backlog.len();
        let tail: Vec<String> = self
            .backlog
            .iter()
            .skip(n.saturating_sub(12))
            .map(|item| {
                let text = format!("{item:?}");
                text.chars().take(200).collect()
            })
            .collect();
        format!("{n} items, the last: {tail:#?}")
    }
}

/// The total electric power of a measurement (W, consumption positive).
pub fn total_power(measurement: &PowerMeasurement) -> f64 {
    measurement
        .values
        .iter()
        .filter(|v| {
            matches!(
                v.commodity_quantity,
                CommodityQuantity::ElectricPowerL1
                    | CommodityQuantity::ElectricPowerL2
                    | CommodityQuantity::ElectricPowerL3
                    | CommodityQuantity::ElectricPower3PhaseSymmetric
            )
        })
        .map(|v| v.value)
        .sum()
}

// ----------------------------------------------------------------------------------------
// Instructions built from descriptions
// ----------------------------------------------------------------------------------------

/// A PEBC.Instruction within `constraints`: one envelope element of `duration`.
pub fn pebc_instruction(
    constraints: &pebc::PowerConstraints,
    lower_w: f64,
    upper_w: f64,
    execution_time: Timestamp,
    duration: S2Duration,
) -> pebc::Instruction {
    let quantity = constraints
        .allowed_limit_ranges
        .first()
        .map(|r| r.commodity_quantity)
        .expect("PowerConstraints without ranges");
    pebc::Instruction {
        message_id: Id::generate(),
        id: Id::generate(),
        execution_time,
        abnormal_condition: false,
        power_constraints_id: constraints.id,
        power_envelopes: vec![pebc::PowerEnvelope {
            id: Id::generate(),
            commodity_quantity: quantity,
            power_envelope_elements: vec![pebc::PowerEnvelopeElement::new(
                duration, lower_w, upper_w,
            )],
        }],
    }
}

/// An OMBC.Instruction for the mode labelled `label` (its diagnostic label) in `system`.
pub fn ombc_instruction(system: &ombc::SystemDescription, label: &str) -> ombc::Instruction {
    let mode = system
        .operation_modes
        .iter()
        .find(|m| m.diagnostic_label.as_deref() == Some(label))
        .unwrap_or_else(|| {
            let labels: Vec<_> = system
                .operation_modes
                .iter()
                .map(|m| m.diagnostic_label.clone())
                .collect();
            panic!("no OMBC mode labelled {label:?}; modes: {labels:?}")
        });
    ombc::Instruction {
        message_id: Id::generate(),
        id: Id::generate(),
        execution_time: Timestamp::now(),
        operation_mode_id: mode.id,
        operation_mode_factor: 1.0,
        abnormal_condition: false,
    }
}

/// An FRBC.Instruction for the mode labelled `label` of the first actuator, at `factor`.
pub fn frbc_instruction(
    system: &frbc::SystemDescription,
    label: &str,
    factor: f64,
) -> frbc::Instruction {
    let actuator = system.actuators.first().expect("no FRBC actuator");
    let mode = actuator
        .operation_modes
        .iter()
        .find(|m| m.diagnostic_label.as_deref() == Some(label))
        .unwrap_or_else(|| panic!("no FRBC mode labelled {label:?}"));
    frbc::Instruction {
        message_id: Id::generate(),
        id: Id::generate(),
        actuator_id: actuator.id,
        operation_mode: mode.id,
        operation_mode_factor: factor,
        execution_time: Timestamp::now(),
        abnormal_condition: false,
    }
}

/// Every string under `value` that sits at a key named `id` or ending in `_id` (the ids a
/// message mints or names), with its key.
pub fn ids_in(value: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    collect_ids(value, &mut out);
    out
}

fn collect_ids(value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let is_id = key == "id" || key.ends_with("_id");
                match v {
                    Value::String(s) if is_id => out.push((key.clone(), s.clone())),
                    Value::Array(items) if key.ends_with("_ids") || key.ends_with("_timers") => {
                        for item in items {
                            if let Value::String(s) = item {
                                out.push((key.clone(), s.clone()));
                            }
                        }
                    }
                    other => collect_ids(other, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_ids(v, out)),
        _ => {}
    }
}

/// Whether `text` is a UUID in its canonical hyphenated form.
pub fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok() && text.len() == 36
}

/// Assert every ReceptionStatus the gateway sent answered OK except those listed.
pub fn status_of(receptions: &[ReceptionStatus], subject: &str) -> Option<ReceptionStatusValues> {
    receptions
        .iter()
        .find(|r| r.subject_message_id.as_str() == subject)
        .map(|r| r.status)
}

// ----------------------------------------------------------------------------------------
// The daemon
// ----------------------------------------------------------------------------------------

/// The s2gw daemon as a child process, with its log lines to await.
pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    lines: Queue<String>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Write `config` (where `@STATE_DIR@` stands for a fresh state directory) to a temp
    /// file and run `s2gw run -c FILE` with RUST_LOG=info.
    pub fn start(config: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let config = config.replace("@STATE_DIR@", &state.display().to_string());
        let file = dir.path().join("s2gw.toml");
        std::fs::write(&file, &config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_s2gw"))
            .arg("run")
            .arg("-c")
            .arg(&file)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the s2gw binary");
        let (tx, rx) = mpsc::unbounded_channel();
        let all: Arc<Mutex<Vec<String>>> = Arc::default();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        spawn_reader(stdout, tx.clone(), Arc::clone(&all));
        spawn_reader(stderr, tx, Arc::clone(&all));
        Daemon {
            child,
            dir,
            lines: Queue {
                rx,
                backlog: VecDeque::new(),
            },
            all,
        }
    }

    /// Like [`Daemon::start`], with extra environment variables for the daemon (such as
    /// `DBUS_SYSTEM_BUS_ADDRESS` pointing at a mocked BlueZ).
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let config = config.replace("@STATE_DIR@", &state.display().to_string());
        let file = dir.path().join("s2gw.toml");
        std::fs::write(&file, &config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_s2gw"))
            .arg("run")
            .arg("-c")
            .arg(&file)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the s2gw binary");
        let (tx, rx) = mpsc::unbounded_channel();
        let all: Arc<Mutex<Vec<String>>> = Arc::default();
        spawn_reader(child.stdout.take().unwrap(), tx.clone(), Arc::clone(&all));
        spawn_reader(child.stderr.take().unwrap(), tx, Arc::clone(&all));
        Daemon {
            child,
            dir,
            lines: Queue::new(rx),
            all,
        }
    }

    /// The temp directory holding the config and state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The first log line (kept or new) that satisfies `pred`.
    pub async fn wait_log(
        &mut self,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the daemon exited ({status}) before {what}; its log:\n{}",
                self.log_tail(60)
            );
        }
        self.lines
            .wait_map(what, |l| pred(l).then(|| l.clone()), timeout)
            .await
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.all.lock().unwrap().clone()
    }

    /// The last `n` log lines, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.all, n)
    }

    /// Fail if the daemon has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "the daemon exited ({status}); its log:\n{}",
                self.log_tail(60)
            );
        }
    }
}

fn tail(all: &Arc<Mutex<Vec<String>>>, n: usize) -> String {
    let all = all.lock().unwrap();
    all[all.len().saturating_sub(n)..].join("\n")
}

fn spawn_reader(
    stream: impl std::io::Read + Send + 'static,
    tx: mpsc::UnboundedSender<String>,
    all: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            eprintln!("[s2gw] {line}");
            all.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
}

/// Remove ANSI escape sequences (colours), should the daemon emit them.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

impl Daemon {
    /// SIGTERM, and wait for the process to exit (killed after 10 s); the temp directory
    /// stays until the `Daemon` is dropped. Returns whether it exited by itself.
    pub fn stop(&mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            // A child process has no async exit notification here; polling its status is
            // the wait, bounded by the deadline.
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            return false;
        }
        true
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

// ----------------------------------------------------------------------------------------
// The official JSON schemas
// ----------------------------------------------------------------------------------------

/// Validators for every message type of both protocol versions.
pub struct Schemas {
    by_version: BTreeMap<String, BTreeMap<String, jsonschema::Validator>>,
}

impl Schemas {
    /// Load `0.0.2-beta` from `s2-json-schema/s2-json-schema` and `1.0.0` from
    /// `s2-json-schema/branch-v1.0.0-beta`, every file registered under its `$id` so
    /// `$ref`s resolve offline.
    pub fn load() -> Schemas {
        let root = shared_dir().join("s2-json-schema");
        let mut by_version = BTreeMap::new();
        for (version, dir) in [
            ("0.0.2-beta", root.join("s2-json-schema")),
            ("1.0.0", root.join("branch-v1.0.0-beta")),
        ] {
            by_version.insert(version.to_string(), load_dir(&dir));
        }
        Schemas { by_version }
    }

    /// Check one message against `messages/<message_type>.schema.json` of `version`.
    pub fn check(&self, version: &str, text: &str) -> Result<(), String> {
        let validators = self
            .by_version
            .get(version)
            .ok_or_else(|| format!("no schemas for version {version}"))?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))?;
        let kind = value["message_type"]
            .as_str()
            .ok_or_else(|| format!("no message_type: {text}"))?;
        let validator = validators
            .get(kind)
            .ok_or_else(|| format!("{kind} has no schema in version {version}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{kind} ({version}): {}\n  in {text}",
                errors.join("; ")
            ))
        }
    }

    /// Assert that every one of `frames` validates against `version`; returns how many
    /// messages of each type were checked.
    pub fn assert_all(&self, version: &str, frames: &[String]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        let mut failures = Vec::new();
        for text in frames {
            if let Err(e) = self.check(version, text) {
                failures.push(e);
            }
            if let Ok(value) = serde_json::from_str::<Value>(text) {
                let kind = value["message_type"].as_str().unwrap_or("?").to_string();
                *counts.entry(kind).or_insert(0) += 1;
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} messages fail the {version} schema:\n{}",
            failures.len(),
            frames.len(),
            failures.join("\n")
        );
        counts
    }
}

fn load_dir(dir: &Path) -> BTreeMap<String, jsonschema::Validator> {
    let mut resources = Vec::new();
    let mut messages = Vec::new();
    for sub in ["messages", "schemas"] {
        let folder = dir.join(sub);
        let entries = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", folder.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let Some(stem) = name.strip_suffix(".schema.json") else {
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap();
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            let id = value["$id"]
                .as_str()
                .unwrap_or_else(|| panic!("{} has no $id", path.display()))
                .to_string();
            resources.push((id, value.clone()));
            if sub == "messages" {
                messages.push((stem.to_string(), value));
            }
        }
    }
    assert!(
        messages.len() >= 30,
        "only {} message schemas in {}",
        messages.len(),
        dir.display()
    );
    let mut validators = BTreeMap::new();
    for (kind, schema) in messages {
        let own_id = schema["$id"].as_str().unwrap().to_string();
        let others = resources
            .iter()
            .filter(|(id, _)| *id != own_id)
            .map(|(id, v)| {
                (
                    id.clone(),
                    jsonschema::Resource::from_contents(v.clone()).unwrap(),
                )
            });
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .with_resources(others)
            .build(&schema)
            .unwrap_or_else(|e| panic!("schema {kind} in {} does not build: {e}", dir.display()));
        validators.insert(kind, validator);
    }
    validators
}

// ----------------------------------------------------------------------------------------
// MQTT: one mosquitto per test, a client for the test's side, a CEM on MQTT
// ----------------------------------------------------------------------------------------

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
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\nallow_anonymous false\npassword_file {d}/passwd\n\
                 max_queued_messages 100000\nlog_dest file {d}/mosquitto.log\nlog_type all\n\
                 set_tcp_nodelay true\nlistener {port} 127.0.0.1\n"
            ),
        )
        .unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is missing: apt-get install mosquitto (.ci/run does)");
        let broker = Broker { dir, port, child };
        broker.wait_ready().await;
        broker
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
        use rumqttc::{AsyncClient, LastWill, MqttOptions, QoS};
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.port);
        options.set_credentials(MQTT_USER, MQTT_PASSWORD);
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
pub struct MqttCem {
    cmds: mpsc::UnboundedSender<Cmd>,
    events: Events,
    frames: Frames,
    /// Sessions started so far.
    pub sessions: watch::Receiver<u32>,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl MqttCem {
    /// Connect for resource `resource_id` under `base`, with presence and its LWT.
    pub async fn start(broker: &Broker, base: &str, resource_id: &str) -> MqttCem {
        let prefix = format!("{base}/s2/{resource_id}");
        let peer_topic = format!("{prefix}/peer");
        let peer = MqttPeer::connect(
            broker,
            &format!("cem-{resource_id}"),
            &[&format!("{prefix}/rm"), &format!("{prefix}/state")],
            Some((&peer_topic, r#"{"state":"offline"}"#)),
        )
        .await;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let (sessions_tx, sessions) = watch::channel(0);
        let log: Arc<Mutex<Log>> = Arc::default();
        let pipes = CemPipes {
            events: ev_tx,
            raw: raw_tx,
            sessions: sessions_tx,
            log: Arc::clone(&log),
        };
        let task = tokio::spawn(run_mqtt_cem(peer, prefix, cmd_rx, pipes));
        MqttCem {
            cmds: cmd_tx,
            events: Queue::new(ev_rx),
            frames: Queue::new(raw_rx),
            sessions,
            log,
            task,
        }
    }

    /// The CemEvents of every session, in order.
    pub fn events(&mut self) -> &mut Events {
        &mut self.events
    }

    /// The raw JSON the RM side published.
    pub fn frames(&mut self) -> &mut Frames {
        &mut self.frames
    }

    /// Every frame this CEM sent: (message_type, message_id).
    pub fn sent(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().unwrap().sent.clone()
    }

    /// Every text the RM side published.
    pub fn raw_frames(&self) -> Vec<String> {
        self.log.lock().unwrap().raw.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> T {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(make(tx)).expect("the MQTT CEM has ended");
        within("the MQTT CEM task", GUARD, rx)
            .await
            .expect("the MQTT CEM ended before answering")
    }

    /// Wait for the version and the details of the current session.
    pub async fn handshake(&mut self) -> (ProtocolVersion, ResourceManagerDetails) {
        let version = self
            .events
            .wait_map(
                "the protocol version to be agreed over MQTT",
                |e| match e {
                    CemEvent::Negotiated { version, .. } => Some(version.clone()),
                    _ => None,
                },
                GUARD,
            )
            .await;
        let details = self
            .events
            .wait_map(
                "ResourceManagerDetails over MQTT",
                |e| match e {
                    CemEvent::ResourceDescribed(d) => Some((**d).clone()),
                    _ => None,
                },
                GUARD,
            )
            .await;
        (version, details)
    }

    /// Select `control_type` and wait until the RM acknowledged it.
    pub async fn select_ready(&mut self, control_type: ControlType) {
        self.call(|r| Cmd::Select(control_type, r))
            .await
            .unwrap_or_else(|e| panic!("cannot select {control_type:?}: {e}"));
        self.events
            .wait_for(
                &format!("Ready({control_type:?}) over MQTT"),
                |e| matches!(e, CemEvent::Ready { control_type: c } if *c == control_type),
                GUARD,
            )
            .await;
    }

    /// Send an instruction through the session.
    pub async fn instruct(&self, message: impl Into<Message>) -> MessageHandle {
        let message = message.into();
        self.call(|r| Cmd::Instruct(Box::new(message), r))
            .await
            .unwrap_or_else(|e| panic!("the MQTT CEM refused to instruct: {e}"))
    }

    /// Send SessionRequest TERMINATE.
    pub async fn terminate(&self) -> MessageHandle {
        self.call(Cmd::Terminate)
            .await
            .unwrap_or_else(|e| panic!("the MQTT CEM refused to terminate: {e}"))
    }

    /// The next description or status of `kind`.
    pub async fn wait_message(&mut self, kind: MessageKind) -> Message {
        self.events
            .wait_map(
                &format!("{kind:?} over MQTT"),
                |e| match e {
                    CemEvent::Description { kind: k, message }
                    | CemEvent::Status { kind: k, message }
                        if *k == kind =>
                    {
                        Some(message.clone())
                    }
                    _ => None,
                },
                GUARD,
            )
            .await
    }

    /// The ReceptionStatus the RM side sent for `subject` (already or still to come).
    pub async fn reception_for(&mut self, subject: &str) -> ReceptionStatus {
        let subject = subject.to_string();
        let value = self
            .frames
            .wait_for(
                &format!("a ReceptionStatus for {subject} over MQTT"),
                |v| v["message_type"] == "ReceptionStatus" && v["subject_message_id"] == *subject,
                GUARD,
            )
            .await;
        match s2_kit::decode(&value.to_string()) {
            Ok(Message::ReceptionStatus(status)) => status,
            other => panic!("not a ReceptionStatus: {other:?}"),
        }
    }
}

impl Drop for MqttCem {
    fn drop(&mut self) {
        self.task.abort();
        check_on_drop(&self.log);
    }
}

impl Drop for CemConn {
    fn drop(&mut self) {
        check_on_drop(&self.log);
    }
}

/// Every session a test CEM saw is checked by every oracle when the test lets go of it
/// (unless the test is already failing: a second panic would hide the first).
fn check_on_drop(log: &Mutex<Log>) {
    if std::thread::panicking() {
        return;
    }
    let (version, frames) = {
        let log = log.lock().unwrap_or_else(|e| e.into_inner());
        (log.version.clone(), log.raw.clone())
    };
    if let Some(version) = version {
        assert_emitted_valid(version.as_str(), &frames);
    }
}

/// Where an MQTT CEM's task reports.
struct CemPipes {
    events: mpsc::UnboundedSender<CemEvent>,
    raw: mpsc::UnboundedSender<Value>,
    sessions: watch::Sender<u32>,
    log: Arc<Mutex<Log>>,
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
                pipes.log.lock().unwrap().sent.push((
                    out.kind.as_str().to_string(),
                    out.message_id.map(|id| id.as_str().to_string()),
                ));
                peer.publish(&cem_topic, out.text, false).await;
            }
            while let Some(event) = session.poll_event() {
                if let CemEvent::Negotiated { version, .. } = &event {
                    pipes.log.lock().unwrap().version = Some(version.clone());
                }
                let _ = pipes.events.send(event);
            }
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
                let _ = pipes.events.send(event);
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
    pipes.log.lock().unwrap().raw.push(text.to_string());
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        let _ = pipes.raw.send(value);
    }
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

impl Daemon {
    /// SIGKILL: no shutdown path runs, as in a crash or an OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
