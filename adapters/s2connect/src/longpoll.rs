//! The gateway as long-polling client: `waitForPairing` on a LAN CEM that runs the pairing
//! server and starts pairing from its own UI.
//!
//! A resource takes part while it has a live pairing code (`s2gw pairing-code`, or the
//! Home Assistant button): that code is what the user types into the CEM, and the CEM then
//! tells the gateway, in the answer to a held request, to `requestPairing`. The gateway
//! pairs as the client with the code's token (no alias: the alias names a node of the
//! gateway, the CEM's endpoint picks its own node), exactly as `s2gw pair` would, and
//! withdraws the code. With no live code the gateway polls nothing; it looks for a new
//! code every [`CODE_CHECK`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use s2gw_core::s2::connect::{
    Deployment, EndpointDescription, LanClient, NodeDescription, NodeId, PairingCode, WaitAction,
    WaitForPairing, WaitInstruction,
};
use s2gw_core::{CancellationToken, LogThrottle};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::codes::PairingCodes;
use crate::events::PairedEvents;
use crate::node::{NodeSpec, NodeStore};
use crate::pair::{PairTarget, pair_with_code};

/// How often the set of resources with a live code is looked at again, also while a
/// request is held: a code issued by another process is a file in the state directory.
pub const CODE_CHECK: Duration = Duration::from_secs(2);

/// The longest wait between two polls of a CEM that fails.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A resource that can take part in long-polling.
#[derive(Debug, Clone)]
pub struct PollingNode {
    /// Its node description's inputs.
    pub spec: NodeSpec,
    /// Its pairing-code file.
    pub codes: PairingCodes,
}

/// What the long-polling client needs.
#[derive(Debug, Clone)]
pub struct LongPollConfig {
    /// The CEM's versioned base URL (`https://hems.local:8443/v1/`).
    pub cem_url: String,
    /// The gateway's state directory.
    pub state_dir: PathBuf,
    /// The gateway's name, for the endpoint description.
    pub name: String,
    /// The resources on s2connect links.
    pub nodes: Vec<PollingNode>,
    /// Where each pairing made here is announced (the link dials at once).
    pub paired: PairedEvents,
}

