//! The BTHome bindkey: the 16-byte AES key of an encrypted sensor. Never printed.

use std::fmt;
use std::path::Path;

/// Why a bindkey could not be read. The messages never contain the key, not even a
/// mistyped one: a near miss of a secret is still most of the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindKeyError {
    /// Not 32 hexadecimal digits.
    #[error("a bindkey is 32 hexadecimal digits (16 bytes); got {0} characters")]
    Length(usize),
    /// A character that is not a hexadecimal digit.
    #[error("a bindkey is 32 hexadecimal digits; character {0} is not one")]
    NotHex(usize),
    /// The key file could not be read.
    #[error("cannot read bindkey file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// A BTHome bindkey. `Debug` prints `BindKey(***)`; the bytes leave only through
/// [`BindKey::expose`], so every use is easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct BindKey([u8; 16]);

impl BindKey {
    /// A key from its 16 bytes.
    pub fn new(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A key from 32 hexadecimal digits (surrounding whitespace is ignored, so a key file
    /// may end with a newline).
    pub fn from_hex(text: &str) -> Result<Self, BindKeyError> {
        let text = text.trim();
        if text.len() != 32 {
            return Err(BindKeyError::Length(text.chars().count()));
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let hi = hex_digit(text.as_bytes(), 2 * i)?;
            let lo = hex_digit(text.as_bytes(), 2 * i + 1)?;
            *byte = (hi << 4) | lo;
        }
        Ok(Self(bytes))
    }

    /// A key from a file holding its 32 hexadecimal digits.
    pub fn from_file(path: &Path) -> Result<Self, BindKeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| BindKeyError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_hex(&text)
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; 16] {
        &self.0
    }
}

fn hex_digit(text: &[u8], at: usize) -> Result<u8, BindKeyError> {
    let c = text.get(at).copied().unwrap_or(b' ');
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        // 1-based, as people count characters.
        _ => Err(BindKeyError::NotHex(at + 1)),
    }
}

impl fmt::Debug for BindKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BindKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_never_prints_it() {
        let key = BindKey::from_hex("231d39c1d7cc1ab1aee224cd096db932\n").unwrap();
        assert_eq!(key.expose()[0], 0x23);
        assert_eq!(format!("{key:?}"), "BindKey(***)");
    }

    #[test]
    fn errors_do_not_echo_the_key() {
        let bad = "231d39c1d7cc1ab1aee224cd096db9zz";
        let err = BindKey::from_hex(bad).unwrap_err();
        assert_eq!(err, BindKeyError::NotHex(31));
        assert!(!err.to_string().contains("231d"));
        assert_eq!(BindKey::from_hex("abc"), Err(BindKeyError::Length(3)));
    }
}
