//! Test peers: pymodbus device simulators in a child process, and an in-process
//! tokio-modbus server with fault injection.

#![allow(dead_code)]
// Test scaffolding: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use s2gw_modbus::bus::{Bus, BusSettings, Table};
use s2gw_modbus::point::Unit;
use s2gw_modbus::{ModbusProfile, Target};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};

/// The Python with pymodbus: `S2GW_TEST_PYTHON`, else `<workspace>/.venv/bin/python`.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("S2GW_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    // The workspace directory made canonical, but not the interpreter: a venv's python is
    // a link to the system one and must be started by its venv path.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let workspace = std::fs::canonicalize(&manifest).unwrap_or(manifest);
    let venv = workspace.join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python for the pymodbus peers: set S2GW_TEST_PYTHON or create {} with \
         `python3 -m venv .venv && .venv/bin/pip install -r adapters/modbus/tests/peers/requirements.txt`",
        venv.display()
    );
    venv
}

/// A free loopback port (the OS picks it; it is released for the peer to bind).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until something accepts on `port`, for at most 20 s.
pub async fn wait_listening(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peer on port {port} never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A write the pymodbus peer saw.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Seen {
    pub fc: u8,
    pub address: u16,
    pub values: Vec<i64>,
}

/// A pymodbus device simulator.
pub struct PyPeer {
    pub port: u16,
    _child: Child,
    writes: mpsc::UnboundedReceiver<Seen>,
}

impl PyPeer {
    pub async fn start(args: &[&str]) -> PyPeer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/modbus_peer.py");
        // Port 0: the peer binds a free port itself and says which.
        let mut child = Command::new(python())
            .arg(&script)
            .arg("0")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the pymodbus peer {script:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, writes) = mpsc::unbounded_channel();
        let (listening_tx, listening) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut listening_tx = Some(listening_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(port) = value["listening"].as_u64() {
                    if let Some(tx) = listening_tx.take() {
                        let _ = tx.send(port);
                    }
                } else if let Ok(write) = serde_json::from_value::<Seen>(value) {
                    let _ = tx.send(write);
                }
            }
        });
        // A peer that dies before listening closes its stdout, which ends the wait.
        let port = match tokio::time::timeout(Duration::from_secs(20), listening).await {
            Ok(Ok(port)) => u16::try_from(port).unwrap(),
            _ => panic!(
                "the pymodbus peer {args:?} never said where it listens (exit: {:?}): is \
                 pymodbus 3.16.1 in the venv (scripts/python-peers.sh)? See its stderr above",
                child.try_wait()
            ),
        };
        PyPeer {
            port,
            _child: child,
            writes,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Every write seen so far (the peer prints before it answers, and the gateway
    /// waits for the answer, so completed writes are all here).
    pub async fn writes(&mut self) -> Vec<Seen> {
        // Let the reader task forward lines already printed.
        tokio::task::yield_now().await;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Ok(Some(s)) = tokio::time::timeout_at(deadline, self.writes.recv()).await {
            out.push(s);
        }
        out
    }
}

/// A unit on a private bus to `addr`, with short timeouts.
pub fn unit(addr: &str, id: u8, timeout_ms: u64) -> Unit {
    Unit {
        bus: Arc::new(Bus::private(
            &Target::Tcp(addr.to_string()),
            fast_settings(),
        )),
        id,
        timeout: Duration::from_millis(timeout_ms),
    }
}

pub fn fast_settings() -> BusSettings {
    BusSettings {
        reconnect: (Duration::from_millis(20), Duration::from_millis(200)),
        unit_backoff: (Duration::from_millis(400), Duration::from_secs(2)),
        ..BusSettings::default()
    }
}

/// A profile's `[modbus]` table from config/profiles.
pub fn profile(name: &str) -> ModbusProfile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../config/profiles/{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let modbus = table["modbus"].as_table().unwrap().clone();
    let map: std::collections::BTreeMap<String, toml::Value> = modbus.into_iter().collect();
    s2gw_modbus::ModbusConfig::from_table(map).unwrap().profile
}

// ------------------------------------------------------------------------------------
// In-process tokio-modbus server with fault injection
// ------------------------------------------------------------------------------------

/// How a unit of the in-process server behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Answers from the store.
    Normal,
    /// Sleeps this long, then sends nothing (a dead unit behind a gateway).
    Silent(Duration),
    /// Answers every request with this exception.
    Exception(ExceptionCode),
}

/// The in-process server's state, shared with the test.
#[derive(Debug, Default)]
pub struct Store {
    pub words: HashMap<(Table, u16), u16>,
    pub behaviour: HashMap<u8, Behaviour>,
    /// Every request: (unit, function code, address).
    pub log: Vec<(u8, u8, u16)>,
}

#[derive(Clone)]
struct Svc(Arc<Mutex<Store>>);

type Answer = Result<Option<Response>, ExceptionCode>;

