//! AES-128-CCM as BTHome v2 uses it: a 13-byte nonce, a 4-byte tag (the "MIC"), no
//! associated data.

use aes::Aes128;
use ccm::Ccm;
use ccm::aead::{AeadInOut, KeyInit};
use ccm::consts::{U4, U13};

use crate::bindkey::BindKey;

type BthomeCcm = Ccm<Aes128, U4, U13>;

/// The nonce: device address (as written, most significant byte first), the 16-bit
/// service UUID little-endian, the advertisement's first byte, and the 4-byte counter.
pub(crate) fn nonce(address: [u8; 6], adv_info: u8, counter: [u8; 4]) -> [u8; 13] {
    let mut n = [0u8; 13];
    n[..6].copy_from_slice(&address);
    n[6..8].copy_from_slice(&super::SERVICE_UUID16.to_le_bytes());
    n[8] = adv_info;
    n[9..].copy_from_slice(&counter);
    n
}

/// Decrypt `ciphertext` and check its tag; `None` when the tag does not match (wrong
/// key, or the bytes were damaged).
pub(crate) fn decrypt(
    key: &BindKey,
    nonce: &[u8; 13],
    ciphertext: &[u8],
    mic: &[u8; 4],
) -> Option<Vec<u8>> {
    let cipher = BthomeCcm::new(&(*key.expose()).into());
    let mut buffer = ciphertext.to_vec();
    cipher
        .decrypt_inout_detached(
            &(*nonce).into(),
            &[],
            buffer.as_mut_slice().into(),
            &(*mic).into(),
        )
        .ok()?;
    Some(buffer)
}

/// Encrypt `plaintext`, returning the ciphertext and the tag.
pub(crate) fn encrypt(key: &BindKey, nonce: &[u8; 13], plaintext: &[u8]) -> (Vec<u8>, [u8; 4]) {
    let cipher = BthomeCcm::new(&(*key.expose()).into());
    let mut buffer = plaintext.to_vec();
    // CCM only fails for messages longer than its length field allows (2^(8*2) bytes
    // with a 13-byte nonce); an advertisement is at most a few dozen bytes.
    let tag = cipher
        .encrypt_inout_detached(&(*nonce).into(), &[], buffer.as_mut_slice().into())
        .map(|t| t.into())
        .unwrap_or([0u8; 4]);
    (buffer, tag)
}
