//! `cargo run -p s2gw-modbus --example scan -- HOST:PORT [UNIT]`: a SunSpec scan, the
//! library side of `s2gw modbus scan`.

use std::time::Duration;

use s2gw_modbus::{Target, scan};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:502".to_string());
    let unit = args.next().and_then(|u| u.parse().ok());
    match scan(Target::Tcp(addr), unit, Duration::from_secs(2)).await {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("scan failed: {e}");
            std::process::exit(1);
        }
    }
}
