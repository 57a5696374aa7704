//! DNS-SD: the pairing server advertised as `_s2connect._tcp` with subtype `_rm`, and the
//! browse behind `s2gw discover`.
//!
//! s2-kit's [`Discovery`] puts the records on the wire (mdns-sd, no Avahi needed); this
//! module decides what the gateway says and on which interfaces, and turns what a browse
//! finds into something an installer can read: the endpoint, then its nodes as
//! `GET /v1/nodes` describes them. Nothing found here is trusted: the pairing HMAC is what
//! authenticates a peer, so discovery only ever produces a URL to pair with.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use s2gw_core::s2::connect::discovery::{Discovered, Discovery};
use s2gw_core::s2::connect::dnssd::ServiceRecord;
use s2gw_core::s2::connect::{LanClient, NodeDescription, Role};

/// The interfaces mDNS runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Interfaces {
    /// Every interface the machine has (mdns-sd's default, loopback included).
    #[default]
    All,
    /// Only these, by name (`eth0`, `lo`): a gateway with one NIC on the home LAN and one
    /// on a field bus advertises on the first only.
    Named(Vec<String>),
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("DNS-SD: {0}")]
pub struct DiscoveryError(String);

impl DiscoveryError {
    fn from(error: impl std::fmt::Display) -> Self {
        Self(error.to_string())
    }
}

/// Start an mDNS daemon on `interfaces`.
fn daemon(interfaces: &Interfaces) -> Result<Discovery, DiscoveryError> {
    let discovery = Discovery::new().map_err(DiscoveryError::from)?;
    if let Interfaces::Named(names) = interfaces {
        let daemon = discovery.daemon();
        daemon
            .disable_interface(mdns_sd::IfKind::All)
            .map_err(DiscoveryError::from)?;
        daemon
            .enable_interface(names.iter().map(String::as_str).collect::<Vec<_>>())
            .map_err(DiscoveryError::from)?;
    }
    Ok(discovery)
}

/// What the gateway advertises for its pairing server.
#[derive(Debug, Clone)]
pub struct AdvertiseSpec {
    /// The instance name a CEM's list shows: the gateway's name.
    pub instance: String,
    /// The `.local` host name of the pairing URL (mdns-sd answers for it too).
    pub host: String,
    /// The pairing server's port.
    pub port: u16,
    /// Where to advertise.
    pub interfaces: Interfaces,
}

impl AdvertiseSpec {
    /// The TXT record: the endpoint's name and its pairing URL, role RM.
    fn record(&self) -> ServiceRecord {
        ServiceRecord {
            endpoint_name: Some(self.instance.clone()),
            endpoint_logo_url: None,
            pairing_url: Some(format!("https://{}:{}/v1/", self.host, self.port)),
            longpolling_url: None,
            roles: vec![Role::Rm],
        }
    }
}

/// A running advertisement; withdrawn when dropped (and by the daemon's goodbye packets
/// when the process ends).
#[derive(Debug)]
pub struct Advertisement {
    discovery: Discovery,
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        // Shutting the daemon down sends the goodbye records.
        let _ = self.discovery.shutdown();
    }
}

/// The longest DNS label, which an instance name is.
const MAX_INSTANCE_BYTES: usize = 63;

/// Advertise the pairing server as `_rm._sub._s2connect._tcp.local.`.
pub fn advertise(spec: &AdvertiseSpec) -> Result<Advertisement, DiscoveryError> {
    let discovery = daemon(&spec.interfaces)?;
    let instance = truncate_label(&spec.instance);
    let host = if spec.host.ends_with(".local") {
        spec.host.clone()
    } else {
        format!("{}.local", spec.host)
    };
    let spec = AdvertiseSpec {
        instance,
        host,
        ..spec.clone()
    };
    discovery
        .advertise(&spec.instance, &spec.host, spec.port, &spec.record())
        .map_err(DiscoveryError::from)?;
    Ok(Advertisement { discovery })
}

