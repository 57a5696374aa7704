//! S2 Connect: which resources are nodes, and the pairing server with `[s2connect]`,
//! advertised on DNS-SD.

use s2gw_core::CancellationToken;
use std::collections::BTreeMap;

use s2gw_s2connect::{
    AdvertiseSpec, IdentitySource, Interfaces, LongPollConfig, NodeSpec, PairingCodes,
    PairingServerConfig, PollingNode, WanServing,
};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{self, CemTransport, Config};

/// A resource S2 Connect can pair: a device or a native RM.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its node description's inputs.
    pub spec: NodeSpec,
    /// The `[cem.NAME]` link it is on.
    pub link: String,
    /// Whether that link is `transport = "s2connect"`.
    pub s2connect: bool,
    /// Its S2 `resource_id`.
    pub resource_id: String,
}

/// Every device and native RM, in config order, with what its node description says.
pub fn nodes(config: &Config) -> Vec<Node> {
    let on_s2connect = |cem: &str| {
        config
            .cem
            .get(cem)
            .is_some_and(|l| l.transport == CemTransport::S2Connect)
    };
    let devices = config.devices.iter().map(|d| Node {
        spec: NodeSpec {
            device: d.id.clone(),
            name: d.name.clone(),
            brand: d
                .profile
                .manufacturer
                .clone()
                .unwrap_or_else(|| "s2gw".into()),
            model: d
                .profile
                .model
                .clone()
                .unwrap_or_else(|| d.profile.name.clone()),
            kind: config::kind_name(d.profile.kind).to_string(),
        },
        link: d.cem.clone(),
        s2connect: on_s2connect(&d.cem),
        resource_id: d.resource_id.as_str().to_string(),
    });
    let natives = config.natives.iter().map(|n| Node {
        spec: NodeSpec {
            device: n.id.clone(),
            name: n.id.clone(),
            brand: "s2gw".into(),
            model: "bridged native RM".into(),
            kind: "native".into(),
        },
        link: n.cem.clone(),
        s2connect: on_s2connect(&n.cem),
        resource_id: n.resource_id.as_str().to_string(),
    });
    devices.chain(natives).collect()
}

/// The resources the pairing server hosts: those on an s2connect link, in config order
/// (their pairing-code aliases follow it).
pub fn pairable(config: &Config) -> Vec<Node> {
    nodes(config).into_iter().filter(|n| n.s2connect).collect()
}

/// The pairing-code file of every pairable resource, by device id, with `[s2connect]`
/// (none without). The aliases follow the config order, as the server's do.
pub fn pairing_codes(config: &Config) -> BTreeMap<String, PairingCodes> {
    if config.s2connect.is_none() {
        return BTreeMap::new();
    }
    let nodes = pairable(config);
    let aliases = s2gw_s2connect::aliases(nodes.iter().map(|n| n.spec.device.as_str()));
    nodes
        .into_iter()
        .zip(aliases)
        .map(|(node, alias)| {
            let codes = PairingCodes::new(&config.gateway.state_dir, &node.spec.device, &alias);
            (node.spec.device, codes)
        })
        .collect()
}

/// The path of a WAN gateway's S2 server where CEMs dial with their single-use token.
pub const SESSION_PATH: &str = "/s2/connect";

/// A started pairing server.
#[derive(Debug)]
pub struct PairingServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// A WAN gateway's door on the S2 server, for [`SESSION_PATH`].
    pub door: Option<ResourceDoor>,
}

/// The S2 server's door for S2 Connect sessions: the CEM's single-use token names the
/// device, whose CEM slot it opens.
#[derive(Debug)]
pub struct ResourceDoor {
    sessions: s2gw_s2connect::SessionDoor,
    resource_ids: BTreeMap<String, String>,
}

impl s2gw_ws::TokenDoor for ResourceDoor {
    fn open(&self, presented: &str) -> Option<String> {
        let device = self.sessions.device_for(presented)?;
        self.resource_ids.get(&device).cloned()
    }
}

/// Whether the s2connect links wait for the CEM to dial in (a WAN gateway) rather than
/// initiate sessions.
pub fn cem_dials_in(config: &Config) -> bool {
    config
        .s2connect
        .as_ref()
        .is_some_and(|s| s.wan_domain.is_some())
}

