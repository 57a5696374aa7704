//! Bytes as lowercase hex, the way logs, configs and the test oracles spell them.

use std::fmt::Write as _;

/// `bytes` as lowercase hex without separators (`[0xab, 0x01]` → `"ab01"`).
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The bytes `hex` spells (either case), or `None` when it is not an even number of hex
/// digits.
pub fn decode(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decode_reads_what_encode_writes_and_refuses_the_rest() {
        assert_eq!(super::decode("ab01FF"), Some(vec![0xab, 0x01, 0xff]));
        assert_eq!(
            super::decode(&super::encode(&[7, 0, 200])),
            Some(vec![7, 0, 200])
        );
        assert_eq!(super::decode("abc"), None);
        assert_eq!(super::decode("zz"), None);
    }

    #[test]
    fn lowercase_and_padded() {
        assert_eq!(super::encode(&[0xab, 0x01, 0x00]), "ab0100");
        assert_eq!(super::encode(&[]), "");
    }
}
