//! Shared test helpers: loopback peers, guarded waits and S2 fixtures.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

pub mod serving;

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use s2_kit::session::{CemConfig, CemSession, RmConfig, RmSession};
use s2gw_core::s2::{Message, MessageKind, ReceptionStatusValues, Timestamp};
use s2gw_core::{BusEvent, EndpointPeer, Frame};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;

/// A failure guard, never a synchronisation: every await in a test is bounded by it.
pub const GUARD: Duration = Duration::from_secs(10);

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
                .unwrap_or_else(|_| "s2gw_ws=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The next event the adapter sent to the bus.
pub async fn next_event(peer: &mut EndpointPeer) -> BusEvent {
    guard("a bus event", peer.rx.recv())
        .await
        .expect("the adapter dropped its endpoint")
}

/// The next event that is not a `Rejected` (those are for the taps).
pub async fn next_non_rejected(peer: &mut EndpointPeer) -> BusEvent {
    loop {
        match next_event(peer).await {
            BusEvent::Rejected(_) => {}
            other => return other,
        }
    }
}

pub async fn expect_up(peer: &mut EndpointPeer) {
    match next_non_rejected(peer).await {
        BusEvent::Up => {}
        other => panic!("expected Up, got {other:?}"),
    }
}

pub async fn expect_down(peer: &mut EndpointPeer) -> String {
    match next_non_rejected(peer).await {
        BusEvent::Down { reason } => reason,
        other => panic!("expected Down, got {other:?}"),
    }
}

pub async fn expect_frame(peer: &mut EndpointPeer) -> Frame {
    match next_non_rejected(peer).await {
        BusEvent::Frame(frame) => frame,
        other => panic!("expected a frame, got {other:?}"),
    }
}

pub async fn expect_rejected(peer: &mut EndpointPeer) -> s2gw_core::Rejection {
    match next_event(peer).await {
        BusEvent::Rejected(rejection) => *rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Send an event to the adapter, as the bus would.
pub async fn to_adapter(peer: &EndpointPeer, event: BusEvent) {
    guard("the adapter to take an event", peer.tx.send(event))
        .await
        .expect("the adapter dropped its endpoint");
}

pub async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// What a raw test server saw in the upgrade request.
pub struct Upgrade {
    pub path: String,
    pub headers: HeaderMap,
}

/// Accept one WebSocket on a raw tokio-tungstenite server.
pub async fn accept(listener: &TcpListener) -> (WebSocketStream<TcpStream>, Upgrade) {
    let (tcp, _) = guard("a TCP connection", listener.accept()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut seen = None;
    let ws = guard(
        "a WebSocket upgrade",
        tokio_tungstenite::accept_hdr_async(tcp, |request: &Request, response: Response| {
            seen = Some(Upgrade {
                path: request.uri().path().to_string(),
                headers: request.headers().clone(),
            });
            Ok(response)
        }),
    )
    .await
    .unwrap();
    (ws, seen.unwrap())
}

/// What a raw peer reads next, skipping keep-alives.
pub enum Read {
    Text(String),
    Close(Option<CloseFrame>),
    Ended,
}

pub async fn read<S>(ws: &mut WebSocketStream<S>) -> Read
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match guard("a frame from the gateway", ws.next()).await {
            None | Some(Err(_)) => return Read::Ended,
            Some(Ok(WsMessage::Text(text))) => return Read::Text(text.to_string()),
            Some(Ok(WsMessage::Close(frame))) => return Read::Close(frame),
            Some(Ok(_)) => {}
        }
    }
}

/// The next text frame, decoded.
pub async fn read_message<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match read(ws).await {
        Read::Text(text) => s2gw_core::s2::decode(&text).unwrap(),
        Read::Close(frame) => panic!("expected a message, got a close: {frame:?}"),
        Read::Ended => panic!("expected a message, the connection ended"),
    }
}

/// The next ReceptionStatus's status.
pub async fn read_status<S>(ws: &mut WebSocketStream<S>) -> ReceptionStatusValues
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match read_message(ws).await {
        Message::ReceptionStatus(status) => status.status,
        other => panic!("expected a ReceptionStatus, got {:?}", other.kind()),
    }
}

/// The next `n` ReceptionStatuses: (status, subject id).
pub async fn read_statuses<S>(
    ws: &mut WebSocketStream<S>,
    n: usize,
) -> Vec<(ReceptionStatusValues, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    while out.len() < n {
        match read_message(ws).await {
            Message::ReceptionStatus(status) => out.push((
                status.status,
                status.subject_message_id.as_str().to_string(),
            )),
            other => panic!("expected a ReceptionStatus, got {:?}", other.kind()),
        }
    }
    out
}

/// The close frame the gateway sent, whatever came before it (answers, for instance).
pub async fn read_close<S>(ws: &mut WebSocketStream<S>) -> Option<CloseFrame>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match read(ws).await {
            Read::Text(_) => {}
            Read::Close(frame) => return frame,
            Read::Ended => panic!("the connection ended without a close frame"),
        }
    }
}

