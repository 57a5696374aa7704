//! BTHome v2 advertisements (<https://bthome.io>): plain and AES-CCM encrypted.
//!
//! [`decode`] is stateless and total: any bytes give either a [`Packet`] or a
//! [`DecodeError`], never a panic. Repeated packets are dropped one level up, by
//! [`crate::PacketFilter`], because that needs memory of what came before.

mod crypto;
mod objects;

pub use objects::{Encoding, OBJECTS, ObjectSpec, Scale, lookup};

use uuid::Uuid;

use crate::bindkey::BindKey;

/// The 16-bit service UUID BTHome v2 advertises its service data under.
pub const SERVICE_UUID16: u16 = 0xFCD2;

/// [`SERVICE_UUID16`] as a full Bluetooth base UUID, as BlueZ reports service data.
pub const SERVICE_UUID: Uuid = Uuid::from_u128(0x0000_fcd2_0000_1000_8000_0080_5f9b_34fb);

/// Bits of the first byte of the service data (the "device information" byte).
const FLAG_ENCRYPTED: u8 = 0x01;
const FLAG_MAC_INCLUDED: u8 = 0x02;
const FLAG_TRIGGER_BASED: u8 = 0x04;
/// Counter (4) and MIC (4) trail an encrypted payload.
const CRYPTO_TRAILER: usize = 8;
/// BTHome refuses encrypted payloads shorter than one object id and one byte.
const MIN_ENCRYPTED_PAYLOAD: usize = 2;

/// Why service data is not a usable BTHome v2 packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty service data")]
    Empty,
    /// The version bits say something other than 2.
    #[error("BTHome version {0} is not supported (only version 2)")]
    Version(u8),
    /// Too short for what the flags promise (MAC, counter and MIC).
    #[error("service data too short ({0} bytes) for its flags")]
    TooShort(usize),
    /// Encrypted, but no bindkey is configured.
    #[error("the advertisement is encrypted and no bindkey is configured")]
    MissingKey,
    /// Plain, although a bindkey is configured: possibly someone imitating the sensor.
    #[error("plain advertisement from a device configured with a bindkey (ignored)")]
    Downgrade,
    /// The tag did not match: a wrong bindkey, or damaged bytes.
    #[error("decryption failed (wrong bindkey?)")]
    Decrypt,
}

/// A decoded advertisement.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// Whether it was encrypted (and its tag checked).
    pub encrypted: bool,
    /// The device sends only when something happens, not at a regular interval.
    pub trigger_based: bool,
    /// The MAC address the device put in the payload, if it did (most significant first).
    pub mac: Option<[u8; 6]>,
    /// The encryption counter of an encrypted packet.
    pub counter: Option<u32>,
    /// The measurements, in the order sent.
    pub objects: Vec<Object>,
    /// Bytes at the end that could not be framed (unknown object id or truncated object).
    pub unparsed: usize,
}

impl Packet {
    /// The packet id (object 0x00), if the device sends one.
    pub fn packet_id(&self) -> Option<u8> {
        self.objects.iter().find_map(|o| match o.value {
            Value::PacketId(id) => Some(id),
            _ => None,
        })
    }

    /// The first numeric value of an object called `name` (`"power"`, `"energy"`, …).
    pub fn number(&self, name: &str) -> Option<f64> {
        self.objects
            .iter()
            .filter(|o| o.spec.name == name)
            .find_map(|o| o.value.as_number())
    }

    /// The first binary value of an object called `name` (`"power"` is also a binary
    /// sensor: object 0x10, "power on").
    pub fn flag(&self, name: &str) -> Option<bool> {
        self.objects
            .iter()
            .filter(|o| o.spec.name == name)
            .find_map(|o| match o.value {
                Value::Bool(b) => Some(b),
                _ => None,
            })
    }
}

/// One measurement object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// What the object id means.
    pub spec: &'static ObjectSpec,
    /// The decoded value, in [`ObjectSpec::unit`].
    pub value: Value,
}

/// A decoded object value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// The packet id.
    PacketId(u8),
    /// A scaled measurement.
    Number(f64),
    /// A binary sensor.
    Bool(bool),
    /// Text (valid UTF-8; invalid text is dropped, as the reference decoder does).
    Text(String),
    /// Raw bytes.
    Raw(Vec<u8>),
    /// Seconds since the Unix epoch.
    Timestamp(u32),
    /// A button event code (see [`button_event_name`]).
    Button(u8),
    /// A dimmer event code (see [`dimmer_event_name`]) and the number of steps.
    Dimmer {
        /// The event code.
        event: u8,
        /// Steps turned.
        steps: u8,
    },
    /// A command event: opcode (see [`command_event_name`]) and arguments.
    Command {
        /// The opcode.
        opcode: u8,
        /// Manufacturer-specific arguments.
        args: Vec<u8>,
    },
    /// The device type id.
    DeviceTypeId(u16),
    /// A firmware version, dotted, most significant part first (`"4.2.1.0"`).
    Firmware(String),
}