/// `name` cut to a DNS label's 63 bytes, on a character boundary.
fn truncate_label(name: &str) -> String {
    let mut end = name.len().min(MAX_INSTANCE_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// An endpoint a browse found, with the nodes it lists.
#[derive(Debug, Clone)]
pub struct FoundEndpoint {
    /// The DNS-SD instance name.
    pub instance: String,
    /// The `e_name` of its TXT record.
    pub name: Option<String>,
    /// The pairing URL to give `s2gw pair --cem` (the advertised one, its `.local` host
    /// replaced by the address it resolved to, which works without nss-mdns).
    pub pairing_url: Option<String>,
    /// The long-polling URL, for an endpoint that offers `waitForPairing`.
    pub longpolling_url: Option<String>,
    /// The addresses it resolved to.
    pub addresses: Vec<IpAddr>,
    /// Its nodes from `GET /v1/nodes`, or why they could not be listed.
    pub nodes: Result<Vec<NodeDescription>, String>,
}

impl FoundEndpoint {
    /// Whether its node listing names a node of `role`.
    fn lists(&self, role: Role) -> bool {
        self.nodes
            .as_ref()
            .is_ok_and(|nodes| nodes.iter().any(|n| n.role == role))
    }
}

/// The most endpoints one browse keeps.
const MAX_FOUND: usize = 256;

/// What `s2gw discover` was asked.
#[derive(Debug, Clone)]
pub struct BrowseSpec {
    /// Which role's endpoints (`_cem`, `_rm`).
    pub role: Role,
    /// Where to browse.
    pub interfaces: Interfaces,
    /// How long to listen.
    pub window: Duration,
    /// Only the endpoint of this instance or `e_name`; listening stops when it answers.
    pub only: Option<String>,
}

impl BrowseSpec {
    /// Whether `endpoint` is one to list: of the role (or of a role the resolver did not
    /// report, decided by its nodes later) and of the name asked for.
    fn wants(&self, endpoint: &Discovered) -> bool {
        endpoint.hosts(self.role) != Some(false)
            && self.only.as_ref().is_none_or(|name| {
                &endpoint.instance == name || endpoint.record.endpoint_name.as_ref() == Some(name)
            })
    }
}

/// Browse for endpoints hosting `spec.role` for `spec.window` (or until the one
/// `spec.only` names answered), then ask each for its nodes.
pub async fn discover(spec: &BrowseSpec) -> Result<Vec<FoundEndpoint>, DiscoveryError> {
    let discovery = daemon(&spec.interfaces)?;
    // The plain service type, filtered here: mdns-sd drops an answer to a subtype browse
    // whose PTR names the plain type with the subtype's PTR among the additionals, which
    // is how mdns-sd itself (and so s2-kit's advertiser) answers.
    let browse = discovery.browse(None).map_err(DiscoveryError::from)?;
    // One entry per instance: an endpoint is resolved again on every announcement.
    let mut found: BTreeMap<String, Discovered> = BTreeMap::new();
    let listening = async {
        while let Some(endpoint) = browse.next().await {
            // Anyone on the LAN can announce names; a flood of them must not grow this
            // without bound (a home has a handful of endpoints).
            if found.len() >= MAX_FOUND && !found.contains_key(&endpoint.instance) {
                continue;
            }
            if spec.wants(&endpoint) {
                found.insert(endpoint.instance.clone(), endpoint);
                if spec.only.is_some() {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(spec.window, listening).await;
    let _ = discovery.shutdown();
    let mut endpoints = Vec::with_capacity(found.len());
    for endpoint in found.into_values() {
        let role_unknown = endpoint.hosts(spec.role).is_none();
        let described = describe(endpoint).await;
        if role_unknown && !described.lists(spec.role) {
            continue;
        }
        endpoints.push(described);
    }
    Ok(endpoints)
}

/// The endpoint's nodes, asked at its pairing URL.
async fn describe(endpoint: Discovered) -> FoundEndpoint {
    let pairing_url = endpoint
        .pairing_url()
        .map(|url| reachable(url, &endpoint.addresses));
    let nodes = match &pairing_url {
        Some(url) => list_nodes(url).await,
        None => Err("no pairingUrl: it only long-polls".to_string()),
    };
    let longpolling_url = endpoint
        .longpolling_url()
        .map(|url| reachable(url, &endpoint.addresses));
    FoundEndpoint {
        instance: endpoint.instance,
        name: endpoint.record.endpoint_name,
        longpolling_url,
        pairing_url,
        addresses: endpoint.addresses,
        nodes,
    }
}

async fn list_nodes(url: &str) -> Result<Vec<NodeDescription>, String> {
    let client = LanClient::new(url).map_err(|e| e.to_string())?;
    client.nodes().await.map_err(|e| e.to_string())
}

/// `url` with a `.local` host replaced by a resolved address (IPv4 first), and with the
/// API version `v1/` the s2-kit clients expect appended when the advertiser left it out.
/// A name that is not `.local` is kept: a resolver can look it up.
fn reachable(url: &str, addresses: &[IpAddr]) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    let local = parsed
        .host_str()
        .is_some_and(|h| h.trim_end_matches('.').ends_with(".local"));
    let address = addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addresses.first());
    if let (true, Some(address)) = (local, address) {
        let _ = parsed.set_ip_host(*address);
    }
    if !parsed.path().trim_end_matches('/').ends_with("/v1") {
        let path = format!("{}/v1/", parsed.path().trim_end_matches('/'));
        parsed.set_path(&path);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_pairing_url_is_dialled_at_the_address_it_resolved_to() {
        let v4: IpAddr = "192.168.1.20".parse().unwrap();
        let v6: IpAddr = "fe80::1".parse().unwrap();
        assert_eq!(
            reachable("https://cem.local:8443/v1/", &[v6, v4]),
            "https://192.168.1.20:8443/v1/"
        );
        assert_eq!(
            reachable("https://cem.example.com/v1/", &[v4]),
            "https://cem.example.com/v1/"
        );
    }

    #[test]
    fn a_pairing_url_without_the_version_gets_v1() {
        let v4: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            reachable("https://cem.local/", &[v4]),
            "https://10.0.0.2/v1/"
        );
        assert_eq!(
            reachable("https://cem.local/api", &[v4]),
            "https://10.0.0.2/api/v1/"
        );
    }

    #[test]
    fn an_instance_name_is_cut_to_one_dns_label_on_a_character_boundary() {
        let long = "é".repeat(40);
        let cut = truncate_label(&long);
        assert!(cut.len() <= MAX_INSTANCE_BYTES);
        assert_eq!(cut, "é".repeat(31));
    }

    #[test]
    fn the_advertised_record_is_an_rm_with_its_versioned_pairing_url() {
        let spec = AdvertiseSpec {
            instance: "Home gateway".into(),
            host: "s2gw.local".into(),
            port: 8443,
            interfaces: Interfaces::All,
        };
        let record = spec.record();
        assert_eq!(record.roles, vec![Role::Rm]);
        assert_eq!(
            record.pairing_url.as_deref(),
            Some("https://s2gw.local:8443/v1/")
        );
        assert_eq!(record.endpoint_name.as_deref(), Some("Home gateway"));
    }
}
