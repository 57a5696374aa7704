//! The gateway's one broker connection: a task that polls it, dispatches inbound
//! messages by topic filter, and on every (re)connect resubscribes and re-publishes the
//! bridge state and every retained topic the gateway owns.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use s2gw_core::{Backoff, CancellationToken, LogThrottle};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::wire::{self, Client, Loop, Polled};
use crate::{MqttConfig, MqttError};

/// A connection that stayed up this long was a good one: the back-off starts over.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// How long an orderly stop may take to say goodbye to the broker.
const GOODBYE: Duration = Duration::from_secs(3);

/// One message from the broker.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The topic it was published on.
    pub topic: String,
    /// The payload, untouched.
    pub payload: Bytes,
    /// Whether the broker delivered it as a retained message.
    pub retained: bool,
}

/// The state of the broker connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// Whether the connection is up (CONNACK received, not lost since).
    pub connected: bool,
    /// How many times it came up since start; changes on every reconnect.
    pub connects: u64,
}

/// Starts the gateway's MQTT client.
#[derive(Debug)]
pub struct Mqtt;

/// A handle on the running client: publish, subscribe, watch the connection. Cheap to
/// clone; every adapter part (links, mirror, bridge, devices) holds one.
#[derive(Clone)]
pub struct MqttHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MqttHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttHandle")
            .field("base", &self.shared.base)
            .finish_non_exhaustive()
    }
}

struct Route {
    filter: String,
    tx: mpsc::UnboundedSender<Inbound>,
    /// What is queued for the consumer, shared with its [`Subscription`].
    queued: Arc<Queued>,
    capacity: usize,
}

/// Messages and bytes waiting in one subscription.
#[derive(Debug, Default)]
struct Queued {
    messages: AtomicUsize,
    bytes: AtomicUsize,
}

/// At most this many bytes wait in one subscription, whatever its message capacity: a
/// few oversized payloads must not pin hundreds of megabytes.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// The messages of one subscription, in arrival order.
///
/// The connection task never waits for a consumer (a consumer may itself be waiting to
/// publish, which needs that task): past the subscription's capacity (or
/// [`MAX_QUEUED_BYTES`]) messages are dropped and logged instead.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Inbound>,
    queued: Arc<Queued>,
}

impl Subscription {
    /// The next message, or `None` once the client stopped.
    pub async fn recv(&mut self) -> Option<Inbound> {
        let message = self.rx.recv().await?;
        self.taken(&message);
        Some(message)
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Result<Inbound, mpsc::error::TryRecvError> {
        let message = self.rx.try_recv()?;
        self.taken(&message);
        Ok(message)
    }

    fn taken(&self, message: &Inbound) {
        self.queued.messages.fetch_sub(1, Ordering::AcqRel);
        self.queued.bytes.fetch_sub(cost(message), Ordering::AcqRel);
    }
}

/// What a queued message counts against the byte limit.
fn cost(message: &Inbound) -> usize {
    message.payload.len().saturating_add(message.topic.len())
}

struct Shared {
    base: String,
    discovery_prefix: String,
    discovery: bool,
    max_frame_bytes: usize,
    session_grace: Duration,
    terminate_hold: Duration,
    client: Client,
    routes: Mutex<Vec<Route>>,
    /// Inbound messages dropped because their consumer was not keeping up.
    dropped: AtomicU64,
    /// The drop lines: a consumer that stays behind must not fill the log.
    drop_lines: Mutex<LogThrottle>,
    /// Retained topics the gateway owns, re-published after every reconnect.
    retained: Mutex<BTreeMap<String, Bytes>>,
    status: watch::Sender<LinkStatus>,
    shutdown: CancellationToken,
}

/// A poisoned lock only means another task panicked while holding it; the data (a route
/// list, a topic map) is still consistent, so carry on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Mqtt {
    /// Start the client: it connects (and reconnects with back-off) until `shutdown` is
    /// cancelled, then publishes `{"state":"offline"}` and disconnects.
    ///
    /// Fails only on configuration problems (including unreadable TLS files); a broker
    /// that cannot be reached is retried, never an error. Must run inside a Tokio
    /// runtime.
    pub fn start(
        config: MqttConfig,
        shutdown: CancellationToken,
    ) -> Result<(MqttHandle, JoinHandle<()>), MqttError> {
        let problems = config.validate();
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|(k, r)| format!("{k}: {r}")).collect();
            return Err(MqttError::Config(text.join("; ")));
        }
        let bridge_state = format!("{}/bridge/state", config.base_topic);
        let (client, eventloop) = wire::build(&config, &bridge_state)?;
        let (status, _) = watch::channel(LinkStatus::default());
        let shared = Arc::new(Shared {
            base: config.base_topic.clone(),
            discovery_prefix: config.discovery_prefix.clone(),
            discovery: config.discovery,
            max_frame_bytes: config.max_frame_bytes,
            session_grace: Duration::from_secs(config.session_grace_s),
            terminate_hold: Duration::from_secs(config.reconnect_max_s),
            client,
            routes: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            drop_lines: Mutex::new(LogThrottle::default()),
            retained: Mutex::new(BTreeMap::new()),
            status,
            shutdown: shutdown.clone(),
        });
        let handle = MqttHandle { shared };
        info!(
            host = %config.host,
            port = config.effective_port(),
            client_id = %config.effective_client_id(),
            protocol = ?config.protocol,
            tls = config.tls.is_some(),
            "MQTT client starting"
        );
        let (floor, ceiling) = config.backoff();
        let task = tokio::spawn(run(handle.clone(), eventloop, Backoff::new(floor, ceiling)));
        Ok((handle, task))
    }
}

