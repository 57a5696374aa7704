//! `cargo bench --bench fleet`: a fleet of gateways served by cloud CEM workers.
//!
//! 20 gateway processes (`s2gw run`) with 50 sim devices each speak S2 over MQTT to one
//! mosquitto under base topics `fleet/gw00` … `fleet/gw19`; 2 CEM worker processes
//! (`s2gw cem --mqtt`, s2-kit CEM sessions) share their 1,000 resources through an MQTT
//! v5 shared subscription (docs/s2-over-mqtt.md, "CEM workers"). It prints the time until
//! every session is up, how the resources spread over the workers, the S2 messages per
//! second over a window, each gateway's resident memory, and, after one worker is killed
//! (SIGKILL), the time until every resource it served has a new session with the other
//! worker and a control type selected.
//!
//! It asserts correctness only: every resource served by exactly one worker, both workers
//! serving, every orphaned session replaced. An MQTT client of the bench watches every
//! state, claim and S2 message; its own subscription is part of the broker's load.
//!
//! Under `cargo test` (no `--bench` argument) it runs 2 gateways × 3 devices with a short
//! window, so the suite proves the bench still works.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::faults::CemWorker;
use common::{Broker, Daemon, MQTT_PASSWORD, MQTT_USER, sim_devices};
use tokio::sync::watch;

/// How long the whole fleet may take to come up, or to be taken over.
const FLEET_GUARD: Duration = Duration::from_secs(300);