/// Start the pairing server `[s2connect]` asks for (`None` without one). A WAN gateway's
/// URLs name its S2 server's bound port, `s2_server`.
pub async fn start(
    config: &Config,
    paired: s2gw_s2connect::PairedEvents,
    s2_server: Option<std::net::SocketAddr>,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) -> anyhow::Result<Option<PairingServer>> {
    let Some(section) = &config.s2connect else {
        return Ok(None);
    };
    let wan = match (&section.wan_domain, s2_server) {
        (Some(domain), Some(s2)) => Some(WanServing {
            domain: domain.clone(),
            websocket_url: format!("wss://{domain}:{}{SESSION_PATH}", s2.port()),
        }),
        (Some(_), None) => anyhow::bail!("s2connect.deployment = \"wan\" needs a [server] section"),
        (None, _) => None,
    };
    let server = s2gw_s2connect::start_pairing_server(
        PairingServerConfig {
            listen: section.listen,
            identity: section.identity.clone(),
            state_dir: config.gateway.state_dir.clone(),
            name: config.gateway.name.clone(),
            nodes: pairable(config).into_iter().map(|n| n.spec).collect(),
            paired: paired.clone(),
            wan,
        },
        shutdown.clone(),
    )
    .await?;
    tasks.push(server.task);
    long_poll(config, &section.long_poll, &paired, shutdown, tasks);
    if let Some(interfaces) = &section.advertise_on {
        advertise(
            config,
            section,
            interfaces,
            server.addr.port(),
            shutdown,
            tasks,
        );
    }
    let door = server.sessions.map(|sessions| ResourceDoor {
        sessions,
        resource_ids: pairable(config)
            .into_iter()
            .map(|n| (n.spec.device, n.resource_id))
            .collect(),
    });
    Ok(Some(PairingServer {
        addr: server.addr,
        door,
    }))
}

/// Long-poll each CEM of `s2connect.long_poll` for the resources with a live code.
fn long_poll(
    config: &Config,
    urls: &[String],
    paired: &s2gw_s2connect::PairedEvents,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) {
    let mut codes = pairing_codes(config);
    let nodes: Vec<PollingNode> = pairable(config)
        .into_iter()
        .filter_map(|n| {
            let codes = codes.remove(&n.spec.device)?;
            Some(PollingNode {
                spec: n.spec,
                codes,
            })
        })
        .collect();
    for url in urls {
        let poll = LongPollConfig {
            cem_url: url.clone(),
            state_dir: config.gateway.state_dir.clone(),
            name: config.gateway.name.clone(),
            nodes: nodes.clone(),
            paired: paired.clone(),
        };
        match s2gw_s2connect::spawn_long_poll(poll, shutdown.clone()) {
            Ok(task) => tasks.push(task),
            Err(e) => warn!(cem = %url, error = %e, "s2connect.long_poll: cannot poll this CEM"),
        }
    }
}

/// Advertise the pairing server on DNS-SD until `shutdown`. A failure is logged, not
/// fatal: a CEM can still pair at the URL the installer types.
fn advertise(
    config: &Config,
    section: &config::S2ConnectSection,
    interfaces: &Interfaces,
    port: u16,
    shutdown: &CancellationToken,
    tasks: &mut Vec<JoinHandle<()>>,
) {
    if let Interfaces::Named(names) = interfaces {
        for name in names {
            if !std::path::Path::new("/sys/class/net").join(name).exists() {
                warn!(interface = %name, "s2connect.advertise_on names an interface this machine does not have");
            }
        }
    }
    let spec = AdvertiseSpec {
        instance: config.gateway.name.clone(),
        host: advertised_host(&section.identity),
        port,
        interfaces: interfaces.clone(),
    };
    match s2gw_s2connect::advertise(&spec) {
        Ok(advertisement) => {
            info!(instance = %spec.instance, host = %spec.host, port, "S2 Connect pairing server advertised on DNS-SD (_s2connect._tcp, _rm)");
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                shutdown.cancelled().await;
                drop(advertisement);
            }));
        }
        Err(e) => {
            warn!(error = %e, "the pairing server is not advertised; CEMs must be given its URL")
        }
    }
}

/// The host name of the advertised pairing URL: the self-signed certificate's first
/// `.local` name, so the name a CEM dials is one the certificate carries.
fn advertised_host(identity: &IdentitySource) -> String {
    match identity {
        IdentitySource::SelfSigned { names } => names.iter().find(|n| n.ends_with(".local")),
        IdentitySource::Files { .. } => None,
    }
    .cloned()
    .unwrap_or_else(|| config::DEFAULT_S2CONNECT_NAME.to_string())
}
