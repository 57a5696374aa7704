//! One connection task per bus, shared by every unit on it, with a request queue.
//!
//! Devices never talk to a socket themselves: they send [`Op`]s to the [`Bus`] of their
//! [`Target`], whose task runs them one at a time. That is what Modbus needs: many devices
//! allow one TCP client only, and an RS-485 line carries one request at a time. The task
//! enforces the bus's inter-request delay and delay after connect, applies each request's
//! own timeout, reconnects with back-off, and puts a unit that timed out on its own
//! back-off, so a dead unit costs its bus one timeout per back-off step instead of one per
//! poll while the other units carry on.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use s2gw_core::Backoff;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_modbus::{Request, Response};

use crate::error::ModbusError;
use crate::ledger::{self, Ledger, Source};
use crate::point::Span;
use crate::target::Target;

/// The Modbus tables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Read/write registers (FC3 read, FC6/FC16 write).
    Holding,
    /// Read-only registers (FC4).
    Input,
    /// Read/write bits (FC1 read, FC5/FC15 write).
    Coil,
    /// Read-only bits (FC2).
    DiscreteInput,
}

impl Table {
    /// Whether the table holds bits rather than 16 bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }

    /// The most items one read may ask for (Modbus application protocol limits).
    pub fn max_read(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }

    /// The config-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
        }
    }
}

/// One Modbus request, owned so it can wait in a queue.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// FC1/FC2/FC3/FC4: read `count` items of `table` from `address` (0-based).
    Read {
        /// The table.
        table: Table,
        /// First item, 0-based protocol address.
        address: u16,
        /// How many.
        count: u16,
    },
    /// FC6: one holding register.
    WriteRegister(u16, u16),
    /// FC16: consecutive holding registers.
    WriteRegisters(u16, Vec<u16>),
    /// FC5: one coil.
    WriteCoil(u16, bool),
    /// FC15: consecutive coils.
    WriteCoils(u16, Vec<bool>),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read {
                table,
                address,
                count,
            } => {
                write!(f, "read {} {address}+{count}", table.as_str())
            }
            Op::WriteRegister(a, _) => write!(f, "FC6 write {a}"),
            Op::WriteRegisters(a, w) => write!(f, "FC16 write {a}+{}", w.len()),
            Op::WriteCoil(a, _) => write!(f, "FC5 write coil {a}"),
            Op::WriteCoils(a, c) => write!(f, "FC15 write coils {a}+{}", c.len()),
        }
    }
}

impl Op {
    fn request(&self) -> Request<'static> {
        match self.clone() {
            Op::Read {
                table: Table::Holding,
                address,
                count,
            } => Request::ReadHoldingRegisters(address, count),
            Op::Read {
                table: Table::Input,
                address,
                count,
            } => Request::ReadInputRegisters(address, count),
            Op::Read {
                table: Table::Coil,
                address,
                count,
            } => Request::ReadCoils(address, count),
            Op::Read {
                table: Table::DiscreteInput,
                address,
                count,
            } => Request::ReadDiscreteInputs(address, count),
            Op::WriteRegister(a, w) => Request::WriteSingleRegister(a, w),
            Op::WriteRegisters(a, w) => Request::WriteMultipleRegisters(a, w.into()),
            Op::WriteCoil(a, c) => Request::WriteSingleCoil(a, c),
            Op::WriteCoils(a, c) => Request::WriteMultipleCoils(a, c.into()),
        }
    }
}

/// What a request returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Registers read.
    Words(Vec<u16>),
    /// Bits read.
    Bits(Vec<bool>),
    /// A write the unit acknowledged.
    Written,
}

fn reply_of(response: Response, count: usize) -> Reply {
    match response {
        Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) => Reply::Words(w),
        Response::ReadCoils(mut b) | Response::ReadDiscreteInputs(mut b) => {
            // Bits come in whole bytes; the padding is not data.
            b.truncate(count);
            Reply::Bits(b)
        }
        _ => Reply::Written,
    }
}