/// One run's shape.
struct Shape {
    gateways: usize,
    devices: usize,
    window: Duration,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let shape = if full {
        Shape {
            gateways: 20,
            devices: 50,
            window: Duration::from_secs(30),
        }
    } else {
        Shape {
            gateways: 2,
            devices: 3,
            window: Duration::from_secs(2),
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(&shape));
}

async fn run(shape: &Shape) {
    let resources = shape.gateways * shape.devices;
    println!(
        "s2gw fleet (release build: {}): {} gateways × {} sim devices, S2 over MQTT, 2 CEM workers",
        !cfg!(debug_assertions),
        shape.gateways,
        shape.devices
    );
    let broker = Broker::start_quiet().await;
    let fleet = FleetView::watch(&broker).await;
    // Retained offers are not delivered to shared subscriptions: the workers subscribe
    // before any gateway publishes its first state.
    let mut worker_a = CemWorker::start(&broker, "cem-a", "fleet/+").await;
    let worker_b = CemWorker::start(&broker, "cem-b", "fleet/+").await;
    let started = Instant::now();
    let mut gateways: Vec<Daemon> = (0..shape.gateways)
        .map(|g| Daemon::start_quiet(&gateway_config(&broker, g, shape.devices)))
        .collect();
    let up = fleet
        .wait("every session to be up", |v| v.served() == resources)
        .await;
    println!(
        "all {resources} sessions up after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let spread = up.spread();
    println!("resources per worker: {spread:?}");
    assert_eq!(spread.len(), 2, "both workers serve resources");
    assert_eq!(spread.values().sum::<usize>(), resources, "one worker each");

    let rate = fleet.s2_rate(shape.window).await;
    println!(
        "S2 messages over {} s: {rate:.0} msg/s (both directions, all gateways)",
        shape.window.as_secs()
    );
    print_rss(
        &gateways,
        &[("cem-a", worker_a.pid()), ("cem-b", worker_b.pid())],
    );

    let dead = fleet.view().instance_of("cem-a");
    let orphans = fleet.view().sessions_of(&dead);
    let killed = Instant::now();
    worker_a.kill().await;
    let after = fleet
        .wait("the other worker to take every orphan over", |v| {
            v.taken_over(&orphans, &dead)
        })
        .await;
    println!(
        "worker cem-a killed (SIGKILL): its {} resources had new sessions with cem-b, control type selected, after {:.3} s",
        orphans.len(),
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(after.spread().len(), 1, "only the survivor serves");
    for gateway in &mut gateways {
        gateway.assert_running();
    }
}

/// The daemon's config for gateway `g`: `devices` sim devices on a CEM link over MQTT
/// under base topic `fleet/gwNN`, MQTT v5, no Home Assistant discovery (a cloud fleet).
fn gateway_config(broker: &Broker, g: usize, devices: usize) -> String {
    let base = format!("fleet/gw{g:02}");
    format!(
        "[gateway]\nname = \"fleet-gw{g:02}\"\nstate_dir = \"@STATE_DIR@\"\n\n{}\
         discovery = false\nprotocol = \"v5\"\n\n[cem.cloud]\ntransport = \"mqtt\"\n{}",
        broker.mqtt_section(&base),
        sim_devices(devices, "cloud")
    )
}

fn print_rss(gateways: &[Daemon], workers: &[(&str, u32)]) {
    let rss: Vec<f64> = gateways
        .iter()
        .map(|g| g.rss_kib().expect("a gateway's RSS") as f64 / 1024.0)
        .collect();
    let mean = rss.iter().sum::<f64>() / rss.len() as f64;
    let max = rss.iter().copied().fold(0.0, f64::max);
    let min = rss.iter().copied().fold(f64::MAX, f64::min);
    println!("gateway RSS: mean {mean:.1} MB, min {min:.1} MB, max {max:.1} MB");
    for (name, pid) in workers {
        println!("worker {name} RSS: {:.1} MB", rss_of(*pid) as f64 / 1024.0);
    }
}

/// VmRSS of `pid` in KiB.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// ----------------------------------------------------------------------------------------
// The bench's view of the fleet, from the broker
// ----------------------------------------------------------------------------------------

/// One resource as its `state` topic says.
#[derive(Debug, Clone, Default)]
struct Resource {
    /// The open session's id, if one is open.
    session: Option<String>,
    /// Whether a control type is selected in it.
    control_type: bool,
}

/// What the broker has shown so far.
#[derive(Debug, Clone, Default)]
struct View {
    /// By topic prefix `<base>/s2/<id>`.
    resources: BTreeMap<String, Resource>,
    /// Claim records: prefix → worker instance.
    claims: BTreeMap<String, String>,
    /// S2 messages seen on `rm` and `cem` topics.
    s2_messages: u64,
}

impl View {
    /// Resources with an open session, a control type and exactly one claim.
    fn served(&self) -> usize {
        self.resources
            .iter()
            .filter(|(prefix, r)| {
                r.session.is_some() && r.control_type && self.claims.contains_key(*prefix)
            })
            .count()
    }

    /// How many resources each worker instance claims.
    fn spread(&self) -> BTreeMap<String, usize> {
        let mut spread = BTreeMap::new();
        for instance in self.claims.values() {
            *spread.entry(instance.clone()).or_default() += 1;
        }
        spread
    }

    /// The instance of worker `name` (its name and a random suffix).
    fn instance_of(&self, name: &str) -> String {
        let prefix = format!("{name}-");
        self.claims
            .values()
            .find(|i| i.starts_with(&prefix))
            .cloned()
            .unwrap_or_else(|| panic!("worker {name} claims nothing"))
    }

    /// The resources `instance` claims, with their current session ids.
    fn sessions_of(&self, instance: &str) -> BTreeMap<String, Option<String>> {
        self.claims
            .iter()
            .filter(|(_, i)| *i == instance)
            .map(|(prefix, _)| {
                let session = self.resources.get(prefix).and_then(|r| r.session.clone());
                (prefix.clone(), session)
            })
            .collect()
    }

    /// Every orphan has a new session with a control type, claimed by another worker.
    fn taken_over(&self, orphans: &BTreeMap<String, Option<String>>, dead: &str) -> bool {
        orphans.iter().all(|(prefix, old)| {
            let Some(r) = self.resources.get(prefix) else {
                return false;
            };
            r.session.is_some()
                && r.session != *old
                && r.control_type
                && self.claims.get(prefix).is_some_and(|i| i != dead)
        })
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        let claims = format!("{}/claims/", CemWorker::GROUP);
        if let Some(rest) = topic.strip_prefix(&claims) {
            let Some((instance, prefix)) = rest.split_once('/') else {
                return;
            };
            if payload.is_empty() {
                if self.claims.get(prefix).is_some_and(|i| i == instance) {
                    self.claims.remove(prefix);
                }
            } else {
                self.claims.insert(prefix.to_string(), instance.to_string());
            }
        } else if let Some(prefix) = topic.strip_suffix("/state") {
            let state: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            let open = state["state"] == "open";
            self.resources.insert(
                prefix.to_string(),
                Resource {
                    session: state["session"]
                        .as_str()
                        .filter(|_| open)
                        .map(str::to_string),
                    control_type: open && state["control_type"].is_string(),
                },
            );
        } else if topic.ends_with("/rm") || topic.ends_with("/cem") {
            self.s2_messages += 1;
        }
    }
}

/// The view, updated by an MQTT client of the bench; every change wakes the waiters.
struct FleetView {
    view: Arc<Mutex<View>>,
    changes: watch::Receiver<u64>,
    _client: rumqttc::AsyncClient,
}

impl FleetView {
    /// Subscribe to every resource's state and S2 topics and to the workers' claims,
    /// and return once the broker has acknowledged the subscriptions.
    async fn watch(broker: &Broker) -> FleetView {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let mut options = MqttOptions::new("fleet-bench", "127.0.0.1", broker.port);
        options.set_credentials(MQTT_USER, MQTT_PASSWORD);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(32 * 1024 * 1024, 32 * 1024 * 1024);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let filters = [
            "fleet/+/s2/+/state".to_string(),
            "fleet/+/s2/+/rm".to_string(),
            "fleet/+/s2/+/cem".to_string(),
            format!("{}/claims/#", CemWorker::GROUP),
        ];
        for filter in &filters {
            client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        }
        let view = Arc::new(Mutex::new(View::default()));
        let (tx, changes) = watch::channel(0);
        let (subscribed_tx, mut subscribed) = watch::channel(0usize);
        let shared = Arc::clone(&view);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subscribed_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        shared.lock().unwrap().on_publish(&p.topic, &p.payload);
                        tx.send_modify(|n| *n += 1);
                    }
                    Ok(_) => {}
                    // The waiters see the channel close and fail; at the end of a run
                    // the broker goes first.
                    Err(_) => break,
                }
            }
        });
        let count = filters.len();
        tokio::time::timeout(FLEET_GUARD, subscribed.wait_for(|n| *n == count))
            .await
            .expect("the broker to acknowledge the bench's subscriptions")
            .unwrap();
        FleetView {
            view,
            changes,
            _client: client,
        }
    }

    /// A copy of the view as it is now.
    fn view(&self) -> View {
        self.view.lock().unwrap().clone()
    }

    /// Await the first view that satisfies `done` (it is checked on every change).
    async fn wait(&self, what: &str, done: impl Fn(&View) -> bool) -> View {
        let mut changes = self.changes.clone();
        let view = Arc::clone(&self.view);
        let reached = async move {
            loop {
                {
                    let now = view.lock().unwrap();
                    if done(&now) {
                        return now.clone();
                    }
                }
                changes
                    .changed()
                    .await
                    .expect("the bench's MQTT client lost the broker");
            }
        };
        match tokio::time::timeout(FLEET_GUARD, reached).await {
            Ok(view) => view,
            Err(_) => panic!("timed out waiting for {what}: {:?}", self.summary()),
        }
    }

    /// S2 messages per second seen over `window`.
    async fn s2_rate(&self, window: Duration) -> f64 {
        let before = self.view.lock().unwrap().s2_messages;
        let t0 = Instant::now();
        // A measurement window, not a synchronisation: the traffic flows all along.
        tokio::time::sleep(window).await;
        let after = self.view.lock().unwrap().s2_messages;
        (after - before) as f64 / t0.elapsed().as_secs_f64()
    }

    /// For a failure message: how far the fleet got.
    fn summary(&self) -> String {
        let view = self.view();
        let open: BTreeSet<&String> = view
            .resources
            .iter()
            .filter(|(_, r)| r.session.is_some())
            .map(|(p, _)| p)
            .collect();
        format!(
            "{} resources seen, {} open, {} served, claims {:?}",
            view.resources.len(),
            open.len(),
            view.served(),
            view.spread()
        )
    }
}
