//! The client link against loopback CEM servers: a real s2-kit CemSession and raw peers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use s2_kit::io::{Driver, WebSocket};
use s2_kit::session::{CemEvent, RmEvent};
use s2gw_core::s2::{
    CommodityQuantity, Message, MessageKind, PowerMeasurement, PowerValue, ReceptionStatusValues,
    Timestamp,
};
use s2gw_core::{BusEvent, CancellationToken, Endpoint, EndpointPeer, Frame, Secret};
use s2gw_ws::{ClientConfig, spawn_client};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

struct Link {
    peer: EndpointPeer,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn config(listener: &TcpListener) -> ClientConfig {
    let port = listener.local_addr().unwrap().port();
    ClientConfig {
        url: format!("ws://127.0.0.1:{port}/s2/{{resource_id}}"),
        // Fast back-off so reconnect tests do not wait seconds.
        backoff: (Duration::from_millis(20), Duration::from_millis(200)),
        ..ClientConfig::default()
    }
}

fn start(config: ClientConfig) -> Link {
    trace();
    let (endpoint, peer) = Endpoint::pair(64);
    let shutdown = CancellationToken::new();
    let task = spawn_client(config, "battery-1".to_string(), endpoint, shutdown.clone());
    Link {
        peer,
        shutdown,
        task,
    }
}

impl Link {
    async fn stop(self) {
        self.shutdown.cancel();
        guard("the link to stop", self.task).await.unwrap();
    }
}

/// A full handshake through the link: the bus side is a real s2-kit RmSession, the far
/// end a real s2-kit CemSession over a real loopback WebSocket.
#[tokio::test]
async fn handshake_both_ways_through_the_link() {
    let listener = listener().await;
    let mut config = config(&listener);
    config.bearer = Some(Secret::new("letmein"));
    let mut link = start(config);

    // The RM side comes up and speaks first: its Handshake waits for the link.
    let (mut rm, frames) = rm_session();
    to_adapter(&link.peer, BusEvent::Up).await;
    for frame in frames {
        to_adapter(&link.peer, BusEvent::Frame(frame)).await;
    }

    let (ws, upgrade) = accept(&listener).await;
    assert_eq!(upgrade.path, "/s2/battery-1");
    assert_eq!(
        upgrade.headers.get("authorization").unwrap(),
        "Bearer letmein"
    );

    // The CEM: a real session driven over the accepted socket.
    let (cem_events_tx, mut cem_events) = tokio::sync::mpsc::unbounded_channel();
    let cem_task = tokio::spawn(async move {
        // Opened here rather than through `cem_session()`, which drains the outbox.
        let mut cem = s2_kit::session::CemSession::new(s2_kit::session::CemConfig::default());
        cem.open(Timestamp::now());
        let mut driver = Driver::new(WebSocket::from_stream(ws));
        loop {
            if driver.step(&mut cem).await.is_err() {
                return;
            }
            while let Some(event) = cem.poll_event() {
                let _ = cem_events_tx.send(event);
            }
            if cem.state().is_closed() {
                return;
            }
        }
    });

    expect_up(&mut link.peer).await;

    // Play the RM on the bus: feed what the link delivers into the RmSession and send
    // its answers back, until both sessions have negotiated and the CEM knows the RM.
    let mut saw_cem_handshake = false;
    let mut rm_negotiated = false;
    let mut described = false;
    while !(saw_cem_handshake && rm_negotiated && described) {
        tokio::select! {
            event = next_event(&mut link.peer) => match event {
                BusEvent::Frame(frame) => {
                    if frame.kind() == MessageKind::Handshake {
                        saw_cem_handshake = true;
                    }
                    rm.handle_text(frame.text(), Timestamp::now());
                    while let Some(out) = rm.poll_transmit() {
                        let frame = Frame::from_own_text(out.text).unwrap();
                        to_adapter(&link.peer, BusEvent::Frame(frame)).await;
                    }
                    while let Some(event) = rm.poll_event() {
                        if matches!(event, RmEvent::Negotiated { .. }) {
                            rm_negotiated = true;
                        }
                    }
                }
                BusEvent::Rejected(rejection) => panic!("unexpected refusal: {rejection:?}"),
                other => panic!("unexpected event {other:?}"),
            },
            event = guard("a CEM event", cem_events.recv()) => {
                if matches!(event, Some(CemEvent::ResourceDescribed(_))) {
                    described = true;
                }
            }
        }
    }

    link.stop().await;
    guard("the CEM to see the close", cem_task).await.unwrap();
}

#[tokio::test]
async fn bad_frames_are_answered_and_the_session_goes_on() {
    let listener = listener().await;
    let mut config = config(&listener);
    config.max_frame_bytes = 1024;
    let mut link = start(config);
    to_adapter(&link.peer, BusEvent::Up).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    // Not JSON.
    send_text(&mut ws, "this is not json").await;
    assert_eq!(
        read_status(&mut ws).await,
        ReceptionStatusValues::InvalidData
    );
    assert_eq!(
        expect_rejected(&mut link.peer).await.status,
        ReceptionStatusValues::InvalidData
    );

    // JSON, but not the schema.
    send_text(
        &mut ws,
        r#"{"message_type":"SelectControlType","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000001","control_type":"NOPE"}"#,
    )
    .await;
    assert_eq!(
        read_status(&mut ws).await,
        ReceptionStatusValues::InvalidMessage
    );
    expect_rejected(&mut link.peer).await;

    // A message type nobody knows.
    send_text(
        &mut ws,
        r#"{"message_type":"FluxCapacitorStatus","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000002"}"#,
    )
    .await;
    assert_eq!(
        read_status(&mut ws).await,
        ReceptionStatusValues::InvalidMessage
    );
    expect_rejected(&mut link.peer).await;

    // Over the limit, under the hard cap.
    send_text(&mut ws, format!("\"{}\"", "x".repeat(2000))).await;
    assert_eq!(
        read_status(&mut ws).await,
        ReceptionStatusValues::InvalidData
    );
    expect_rejected(&mut link.peer).await;

    // Binary.
    guard("a send", ws.send(WsMessage::binary(vec![0u8, 1, 2, 3])))
        .await
        .unwrap();
    assert_eq!(
        read_status(&mut ws).await,
        ReceptionStatusValues::InvalidData
    );
    expect_rejected(&mut link.peer).await;

    // And the session is still up: a valid frame goes through to the bus.
    send_text(&mut ws, cem_handshake_text()).await;
    let frame = expect_frame(&mut link.peer).await;
    assert_eq!(frame.kind(), MessageKind::Handshake);

    link.stop().await;
}

#[tokio::test]
async fn a_cem_beyond_the_frame_rate_gets_temporary_error_naming_each_frame() {
    let listener = listener().await;
    let mut config = config(&listener);
    config.max_frames_per_s = std::num::NonZeroU32::new(1);
    let mut link = start(config);
    to_adapter(&link.peer, BusEvent::Up).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    // The burst of one second's worth is one frame: the Handshake; then three more.
    let over: Vec<Frame> = (0..3).map(|_| cem_handshake_response()).collect();
    send_text(&mut ws, cem_handshake_text()).await;
    for frame in &over {
        send_text(&mut ws, frame.text()).await;
    }
    assert_eq!(
        expect_frame(&mut link.peer).await.kind(),
        MessageKind::Handshake
    );
    let expected: Vec<_> = over
        .iter()
        .map(|f| {
            (
                ReceptionStatusValues::TemporaryError,
                f.id().unwrap().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(read_statuses(&mut ws, over.len()).await, expected);
    for frame in &over {
        let rejection = expect_rejected(&mut link.peer).await;
        assert_eq!(
            (rejection.status, rejection.subject),
            (ReceptionStatusValues::TemporaryError, frame.id().unwrap())
        );
        assert_eq!(rejection.kind, Some(MessageKind::HandshakeResponse));
    }
    // The session is still up: the RM side's next frame reaches the CEM on it.
    let hello = rm_handshake();
    to_adapter(&link.peer, BusEvent::Frame(hello.clone())).await;
    assert_eq!(read_message(&mut ws).await.id(), hello.id());

    link.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_hard_cap_closes_cleanly_with_1009() {
    let listener = listener().await;
    let mut config = config(&listener);
    config.max_frame_bytes = 1024;
    let mut link = start(config);
    to_adapter(&link.peer, BusEvent::Up).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    send_text(&mut ws, "y".repeat(5000)).await;
    let close = read_close(&mut ws).await.expect("a close code");
    assert_eq!(close.code, CloseCode::Size);
    let reason = expect_down(&mut link.peer).await;
    assert!(reason.contains("hard cap"), "{reason}");

    link.stop().await;
}

#[tokio::test]
async fn the_link_redials_after_the_cem_restarts_on_the_same_port() {
    let listener = listener().await;
    let addr = listener.local_addr().unwrap();
    let mut link = start(config(&listener));
    to_adapter(&link.peer, BusEvent::Up).await;
    let (ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    // The CEM goes away entirely.
    drop(ws);
    drop(listener);
    expect_down(&mut link.peer).await;

    // And comes back on the same port.
    let listener = TcpListener::bind(addr).await.unwrap();
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;
    // It is a working session again.
    send_text(&mut ws, cem_handshake_text()).await;
    assert_eq!(
        expect_frame(&mut link.peer).await.kind(),
        MessageKind::Handshake
    );

    link.stop().await;
}

#[tokio::test]
async fn frames_of_an_ended_session_are_not_sent_into_the_next_one() {
    let listener = listener().await;
    let addr = listener.local_addr().unwrap();
    let mut link = start(config(&listener));
    to_adapter(&link.peer, BusEvent::Up).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;
    send_handshake(&link).await;
    assert!(matches!(read_message(&mut ws).await, Message::Handshake(_)));
    drop(ws);
    drop(listener);
    expect_down(&mut link.peer).await;

    // The RM had not heard the Down yet: a measurement of the old session, then the
    // Handshake that opens the next one.
    to_adapter(&link.peer, BusEvent::Frame(measurement())).await;
    send_handshake(&link).await;

    let listener = TcpListener::bind(addr).await.unwrap();
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;
    match read_message(&mut ws).await {
        Message::Handshake(_) => {}
        other => panic!("the next session must open with the Handshake, got {other:?}"),
    }
    link.stop().await;
}

fn measurement() -> Frame {
    Frame::new(Message::PowerMeasurement(PowerMeasurement {
        message_id: s2gw_core::s2::mint_id(),
        measurement_timestamp: Timestamp::now(),
        values: vec![PowerValue {
            commodity_quantity: CommodityQuantity::ElectricPowerL1,
            value: 1.0,
        }],
    }))
}

async fn send_handshake(link: &Link) {
    let (_, handshake) = rm_session();
    for frame in handshake {
        to_adapter(&link.peer, BusEvent::Frame(frame)).await;
    }
}

/// A CEM that accepts the WebSocket and closes it at once with 1011, as a CEM that fails
/// internally does.
async fn accept_and_fail(listener: &TcpListener, link: &mut Link) {
    let (mut ws, _) = accept(listener).await;
    expect_up(&mut link.peer).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Error,
        reason: "internal error".into(),
    }))
    .await
    .unwrap();
    expect_down(&mut link.peer).await;
}

/// The next session's first two messages: exactly one Handshake, then the RM's next
/// message (the measurement the test sent as a marker).
async fn assert_one_handshake_then_marker<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match read_message(ws).await {
        Message::Handshake(_) => {}
        other => panic!("the session must open with the Handshake, got {other:?}"),
    }
    match read_message(ws).await {
        Message::PowerMeasurement(_) => {}
        other => panic!("exactly one Handshake per session, then the marker; got {other:?}"),
    }
}

/// Regression: after a CEM closed with 1011 at once, the RM's answer to that connection's
/// Up (a Handshake) arrived while the link was away, was queued and opened the next
/// session together with the next Handshake: two HandshakeResponses, two
/// ResourceManagerDetails.
#[tokio::test]
async fn a_handshake_answering_a_closed_connection_never_opens_the_next() {
    let listener = listener().await;
    let mut link = start(config(&listener));
    to_adapter(&link.peer, BusEvent::Up).await;
    accept_and_fail(&listener, &mut link).await;
    // The RM answers the first Up only now, after the Down.
    send_handshake(&link).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;
    send_handshake(&link).await;
    to_adapter(&link.peer, BusEvent::Frame(measurement())).await;
    assert_one_handshake_then_marker(&mut ws).await;
    link.stop().await;
}

/// The same with a slow RM: its answer to the first connection's Up reaches the link only
/// after the second connection is up.
#[tokio::test]
async fn a_handshake_answering_a_closed_connection_is_dropped_even_when_late() {
    let listener = listener().await;
    let mut link = start(config(&listener));
    to_adapter(&link.peer, BusEvent::Up).await;
    accept_and_fail(&listener, &mut link).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;
    send_handshake(&link).await; // answers the first Up
    send_handshake(&link).await; // answers the second
    to_adapter(&link.peer, BusEvent::Frame(measurement())).await;
    assert_one_handshake_then_marker(&mut ws).await;
    link.stop().await;
}

#[tokio::test]
async fn terminate_sends_a_close_frame_and_down() {
    let listener = listener().await;
    let mut link = start(config(&listener));
    to_adapter(&link.peer, BusEvent::Up).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    to_adapter(
        &link.peer,
        BusEvent::Close {
            reconnect: false,
            reason: "session terminated".to_string(),
        },
    )
    .await;
    let close = read_close(&mut ws).await.expect("a close code");
    assert_eq!(close.code, CloseCode::Normal);
    assert_eq!(close.reason.as_str(), "session terminated");
    expect_down(&mut link.peer).await;

    link.stop().await;
}

#[tokio::test]
async fn reconnect_closes_and_redials_at_once() {
    let listener = listener().await;
    let mut config = config(&listener);
    // A back-off floor far beyond the test guard: only an immediate redial passes.
    config.backoff = (Duration::from_secs(600), Duration::from_secs(600));
    let mut link = start(config);
    to_adapter(&link.peer, BusEvent::Up).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    to_adapter(
        &link.peer,
        BusEvent::Close {
            reconnect: true,
            reason: "reconnect".to_string(),
        },
    )
    .await;
    assert_eq!(read_close(&mut ws).await.unwrap().code, CloseCode::Normal);
    expect_down(&mut link.peer).await;
    let (_ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    link.stop().await;
}

#[tokio::test]
async fn rm_down_closes_the_link_until_the_rm_is_back() {
    let listener = listener().await;
    let mut link = start(config(&listener));
    to_adapter(&link.peer, BusEvent::Up).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    to_adapter(
        &link.peer,
        BusEvent::Down {
            reason: "native RM left".to_string(),
        },
    )
    .await;
    assert_eq!(read_close(&mut ws).await.unwrap().code, CloseCode::Normal);
    expect_down(&mut link.peer).await;

    // The next Up brings the link back.
    to_adapter(&link.peer, BusEvent::Up).await;
    let (_ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    link.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_detected_as_dead() {
    let listener = listener().await;
    let mut config = config(&listener);
    config.ping_interval = Duration::from_millis(100);
    config.dead_after = Duration::from_millis(300);
    let mut link = start(config);
    to_adapter(&link.peer, BusEvent::Up).await;
    // Accepted and then never read: no pong ever comes back.
    let (_silent, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    let reason = expect_down(&mut link.peer).await;
    assert!(reason.contains("dead peer"), "{reason}");
    // And the link dials again.
    let (_ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    link.stop().await;
}

#[tokio::test]
async fn a_live_peer_answering_pings_stays_up() {
    let listener = listener().await;
    let mut config = config(&listener);
    // Room for a loaded CI machine: a test thread starved for a while must not look
    // like a dead peer.
    config.ping_interval = Duration::from_millis(100);
    config.dead_after = Duration::from_millis(600);
    let mut link = start(config);
    to_adapter(&link.peer, BusEvent::Up).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    // Reading is what makes tungstenite answer pings: count several pings, well past
    // `dead_after`, and the link must not have gone down meanwhile.
    let mut pings = 0;
    while pings < 12 {
        match guard("a ping", futures_util::StreamExt::next(&mut ws)).await {
            Some(Ok(WsMessage::Ping(_))) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(link.peer.rx.try_recv().is_err(), "no Down while pongs flow");

    link.stop().await;
}

#[tokio::test]
async fn shutdown_closes_with_going_away() {
    let listener = listener().await;
    let mut link = start(config(&listener));
    to_adapter(&link.peer, BusEvent::Up).await;
    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;

    link.shutdown.cancel();
    assert_eq!(read_close(&mut ws).await.unwrap().code, CloseCode::Away);
    guard("the link to stop", link.task).await.unwrap();
}

/// The link core on the WebSocket client: the RM side's frames for a connection the CEM
/// closed never reach the next connection, whether they arrive while the link is away or
/// once the next connection is up; that one opens with exactly one Handshake. And
/// malformed frames are answered there while the session goes on.
#[tokio::test]
async fn link_core_drops_stale_frames_and_refuses_bad_ones() {
    let listener = listener().await;
    let mut link = start(config(&listener));
    to_adapter(&link.peer, BusEvent::Up).await;
    let (mut first, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;
    let (hello, marker) = (rm_handshake(), rm_measurement());
    to_adapter(&link.peer, BusEvent::Frame(hello.clone())).await;
    to_adapter(&link.peer, BusEvent::Frame(marker.clone())).await;
    assert_opens_with(&mut first, &hello, &marker).await;
    drop(first);
    expect_down(&mut link.peer).await;
    // The RM has not heard the Down yet: more of the first session, while the link is away…
    to_adapter(&link.peer, BusEvent::Frame(rm_measurement())).await;

    let (mut ws, _) = accept(&listener).await;
    expect_up(&mut link.peer).await;
    // … and once the next connection is up, before the RM answers its Up.
    to_adapter(&link.peer, BusEvent::Frame(rm_measurement())).await;
    let (hello, marker) = (rm_handshake(), rm_measurement());
    to_adapter(&link.peer, BusEvent::Frame(hello.clone())).await;
    to_adapter(&link.peer, BusEvent::Frame(marker.clone())).await;
    assert_opens_with(&mut ws, &hello, &marker).await;

    assert_refuses_and_goes_on(
        &mut ws,
        &mut link.peer,
        &cem_handshake_text(),
        MessageKind::Handshake,
    )
    .await;
    link.stop().await;
}
