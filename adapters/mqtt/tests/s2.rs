//! S2 over MQTT through a real mosquitto: a test CEM on s2-kit's CemSession over MQTT
//! drives a resource whose RM side is a test endpoint (s2-kit RmSession); native RMs on
//! MQTT; presence, TERMINATE, bad payloads, broker restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use s2_kit::session::{CemConfig, CemEvent, CemSession, RmConfig, RmEvent, RmSession};
use s2gw_core::s2::{Message, MessageKind, ReceptionStatusValues, Timestamp, decode};
use s2gw_core::{BusEvent, CancellationToken, Endpoint, EndpointPeer, Frame};
use s2gw_mqtt::{Mqtt, MqttHandle, add_native_rm, spawn_cem_link};

const RID: &str = "6f1c2a9e-8d1b-4c55-9f0e-2b7a4d3c1e00";

struct Gateway {
    handle: MqttHandle,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn gateway(config: s2gw_mqtt::MqttConfig) -> Gateway {
    trace();
    let shutdown = CancellationToken::new();
    let (handle, task) = Mqtt::start(config, shutdown.clone()).unwrap();
    Gateway {
        handle,
        shutdown,
        task,
    }
}

fn topic(base: &str, leaf: &str) -> String {
    format!("{base}/s2/{RID}/{leaf}")
}

async fn next_event(peer: &mut EndpointPeer) -> BusEvent {
    guard("a bus event", peer.rx.recv())
        .await
        .expect("endpoint dropped")
}

async fn next_non_rejected(peer: &mut EndpointPeer) -> BusEvent {
    loop {
        match next_event(peer).await {
            BusEvent::Rejected(_) => {}
            other => return other,
        }
    }
}

async fn to_adapter(peer: &EndpointPeer, event: BusEvent) {
    guard("the adapter to take an event", peer.tx.send(event))
        .await
        .unwrap();
}

fn drain_rm(rm: &mut RmSession) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(t) = rm.poll_transmit() {
        out.push(Frame::from_own_text(t.text).unwrap());
    }
    out
}

/// Feed every text the CEM peer receives on `rm` into a CemSession, publish its answers on
/// `cem`; CEM events and the raw texts seen go to the returned channels.
fn run_cem(
    mut peer: Peer,
    base: String,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<CemEvent>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<()>,
) {
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let (texts_tx, texts) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut cem = CemSession::new(CemConfig::default());
        cem.open(Timestamp::now());
        let cem_topic = topic(&base, "cem");
        let rm_topic = topic(&base, "rm");
        loop {
            while let Some(out) = cem.poll_transmit() {
                peer.publish(&cem_topic, out.text, false).await;
            }
            while let Some(event) = cem.poll_event() {
                let _ = events_tx.send(event);
            }
            let Some((t, payload, _)) = peer.rx.recv().await else {
                return;
            };
            if t != rm_topic {
                continue;
            }
            let text = String::from_utf8(payload.to_vec()).unwrap();
            let _ = texts_tx.send(text.clone());
            cem.handle_text(&text, Timestamp::now());
        }
    });
    (events, texts, task)
}