impl Value {
    /// The value as a number, where it is one.
    pub fn as_number(&self) -> Option<f64> {
        match *self {
            Value::Number(n) => Some(n),
            Value::PacketId(n) => Some(f64::from(n)),
            _ => None,
        }
    }
}

/// The name of a button event code, `None` for "no event" and unknown codes.
pub fn button_event_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x01 => "press",
        0x02 => "double_press",
        0x03 => "triple_press",
        0x04 => "long_press",
        0x05 => "long_double_press",
        0x06 => "long_triple_press",
        0x80 => "hold_press",
        0x81 => "hold_release",
        _ => return None,
    })
}

/// The name of a dimmer event code, `None` for "no event" and unknown codes.
pub fn dimmer_event_name(code: u8) -> Option<&'static str> {
    match code {
        0x01 => Some("rotate_left"),
        0x02 => Some("rotate_right"),
        _ => None,
    }
}

/// The name of a command opcode, `None` for unknown ones.
pub fn command_event_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x00 => "off",
        0x01 => "on",
        0x02 => "toggle",
        0x03 => "step_up",
        0x04 => "step_down",
        _ => return None,
    })
}

/// Decode BTHome v2 service data (the bytes under UUID 0xFCD2) sent by the device at
/// `address` (most significant byte first, as written `AA:BB:…`).
///
/// With `key`, only encrypted packets are accepted ([`DecodeError::Downgrade`]
/// otherwise); without it, encrypted ones give [`DecodeError::MissingKey`].
pub fn decode(
    service_data: &[u8],
    address: [u8; 6],
    key: Option<&BindKey>,
) -> Result<Packet, DecodeError> {
    let (&info, rest) = service_data.split_first().ok_or(DecodeError::Empty)?;
    let version = info >> 5;
    if version != 2 {
        return Err(DecodeError::Version(version));
    }
    let (mac, payload) = split_mac(info, rest, service_data.len())?;
    let encrypted = info & FLAG_ENCRYPTED != 0;
    let (plain, counter) = match (encrypted, key) {
        (true, None) => return Err(DecodeError::MissingKey),
        (false, Some(_)) => return Err(DecodeError::Downgrade),
        (false, None) => (payload.to_vec(), None),
        (true, Some(key)) => {
            let (plain, counter) = decrypt(
                key,
                info,
                mac.unwrap_or(address),
                payload,
                service_data.len(),
            )?;
            (plain, Some(counter))
        }
    };
    let (objects, unparsed) = parse_objects(&plain);
    Ok(Packet {
        encrypted,
        trigger_based: info & FLAG_TRIGGER_BASED != 0,
        mac,
        counter,
        objects,
        unparsed,
    })
}

/// Take the MAC address off the front when the flags say it is there. On the wire it is
/// least significant byte first.
fn split_mac(info: u8, rest: &[u8], total: usize) -> Result<(Option<[u8; 6]>, &[u8]), DecodeError> {
    if info & FLAG_MAC_INCLUDED == 0 {
        return Ok((None, rest));
    }
    let (wire, payload) = rest
        .split_first_chunk::<6>()
        .ok_or(DecodeError::TooShort(total))?;
    let mut mac = *wire;
    mac.reverse();
    Ok((Some(mac), payload))
}

fn decrypt(
    key: &BindKey,
    info: u8,
    address: [u8; 6],
    payload: &[u8],
    total: usize,
) -> Result<(Vec<u8>, u32), DecodeError> {
    let short = DecodeError::TooShort(total);
    let body_len = payload
        .len()
        .checked_sub(CRYPTO_TRAILER)
        .ok_or(short.clone())?;
    if body_len < MIN_ENCRYPTED_PAYLOAD {
        return Err(short);
    }
    let (body, trailer) = payload.split_at(body_len);
    let (counter, mic) = trailer.split_first_chunk::<4>().ok_or(short.clone())?;
    let mic: &[u8; 4] = mic.try_into().map_err(|_| short)?;
    let nonce = crypto::nonce(address, info, *counter);
    let plain = crypto::decrypt(key, &nonce, body, mic).ok_or(DecodeError::Decrypt)?;
    Ok((plain, u32::from_le_bytes(*counter)))
}

