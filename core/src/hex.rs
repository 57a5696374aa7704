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

#[cfg(test)]
mod tests {
    #[test]
    fn lowercase_and_padded() {
        assert_eq!(super::encode(&[0xab, 0x01, 0x00]), "ab0100");
        assert_eq!(super::encode(&[]), "");
    }
}