/// Timing and retry rules of one bus.
#[derive(Debug, Clone, PartialEq)]
pub struct BusSettings {
    /// Silence between the end of one request and the start of the next (RS-485 devices
    /// and TCP gateways that need a breather).
    pub inter_request_delay: Duration,
    /// Wait after a connection opened before the first request (some devices drop the
    /// first request otherwise).
    pub connect_delay: Duration,
    /// Extra attempts after a broken connection or a garbled answer, each on a fresh
    /// connection. Timeouts are not retried: the unit goes on back-off instead.
    pub retries: u32,
    /// First and longest wait before reconnecting after a failed connect.
    pub reconnect: (Duration, Duration),
    /// First and longest time a unit that timed out is skipped.
    pub unit_backoff: (Duration, Duration),
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            inter_request_delay: Duration::ZERO,
            connect_delay: Duration::ZERO,
            retries: 1,
            reconnect: (Duration::from_millis(500), Duration::from_secs(30)),
            unit_backoff: (Duration::from_secs(1), Duration::from_secs(60)),
        }
    }
}

impl BusSettings {
    /// Two devices on one bus may ask for different timing: the gentler wins.
    fn merge(&mut self, other: &BusSettings) {
        self.inter_request_delay = self.inter_request_delay.max(other.inter_request_delay);
        self.connect_delay = self.connect_delay.max(other.connect_delay);
        self.retries = self.retries.max(other.retries);
    }
}

/// Counters of a bus, for tests, benchmarks and metrics.
#[derive(Debug, Default)]
pub struct BusStats {
    requests: AtomicU64,
    connects: AtomicU64,
    timeouts: AtomicU64,
    exceptions: AtomicU64,
    /// Requests waiting for the bus, the one being served included.
    queued: AtomicU64,
}

impl BusStats {
    /// Requests sent on the wire (retries included, skipped ones not).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Connections opened.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Requests a unit did not answer in time.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Requests a unit answered with a Modbus exception.
    pub fn exceptions(&self) -> u64 {
        self.exceptions.load(Ordering::Relaxed)
    }

