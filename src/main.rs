//! `s2gw`: the command line of the S2 gateway daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use s2gw::commands::{RawReadRequest, SerialArgs};
use s2gw_modbus::{Table, Target, ValueType, WordOrder};

/// Makes Modbus, MQTT, BLE and simulated devices appear to a Customer Energy Manager as
/// native S2 Resource Managers (S2-ws-json).
#[derive(Debug, Parser)]
#[command(name = "s2gw", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `-c FILE`, the same for every command that reads the configuration.
#[derive(Debug, Args)]
struct ConfigFile {
    /// The configuration file.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        default_value = "/etc/s2gw/s2gw.toml"
    )]
    path: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway daemon (under systemd: Type=notify, with watchdog).
    Run {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Validate a configuration and its profiles without touching any device; lists
    /// every error with file, key and reason, and exits 1 if there is one.
    Check {
        /// The configuration file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run one of each simulated device against a built-in demo CEM, with a live view.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<u64>,
        /// Print plain log-style lines instead of redrawing the screen.
        #[arg(long)]
        plain: bool,
    },
    /// Run the demo CEM on its own, for trying a real gateway config against it.
    Cem {
        /// Where to listen for resource managers (any path is accepted).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8765")]
        listen: SocketAddr,
        /// How often each resource is instructed, in milliseconds, once its last
        /// instruction has a final status (the scale bench's long run uses a short one to
        /// live through a day of instructions in minutes).
        #[arg(long, value_name = "MS", default_value_t = 8000,
              value_parser = clap::value_parser!(u64).range(10..), conflicts_with = "mqtt")]
        instruct_every_ms: u64,
        /// Instead of listening: be a cloud CEM worker on this MQTT broker (HOST:PORT),
        /// sharing the resources of every gateway under `--bases` with the other workers
        /// of `--group` (docs/s2-over-mqtt.md, "CEM workers").
        #[arg(long, value_name = "HOST:PORT")]
        mqtt: Option<String>,
        /// The MQTT v5 shared subscription group of the workers.
        #[arg(long, default_value = "s2gw-cems", requires = "mqtt")]
        group: String,
        /// A topic filter matching the gateways' base topics.
        #[arg(long, default_value = "+", requires = "mqtt")]
        bases: String,
        /// The worker's name (a random suffix makes each run's instance unique).
        #[arg(long, default_value = "cem", requires = "mqtt")]
        name: String,
        /// The broker user; the password comes from S2GW_CEM_MQTT_PASSWORD.
        #[arg(long, requires = "mqtt")]
        mqtt_user: Option<String>,
    },
    /// Pair a device (or every device on an `s2connect` CEM link) with a CEM that runs
    /// the S2 Connect pairing server, using the pairing code the CEM's UI shows. Works
    /// while the daemon runs: it reads pairings from `gateway.state_dir` before every
    /// session.
    Pair {
        #[command(flatten)]
        config: ConfigFile,
        /// The device (or native RM) id to pair.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        device: Option<String>,
        /// Pair every device on an s2connect CEM link.
        #[arg(long)]
        all: bool,
        /// The CEM's pairing URL, e.g. https://cem.local:8443/v1/.
        #[arg(long, value_name = "URL")]
        cem: String,
        /// The pairing code the CEM shows ([alias-]token).
        #[arg(long, value_name = "CODE")]
        code: String,
        /// The CEM is on the internet (its certificate is checked against the public
        /// roots) rather than in the LAN (self-signed, pinned during pairing).
        #[arg(long)]
        wan: bool,
    },
    /// Show a pairing code for a device, for a CEM that pairs with the gateway's S2
    /// Connect pairing server (`[s2connect]`). The code is a secret while it is valid
    /// (`code_valid_s`, 5 minutes by default) and works once; the running daemon reads it
    /// from `gateway.state_dir` on every pairing request.
    PairingCode {
        #[command(flatten)]
        config: ConfigFile,
        /// The device (or native RM) id, on an s2connect CEM link.
        device: String,
    },
    /// List the S2 Connect pairings of every device on an s2connect link (no secrets).
    Pairings {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Unpair a device from its CEM (or one CEM, by node id), on both sides.
    Unpair {
        #[command(flatten)]
        config: ConfigFile,
        /// The device (or native RM) id.
        device: String,
        /// Only the pairing with this CEM node id.
        #[arg(long, value_name = "ID")]
        cem: Option<String>,
    },
    /// List the S2 Connect endpoints DNS-SD finds on the LAN (CEMs by default) with the
    /// nodes each hosts, and the pairing URL to give `s2gw pair --cem`. The configuration
    /// is read when it exists, for `[s2connect] advertise_on`. Exits 1 when none answered.
    Discover {
        #[command(flatten)]
        config: ConfigFile,
        /// List RM endpoints (`_rm`, e.g. this gateway's own advertisement) instead of CEMs.
        #[arg(long)]
        rm: bool,
        /// Browse only on this network interface (repeatable).
        #[arg(long, value_name = "IF")]
        interface: Vec<String>,
        /// Seconds to listen.
        #[arg(long, value_name = "S", default_value_t = 3)]
        wait: u64,
        /// Only the endpoint of this instance name (a gateway's is its `gateway.name`);
        /// stop listening as soon as it answers.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Installer tools for Modbus devices: detect devices, find SunSpec models, read raw
    /// registers.
    /// Errors (refused connection, timeout, Modbus exception) exit 1.
    #[command(subcommand)]
    Modbus(ModbusTool),
    /// Write the man page (s2gw.1) and shell completions (bash, zsh, fish) into DIR, for
    /// packaging (scripts/build-deb.sh).
    #[command(hide = true)]
    GenerateDocs {
        /// Where to write them.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ModbusTool {
    /// Probe for SunSpec (the `SunS` marker at 40000, 0 and 50000), walk the model
    /// chain and print every model with its key live values.
    Scan {
        #[command(flatten)]
        bus: BusArgs,
        /// Unit (slave) id (default 1).
        #[arg(long, value_name = "N")]
        unit: Option<u8>,
        /// Per-request timeout in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Find devices: probe hosts and ports (one request at a time per host) for SunSpec
    /// and the built-in profiles' signatures, and print a `[[device]]` for each device
    /// found, then what could not be identified. Exit 1 when nothing was identified.
    Detect {
        /// Host, or last-octet range such as 192.168.1.10-20; repeat or separate by commas.
        #[arg(
            long = "host",
            value_name = "HOST",
            required = true,
            value_delimiter = ','
        )]
        hosts: Vec<String>,
        /// TCP ports to try on every host.
        #[arg(long = "port", value_name = "PORT", value_delimiter = ',', default_values_t = [502, 1502])]
        ports: Vec<u16>,
        /// Unit ids to try where a profile sets none.
        #[arg(long = "unit", value_name = "N", value_delimiter = ',', default_values_t = [1])]
        units: Vec<u8>,
        /// Timeout of the connection and of each request, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        timeout_ms: u64,
        /// The `cem` link the printed devices name.
        #[arg(long, value_name = "NAME", default_value = "home")]
        cem: String,
    },
    /// Read raw registers (or bits) and decode them as a type.
    Read {
        #[command(flatten)]
        bus: BusArgs,
        /// Unit (slave) id.
        #[arg(long, value_name = "N", default_value_t = 1)]
        unit: u8,
        /// The table to read.
        #[arg(long, value_enum, default_value = "holding")]
        table: TableArg,
        /// The first address, 0-based (protocol address: register 40001 is 0).
        #[arg(long, value_name = "A")]
        address: u16,
        /// How many registers; 0 reads exactly the width of --type (strings need it).
        #[arg(long, value_name = "C", default_value_t = 0)]
        count: u16,
        /// How to decode: bool u16 i16 u32 i32 u64 i64 f32 f64 string bitmask16
        /// bitmask32 acc32 acc64.
        #[arg(long = "type", value_name = "TYPE", default_value = "u16", value_parser = parse_type)]
        value_type: ValueType,
        /// Which register of a multi-register value comes first.
        #[arg(long, value_enum, default_value = "big")]
        word_order: WordOrderArg,
    },
}

/// Where the bus is: exactly one of --tcp, --rtu-over-tcp and --rtu.
#[derive(Debug, Args)]
struct BusArgs {
    /// Modbus TCP endpoint.
    #[arg(long, value_name = "HOST:PORT", required_unless_present_any = ["rtu", "rtu_over_tcp"], conflicts_with_all = ["rtu", "rtu_over_tcp"])]
    tcp: Option<String>,
    /// RTU framing over a TCP socket (a serial-to-Ethernet converter).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "rtu")]
    rtu_over_tcp: Option<String>,
    /// RTU on a serial device, e.g. /dev/ttyUSB0.
    #[arg(long, value_name = "DEVICE")]
    rtu: Option<String>,
    /// Serial: bits per second.
    #[arg(long, value_name = "N", default_value_t = 9600, requires = "rtu")]
    baud: u32,
    /// Serial: parity.
    #[arg(long, value_enum, default_value = "none", requires = "rtu")]
    parity: ParityArg,
}

impl BusArgs {
    fn target(self) -> Target {
        let serial = SerialArgs {
            baud: self.baud,
            parity: match self.parity {
                ParityArg::None => s2gw_modbus::target::Parity::None,
                ParityArg::Even => s2gw_modbus::target::Parity::Even,
                ParityArg::Odd => s2gw_modbus::target::Parity::Odd,
            },
        };
        s2gw::commands::modbus_target(self.tcp, self.rtu_over_tcp, self.rtu, serial)
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ParityArg {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TableArg {
    Holding,
    Input,
    Coil,
    #[value(alias = "discrete_input")]
    DiscreteInput,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WordOrderArg {
    /// Most significant register first (the Modbus and SunSpec norm).
    #[value(alias = "high_first", alias = "high-first")]
    Big,
    /// Least significant register first ("word swapped").
    #[value(alias = "low_first", alias = "low-first")]
    Little,
}

fn parse_type(text: &str) -> Result<ValueType, String> {
    ValueType::parse(text).ok_or_else(|| {
        format!(
            "unknown type `{text}` (bool u16 i16 u32 i32 u64 i64 f32 f64 string bitmask16 \
             bitmask32 acc32 acc64)"
        )
    })
}

async fn modbus(tool: ModbusTool) -> anyhow::Result<ExitCode> {
    match tool {
        ModbusTool::Scan {
            bus,
            unit,
            timeout_ms,
        } => {
            s2gw::commands::modbus_scan(bus.target(), unit, Duration::from_millis(timeout_ms)).await
        }
        ModbusTool::Detect {
            hosts,
            ports,
            units,
            timeout_ms,
            cem,
        } => {
            s2gw::commands::modbus_detect(s2gw::commands::DetectRequest {
                hosts,
                ports,
                units,
                timeout: Duration::from_millis(timeout_ms.max(1)),
                cem,
            })
            .await
        }
        ModbusTool::Read {
            bus,
            unit,
            table,
            address,
            count,
            value_type,
            word_order,
        } => {
            let request = RawReadRequest {
                unit,
                table: match table {
                    TableArg::Holding => Table::Holding,
                    TableArg::Input => Table::Input,
                    TableArg::Coil => Table::Coil,
                    TableArg::DiscreteInput => Table::DiscreteInput,
                },
                address,
                count,
                value_type,
                word_order: match word_order {
                    WordOrderArg::Big => WordOrder::HighFirst,
                    WordOrderArg::Little => WordOrder::LowFirst,
                },
            };
            s2gw::commands::modbus_read(bus.target(), request).await
        }
    }
}

/// The man page and completions, from the CLI definition itself.
fn generate_docs(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context as _;
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let command = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    std::fs::write(dir.join("s2gw.1"), page)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut command.clone(), "s2gw", dir)
            .with_context(|| format!("cannot write the {shell} completions"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("s2gw: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => s2gw::commands::run(&config.path).await,
            Command::Check { config } => s2gw::commands::check(&config),
            Command::Demo { duration, plain } => {
                s2gw::commands::demo(duration.map(Duration::from_secs), plain).await
            }
            Command::Cem {
                listen,
                mqtt: None,
                instruct_every_ms,
                ..
            } => {
                let config = s2gw::cem::DemoCemConfig {
                    instruct_every: Duration::from_millis(instruct_every_ms),
                    ..s2gw::cem::DemoCemConfig::default()
                };
                s2gw::commands::cem(listen, config).await
            }
            Command::Cem {
                mqtt: Some(broker),
                group,
                bases,
                name,
                mqtt_user,
                ..
            } => {
                let worker = s2gw::commands::CemWorker {
                    broker,
                    group,
                    bases,
                    name,
                    user: mqtt_user,
                };
                s2gw::commands::cem_worker(worker).await
            }
            Command::Pair {
                config,
                device,
                all: _,
                cem,
                code,
                wan,
            } => {
                let request = s2gw::commands::PairRequest {
                    device,
                    cem_url: cem,
                    code,
                    wan,
                };
                s2gw::commands::pair(&config.path, &request).await
            }
            Command::PairingCode { config, device } => {
                s2gw::commands::pairing_code(&config.path, &device)
            }
            Command::Pairings { config } => s2gw::commands::pairings(&config.path),
            Command::Unpair {
                config,
                device,
                cem,
            } => s2gw::commands::unpair(&config.path, &device, cem.as_deref()).await,
            Command::Discover {
                config,
                rm,
                interface,
                wait,
                name,
            } => {
                let request = s2gw::commands::DiscoverRequest {
                    role: if rm {
                        s2gw_core::s2::connect::Role::Rm
                    } else {
                        s2gw_core::s2::connect::Role::Cem
                    },
                    interfaces: interface,
                    window: Duration::from_secs(wait),
                    only: name,
                };
                s2gw::commands::discover(&config.path, &request).await
            }
            Command::Modbus(tool) => modbus(tool).await,
            Command::GenerateDocs { dir } => generate_docs(&dir),
        }
    });
    // Give blocking tasks (the traffic-log writer) a moment, never forever.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("s2gw: {error:#}");
            ExitCode::FAILURE
        }
    }
}
