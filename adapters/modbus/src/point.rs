//! Points (named values at register addresses), coalesced block reads and verified writes.
//!
//! Both kinds of device this crate builds, a register-map device and a SunSpec device,
//! end up as a list of [`Point`]s: the map profile's registers converted to 0-based
//! protocol addresses, or the points of the SunSpec models found by discovery. A
//! [`Poller`] reads the points that are due in as few requests as it can and keeps the raw
//! words, so a value and its scale-factor register are decoded from the same poll.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::bus::{Bus, Op, Reply, Table};
use crate::error::ModbusError;
use crate::value::{self, ByteOrder, Sentinels, Value, ValueType, WordOrder};

/// How often a point is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollGroup {
    /// Every poll: power and state.
    #[default]
    Fast,
    /// Every `slow_interval_s`: energy counters, settings that rarely change.
    Slow,
    /// Once, on the first successful poll: nameplate and identity.
    Once,
    /// Never polled (write-only; read back after a write only).
    Never,
}

/// A named value at a register address.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The name readings and commands use.
    pub name: String,
    /// The table.
    pub table: Table,
    /// 0-based protocol address of its first register (or bit).
    pub address: u16,
    /// The value type.
    pub ty: ValueType,
    /// Registers, for strings.
    pub length: u16,
    /// Word order of multi-register values.
    pub word_order: WordOrder,
    /// Byte order within registers.
    pub byte_order: ByteOrder,
    /// Which sentinels mean "not implemented".
    pub sentinels: Sentinels,
    /// Further raw values meaning "not implemented".
    pub not_implemented: Vec<u64>,
    /// Multiplier from raw to engineering units (W, Wh, %, A).
    pub scale: f64,
    /// Address of an int16 power-of-ten scale-factor register in the same table
    /// (SunSpec `_SF`), applied on top of `scale`.
    pub scale_register: Option<u16>,
    /// How often it is read.
    pub group: PollGroup,
}

impl Point {
    /// A holding-register point with big-endian layout and no scaling.
    pub fn holding(name: &str, address: u16, ty: ValueType) -> Point {
        Point {
            name: name.to_string(),
            table: Table::Holding,
            address,
            ty,
            length: ty.width(1),
            word_order: WordOrder::HighFirst,
            byte_order: ByteOrder::Big,
            sentinels: Sentinels::None,
            not_implemented: Vec::new(),
            scale: 1.0,
            scale_register: None,
            group: PollGroup::Fast,
        }
    }

    /// Registers (or bits) it occupies.
    pub fn width(&self) -> u16 {
        self.ty.width(self.length)
    }

    fn span(&self) -> Span {
        Span {
            table: self.table,
            address: self.address,
            len: self.width(),
        }
    }
}

/// A run of consecutive registers of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span {
    /// The table.
    pub table: Table,
    /// First address, 0-based.
    pub address: u16,
    /// How many.
    pub len: u16,
}

impl Span {
    fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.len)
    }
}

/// Merges spans into as few reads as possible: same table, holes of at most `max_gap`
/// items, at most `max_block` items per read (and never above the protocol's limit).
pub fn coalesce(spans: &[Span], max_gap: u16, max_block: u16) -> Vec<Span> {
    let mut sorted: Vec<Span> = spans.to_vec();
    sorted.sort();
    let mut out: Vec<Span> = Vec::new();
    for span in sorted {
        let limit = u32::from(max_block.min(span.table.max_read()).max(1));
        if let Some(last) = out.last_mut()
            && last.table == span.table
            && u32::from(span.address) <= last.end() + u32::from(max_gap)
            && span.end().max(last.end()) - u32::from(last.address) <= limit
        {
            let end = span.end().max(last.end());
            last.len = (end - u32::from(last.address)) as u16;
            continue;
        }
        out.push(span);
    }
    out
}

/// How many of `spans` a block covers.
fn block_spans(block: Span, spans: &[Span]) -> usize {
    spans
        .iter()
        .filter(|s| s.table == block.table && s.address >= block.address && s.end() <= block.end())
        .count()
}

/// How reads are grouped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coalescing {
    /// Largest hole of unused registers worth reading through.
    pub max_gap: u16,
    /// Most registers per read (≤ 125).
    pub max_block: u16,
    /// Interval of the slow group.
    pub slow_interval: Duration,
}

impl Default for Coalescing {
    fn default() -> Self {
        Self {
            max_gap: 8,
            max_block: 125,
            slow_interval: Duration::from_secs(60),
        }
    }
}

