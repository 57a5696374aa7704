//! The test CEM on WebSocket: listens on loopback and runs one s2-kit `CemSession` per
//! connection from the gateway.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use s2_kit::session::{CemConfig, CemSession};
use s2_kit::types::common::SessionRequestType;
use s2_kit::types::{ProtocolVersion, Timestamp};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

use super::session::{Cmd, Pipes, drain_events, record_inbound, record_sent_text, record_transmit};
use super::{Carrier, CemSide, GUARD, within};

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

/// How the connection ended, once it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The gateway sent a close frame with this code (None: a close frame without one).
    CloseFrame(Option<u16>),
    /// The transport ended without a close frame.
    Dropped,
}

/// One connection from the gateway: one S2 session, from the CEM's side.
///
/// The session API is [`CemSide`]'s, which it dereferences to.
pub struct CemConn {
    path: String,
    side: CemSide,
    ended: watch::Receiver<Option<Ended>>,
}

async fn serve(
    ws: WebSocketStream<TcpStream>,
    path: String,
    versions: Vec<ProtocolVersion>,
    conn_tx: mpsc::UnboundedSender<CemConn>,
) {
    let (side, cmd_rx, pipes) = CemSide::new(Carrier::WebSocket);
    let (ended_tx, ended_rx) = watch::channel(None);
    let conn = CemConn {
        path,
        side,
        ended: ended_rx,
    };
    if conn_tx.send(conn).is_err() {
        return;
    }
    let session = CemSession::new(CemConfig::default().supporting(versions));
    let ended = run_session(ws, session, cmd_rx, pipes).await;
    let _ = ended_tx.send(Some(ended));
}

async fn run_session(
    mut ws: WebSocketStream<TcpStream>,
    mut session: CemSession,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    pipes: Pipes,
) -> Ended {
    session.open(Timestamp::now());
    loop {
        if let Err(ended) = pump(&mut ws, &mut session, &pipes).await {
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
                    record_inbound(&pipes, &text);
                    session.handle_text(&text, Timestamp::now());
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    session.transport_closed(Timestamp::now());
                    drain_events(&mut session, &pipes);
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.flush()).await;
                    return Ended::CloseFrame(code);
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    session.transport_closed(Timestamp::now());
                    drain_events(&mut session, &pipes);
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
                        record_sent_text(&pipes.log, &text);
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
    pipes: &Pipes,
) -> Result<(), Ended> {
    loop {
        let mut quiet = true;
        while let Some(out) = session.poll_transmit() {
            quiet = false;
            record_transmit(&pipes.log, &out);
            if ws.send(WsMessage::text(out.text)).await.is_err() {
                session.transport_closed(Timestamp::now());
                drain_events(session, pipes);
                return Err(Ended::Dropped);
            }
        }
        if drain_events(session, pipes) {
            quiet = false;
        }
        if quiet {
            return Ok(());
        }
    }
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
}

impl Deref for CemConn {
    type Target = CemSide;

    fn deref(&self) -> &CemSide {
        &self.side
    }
}

impl DerefMut for CemConn {
    fn deref_mut(&mut self) -> &mut CemSide {
        &mut self.side
    }
}
