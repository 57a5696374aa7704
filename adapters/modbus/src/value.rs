//! Register value types, word and byte order, and the "not implemented" sentinels.

use serde::{Deserialize, Serialize};

/// How a value is laid out in registers (or bits, for coils and discrete inputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// One bit of a coil or discrete input table.
    Bool,
    /// Unsigned 16 bit.
    U16,
    /// Signed 16 bit.
    I16,
    /// Unsigned 32 bit, two registers.
    U32,
    /// Signed 32 bit, two registers.
    I32,
    /// Unsigned 64 bit, four registers.
    U64,
    /// Signed 64 bit, four registers.
    I64,
    /// IEEE 754 single precision, two registers.
    F32,
    /// IEEE 754 double precision, four registers.
    F64,
    /// Text, two characters per register (`length` registers), NUL padded.
    String,
    /// A 16 bit field of flags.
    Bitmask16,
    /// A 32 bit field of flags, two registers.
    Bitmask32,
    /// SunSpec 32 bit accumulator: unsigned, 0 means "not implemented".
    Acc32,
    /// SunSpec 64 bit accumulator: unsigned, 0 means "not implemented".
    Acc64,
}

impl ValueType {
    /// Registers (or bits) the value occupies; strings take `length`.
    pub fn width(self, length: u16) -> u16 {
        match self {
            ValueType::Bool | ValueType::U16 | ValueType::I16 | ValueType::Bitmask16 => 1,
            ValueType::U32
            | ValueType::I32
            | ValueType::F32
            | ValueType::Bitmask32
            | ValueType::Acc32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::Acc64 => 4,
            ValueType::String => length,
        }
    }

    /// The config-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Bool => "bool",
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F32 => "f32",
            ValueType::F64 => "f64",
            ValueType::String => "string",
            ValueType::Bitmask16 => "bitmask16",
            ValueType::Bitmask32 => "bitmask32",
            ValueType::Acc32 => "acc32",
            ValueType::Acc64 => "acc64",
        }
    }

    /// Parses the config-file spelling (for command-line tools).
    pub fn parse(text: &str) -> Option<ValueType> {
        const ALL: [ValueType; 14] = [
            ValueType::Bool,
            ValueType::U16,
            ValueType::I16,
            ValueType::U32,
            ValueType::I32,
            ValueType::U64,
            ValueType::I64,
            ValueType::F32,
            ValueType::F64,
            ValueType::String,
            ValueType::Bitmask16,
            ValueType::Bitmask32,
            ValueType::Acc32,
            ValueType::Acc64,
        ];
        ALL.into_iter().find(|t| t.as_str() == text)
    }

    fn is_float(self) -> bool {
        matches!(self, ValueType::F32 | ValueType::F64)
    }
}

/// Which register of a multi-register value comes first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// Most significant register first ("big-endian", the Modbus and SunSpec norm).
    #[default]
    #[serde(alias = "big")]
    HighFirst,
    /// Least significant register first ("little-endian", "word swapped").
    #[serde(alias = "little")]
    LowFirst,
}

/// Byte order within each register.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteOrder {
    /// High byte first, as the Modbus specification says.
    #[default]
    Big,
    /// Low byte first ("byte swapped"), seen on a few devices.
    Little,
}

/// Which raw values mean "not implemented" on top of NaN (always) and a register's own
/// `not_implemented` list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sentinels {
    /// Only NaN and the listed values.
    #[default]
    None,
    /// SunSpec's: 0xFFFF (u16), 0x8000 (i16), 0xFFFFFFFF (u32), 0x80000000 (i32),
    /// 0 (acc32/acc64), all-ones bit masks, an empty string.
    Sunspec,
}

/// A decoded raw value, before scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number (integers convert exactly up to 2^53).
    Number(f64),
    /// A bit field.
    Bits(u64),
    /// Text with the NUL padding removed.
    Text(String),
    /// The device says it does not implement this point.
    NotImplemented,
}

impl Value {
    /// The number, if it is one (bit masks count as numbers).
    pub fn number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Bits(b) => Some(*b as f64),
            _ => None,
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n}"),
            Value::Bits(b) => write!(f, "0x{b:X}"),
            Value::Text(t) => write!(f, "{t:?}"),
            Value::NotImplemented => write!(f, "not implemented"),
        }
    }
}