/// One unit on a bus: what requests go through.
#[derive(Debug, Clone)]
pub struct Unit {
    /// The bus.
    pub bus: Arc<Bus>,
    /// The unit (slave) id.
    pub id: u8,
    /// Timeout of each request.
    pub timeout: Duration,
}

impl Unit {
    /// Reads `count` registers of a register table.
    pub async fn read_words(
        &self,
        table: Table,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        match self.read(table, address, count).await? {
            Reply::Words(w) if w.len() == usize::from(count) => Ok(w),
            Reply::Bits(b) if b.len() == usize::from(count) => {
                Ok(b.into_iter().map(u16::from).collect())
            }
            other => Err(ModbusError::Data(format!(
                "asked for {count} items at {address}, got {other:?}"
            ))),
        }
    }

    async fn read(&self, table: Table, address: u16, count: u16) -> Result<Reply, ModbusError> {
        if count == 0 || count > table.max_read() {
            return Err(ModbusError::Invalid(format!(
                "cannot read {count} items of the {} table at once (1..={})",
                table.as_str(),
                table.max_read()
            )));
        }
        let span = Span {
            table,
            address,
            len: count,
        };
        self.bus
            .read_shared(self.id, span, self.timeout, false, Duration::ZERO)
            .await
    }

    /// Sends one write request.
    pub async fn write(&self, op: Op) -> Result<(), ModbusError> {
        self.bus.call(self.id, op, self.timeout).await.map(|_| ())
    }
}

/// The write function code for a point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteFc {
    /// Write Single Coil.
    Fc5,
    /// Write Single Register (one-register values only; wider ones go register by register).
    Fc6,
    /// Write Multiple Coils.
    Fc15,
    /// Write Multiple Registers (also for a single register).
    #[default]
    Fc16,
}

/// The ops that write `words` at `address` with `fc`. FC6 writes wider values register by
/// register, for devices that refuse FC16 altogether.
pub fn write_ops(fc: WriteFc, address: u16, words: &[u16]) -> Vec<Op> {
    match fc {
        WriteFc::Fc16 => vec![Op::WriteRegisters(address, words.to_vec())],
        WriteFc::Fc6 => words
            .iter()
            .zip(address..)
            .map(|(w, a)| Op::WriteRegister(a, *w))
            .collect(),
        WriteFc::Fc5 => words
            .iter()
            .zip(address..)
            .map(|(w, a)| Op::WriteCoil(a, *w != 0))
            .collect(),
        WriteFc::Fc15 => vec![Op::WriteCoils(
            address,
            words.iter().map(|w| *w != 0).collect(),
        )],
    }
}

/// Reads points in coalesced blocks and decodes them.
#[derive(Debug)]
pub struct Poller {
    /// Where requests go.
    pub unit: Unit,
    /// The points, by name.
    points: HashMap<String, Point>,
    coalescing: Coalescing,
    words: HashMap<(Table, u16), u16>,
    once_done: bool,
    slow_due: Option<Instant>,
    /// Turn coalescing off (benchmarks, devices that refuse reads across holes).
    pub coalesce: bool,
}

impl Poller {
    /// A poller for `points` on `unit`.
    pub fn new(unit: Unit, points: Vec<Point>, coalescing: Coalescing) -> Poller {
        Poller {
            unit,
            points: points.into_iter().map(|p| (p.name.clone(), p)).collect(),
            coalescing,
            words: HashMap::new(),
            once_done: false,
            slow_due: None,
            coalesce: true,
        }
    }

    /// Adds or replaces points (after discovery).
    pub fn add(&mut self, points: Vec<Point>) {
        for p in points {
            self.points.insert(p.name.clone(), p);
        }
    }

    /// The point called `name`.
    pub fn point(&self, name: &str) -> Option<&Point> {
        self.points.get(name)
    }

    /// The spans due now: fast always, slow when its interval passed, once until done.
    fn due_spans(&self, now: Instant) -> Vec<Span> {
        let slow = self.slow_due.is_none_or(|t| t <= now);
        let mut spans = BTreeSet::new();
        for p in self.points.values() {
            let due = match p.group {
                PollGroup::Fast => true,
                PollGroup::Slow => slow,
                PollGroup::Once => !self.once_done,
                PollGroup::Never => false,
            };
            if due {
                spans.insert(p.span());
                if let Some(sf) = p.scale_register {
                    spans.insert(Span {
                        table: p.table,
                        address: sf,
                        len: 1,
                    });
                }
            }
        }
        spans.into_iter().collect()
    }

