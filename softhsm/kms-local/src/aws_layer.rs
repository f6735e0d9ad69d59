//! The AWS-side layer of KMS's double encryption for external key store keys, and the AES-256
//! GCM of `AWS_KMS` keys: each KMS key has a 256-bit key kept by this front (KMS keeps it in
//! its own HSMs). Also the randomness of the front (ids, data keys, IVs), all from the OS
//! CSPRNG through `ring`.
//!
//! A sealed envelope is `IV (12) ‖ ciphertext ‖ tag (16)`.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Length of an AWS-side key.
pub const KEY_LEN: usize = 32;
/// Bytes an envelope adds to the plaintext: IV and tag.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
const TAG_LEN: usize = 16;

/// Why a layer operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The OS random generator failed.
    #[error("the OS random generator failed")]
    Random,
    /// The key has the wrong length (a corrupted state file).
    #[error("the AWS-side key is not 32 bytes")]
    BadKey,
    /// The envelope is too short or does not authenticate.
    #[error("the ciphertext does not authenticate")]
    Authentication,
}

/// `n` random bytes, zeroized on drop.
pub fn random(n: usize) -> Result<Zeroizing<Vec<u8>>, LayerError> {
    let mut out = Zeroizing::new(vec![0; n]);
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| LayerError::Random)?;
    Ok(out)
}

/// A fresh random UUID v4 in its usual text form (KMS key ids and request ids).
pub fn uuid_v4() -> Result<String, LayerError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| LayerError::Random)?;
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Ok(format_uuid(&bytes))
}

/// 16 bytes as `8-4-4-4-12` lowercase hex.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Parses a UUID in `8-4-4-4-12` hex form (either case).
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn key(bytes: &[u8]) -> Result<LessSafeKey, LayerError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| LayerError::BadKey)
}

/// Encrypts `plaintext` under `key_bytes` with `aad`, with a fresh random IV.
pub fn seal(key_bytes: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, LayerError> {
    let key = key(key_bytes)?;
    let mut iv = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut iv)
        .map_err(|_| LayerError::Random)?;
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.extend_from_slice(&iv);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(iv),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| LayerError::Authentication)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Decrypts an envelope made by [`seal`] with the same key and `aad`.
pub fn open(
    key_bytes: &[u8],
    aad: &[u8],
    envelope: &[u8],
) -> Result<Zeroizing<Vec<u8>>, LayerError> {
    let key = key(key_bytes)?;
    if envelope.len() < OVERHEAD {
        return Err(LayerError::Authentication);
    }
    let (iv, rest) = envelope.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(iv).map_err(|_| LayerError::Authentication)?;
    let mut buffer = Zeroizing::new(rest.to_vec());
    let plaintext_len = key
        .open_in_place(nonce, Aad::from(aad), &mut buffer)
        .map_err(|_| LayerError::Authentication)?
        .len();
    buffer.truncate(plaintext_len);
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let key = random(KEY_LEN).unwrap();
        let sealed = seal(&key, b"aad", b"secret").unwrap();
        assert_eq!(sealed.len(), 6 + OVERHEAD);
        assert_eq!(open(&key, b"aad", &sealed).unwrap().as_slice(), b"secret");
        assert_eq!(
            open(&key, b"other", &sealed),
            Err(LayerError::Authentication)
        );
        assert_eq!(
            open(&key, b"aad", &sealed[..10]),
            Err(LayerError::Authentication)
        );
        let other = random(KEY_LEN).unwrap();
        assert_eq!(
            open(&other, b"aad", &sealed),
            Err(LayerError::Authentication)
        );
    }

    #[test]
    fn uuids_round_trip() {
        let id = uuid_v4().unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(format_uuid(&parse_uuid(&id).unwrap()), id);
        assert_eq!(parse_uuid("not-a-uuid"), None);
        assert_eq!(parse_uuid("1234567-1234-1234-1234-1234567890123"), None);
    }
}
