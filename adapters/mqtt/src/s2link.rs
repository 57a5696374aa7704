//! S2 over MQTT, either side of a resource: the session protocol of
//! `docs/s2-over-mqtt.md`, speaking `BusEvent`s to the bus like the WebSocket adapter's
//! client link (the gateway is the RM side towards a CEM on MQTT) and server slots (a
//! native RM on MQTT; the gateway is the CEM side towards it).
//!
//! What a WebSocket connection gives for free — a start, an end, one peer — is made
//! explicit here: the peer's presence (retained `peer` topic, ideally its LWT, or
//! implicitly its Handshake), the gateway's session state (retained `state` topic with a
//! fresh session id per session), and a grace period over broker reconnects.

use std::collections::{HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;
use s2gw_core::s2::{EnergyManagementRole, Message, MessageKind, decode};
use s2gw_core::{
    BusEvent, CancellationToken, Endpoint, Frame, FromBus, LinkState, LogThrottle, Now, Refusal,
    Rejection, Side, Verdict,
};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::client::{Inbound, LinkStatus, MqttHandle, Subscription};

/// Inbound payloads remembered to drop QoS 1 redeliveries.
const DEDUPE_WINDOW: usize = 1024;

/// Inbound messages buffered for a link's data topic before the client drops (and logs)
/// them: a burst of S2 messages must wait, not vanish.
const INBOUND_CAPACITY: usize = 100_000;

/// Start the CEM link of `resource_id` over MQTT: the gateway plays the RM side on MQTT
/// (publishes on `<base>/s2/<id>/rm`, listens on `<base>/s2/<id>/cem`) and the CEM side
/// on the bus.
///
/// Like the WebSocket client link, a session starts only once the RM side sent `Up` (and
/// the CEM is present on MQTT); every session is announced `Up` and ended `Down`. The task
/// ends when `shutdown` is cancelled or the bus drops the endpoint.
pub fn spawn_cem_link(
    handle: MqttHandle,
    resource_id: String,
    endpoint: Endpoint,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(Slot::new(handle, resource_id, Side::Rm, endpoint, shutdown).run())
}

/// Accept a native RM for `resource_id` on MQTT: the gateway plays the CEM side on MQTT
/// (publishes on `<base>/s2/<id>/cem`, listens on `<base>/s2/<id>/rm`) and the RM side on
/// the bus, like a WebSocket server RM slot. The task ends when the client's shutdown is
/// cancelled or the bus drops the endpoint.
pub fn add_native_rm(
    handle: MqttHandle,
    resource_id: String,
    endpoint: Endpoint,
) -> JoinHandle<()> {
    let shutdown = handle.shutdown_token();
    tokio::spawn(Slot::new(handle, resource_id, Side::Cem, endpoint, shutdown).run())
}

/// The peer's presence as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Unknown,
    Online,
    Offline,
}

impl Peer {
    fn as_str(self) -> &'static str {
        match self {
            Peer::Unknown => "unknown",
            Peer::Online => "online",
            Peer::Offline => "offline",
        }
    }
}

/// What S2 over MQTT adds to an open session (the link core holds its edge).
struct Open {
    id: uuid::Uuid,
    /// The peer's Handshake passed in this session: another one starts a new session.
    peer_hello_seen: bool,
    version: Option<String>,
    control_type: Option<String>,
}

/// The exact payloads seen lately, to drop QoS 1 redeliveries before the edge.
#[derive(Default)]
struct Dedupe {
    order: VecDeque<u64>,
    seen: HashSet<u64>,
}

impl Dedupe {
    /// True when `payload` was seen within the window (and remembers it otherwise).
    fn repeated(&mut self, payload: &[u8]) -> bool {
        let mut hasher = DefaultHasher::new();
        payload.hash(&mut hasher);
        let key = hasher.finish();
        if !self.seen.insert(key) {
            return true;
        }
        self.order.push_back(key);
        if self.order.len() > DEDUPE_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        false
    }
}

