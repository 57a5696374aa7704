//! The server's and the sessions' limits, each exceeded by a raw loopback peer while a
//! well-behaved one keeps working: sockets held, handshake time, failed bearer checks,
//! frames per second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use common::serving::*;
use common::*;
use s2gw_core::s2::{MessageKind, ReceptionStatusValues};
use s2gw_core::{BusEvent, Secret};
use s2gw_ws::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Error as WsProtoError;

/// Hosts a test plays, by their loopback address.
const GOOD: [u8; 4] = [127, 0, 0, 1];
const SLOW: [u8; 4] = [127, 0, 0, 2];
const OTHER: [u8; 4] = [127, 0, 0, 3];
const GREEDY: [u8; 4] = [127, 0, 0, 4];

fn addr_of(running: &Running) -> std::net::SocketAddr {
    running.url.trim_start_matches("ws://").parse().unwrap()
}

/// What the server sent on a raw socket before closing it: `None` when the socket ended
/// (closed or reset) without a byte.
async fn bytes_before_close(tcp: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    match guard("the server to close the socket", tcp.read_to_end(&mut got)).await {
        Ok(_) if got.is_empty() => None,
        Ok(_) => Some(got),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(error) => panic!("reading the refused socket: {error}"),
    }
}

/// The well-behaved peer: a native RM whose Handshake reaches the bus.
async fn native_rm_works(running: &mut Running) -> Raw {
    let mut rm = dial_from(GOOD, &format!("{}/s2/rm/r1", running.url), None)
        .await
        .expect("the well-behaved RM gets in");
    expect_up(&mut running.rm).await;
    send_text(&mut rm, rm_handshake().text()).await;
    assert_eq!(
        expect_frame(&mut running.rm).await.kind(),
        MessageKind::Handshake
    );
    rm
}

#[tokio::test]
async fn sockets_beyond_max_connections_are_closed_at_once_and_a_freed_place_is_used_again() {
    let mut running = serve(ServerConfig {
        max_connections: 3,
        ..ServerConfig::default()
    })
    .await;
    let addr = addr_of(&running);
    let mut rm = native_rm_works(&mut running).await;
    // Two more sockets from two hosts take the other places and say nothing.
    let mut slow = tcp_from(SLOW, addr).await;
    let _other = tcp_from(OTHER, addr).await;

    let mut refused = tcp_from(GREEDY, addr).await;
    refused
        .write_all(b"GET /s2/cem/r1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    assert_eq!(
        bytes_before_close(&mut refused).await,
        None,
        "closed at once, unread and unanswered"
    );

    // The session alongside goes on.
    let marker = rm_measurement();
    send_text(&mut rm, marker.text()).await;
    assert_eq!(expect_frame(&mut running.rm).await.id(), marker.id());

    // A socket that goes frees its place: the CEM gets in once the server has seen it go.
    slow.shutdown().await.unwrap();
    drop(slow);
    let url = format!("{}/s2/cem/r1", running.url);
    let deadline = Instant::now() + GUARD;
    let _cem = loop {
        match dial_from(GREEDY, &url, None).await {
            Ok(cem) => break cem,
            Err(WsProtoError::Http(response)) => panic!("refused with {}", response.status()),
            Err(_) if Instant::now() < deadline => tokio::task::yield_now().await,
            Err(error) => panic!("the freed place was never given out: {error}"),
        }
    };
    expect_up(&mut running.cem).await;
    running.stop().await;
}

