//! `s2gw discover`: the S2 Connect endpoints DNS-SD finds on the LAN, with their nodes.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use s2gw_core::s2::connect::Role;
use s2gw_s2connect::{BrowseSpec, FoundEndpoint, Interfaces};

use crate::config;

/// What `s2gw discover` was asked.
#[derive(Debug, Clone)]
pub struct DiscoverRequest {
    /// CEMs (`_cem`, the default) or RMs (`_rm`, e.g. to see what the gateway advertises).
    pub role: Role,
    /// Interfaces to browse on; empty: `[s2connect] advertise_on` of the config if it has
    /// one, else every interface.
    pub interfaces: Vec<String>,
    /// How long to listen.
    pub window: Duration,
    /// Only the endpoint of this name; listening stops when it answers.
    pub only: Option<String>,
}

/// `s2gw discover [--rm] [--interface IF]... [--wait S] [--name NAME] -c FILE`.
///
/// The config is optional (an installer may discover before writing one): read when the
/// file exists, for the interfaces; a file that exists but is invalid is an error.
pub async fn discover(path: &Path, request: &DiscoverRequest) -> anyhow::Result<ExitCode> {
    let interfaces = match interfaces(path, &request.interfaces) {
        Ok(interfaces) => interfaces,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    super::init_tracing("warn", false);
    let spec = BrowseSpec {
        role: request.role,
        interfaces,
        window: request.window,
        only: request.only.clone(),
    };
    let found = s2gw_s2connect::discover(&spec).await?;
    let kind = role_name(request.role);
    if found.is_empty() {
        eprintln!(
            "no {kind} advertises _s2connect._tcp here (listened {} s)",
            request.window.as_secs_f32()
        );
        return Ok(ExitCode::FAILURE);
    }
    for endpoint in &found {
        print!("{}", render(kind, endpoint));
    }
    if request.role == Role::Cem {
        println!(
            "pair with: s2gw pair <device> --cem <pairing URL> --code <the code the CEM shows>"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Cem => "CEM",
        _ => "RM",
    }
}

/// The interfaces: the flags, else the config's `advertise_on`, else all.
fn interfaces(path: &Path, flags: &[String]) -> Result<Interfaces, config::ConfigErrors> {
    if !flags.is_empty() {
        return Ok(Interfaces::Named(flags.to_vec()));
    }
    if !path.exists() {
        return Ok(Interfaces::All);
    }
    let config = config::load(path)?;
    Ok(config
        .s2connect
        .and_then(|s| s.advertise_on)
        .unwrap_or_default())
}

/// One endpoint and its nodes, as lines.
fn render(kind: &str, endpoint: &FoundEndpoint) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let name = endpoint.name.as_deref().unwrap_or(&endpoint.instance);
    let _ = writeln!(
        out,
        "{kind} endpoint \"{name}\" (instance {})",
        endpoint.instance
    );
    if let Some(url) = &endpoint.pairing_url {
        let _ = writeln!(out, "  pairing URL: {url}");
    }
    if let Some(url) = &endpoint.longpolling_url {
        let _ = writeln!(out, "  long-polling URL: {url}");
    }
    match &endpoint.nodes {
        Ok(nodes) if nodes.is_empty() => {
            let _ = writeln!(out, "  no nodes listed");
        }
        Ok(nodes) => {
            for node in nodes {
                let label = node
                    .user_defined_name
                    .as_deref()
                    .unwrap_or(&node.model_name);
                let _ = writeln!(
                    out,
                    "  node {}: {label} ({} {}, {}, {})",
                    node.id,
                    node.brand,
                    node.model_name,
                    node.kind,
                    role_name(node.role)
                );
            }
        }
        Err(why) => {
            let _ = writeln!(out, "  nodes not listed: {why}");
        }
    }
    out
}
