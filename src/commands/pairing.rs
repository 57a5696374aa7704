//! `s2gw pair`, `s2gw pairings`, `s2gw unpair`: S2 Connect pairings of the resources.
//!
//! They work while the daemon runs because the daemon keeps no pairing in memory: it
//! reads `gateway.state_dir` before every session initiation, so a pairing made here is
//! used at the link's next dial and an unpaired one is refused there.

use std::path::Path;
use std::process::ExitCode;

use s2gw_s2connect::{NodeStore, PairTarget, PairingFile};

use crate::config::{self, Config};
use crate::gateway::s2connect::{Node, nodes, pairing_codes};

use super::init_tracing;

/// What `s2gw pair` was asked.
#[derive(Debug, Clone)]
pub struct PairRequest {
    /// One device (or native RM) id; `None`: every resource on an s2connect link.
    pub device: Option<String>,
    /// The CEM's pairing URL (`https://host:port/v1/`).
    pub cem_url: String,
    /// The pairing code the CEM shows, `[alias-]token`.
    pub code: String,
    /// The CEM is on the WAN (public certificate) rather than the LAN.
    pub wan: bool,
}

fn load(path: &Path) -> Option<Config> {
    match config::load(path) {
        Ok(config) => Some(config),
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    }
}

/// `s2gw pair [DEVICE | --all] --cem URL --code CODE -c FILE`.
pub async fn pair(path: &Path, request: &PairRequest) -> anyhow::Result<ExitCode> {
    let Some(config) = load(path) else {
        return Ok(ExitCode::FAILURE);
    };
    init_tracing(&config.gateway.log_level, false);
    if crate::gateway::s2connect::cem_dials_in(&config) {
        // As pairing client a WAN RM posts its own connection details (step 6B), which
        // is not built here: the CEM pairs with the gateway's server instead.
        anyhow::bail!(
            "this gateway is deployment = \"wan\" in {}: CEMs pair with its pairing server; \
             show them a code with `s2gw pairing-code <device>`",
            path.display()
        );
    }
    let all = nodes(&config);
    let chosen: Vec<&Node> = match &request.device {
        Some(id) => match all.iter().find(|n| &n.spec.device == id) {
            Some(node) if node.s2connect => vec![node],
            Some(node) => anyhow::bail!(
                "{id} is on CEM link `{}`, which is not transport \"s2connect\"",
                node.link
            ),
            None => anyhow::bail!("no device or native RM `{id}` in {}", path.display()),
        },
        None => all.iter().filter(|n| n.s2connect).collect(),
    };
    if chosen.is_empty() {
        anyhow::bail!(
            "no device in {} is on an s2connect CEM link",
            path.display()
        );
    }
    let target = PairTarget {
        url: request.cem_url.clone(),
        deployment: if request.wan {
            s2gw_core::s2::connect::Deployment::Wan
        } else {
            s2gw_core::s2::connect::Deployment::Lan
        },
    };
    let mut failed = 0;
    for node in chosen {
        let state = &config.gateway.state_dir;
        match s2gw_s2connect::pair(state, &node.spec, &target, &request.code).await {
            Ok(paired) => println!(
                "{}: paired with {} {} ({})",
                node.spec.device, paired.cem.brand, paired.cem.model_name, paired.cem.id
            ),
            Err(error) => {
                failed += 1;
                eprintln!("{}: not paired: {error}", node.spec.device);
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `s2gw pairing-code DEVICE -c FILE`: issue a pairing code for a CEM that pairs with
/// the gateway's pairing server. The code goes to stdout only (it is a secret while it is
/// valid); the log never has it.
pub fn pairing_code(path: &Path, device: &str) -> anyhow::Result<ExitCode> {
    let Some(config) = load(path) else {
        return Ok(ExitCode::FAILURE);
    };
    let Some(section) = &config.s2connect else {
        anyhow::bail!(
            "{} has no [s2connect] section: the gateway runs no pairing server for a CEM to \
             pair with (pair from the gateway instead: `s2gw pair {device} --cem URL --code CODE`)",
            path.display()
        );
    };
    let Some(codes) = pairing_codes(&config).remove(device) else {
        match nodes(&config).iter().find(|n| n.spec.device == device) {
            Some(node) => anyhow::bail!(
                "{device} is on CEM link `{}`, which is not transport \"s2connect\"",
                node.link
            ),
            None => anyhow::bail!("no device or native RM `{device}` in {}", path.display()),
        }
    };
    let issued = codes.issue(section.code_validity)?;
    println!("{}", issued.code);
    eprintln!(
        "{device}: type this code into the CEM within {} s (pairing server on port {}); it works once",
        section.code_validity.as_secs(),
        section.listen.port()
    );
    Ok(ExitCode::SUCCESS)
}

/// `s2gw pairings -c FILE`: who is paired with what. No token is ever printed.
pub fn pairings(path: &Path) -> anyhow::Result<ExitCode> {
    let Some(config) = load(path) else {
        return Ok(ExitCode::FAILURE);
    };
    let state = &config.gateway.state_dir;
    let mut broken = false;
    for node in nodes(&config).iter().filter(|n| n.s2connect) {
        let device = &node.spec.device;
        let node_id = match NodeStore::new(state).node_id(device) {
            Ok(id) => id.to_string(),
            Err(error) => {
                broken = true;
                eprintln!("{device}: {error}");
                continue;
            }
        };
        match PairingFile::new(state, device).summaries() {
            Ok(list) if list.is_empty() => println!("{device} (node {node_id}): not paired"),
            Ok(list) => {
                for p in list {
                    println!(
                        "{device} (node {node_id}): paired with {} ({}) at {}, {}, since {}",
                        p.cem, p.cem_id, p.initiate_session_url, p.trust, p.paired_at
                    );
                }
            }
            Err(error) => {
                broken = true;
                eprintln!("{device}: {error}");
            }
        }
    }
    Ok(if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `s2gw unpair DEVICE [--cem ID] -c FILE`: unpair on both sides.
pub async fn unpair(path: &Path, device: &str, cem: Option<&str>) -> anyhow::Result<ExitCode> {
    let Some(config) = load(path) else {
        return Ok(ExitCode::FAILURE);
    };
    init_tracing(&config.gateway.log_level, false);
    match s2gw_s2connect::unpair(&config.gateway.state_dir, device, cem).await {
        Ok(cems) => {
            for cem in cems {
                println!("{device}: unpaired from {cem}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("{device}: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// For `s2gw check`: every resource on an s2connect link that has no pairing yet (or an
/// unreadable pairing file), and a pairing server with nothing to serve. Warnings, not
/// errors: pairing comes after the config.
pub fn unpaired_warnings(config: &Config) -> Vec<String> {
    let state = &config.gateway.state_dir;
    let mut warnings = Vec::new();
    if config.s2connect.is_some() && pairing_codes(config).is_empty() {
        warnings.push(
            "[s2connect] serves no device: none is on a CEM link of transport \"s2connect\", \
             so a CEM has nothing to pair with"
                .to_string(),
        );
    }
    let nodes = nodes(config);
    let unpaired = nodes.iter().filter(|n| n.s2connect).filter_map(|n| {
        match PairingFile::new(state, &n.spec.device).load() {
            Ok(list) if list.is_empty() && crate::gateway::s2connect::cem_dials_in(config) => {
                Some(format!(
                    "{} is on s2connect link `{}` but not paired yet: let the CEM pair using \
                     `s2gw pairing-code {}`",
                    n.spec.device, n.link, n.spec.device
                ))
            }
            Ok(list) if list.is_empty() => Some(format!(
                "{} is on s2connect link `{}` but not paired yet: run `s2gw pair {} --cem <url> \
                 --code <code>`{}",
                n.spec.device,
                n.link,
                n.spec.device,
                if config.s2connect.is_some() {
                    format!(
                        ", or let the CEM pair using `s2gw pairing-code {}`",
                        n.spec.device
                    )
                } else {
                    String::new()
                }
            )),
            Ok(_) => None,
            Err(error) => Some(format!("{}: {error}", n.spec.device)),
        }
    });
    warnings.extend(unpaired);
    warnings
}