    /// Reads every point that is due; returns the number of requests made.
    pub async fn poll(&mut self) -> Result<usize, ModbusError> {
        let now = Instant::now();
        let spans = self.due_spans(now);
        let requests = self.read_spans(&spans).await?;
        if self.slow_due.is_none_or(|t| t <= now) {
            self.slow_due = Some(now + self.coalescing.slow_interval);
        }
        self.once_done = true;
        Ok(requests)
    }

    /// Reads the named points now, whatever their group.
    pub async fn refresh(&mut self, names: &[&str]) -> Result<(), ModbusError> {
        let mut spans = Vec::new();
        for p in names.iter().filter_map(|n| self.points.get(*n)) {
            spans.push(p.span());
            if let Some(sf) = p.scale_register {
                spans.push(Span {
                    table: p.table,
                    address: sf,
                    len: 1,
                });
            }
        }
        self.read_spans(&spans).await.map(|_| ())
    }

    async fn read_spans(&mut self, spans: &[Span]) -> Result<usize, ModbusError> {
        let blocks = if self.coalesce {
            coalesce(spans, self.coalescing.max_gap, self.coalescing.max_block)
        } else {
            coalesce(spans, 0, 1)
                .into_iter()
                .chain(spans.iter().copied().filter(|s| s.len > 1))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let mut requests = 0;
        for block in blocks {
            requests += self.read_block(block, spans).await?;
        }
        Ok(requests)
    }

    /// Reads one block; a block spanning a hole the device refuses (exception 02) is read
    /// again span by span, and a span it still refuses is left unread.
    async fn read_block(&mut self, block: Span, spans: &[Span]) -> Result<usize, ModbusError> {
        match self
            .unit
            .read_words(block.table, block.address, block.len)
            .await
        {
            Ok(words) => {
                self.store(block, &words);
                Ok(1)
            }
            Err(ModbusError::Exception { code: 2, .. }) if block_spans(block, spans) > 1 => {
                // The device refuses reads across unmapped registers: stop reading
                // through holes for good, rather than paying for it on every poll.
                if self.coalescing.max_gap > 0 {
                    tracing::info!(
                        unit = self.unit.id,
                        "device refuses reads across holes; max_gap set to 0"
                    );
                    self.coalescing.max_gap = 0;
                }
                let inside: Vec<Span> = spans
                    .iter()
                    .copied()
                    .filter(|s| {
                        s.table == block.table
                            && s.address >= block.address
                            && s.end() <= block.end()
                    })
                    .filter(|s| *s != block)
                    .collect();
                let mut requests = 1;
                for span in inside {
                    requests += 1;
                    match self
                        .unit
                        .read_words(span.table, span.address, span.len)
                        .await
                    {
                        Ok(words) => self.store(span, &words),
                        Err(ModbusError::Exception { .. }) => self.forget(span),
                        Err(other) => return Err(other),
                    }
                }
                Ok(requests)
            }
            Err(ModbusError::Exception { .. }) => {
                self.forget(block);
                Ok(1)
            }
            Err(other) => Err(other),
        }
    }

    fn store(&mut self, span: Span, words: &[u16]) {
        for (w, a) in words.iter().zip(span.address..) {
            self.words.insert((span.table, a), *w);
        }
    }

    fn forget(&mut self, span: Span) {
        for a in span.address..span.address.saturating_add(span.len) {
            self.words.remove(&(span.table, a));
        }
    }

    /// The raw words of a point from the last poll.
    pub fn raw(&self, name: &str) -> Option<Vec<u16>> {
        let p = self.points.get(name)?;
        self.raw_at(p.table, p.address, p.width())
    }

    fn raw_at(&self, table: Table, address: u16, len: u16) -> Option<Vec<u16>> {
        (0..len)
            .map(|i| self.words.get(&(table, address.wrapping_add(i))).copied())
            .collect()
    }

    /// The decoded raw value of a point (before scaling).
    pub fn value(&self, name: &str) -> Option<Value> {
        let p = self.points.get(name)?;
        let words = self.raw(name)?;
        Some(value::decode(
            p.ty,
            &words,
            p.word_order,
            p.byte_order,
            p.sentinels,
            &p.not_implemented,
        ))
    }

    /// The total multiplier of a point: its scale times 10^SF; None when the SF register
    /// is unread or "not implemented".
    pub fn multiplier(&self, name: &str) -> Option<f64> {
        let p = self.points.get(name)?;
        match p.scale_register {
            None => Some(p.scale),
            Some(sf) => {
                let raw = *self.words.get(&(p.table, sf))? as i16;
                // 0x8000 is SunSpec's "not implemented"; real scale factors are -10..10.
                (-10..=10)
                    .contains(&raw)
                    .then(|| p.scale * 10f64.powi(i32::from(raw)))
            }
        }
    }

    /// A point in engineering units, when read and implemented.
    pub fn number(&self, name: &str) -> Option<f64> {
        let raw = self.value(name)?.number()?;
        Some(raw * self.multiplier(name)?)
    }

    /// A text point.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.value(name)? {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Encodes `engineering` for point `name` (inverse scaling, rounding, range check).
    pub fn encode(&self, name: &str, engineering: f64) -> Result<Vec<u16>, ModbusError> {
        let p = self
            .points
            .get(name)
            .ok_or_else(|| ModbusError::Invalid(format!("no point {name}")))?;
        let multiplier = self.multiplier(name).ok_or_else(|| {
            ModbusError::Data(format!(
                "scale factor of {name} is unknown or not implemented"
            ))
        })?;
        if multiplier == 0.0 {
            return Err(ModbusError::Invalid(format!("{name} has a scale of 0")));
        }
        let raw = if p.table.is_bits() {
            f64::from(u8::from(engineering != 0.0))
        } else {
            engineering / multiplier
        };
        value::encode(p.ty, raw, p.word_order, p.byte_order)
            .map_err(|reason| ModbusError::Invalid(format!("{name}: {reason}")))
    }

    /// Writes raw `words` to point `name` with `fc`, then reads it back and compares
    /// (fail-safe rule 4) unless `verify` is false.
    pub async fn write_raw(
        &mut self,
        name: &str,
        words: &[u16],
        fc: WriteFc,
        verify: bool,
    ) -> Result<(), ModbusError> {
        let p = self
            .points
            .get(name)
            .cloned()
            .ok_or_else(|| ModbusError::Invalid(format!("no point {name}")))?;
        for op in write_ops(fc, p.address, words) {
            self.unit.write(op).await?;
        }
        if !verify {
            self.store(p.span(), words);
            return Ok(());
        }
        let read = self.unit.read_words(p.table, p.address, p.width()).await?;
        self.store(p.span(), &read);
        if read != words {
            return Err(ModbusError::NotConfirmed {
                register: format!("{name} ({} {})", p.table.as_str(), p.address),
                wrote: words.to_vec(),
                read,
            });
        }
        Ok(())
    }

    /// Marks the named points as controlled by `owner` (replacing what it claimed
    /// before; no names: nothing): the proxy refuses foreign writes to them.
    pub fn claim(&self, owner: &str, names: &[&str]) {
        let spans = names
            .iter()
            .filter_map(|n| self.points.get(*n))
            .map(Point::span)
            .collect();
        self.unit.bus.claim(owner, self.unit.id, spans);
    }

    /// Writes an engineering value to point `name` and verifies it.
    pub async fn write(
        &mut self,
        name: &str,
        engineering: f64,
        fc: WriteFc,
        verify: bool,
    ) -> Result<(), ModbusError> {
        let words = self.encode(name, engineering)?;
        self.write_raw(name, &words, fc, verify).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(address: u16, len: u16) -> Span {
        Span {
            table: Table::Holding,
            address,
            len,
        }
    }

    #[test]
    fn adjacent_and_near_spans_merge_within_limits() {
        let spans = [
            span(0, 2),
            span(2, 1),
            span(10, 2),
            span(100, 1),
            span(200, 2),
        ];
        assert_eq!(
            coalesce(&spans, 8, 125),
            vec![span(0, 12), span(100, 1), span(200, 2)]
        );
        assert_eq!(
            coalesce(&spans, 0, 125),
            vec![span(0, 3), span(10, 2), span(100, 1), span(200, 2)]
        );
        assert_eq!(coalesce(&spans, 200, 125), vec![span(0, 101), span(200, 2)]);
        let input = Span {
            table: Table::Input,
            address: 2,
            len: 1,
        };
        assert_eq!(
            coalesce(&[span(0, 2), input], 8, 125).len(),
            2,
            "tables never merge"
        );
    }

    #[test]
    fn fc6_writes_register_by_register() {
        assert_eq!(
            write_ops(WriteFc::Fc6, 10, &[1, 2]),
            vec![Op::WriteRegister(10, 1), Op::WriteRegister(11, 2)]
        );
        assert_eq!(
            write_ops(WriteFc::Fc16, 10, &[1]),
            vec![Op::WriteRegisters(10, vec![1])]
        );
        assert_eq!(
            write_ops(WriteFc::Fc5, 3, &[1]),
            vec![Op::WriteCoil(3, true)]
        );
    }
}
