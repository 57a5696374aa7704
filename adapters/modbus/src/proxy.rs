//! The Modbus TCP proxy: a device re-exported to other Modbus TCP clients (the owner's
//! inverter app, evcc, Home Assistant) through the gateway's own connection and request
//! queue, for devices that accept one client only.
//!
//! A listener (`proxy_listen`) serves every device that names it, told apart by unit id
//! (`proxy_unit`, default the device's own unit: passed through). Requests from clients
//! queue on the device's bus behind the gateway's own, one at a time:
//!
//! - reads (FC1–4) that a read already queued covers wait for its answer instead of
//!   costing the device another request; with `proxy_cache_ms`, an answer at most that
//!   old is served without asking the device;
//! - writes (FC5, 6, 15, 16) are refused with exception 02 (illegal data address) unless
//!   every register lies in a `proxy_writable` range, and with exception 06 (server
//!   device busy) while a CEM instruction is active on one of them (the device's claim,
//!   [`crate::Bus::claim`]): the owner's app can never undo what the CEM asked for;
//! - every other function is refused with exception 01, a unit no device serves with
//!   exception 0A (gateway path unavailable), a device that does not answer with 0B;
//!   the device's own exceptions are passed on.
//!
//! Refusals are logged: the first few one by one, then a count at most once a minute.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::bus::{Bus, Op, Reply, Table};
use crate::config::WritableRange;
use crate::error::ModbusError;
use crate::point::Span;

/// Refusals of a listener logged one by one before only counts are kept.
const INDIVIDUAL_REFUSALS: u32 = 5;

/// The shortest time between two refusal summaries of a listener.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// One device behind a listener.
#[derive(Debug, Clone)]
pub struct Route {
    /// The device's id (logs).
    pub device: String,
    /// Its bus.
    pub bus: Arc<Bus>,
    /// Its unit id on the bus.
    pub unit: u8,
    /// Timeout of each request.
    pub timeout: Duration,
    /// Oldest shared answer a read may get.
    pub cache: Duration,
    /// What clients may write.
    pub writable: Vec<WritableRange>,
}

/// A running listener and the devices it serves, by the unit id clients use.
struct Listener {
    local: SocketAddr,
    routes: Mutex<HashMap<u8, Route>>,
    refusals: Mutex<Refusals>,
    task: JoinHandle<()>,
}

/// Every listener in the process, by the configured `proxy_listen` and the bound address.
fn listeners() -> &'static Mutex<HashMap<String, Arc<Listener>>> {
    static LISTENERS: OnceLock<Mutex<HashMap<String, Arc<Listener>>>> = OnceLock::new();
    LISTENERS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Serves `route` on `listen` to clients asking for unit `unit`, starting the listener
/// unless another device already did (port 0: always a new listener on a free port);
/// returns the address it listens on.
pub async fn serve(listen: &str, unit: u8, route: Route) -> Result<SocketAddr, ModbusError> {
    if let Some(listener) = running(listen) {
        add_route(&listener, listen, unit, route)?;
        return Ok(listener.local);
    }
    let bind_error = |reason: String| ModbusError::Connect {
        target: format!("proxy listener {listen}"),
        reason,
    };
    let socket = TcpListener::bind(listen)
        .await
        .map_err(|e| bind_error(e.to_string()))?;
    let local = socket.local_addr().map_err(|e| bind_error(e.to_string()))?;
    let listener = Arc::new_cyclic(|weak: &std::sync::Weak<Listener>| {
        let weak = weak.clone();
        Listener {
            local,
            routes: Mutex::new(HashMap::new()),
            refusals: Mutex::new(Refusals::default()),
            task: tokio::spawn(accept(Server::new(socket), weak)),
        }
    });
    add_route(&listener, listen, unit, route)?;
    // Devices join a listener by the address written or the one bound; port 0 asks for
    // a listener of one's own, so it is found by the bound address only.
    let mut all = lock(listeners());
    if !listen.ends_with(":0") {
        all.insert(listen.to_string(), listener.clone());
    }
    all.insert(local.to_string(), listener);
    drop(all);
    tracing::info!(listen, %local, "modbus proxy listening on {local}");
    Ok(local)
}