/// Split the plain payload into objects. Framing stops at an unknown object id (its
/// length is unknown, so nothing after it can be found) or a truncated object, exactly
/// where the reference decoder stops.
fn parse_objects(payload: &[u8]) -> (Vec<Object>, usize) {
    let mut objects = Vec::new();
    let mut pos = 0;
    while let Some(&id) = payload.get(pos) {
        let Some(spec) = lookup(id) else { break };
        let Some((start, len)) = frame(spec.encoding, payload, pos) else {
            break;
        };
        let end = start + len;
        let Some(data) = payload.get(start..end) else {
            break;
        };
        // A zero-length text or raw object carries nothing worth reporting.
        if !data.is_empty()
            && let Some(value) = value_of(spec.encoding, data)
        {
            objects.push(Object { spec, value });
        }
        pos = end;
    }
    (objects, payload.len() - pos)
}

/// Where an object's data starts and how long it is, or `None` if its length byte is
/// missing.
fn frame(encoding: Encoding, payload: &[u8], pos: usize) -> Option<(usize, usize)> {
    if let Some(len) = encoding.fixed_len() {
        return Some((pos + 1, len));
    }
    let len_byte = *payload.get(pos + 1)?;
    let len = match encoding {
        // High 3 bits reserved; the low 5 count the arguments after the opcode.
        Encoding::Command => 1 + usize::from(len_byte & 0x1F),
        _ => usize::from(len_byte),
    };
    Some((pos + 2, len))
}

fn value_of(encoding: Encoding, data: &[u8]) -> Option<Value> {
    let first = data.first().copied().unwrap_or(0);
    Some(match encoding {
        Encoding::PacketId => Value::PacketId(first),
        Encoding::Uint(_, scale) => Value::Number(scale.apply(le_uint(data) as i64)),
        Encoding::Int(_, scale) => Value::Number(scale.apply(le_int(data))),
        Encoding::Binary => Value::Bool(first != 0),
        Encoding::Text => Value::Text(String::from_utf8(data.to_vec()).ok()?),
        Encoding::Raw => Value::Raw(data.to_vec()),
        Encoding::Timestamp => Value::Timestamp(le_uint(data) as u32),
        Encoding::Button => Value::Button(first),
        Encoding::Dimmer => Value::Dimmer {
            event: first,
            steps: data.get(1).copied().unwrap_or(0),
        },
        Encoding::Command => Value::Command {
            opcode: first,
            args: data.get(1..).unwrap_or_default().to_vec(),
        },
        Encoding::DeviceTypeId => Value::DeviceTypeId(le_uint(data) as u16),
        Encoding::Firmware(_) => Value::Firmware(dotted_reversed(data)),
    })
}

/// Little-endian unsigned integer of up to 8 bytes (objects have at most 4).
fn le_uint(data: &[u8]) -> u64 {
    data.iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
}

/// Little-endian two's-complement integer of 1 to 8 bytes.
fn le_int(data: &[u8]) -> i64 {
    let bits = (data.len().clamp(1, 8) * 8) as u32;
    let raw = le_uint(data);
    let shift = 64 - bits;
    ((raw << shift) as i64) >> shift
}

fn dotted_reversed(data: &[u8]) -> String {
    let parts: Vec<String> = data.iter().rev().map(|b| b.to_string()).collect();
    parts.join(".")
}

/// Build the service data a device would send: `plaintext` objects, encrypted with
/// `key` when given (with `counter`), the MAC included when `include_mac`.
///
/// For tests, simulators and tools; the gateway itself only decodes.
pub fn encode(
    plaintext: &[u8],
    address: [u8; 6],
    key: Option<&BindKey>,
    counter: u32,
    include_mac: bool,
) -> Vec<u8> {
    let mut info = 2 << 5;
    if key.is_some() {
        info |= FLAG_ENCRYPTED;
    }
    if include_mac {
        info |= FLAG_MAC_INCLUDED;
    }
    let mut out = vec![info];
    if include_mac {
        out.extend(address.iter().rev());
    }
    match key {
        None => out.extend_from_slice(plaintext),
        Some(key) => {
            let counter = counter.to_le_bytes();
            let (cipher, mic) =
                crypto::encrypt(key, &crypto::nonce(address, info, counter), plaintext);
            out.extend_from_slice(&cipher);
            out.extend_from_slice(&counter);
            out.extend_from_slice(&mic);
        }
    }
    out
}

#[cfg(test)]
mod tests;