/// The task ends.
struct Stop;

type Flow = Result<(), Stop>;

struct Topics {
    /// Where the gateway publishes S2 messages.
    out: String,
    /// Where the peer's S2 messages arrive.
    inbound: String,
    /// The peer's retained presence.
    peer: String,
    /// The gateway's retained session state.
    state: String,
}

struct Slot {
    handle: MqttHandle,
    /// The side the gateway plays on MQTT.
    side: Side,
    topics: Topics,
    endpoint: Endpoint,
    shutdown: CancellationToken,
    /// The link core: the other side's presence, the RM side's frames, the Up/Down
    /// pairing and the open session's edge. Open exactly while `session` is set.
    link: LinkState,
    peer: Peer,
    session: Option<Open>,
    /// The peer's Handshake that arrived outside a session: it opens the next one.
    held_hello: Option<String>,
    dedupe: Dedupe,
    /// Payloads dropped (bad presence, retained S2 messages): logged, then counted.
    dropped: LogThrottle,
    /// After a TERMINATE: no new session before this, unless the peer asks for one.
    hold_until: Option<Instant>,
    /// When the broker connection was lost, while it is.
    mqtt_lost_at: Option<Instant>,
    reason: Option<String>,
}

impl Slot {
    fn new(
        handle: MqttHandle,
        resource_id: String,
        side: Side,
        endpoint: Endpoint,
        shutdown: CancellationToken,
    ) -> Self {
        let name = |s: Side| match s {
            Side::Rm => "rm",
            Side::Cem => "cem",
        };
        let prefix = handle.topic(&format!("s2/{resource_id}"));
        let topics = Topics {
            out: format!("{prefix}/{}", name(side)),
            inbound: format!("{prefix}/{}", name(side.other())),
            peer: format!("{prefix}/peer"),
            state: format!("{prefix}/state"),
        };
        let label = match side {
            Side::Rm => format!("{resource_id} mqtt-cem-link"),
            Side::Cem => format!("{resource_id} mqtt-native-rm"),
        };
        // The edge faces the peer on MQTT: a CEM when the gateway is the RM side there.
        let peer_role = match side {
            Side::Rm => EnergyManagementRole::Cem,
            Side::Cem => EnergyManagementRole::Rm,
        };
        let hint = format!(
            "no S2 session is open for this resource (see {})",
            topics.state
        );
        let link =
            LinkState::new(peer_role, handle.max_frame_bytes(), label).with_outside_hint(hint);
        Self {
            handle,
            side,
            topics,
            endpoint,
            shutdown,
            link,
            peer: Peer::Unknown,
            session: None,
            held_hello: None,
            dedupe: Dedupe::default(),
            dropped: LogThrottle::default(),
            hold_until: None,
            mqtt_lost_at: None,
            reason: None,
        }
    }

    async fn run(mut self) {
        let resource_ok = self
            .topics
            .out
            .split('/')
            .all(|level| crate::topic::level_problem(level).is_none());
        if !resource_ok {
            error!(label = %self.link.label(), "the resource id cannot be part of an MQTT topic: link not started");
            return;
        }
        let subscribed = async {
            let data = self
                .handle
                .subscribe(&self.topics.inbound, INBOUND_CAPACITY)
                .await?;
            let peer = self.handle.subscribe(&self.topics.peer, 64).await?;
            Ok::<_, crate::MqttError>((data, peer))
        };
        let Ok((mut data, mut peer)) = subscribed.await else {
            return;
        };
        let mut status = self.handle.status();
        info!(label = %self.link.label(), topic = %self.topics.out, "S2 over MQTT started");
        if self.publish_state().await.is_ok() {
            let _ = self.event_loop(&mut data, &mut peer, &mut status).await;
        }
        self.stop();
    }

