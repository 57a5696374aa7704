//! The server against loopback peers: a real s2-kit RmSession as a native RM, raw CEMs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::serving::*;
use common::*;
use s2_kit::io::{Driver, WebSocket};
use s2_kit::session::{CemEvent, RmConfig, RmEvent, RmSession};
use s2gw_core::s2::{Message, MessageKind, ReceptionStatusValues, Timestamp};
use s2gw_core::{BusEvent, CancellationToken, Endpoint, Frame, Secret};
use s2gw_ws::{Server, ServerConfig, WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A native RM (s2-kit RmSession over s2-kit's WebSocket) dials in; the bus side plays
/// the CEM with a real CemSession, and the two negotiate through the server.
#[tokio::test]
async fn a_native_rm_connects_and_negotiates_through_the_server() {
    let mut running = serve(ServerConfig::default()).await;
    let url = format!("{}/s2/rm/r1", running.url);

    let (rm_events_tx, mut rm_events) = tokio::sync::mpsc::unbounded_channel();
    let rm_task = tokio::spawn(async move {
        let socket = WebSocket::connect(&url, None).await.unwrap();
        let mut rm = RmSession::new(RmConfig::default(), s2_kit::testing::battery_details());
        rm.open(Timestamp::now());
        let mut driver = Driver::new(socket);
        while !rm.state().is_closed() {
            if driver.step(&mut rm).await.is_err() {
                break;
            }
            while let Some(event) = rm.poll_event() {
                let _ = rm_events_tx.send(event);
            }
        }
    });

    expect_up(&mut running.rm).await;
    let first = expect_frame(&mut running.rm).await;
    assert_eq!(first.kind(), MessageKind::Handshake);

    // The CEM on the bus side, sans-IO.
    let mut cem = s2_kit::session::CemSession::new(s2_kit::session::CemConfig::default());
    cem.open(Timestamp::now());
    let mut pending = vec![first];
    let mut described = false;
    let mut rm_negotiated = false;
    while !(described && rm_negotiated) {
        for frame in pending.drain(..) {
            cem.handle_text(frame.text(), Timestamp::now());
        }
        while let Some(out) = cem.poll_transmit() {
            let frame = Frame::from_own_text(out.text).unwrap();
            to_adapter(&running.rm, BusEvent::Frame(frame)).await;
        }
        while let Some(event) = cem.poll_event() {
            if matches!(event, CemEvent::ResourceDescribed(_)) {
                described = true;
            }
        }
        if described && rm_negotiated {
            break;
        }
        tokio::select! {
            event = next_event(&mut running.rm) => match event {
                BusEvent::Frame(frame) => pending.push(frame),
                BusEvent::Rejected(rejection) => panic!("unexpected refusal {rejection:?}"),
                other => panic!("unexpected {other:?}"),
            },
            event = guard("an RM event", rm_events.recv()) => {
                if matches!(event, Some(RmEvent::Negotiated { .. })) {
                    rm_negotiated = true;
                }
            }
        }
    }

    // The CEM side goes away: the native RM's session is over and its socket closed.
    to_adapter(
        &running.rm,
        BusEvent::Down {
            reason: "CEM link lost".to_string(),
        },
    )
    .await;
    loop {
        match next_non_rejected(&mut running.rm).await {
            BusEvent::Down { .. } => break,
            // Acknowledgements still in flight from the RM.
            BusEvent::Frame(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    guard("the RM to see the close", rm_task).await.unwrap();
    running.stop().await;
}

#[tokio::test]
async fn unknown_paths_get_404() {
    let running = serve(ServerConfig::default()).await;
    for path in ["/s2/rm/nope", "/s2/cem/nope", "/", "/s2/rm/r1/extra"] {
        let error = dial(&format!("{}{path}", running.url)).await.unwrap_err();
        assert_eq!(status_of(error), 404, "{path}");
    }
    running.stop().await;
}

#[tokio::test]
async fn a_second_connection_to_a_busy_slot_gets_409() {
    let mut running = serve(ServerConfig::default()).await;
    let url = format!("{}/s2/rm/r1", running.url);
    let mut first = dial(&url).await.unwrap();
    expect_up(&mut running.rm).await;

    let error = dial(&url).await.unwrap_err();
    assert_eq!(status_of(error), 409);

    // The first one is unaffected.
    let (_, frames) = rm_session();
    send_text(&mut first, frames[0].text()).await;
    assert_eq!(
        expect_frame(&mut running.rm).await.kind(),
        MessageKind::Handshake
    );

    // Once it leaves, the slot is free again.
    drop(first);
    expect_down(&mut running.rm).await;
    let _third = dial(&url).await.unwrap();
    expect_up(&mut running.rm).await;

    running.stop().await;
}

#[tokio::test]
async fn the_bearer_token_is_checked_in_the_upgrade() {
    let mut running = serve(ServerConfig {
        bearer: Some(Secret::new("s3cret")),
        ..ServerConfig::default()
    })
    .await;
    let url = format!("{}/s2/cem/r1", running.url);

    let missing = dial_with(&url, None).await.unwrap_err();
    assert_eq!(status_of(missing), 401);
    let wrong = dial_with(&url, Some("Bearer nope")).await.unwrap_err();
    assert_eq!(status_of(wrong), 401);
    // Unknown paths do not leak past authentication either.
    let probe = dial_with(&format!("{}/s2/cem/other", running.url), None)
        .await
        .unwrap_err();
    assert_eq!(status_of(probe), 401);

    let _ok = dial_with(&url, Some("Bearer s3cret")).await.unwrap();
    expect_up(&mut running.cem).await;

    running.stop().await;
}

#[tokio::test]
async fn a_cem_slot_with_its_own_token_accepts_only_that_token() {
    trace();
    let mut server = Server::bind(ServerConfig {
        bearer: Some(Secret::new("server-token")),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let (endpoint, mut cem) = Endpoint::pair(64);
    server.add_cem_slot_with_token("r9".to_string(), endpoint, Secret::new("cem-token"));
    let url = format!("ws://{}/s2/cem/r9", server.local_addr());
    let shutdown = CancellationToken::new();
    let task = server.spawn(shutdown.clone());

    let server_token = dial_with(&url, Some("Bearer server-token"))
        .await
        .unwrap_err();
    assert_eq!(status_of(server_token), 401);
    let _ok = dial_with(&url, Some("Bearer cem-token")).await.unwrap();
    expect_up(&mut cem).await;

    shutdown.cancel();
    guard("the server to stop", task).await.unwrap();
}

/// Opens `r9` for the token `one-use` once.
#[derive(Debug, Default)]
struct OneUse(std::sync::atomic::AtomicBool);

impl s2gw_ws::TokenDoor for OneUse {
    fn open(&self, presented: &str) -> Option<String> {
        let used = || self.0.swap(true, std::sync::atomic::Ordering::SeqCst);
        (presented == "one-use" && !used()).then(|| "r9".to_string())
    }
}

#[tokio::test]
async fn a_token_door_opens_the_slot_its_token_names_once_and_the_slots_own_path_stays_shut() {
    let mut server = Server::bind(ServerConfig {
        bearer: Some(Secret::new("server-token")),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let (endpoint, mut cem) = Endpoint::pair(64);
    server.add_cem_slot_behind_door("r9".to_string(), endpoint);
    server.add_token_door(
        "/s2/connect".to_string(),
        std::sync::Arc::new(OneUse::default()),
    );
    let base = format!("ws://{}", server.local_addr());
    let shutdown = CancellationToken::new();
    let task = server.spawn(shutdown.clone());

    // Behind the door only: not even the server's own token opens its path.
    let direct = dial_with(&format!("{base}/s2/cem/r9"), Some("Bearer server-token"))
        .await
        .unwrap_err();
    assert_eq!(status_of(direct), 404);
    let door = format!("{base}/s2/connect");
    let unknown = dial_with(&door, Some("Bearer server-token"))
        .await
        .unwrap_err();
    assert_eq!(status_of(unknown), 401);
    let missing = dial_with(&door, None).await.unwrap_err();
    assert_eq!(status_of(missing), 401);
    let (_, frames) = cem_session();
    let mut ok = dial_with(&door, Some("Bearer one-use")).await.unwrap();
    expect_up(&mut cem).await;
    send_text(&mut ok, frames[0].text()).await;
    assert_eq!(expect_frame(&mut cem).await.kind(), MessageKind::Handshake);
    // The door said no to the replay; the slot is not even asked.
    let replay = dial_with(&door, Some("Bearer one-use")).await.unwrap_err();
    assert_eq!(status_of(replay), 401);

    shutdown.cancel();
    guard("the server to stop", task).await.unwrap();
}

#[tokio::test]
async fn a_cem_slot_checks_frames_and_closes_when_the_rm_goes() {
    let mut running = serve(ServerConfig {
        max_frame_bytes: 1024,
        ..ServerConfig::default()
    })
    .await;
    let mut cem = dial(&format!("{}/s2/cem/r1", running.url)).await.unwrap();
    expect_up(&mut running.cem).await;

    send_text(&mut cem, "{not json").await;
    assert_eq!(
        read_status(&mut cem).await,
        ReceptionStatusValues::InvalidData
    );
    expect_rejected(&mut running.cem).await;
    send_text(&mut cem, format!("\"{}\"", "z".repeat(3000))).await;
    assert_eq!(
        read_status(&mut cem).await,
        ReceptionStatusValues::InvalidData
    );
    expect_rejected(&mut running.cem).await;

    send_text(&mut cem, cem_handshake_text()).await;
    assert_eq!(
        expect_frame(&mut running.cem).await.kind(),
        MessageKind::Handshake
    );

    // A frame from the RM side reaches the CEM.
    let (_, frames) = rm_session();
    to_adapter(&running.cem, BusEvent::Frame(frames[0].clone())).await;
    match read_message(&mut cem).await {
        Message::Handshake(_) => {}
        other => panic!("expected the RM's Handshake, got {:?}", other.kind()),
    }

    to_adapter(
        &running.cem,
        BusEvent::Down {
            reason: "RM gone".to_string(),
        },
    )
    .await;
    assert_eq!(read_close(&mut cem).await.unwrap().code, CloseCode::Normal);
    expect_down(&mut running.cem).await;

    running.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_hard_cap_closes_the_server_connection() {
    let mut running = serve(ServerConfig {
        max_frame_bytes: 1024,
        ..ServerConfig::default()
    })
    .await;
    let mut rm = dial(&format!("{}/s2/rm/r1", running.url)).await.unwrap();
    expect_up(&mut running.rm).await;
    send_text(&mut rm, "q".repeat(4097)).await;
    assert_eq!(read_close(&mut rm).await.unwrap().code, CloseCode::Size);
    expect_down(&mut running.rm).await;
    running.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_detected_as_dead_and_others_are_unaffected() {
    let mut running = serve(ServerConfig {
        ping_interval: Duration::from_millis(100),
        dead_after: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    // Connected and then never read: it never answers a ping.
    let _silent = dial(&format!("{}/s2/rm/r1", running.url)).await.unwrap();
    expect_up(&mut running.rm).await;
    // Meanwhile a CEM on the other slot keeps working: it reads all the time (so it
    // answers pings) in a task of its own.
    let cem = dial(&format!("{}/s2/cem/r1", running.url)).await.unwrap();
    expect_up(&mut running.cem).await;
    let (mut cem_tx, mut cem_rx) = futures_util::StreamExt::split(cem);
    let reader = tokio::spawn(async move {
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut cem_rx).await {}
    });

    let reason = expect_down(&mut running.rm).await;
    assert!(reason.contains("dead peer"), "{reason}");

    guard(
        "a send",
        futures_util::SinkExt::send(
            &mut cem_tx,
            tokio_tungstenite::tungstenite::Message::text(cem_handshake_text()),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        expect_frame(&mut running.cem).await.kind(),
        MessageKind::Handshake
    );
    running.stop().await;
    guard("the CEM reader to end", reader).await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_connections_with_going_away() {
    let mut running = serve(ServerConfig::default()).await;
    let mut rm = dial(&format!("{}/s2/rm/r1", running.url)).await.unwrap();
    expect_up(&mut running.rm).await;
    running.shutdown.cancel();
    assert_eq!(read_close(&mut rm).await.unwrap().code, CloseCode::Away);
    guard("the server to stop", running.task).await.unwrap();
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    let taken = listener().await;
    let addr = taken.local_addr().unwrap();
    let error = Server::bind(ServerConfig {
        listen: addr,
        ..ServerConfig::default()
    })
    .await
    .unwrap_err();
    assert!(matches!(error, WsError::Bind { .. }));
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

/// The link core on the server's CEM slot: the RM side's frames for a CEM connection that
/// closed never reach the next one, whether they arrive while no CEM is connected or once
/// the next one is; that one opens with exactly one Handshake. Malformed frames are
/// answered there while the session goes on.
#[tokio::test]
async fn link_core_cem_slot_drops_stale_frames_and_refuses_bad_ones() {
    let mut running = serve(ServerConfig::default()).await;
    let url = format!("{}/s2/cem/r1", running.url);
    to_adapter(&running.cem, BusEvent::Up).await;
    let mut first = dial(&url).await.unwrap();
    expect_up(&mut running.cem).await;
    let (hello, marker) = (rm_handshake(), rm_measurement());
    to_adapter(&running.cem, BusEvent::Frame(hello.clone())).await;
    to_adapter(&running.cem, BusEvent::Frame(marker.clone())).await;
    assert_opens_with(&mut first, &hello, &marker).await;
    drop(first);
    expect_down(&mut running.cem).await;
    // The RM has not heard the Down yet: more of the first session, while no CEM is
    // connected…
    to_adapter(&running.cem, BusEvent::Frame(rm_measurement())).await;

    let mut cem = dial(&url).await.unwrap();
    expect_up(&mut running.cem).await;
    // … and once the next CEM is, before the RM answers its Up.
    to_adapter(&running.cem, BusEvent::Frame(rm_measurement())).await;
    let (hello, marker) = (rm_handshake(), rm_measurement());
    to_adapter(&running.cem, BusEvent::Frame(hello.clone())).await;
    to_adapter(&running.cem, BusEvent::Frame(marker.clone())).await;
    assert_opens_with(&mut cem, &hello, &marker).await;

    assert_refuses_and_goes_on(
        &mut cem,
        &mut running.cem,
        &cem_handshake_text(),
        MessageKind::Handshake,
    )
    .await;
    running.stop().await;
}

/// The link core on the server's native-RM slot: what the CEM side sends while no RM is
/// connected belongs to a session that is over and never reaches the next connection,
/// which gets exactly one Handshake; malformed frames are answered there while the
/// session goes on.
#[tokio::test]
async fn link_core_native_rm_slot_drops_stale_frames_and_refuses_bad_ones() {
    // Room for one event towards the slot: see the synchronisation below.
    let NarrowSlot {
        url,
        mut bus,
        shutdown,
        task,
    } = serve_narrow_native_rm("r2").await;

    let first = dial(&url).await.unwrap();
    expect_up(&mut bus).await;
    drop(first);
    expect_down(&mut bus).await;
    // The CEM side answers the closed connection late.
    to_adapter(&bus, BusEvent::Frame(cem_handshake())).await;
    // With room for one event, this completes only once the slot took the stale frame,
    // and the slot handles an event before it looks at anything else (a new connection
    // included): the stale frame meets a slot without a connection.
    let filler = s2gw_core::Rejection::unreadable("test filler".to_string());
    to_adapter(&bus, BusEvent::Rejected(Box::new(filler))).await;

    let mut rm = dial(&url).await.unwrap();
    expect_up(&mut bus).await;
    let rm_hello = rm_handshake();
    send_text(&mut rm, rm_hello.text()).await;
    assert_eq!(expect_frame(&mut bus).await.id(), rm_hello.id());
    let (hello, marker) = (cem_handshake(), cem_handshake_response());
    to_adapter(&bus, BusEvent::Frame(hello.clone())).await;
    to_adapter(&bus, BusEvent::Frame(marker.clone())).await;
    assert_opens_with(&mut rm, &hello, &marker).await;

    let ack = format!(
        r#"{{"message_type":"ReceptionStatus","subject_message_id":"{}","status":"OK"}}"#,
        hello.id().unwrap().as_str()
    );
    assert_refuses_and_goes_on(&mut rm, &mut bus, &ack, MessageKind::ReceptionStatus).await;
    shutdown.cancel();
    guard("the server to stop", task).await.unwrap();
}

/// A full bus holds a connection's reading back, never its writing: while the RM floods
/// a route direction nobody drains, what the CEM side sends still reaches the RM. (A
/// proxied RM and its CEM both sending at full speed once stalled each other for good:
/// each connection waited for room on the bus and so never drained the other's frames.)
#[tokio::test]
async fn a_full_bus_holds_back_reading_but_frames_for_the_socket_still_go_out() {
    // Room for one event towards the bus, which this test does not drain at first.
    let NarrowSlot {
        url,
        mut bus,
        shutdown,
        task,
    } = serve_narrow_native_rm("r3").await;

    let mut rm = dial(&url).await.unwrap();
    expect_up(&mut bus).await;
    let mut sent = vec![rm_handshake()];
    sent.extend((0..32).map(|_| rm_measurement()));
    for frame in &sent {
        send_text(&mut rm, frame.text()).await;
    }
    let (hello, marker) = (cem_handshake(), cem_handshake_response());
    to_adapter(&bus, BusEvent::Frame(hello.clone())).await;
    to_adapter(&bus, BusEvent::Frame(marker.clone())).await;
    assert_opens_with(&mut rm, &hello, &marker).await;

    // Nothing the RM sent was lost while the bus was full: all of it, in order.
    for frame in &sent {
        assert_eq!(expect_frame(&mut bus).await.id(), frame.id());
    }
    drop(rm);
    shutdown.cancel();
    guard("the server to stop", task).await.unwrap();
}