#[tokio::test]
async fn a_cem_on_mqtt_drives_a_resource_with_ids_and_reception_status_end_to_end() {
    let broker = Broker::start().await;
    let base = "e2e";
    let gw = gateway(broker.config(base));
    let (endpoint, mut bus) = Endpoint::pair(64);
    let link = spawn_cem_link(
        gw.handle.clone(),
        RID.to_string(),
        endpoint,
        gw.shutdown.clone(),
    );

    // The RM side comes up and speaks first: its Handshake waits for a session.
    let mut rm = RmSession::new(RmConfig::default(), s2_kit::testing::battery_details());
    rm.open(Timestamp::now());
    to_adapter(&bus, BusEvent::Up).await;
    for frame in drain_rm(&mut rm) {
        to_adapter(&bus, BusEvent::Frame(frame)).await;
    }

    // The CEM appears on MQTT: presence with its LWT, then a CemSession.
    let peer_topic = topic(base, "peer");
    let cem_peer = Peer::connect_with(
        &broker,
        "cem",
        &[&topic(base, "rm"), &topic(base, "state")],
        Some((&peer_topic, r#"{"state":"offline"}"#)),
        true,
    )
    .await;
    cem_peer
        .publish(&peer_topic, r#"{"state":"online"}"#, true)
        .await;
    let (mut cem_events, mut cem_texts, cem_task) = run_cem(cem_peer, base.to_string());

    match next_non_rejected(&mut bus).await {
        BusEvent::Up => {}
        other => panic!("expected Up, got {other:?}"),
    }

    let mut rm_negotiated = false;
    let mut described = false;
    let mut details_id = None;
    let mut acked_details = false;
    while !(rm_negotiated && described && acked_details) {
        tokio::select! {
            event = next_event(&mut bus) => match event {
                BusEvent::Frame(frame) => {
                    if let Message::ReceptionStatus(status) = frame.message()
                        && Some(status.subject_message_id) == details_id
                    {
                        assert_eq!(status.status, ReceptionStatusValues::Ok);
                        acked_details = true;
                    }
                    rm.handle_text(frame.text(), Timestamp::now());
                    for out in drain_rm(&mut rm) {
                        if out.kind() == MessageKind::ResourceManagerDetails {
                            details_id = out.id();
                        }
                        to_adapter(&bus, BusEvent::Frame(out)).await;
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
    // The exact ResourceManagerDetails id the RM minted reached the CEM over MQTT.
    let details_id = details_id.unwrap();
    let mut seen = false;
    while let Ok(text) = cem_texts.try_recv() {
        if decode(&text).unwrap().id() == Some(details_id) {
            seen = true;
        }
    }
    assert!(seen, "the CEM never saw message {details_id}");

    gw.shutdown.cancel();
    guard("the link to stop", link).await.unwrap();
    guard("the client to stop", gw.task).await.unwrap();
    cem_task.abort();
}

/// Opens a session for a CEM link with a raw peer; returns the bus peer, the CEM peer.
async fn open_raw_session(
    broker: &Broker,
    gw: &Gateway,
    base: &str,
) -> (EndpointPeer, Peer, tokio::task::JoinHandle<()>) {
    let (endpoint, mut bus) = Endpoint::pair(64);
    let link = spawn_cem_link(
        gw.handle.clone(),
        RID.to_string(),
        endpoint,
        gw.shutdown.clone(),
    );
    to_adapter(&bus, BusEvent::Up).await;
    let mut cem = Peer::connect(
        broker,
        &format!("raw-{base}"),
        &[&topic(base, "rm"), &topic(base, "state")],
    )
    .await;
    cem.publish(&topic(base, "peer"), r#"{"state":"online"}"#, true)
        .await;
    match next_non_rejected(&mut bus).await {
        BusEvent::Up => {}
        other => panic!("expected Up, got {other:?}"),
    }
    cem.json_where(&topic(base, "state"), |v| v["state"] == "open")
        .await;
    (bus, cem, link)
}

async fn read_status(cem: &mut Peer, base: &str) -> ReceptionStatusValues {
    let (payload, _) = cem.next_on(&topic(base, "rm")).await;
    match decode(std::str::from_utf8(&payload).unwrap()).unwrap() {
        Message::ReceptionStatus(status) => status.status,
        other => panic!("expected a ReceptionStatus, got {:?}", other.kind()),
    }
}

async fn expect_rejected(bus: &mut EndpointPeer) -> ReceptionStatusValues {
    match next_event(bus).await {
        BusEvent::Rejected(rejection) => rejection.status,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_s2_payloads_are_answered_and_the_session_goes_on() {
    let broker = Broker::start().await;
    let base = "bad";
    let gw = gateway(broker.config(base));
    let (mut bus, mut cem, _link) = open_raw_session(&broker, &gw, base).await;
    let cem_topic = topic(base, "cem");

    cem.publish(&cem_topic, "this is not json", false).await;
    assert_eq!(
        read_status(&mut cem, base).await,
        ReceptionStatusValues::InvalidData
    );
    assert_eq!(
        expect_rejected(&mut bus).await,
        ReceptionStatusValues::InvalidData
    );

    cem.publish(&cem_topic, r#"{"message_type":"SelectControlType","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000001","control_type":"NOPE"}"#, false).await;
    assert_eq!(
        read_status(&mut cem, base).await,
        ReceptionStatusValues::InvalidMessage
    );
    expect_rejected(&mut bus).await;

    cem.publish(&cem_topic, vec![0xff, 0xfe, 0x00], false).await;
    assert_eq!(
        read_status(&mut cem, base).await,
        ReceptionStatusValues::InvalidData
    );
    expect_rejected(&mut bus).await;

    // 10 MB: over the frame limit, under the packet limit: INVALID_DATA, no disconnect.
    cem.publish(&cem_topic, vec![b'x'; 10 * 1024 * 1024], false)
        .await;
    assert_eq!(
        read_status(&mut cem, base).await,
        ReceptionStatusValues::InvalidData
    );
    expect_rejected(&mut bus).await;

    // Still the same session: a valid Handshake goes through to the bus.
    let (_, frames) = {
        let mut c = CemSession::new(CemConfig::default());
        c.open(Timestamp::now());
        let mut v = Vec::new();
        while let Some(t) = c.poll_transmit() {
            v.push(t.text);
        }
        (c, v)
    };
    let hello = frames.into_iter().next().unwrap();
    cem.publish(&cem_topic, hello.clone(), false).await;
    match next_non_rejected(&mut bus).await {
        BusEvent::Frame(frame) => assert_eq!(frame.text(), hello),
        other => panic!("expected the Handshake, got {other:?}"),
    }
    // A QoS 1 redelivery of the same bytes is dropped, not forwarded twice.
    cem.publish(&cem_topic, hello, false).await;
    // A message after it proves the duplicate was skipped rather than delayed.
    cem.publish(&cem_topic, "still not json", false).await;
    assert_eq!(
        expect_rejected(&mut bus).await,
        ReceptionStatusValues::InvalidData
    );
    gw.shutdown.cancel();
}

#[tokio::test]
async fn peer_offline_ends_the_session_and_terminate_holds_it() {
    let broker = Broker::start().await;
    let base = "presence";
    let mut config = broker.config(base);
    // The hold after a TERMINATE is the reconnect ceiling: long enough to see it hold.
    config.reconnect_max_s = 60;
    let gw = gateway(config);
    let (mut bus, mut cem, _link) = open_raw_session(&broker, &gw, base).await;

    // The CEM vanishes (its LWT, or an explicit offline): Down on the bus.
    cem.publish(&topic(base, "peer"), r#"{"state":"offline"}"#, true)
        .await;
    match next_non_rejected(&mut bus).await {
        BusEvent::Down { reason } => assert!(reason.contains("peer"), "{reason}"),
        other => panic!("expected Down, got {other:?}"),
    }
    cem.json_where(&topic(base, "state"), |v| {
        v["state"] == "waiting" && v["peer"] == "offline"
    })
    .await;

    // Back online: a new session with a new id.
    cem.publish(&topic(base, "peer"), r#"{"state":"online"}"#, true)
        .await;
    match next_non_rejected(&mut bus).await {
        BusEvent::Up => {}
        other => panic!("expected Up, got {other:?}"),
    }
    cem.json_where(&topic(base, "state"), |v| v["state"] == "open")
        .await;

    // The RM side closes with TERMINATE: Down, and no new session on its own.
    to_adapter(
        &bus,
        BusEvent::Close {
            reconnect: false,
            reason: "terminate".into(),
        },
    )
    .await;
    match next_non_rejected(&mut bus).await {
        BusEvent::Down { .. } => {}
        other => panic!("expected Down, got {other:?}"),
    }
    cem.json_where(&topic(base, "state"), |v| v["state"] == "terminated")
        .await;

    // The peer asks for a new session with a Handshake: it opens one and delivers it.
    let mut c = CemSession::new(CemConfig::default());
    c.open(Timestamp::now());
    let hello = c.poll_transmit().unwrap().text;
    cem.publish(&topic(base, "cem"), hello.clone(), false).await;
    match next_non_rejected(&mut bus).await {
        BusEvent::Up => {}
        other => panic!("expected Up, got {other:?}"),
    }
    match next_non_rejected(&mut bus).await {
        BusEvent::Frame(frame) => assert_eq!(frame.text(), hello),
        other => panic!("expected the Handshake, got {other:?}"),
    }
    gw.shutdown.cancel();
}

#[tokio::test]
async fn a_native_rm_on_mqtt_over_tls_with_mqtt5() {
    let broker = Broker::start().await;
    let base = "native";
    let mut config = broker.tls_config(base);
    config.protocol = s2gw_mqtt::Protocol::V5;
    let gw = gateway(config);
    let (endpoint, mut bus) = Endpoint::pair(64);
    let _slot = add_native_rm(gw.handle.clone(), RID.to_string(), endpoint);

    // The native RM on MQTT: it waits for the gateway's state (so the gateway listens),
    // then sends just its Handshake (implicit presence).
    let mut rm_peer = Peer::connect(
        &broker,
        "native-rm",
        &[&topic(base, "cem"), &topic(base, "state")],
    )
    .await;
    rm_peer
        .json_where(&topic(base, "state"), |v| v["state"] == "waiting")
        .await;
    let mut rm = RmSession::new(RmConfig::default(), s2_kit::testing::battery_details());
    rm.open(Timestamp::now());
    let hello = rm.poll_transmit().unwrap().text;
    rm_peer
        .publish(&topic(base, "rm"), hello.clone(), false)
        .await;
    match next_non_rejected(&mut bus).await {
        BusEvent::Up => {}
        other => panic!("expected Up, got {other:?}"),
    }
    match next_non_rejected(&mut bus).await {
        BusEvent::Frame(frame) => assert_eq!(frame.text(), hello),
        other => panic!("expected the RM's Handshake, got {other:?}"),
    }
    // The CEM side (the bus) answers; the RM receives it on its topic.
    let mut c = CemSession::new(CemConfig::default());
    c.open(Timestamp::now());
    let cem_hello = Frame::from_own_text(c.poll_transmit().unwrap().text).unwrap();
    to_adapter(&bus, BusEvent::Frame(cem_hello.clone())).await;
    // (The state topic said "open" before the answer came.)
    let state = rm_peer
        .json_where(&topic(base, "state"), |v| v["state"] == "open")
        .await;
    assert_eq!(state["side"], "cem");
    assert_eq!(state["peer"], "online");
    let (payload, _) = rm_peer.next_on(&topic(base, "cem")).await;
    assert_eq!(payload.as_ref(), cem_hello.text().as_bytes());
    gw.shutdown.cancel();
}

#[tokio::test]
async fn no_s2_message_is_lost_across_a_broker_restart_and_the_session_resumes() {
    let mut broker = Broker::start().await;
    let base = "restart";
    let gw = gateway(broker.config(base));
    let (endpoint, mut bus) = Endpoint::pair(4096);
    let _link = spawn_cem_link(
        gw.handle.clone(),
        RID.to_string(),
        endpoint,
        gw.shutdown.clone(),
    );
    to_adapter(&bus, BusEvent::Up).await;
    let rm_topic = topic(base, "rm");
    let mut cem = Peer::connect_with(&broker, "restart-cem", &[&rm_topic], None, false).await;
    cem.publish(&topic(base, "peer"), r#"{"state":"online"}"#, true)
        .await;
    match next_non_rejected(&mut bus).await {
        BusEvent::Up => {}
        other => panic!("expected Up, got {other:?}"),
    }
    let mut status = gw.handle.status();
    let first = status.borrow().connects;

    // Messages from the RM side before, during and after the restart.
    let measurement = |i: u32| {
        let text = format!(
            r#"{{"message_type":"PowerMeasurement","message_id":"{}","measurement_timestamp":"2025-01-01T00:00:{:02}Z","values":[{{"commodity_quantity":"ELECTRIC.POWER.L1","value":{i}}}]}}"#,
            uuid::Uuid::new_v4(),
            i % 60
        );
        Frame::from_own_text(text).unwrap()
    };
    // The RM answers the link's Up with its session's Handshake, as every RM side does.
    let mut sent = Vec::new();
    let mut rm = RmSession::new(RmConfig::default(), s2_kit::testing::battery_details());
    rm.open(Timestamp::now());
    for frame in drain_rm(&mut rm) {
        sent.push(frame.id().unwrap());
        to_adapter(&bus, BusEvent::Frame(frame)).await;
    }
    for i in 0..50 {
        let f = measurement(i);
        sent.push(f.id().unwrap());
        to_adapter(&bus, BusEvent::Frame(f)).await;
    }
    broker.restart().await;
    for i in 50..100 {
        let f = measurement(i);
        sent.push(f.id().unwrap());
        to_adapter(&bus, BusEvent::Frame(f)).await;
    }
    guard(
        "the gateway to reconnect",
        status.wait_for(|s| s.connected && s.connects > first),
    )
    .await
    .unwrap();
    let mut got = std::collections::HashSet::new();
    while got.len() < sent.len() {
        let (payload, _) = cem.next_on(&rm_topic).await;
        let id = decode(std::str::from_utf8(&payload).unwrap())
            .unwrap()
            .id()
            .unwrap();
        got.insert(id);
    }
    assert!(sent.iter().all(|id| got.contains(id)));
    // The session resumed: no Down, no new Up on the bus.
    assert!(bus.rx.try_recv().is_err());
    gw.shutdown.cancel();
    let _ = Duration::ZERO;
}

fn rm_handshake() -> Frame {
    let mut rm = RmSession::new(RmConfig::default(), s2_kit::testing::battery_details());
    rm.open(Timestamp::now());
    drain_rm(&mut rm)
        .into_iter()
        .find(|f| f.kind() == MessageKind::Handshake)
        .unwrap()
}

fn cem_handshake() -> Frame {
    let mut c = CemSession::new(CemConfig::default());
    c.open(Timestamp::now());
    Frame::from_own_text(c.poll_transmit().unwrap().text).unwrap()
}

/// A marker from the RM side whose id tells one frame from another.
fn rm_measurement() -> Frame {
    let text = format!(
        r#"{{"message_type":"PowerMeasurement","message_id":"{}","measurement_timestamp":"2025-01-01T00:00:00Z","values":[{{"commodity_quantity":"ELECTRIC.POWER.L1","value":1}}]}}"#,
        uuid::Uuid::new_v4()
    );
    Frame::from_own_text(text).unwrap()
}

/// A marker from the CEM side whose id tells one frame from another.
fn cem_handshake_response() -> Frame {
    let text = format!(
        r#"{{"message_type":"HandshakeResponse","message_id":"{}","selected_protocol_version":"0.0.2-beta"}}"#,
        uuid::Uuid::new_v4()
    );
    Frame::from_own_text(text).unwrap()
}

async fn expect_bus_up(bus: &mut EndpointPeer) {
    match next_non_rejected(bus).await {
        BusEvent::Up => {}
        other => panic!("expected Up, got {other:?}"),
    }
}

async fn expect_bus_down(bus: &mut EndpointPeer) {
    match next_non_rejected(bus).await {
        BusEvent::Down { .. } => {}
        other => panic!("expected Down, got {other:?}"),
    }
}

/// The link core's stale-frame promise, seen from the peer: the session opens with
/// `hello` and then `marker` on `topic`, exactly these two first.
async fn assert_opens_with(peer: &mut Peer, topic: &str, hello: &Frame, marker: &Frame) {
    let mut next = async || {
        let (payload, _) = peer.next_on(topic).await;
        decode(std::str::from_utf8(&payload).unwrap()).unwrap()
    };
    let first = next().await;
    assert_eq!(
        (first.kind(), first.id()),
        (MessageKind::Handshake, hello.id()),
        "the session must open with its own Handshake"
    );
    let second = next().await;
    assert_eq!(
        (second.kind(), second.id()),
        (marker.kind(), marker.id()),
        "exactly one Handshake, then the next frame of this session"
    );
}

/// The link core's refusal promise on MQTT: malformed payloads on `inbound` get
/// INVALID_DATA and INVALID_MESSAGE on `replies`, the bus sees `Rejected` for each, and
/// the session stays up: `valid` then reaches the bus as a frame of `kind`.
async fn assert_refuses_and_goes_on(
    peer: &mut Peer,
    (inbound, replies): (&str, &str),
    bus: &mut EndpointPeer,
    valid: &str,
    kind: MessageKind,
) {
    let status = async |peer: &mut Peer| {
        let (payload, _) = peer.next_on(replies).await;
        match decode(std::str::from_utf8(&payload).unwrap()).unwrap() {
            Message::ReceptionStatus(status) => status.status,
            other => panic!("expected a ReceptionStatus, got {:?}", other.kind()),
        }
    };
    peer.publish(inbound, "{not json", false).await;
    assert_eq!(status(peer).await, ReceptionStatusValues::InvalidData);
    assert_eq!(
        expect_rejected(bus).await,
        ReceptionStatusValues::InvalidData
    );
    peer.publish(inbound, r#"{"message_type":"SelectControlType","message_id":"3d0a7e1c-1111-4a2b-9c3d-000000000001","control_type":"NOPE"}"#, false).await;
    assert_eq!(status(peer).await, ReceptionStatusValues::InvalidMessage);
    assert_eq!(
        expect_rejected(bus).await,
        ReceptionStatusValues::InvalidMessage
    );
    peer.publish(inbound, valid, false).await;
    match next_event(bus).await {
        BusEvent::Frame(frame) => assert_eq!(frame.kind(), kind),
        other => panic!("the session must go on and deliver the valid payload, got {other:?}"),
    }
}

/// The link core on the MQTT CEM link: the RM side's frames for a session the CEM left
/// never reach the next session, whether they arrive while no session is open or once the
/// next one is; that one opens with exactly one Handshake. Malformed payloads are
/// answered on the gateway's topic while the session goes on.
#[tokio::test]
async fn link_core_cem_link_drops_stale_frames_and_refuses_bad_ones() {
    let broker = Broker::start().await;
    let base = "lc-cem";
    let gw = gateway(broker.config(base));
    let (endpoint, mut bus) = Endpoint::pair(64);
    let _link = spawn_cem_link(
        gw.handle.clone(),
        RID.to_string(),
        endpoint,
        gw.shutdown.clone(),
    );
    let (presence, rm_topic) = (topic(base, "peer"), topic(base, "rm"));
    to_adapter(&bus, BusEvent::Up).await;
    let mut cem = Peer::connect(&broker, "lc-cem", &[&rm_topic]).await;
    cem.publish(&presence, r#"{"state":"online"}"#, true).await;
    expect_bus_up(&mut bus).await;
    let (hello, marker) = (rm_handshake(), rm_measurement());
    to_adapter(&bus, BusEvent::Frame(hello.clone())).await;
    to_adapter(&bus, BusEvent::Frame(marker.clone())).await;
    assert_opens_with(&mut cem, &rm_topic, &hello, &marker).await;
    cem.publish(&presence, r#"{"state":"offline"}"#, true).await;
    expect_bus_down(&mut bus).await;
    // The RM has not heard the Down yet: more of the first session, while none is open…
    to_adapter(&bus, BusEvent::Frame(rm_measurement())).await;

    cem.publish(&presence, r#"{"state":"online"}"#, true).await;
    expect_bus_up(&mut bus).await;
    // … and once the next one is, before the RM answers its Up.
    to_adapter(&bus, BusEvent::Frame(rm_measurement())).await;
    let (hello, marker) = (rm_handshake(), rm_measurement());
    to_adapter(&bus, BusEvent::Frame(hello.clone())).await;
    to_adapter(&bus, BusEvent::Frame(marker.clone())).await;
    assert_opens_with(&mut cem, &rm_topic, &hello, &marker).await;

    assert_refuses_and_goes_on(
        &mut cem,
        (&topic(base, "cem"), &rm_topic),
        &mut bus,
        cem_handshake().text(),
        MessageKind::Handshake,
    )
    .await;
    gw.shutdown.cancel();
}

/// The link core on MQTT towards a native RM: what the CEM side sends while no session is
/// open belongs to a session that is over and never reaches the next one, which gets
/// exactly one Handshake; malformed payloads are answered on the gateway's topic while
/// the session goes on.
#[tokio::test]
async fn link_core_native_rm_drops_stale_frames_and_refuses_bad_ones() {
    let broker = Broker::start().await;
    let base = "lc-rm";
    let gw = gateway(broker.config(base));
    // Room for one event towards the slot: see the synchronisation below.
    let (endpoint, mut bus) = Endpoint::pair(1);
    let _slot = add_native_rm(gw.handle.clone(), RID.to_string(), endpoint);
    let (rm_topic, cem_topic, state) =
        (topic(base, "rm"), topic(base, "cem"), topic(base, "state"));
    let mut rm = Peer::connect(&broker, "lc-rm", &[&cem_topic, &state]).await;
    rm.json_where(&state, |v| v["state"] == "waiting").await;

    let rm_hello = rm_handshake();
    rm.publish(&rm_topic, rm_hello.text(), false).await;
    expect_bus_up(&mut bus).await;
    assert_eq!(expect_frame_id(&mut bus).await, rm_hello.id());
    let (hello, marker) = (cem_handshake(), cem_handshake_response());
    to_adapter(&bus, BusEvent::Frame(hello.clone())).await;
    to_adapter(&bus, BusEvent::Frame(marker.clone())).await;
    assert_opens_with(&mut rm, &cem_topic, &hello, &marker).await;
    rm.publish(&topic(base, "peer"), r#"{"state":"offline"}"#, true)
        .await;
    expect_bus_down(&mut bus).await;
    // The CEM side answers the ended session late.
    to_adapter(&bus, BusEvent::Frame(cem_handshake_response())).await;
    // With room for one event, this completes only once the slot took the stale frame,
    // and the slot handles an event before it looks at anything else (the RM's next
    // Handshake included): the stale frame meets a slot without a session.
    let filler = s2gw_core::Rejection::unreadable("test filler".to_string());
    to_adapter(&bus, BusEvent::Rejected(Box::new(filler))).await;

    let rm_hello = rm_handshake();
    rm.publish(&rm_topic, rm_hello.text(), false).await;
    expect_bus_up(&mut bus).await;
    assert_eq!(expect_frame_id(&mut bus).await, rm_hello.id());
    let (hello, marker) = (cem_handshake(), cem_handshake_response());
    to_adapter(&bus, BusEvent::Frame(hello.clone())).await;
    to_adapter(&bus, BusEvent::Frame(marker.clone())).await;
    assert_opens_with(&mut rm, &cem_topic, &hello, &marker).await;

    let ack = format!(
        r#"{{"message_type":"ReceptionStatus","subject_message_id":"{}","status":"OK"}}"#,
        hello.id().unwrap().as_str()
    );
    assert_refuses_and_goes_on(
        &mut rm,
        (&rm_topic, &cem_topic),
        &mut bus,
        &ack,
        MessageKind::ReceptionStatus,
    )
    .await;
    gw.shutdown.cancel();
}

async fn expect_frame_id(bus: &mut EndpointPeer) -> Option<s2gw_core::s2::Id> {
    match next_non_rejected(bus).await {
        BusEvent::Frame(frame) => frame.id(),
        other => panic!("expected a frame, got {other:?}"),
    }
}