    /// Requests waiting for the bus now, the one being served included.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    fn count(&self, result: &Result<Reply, ModbusError>) {
        match result {
            Err(ModbusError::Timeout { .. }) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Err(ModbusError::Exception { .. }) => {
                self.exceptions.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

struct Job {
    unit: u8,
    op: Op,
    timeout: Duration,
    reply: oneshot::Sender<Result<Reply, ModbusError>>,
}

/// A bus: the handle devices send requests through. Cheap to share ([`Arc`]).
pub struct Bus {
    target: Target,
    settings: Arc<Mutex<BusSettings>>,
    stats: Arc<BusStats>,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    ledger: Ledger,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus").field("target", &self.target).finish()
    }
}

/// Every bus in the process, so devices on one endpoint share its connection.
fn registry() -> &'static Mutex<HashMap<String, Weak<Bus>>> {
    static BUSES: OnceLock<Mutex<HashMap<String, Weak<Bus>>>> = OnceLock::new();
    BUSES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Every shared bus still in use, for metrics.
pub fn shared_buses() -> Vec<Arc<Bus>> {
    let buses = registry().lock().unwrap_or_else(|e| e.into_inner());
    buses.values().filter_map(Weak::upgrade).collect()
}

impl Bus {
    /// The bus for `target`, shared with every other user of the same target; `settings`
    /// are merged into a running bus's (the longer delays win). Nothing is connected until
    /// the first request.
    pub fn shared(target: &Target, settings: BusSettings) -> Arc<Bus> {
        let mut buses = registry().lock().unwrap_or_else(|e| e.into_inner());
        buses.retain(|_, bus| bus.strong_count() > 0);
        if let Some(bus) = buses.get(&target.key()).and_then(Weak::upgrade) {
            bus.settings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .merge(&settings);
            return bus;
        }
        let bus = Arc::new(Bus::private(target, settings));
        buses.insert(target.key(), Arc::downgrade(&bus));
        bus
    }

    /// A bus nobody else shares (installer tools, tests).
    pub fn private(target: &Target, settings: BusSettings) -> Bus {
        Bus {
            target: target.clone(),
            settings: Arc::new(Mutex::new(settings)),
            stats: Arc::new(BusStats::default()),
            queue: Mutex::new(None),
            ledger: Ledger::default(),
        }
    }

    /// Where the bus goes.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The bus's counters.
    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    /// Runs `op` on `unit`, queued behind the bus's other requests.
    pub async fn call(&self, unit: u8, op: Op, timeout: Duration) -> Result<Reply, ModbusError> {
        let (reply, answer) = oneshot::channel();
        let sender = self.sender();
        let job = Job {
            unit,
            op,
            timeout,
            reply,
        };
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if sender.send(job).await.is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(self.gone());
        }
        answer.await.unwrap_or_else(|_| Err(self.gone()))
    }

    /// Reads `span` of `unit` through the queue, recorded so that the proxy's reads can
    /// share it. With `join`, a queued read covering `span` or an answer younger than
    /// `max_age` is used instead of a new request (see [`crate::ledger`]).
    pub async fn read_shared(
        &self,
        unit: u8,
        span: Span,
        timeout: Duration,
        join: bool,
        max_age: Duration,
    ) -> Result<Reply, ModbusError> {
        let publish = match self.ledger.source(unit, span, join, max_age) {
            Source::Request(publish) => publish,
            Source::Joined(mut answer, got) => {
                loop {
                    if let Some((_, result)) = answer.borrow_and_update().clone() {
                        return result.and_then(|reply| ledger::slice(&reply, got, span));
                    }
                    if answer.changed().await.is_err() && answer.borrow().is_none() {
                        break;
                    }
                }
                // The other caller gave up before its answer came: ask ourselves.
                match self.ledger.source(unit, span, false, max_age) {
                    Source::Request(publish) => publish,
                    Source::Joined(..) => return Err(self.gone()),
                }
            }
        };
        let op = Op::Read {
            table: span.table,
            address: span.address,
            count: span.len,
        };
        let result = self.call(unit, op, timeout).await;
        publish.send_replace(Some((Instant::now(), result.clone())));
        result
    }

    /// Sets the registers `owner` controls on `unit` (none: it controls nothing): the
    /// proxy refuses foreign writes to them.
    pub fn claim(&self, owner: &str, unit: u8, spans: Vec<Span>) {
        self.ledger.claim(owner, unit, spans);
    }

    /// Who controls a register of `span` on `unit`.
    pub fn claimed(&self, unit: u8, span: Span) -> Option<String> {
        self.ledger.claimed(unit, span)
    }

    /// The queue, starting the bus task on first use (or after its runtime went away, as
    /// between tests).
    fn sender(&self) -> mpsc::Sender<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = queue.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(64);
        let task = BusTask::new(
            self.target.clone(),
            self.settings.clone(),
            self.stats.clone(),
        );
        tokio::spawn(task.run(rx));
        *queue = Some(tx.clone());
        tx
    }

    fn gone(&self) -> ModbusError {
        ModbusError::Link {
            target: self.target.to_string(),
            reason: "the bus task stopped".to_string(),
        }
    }
}

/// A unit's failure record.
struct UnitHealth {
    backoff: Backoff,
    skip_until: Option<Instant>,
}

/// The state the connection task owns.
struct BusTask {
    target: Target,
    settings: Arc<Mutex<BusSettings>>,
    stats: Arc<BusStats>,
    conn: Option<Context>,
    reconnect: Backoff,
    reconnect_at: Option<Instant>,
    last_end: Option<Instant>,
    units: HashMap<u8, UnitHealth>,
}

/// How one attempt on the wire ended.
enum Attempt {
    Done(Result<Reply, ModbusError>),
    /// The connection broke or answered garbage: reconnect and maybe retry.
    Broken(ModbusError),
}

impl BusTask {
    fn new(target: Target, settings: Arc<Mutex<BusSettings>>, stats: Arc<BusStats>) -> Self {
        let (floor, ceiling) = settings.lock().map(|s| s.reconnect).unwrap_or_default();
        Self {
            target,
            settings,
            stats,
            conn: None,
            reconnect: Backoff::new(floor, ceiling),
            reconnect_at: None,
            last_end: None,
            units: HashMap::new(),
        }
    }