fn running(listen: &str) -> Option<Arc<Listener>> {
    let mut all = lock(listeners());
    // A listener whose runtime ended (between tests) is gone for good.
    all.retain(|_, l| !l.task.is_finished());
    all.get(listen).cloned()
}

fn add_route(listener: &Listener, listen: &str, unit: u8, route: Route) -> Result<(), ModbusError> {
    let mut routes = lock(&listener.routes);
    if let Some(other) = routes.get(&unit).filter(|r| r.device != route.device) {
        return Err(ModbusError::Invalid(format!(
            "proxy {listen}: unit {unit} is already device `{}`; give one of them another \
             proxy_unit",
            other.device
        )));
    }
    routes.insert(unit, route);
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept(server: Server, listener: std::sync::Weak<Listener>) {
    let on_connected = |stream, peer: SocketAddr| {
        let listener = listener.clone();
        async move {
            accept_tcp_connection(stream, peer, |peer| {
                Ok(listener
                    .upgrade()
                    .map(|listener| Arc::new(Session { listener, peer })))
            })
        }
    };
    let on_error = |error: std::io::Error| tracing::debug!(%error, "modbus proxy client left");
    if let Err(error) = server.serve(&on_connected, on_error).await {
        tracing::warn!(%error, "modbus proxy listener stopped");
    }
}

/// One client's connection.
struct Session {
    listener: Arc<Listener>,
    peer: SocketAddr,
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl tokio_modbus::server::Service for Session {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let listener = self.listener.clone();
        let peer = self.peer;
        Box::pin(async move {
            let route = lock(&listener.routes).get(&req.slave).cloned();
            let Some(route) = route else {
                listener.refused(peer, &format!("no device is unit {}", req.slave));
                return Err(ExceptionCode::GatewayPathUnavailable);
            };
            match handle(&route, req.request).await {
                Ok(response) => Ok(Some(response)),
                Err(Refusal::Refused(code, why)) => {
                    listener.refused(peer, &format!("device `{}`: {why}", route.device));
                    Err(code)
                }
                Err(Refusal::Device(code)) => Err(code),
            }
        })
    }
}

/// Why a request got an exception.
enum Refusal {
    /// The proxy said no (logged).
    Refused(ExceptionCode, String),
    /// The device (or the way to it) said no.
    Device(ExceptionCode),
}

async fn handle(route: &Route, request: Request<'static>) -> Result<Response, Refusal> {
    match request {
        Request::ReadCoils(a, n) => read(route, Table::Coil, a, n).await,
        Request::ReadDiscreteInputs(a, n) => read(route, Table::DiscreteInput, a, n).await,
        Request::ReadHoldingRegisters(a, n) => read(route, Table::Holding, a, n).await,
        Request::ReadInputRegisters(a, n) => read(route, Table::Input, a, n).await,
        Request::WriteSingleCoil(a, v) => {
            write(route, Table::Coil, a, 1, Op::WriteCoil(a, v)).await?;
            Ok(Response::WriteSingleCoil(a, v))
        }
        Request::WriteMultipleCoils(a, v) => {
            let n = quantity(v.len())?;
            write(route, Table::Coil, a, n, Op::WriteCoils(a, v.into_owned())).await?;
            Ok(Response::WriteMultipleCoils(a, n))
        }
        Request::WriteSingleRegister(a, w) => {
            write(route, Table::Holding, a, 1, Op::WriteRegister(a, w)).await?;
            Ok(Response::WriteSingleRegister(a, w))
        }
        Request::WriteMultipleRegisters(a, w) => {
            let n = quantity(w.len())?;
            let op = Op::WriteRegisters(a, w.into_owned());
            write(route, Table::Holding, a, n, op).await?;
            Ok(Response::WriteMultipleRegisters(a, n))
        }
        other => Err(Refusal::Refused(
            ExceptionCode::IllegalFunction,
            format!("function {} is not proxied", other.function_code().value()),
        )),
    }
}

fn quantity(n: usize) -> Result<u16, Refusal> {
    u16::try_from(n).map_err(|_| Refusal::Device(ExceptionCode::IllegalDataValue))
}

async fn read(route: &Route, table: Table, address: u16, n: u16) -> Result<Response, Refusal> {
    if n == 0 || n > table.max_read() || u32::from(address) + u32::from(n) > 0x1_0000 {
        return Err(Refusal::Device(ExceptionCode::IllegalDataValue));
    }
    let span = Span {
        table,
        address,
        len: n,
    };
    let reply = route
        .bus
        .read_shared(route.unit, span, route.timeout, true, route.cache)
        .await
        .map_err(|e| Refusal::Device(exception_for(&e)))?;
    match (table, reply) {
        (Table::Holding, Reply::Words(w)) => Ok(Response::ReadHoldingRegisters(w)),
        (Table::Input, Reply::Words(w)) => Ok(Response::ReadInputRegisters(w)),
        (Table::Coil, Reply::Bits(b)) => Ok(Response::ReadCoils(b)),
        (Table::DiscreteInput, Reply::Bits(b)) => Ok(Response::ReadDiscreteInputs(b)),
        _ => Err(Refusal::Device(ExceptionCode::ServerDeviceFailure)),
    }
}

async fn write(route: &Route, table: Table, address: u16, n: u16, op: Op) -> Result<(), Refusal> {
    if !route.writable.iter().any(|r| r.contains(table, address, n)) {
        return Err(Refusal::Refused(
            ExceptionCode::IllegalDataAddress,
            format!(
                "write to {} {address}+{n} refused: not in proxy_writable",
                table.as_str()
            ),
        ));
    }
    let span = Span {
        table,
        address,
        len: n,
    };
    if let Some(owner) = route.bus.claimed(route.unit, span) {
        return Err(Refusal::Refused(
            ExceptionCode::ServerDeviceBusy,
            format!(
                "write to {} {address}+{n} refused: a CEM instruction to `{owner}` controls it",
                table.as_str()
            ),
        ));
    }
    route
        .bus
        .call(route.unit, op, route.timeout)
        .await
        .map(|_| ())
        .map_err(|e| Refusal::Device(exception_for(&e)))
}

/// The exception a client gets for a failed request to the device.
fn exception_for(error: &ModbusError) -> ExceptionCode {
    match error {
        ModbusError::Exception { code, .. } => ExceptionCode::new(*code),
        ModbusError::Timeout { .. } | ModbusError::BackedOff { .. } => {
            ExceptionCode::GatewayTargetDevice
        }
        ModbusError::Data(_) | ModbusError::NotConfirmed { .. } | ModbusError::Invalid(_) => {
            ExceptionCode::ServerDeviceFailure
        }
        _ => ExceptionCode::GatewayPathUnavailable,
    }
}

/// How many refusals a listener logged and counted.
#[derive(Debug, Default)]
struct Refusals {
    logged: u32,
    counted: u64,
    summary_at: Option<Instant>,
}

impl Listener {
    /// Logs a refusal, or counts it once the first few were logged.
    fn refused(&self, peer: SocketAddr, why: &str) {
        let mut r = lock(&self.refusals);
        if r.logged < INDIVIDUAL_REFUSALS {
            r.logged += 1;
            let more = if r.logged == INDIVIDUAL_REFUSALS {
                " (further refusals are counted, at most one line a minute)"
            } else {
                ""
            };
            tracing::warn!(proxy = %self.local, client = %peer, "modbus proxy: {why}{more}");
            return;
        }
        r.counted += 1;
        let now = Instant::now();
        if r.summary_at.is_none_or(|at| now >= at) {
            tracing::warn!(proxy = %self.local, refused = r.counted, last = why, "modbus proxy: requests refused since the last line");
            r.counted = 0;
            r.summary_at = Some(now + SUMMARY_INTERVAL);
        }
    }
}
