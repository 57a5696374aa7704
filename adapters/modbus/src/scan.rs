//! Installer tools: a SunSpec scan and raw register reads, for `s2gw modbus scan/read`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::bus::{Bus, BusSettings, Table};
use crate::error::ModbusError;
use crate::point::{Coalescing, Point, Poller, Unit};
use crate::sunspec::{self, Discovery, model_name};
use crate::target::Target;
use crate::value::{self, ByteOrder, Sentinels, Value, ValueType, WordOrder};

/// One model in a scan report.
#[derive(Debug, Clone, PartialEq)]
pub struct ScannedModel {
    /// Model id.
    pub id: u16,
    /// Address of its ID register (0-based).
    pub address: u16,
    /// Registers after ID and L.
    pub len: u16,
    /// Key points with their scaled values (`"W" → "1234 W"`), in model order.
    pub values: Vec<(String, String)>,
}

/// What [`scan`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanReport {
    /// Where.
    pub target: String,
    /// Which unit.
    pub unit: u8,
    /// Where the `SunS` marker is.
    pub base: u16,
    /// The model chain.
    pub models: Vec<ScannedModel>,
}

impl fmt::Display for ScanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "SunSpec device at {} unit {}: marker at {} ({} models)",
            self.target,
            self.unit,
            self.base,
            self.models.len()
        )?;
        for m in &self.models {
            writeln!(
                f,
                "  model {:>5} {:<32} at {:>5}, {:>3} registers",
                m.id,
                model_name(m.id),
                m.address,
                m.len
            )?;
            for (name, value) in &m.values {
                writeln!(f, "      {name:<20} {value}")?;
            }
        }
        Ok(())
    }
}

/// Settings for one-off tool connections: no retries beyond one, quick reconnect.
fn tool_bus(target: &Target) -> Arc<Bus> {
    Arc::new(Bus::private(target, BusSettings::default()))
}

/// Probes `target` for SunSpec (bases 40000, 0, 50000) and reads the key values of every
/// model s2gw knows. `unit` defaults to 1.
pub async fn scan(
    target: Target,
    unit: Option<u8>,
    timeout: Duration,
) -> Result<ScanReport, ModbusError> {
    let unit = Unit {
        bus: tool_bus(&target),
        id: unit.unwrap_or(1),
        timeout,
    };
    let discovery = sunspec::discover(&unit, &sunspec::DEFAULT_BASES).await?;
    let points = sunspec::points(&discovery);
    let mut poller = Poller::new(unit.clone(), points.clone(), Coalescing::default());
    poller.poll().await?;
    Ok(report(&target, unit.id, &discovery, &points, &poller))
}

fn report(
    target: &Target,
    unit: u8,
    d: &Discovery,
    points: &[Point],
    poller: &Poller,
) -> ScanReport {
    let models = d
        .models
        .iter()
        .map(|m| {
            let prefix = format!("{}.", m.id);
            let mut mine: Vec<&Point> = points
                .iter()
                .filter(|p| p.name.starts_with(&prefix))
                .collect();
            mine.sort_by_key(|p| p.address);
            let values = mine
                .into_iter()
                .map(|p| {
                    let short = p.name.trim_start_matches(&prefix).to_string();
                    (short.clone(), show(poller, &p.name, &short))
                })
                .collect();
            ScannedModel {
                id: m.id,
                address: m.address,
                len: m.len,
                values,
            }
        })
        .collect();
    ScanReport {
        target: target.to_string(),
        unit,
        base: d.base,
        models,
    }
}

/// A point's value with its unit, for people.
fn show(poller: &Poller, name: &str, short: &str) -> String {
    match poller.value(name) {
        None => "(not read)".to_string(),
        Some(Value::NotImplemented) => "not implemented".to_string(),
        Some(Value::Text(t)) => format!("{t:?}"),
        Some(_) => match poller.number(name) {
            None => "(scale factor not implemented)".to_string(),
            Some(n) => format!("{}{}", trim(n), unit_of(short)),
        },
    }
}

fn trim(n: f64) -> String {
    if n.fract() == 0.0 {
        format!("{n:.0}")
    } else {
        format!("{n:.3}")
    }
}

fn unit_of(point: &str) -> &'static str {
    match point {
        p if p.ends_with("Tms") => " s",
        "MaxChaRte" | "MaxDisChaRte" | "WChaMax" => " W",
        p if p.contains("Pct") || p.contains("WRte") || p == "ChaState" => " %",
        "WH" | "TotWhInj" | "WHRtg" => " Wh",
        "Hz" => " Hz",
        p if p.starts_with('W') && !p.ends_with("Ena") => " W",
        "DCW" => " W",
        _ => "",
    }
}

/// Registers read raw, with the decoded value.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRead {
    /// The words (bits as 0/1).
    pub words: Vec<u16>,
    /// The value decoded as asked.
    pub value: Value,
}

impl fmt::Display for RawRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: Vec<String> = self.words.iter().map(|w| format!("0x{w:04X}")).collect();
        write!(f, "{} = {}", hex.join(" "), self.value)
    }
}

/// Reads `count` items of `table` at the 0-based `address` and decodes them as
/// `value_type` (a string takes all `count` registers; other types take their width,
/// and `count` may be 0 to mean exactly that).
pub async fn read_raw(
    target: Target,
    unit: u8,
    table: Table,
    address: u16,
    count: u16,
    value_type: ValueType,
    word_order: WordOrder,
) -> Result<RawRead, ModbusError> {
    let width = value_type.width(count.max(1));
    let count = count.max(width);
    let unit = Unit {
        bus: tool_bus(&target),
        id: unit,
        timeout: Duration::from_secs(2),
    };
    let words = unit.read_words(table, address, count).await?;
    let used = words.get(..usize::from(width)).unwrap_or(&words);
    let value = value::decode(
        value_type,
        used,
        word_order,
        ByteOrder::Big,
        Sentinels::None,
        &[],
    );
    Ok(RawRead { words, value })
}