/// A slowloris socket: its request line, then a header byte every 50 ms for as long as
/// the server reads. Resolves when the server has closed it, to what it answered.
async fn slowloris(tcp: tokio::net::TcpStream) -> Option<Vec<u8>> {
    let (mut read, mut write) = tcp.into_split();
    let trickle = tokio::spawn(async move {
        let _ = write.write_all(b"GET /s2/rm/r1 HTTP/1.1\r\nX-Slow: ").await;
        while write.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut got = Vec::new();
    let answer = match guard(
        "the server to close the slow socket",
        read.read_to_end(&mut got),
    )
    .await
    {
        Ok(_) if got.is_empty() => None,
        Ok(_) => Some(got),
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(error) => panic!("reading the slow socket: {error}"),
    };
    trickle.abort();
    answer
}

#[tokio::test]
async fn a_slow_handshake_is_closed_at_the_timeout_and_holds_no_more_than_its_share() {
    let timeout = Duration::from_secs(1);
    let mut running = serve(ServerConfig {
        max_connections: 8,
        handshake_timeout: timeout,
        ..ServerConfig::default()
    })
    .await;
    let addr = addr_of(&running);
    // Slowloris: two sockets (a quarter of 8) from one host, each trickling its request.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let tcp = tcp_from(SLOW, addr).await;
        slow.push(tokio::spawn(slowloris(tcp)));
    }
    // A third from the same host is over its share while the two are in handshake:
    // closed at once, long before the timeout would have closed it.
    let mut third = tcp_from(SLOW, addr).await;
    assert_eq!(bytes_before_close(&mut third).await, None);
    assert!(
        started.elapsed() < timeout,
        "the third was not closed at once"
    );

    // Another host is not held up by them.
    let mut rm = native_rm_works(&mut running).await;

    // Trickling does not stretch the deadline: both are closed at the timeout, unanswered.
    for task in slow {
        assert_eq!(task.await.unwrap(), None);
    }
    let took = started.elapsed();
    assert!(took >= timeout, "closed after {took:?}, before the timeout");
    // The session alongside is unaffected.
    let marker = rm_measurement();
    send_text(&mut rm, marker.text()).await;
    assert_eq!(expect_frame(&mut running.rm).await.id(), marker.id());
    running.stop().await;
}

#[tokio::test]
async fn after_max_failed_bearer_checks_a_host_gets_429_without_its_token_compared() {
    let running = serve(ServerConfig {
        bearer: Some(Secret::new("s3cret")),
        max_failed_auth_per_min: 3,
        ..ServerConfig::default()
    })
    .await;
    let url = format!("{}/s2/cem/r1", running.url);
    for attempt in 0..3 {
        let error = dial_from(SLOW, &url, Some("Bearer guess"))
            .await
            .unwrap_err();
        assert_eq!(status_of(error), 401, "attempt {attempt}");
    }
    for token in ["Bearer guess", "Bearer s3cret"] {
        let Err(WsProtoError::Http(response)) = dial_from(SLOW, &url, Some(token)).await else {
            panic!("expected an HTTP refusal");
        };
        assert_eq!(response.status().as_u16(), 429, "{token}");
        let retry: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    }
    // Another host with the right token gets in.
    let mut running = running;
    dial_from(GOOD, &url, Some("Bearer s3cret"))
        .await
        .expect("the well-behaved CEM gets in");
    expect_up(&mut running.cem).await;
    running.stop().await;
}

/// With a share of one socket in handshake per address, a peer that has read its
/// refusal's status line and dials again at once must be answered, not closed unread:
/// the share is given back before the answer goes out. (Before that, a redial could
/// race the server's task still finishing the refused socket, and was closed at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_has_read_its_refusal_may_dial_again_at_once() {
    let running = serve(ServerConfig {
        bearer: Some(Secret::new("s3cret")),
        max_connections: 4,
        max_failed_auth_per_min: 100_000,
        ..ServerConfig::default()
    })
    .await;
    let addr = addr_of(&running);
    for attempt in 0..500 {
        let mut tcp = tcp_from(SLOW, addr).await;
        let request = format!(
            "GET /s2/cem/r1 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nAuthorization: Bearer guess\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut status = [0u8; 12];
        let read = guard("the refusal", tcp.read_exact(&mut status)).await;
        assert!(
            read.is_ok(),
            "attempt {attempt}: closed unanswered ({read:?})"
        );
        assert_eq!(&status, b"HTTP/1.1 401", "attempt {attempt}");
    }
    running.stop().await;
}

#[tokio::test]
async fn frames_beyond_the_rate_get_temporary_error_naming_them_and_the_session_goes_on() {
    let mut running = serve(ServerConfig {
        // One a second: a frame passes only a whole second after the last, far more than
        // the server takes to read a burst, however loaded the machine.
        max_frames_per_s: NonZeroU32::new(1),
        ..ServerConfig::default()
    })
    .await;
    let mut rm = dial_from(SLOW, &format!("{}/s2/rm/r1", running.url), None)
        .await
        .unwrap();
    expect_up(&mut running.rm).await;
    // The burst of one second's worth passes: one frame.
    let within = [rm_handshake()];
    let over: Vec<_> = (0..4).map(|_| rm_measurement()).collect();
    for frame in within.iter().chain(&over) {
        send_text(&mut rm, frame.text()).await;
    }
    for frame in &within {
        assert_eq!(expect_frame(&mut running.rm).await.id(), frame.id());
    }
    let expected: Vec<_> = over
        .iter()
        .map(|f| {
            (
                ReceptionStatusValues::TemporaryError,
                f.id().unwrap().as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(read_statuses(&mut rm, over.len()).await, expected);
    for _ in &over {
        let rejection = expect_rejected(&mut running.rm).await;
        assert_eq!(rejection.status, ReceptionStatusValues::TemporaryError);
    }

    // A well-behaved CEM on the other slot is not affected by its neighbour.
    let mut cem = dial_from(GOOD, &format!("{}/s2/cem/r1", running.url), None)
        .await
        .unwrap();
    expect_up(&mut running.cem).await;
    send_text(&mut cem, cem_handshake_text()).await;
    assert_eq!(
        expect_frame(&mut running.cem).await.kind(),
        MessageKind::Handshake
    );

    // The flooding session was not closed: once its credit is back, frames pass again.
    let deadline = Instant::now() + GUARD;
    loop {
        let marker = rm_measurement();
        send_text(&mut rm, marker.text()).await;
        match next_event(&mut running.rm).await {
            BusEvent::Frame(frame) => {
                assert_eq!(frame.id(), marker.id());
                break;
            }
            BusEvent::Rejected(rejection) => {
                assert_eq!(rejection.status, ReceptionStatusValues::TemporaryError);
                assert_eq!(
                    read_statuses(&mut rm, 1).await[0].0,
                    ReceptionStatusValues::TemporaryError
                );
                assert!(
                    Instant::now() < deadline,
                    "the session never took a frame again"
                );
                // Paced, as a well-behaved peer would be.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    running.stop().await;
}
