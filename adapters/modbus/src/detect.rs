//! `s2gw modbus detect`: which known device answers at a host and port.
//!
//! Politely: the hosts are probed side by side, but one host's ports, units and
//! candidates one after another, one request at a time, each with a timeout, on a
//! connection of its own that is closed before the next port. First SunSpec (the `SunS`
//! marker at 40000, 0 and 50000, then the model chain), then every map profile that has a
//! signature (`[[modbus.detect]]`: registers whose values must lie in a range, equal a
//! number or start with a text). A unit that times out is not asked anything else. A
//! SunSpec device that also shows a map profile's signature is that profile (SolarEdge:
//! SunSpec readings, its power control outside SunSpec); one whose common model names
//! a maker with a SunSpec profile of its own (SMA, Fronius) gets that profile.

use std::sync::Arc;
use std::time::Duration;

use crate::bus::{Bus, BusSettings};
use crate::config::{DetectCheck, ModbusProfile};
use crate::error::ModbusError;
use crate::point::{Coalescing, Point, Poller, Unit};
use crate::sunspec::{self, DEFAULT_BASES};
use crate::target::Target;
use crate::value::ValueType;

/// A map profile that has a signature.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The profile's name.
    pub profile: String,
    /// Its `[modbus]` table.
    pub modbus: ModbusProfile,
    /// The unit id the profile sets, if it does (else the probe's units are tried).
    pub unit: Option<u8>,
}

/// What to ask every host.
#[derive(Debug, Clone)]
pub struct Probe {
    /// TCP ports, in order.
    pub ports: Vec<u16>,
    /// Unit ids to try where a profile sets none.
    pub units: Vec<u8>,
    /// Timeout of the connection and of each request.
    pub timeout: Duration,
}

/// What one host and port turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// A SunSpec device.
    SunSpec {
        /// `host:port`.
        addr: String,
        /// The unit that answered.
        unit: u8,
        /// Where its marker is.
        base: u16,
        /// Its model ids, in chain order.
        models: Vec<u16>,
        /// The common model's manufacturer (Mn), empty if it could not be read.
        manufacturer: String,
    },
    /// A device whose profile's signature matched.
    Profile {
        /// `host:port`.
        addr: String,
        /// The unit that answered.
        unit: u8,
        /// The profile's name.
        profile: String,
        /// The signature values seen, for the installer to judge.
        seen: String,
    },
    /// Something accepted the connection but was not identified.
    Unidentified {
        /// `host:port`.
        addr: String,
        /// What was tried and how it answered.
        why: String,
    },
    /// Nothing usable at the port (refused, no answer).
    Nothing {
        /// `host:port`.
        addr: String,
        /// Why.
        why: String,
    },
}

impl Finding {
    /// The SunSpec profile a device with these models from this manufacturer gets: the
    /// maker's own profile where one ships (it knows the maker's unit id, base and
    /// quirks), else the generic one.
    pub fn sunspec_profile(models: &[u16], manufacturer: &str) -> &'static str {
        if manufacturer.starts_with("SMA") {
            "modbus-sma"
        } else if manufacturer.starts_with("Fronius") {
            "modbus-fronius"
        } else if models.contains(&124) {
            "modbus-sunspec-storage"
        } else {
            "modbus-sunspec-inverter"
        }
    }
}

/// Probes every port of `host`, one request at a time.
pub async fn probe_host(host: &str, probe: &Probe, candidates: &[Candidate]) -> Vec<Finding> {
    let mut out = Vec::new();
    for port in &probe.ports {
        let addr = format!("{host}:{port}");
        out.push(probe_port(&addr, probe, candidates).await);
    }
    out
}

async fn probe_port(addr: &str, probe: &Probe, candidates: &[Candidate]) -> Finding {
    let target = Target::Tcp(addr.to_string());
    let bus = Arc::new(Bus::private(
        &target,
        BusSettings {
            retries: 0,
            ..BusSettings::default()
        },
    ));
    let mut tried = Vec::new();
    for unit in probe.units.iter().copied() {
        let u = Unit {
            bus: bus.clone(),
            id: unit,
            timeout: probe.timeout,
        };
        match sunspec::discover(&u, &DEFAULT_BASES).await {
            Ok(d) => {
                if let Some(found) = refine(addr, &u, candidates).await {
                    return found;
                }
                return Finding::SunSpec {
                    addr: addr.to_string(),
                    unit,
                    base: d.base,
                    models: d.models.iter().map(|m| m.id).collect(),
                    manufacturer: manufacturer(&u, &d).await,
                };
            }
            Err(e) if nothing_there(&e) && tried.is_empty() => {
                return Finding::Nothing {
                    addr: addr.to_string(),
                    why: e.to_string(),
                };
            }
            Err(e) => tried.push(format!("SunSpec unit {unit}: {e}")),
        }
    }
    for c in candidates {
        let units = c.unit.map_or_else(|| probe.units.clone(), |u| vec![u]);
        for unit in units {
            let u = Unit {
                bus: bus.clone(),
                id: unit,
                timeout: probe.timeout,
            };
            match matches(&u, c).await {
                Ok(seen) => {
                    return Finding::Profile {
                        addr: addr.to_string(),
                        unit,
                        profile: c.profile.clone(),
                        seen,
                    };
                }
                Err(why) => tried.push(format!("{} unit {unit}: {why}", c.profile)),
            }
        }
    }
    Finding::Unidentified {
        addr: addr.to_string(),
        why: tried.join("; "),
    }
}