    fn settings(&self) -> BusSettings {
        self.settings.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.recv().await {
            // The caller gave up (its own timeout): do not spend bus time on it.
            if job.reply.is_closed() {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let result = self.serve(job.unit, &job.op, job.timeout).await;
            self.stats.count(&result);
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            let _ = job.reply.send(result);
        }
        if let Some(mut conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
    }

    async fn serve(&mut self, unit: u8, op: &Op, timeout: Duration) -> Result<Reply, ModbusError> {
        self.check_unit(unit)?;
        let retries = self.settings().retries;
        let mut attempt = 0;
        loop {
            match self.attempt(unit, op, timeout).await? {
                Attempt::Done(result) => return result,
                Attempt::Broken(error) if attempt >= retries => return Err(error),
                Attempt::Broken(error) => {
                    tracing::debug!(target = %self.target, %error, "retrying on a new connection");
                    attempt += 1;
                }
            }
        }
    }

    /// Refuses at once a unit that is on back-off.
    fn check_unit(&self, unit: u8) -> Result<(), ModbusError> {
        let now = Instant::now();
        match self.units.get(&unit).and_then(|u| u.skip_until) {
            Some(until) if until > now => Err(ModbusError::BackedOff {
                target: self.target.to_string(),
                unit,
                retry_in: until - now,
            }),
            _ => Ok(()),
        }
    }

    async fn attempt(
        &mut self,
        unit: u8,
        op: &Op,
        timeout: Duration,
    ) -> Result<Attempt, ModbusError> {
        self.ensure_connected(unit, timeout).await?;
        // Computed first: `&self` must not live across an await (the client is not Sync).
        let resume = self.pace();
        // A zero-length sleep still waits for the timer's next millisecond tick.
        if resume > Instant::now() {
            tokio::time::sleep_until(resume).await;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(self.link_error("not connected".to_string()));
        };
        conn.set_slave(Slave(unit));
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::time::timeout(timeout, conn.call(op.request())).await;
        self.last_end = Some(Instant::now());
        Ok(match outcome {
            Err(_) => {
                self.unit_failed(unit);
                Attempt::Done(Err(ModbusError::Timeout {
                    target: self.target.to_string(),
                    unit,
                    after: timeout,
                }))
            }
            Ok(Ok(Ok(response))) => {
                self.unit_ok(unit);
                Attempt::Done(Ok(reply_of(response, op_count(op))))
            }
            Ok(Ok(Err(code))) => {
                // An exception is an answer, so the unit is alive, unless a gateway says
                // the unit behind it did not respond.
                if matches!(u8::from(code), 0x0A | 0x0B) {
                    self.unit_failed(unit);
                } else {
                    self.unit_ok(unit);
                }
                Attempt::Done(Err(ModbusError::Exception {
                    unit,
                    request: op.to_string(),
                    code: u8::from(code),
                }))
            }
            Ok(Err(error)) => {
                self.drop_connection().await;
                Attempt::Broken(self.link_error(error.to_string()))
            }
        })
    }

    async fn ensure_connected(&mut self, unit: u8, timeout: Duration) -> Result<(), ModbusError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        if let Some(at) = self.reconnect_at.filter(|at| *at > now) {
            return Err(self.link_error(format!(
                "not connected; next attempt in {} ms",
                (at - now).as_millis()
            )));
        }
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        match self.target.connect(unit, timeout).await {
            Ok(conn) => {
                self.conn = Some(conn);
                self.reconnect.reset();
                self.reconnect_at = None;
                let delay = self.settings().connect_delay;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(())
            }
            Err(error) => {
                self.reconnect_at = Some(Instant::now() + self.reconnect.next_delay());
                Err(error)
            }
        }
    }

    /// When the inter-request delay since the previous request is over.
    fn pace(&self) -> Instant {
        let gap = self.settings().inter_request_delay;
        self.last_end.map_or_else(Instant::now, |end| end + gap)
    }

    async fn drop_connection(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
    }

    fn unit_ok(&mut self, unit: u8) {
        self.units.remove(&unit);
    }

    fn unit_failed(&mut self, unit: u8) {
        let (floor, ceiling) = self.settings().unit_backoff;
        let health = self.units.entry(unit).or_insert_with(|| UnitHealth {
            backoff: Backoff::new(floor, ceiling),
            skip_until: None,
        });
        health.skip_until = Some(Instant::now() + health.backoff.next_delay());
    }

    fn link_error(&self, reason: String) -> ModbusError {
        ModbusError::Link {
            target: self.target.to_string(),
            reason,
        }
    }
}

fn op_count(op: &Op) -> usize {
    match op {
        Op::Read { count, .. } => usize::from(*count),
        _ => 0,
    }
}
