//! GATT values: numbers in characteristic bytes, and write payload templates.
//!
//! A profile describes a characteristic's value as a [`ValueFormat`] in an [`Endian`]
//! order with a scale and offset (`reading = raw * scale + offset`). A write payload is a
//! template of hex bytes in which `{u16}`, `{i16_be}`, … stand for a command's number,
//! encoded in that format (`raw = round((value - offset) / scale)`).

use serde::{Deserialize, Serialize};

/// How a number is laid out in a characteristic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    /// One byte, unsigned.
    U8,
    /// One byte, signed.
    I8,
    /// Two bytes, unsigned.
    U16,
    /// Two bytes, signed.
    I16,
    /// Four bytes, unsigned.
    U32,
    /// Four bytes, signed.
    I32,
    /// IEEE 754 single precision.
    F32,
}

impl ValueFormat {
    /// Every format with its config name, for parsing templates and error messages.
    pub const ALL: [(ValueFormat, &'static str); 7] = [
        (ValueFormat::U8, "u8"),
        (ValueFormat::I8, "i8"),
        (ValueFormat::U16, "u16"),
        (ValueFormat::I16, "i16"),
        (ValueFormat::U32, "u32"),
        (ValueFormat::I32, "i32"),
        (ValueFormat::F32, "f32"),
    ];

    /// Bytes the value occupies.
    pub fn byte_len(self) -> usize {
        match self {
            ValueFormat::U8 | ValueFormat::I8 => 1,
            ValueFormat::U16 | ValueFormat::I16 => 2,
            ValueFormat::U32 | ValueFormat::I32 | ValueFormat::F32 => 4,
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(f, _)| *f)
    }

    /// The smallest and largest raw value the format holds.
    fn range(self) -> (f64, f64) {
        match self {
            ValueFormat::U8 => (0.0, f64::from(u8::MAX)),
            ValueFormat::I8 => (f64::from(i8::MIN), f64::from(i8::MAX)),
            ValueFormat::U16 => (0.0, f64::from(u16::MAX)),
            ValueFormat::I16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
            ValueFormat::U32 => (0.0, f64::from(u32::MAX)),
            ValueFormat::I32 => (f64::from(i32::MIN), f64::from(i32::MAX)),
            ValueFormat::F32 => (f64::from(f32::MIN), f64::from(f32::MAX)),
        }
    }
}

/// Byte order of a multi-byte value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endian {
    /// Least significant byte first (what BLE mostly uses).
    #[default]
    Little,
    /// Most significant byte first.
    Big,
}

/// Why bytes or a value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The characteristic held fewer bytes than the format needs.
    #[error("value has {got} bytes, format needs {need}")]
    TooShort {
        /// Bytes the format needs.
        need: usize,
        /// Bytes there were.
        got: usize,
    },
    /// A number does not fit the format.
    #[error("{0} does not fit the payload format")]
    OutOfRange(String),
    /// The template is malformed.
    #[error("payload template: {0}")]
    Template(String),
}

/// Read a number from the first bytes of `data` (extra bytes are ignored: many devices
/// pack several values into one characteristic and the profile picks the first).
pub fn decode_value(data: &[u8], format: ValueFormat, endian: Endian) -> Result<f64, CodecError> {
    let need = format.byte_len();
    let bytes = data.get(..need).ok_or(CodecError::TooShort {
        need,
        got: data.len(),
    })?;
    let mut buf = [0u8; 4];
    buf[..need].copy_from_slice(bytes);
    if endian == Endian::Big {
        buf[..need].reverse();
    }
    let [a, b, c, d] = buf;
    Ok(match format {
        ValueFormat::U8 => f64::from(a),
        ValueFormat::I8 => f64::from(a as i8),
        ValueFormat::U16 => f64::from(u16::from_le_bytes([a, b])),
        ValueFormat::I16 => f64::from(i16::from_le_bytes([a, b])),
        ValueFormat::U32 => f64::from(u32::from_le_bytes([a, b, c, d])),
        ValueFormat::I32 => f64::from(i32::from_le_bytes([a, b, c, d])),
        ValueFormat::F32 => f64::from(f32::from_le_bytes([a, b, c, d])),
    })
}

/// Write a number in `format`; integers are rounded to the nearest and must fit.
pub fn encode_value(
    value: f64,
    format: ValueFormat,
    endian: Endian,
) -> Result<Vec<u8>, CodecError> {
    let (lo, hi) = format.range();
    let raw = if format == ValueFormat::F32 {
        value
    } else {
        value.round()
    };
    if !(raw.is_finite() && (lo..=hi).contains(&raw)) {
        return Err(CodecError::OutOfRange(value.to_string()));
    }
    // In range was checked above, so the casts below are exact.
    let mut bytes = match format {
        ValueFormat::U8 => vec![raw as u8],
        ValueFormat::I8 => (raw as i8).to_le_bytes().to_vec(),
        ValueFormat::U16 => (raw as u16).to_le_bytes().to_vec(),
        ValueFormat::I16 => (raw as i16).to_le_bytes().to_vec(),
        ValueFormat::U32 => (raw as u32).to_le_bytes().to_vec(),
        ValueFormat::I32 => (raw as i32).to_le_bytes().to_vec(),
        ValueFormat::F32 => (raw as f32).to_le_bytes().to_vec(),
    };
    if endian == Endian::Big {
        bytes.reverse();
    }
    Ok(bytes)
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Bytes(Vec<u8>),
    Value(ValueFormat, Endian),
}