pub async fn send_text<S>(ws: &mut WebSocketStream<S>, text: impl Into<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let text: String = text.into();
    guard("a send", ws.send(WsMessage::text(text)))
        .await
        .unwrap();
}

/// A real s2-kit RM session, opened: its first transmissions (the Handshake).
pub fn rm_session() -> (RmSession, Vec<Frame>) {
    let mut rm = RmSession::new(RmConfig::default(), s2_kit::testing::battery_details());
    rm.open(Timestamp::now());
    let frames = drain(|| rm.poll_transmit().map(|out| out.text));
    (rm, frames)
}

/// A real s2-kit CEM session, opened: its first transmissions (the Handshake).
pub fn cem_session() -> (CemSession, Vec<Frame>) {
    let mut cem = CemSession::new(CemConfig::default());
    cem.open(Timestamp::now());
    let frames = drain(|| cem.poll_transmit().map(|out| out.text));
    (cem, frames)
}

fn drain(mut next: impl FnMut() -> Option<String>) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(text) = next() {
        frames.push(Frame::from_own_text(text).unwrap());
    }
    frames
}

/// The CEM's Handshake text, from a real CemSession.
pub fn cem_handshake_text() -> String {
    let (_, frames) = cem_session();
    let frame = frames
        .into_iter()
        .find(|f| f.kind() == MessageKind::Handshake)
        .unwrap();
    frame.text().to_string()
}

/// A PowerMeasurement from the RM side: a marker whose id tells one frame from another.
pub fn rm_measurement() -> Frame {
    use s2gw_core::s2::{CommodityQuantity, PowerMeasurement, PowerValue};
    Frame::new(Message::PowerMeasurement(PowerMeasurement {
        message_id: s2gw_core::s2::mint_id(),
        measurement_timestamp: Timestamp::now(),
        values: vec![PowerValue {
            commodity_quantity: CommodityQuantity::ElectricPowerL1,
            value: 1.0,
        }],
    }))
}

/// The RM's Handshake, from a real RmSession.
pub fn rm_handshake() -> Frame {
    let (_, frames) = rm_session();
    frames
        .into_iter()
        .find(|f| f.kind() == MessageKind::Handshake)
        .unwrap()
}

/// The CEM's Handshake, from a real CemSession.
pub fn cem_handshake() -> Frame {
    Frame::from_own_text(cem_handshake_text()).unwrap()
}

/// A HandshakeResponse from the CEM side: a marker whose id tells one frame from another.
pub fn cem_handshake_response() -> Frame {
    Frame::new(Message::HandshakeResponse(
        s2gw_core::s2::HandshakeResponse {
            message_id: s2gw_core::s2::mint_id(),
            selected_protocol_version: s2gw_core::s2::ProtocolVersion::V0_0_2_BETA,
        },
    ))
}

/// The link core's stale-frame promise, seen from the peer: the connection opens with
/// `hello` and then `marker`, exactly these two first, and nothing of an earlier one.
pub async fn assert_opens_with<S>(ws: &mut WebSocketStream<S>, hello: &Frame, marker: &Frame)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let first = read_message(ws).await;
    assert_eq!(
        (first.kind(), first.id()),
        (MessageKind::Handshake, hello.id()),
        "the connection must open with this session's Handshake"
    );
    let second = read_message(ws).await;
    assert_eq!(
        (second.kind(), second.id()),
        (marker.kind(), marker.id()),
        "exactly one Handshake, then the next frame of this session"
    );
}

/// The link core's refusal promise, seen from the peer and the bus: malformed frames get
/// INVALID_DATA and INVALID_MESSAGE on this connection, the bus sees `Rejected` for each,
/// and the session stays up: `valid` then reaches the bus as a frame of `kind`.
pub async fn assert_refuses_and_goes_on<S>(
    ws: &mut WebSocketStream<S>,
    bus: &mut EndpointPeer,
    valid: &str,
    kind: MessageKind,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    send_text(ws, "{not json").await;
    assert_eq!(read_status(ws).await, ReceptionStatusValues::InvalidData);
    assert_eq!(
        expect_rejected(bus).await.status,
        ReceptionStatusValues::InvalidData
    );
    send_text(
        ws,
        r#"{"message_type":"SelectControlType","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000001","control_type":"NOPE"}"#,
    )
    .await;
    assert_eq!(read_status(ws).await, ReceptionStatusValues::InvalidMessage);
    assert_eq!(
        expect_rejected(bus).await.status,
        ReceptionStatusValues::InvalidMessage
    );
    send_text(ws, valid).await;
    match next_event(bus).await {
        BusEvent::Frame(frame) => assert_eq!(frame.kind(), kind),
        other => panic!("the session must go on and deliver the valid frame, got {other:?}"),
    }
}