impl MqttHandle {
    /// The base topic (`s2gw`).
    pub fn base(&self) -> &str {
        &self.shared.base
    }

    /// `<base>/<suffix>`.
    pub fn topic(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.shared.base)
    }

    /// Home Assistant's discovery prefix.
    pub fn discovery_prefix(&self) -> &str {
        &self.shared.discovery_prefix
    }

    /// Whether Home Assistant discovery is enabled.
    pub fn discovery_enabled(&self) -> bool {
        self.shared.discovery
    }

    /// The S2 frame limit the links enforce.
    pub fn max_frame_bytes(&self) -> usize {
        self.shared.max_frame_bytes
    }

    /// How long an S2 session survives a lost broker connection.
    pub fn session_grace(&self) -> Duration {
        self.shared.session_grace
    }

    /// How long a link waits after a TERMINATE before it offers a new session on its own.
    pub fn terminate_hold(&self) -> Duration {
        self.shared.terminate_hold
    }

    /// The client's shutdown token.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Watch the broker connection.
    pub fn status(&self) -> watch::Receiver<LinkStatus> {
        self.shared.status.subscribe()
    }

    /// Publish with QoS 1, not retained (S2 messages, responses, commands). Waits while
    /// the request queue is full, which is backpressure on the caller.
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Result<(), MqttError> {
        self.shared
            .client
            .publish(topic.into(), payload.into(), false)
            .await
    }

    /// Publish with QoS 1 and retained, and remember it: it is re-published after every
    /// reconnect, in case the broker lost it.
    pub async fn publish_retained(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> Result<(), MqttError> {
        let (topic, payload) = (topic.into(), payload.into());
        lock(&self.shared.retained).insert(topic.clone(), payload.clone());
        self.shared.client.publish(topic, payload, true).await
    }

    /// Like [`publish_retained`](Self::publish_retained) without waiting: for shutdown
    /// paths, where the queue may already be closing. Returns whether it was queued.
    pub fn try_publish_retained(&self, topic: &str, payload: impl Into<Bytes>) -> bool {
        let payload = payload.into();
        lock(&self.shared.retained).insert(topic.to_string(), payload.clone());
        self.shared
            .client
            .try_publish(topic.to_string(), payload, true)
            .is_ok()
    }

    /// Delete a retained topic (an empty retained payload) and forget it.
    pub async fn clear_retained(&self, topic: impl Into<String>) -> Result<(), MqttError> {
        let topic = topic.into();
        lock(&self.shared.retained).remove(&topic);
        self.shared.client.publish(topic, Bytes::new(), true).await
    }

    /// Subscribe (QoS 1) to `filter`; matching messages arrive on the subscription,
    /// which holds up to `capacity` of them (and at most 64 MiB). A consumer that falls
    /// further behind loses messages (logged): one stuck consumer must not stall the
    /// whole connection. The subscription is renewed after every reconnect.
    pub async fn subscribe(
        &self,
        filter: &str,
        capacity: usize,
    ) -> Result<Subscription, MqttError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(Queued::default());
        lock(&self.shared.routes).push(Route {
            filter: filter.to_string(),
            tx,
            queued: queued.clone(),
            capacity: capacity.max(1),
        });
        self.shared.client.subscribe(filter.to_string()).await?;
        Ok(Subscription { rx, queued })
    }

    /// Inbound messages waiting for their consumers, over every subscription.
    pub fn queued_messages(&self) -> usize {
        lock(&self.shared.routes)
            .iter()
            .map(|r| r.queued.messages.load(Ordering::Acquire))
            .sum()
    }

    /// Inbound messages dropped since the start because their consumer was behind.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Drop every route for `filter` and unsubscribe from it.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), MqttError> {
        lock(&self.shared.routes).retain(|r| r.filter != filter);
        self.shared.client.unsubscribe(filter.to_string()).await
    }

    /// Hand one inbound message to every route whose filter matches.
    fn dispatch(&self, inbound: Inbound) {
        let mut routes = lock(&self.shared.routes);
        routes.retain(|r| !r.tx.is_closed());
        let mut delivered = false;
        let size = cost(&inbound);
        for route in routes
            .iter()
            .filter(|r| crate::topic::matches(&r.filter, &inbound.topic))
        {
            let messages = route.queued.messages.load(Ordering::Acquire);
            let bytes = route.queued.bytes.load(Ordering::Acquire);
            if messages >= route.capacity || bytes.saturating_add(size) > MAX_QUEUED_BYTES {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                lock(&self.shared.drop_lines).warn(
                    "consumer not keeping up",
                    std::time::Instant::now(),
                    || {
                        warn!(
                            topic = %inbound.topic,
                            filter = %route.filter,
                            size,
                            messages,
                            "a consumer is not keeping up: message dropped"
                        );
                    },
                );
                continue;
            }
            route.queued.messages.fetch_add(1, Ordering::AcqRel);
            route.queued.bytes.fetch_add(size, Ordering::AcqRel);
            if route.tx.send(inbound.clone()).is_ok() {
                delivered = true;
            }
        }
        if !delivered {
            debug!(topic = %inbound.topic, "no consumer for a message");
        }
    }

    /// What to do after a CONNACK: subscriptions, the bridge state, retained topics.
    async fn renew(&self) {
        let mut filters: Vec<String> = lock(&self.shared.routes)
            .iter()
            .map(|r| r.filter.clone())
            .collect();
        filters.sort();
        filters.dedup();
        let retained: Vec<(String, Bytes)> = lock(&self.shared.retained)
            .iter()
            .map(|(t, p)| (t.clone(), p.clone()))
            .collect();
        let client = &self.shared.client;
        let mut outcome = client
            .publish(
                self.topic("bridge/state"),
                Bytes::from_static(wire::ONLINE),
                true,
            )
            .await;
        for filter in filters {
            outcome = outcome.and(client.subscribe(filter).await);
        }
        for (topic, payload) in retained {
            outcome = outcome.and(client.publish(topic, payload, true).await);
        }
        if outcome.is_err() {
            debug!("the client stopped while renewing the session");
        }
    }
}