impl tokio_modbus::server::Service for Svc {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let store = self.0.clone();
        Box::pin(async move {
            let behaviour = {
                let mut s = store.lock().unwrap();
                let (fc, addr) = fc_addr(&req.request);
                s.log.push((req.slave, fc, addr));
                s.behaviour
                    .get(&req.slave)
                    .copied()
                    .unwrap_or(Behaviour::Normal)
            };
            match behaviour {
                Behaviour::Silent(d) => {
                    tokio::time::sleep(d).await;
                    Ok(None)
                }
                Behaviour::Exception(e) => Err(e),
                Behaviour::Normal => Ok(Some(answer(&mut store.lock().unwrap(), req.request)?)),
            }
        })
    }
}

fn fc_addr(r: &Request<'_>) -> (u8, u16) {
    match r {
        Request::ReadCoils(a, _) => (1, *a),
        Request::ReadDiscreteInputs(a, _) => (2, *a),
        Request::ReadHoldingRegisters(a, _) => (3, *a),
        Request::ReadInputRegisters(a, _) => (4, *a),
        Request::WriteSingleCoil(a, _) => (5, *a),
        Request::WriteSingleRegister(a, _) => (6, *a),
        Request::WriteMultipleCoils(a, _) => (15, *a),
        Request::WriteMultipleRegisters(a, _) => (16, *a),
        _ => (0, 0),
    }
}

fn get(s: &Store, t: Table, a: u16, n: u16) -> Result<Vec<u16>, ExceptionCode> {
    (a..a + n)
        .map(|i| {
            s.words
                .get(&(t, i))
                .copied()
                .ok_or(ExceptionCode::IllegalDataAddress)
        })
        .collect()
}

fn put(s: &mut Store, t: Table, a: u16, words: &[u16]) -> Result<(), ExceptionCode> {
    get(s, t, a, words.len() as u16)?;
    for (i, w) in words.iter().enumerate() {
        s.words.insert((t, a + i as u16), *w);
    }
    Ok(())
}

fn answer(s: &mut Store, req: Request<'static>) -> Result<Response, ExceptionCode> {
    let bits = |v: Vec<u16>| v.into_iter().map(|w| w != 0).collect();
    Ok(match req {
        Request::ReadHoldingRegisters(a, n) => {
            Response::ReadHoldingRegisters(get(s, Table::Holding, a, n)?)
        }
        Request::ReadInputRegisters(a, n) => {
            Response::ReadInputRegisters(get(s, Table::Input, a, n)?)
        }
        Request::ReadCoils(a, n) => Response::ReadCoils(bits(get(s, Table::Coil, a, n)?)),
        Request::ReadDiscreteInputs(a, n) => {
            Response::ReadDiscreteInputs(bits(get(s, Table::DiscreteInput, a, n)?))
        }
        Request::WriteSingleRegister(a, w) => {
            put(s, Table::Holding, a, &[w])?;
            Response::WriteSingleRegister(a, w)
        }
        Request::WriteMultipleRegisters(a, w) => {
            put(s, Table::Holding, a, &w)?;
            Response::WriteMultipleRegisters(a, w.len() as u16)
        }
        Request::WriteSingleCoil(a, c) => {
            put(s, Table::Coil, a, &[u16::from(c)])?;
            Response::WriteSingleCoil(a, c)
        }
        Request::WriteMultipleCoils(a, c) => {
            let w: Vec<u16> = c.iter().map(|b| u16::from(*b)).collect();
            put(s, Table::Coil, a, &w)?;
            Response::WriteMultipleCoils(a, c.len() as u16)
        }
        _ => return Err(ExceptionCode::IllegalFunction),
    })
}

/// An in-process tokio-modbus TCP server on a free loopback port.
pub struct FaultServer {
    pub addr: String,
    pub store: Arc<Mutex<Store>>,
}

impl FaultServer {
    pub async fn start() -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let store = Arc::new(Mutex::new(Store::default()));
        let svc = Svc(store.clone());
        tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = |stream, socket_addr| {
                let svc = svc.clone();
                async move { accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(svc.clone()))) }
            };
            let _ = server.serve(&on_connected, |_err| {}).await;
        });
        FaultServer { addr, store }
    }

    pub fn set(&self, table: Table, address: u16, words: &[u16]) {
        let mut s = self.store.lock().unwrap();
        for (i, w) in words.iter().enumerate() {
            s.words.insert((table, address + i as u16), *w);
        }
    }

    pub fn get(&self, table: Table, address: u16, n: u16) -> Vec<u16> {
        get(&self.store.lock().unwrap(), table, address, n).unwrap()
    }

    pub fn behave(&self, unit: u8, b: Behaviour) {
        self.store.lock().unwrap().behaviour.insert(unit, b);
    }

    pub fn log(&self) -> Vec<(u8, u8, u16)> {
        self.store.lock().unwrap().log.clone()
    }
}

/// A proxy that mistreats the first connection (`garbage` bytes as the answer, or a
/// close in the middle of the request), then forwards everything to `backend`.
pub async fn faulty_proxy(backend: String, garbage: Option<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            if std::mem::take(&mut first) {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 260];
                let _ = client.read(&mut buf).await;
                if let Some(g) = &garbage {
                    let _ = client.write_all(g).await;
                }
                continue; // dropping `client` closes it mid-request
            }
            let backend = backend.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}
