//! The demo CEM as a cloud CEM worker on MQTT: `s2gw cem --mqtt HOST:PORT`.
//!
//! It speaks the peer side of S2 over MQTT (`docs/s2-over-mqtt.md`) for the resources of
//! many gateways at once, and any number of workers share those resources:
//!
//! - **Offers.** Every worker subscribes to `$share/<group>/<bases>/s2/+/state`, an MQTT
//!   v5 shared subscription, so each state change reaches one worker of the group. A
//!   state `waiting` with no peer present is an offer: the worker that gets it claims the
//!   resource. The broker hands out shared messages in turn (mosquitto: round robin), which
//!   spreads resources over the workers; it would also spread one resource's messages, so
//!   only the offer travels shared.
//! - **One worker per resource.** A gateway may offer a resource more than once (it says
//!   `waiting` when it starts and again when it connects, and a restarted gateway offers
//!   every resource before it has read the retained presence that says who serves it), and
//!   each offer may reach another worker. So an offer is decided on a lock topic,
//!   `<group>/locks/<base>/s2/<id>`: the worker subscribes to it, then publishes its own
//!   instance there (retained). Every subscriber sees one topic's messages in the same
//!   order, and a worker's own publish comes after its subscription, so the first name
//!   each candidate receives (retained or live) is the same for all of them: that worker
//!   claims, the others put its name back (a loser's publish was the later one) and go.
//! - **A claim** is a plain subscription to the resource's `state` and `rm` topics and its
//!   gateway's `bridge/state`, then a retained `peer` online and a retained claim record
//!   `<group>/claims/<instance>/<base>/s2/<id>`. From then on the worker sees every state
//!   of the resource directly and ignores it when it comes shared: a state `open` or a
//!   `waiting` with the peer online is never an offer.
//! - **A worker's death.** Each worker's will is `<group>/dead/<instance>`, which every
//!   other worker hears (a plain subscription: through a shared one the broker may hand
//!   the will to the dying worker's own subscription, and nobody would hear it). Each
//!   survivor reads the dead worker's retained claims and bids for every resource on its
//!   lock, as for an offer, except that the dead worker's name there counts for nothing.
//!   The winner takes the resource over by sending a new Handshake: the gateway ends the
//!   orphaned session (its devices are released, fail-safe rule 1) and opens a fresh one
//!   with the survivor.
//!
//! The instance name carries a random suffix, so a worker that restarts never takes back
//! claims that a survivor is taking over. Nothing is shared between workers but the
//! broker's retained claim records.

use std::collections::HashMap;
use std::time::Duration as StdDuration;

use anyhow::Context as _;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use s2gw_core::CancellationToken;
use s2gw_core::s2::Timestamp;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Conversation, DemoCemConfig, sleep_until};

/// How one CEM worker meets its broker and its group.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The broker's host.
    pub host: String,
    /// The broker's port.
    pub port: u16,
    /// A user name, if the broker wants one.
    pub user: Option<String>,
    /// Its password (from the environment or a file, never the command line).
    pub password: Option<String>,
    /// The worker's name; the instance adds a random suffix to it.
    pub name: String,
    /// The shared subscription's group: workers of one group share the resources.
    pub group: String,
    /// A topic filter for the gateways' base topics, e.g. `+` or `fleet/+`.
    pub bases: String,
    /// How the CEM behaves in each session.
    pub demo: DemoCemConfig,
}

/// Inbound messages queued for the worker before the broker connection is held back.
const INBOX: usize = 65_536;
/// Requests queued for the broker before a publish waits.
const REQUESTS: usize = 65_536;
/// The largest packet either way: a large S2 description must not break the connection.
const MAX_PACKET_BYTES: u32 = 16 * 1024 * 1024;

