//! The pymodbus device simulator (adapters/modbus/tests/peers/modbus_peer.py) as a child
//! process that can be killed and started again on the same port, as a device that
//! reboots: its JSON lines (writes, `reverted`) as a queue.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::{GUARD, Queue, python, workspace};

/// The model 123 ID register of `sunspec --base 40000 --models 1,103,123`.
pub const M123: u16 = 40000 + 2 + (2 + 66) + (2 + 50);
/// WMaxLimPct.
pub const M123_PCT: u16 = M123 + 5;
/// WMaxLimPct_RvrtTms.
pub const M123_RVRT: u16 = M123 + 7;
/// WMaxLim_Ena.
pub const M123_ENA: u16 = M123 + 9;

/// One running simulator.
pub struct ModbusPeer {
    /// The port it listens on (kept over restarts).
    pub port: u16,
    args: Vec<String>,
    /// Every JSON line it printed since it last started.
    pub lines: Queue<Value>,
    child: Option<Child>,
}

impl ModbusPeer {
    /// Start `modbus_peer.py 0 ARGS…` and wait until it says where it listens.
    pub async fn start(args: &[&str]) -> ModbusPeer {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (port, lines, child) = spawn(0, &args).await;
        ModbusPeer {
            port,
            args,
            lines,
            child: Some(child),
        }
    }

    /// `host:port` for `[device.modbus] tcp`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the device is gone (its registers with it).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Start it again on the same port, with its power-on registers.
    pub async fn restart(&mut self) {
        self.kill().await;
        let (_, lines, child) = spawn(self.port, &self.args).await;
        self.lines = lines;
        self.child = Some(child);
    }

    /// The first line (kept or new) that satisfies `pred`.
    pub async fn wait_line(
        &mut self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        self.lines.wait_for(what, pred, timeout).await
    }

    /// The next write of `values` to `address`.
    pub async fn wait_write(&mut self, address: u16, values: &[u16], timeout: Duration) {
        let want: Vec<Value> = values.iter().map(|v| Value::from(*v)).collect();
        self.wait_line(
            &format!("the write {values:?} to {address}"),
            |v| v["address"] == address && v["values"] == Value::Array(want.clone()),
            timeout,
        )
        .await;
    }

    /// Read `count` holding registers at `address` straight from the simulator.
    pub async fn holding(&self, address: u16, count: u16) -> Vec<u16> {
        s2gw_modbus::read_raw(
            s2gw_modbus::Target::Tcp(self.addr()),
            1,
            s2gw_modbus::Table::Holding,
            address,
            count,
            s2gw_modbus::ValueType::U16,
            s2gw_modbus::WordOrder::HighFirst,
        )
        .await
        .unwrap_or_else(|e| panic!("reading back {address}+{count}: {e}"))
        .words
    }
}

async fn spawn(port: u16, args: &[String]) -> (u16, Queue<Value>, Child) {
    let script = workspace().join("adapters/modbus/tests/peers/modbus_peer.py");
    let mut child = Command::new(python())
        .arg(&script)
        .arg(port.to_string())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the pymodbus peer {script:?}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (listening_tx, listening) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut listening_tx = Some(listening_tx);
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let value: Value = serde_json::from_str(&line).unwrap_or_default();
            match value["listening"].as_u64() {
                Some(port) => {
                    if let Some(tx) = listening_tx.take() {
                        let _ = tx.send(port);
                    }
                }
                None => {
                    let _ = tx.send(value);
                }
            }
        }
    });
    // A peer that dies before listening closes its stdout, which ends the wait.
    let port = match tokio::time::timeout(GUARD, listening).await {
        Ok(Ok(port)) => u16::try_from(port).unwrap(),
        _ => panic!(
            "the pymodbus peer {args:?} never said where it listens (exit: {:?}); see its \
             stderr above",
            child.try_wait()
        ),
    };
    (port, Queue::new(rx), child)
}