/// The common model's Mn (16 registers after its ID and L), or empty.
async fn manufacturer(unit: &Unit, d: &sunspec::Discovery) -> String {
    let Some(common) = d.models.iter().find(|m| m.id == 1) else {
        return String::new();
    };
    let mut point = Point::holding("mn", common.address.saturating_add(2), ValueType::String);
    point.length = 16;
    let mut poller = Poller::new(unit.clone(), vec![point], Coalescing::default());
    match poller.refresh(&["mn"]).await {
        Ok(()) => poller.text("mn").unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The first map profile for `unit` whose signature a SunSpec device shows.
async fn refine(addr: &str, unit: &Unit, candidates: &[Candidate]) -> Option<Finding> {
    for c in candidates
        .iter()
        .filter(|c| c.unit.is_none_or(|u| u == unit.id))
    {
        if let Ok(seen) = matches(unit, c).await {
            return Some(Finding::Profile {
                addr: addr.to_string(),
                unit: unit.id,
                profile: c.profile.clone(),
                seen,
            });
        }
    }
    None
}

/// Refused or unreachable: nothing to identify at that port.
fn nothing_there(e: &ModbusError) -> bool {
    matches!(e, ModbusError::Refused { .. } | ModbusError::Connect { .. })
}

/// Whether `unit` shows `c`'s signature: `Ok` with the values seen, else why not.
async fn matches(unit: &Unit, c: &Candidate) -> Result<String, String> {
    let names: Vec<&str> = c
        .modbus
        .detect
        .iter()
        .map(|d| d.register.as_str())
        .collect();
    let mut poller = Poller::new(
        unit.clone(),
        crate::map::points(&c.modbus),
        Coalescing {
            max_gap: 0,
            ..Coalescing::default()
        },
    );
    poller.refresh(&names).await.map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    for check in &c.modbus.detect {
        let shown = check_one(&poller, check)?;
        seen.push(format!("{} = {shown}", check.register));
    }
    Ok(seen.join(", "))
}

fn check_one(poller: &Poller, check: &DetectCheck) -> Result<String, String> {
    let name = &check.register;
    if let Some(prefix) = &check.prefix {
        let text = poller
            .text(name)
            .ok_or_else(|| format!("{name} unread or not text"))?;
        return if text.starts_with(prefix.as_str()) {
            Ok(format!("{text:?}"))
        } else {
            Err(format!("{name} = {text:?}, not {prefix:?}…"))
        };
    }
    let value = poller
        .number(name)
        .ok_or_else(|| format!("{name} unread or not implemented"))?;
    let fits = check.equals.is_none_or(|e| (value - e).abs() < 1e-9)
        && check.min.is_none_or(|m| value >= m)
        && check.max.is_none_or(|m| value <= m);
    if fits {
        Ok(format!("{value}"))
    } else {
        Err(format!("{name} = {value}, outside the signature"))
    }
}

/// Hosts from the command line: `a.b.c.d`, a last-octet range `a.b.c.d-e`, or a name.
pub fn expand_hosts(spec: &str) -> Result<Vec<String>, String> {
    let Some((first, last)) = spec.rsplit_once('-') else {
        return Ok(vec![spec.to_string()]);
    };
    // A name may contain dashes: only an IPv4 address before the dash makes a range.
    let Ok(ip) = first.parse::<std::net::Ipv4Addr>() else {
        return Ok(vec![spec.to_string()]);
    };
    let end: u8 = last
        .parse()
        .map_err(|_| format!("{spec:?}: the range end must be 0..=255"))?;
    let [a, b, c, d] = ip.octets();
    if end < d {
        return Err(format!("{spec:?}: the range ends before it starts"));
    }
    Ok((d..=end).map(|x| format!("{a}.{b}.{c}.{x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ranges_expand_over_the_last_octet() {
        assert_eq!(
            expand_hosts("10.0.0.5-7").unwrap(),
            ["10.0.0.5", "10.0.0.6", "10.0.0.7"]
        );
        assert_eq!(expand_hosts("inverter.local").unwrap(), ["inverter.local"]);
        assert!(expand_hosts("10.0.0.9-3").is_err());
        assert!(expand_hosts("10.0.0.1-300").is_err());
        assert_eq!(expand_hosts("pv-1.local").unwrap(), ["pv-1.local"]);
    }
}