/// A write payload: hex bytes (spaces allowed) with `{FORMAT}` or `{FORMAT_be}`
/// placeholders for a command's number, e.g. `"a0 01 {u16}"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parse a template.
    pub fn parse(text: &str) -> Result<Self, CodecError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some((hex, after)) = rest.split_once('{') {
            pieces.push(Piece::Bytes(parse_hex(hex)?));
            let (name, tail) = after
                .split_once('}')
                .ok_or_else(|| CodecError::Template("`{` without `}`".into()))?;
            pieces.push(placeholder(name)?);
            rest = tail;
        }
        pieces.push(Piece::Bytes(parse_hex(rest)?));
        pieces.retain(|p| !matches!(p, Piece::Bytes(b) if b.is_empty()));
        Ok(Self { pieces })
    }

    /// Whether the template has a `{…}` placeholder (and so needs a value).
    pub fn takes_value(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Value(..)))
    }

    /// The bytes to write, `raw` standing in for every placeholder.
    pub fn render(&self, raw: Option<f64>) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Bytes(b) => out.extend_from_slice(b),
                Piece::Value(format, endian) => {
                    let v = raw
                        .ok_or_else(|| CodecError::Template("placeholder needs a value".into()))?;
                    out.extend(encode_value(v, *format, *endian)?);
                }
            }
        }
        Ok(out)
    }
}

fn placeholder(name: &str) -> Result<Piece, CodecError> {
    let (format, endian) = match name.strip_suffix("_be") {
        Some(f) => (f, Endian::Big),
        None => (name.strip_suffix("_le").unwrap_or(name), Endian::Little),
    };
    let format = ValueFormat::parse(format).ok_or_else(|| {
        let names: Vec<&str> = ValueFormat::ALL.iter().map(|(_, n)| *n).collect();
        CodecError::Template(format!(
            "unknown placeholder {{{name}}} (formats: {}, optionally with _be)",
            names.join(", ")
        ))
    })?;
    Ok(Piece::Value(format, endian))
}

/// Hex digits in pairs; whitespace between pairs is ignored.
fn parse_hex(text: &str) -> Result<Vec<u8>, CodecError> {
    let digits: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(CodecError::Template(format!(
            "odd number of hex digits in `{}`",
            text.trim()
        )));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s: String = pair.iter().collect();
            u8::from_str_radix(&s, 16)
                .map_err(|_| CodecError::Template(format!("`{s}` is not a hex byte")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_in_both_byte_orders() {
        assert_eq!(
            decode_value(&[0x34, 0x12, 0xff], ValueFormat::U16, Endian::Little),
            Ok(4660.0)
        );
        assert_eq!(
            decode_value(&[0x12, 0x34], ValueFormat::U16, Endian::Big),
            Ok(4660.0)
        );
        assert_eq!(
            decode_value(&[0xff, 0xff], ValueFormat::I16, Endian::Little),
            Ok(-1.0)
        );
        assert_eq!(
            decode_value(&[0xfe], ValueFormat::I8, Endian::Little),
            Ok(-2.0)
        );
        assert_eq!(
            decode_value(&1.5f32.to_be_bytes(), ValueFormat::F32, Endian::Big),
            Ok(1.5)
        );
        assert_eq!(
            decode_value(&[1], ValueFormat::U32, Endian::Little),
            Err(CodecError::TooShort { need: 4, got: 1 })
        );
    }

    #[test]
    fn values_encode_and_refuse_what_does_not_fit() {
        assert_eq!(
            encode_value(4660.4, ValueFormat::U16, Endian::Big),
            Ok(vec![0x12, 0x34])
        );
        assert_eq!(
            encode_value(-1.0, ValueFormat::I32, Endian::Little),
            Ok(vec![0xff; 4])
        );
        assert!(encode_value(256.0, ValueFormat::U8, Endian::Little).is_err());
        assert!(encode_value(f64::NAN, ValueFormat::F32, Endian::Little).is_err());
    }

    #[test]
    fn templates_render_bytes_and_placeholders() {
        let t = Template::parse("a0 01 {u16_be} ff").unwrap();
        assert!(t.takes_value());
        assert_eq!(
            t.render(Some(258.0)),
            Ok(vec![0xa0, 0x01, 0x01, 0x02, 0xff])
        );
        let t = Template::parse("01").unwrap();
        assert!(!t.takes_value());
        assert_eq!(t.render(None), Ok(vec![1]));
        assert!(Template::parse("0").is_err());
        assert!(Template::parse("{u24}").is_err());
        assert!(Template::parse("01 {u8").is_err());
        assert!(Template::parse("zz").is_err());
    }
}