/// Run one worker until `shutdown`.
///
/// A lost broker connection ends the instance: the broker has published its will by
/// then, so a survivor is taking its resources over. The worker starts again as a new
/// instance (a new name, nothing claimed), with back-off while the broker stays away.
pub async fn run_worker(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut failures = 0u32;
    loop {
        match run_instance(&config, &shutdown).await {
            Ended::Stopped => return Ok(()),
            Ended::Failed(error) => return Err(error),
            Ended::ConnectionLost { served } => {
                failures = if served {
                    1
                } else {
                    failures.saturating_add(1)
                };
                let backoff = StdDuration::from_millis(200 << failures.min(5));
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// How an instance ended.
enum Ended {
    /// `shutdown`: its resources were released in order.
    Stopped,
    /// The broker connection was lost; `served` tells whether it had been up.
    ConnectionLost { served: bool },
    /// Something no new instance would fix.
    Failed(anyhow::Error),
}

async fn run_instance(config: &WorkerConfig, shutdown: &CancellationToken) -> Ended {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let instance = format!("{}-{}", config.name, &suffix[..8]);
    let topics = Topics::new(&config.group, &instance);
    let mut options = MqttOptions::new(&instance, &config.host, config.port);
    options.set_keep_alive(StdDuration::from_secs(5));
    options.set_clean_start(true);
    options.set_outgoing_inflight_upper_limit(s2gw_mqtt::IN_FLIGHT);
    options.set_max_packet_size(Some(MAX_PACKET_BYTES));
    options.set_last_will(LastWill::new(
        topics.will(),
        instance.clone(),
        QoS::AtLeastOnce,
        false,
        None,
    ));
    if let Some(user) = &config.user {
        options.set_credentials(user, config.password.clone().unwrap_or_default());
    }
    let (client, eventloop) = AsyncClient::new(options, REQUESTS);
    let (inbox, mut incoming) = mpsc::channel(INBOX);
    let (lost_tx, lost) = tokio::sync::oneshot::channel();
    let connection = tokio::spawn(pump(eventloop, inbox, lost_tx, shutdown.clone()));
    let mut worker = Worker {
        client,
        topics,
        config: config.clone(),
        resources: HashMap::new(),
        bids: HashMap::new(),
        dead: std::collections::HashSet::new(),
    };
    if let Err(error) = worker.subscribe_to_offers().await {
        return Ended::Failed(error);
    }
    tracing::info!(%instance, group = %config.group, "CEM worker: taking offers");
    let ended = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ended::Stopped,
            message = incoming.recv() => match message {
                Some(message) => {
                    if let Err(error) = worker.on_message(message).await {
                        break Ended::Failed(error);
                    }
                }
                None => break Ended::ConnectionLost { served: false },
            },
        }
    };
    if let Ended::Stopped = ended {
        worker.release_all().await;
        let _ = worker.client.disconnect().await;
        let _ = connection.await;
        return Ended::Stopped;
    }
    connection.abort();
    match (ended, lost.await) {
        (Ended::ConnectionLost { .. }, Ok(served)) => {
            tracing::warn!(%instance, "CEM worker: broker connection lost; its resources go to the other workers, and it starts again");
            Ended::ConnectionLost { served }
        }
        (ended, _) => ended,
    }
}

/// One publish as it arrived.
#[derive(Debug)]
struct Inbound {
    topic: String,
    payload: Vec<u8>,
    retained: bool,
}

/// Move the broker's publishes to the worker; rumqttc makes progress only while polled,
/// so this runs apart from the worker, which may wait on a publish of its own. Ends at
/// the first connection error, saying whether the connection had been up.
async fn pump(
    mut eventloop: EventLoop,
    inbox: mpsc::Sender<Inbound>,
    lost: tokio::sync::oneshot::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut served = false;
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let message = Inbound {
                    topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                    payload: publish.payload.to_vec(),
                    retained: publish.retain,
                };
                if inbox.send(message).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => served = true,
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "CEM worker: broker connection error");
                let _ = lost.send(served);
                return;
            }
        }
    }
}

