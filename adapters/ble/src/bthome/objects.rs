//! The BTHome v2 object table: what each object id carries and how it is encoded.
//!
//! The names are the Home Assistant device classes the bthome-ble reference decoder
//! uses, so the two can be compared key by key and people recognise them.

/// How a value on the wire becomes a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Taken as it is.
    One,
    /// Divided by a power of ten. Dividing (rather than multiplying by 0.01) gives the
    /// nearest `f64` to the decimal value the device meant, e.g. exactly `123.45`.
    Div(f64),
    /// Multiplied by a factor that is not a power of ten (the 0.35 °C steps of 0x58).
    Mul(f64),
}

impl Scale {
    /// Apply the scale to a raw integer.
    pub fn apply(self, raw: i64) -> f64 {
        // Raw values have at most 32 bits, which an f64 holds exactly.
        let raw = raw as f64;
        match self {
            Scale::One => raw,
            Scale::Div(d) => raw / d,
            Scale::Mul(m) => raw * m,
        }
    }
}

/// How an object's bytes are laid out and what they mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoding {
    /// The packet id (one byte), used to drop repeated advertisements.
    PacketId,
    /// An unsigned little-endian integer of this many bytes, then scaled.
    Uint(usize, Scale),
    /// A signed little-endian integer of this many bytes, then scaled.
    Int(usize, Scale),
    /// A binary sensor (one byte, 0 = off).
    Binary,
    /// A length byte, then UTF-8 text.
    Text,
    /// A length byte, then raw bytes.
    Raw,
    /// Seconds since the Unix epoch (four bytes, unsigned).
    Timestamp,
    /// A button event (one byte).
    Button,
    /// A dimmer event: event byte, then the number of steps.
    Dimmer,
    /// A command event: length byte (low 5 bits = argument count), opcode, arguments.
    Command,
    /// The device type id (two bytes).
    DeviceTypeId,
    /// A firmware version of this many bytes, least significant part first.
    Firmware(usize),
}

impl Encoding {
    /// The number of data bytes after the object id, or `None` when a length byte says.
    pub fn fixed_len(self) -> Option<usize> {
        match self {
            Encoding::PacketId | Encoding::Binary | Encoding::Button => Some(1),
            Encoding::Uint(n, _) | Encoding::Int(n, _) | Encoding::Firmware(n) => Some(n),
            Encoding::Dimmer | Encoding::DeviceTypeId => Some(2),
            Encoding::Timestamp => Some(4),
            Encoding::Text | Encoding::Raw | Encoding::Command => None,
        }
    }
}

/// One entry of the object table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectSpec {
    /// The object id on the wire.
    pub id: u8,
    /// What it measures (`power`, `energy`, `temperature`, …); several ids may share a
    /// name when they differ only in range or resolution.
    pub name: &'static str,
    /// The unit of the decoded number, if it has one.
    pub unit: Option<&'static str>,
    /// The layout on the wire.
    pub encoding: Encoding,
}

const fn spec(
    id: u8,
    name: &'static str,
    unit: Option<&'static str>,
    encoding: Encoding,
) -> ObjectSpec {
    ObjectSpec {
        id,
        name,
        unit,
        encoding,
    }
}