/// Puts the words in most-significant-first order with big-endian bytes.
fn normalise(words: &[u16], word_order: WordOrder, byte_order: ByteOrder) -> Vec<u16> {
    let mut out: Vec<u16> = words
        .iter()
        .map(|w| match byte_order {
            ByteOrder::Big => *w,
            ByteOrder::Little => w.swap_bytes(),
        })
        .collect();
    if word_order == WordOrder::LowFirst {
        out.reverse();
    }
    out
}

fn join(words: &[u16]) -> u64 {
    words
        .iter()
        .fold(0u64, |acc, w| (acc << 16) | u64::from(*w))
}

/// Whether a raw bit pattern of `ty` is a SunSpec "not implemented" value.
fn is_sunspec_sentinel(ty: ValueType, raw: u64) -> bool {
    match ty {
        ValueType::U16 | ValueType::Bitmask16 => raw == 0xFFFF,
        ValueType::I16 => raw == 0x8000,
        ValueType::U32 | ValueType::Bitmask32 => raw == 0xFFFF_FFFF,
        ValueType::I32 => raw == 0x8000_0000,
        ValueType::I64 => raw == 0x8000_0000_0000_0000,
        ValueType::U64 => raw == u64::MAX,
        ValueType::Acc32 | ValueType::Acc64 => raw == 0,
        _ => false,
    }
}

/// Decodes `words` (exactly `ty.width(len)` of them) as `ty`.
///
/// `extra` lists further raw values that mean "not implemented" for this register, compared
/// with the unsigned bit pattern (so `0x8000` works for an i16).
pub fn decode(
    ty: ValueType,
    words: &[u16],
    word_order: WordOrder,
    byte_order: ByteOrder,
    sentinels: Sentinels,
    extra: &[u64],
) -> Value {
    if ty == ValueType::String {
        return decode_text(words, byte_order, sentinels);
    }
    let raw = join(&normalise(words, word_order, byte_order));
    if extra.contains(&raw) || (sentinels == Sentinels::Sunspec && is_sunspec_sentinel(ty, raw)) {
        return Value::NotImplemented;
    }
    let number = match ty {
        ValueType::Bool => (raw != 0) as u8 as f64,
        ValueType::U16 | ValueType::U32 | ValueType::U64 => raw as f64,
        ValueType::Acc32 | ValueType::Acc64 => raw as f64,
        ValueType::I16 => f64::from(raw as u16 as i16),
        ValueType::I32 => f64::from(raw as u32 as i32),
        ValueType::I64 => raw as i64 as f64,
        ValueType::F32 => f64::from(f32::from_bits(raw as u32)),
        ValueType::F64 => f64::from_bits(raw),
        ValueType::Bitmask16 | ValueType::Bitmask32 => return Value::Bits(raw),
        ValueType::String => return Value::NotImplemented,
    };
    if number.is_nan() {
        Value::NotImplemented
    } else {
        Value::Number(number)
    }
}

fn decode_text(words: &[u16], byte_order: ByteOrder, sentinels: Sentinels) -> Value {
    let bytes: Vec<u8> = normalise(words, WordOrder::HighFirst, byte_order)
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect();
    let text = String::from_utf8_lossy(&bytes)
        .trim_end_matches(['\0', ' '])
        .to_string();
    if text.is_empty() && sentinels == Sentinels::Sunspec {
        Value::NotImplemented
    } else {
        Value::Text(text)
    }
}

/// Encodes a number as `ty` in register order; the error says why it does not fit.
pub fn encode(
    ty: ValueType,
    value: f64,
    word_order: WordOrder,
    byte_order: ByteOrder,
) -> Result<Vec<u16>, String> {
    if !value.is_finite() {
        return Err(format!("{value} is not a finite number"));
    }
    let bits = if ty.is_float() {
        match ty {
            ValueType::F32 => u64::from((value as f32).to_bits()),
            _ => value.to_bits(),
        }
    } else {
        integer_bits(ty, value.round())?
    };
    let width = usize::from(ty.width(0));
    let mut words: Vec<u16> = (0..width)
        .rev()
        .map(|i| (bits >> (16 * i)) as u16)
        .collect();
    if word_order == WordOrder::LowFirst {
        words.reverse();
    }
    if byte_order == ByteOrder::Little {
        words.iter_mut().for_each(|w| *w = w.swap_bytes());
    }
    Ok(words)
}

