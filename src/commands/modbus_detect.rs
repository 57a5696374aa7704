//! `s2gw modbus detect`: probe hosts and ports for SunSpec and the built-in profiles'
//! signatures, and print a ready `[[device]]` per device found.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use s2gw_modbus::ModbusConfig;
use s2gw_modbus::detect::{Candidate, Finding, Probe, expand_hosts, probe_host};

/// What `s2gw modbus detect` probes.
#[derive(Debug, Clone)]
pub struct DetectRequest {
    /// Hosts or last-octet ranges (`192.168.1.10-20`).
    pub hosts: Vec<String>,
    /// TCP ports.
    pub ports: Vec<u16>,
    /// Unit ids to try where a profile sets none.
    pub units: Vec<u8>,
    /// Timeout of the connection and each request.
    pub timeout: Duration,
    /// The `cem` the snippets name.
    pub cem: String,
}

/// Probes and prints; exit code 0 when at least one device was identified, 1 otherwise.
pub async fn modbus_detect(request: DetectRequest) -> anyhow::Result<ExitCode> {
    let mut hosts = Vec::new();
    for spec in &request.hosts {
        hosts.extend(expand_hosts(spec).map_err(|e| anyhow::anyhow!("--host {e}"))?);
    }
    let probe = Probe {
        ports: request.ports.clone(),
        units: request.units.clone(),
        timeout: request.timeout,
    };
    let candidates = candidates()?;
    // Hosts side by side; each host's requests one at a time (see the detect module).
    let mut tasks = tokio::task::JoinSet::new();
    for (i, host) in hosts.into_iter().enumerate() {
        let (probe, candidates) = (probe.clone(), candidates.clone());
        tasks.spawn(async move { (i, probe_host(&host, &probe, &candidates).await) });
    }
    let mut found: Vec<(usize, Vec<Finding>)> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        found.push(done?);
    }
    found.sort_by_key(|(i, _)| *i);
    let findings: Vec<Finding> = found.into_iter().flat_map(|(_, f)| f).collect();
    print!("{}", render(&findings, &request.cem));
    let identified = findings
        .iter()
        .any(|f| matches!(f, Finding::SunSpec { .. } | Finding::Profile { .. }));
    Ok(if identified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The built-in Modbus map profiles that have a `[[modbus.detect]]` signature.
fn candidates() -> anyhow::Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for (name, text) in crate::config::BUILTIN_PROFILES {
        let table: toml::Table = toml::from_str(text)?;
        let Some(modbus) = table.get("modbus").and_then(|m| m.as_table()) else {
            continue;
        };
        let map = modbus.clone().into_iter().collect();
        let config = ModbusConfig::from_table(map)
            .map_err(|p| anyhow::anyhow!("built-in profile {name}: {p:?}"))?;
        if config.profile.detect.is_empty() {
            continue;
        }
        out.push(Candidate {
            profile: name.to_string(),
            unit: config.connection.unit,
            modbus: config.profile,
        });
    }
    Ok(out)
}

/// The report: a commented `[[device]]` per device found, then what was not identified.
pub fn render(findings: &[Finding], cem: &str) -> String {
    let mut out = String::new();
    let mut unknown = Vec::new();
    for f in findings {
        match f {
            Finding::SunSpec {
                addr,
                unit,
                base,
                models,
                manufacturer,
            } => {
                let list: Vec<String> = models.iter().map(u16::to_string).collect();
                let _ = writeln!(
                    out,
                    "# {addr} unit {unit}: SunSpec at {base}, models {} ({manufacturer:?})",
                    list.join(", ")
                );
                let profile = Finding::sunspec_profile(models, manufacturer);
                snippet(&mut out, addr, *unit, profile, cem);
                if !models.iter().any(|m| [120, 121, 702].contains(m)) {
                    out.push_str(
                        "# No rating (models 120/121/702): to control it, add\n\
                         # sunspec = { rated_w = <its rated power in W> }\n",
                    );
                }
                out.push('\n');
            }
            Finding::Profile {
                addr,
                unit,
                profile,
                seen,
            } => {
                let _ = writeln!(out, "# {addr} unit {unit}: {profile} ({seen})");
                snippet(&mut out, addr, *unit, profile, cem);
                out.push('\n');
            }
            Finding::Unidentified { addr, why } => {
                unknown.push(format!("# {addr}: answers, but not identified: {why}"));
            }
            Finding::Nothing { addr, why } => unknown.push(format!("# {addr}: {why}")),
        }
    }
    if !unknown.is_empty() {
        out.push_str("# Not identified:\n");
        for line in unknown {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

fn snippet(out: &mut String, addr: &str, unit: u8, profile: &str, cem: &str) {
    let id: String = format!("{}-{addr}-{unit}", profile.trim_start_matches("modbus-"))
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(48)
        .collect();
    let _ = write!(
        out,
        "[[device]]\nid = \"{id}\"\nprofile = \"{profile}\"\ncem = \"{cem}\"\n\
         [device.modbus]\ntcp = \"{addr}\"\nunit = {unit}\n"
    );
}
