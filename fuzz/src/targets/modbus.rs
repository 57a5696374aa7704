//! Modbus responses: every shipped Modbus profile's device, on its own bus, reads and
//! commands a hostile Modbus TCP server that answers from a random register image (with a
//! SunSpec model chain where the profile discovers one) and, request by request, with
//! what the input's script says: good answers, exceptions, short and long frames, wrong
//! transaction ids, units and function codes, garbage, stalls and closed connections.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use rand::Rng;
use rand::rngs::StdRng;
use s2gw::config::Connection;
use s2gw_core::{Command, Device, Readings};
use s2gw_modbus::{Bus, BusSettings, ModbusConfig, Target as ModbusTarget};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use crate::mutate::unstructured_bytes;
use crate::runner::Target;

/// How the server answers one request.
#[derive(Debug, Clone, Arbitrary)]
pub enum Reply {
    /// The right answer from the image.
    Good,
    /// A Modbus exception with this code.
    Exception(u8),
    /// The first bytes of the right answer, then silence.
    Short(u8),
    /// The right answer with bytes after it.
    Long(Vec<u8>),
    /// The right answer under another transaction id.
    WrongTransaction,
    /// The right answer from another unit.
    WrongUnit,
    /// The right answer under another function code.
    WrongFunction,
    /// A byte count that does not match the registers.
    WrongByteCount,
    /// An MBAP length field that lies.
    WrongLength(u16),
    /// Arbitrary bytes.
    Garbage(Vec<u8>),
    /// No answer at all (the device's timeout must fire).
    Stall,
    /// The connection closed.
    Close,
}

/// What the gateway does to the device, in order.
#[derive(Debug, Clone, Arbitrary)]
pub enum Call {
    /// A poll.
    Read,
    /// The fail-safe.
    Release,
    /// A power limit.
    Limit(i16),
    /// A setpoint.
    SetPower(i16),
    /// A charging current.
    SetCurrent(u8, bool),
    /// A mode by index into the names the device offers.
    SetMode(u8),
}

/// One input.
#[derive(Debug)]
pub struct ModbusInput {
    /// Which profile's device.
    pub profile: usize,
    /// The seed of the register image.
    pub image_seed: u64,
    /// Answers, request by request; `Good` after the script ends.
    pub script: Vec<Reply>,
    /// The gateway's calls.
    pub calls: Vec<Call>,
}

/// A device per built-in Modbus profile, through the config loader.
pub struct Modbus {
    profiles: Vec<(String, ModbusConfig)>,
    runtime: Runtime,
}

/// The device's own timeout per request: short, so stalls cost little (a late good answer only
/// becomes a device error, which is an answer too).
const DEVICE_TIMEOUT: Duration = Duration::from_millis(5);

/// A call that takes longer than this did not honour the device timeout.
const CALL_BOUND: Duration = Duration::from_secs(3);

impl Modbus {
    /// The target, with each built-in Modbus profile loaded as a daemon would load it.
    pub fn new() -> anyhow::Result<Self> {
        let mut text = String::from("[cem.home]\nurl = \"ws://127.0.0.1:9/s2\"\n");
        let modbus = s2gw::config::BUILTIN_PROFILES
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| name.starts_with("modbus-"));
        for (i, profile) in modbus.enumerate() {
            text += &format!(
                "[[device]]\nid = \"d{i}\"\nprofile = \"{profile}\"\ncem = \"home\"\n\
                 [device.modbus]\ntcp = \"127.0.0.1:9\"\n"
            );
        }
        let config = s2gw::config::load_str(&text, std::path::Path::new("fuzz.toml"))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let profiles = config
            .devices
            .into_iter()
            .filter_map(|d| match d.connection {
                Connection::Modbus(m) => Some((d.profile.name.clone(), *m)),
                _ => None,
            })
            .collect();
        Ok(Self {
            profiles,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }
}

impl Target for Modbus {
    type Input = ModbusInput;

    fn generate(&mut self, rng: &mut StdRng) -> ModbusInput {
        let bytes = unstructured_bytes(rng, 512);
        let mut u = Unstructured::new(&bytes);
        let script_len = u.int_in_range(0..=12u8).unwrap_or(0);
        let calls_len = u.int_in_range(1..=6u8).unwrap_or(1);
        ModbusInput {
            profile: rng.random_range(0..self.profiles.len().max(1)),
            image_seed: rng.random(),
            script: (0..script_len)
                .filter_map(|_| Reply::arbitrary(&mut u).ok())
                .collect(),
            calls: (0..calls_len)
                .filter_map(|_| Call::arbitrary(&mut u).ok())
                .collect(),
        }
    }