fn integer_bits(ty: ValueType, v: f64) -> Result<u64, String> {
    let (lo, hi) = match ty {
        ValueType::Bool => (0.0, 1.0),
        ValueType::U16 | ValueType::Bitmask16 => (0.0, 65535.0),
        ValueType::I16 => (-32768.0, 32767.0),
        ValueType::U32 | ValueType::Acc32 | ValueType::Bitmask32 => (0.0, 4_294_967_295.0),
        ValueType::I32 => (-2_147_483_648.0, 2_147_483_647.0),
        ValueType::U64 | ValueType::Acc64 => (0.0, 18_446_744_073_709_551_615.0),
        ValueType::I64 => (-9_223_372_036_854_775_808.0, 9_223_372_036_854_775_807.0),
        _ => return Err(format!("cannot write a number as {}", ty.as_str())),
    };
    if !(lo..=hi).contains(&v) {
        return Err(format!("{v} does not fit in {} ({lo}..={hi})", ty.as_str()));
    }
    let mask = match ty.width(0) {
        1 => 0xFFFF,
        2 => 0xFFFF_FFFF,
        _ => u64::MAX,
    };
    Ok((v as i64 as u64) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BE: (WordOrder, ByteOrder) = (WordOrder::HighFirst, ByteOrder::Big);

    fn dec(ty: ValueType, words: &[u16], s: Sentinels) -> Value {
        decode(ty, words, BE.0, BE.1, s, &[])
    }

    #[test]
    fn integers_and_floats_round_trip_in_every_order() {
        for wo in [WordOrder::HighFirst, WordOrder::LowFirst] {
            for bo in [ByteOrder::Big, ByteOrder::Little] {
                for (ty, v) in [
                    (ValueType::I16, -1234.0),
                    (ValueType::U32, 70000.0),
                    (ValueType::I32, -70000.0),
                    (ValueType::I64, -5_000_000_000.0),
                    (ValueType::F32, 1.5),
                    (ValueType::F64, -2.25),
                ] {
                    let words = encode(ty, v, wo, bo).unwrap();
                    assert_eq!(words.len(), usize::from(ty.width(0)));
                    let back = decode(ty, &words, wo, bo, Sentinels::None, &[]);
                    assert_eq!(back, Value::Number(v), "{ty:?} {wo:?} {bo:?}");
                }
            }
        }
    }

    #[test]
    fn word_order_is_explicit() {
        assert_eq!(
            dec(ValueType::U32, &[0x0001, 0x0002], Sentinels::None),
            Value::Number(65538.0)
        );
        let low_first = decode(
            ValueType::U32,
            &[0x0002, 0x0001],
            WordOrder::LowFirst,
            ByteOrder::Big,
            Sentinels::None,
            &[],
        );
        assert_eq!(low_first, Value::Number(65538.0));
        // 1.0f32 = 0x3F80_0000
        assert_eq!(
            dec(ValueType::F32, &[0x3F80, 0], Sentinels::None),
            Value::Number(1.0)
        );
    }

    #[test]
    fn sentinels_mean_not_implemented() {
        assert_eq!(
            dec(ValueType::I16, &[0x8000], Sentinels::Sunspec),
            Value::NotImplemented
        );
        assert_eq!(
            dec(ValueType::I16, &[0x8000], Sentinels::None),
            Value::Number(-32768.0)
        );
        assert_eq!(
            dec(ValueType::U16, &[0xFFFF], Sentinels::Sunspec),
            Value::NotImplemented
        );
        assert_eq!(
            dec(ValueType::Acc32, &[0, 0], Sentinels::Sunspec),
            Value::NotImplemented
        );
        assert_eq!(
            dec(ValueType::F32, &[0x7FC0, 0], Sentinels::None),
            Value::NotImplemented
        );
        let listed = decode(
            ValueType::U16,
            &[0xFFFE],
            BE.0,
            BE.1,
            Sentinels::None,
            &[0xFFFE],
        );
        assert_eq!(listed, Value::NotImplemented);
    }

    #[test]
    fn strings_drop_padding_and_values_that_do_not_fit_are_refused() {
        assert_eq!(
            dec(ValueType::String, &[0x5375, 0x6E53, 0], Sentinels::None),
            Value::Text("SunS".into())
        );
        assert!(encode(ValueType::U16, 70000.0, BE.0, BE.1).is_err());
        assert!(encode(ValueType::I16, f64::NAN, BE.0, BE.1).is_err());
        assert_eq!(
            encode(ValueType::I16, -1.0, BE.0, BE.1).unwrap(),
            vec![0xFFFF]
        );
    }
}