    async fn event_loop(
        &mut self,
        data: &mut Subscription,
        peer: &mut Subscription,
        status: &mut watch::Receiver<LinkStatus>,
    ) -> Flow {
        let first = *status.borrow_and_update();
        self.on_status(first).await?;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(Stop),
                event = self.endpoint.rx.recv() => match event {
                    None => return Err(Stop),
                    Some(event) => self.on_bus(event).await?,
                },
                Some(message) = data.recv() => self.on_data(message).await?,
                Some(message) = peer.recv() => self.on_presence(&message).await?,
                changed = status.changed() => {
                    if changed.is_err() {
                        return Err(Stop);
                    }
                    let now = *status.borrow_and_update();
                    self.on_status(now).await?;
                }
                () = sleep_until(deadline), if deadline.is_some() => self.on_timer().await?,
            }
            let connected = status.borrow().connected;
            self.try_open(connected).await?;
        }
    }

    /// The task ends: say so on the state topic (best effort; the bridge LWT covers a
    /// crash) and pair an open session's `Up` with a `Down`.
    fn stop(&mut self) {
        self.session = None;
        if let Some(down) = self.link.close("gateway shutting down") {
            let _ = self.endpoint.tx.try_send(down);
        }
        let payload = self.state_json("offline");
        self.handle
            .try_publish_retained(&self.topics.state, payload);
        info!(label = %self.link.label(), "S2 over MQTT stopped");
    }

    fn next_deadline(&self) -> Option<Instant> {
        let grace = match (self.session.is_some(), self.mqtt_lost_at) {
            (true, Some(at)) => Some(at + self.handle.session_grace()),
            _ => None,
        };
        let summary = self.link.summary_due().map(Instant::from_std);
        [grace, self.hold_until, summary]
            .into_iter()
            .flatten()
            .min()
    }

    async fn on_timer(&mut self) -> Flow {
        let now = Instant::now();
        self.link.tick(now.into_std());
        if self.hold_until.is_some_and(|t| t <= now) {
            self.hold_until = None;
        }
        let expired = self
            .mqtt_lost_at
            .is_some_and(|at| at + self.handle.session_grace() <= now);
        if expired && self.session.is_some() {
            warn!(label = %self.link.label(), "broker unreachable for longer than the session grace: session ended");
            self.end_session("the MQTT connection was lost for longer than the session grace")
                .await?;
        }
        Ok(())
    }

    async fn on_status(&mut self, status: LinkStatus) -> Flow {
        if status.connected {
            self.mqtt_lost_at = None;
        } else if self.mqtt_lost_at.is_none() {
            self.mqtt_lost_at = Some(Instant::now());
            if self.handle.session_grace().is_zero() && self.session.is_some() {
                self.end_session("the MQTT connection was lost").await?;
            }
        }
        Ok(())
    }

    async fn on_bus(&mut self, event: BusEvent) -> Flow {
        match self.link.from_bus(event) {
            FromBus::Send(frame) => self.send(&frame).await?,
            FromBus::OtherSideDown { reason } => {
                debug!(label = %self.link.label(), %reason, "the other side went down");
                if self.session.is_some() {
                    self.end_session("the other side of the session is gone")
                        .await?;
                }
            }
            FromBus::Close { reconnect, reason } => {
                info!(label = %self.link.label(), reconnect, %reason, "the session is closed");
                if !reconnect {
                    // TERMINATE: offering a new session at once would just start another
                    // one; wait, unless the peer asks first.
                    self.hold_until = Some(Instant::now() + self.handle.terminate_hold());
                }
                if self.session.is_some() {
                    let why = if reconnect {
                        "closed for a reconnect"
                    } else {
                        "session terminated"
                    };
                    self.end_session(why).await?;
                }
            }
            // The link core noted an Up; frames that wait or were dropped need nothing.
            FromBus::OtherSideUp | FromBus::Nothing => {}
        }
        Ok(())
    }

    async fn on_presence(&mut self, message: &Inbound) -> Flow {
        let state = if message.payload.is_empty() {
            Some(Peer::Offline)
        } else {
            serde_json::from_slice::<serde_json::Value>(&message.payload)
                .ok()
                .and_then(|v| match v.get("state").and_then(|s| s.as_str()) {
                    Some("online") => Some(Peer::Online),
                    Some("offline") => Some(Peer::Offline),
                    _ => None,
                })
        };
        let Some(state) = state else {
            let (label, bytes) = (self.link.label(), message.payload.len());
            self.dropped.warn("bad peer presence", std::time::Instant::now(), || {
                warn!(%label, bytes, "peer presence is not a JSON state online or offline: ignored");
            });
            return Ok(());
        };
        self.set_peer(state).await
    }

    async fn set_peer(&mut self, state: Peer) -> Flow {
        if state == self.peer {
            return Ok(());
        }
        info!(label = %self.link.label(), peer = state.as_str(), "peer presence changed");
        self.peer = state;
        match state {
            Peer::Online => self.hold_until = None,
            _ => {
                self.held_hello = None;
                if self.session.is_some() {
                    self.end_session("the peer went offline").await?;
                }
            }
        }
        self.publish_state().await
    }

    async fn on_data(&mut self, message: Inbound) -> Flow {
        if message.retained {
            // A retained S2 message would replay to every new subscriber forever.
            let label = self.link.label();
            self.dropped
                .warn("retained S2 message", std::time::Instant::now(), || {
                    warn!(%label, "retained S2 message ignored (S2 messages must not be retained)");
                });
            return Ok(());
        }
        if self.dedupe.repeated(&message.payload) {
            debug!(label = %self.link.label(), "duplicate payload (QoS 1 redelivery): dropped");
            return Ok(());
        }
        let text = match std::str::from_utf8(&message.payload) {
            Ok(text) => text.to_string(),
            Err(_) => {
                let rejection = Rejection::unreadable(format!(
                    "payload of {} bytes is not UTF-8 text",
                    message.payload.len()
                ));
                let refusal = self.link.refuse(rejection, Now::read());
                return self.answer(refusal).await;
            }
        };
        if is_handshake(&text) {
            if self.peer != Peer::Online {
                // A Handshake is presence enough for a peer that publishes none.
                self.set_peer(Peer::Online).await?;
            }
            self.hold_until = None;
            let restart = self.session.as_ref().is_some_and(|s| s.peer_hello_seen);
            if restart {
                self.end_session("the peer started a new session").await?;
            }
            if self.session.is_none() {
                self.held_hello = Some(text);
                return Ok(());
            }
        }
        self.inbound(&text).await
    }

    /// Judge one inbound text (in the open session, or refused outside one) and hand it
    /// to the bus or answer it.
    async fn inbound(&mut self, text: &str) -> Flow {
        match self.link.inbound(text, Now::read()) {
            Verdict::Deliver(frame) => {
                // Only an open session delivers.
                if let Some(open) = self.session.as_mut() {
                    if frame.kind() == MessageKind::Handshake {
                        open.peer_hello_seen = true;
                    }
                    if observe(open, frame.message()) {
                        self.publish_state().await?;
                    }
                }
                self.tell_bus(BusEvent::Frame(frame)).await
            }
            Verdict::Refuse(refusal) => self.answer(refusal).await,
        }
    }

    /// Answer a refused payload on the gateway's topic and show the refusal to the taps.
    async fn answer(&mut self, refusal: Refusal) -> Flow {
        if let Some(reply) = &refusal.reply {
            self.send(reply).await?;
        }
        self.tell_bus(refusal.tap).await
    }

    async fn try_open(&mut self, connected: bool) -> Flow {
        let ready = self.session.is_none()
            && self.link.other_up()
            && self.peer == Peer::Online
            && self.hold_until.is_none()
            && connected;
        if !ready {
            return Ok(());
        }
        let opened = self.link.open();
        let open = Open {
            id: uuid::Uuid::new_v4(),
            peer_hello_seen: false,
            version: None,
            control_type: None,
        };
        info!(label = %self.link.label(), session = %open.id, "S2 session open");
        self.session = Some(open);
        self.reason = None;
        self.tell_bus(opened.up).await?;
        self.publish_state().await?;
        for frame in &opened.waiting {
            self.send(frame).await?;
        }
        if let Some(hello) = self.held_hello.take() {
            self.inbound(&hello).await?;
        }
        Ok(())
    }

    async fn end_session(&mut self, reason: &str) -> Flow {
        if let Some(open) = self.session.take() {
            let down = self.link.close(reason);
            info!(label = %self.link.label(), session = %open.id, %reason, "S2 session ended");
            self.reason = Some(reason.to_string());
            if let Some(down) = down {
                self.tell_bus(down).await?;
            }
            self.publish_state().await?;
        }
        Ok(())
    }

    /// Publish one frame on the gateway's topic, shown to the edge first.
    async fn send(&mut self, frame: &Frame) -> Flow {
        let mut changed = false;
        if let Some(open) = self.session.as_mut() {
            self.link.outbound(frame, Now::read());
            changed = observe(open, frame.message());
        }
        debug!(label = %self.link.label(), kind = ?frame.kind(), "sending");
        let payload = Bytes::copy_from_slice(frame.text().as_bytes());
        let publish = self.handle.publish(self.topics.out.clone(), payload);
        tokio::select! {
            sent = publish => sent.map_err(|_| Stop)?,
            () = self.shutdown.cancelled() => return Err(Stop),
        }
        if changed {
            self.publish_state().await?;
        }
        Ok(())
    }

    /// Hand an event to the bus; a full bus holds this link back, never past shutdown.
    async fn tell_bus(&mut self, event: BusEvent) -> Flow {
        tokio::select! {
            sent = self.endpoint.tx.send(event) => sent.map_err(|_| Stop),
            () = self.shutdown.cancelled() => Err(Stop),
        }
    }

    fn state_json(&self, state: &str) -> Bytes {
        let open = self.session.as_ref();
        let side = match self.side {
            Side::Rm => "rm",
            Side::Cem => "cem",
        };
        let body = json!({
            "state": state,
            "side": side,
            "session": open.map(|o| o.id.to_string()),
            "peer": self.peer.as_str(),
            "protocol_version": open.and_then(|o| o.version.clone()),
            "control_type": open.and_then(|o| o.control_type.clone()),
            "reason": self.reason,
            "updated": crate::time::now(),
        });
        Bytes::from(body.to_string())
    }

    async fn publish_state(&mut self) -> Flow {
        let state = if self.session.is_some() {
            "open"
        } else if self.hold_until.is_some() {
            "terminated"
        } else {
            "waiting"
        };
        let payload = self.state_json(state);
        let publish = self
            .handle
            .publish_retained(self.topics.state.clone(), payload);
        tokio::select! {
            sent = publish => sent.map_err(|_| Stop),
            () = self.shutdown.cancelled() => Err(Stop),
        }
    }
}

/// Note the protocol version and control type a session agreed; true when either changed.
fn observe(open: &mut Open, message: &Message) -> bool {
    match message {
        Message::HandshakeResponse(response) => {
            open.version = Some(response.selected_protocol_version.to_string());
            true
        }
        Message::SelectControlType(select) => {
            let text = serde_json::to_value(select.control_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string));
            open.control_type = text;
            true
        }
        _ => false,
    }
}

fn is_handshake(text: &str) -> bool {
    text.contains("\"Handshake\"") && decode(text).is_ok_and(|m| m.kind() == MessageKind::Handshake)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_forgets_after_the_window() {
        let mut d = Dedupe::default();
        assert!(!d.repeated(b"a"));
        assert!(d.repeated(b"a"));
        for i in 0..DEDUPE_WINDOW {
            assert!(!d.repeated(format!("m{i}").as_bytes()));
        }
        assert!(!d.repeated(b"a"));
    }

    #[test]
    fn handshake_detection() {
        assert!(!is_handshake("{\"message_type\":\"Handshake\"}"));
        assert!(!is_handshake("not json"));
    }
}