/// Every object id of the BTHome v2 specification this decoder understands, in id order.
pub static OBJECTS: &[ObjectSpec] = &[
    spec(0x00, "packet_id", None, Encoding::PacketId),
    spec(0x01, "battery", Some("%"), Encoding::Uint(1, Scale::One)),
    spec(
        0x02,
        "temperature",
        Some("°C"),
        Encoding::Int(2, Scale::Div(100.0)),
    ),
    spec(
        0x03,
        "humidity",
        Some("%"),
        Encoding::Uint(2, Scale::Div(100.0)),
    ),
    spec(
        0x04,
        "pressure",
        Some("mbar"),
        Encoding::Uint(3, Scale::Div(100.0)),
    ),
    spec(
        0x05,
        "illuminance",
        Some("lx"),
        Encoding::Uint(3, Scale::Div(100.0)),
    ),
    spec(
        0x06,
        "mass",
        Some("kg"),
        Encoding::Uint(2, Scale::Div(100.0)),
    ),
    spec(
        0x07,
        "mass",
        Some("lb"),
        Encoding::Uint(2, Scale::Div(100.0)),
    ),
    spec(
        0x08,
        "dew_point",
        Some("°C"),
        Encoding::Int(2, Scale::Div(100.0)),
    ),
    spec(0x09, "count", None, Encoding::Uint(1, Scale::One)),
    spec(
        0x0A,
        "energy",
        Some("kWh"),
        Encoding::Uint(3, Scale::Div(1000.0)),
    ),
    spec(
        0x0B,
        "power",
        Some("W"),
        Encoding::Uint(3, Scale::Div(100.0)),
    ),
    spec(
        0x0C,
        "voltage",
        Some("V"),
        Encoding::Uint(2, Scale::Div(1000.0)),
    ),
    spec(0x0D, "pm25", Some("µg/m³"), Encoding::Uint(2, Scale::One)),
    spec(0x0E, "pm10", Some("µg/m³"), Encoding::Uint(2, Scale::One)),
    spec(0x0F, "generic", None, Encoding::Binary),
    spec(0x10, "power", None, Encoding::Binary),
    spec(0x11, "opening", None, Encoding::Binary),
    spec(
        0x12,
        "carbon_dioxide",
        Some("ppm"),
        Encoding::Uint(2, Scale::One),
    ),
    spec(
        0x13,
        "volatile_organic_compounds",
        Some("µg/m³"),
        Encoding::Uint(2, Scale::One),
    ),
    spec(
        0x14,
        "moisture",
        Some("%"),
        Encoding::Uint(2, Scale::Div(100.0)),
    ),
    spec(0x15, "battery", None, Encoding::Binary),
    spec(0x16, "battery_charging", None, Encoding::Binary),
    spec(0x17, "carbon_monoxide", None, Encoding::Binary),
    spec(0x18, "cold", None, Encoding::Binary),
    spec(0x19, "connectivity", None, Encoding::Binary),
    spec(0x1A, "door", None, Encoding::Binary),
    spec(0x1B, "garage_door", None, Encoding::Binary),
    spec(0x1C, "gas", None, Encoding::Binary),
    spec(0x1D, "heat", None, Encoding::Binary),
    spec(0x1E, "light", None, Encoding::Binary),
    spec(0x1F, "lock", None, Encoding::Binary),
    spec(0x20, "moisture", None, Encoding::Binary),
    spec(0x21, "motion", None, Encoding::Binary),
    spec(0x22, "moving", None, Encoding::Binary),
    spec(0x23, "occupancy", None, Encoding::Binary),
    spec(0x24, "plug", None, Encoding::Binary),
    spec(0x25, "presence", None, Encoding::Binary),
    spec(0x26, "problem", None, Encoding::Binary),
    spec(0x27, "running", None, Encoding::Binary),
    spec(0x28, "safety", None, Encoding::Binary),
    spec(0x29, "smoke", None, Encoding::Binary),
    spec(0x2A, "sound", None, Encoding::Binary),
    spec(0x2B, "tamper", None, Encoding::Binary),
    spec(0x2C, "vibration", None, Encoding::Binary),
    spec(0x2D, "window", None, Encoding::Binary),
    spec(0x2E, "humidity", Some("%"), Encoding::Uint(1, Scale::One)),
    spec(0x2F, "moisture", Some("%"), Encoding::Uint(1, Scale::One)),
    spec(0x3A, "button", None, Encoding::Button),
    spec(0x3B, "command", None, Encoding::Command),
    spec(0x3C, "dimmer", None, Encoding::Dimmer),
    spec(0x3D, "count", None, Encoding::Uint(2, Scale::One)),
    spec(0x3E, "count", None, Encoding::Uint(4, Scale::One)),
    spec(
        0x3F,
        "rotation",
        Some("°"),
        Encoding::Int(2, Scale::Div(10.0)),
    ),
    spec(0x40, "distance", Some("mm"), Encoding::Uint(2, Scale::One)),
    spec(
        0x41,
        "distance",
        Some("m"),
        Encoding::Uint(2, Scale::Div(10.0)),
    ),
    spec(
        0x42,
        "duration",
        Some("s"),
        Encoding::Uint(3, Scale::Div(1000.0)),
    ),
    spec(
        0x43,
        "current",
        Some("A"),
        Encoding::Uint(2, Scale::Div(1000.0)),
    ),
    spec(
        0x44,
        "speed",
        Some("m/s"),
        Encoding::Uint(2, Scale::Div(100.0)),
    ),
    spec(
        0x45,
        "temperature",
        Some("°C"),
        Encoding::Int(2, Scale::Div(10.0)),
    ),
    spec(0x46, "uv_index", None, Encoding::Uint(1, Scale::Div(10.0))),
    spec(
        0x47,
        "volume",
        Some("L"),
        Encoding::Uint(2, Scale::Div(10.0)),
    ),
    spec(0x48, "volume", Some("mL"), Encoding::Uint(2, Scale::One)),
    spec(
        0x49,
        "volume_flow_rate",
        Some("m³/h"),
        Encoding::Uint(2, Scale::Div(1000.0)),
    ),
    spec(
        0x4A,
        "voltage",
        Some("V"),
        Encoding::Uint(2, Scale::Div(10.0)),
    ),
    spec(
        0x4B,
        "gas",
        Some("m³"),
        Encoding::Uint(3, Scale::Div(1000.0)),
    ),
    spec(
        0x4C,
        "gas",
        Some("m³"),
        Encoding::Uint(4, Scale::Div(1000.0)),
    ),
    spec(
        0x4D,
        "energy",
        Some("kWh"),
        Encoding::Uint(4, Scale::Div(1000.0)),
    ),
    spec(
        0x4E,
        "volume",
        Some("L"),
        Encoding::Uint(4, Scale::Div(1000.0)),
    ),
    spec(
        0x4F,
        "water",
        Some("L"),
        Encoding::Uint(4, Scale::Div(1000.0)),
    ),
    spec(0x50, "timestamp", None, Encoding::Timestamp),
    spec(
        0x51,
        "acceleration",
        Some("m/s²"),
        Encoding::Uint(2, Scale::Div(1000.0)),
    ),
    spec(
        0x52,
        "gyroscope",
        Some("°/s"),
        Encoding::Uint(2, Scale::Div(1000.0)),
    ),
    spec(0x53, "text", None, Encoding::Text),
    spec(0x54, "raw", None, Encoding::Raw),
    spec(
        0x55,
        "volume_storage",
        Some("L"),
        Encoding::Uint(4, Scale::Div(1000.0)),
    ),
    spec(
        0x56,
        "conductivity",
        Some("µS/cm"),
        Encoding::Uint(2, Scale::One),
    ),
    spec(
        0x57,
        "temperature",
        Some("°C"),
        Encoding::Int(1, Scale::One),
    ),
    spec(
        0x58,
        "temperature",
        Some("°C"),
        Encoding::Int(1, Scale::Mul(0.35)),
    ),
    spec(0x59, "count", None, Encoding::Int(1, Scale::One)),
    spec(0x5A, "count", None, Encoding::Int(2, Scale::One)),
    spec(0x5B, "count", None, Encoding::Int(4, Scale::One)),
    spec(
        0x5C,
        "power",
        Some("W"),
        Encoding::Int(4, Scale::Div(100.0)),
    ),
    spec(
        0x5D,
        "current",
        Some("A"),
        Encoding::Int(2, Scale::Div(1000.0)),
    ),
    spec(
        0x5E,
        "direction",
        Some("°"),
        Encoding::Uint(2, Scale::Div(100.0)),
    ),
    spec(
        0x5F,
        "precipitation",
        Some("mm"),
        Encoding::Uint(2, Scale::Div(10.0)),
    ),
    spec(0x60, "channel", None, Encoding::Uint(1, Scale::One)),
    spec(
        0x61,
        "rotational_speed",
        Some("rpm"),
        Encoding::Uint(2, Scale::One),
    ),
    spec(
        0x62,
        "speed",
        Some("m/s"),
        Encoding::Int(4, Scale::Div(1000000.0)),
    ),
    spec(
        0x63,
        "acceleration",
        Some("m/s²"),
        Encoding::Int(4, Scale::Div(1000000.0)),
    ),
    spec(0x64, "light_level", None, Encoding::Uint(1, Scale::One)),
    spec(
        0x65,
        "settings_revision",
        None,
        Encoding::Uint(1, Scale::One),
    ),
    spec(0xF0, "device_type_id", None, Encoding::DeviceTypeId),
    spec(0xF1, "firmware_version", None, Encoding::Firmware(4)),
    spec(0xF2, "firmware_version", None, Encoding::Firmware(3)),
];

/// The table entry for an object id, if the id is known.
pub fn lookup(id: u8) -> Option<&'static ObjectSpec> {
    OBJECTS
        .binary_search_by_key(&id, |s| s.id)
        .ok()
        .and_then(|i| OBJECTS.get(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique_so_binary_search_works() {
        assert!(OBJECTS.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(lookup(0x0B).map(|s| s.name), Some("power"));
        assert_eq!(lookup(0x30), None);
    }

    #[test]
    fn powers_of_ten_divide_exactly() {
        assert_eq!(Scale::Div(100.0).apply(12345), 123.45);
        assert_eq!(Scale::Div(1000.0).apply(-1), -0.001);
    }
}