    fn execute(&mut self, input: &ModbusInput) -> Result<(), String> {
        let Some((name, config)) = self.profiles.get(input.profile) else {
            return Err("no Modbus profile loaded".into());
        };
        let sunspec = config.profile.sunspec.is_some();
        self.runtime.block_on(run(name, config, sunspec, input))
    }
}

async fn run(
    name: &str,
    config: &ModbusConfig,
    sunspec: bool,
    input: &ModbusInput,
) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let image = Arc::new(register_image(input.image_seed, sunspec));
    let script = Arc::new(Mutex::new(
        input.script.iter().cloned().collect::<VecDeque<_>>(),
    ));
    let server = tokio::spawn(serve(listener, image, script));
    let target = ModbusTarget::Tcp(addr.to_string());
    let settings = BusSettings {
        reconnect: (Duration::from_millis(1), Duration::from_millis(10)),
        unit_backoff: (Duration::from_millis(1), Duration::from_millis(10)),
        ..BusSettings::default()
    };
    let unit = s2gw_modbus::point::Unit {
        bus: Arc::new(Bus::private(&target, settings)),
        id: config.connection.unit(),
        timeout: DEVICE_TIMEOUT,
    };
    let mut device = s2gw_modbus::build_on(name, unit, &config.profile);
    let outcome = drive(device.as_mut(), &input.calls).await;
    server.abort();
    outcome
}

async fn drive(device: &mut dyn Device, calls: &[Call]) -> Result<(), String> {
    let modes = mode_names(device);
    for (i, call) in calls.iter().enumerate() {
        let done = match call {
            Call::Read => tokio::time::timeout(CALL_BOUND, device.read())
                .await
                .map(|r| r.map(|readings| check_readings(&readings))),
            other => {
                let command = command(other, &modes);
                tokio::time::timeout(CALL_BOUND, device.apply(&command))
                    .await
                    .map(|r| r.map(|()| Ok(())))
            }
        };
        match done {
            Err(_) => {
                return Err(format!(
                    "call {i} ({call:?}) did not return within {CALL_BOUND:?}"
                ));
            }
            // A device error is an answer: the engine isolates the device and retries.
            Ok(Err(_)) => {}
            Ok(Ok(checked)) => checked.map_err(|e| format!("call {i}: {e}"))?,
        }
    }
    Ok(())
}

/// What the engine would put into S2 must be a finite number.
fn check_readings(readings: &Readings) -> Result<(), String> {
    let finite = |v: f64| v.is_finite();
    let phases_ok = readings
        .phase_power_w
        .is_none_or(|p| p.iter().all(|w| finite(*w)));
    if !finite(readings.power_w)
        || !phases_ok
        || readings.energy_wh.is_some_and(|e| !finite(e))
        || readings
            .soc
            .is_some_and(|s| !finite(s) || !(0.0..=100.0).contains(&s))
    {
        return Err(format!("a reading that S2 cannot carry: {readings:?}"));
    }
    Ok(())
}

fn mode_names(device: &dyn Device) -> Vec<String> {
    device
        .info()
        .control
        .iter()
        .flat_map(|c| match c {
            s2gw_core::device::ControlCapability::OperationModes { modes, .. } => {
                modes.iter().map(|m| m.name.clone()).collect::<Vec<_>>()
            }
            _ => Vec::new(),
        })
        .collect()
}

fn command(call: &Call, modes: &[String]) -> Command {
    match call {
        Call::Read | Call::Release => Command::Release,
        Call::Limit(w) => Command::LimitPower {
            min_w: Some(f64::from(*w) * 4.0),
            max_w: None,
        },
        Call::SetPower(w) => Command::SetPower {
            watts: f64::from(*w) * 4.0,
        },
        Call::SetCurrent(a, three) => Command::SetCurrent {
            amps: f64::from(*a % 40),
            phases: if *three { 3 } else { 1 },
        },
        Call::SetMode(i) => Command::SetMode {
            mode: modes
                .get(usize::from(*i) % modes.len().max(1))
                .cloned()
                .unwrap_or_else(|| "no such mode".into()),
        },
    }
}

/// Random words everywhere; for SunSpec, a model chain at 40000 whose points are random.
fn register_image(seed: u64, sunspec: bool) -> Vec<u16> {
    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut image = vec![0u16; 65536];
    rng.fill(image.as_mut_slice());
    if sunspec {
        let mut at = 40000usize;
        image[at] = 0x5375;
        image[at + 1] = 0x6e53;
        at += 2;
        for (id, len) in [
            (1u16, 66u16),
            (103, 50),
            (120, 26),
            (121, 30),
            (123, 24),
            (124, 24),
        ] {
            image[at] = id;
            image[at + 1] = len;
            at += 2 + usize::from(len);
        }
        image[at] = 0xFFFF;
        image[at + 1] = 0;
    }
    image
}