/// The worker's own topics.
#[derive(Debug)]
struct Topics {
    group: String,
    instance: String,
}

impl Topics {
    fn new(group: &str, instance: &str) -> Self {
        Self {
            group: group.to_string(),
            instance: instance.to_string(),
        }
    }

    /// Where this worker's will is published.
    fn will(&self) -> String {
        format!("{}/dead/{}", self.group, self.instance)
    }

    /// This worker's claim record for a resource.
    fn claim(&self, key: &Key) -> String {
        format!("{}/claims/{}/{}", self.group, self.instance, key.prefix())
    }

    /// The dead worker `instance`, if `topic` is its will.
    fn dead<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let instance = topic.strip_prefix(&self.group)?.strip_prefix("/dead/")?;
        (instance != self.instance).then_some(instance)
    }

    /// The lock topic that decides who claims a resource.
    fn lock(&self, key: &Key) -> String {
        format!("{}/locks/{}", self.group, key.prefix())
    }

    /// The resource whose lock `topic` is.
    fn lock_of(&self, topic: &str) -> Option<Key> {
        let prefix = topic.strip_prefix(&self.group)?.strip_prefix("/locks/")?;
        Key::from_prefix(prefix)
    }

    /// The resource of another worker's claim record.
    fn foreign_claim(&self, topic: &str) -> Option<Key> {
        let rest = topic.strip_prefix(&self.group)?.strip_prefix("/claims/")?;
        let (instance, prefix) = rest.split_once('/')?;
        if instance == self.instance {
            return None;
        }
        Key::from_prefix(prefix)
    }
}

/// A resource: its gateway's base topic and its S2 resource id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    base: String,
    id: String,
}

impl Key {
    /// `<base>/s2/<id>`: every topic of the resource starts with it.
    fn prefix(&self) -> String {
        format!("{}/s2/{}", self.base, self.id)
    }

    fn from_prefix(prefix: &str) -> Option<Key> {
        let (base, id) = prefix.rsplit_once("/s2/")?;
        (!base.is_empty() && !id.is_empty() && !id.contains('/')).then(|| Key {
            base: base.to_string(),
            id: id.to_string(),
        })
    }

    /// The resource and the topic's last level, for `<base>/s2/<id>/<leaf>`.
    fn from_topic(topic: &str) -> Option<(Key, &str)> {
        let (prefix, leaf) = topic.rsplit_once('/')?;
        Some((Key::from_prefix(prefix)?, leaf))
    }
}

/// What a resource's session task hears from the worker.
#[derive(Debug)]
enum ToSession {
    /// The gateway's `state` topic changed.
    State(SessionState),
    /// An S2 message from the RM side.
    Text(String),
    /// The resource's gateway went offline: every session with it is over.
    GatewayGone,
}

/// The parts of the gateway's `state` payload a CEM acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SessionState {
    state: String,
    session: Option<String>,
    peer: Option<String>,
}

impl SessionState {
    fn parse(payload: &[u8]) -> Option<SessionState> {
        let value: Value = serde_json::from_slice(payload).ok()?;
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        Some(SessionState {
            state: text("state")?,
            session: text("session"),
            peer: text("peer"),
        })
    }

    /// Whether this state offers the resource to any worker: the gateway waits, and no
    /// peer is present.
    fn is_offer(&self) -> bool {
        self.state == "waiting" && self.peer.as_deref() != Some("online")
    }
}

/// The worker: its claims and their session tasks.
struct Worker {
    client: AsyncClient,
    topics: Topics,
    config: WorkerConfig,
    resources: HashMap<Key, mpsc::UnboundedSender<ToSession>>,
    /// Bids waiting for the first live name on their lock topic.
    bids: HashMap<Key, Claim>,
    /// The workers whose will this one has heard: their names on a lock count for nothing.
    dead: std::collections::HashSet<String>,
}