/// The connection task: poll, dispatch, reconnect with back-off, say goodbye.
async fn run(handle: MqttHandle, mut eventloop: Loop, mut backoff: Backoff) {
    let shutdown = handle.shared.shutdown.clone();
    let mut connected_at: Option<Instant> = None;
    loop {
        let polled = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Polled::Connected { session_present }) => {
                info!(session_present, "connected to the MQTT broker");
                connected_at = Some(Instant::now());
                handle.shared.status.send_modify(|s| {
                    s.connected = true;
                    s.connects += 1;
                });
                // Renewing publishes through the request queue this task drains, so it
                // must run beside the task, never inside it.
                let renewer = handle.clone();
                tokio::spawn(async move { renewer.renew().await });
            }
            Ok(Polled::Message {
                topic,
                payload,
                retained,
            }) => handle.dispatch(Inbound {
                topic,
                payload,
                retained,
            }),
            Ok(Polled::DisconnectSent | Polled::Other) => {}
            Err(reason) => {
                if let Some(at) = connected_at.take() {
                    warn!(%reason, "lost the MQTT broker connection");
                    handle.shared.status.send_modify(|s| s.connected = false);
                    if at.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                } else {
                    warn!(%reason, "could not connect to the MQTT broker");
                }
                let delay = backoff.next_delay();
                debug!(?delay, "waiting before reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    if connected_at.is_some() {
        goodbye(&handle, &mut eventloop).await;
    }
    handle.shared.status.send_modify(|s| s.connected = false);
    info!("MQTT client stopped");
}

/// An orderly stop: `{"state":"offline"}` (a clean DISCONNECT suppresses the LWT), then
/// DISCONNECT, driving the connection until it went out or the grace ran out.
async fn goodbye(handle: &MqttHandle, eventloop: &mut Loop) {
    let client = &handle.shared.client;
    let queued = client
        .try_publish(
            handle.topic("bridge/state"),
            Bytes::from_static(wire::OFFLINE),
            true,
        )
        .and(client.try_disconnect());
    if queued.is_err() {
        debug!("the request queue is full: stopping without a goodbye");
        return;
    }
    let drive = async {
        loop {
            match eventloop.poll().await {
                Ok(Polled::DisconnectSent) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(GOODBYE, drive).await;
}
