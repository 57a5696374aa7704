//! `s2gw modbus scan|read`: the Modbus tools.

use std::process::ExitCode;
use std::time::Duration;

/// Serial line settings of the Modbus tools.
#[derive(Debug, Clone, Copy)]
pub struct SerialArgs {
    /// Bits per second.
    pub baud: u32,
    /// Parity.
    pub parity: s2gw_modbus::target::Parity,
}

/// The bus the Modbus tools talk to: `tcp`, else `rtu_over_tcp`, else the serial `rtu`
/// device (the command line makes sure exactly one is given).
pub fn modbus_target(
    tcp: Option<String>,
    rtu_over_tcp: Option<String>,
    rtu: Option<String>,
    serial: SerialArgs,
) -> s2gw_modbus::Target {
    use s2gw_modbus::Target;
    match (tcp, rtu_over_tcp, rtu) {
        (Some(addr), _, _) => Target::Tcp(addr),
        (None, Some(addr), _) => Target::RtuOverTcp(addr),
        (None, None, path) => Target::Rtu(s2gw_modbus::target::SerialLine {
            path: path.unwrap_or_default(),
            baud: serial.baud,
            parity: serial.parity,
            data_bits: 8,
            stop_bits: 1,
        }),
    }
}

/// `s2gw modbus scan`: the SunSpec models at `target`, printed; an error (refused,
/// timeout, exception, no SunSpec) is returned for `main` to print, exit code 1.
pub async fn modbus_scan(
    target: s2gw_modbus::Target,
    unit: Option<u8>,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let shown = target.to_string();
    let report = s2gw_modbus::scan(target, unit, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("modbus scan of {shown}: {e}"))?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// What `s2gw modbus read` reads.
#[derive(Debug, Clone, Copy)]
pub struct RawReadRequest {
    /// Unit (slave) id.
    pub unit: u8,
    /// The table.
    pub table: s2gw_modbus::Table,
    /// The first address, 0-based.
    pub address: u16,
    /// Registers to read (0: the type's width).
    pub count: u16,
    /// How to decode them.
    pub value_type: s2gw_modbus::ValueType,
    /// Word order of multi-register values.
    pub word_order: s2gw_modbus::WordOrder,
}

/// `s2gw modbus read`: raw registers and their decoded value, printed.
pub async fn modbus_read(
    target: s2gw_modbus::Target,
    r: RawReadRequest,
) -> anyhow::Result<ExitCode> {
    let shown = target.to_string();
    let read = s2gw_modbus::read_raw(
        target,
        r.unit,
        r.table,
        r.address,
        r.count,
        r.value_type,
        r.word_order,
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "modbus read of {} {}+{} at {shown} unit {}: {e}",
            r.table.as_str(),
            r.address,
            r.count,
            r.unit
        )
    })?;
    println!("{read}");
    Ok(ExitCode::SUCCESS)
}