impl Worker {
    async fn subscribe_to_offers(&self) -> anyhow::Result<()> {
        let group = &self.config.group;
        let offers = format!("$share/{group}/{}/s2/+/state", self.config.bases);
        let deaths = format!("{group}/dead/+");
        for filter in [offers, deaths] {
            self.client
                .subscribe(filter.clone(), QoS::AtLeastOnce)
                .await
                .with_context(|| format!("subscribing to {filter}"))?;
        }
        Ok(())
    }

    async fn on_message(&mut self, message: Inbound) -> anyhow::Result<()> {
        if let Some(dead) = self.topics.dead(&message.topic) {
            tracing::info!(worker = %dead, "CEM worker: a worker died; bidding for its resources");
            self.dead.insert(dead.to_string());
            let claims = format!("{}/claims/{dead}/#", self.config.group);
            self.client.subscribe(claims, QoS::AtLeastOnce).await?;
            return Ok(());
        }
        if let Some(key) = self.topics.lock_of(&message.topic) {
            return self.on_lock(key, &message.payload).await;
        }
        if let Some(key) = self.topics.foreign_claim(&message.topic) {
            if !message.payload.is_empty() && !self.resources.contains_key(&key) {
                let claim = Claim::TakenOver {
                    dead_claim: message.topic.clone(),
                };
                self.bid(key, claim).await?;
            }
            return Ok(());
        }
        if let Some(base) = message.topic.strip_suffix("/bridge/state") {
            if bridge_offline(&message.payload) {
                self.tell_base(base, || ToSession::GatewayGone);
            }
            return Ok(());
        }
        let Some((key, leaf)) = Key::from_topic(&message.topic) else {
            return Ok(());
        };
        match leaf {
            "state" => {
                let Some(state) = SessionState::parse(&message.payload) else {
                    return Ok(());
                };
                if let Some(session) = self.resources.get(&key) {
                    let _ = session.send(ToSession::State(state));
                } else if state.is_offer() {
                    self.bid(key, Claim::Offered).await?;
                }
            }
            "rm" if !message.retained => {
                if let (Some(session), Ok(text)) = (
                    self.resources.get(&key),
                    std::str::from_utf8(&message.payload),
                ) {
                    let _ = session.send(ToSession::Text(text.to_string()));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Bid for a resource on its lock topic (see the module docs).
    async fn bid(&mut self, key: Key, claim: Claim) -> anyhow::Result<()> {
        if self.bids.contains_key(&key) {
            return Ok(());
        }
        self.bids.insert(key.clone(), claim);
        let lock = self.topics.lock(&key);
        (self.client)
            .subscribe(lock.clone(), QoS::AtLeastOnce)
            .await?;
        (self.client)
            .publish(lock, QoS::AtLeastOnce, true, self.topics.instance.clone())
            .await?;
        Ok(())
    }

    /// The first live name on a lock this worker bid for decides the bid.
    async fn on_lock(&mut self, key: Key, payload: &[u8]) -> anyhow::Result<()> {
        let Ok(name) = std::str::from_utf8(payload) else {
            return Ok(());
        };
        if name.is_empty() || self.dead.contains(name) {
            return Ok(());
        }
        let Some(claim) = self.bids.remove(&key) else {
            return Ok(());
        };
        let lock = self.topics.lock(&key);
        (self.client).unsubscribe(lock.clone()).await?;
        if name == self.topics.instance {
            if !self.resources.contains_key(&key) {
                self.claim(key, claim).await?;
            }
        } else {
            tracing::debug!(resource = %key.prefix(), "CEM worker: another worker has the offer");
            (self.client)
                .publish(lock, QoS::AtLeastOnce, true, payload.to_vec())
                .await?;
        }
        Ok(())
    }

    async fn claim(&mut self, key: Key, how: Claim) -> anyhow::Result<()> {
        let prefix = key.prefix();
        // Subscribed before anything is published: the gateway answers our presence at
        // once, and its Handshake must find the subscription in place.
        for filter in [
            format!("{prefix}/state"),
            format!("{prefix}/rm"),
            format!("{}/bridge/state", key.base),
        ] {
            self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        }
        let record = serde_json::json!({ "worker": self.topics.instance }).to_string();
        self.client
            .publish(self.topics.claim(&key), QoS::AtLeastOnce, true, record)
            .await?;
        let take_over = matches!(how, Claim::TakenOver { .. });
        if let Claim::TakenOver { dead_claim } = how {
            (self.client)
                .publish(dead_claim, QoS::AtLeastOnce, true, Vec::<u8>::new())
                .await?;
        }
        let presence = serde_json::json!({ "state": "online", "worker": self.topics.instance });
        self.client
            .publish(
                format!("{prefix}/peer"),
                QoS::AtLeastOnce,
                true,
                presence.to_string(),
            )
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = SessionTask {
            client: self.client.clone(),
            key: key.clone(),
            demo: self.config.demo.clone(),
            take_over,
        };
        tokio::spawn(task.run(rx));
        self.resources.insert(key, tx);
        Ok(())
    }

    fn tell_base(&self, base: &str, message: impl Fn() -> ToSession) {
        for (key, session) in &self.resources {
            if key.base == base {
                let _ = session.send(message());
            }
        }
    }

    /// An orderly stop: every resource's presence goes offline, so its gateway ends the
    /// session and releases the devices now, not when a survivor takes over.
    async fn release_all(&mut self) {
        for key in self.resources.keys() {
            let prefix = key.prefix();
            let _ = (self.client)
                .publish(format!("{prefix}/peer"), QoS::AtLeastOnce, true, OFFLINE)
                .await;
            for record in [self.topics.claim(key), self.topics.lock(key)] {
                let _ = (self.client)
                    .publish(record, QoS::AtLeastOnce, true, Vec::<u8>::new())
                    .await;
            }
        }
        self.resources.clear();
    }
}

const OFFLINE: &str = r#"{"state":"offline"}"#;

/// How a resource came to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Claim {
    /// Offered by its gateway: no peer was present.
    Offered,
    /// Left by a worker that died: its session is open with nobody behind it.
    TakenOver {
        /// The dead worker's claim record, forgotten once ours is in place.
        dead_claim: String,
    },
}

fn bridge_offline(payload: &[u8]) -> bool {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| {
            v.get("state")
                .and_then(Value::as_str)
                .map(|s| s == "offline")
        })
        .unwrap_or(payload.is_empty())
}

/// The CEM sessions of one resource, one after another, as the gateway opens them.
struct SessionTask {
    client: AsyncClient,
    key: Key,
    demo: DemoCemConfig,
    take_over: bool,
}

/// The session the task is in.
struct Current {
    /// The gateway's id for it; `None` until its `state` names it (a take-over's
    /// Handshake goes out before the gateway opens the session it asks for).
    id: Option<String>,
    conversation: Conversation,
}

impl SessionTask {
    async fn run(self, mut inbox: mpsc::UnboundedReceiver<ToSession>) {
        let cem_topic = format!("{}/cem", self.key.prefix());
        let mut current: Option<Current> = None;
        let mut seen_state = false;
        let mut tick = tokio::time::interval(StdDuration::from_secs(1));
        loop {
            if let Some(open) = current.as_mut() {
                let step = open.conversation.step(Timestamp::now());
                for text in step.outgoing {
                    if (self.client)
                        .publish(&cem_topic, QoS::AtLeastOnce, false, text)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if let Some(reason) = step.closed {
                    tracing::info!(resource = %self.key.prefix(), ?reason, "CEM worker: session closed");
                    current = None;
                }
            }
            let deadline = current.as_ref().and_then(|c| c.conversation.deadline());
            tokio::select! {
                message = inbox.recv() => match message {
                    None => return,
                    Some(ToSession::State(state)) => {
                        let first = !seen_state;
                        seen_state = true;
                        self.on_state(&state, first, &mut current);
                    }
                    Some(ToSession::Text(text)) => {
                        if let Some(open) = current.as_mut() {
                            open.conversation.receive(&text, Timestamp::now());
                        }
                    }
                    Some(ToSession::GatewayGone) => end(&mut current),
                },
                () = sleep_until(deadline), if current.is_some() => {
                    if let Some(open) = current.as_mut() {
                        open.conversation.timeout(Timestamp::now());
                    }
                }
                _ = tick.tick() => {
                    if let Some(open) = current.as_mut() {
                        open.conversation.act(Timestamp::now());
                    }
                }
            }
        }
    }

    /// Follow the gateway's session boundaries (the peer's rule of the protocol).
    fn on_state(&self, state: &SessionState, first: bool, current: &mut Option<Current>) {
        let adopting = current.as_ref().is_some_and(|open| open.id.is_none());
        if adopting && state.state == "waiting" {
            // Our Handshake ends the orphaned session first (`waiting`), then opens ours.
            return;
        }
        if state.state != "open" {
            end(current);
            return;
        }
        if first && self.take_over {
            // The open session belongs to the dead worker: a new Handshake makes the
            // gateway end it and open ours.
            *current = Some(Current {
                id: None,
                conversation: Conversation::open(self.demo.clone(), Timestamp::now()),
            });
            return;
        }
        match current {
            Some(open) if open.id.is_none() => open.id = state.session.clone(),
            Some(open) if open.id == state.session => {}
            _ => {
                end(current);
                *current = Some(Current {
                    id: state.session.clone(),
                    conversation: Conversation::open(self.demo.clone(), Timestamp::now()),
                });
            }
        }
    }
}

fn end(current: &mut Option<Current>) {
    if let Some(mut open) = current.take() {
        open.conversation.transport_closed(Timestamp::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_topic_names_its_base_and_id_even_when_the_base_has_levels() {
        let (key, leaf) = Key::from_topic("fleet/gw07/s2/3d0c-4f8e/state").unwrap();
        assert_eq!(key.base, "fleet/gw07");
        assert_eq!(key.id, "3d0c-4f8e");
        assert_eq!(leaf, "state");
        assert!(Key::from_topic("fleet/gw07/bridge/state").is_none());
    }

    #[test]
    fn only_a_waiting_state_without_a_present_peer_is_an_offer() {
        let state = |json: &str| SessionState::parse(json.as_bytes()).unwrap();
        assert!(state(r#"{"state":"waiting","peer":"unknown"}"#).is_offer());
        assert!(state(r#"{"state":"waiting","peer":"offline"}"#).is_offer());
        assert!(!state(r#"{"state":"waiting","peer":"online"}"#).is_offer());
        assert!(!state(r#"{"state":"open","session":"s","peer":"online"}"#).is_offer());
        assert!(SessionState::parse(b"not json").is_none());
    }

    #[test]
    fn a_worker_takes_the_claims_and_will_of_others_only() {
        let topics = Topics::new("cems", "a-1");
        assert_eq!(topics.dead("cems/dead/b-2"), Some("b-2"));
        assert_eq!(topics.dead("cems/dead/a-1"), None);
        let key = topics
            .foreign_claim("cems/claims/b-2/fleet/gw1/s2/r1")
            .unwrap();
        assert_eq!(key.prefix(), "fleet/gw1/s2/r1");
        assert!(
            topics
                .foreign_claim("cems/claims/a-1/fleet/gw1/s2/r1")
                .is_none()
        );
        assert_eq!(topics.claim(&key), "cems/claims/a-1/fleet/gw1/s2/r1");
        assert_eq!(topics.lock(&key), "cems/locks/fleet/gw1/s2/r1");
        assert_eq!(topics.lock_of("cems/locks/fleet/gw1/s2/r1"), Some(key));
    }
}