/// Long-poll `config.cem_url` until `shutdown`.
pub fn spawn_long_poll(
    config: LongPollConfig,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, String> {
    let client = LanClient::new(&config.cem_url).map_err(|e| e.to_string())?;
    let ids = NodeStore::new(&config.state_dir);
    let mut nodes = BTreeMap::new();
    for node in &config.nodes {
        match ids.describe(&node.spec) {
            Ok(description) => {
                nodes.insert(description.id, (node.clone(), description));
            }
            Err(e) => {
                warn!(device = %node.spec.device, error = %e, "not offered for long-poll pairing")
            }
        }
    }
    let poller = Poller {
        client,
        nodes,
        asked_to_describe: BTreeSet::new(),
        without_code: BTreeSet::new(),
        log: LogThrottle::default(),
        config,
    };
    Ok(tokio::spawn(poller.run(shutdown)))
}

struct Poller {
    client: LanClient,
    /// Every resource by node id, with its description.
    nodes: BTreeMap<NodeId, (PollingNode, NodeDescription)>,
    /// Nodes the CEM asked for their description: sent with the next poll.
    asked_to_describe: BTreeSet<NodeId>,
    /// Nodes told to pair with no live code: the next poll says so.
    without_code: BTreeSet<NodeId>,
    log: LogThrottle,
    config: LongPollConfig,
}

impl Poller {
    async fn run(mut self, shutdown: CancellationToken) {
        info!(cem = %self.config.cem_url, nodes = self.nodes.len(), "long-polling the CEM's waitForPairing for the resources with a live pairing code");
        let mut backoff = Duration::from_secs(1);
        loop {
            let pairable = self.pairable();
            if pairable.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(CODE_CHECK) => continue,
                }
            }
            let body = self.request(&pairable);
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.client.wait_for_pairing(&body) => Some(outcome),
                () = changed(&self, &pairable) => None,
            };
            match outcome {
                None => continue,
                Some(Ok(instructions)) => {
                    backoff = Duration::from_secs(1);
                    self.act(instructions).await;
                }
                Some(Err(e)) => {
                    let url = &self.config.cem_url;
                    self.log.warn("waitForPairing failed", Instant::now(), || {
                        warn!(cem = %url, error = %e, retry_s = backoff.as_secs(), "waitForPairing failed");
                    });
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// The nodes with a live pairing code, and those the next poll owes an answer.
    fn pairable(&self) -> BTreeSet<NodeId> {
        let now = SystemTime::now();
        self.nodes
            .iter()
            .filter(|(id, (node, _))| {
                self.without_code.contains(id) || node.codes.current(now).ok().flatten().is_some()
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// The request body: one entry per node, with what the CEM asked for.
    fn request(&mut self, pairable: &BTreeSet<NodeId>) -> Vec<WaitForPairing> {
        let endpoint = EndpointDescription {
            name: Some(self.config.name.clone()),
            logo_url: None,
            deployment: Some(Deployment::Lan),
        };
        pairable
            .iter()
            .filter_map(|id| self.nodes.get(id))
            .map(|(_, description)| {
                let id = description.id;
                let describe = self.asked_to_describe.remove(&id);
                WaitForPairing {
                    client_node_id: id,
                    client_node_description: describe.then(|| description.clone()),
                    client_endpoint_description: describe.then(|| endpoint.clone()),
                    error_message: self.without_code.remove(&id).then_some(
                        s2gw_core::s2::connect::WaitErrorMessage::NoValidTokenOnPairingClient,
                    ),
                }
            })
            .collect()
    }

    async fn act(&mut self, instructions: Vec<WaitInstruction>) {
        for instruction in instructions {
            let id = instruction.client_node_id;
            let Some((node, _)) = self.nodes.get(&id).cloned() else {
                continue;
            };
            let device = &node.spec.device;
            match instruction.action {
                WaitAction::SendNodeDescription => {
                    self.asked_to_describe.insert(id);
                }
                WaitAction::PreparePairing => {
                    info!(device = %device, cem = %self.config.cem_url, "the CEM's user is about to pair");
                }
                WaitAction::CancelPreparePairing => {
                    info!(device = %device, cem = %self.config.cem_url, "the CEM's user cancelled pairing");
                }
                WaitAction::RequestPairing => self.pair(id, &node).await,
                _ => {}
            }
        }
    }

    /// Pair `node` (node id `id`) as the client, with its live code's token.
    async fn pair(&mut self, id: NodeId, node: &PollingNode) {
        let device = &node.spec.device;
        let token = match node.codes.current(SystemTime::now()) {
            Ok(Some(token)) => token,
            Ok(None) | Err(_) => {
                warn!(device = %device, cem = %self.config.cem_url, "the CEM asked to pair, but the device has no valid pairing code: issue one with `s2gw pairing-code`");
                self.without_code.insert(id);
                return;
            }
        };
        let target = PairTarget {
            url: self.config.cem_url.clone(),
            deployment: Deployment::Lan,
        };
        let code = PairingCode { alias: None, token };
        // `pair_with_code` logs the outcome, refusals included, with what they mean.
        if pair_with_code(&self.config.state_dir, &node.spec, &target, code)
            .await
            .is_ok()
        {
            if let Err(e) = node.codes.withdraw() {
                warn!(device = %device, error = %e, "paired, but the used pairing code could not be removed");
            }
            self.config.paired.announce(device);
        }
    }
}

/// Resolves when the set of nodes with a live code is no longer `pairable`, so a new code
/// joins the poll at once instead of after the CEM's hold.
async fn changed(poller: &Poller, pairable: &BTreeSet<NodeId>) {
    loop {
        tokio::time::sleep(CODE_CHECK).await;
        if &poller.pairable() != pairable {
            return;
        }
    }
}
