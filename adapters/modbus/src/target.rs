//! Where a bus is: a Modbus TCP endpoint, RTU framing over TCP, or a serial line.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_modbus::client::{Context, rtu, tcp};
use tokio_modbus::slave::Slave;

use crate::error::ModbusError;

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (the usual 8N1).
    #[default]
    None,
    /// Even parity (the Modbus RTU default, 8E1).
    Even,
    /// Odd parity.
    Odd,
}

/// A serial line's settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialLine {
    /// The device node, e.g. `/dev/ttyUSB0`.
    pub path: String,
    /// Bits per second.
    pub baud: u32,
    /// Parity.
    pub parity: Parity,
    /// Data bits, 7 or 8.
    pub data_bits: u8,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

/// One bus: every unit reached through it shares one connection and one request queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Modbus TCP (MBAP framing) to `host:port`.
    Tcp(String),
    /// RTU frames over a TCP socket (serial-to-Ethernet converters in transparent mode).
    RtuOverTcp(String),
    /// RTU on a local serial line (RS-485 adapter).
    Rtu(SerialLine),
}

impl Target {
    /// The key buses are shared by: one connection task per key.
    pub fn key(&self) -> String {
        self.to_string()
    }

    /// Opens the connection for `unit`, within `timeout`.
    pub(crate) async fn connect(
        &self,
        unit: u8,
        timeout: Duration,
    ) -> Result<Context, ModbusError> {
        let slave = Slave(unit);
        match self {
            Target::Tcp(addr) => Ok(tcp::attach_slave(self.tcp(addr, timeout).await?, slave)),
            Target::RtuOverTcp(addr) => {
                Ok(rtu::attach_slave(self.tcp(addr, timeout).await?, slave))
            }
            Target::Rtu(line) => Ok(rtu::attach_slave(self.serial(line)?, slave)),
        }
    }

    async fn tcp(&self, addr: &str, timeout: Duration) -> Result<TcpStream, ModbusError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(
                    self.connect_error(format!("no answer within {} ms", timeout.as_millis()))
                );
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ModbusError::Refused {
                    target: self.to_string(),
                });
            }
            Ok(Err(e)) => return Err(self.connect_error(e.to_string())),
            Ok(Ok(stream)) => stream,
        };
        // Requests are small and answered one at a time: Nagle would only add latency.
        stream
            .set_nodelay(true)
            .map_err(|e| self.connect_error(e.to_string()))?;
        Ok(stream)
    }

    fn serial(&self, line: &SerialLine) -> Result<tokio_serial::SerialStream, ModbusError> {
        use tokio_serial::{DataBits, SerialPortBuilderExt, StopBits};
        let parity = match line.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let data_bits = if line.data_bits == 7 {
            DataBits::Seven
        } else {
            DataBits::Eight
        };
        let stop_bits = if line.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        };
        tokio_serial::new(&line.path, line.baud)
            .parity(parity)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .open_native_async()
            .map_err(|e| self.connect_error(e.to_string()))
    }

    fn connect_error(&self, reason: String) -> ModbusError {
        ModbusError::Connect {
            target: self.to_string(),
            reason,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(addr) => write!(f, "tcp://{addr}"),
            Target::RtuOverTcp(addr) => write!(f, "rtu+tcp://{addr}"),
            Target::Rtu(line) => write!(f, "rtu://{}", line.path),
        }
    }
}
