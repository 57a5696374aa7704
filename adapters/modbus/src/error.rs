//! Errors of the Modbus adapter, worded for an installer reading a terminal.

use std::time::Duration;

use s2gw_core::DeviceError;

/// Why a Modbus request, a scan or a device call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModbusError {
    /// Nothing listens at the address (TCP RST): wrong host or port, or the device's Modbus
    /// TCP server is switched off.
    #[error(
        "connection to {target} refused: is Modbus TCP enabled on the device, and is the port right?"
    )]
    Refused {
        /// The endpoint, as configured.
        target: String,
    },
    /// The endpoint could not be opened for another reason (no route, no such serial port).
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// The endpoint.
        target: String,
        /// What the operating system said.
        reason: String,
    },
    /// The unit did not answer in time.
    #[error("unit {unit} at {target} did not answer within {} ms (wrong unit id, or the device is busy or off)", after.as_millis())]
    Timeout {
        /// The endpoint.
        target: String,
        /// The unit (slave) id.
        unit: u8,
        /// The timeout that ran out.
        after: Duration,
    },
    /// The unit answered with a Modbus exception.
    #[error("unit {unit} answered {request} with exception {code:02} ({})", exception_name(*code))]
    Exception {
        /// The unit (slave) id.
        unit: u8,
        /// What was asked, e.g. `read holding 40000+2`.
        request: String,
        /// The exception code (1 illegal function, 2 illegal data address, ...).
        code: u8,
    },
    /// The connection broke or the peer sent something that is not a valid answer.
    #[error("connection to {target} failed: {reason}")]
    Link {
        /// The endpoint.
        target: String,
        /// What happened.
        reason: String,
    },
    /// The unit recently failed and is skipped until its back-off ends, so that it does not
    /// hold up the other units on its bus.
    #[error("unit {unit} at {target} is skipped for {} ms after failing", retry_in.as_millis())]
    BackedOff {
        /// The endpoint.
        target: String,
        /// The unit (slave) id.
        unit: u8,
        /// How long until it is tried again.
        retry_in: Duration,
    },
    /// No SunSpec marker at any of the probed base addresses.
    #[error("no SunSpec marker `SunS` at {target} unit {unit} (tried base addresses {tried:?})")]
    NotSunSpec {
        /// The endpoint.
        target: String,
        /// The unit (slave) id.
        unit: u8,
        /// The base addresses probed.
        tried: Vec<u16>,
    },
    /// A value read back after a write is not what was written (fail-safe rule 4).
    #[error("write to {register} not confirmed: wrote {wrote:?}, read back {read:?}")]
    NotConfirmed {
        /// The register's name or address.
        register: String,
        /// The raw words written.
        wrote: Vec<u16>,
        /// The raw words read back.
        read: Vec<u16>,
    },
    /// A request that cannot be made (too many registers, a value that does not fit).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The device answered, but with something the profile cannot make sense of.
    #[error("unexpected data: {0}")]
    Data(String),
}

/// The Modbus name of an exception code.
pub fn exception_name(code: u8) -> &'static str {
    match code {
        0x01 => "illegal function",
        0x02 => "illegal data address",
        0x03 => "illegal data value",
        0x04 => "server device failure",
        0x05 => "acknowledge",
        0x06 => "server device busy",
        0x08 => "memory parity error",
        0x0A => "gateway path unavailable",
        0x0B => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

impl ModbusError {
    /// Whether the device could not be reached at all (as opposed to answering "no").
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ModbusError::Refused { .. }
                | ModbusError::Connect { .. }
                | ModbusError::Timeout { .. }
                | ModbusError::Link { .. }
                | ModbusError::BackedOff { .. }
        ) || matches!(
            self,
            ModbusError::Exception {
                code: 0x0A | 0x0B,
                ..
            }
        )
    }
}

impl From<ModbusError> for DeviceError {
    fn from(error: ModbusError) -> Self {
        let text = error.to_string();
        if error.is_unreachable() {
            return DeviceError::Unreachable(text);
        }
        match error {
            ModbusError::NotConfirmed { .. } => DeviceError::NotConfirmed(text),
            _ => DeviceError::Refused(text),
        }
    }
}