async fn serve(listener: TcpListener, image: Arc<Vec<u16>>, script: Arc<Mutex<VecDeque<Reply>>>) {
    while let Ok((socket, _)) = listener.accept().await {
        tokio::spawn(answer(socket, image.clone(), script.clone()));
    }
}

async fn answer(mut socket: TcpStream, image: Arc<Vec<u16>>, script: Arc<Mutex<VecDeque<Reply>>>) {
    let mut header = [0u8; 7];
    while socket.read_exact(&mut header).await.is_ok() {
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let mut pdu = vec![0u8; len.saturating_sub(1)];
        if socket.read_exact(&mut pdu).await.is_err() {
            return;
        }
        let reply = script
            .lock()
            .map(|mut s| s.pop_front().unwrap_or(Reply::Good))
            .unwrap_or(Reply::Close);
        let good = good_answer(&pdu, &image);
        let frame = match &reply {
            Reply::Stall => continue,
            Reply::Close => return,
            Reply::Good => mbap(&header, header[6], &good),
            Reply::Exception(code) => mbap(
                &header,
                header[6],
                &[pdu.first().copied().unwrap_or(0) | 0x80, *code],
            ),
            Reply::Short(n) => {
                let mut f = mbap(&header, header[6], &good);
                f.truncate(usize::from(*n) % f.len().max(1));
                f
            }
            Reply::Long(extra) => {
                let mut f = mbap(&header, header[6], &good);
                f.extend_from_slice(extra);
                f
            }
            Reply::WrongTransaction => {
                let mut h = header;
                h[0] ^= 0x5a;
                mbap(&h, header[6], &good)
            }
            Reply::WrongUnit => mbap(&header, header[6].wrapping_add(1), &good),
            Reply::WrongFunction => {
                let mut g = good.clone();
                if let Some(fc) = g.first_mut() {
                    *fc = fc.wrapping_add(1);
                }
                mbap(&header, header[6], &g)
            }
            Reply::WrongByteCount => {
                let mut g = good.clone();
                if let Some(count) = g.get_mut(1) {
                    *count = count.wrapping_add(2);
                }
                mbap(&header, header[6], &g)
            }
            Reply::WrongLength(n) => {
                let mut f = mbap(&header, header[6], &good);
                f[4..6].copy_from_slice(&n.to_be_bytes());
                f
            }
            Reply::Garbage(bytes) => bytes.clone(),
        };
        if socket.write_all(&frame).await.is_err() {
            return;
        }
    }
}

fn mbap(request: &[u8; 7], unit: u8, pdu: &[u8]) -> Vec<u8> {
    let len = u16::try_from(pdu.len() + 1).unwrap_or(u16::MAX);
    let mut frame = Vec::with_capacity(7 + pdu.len());
    frame.extend_from_slice(&request[0..4]);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.push(unit);
    frame.extend_from_slice(pdu);
    frame
}

/// The answer a correct device gives to `pdu`, from the image.
fn good_answer(pdu: &[u8], image: &[u16]) -> Vec<u8> {
    let word = |i: usize| {
        u16::from_be_bytes([
            pdu.get(i).copied().unwrap_or(0),
            pdu.get(i + 1).copied().unwrap_or(0),
        ])
    };
    let fc = pdu.first().copied().unwrap_or(0);
    let (address, count) = (usize::from(word(1)), usize::from(word(3)));
    match fc {
        3 | 4 => {
            let mut out = vec![fc, u8::try_from(count * 2).unwrap_or(u8::MAX)];
            for i in 0..count {
                out.extend_from_slice(&image[(address + i) % image.len()].to_be_bytes());
            }
            out
        }
        1 | 2 => {
            let bytes = count.div_ceil(8);
            let mut out = vec![fc, u8::try_from(bytes).unwrap_or(u8::MAX)];
            out.extend((0..bytes).map(|i| image[(address + i) % image.len()] as u8));
            out
        }
        5 | 6 => pdu
            .get(..5)
            .map_or_else(|| vec![fc | 0x80, 3], <[u8]>::to_vec),
        15 | 16 => pdu
            .get(..5)
            .map_or_else(|| vec![fc | 0x80, 3], <[u8]>::to_vec),
        _ => vec![fc | 0x80, 1],
    }
}
