//! Byte-level rules of the spec: the AAD handed to the HSM (spec "Encrypt", AAD-1…3) and the
//! ciphertext data integrity value (spec Appendix C, CDIV-1…2).

use sha2::{Digest, Sha256};

use super::KeyVersion;

/// Longest `ciphertextMetadata` in bytes (E-8, D-2).
pub const MAX_CIPHERTEXT_METADATA_LEN: usize = 20;
/// Longest request AAD the 2-byte length of AAD-1 can describe.
pub const MAX_AAD_LEN: usize = u16::MAX as usize;

/// Why the AAD cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// AAD longer than 65535 bytes.
    #[error("additionalAuthenticatedData is longer than 65535 bytes")]
    AadTooLong,
    /// Metadata longer than 20 bytes.
    #[error("ciphertextMetadata is longer than 20 bytes")]
    MetadataTooLong,
}

impl From<FramingError> for super::XksError {
    /// Inputs the AAD-1 framing cannot carry are beyond what this proxy supports (E-17).
    fn from(err: FramingError) -> Self {
        Self::unsupported(err.to_string())
    }
}

/// The AAD given to AES-GCM: `BE16(len(aad)) ‖ aad ‖ U8(len(ctm)) ‖ ctm` (AAD-1). The length
/// fields are always present, zero when a part is absent (AAD-2), so an AAD can never be
/// replayed as metadata or the other way round (AAD-3).
pub fn ekm_aad(aad: &[u8], ciphertext_metadata: &[u8]) -> Result<Vec<u8>, FramingError> {
    let aad_len = u16::try_from(aad.len()).map_err(|_| FramingError::AadTooLong)?;
    let ctm_len = u8::try_from(ciphertext_metadata.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_CIPHERTEXT_METADATA_LEN)
        .ok_or(FramingError::MetadataTooLong)?;
    let mut out = Vec::with_capacity(3 + aad.len() + ciphertext_metadata.len());
    out.extend_from_slice(&aad_len.to_be_bytes());
    out.extend_from_slice(aad);
    out.push(ctm_len);
    out.extend_from_slice(ciphertext_metadata);
    Ok(out)
}

/// First byte of the `ciphertextMetadata` this proxy writes: "key version, format 1". Other
/// values are reserved for later formats; metadata of any other shape (empty, another proxy's)
/// is [`CiphertextMetadata::Foreign`].
pub const KEY_VERSION_FORMAT: u8 = 0x01;
/// Length of [`key_version_metadata`]: the format byte and a big-endian `u32` version.
pub const KEY_VERSION_METADATA_LEN: usize = 5;

/// The `ciphertextMetadata` naming the key version an Encrypt used:
/// `0x01 ‖ BE32(version)`. It is bound into the AAD like any metadata (AAD-1), so changing it
/// makes the ciphertext fail authentication.
pub fn key_version_metadata(version: KeyVersion) -> [u8; KEY_VERSION_METADATA_LEN] {
    let mut out = [KEY_VERSION_FORMAT; KEY_VERSION_METADATA_LEN];
    out[1..].copy_from_slice(&version.get().to_be_bytes());
    out
}

/// What a Decrypt's `ciphertextMetadata` says about the key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiphertextMetadata {
    /// Written by this proxy: the version the ciphertext was made with.
    KeyVersion(KeyVersion),
    /// Empty (every ciphertext made before key versions) or of another format: version 1.
    Foreign,
}

impl CiphertextMetadata {
    /// Reads `bytes`; only the exact 5-byte format-1 shape with a non-zero version is ours.
    pub fn parse(bytes: &[u8]) -> Self {
        match bytes {
            [KEY_VERSION_FORMAT, v @ ..] => <[u8; 4]>::try_from(v)
                .ok()
                .and_then(|v| KeyVersion::new(u32::from_be_bytes(v)))
                .map_or(Self::Foreign, Self::KeyVersion),
            _ => Self::Foreign,
        }
    }

    /// The key version to decrypt with.
    pub fn version(self) -> KeyVersion {
        match self {
            Self::KeyVersion(version) => version,
            Self::Foreign => KeyVersion::FIRST,
        }
    }
}

/// The AAD AWS's sample proxy (`aws-samples/aws-kms-xks-proxy`) gave the HSM, for Decrypt of
/// the ciphertexts it made: `BE16(len(aad)) ‖ SHA-256(aad) ‖ U8(len(ctm)) ‖ ctm` when the
/// request carries an AAD (even an empty one), `00 00 ‖ U8(len(ctm)) ‖ ctm` when it has none.
pub fn aws_sample_aad(
    aad: Option<&[u8]>,
    ciphertext_metadata: &[u8],
) -> Result<Vec<u8>, FramingError> {
    let ctm_len = u8::try_from(ciphertext_metadata.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_CIPHERTEXT_METADATA_LEN)
        .ok_or(FramingError::MetadataTooLong)?;
    let mut out = Vec::with_capacity(2 + 32 + 1 + ciphertext_metadata.len());
    match aad {
        Some(aad) => {
            let aad_len = u16::try_from(aad.len()).map_err(|_| FramingError::AadTooLong)?;
            out.extend_from_slice(&aad_len.to_be_bytes());
            out.extend_from_slice(&Sha256::digest(aad));
        }
        None => out.extend_from_slice(&[0, 0]),
    }
    out.push(ctm_len);
    out.extend_from_slice(ciphertext_metadata);
    Ok(out)
}

/// `SHA-256(aad ‖ ctm ‖ iv ‖ ciphertext ‖ tag)` over decoded bytes, without length prefixes;
/// `aad` is the request's raw AAD, not the AAD-1 composite (CDIV-1, CDIV-2).
pub fn cdiv_sha256(
    aad: &[u8],
    ciphertext_metadata: &[u8],
    iv: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [aad, ciphertext_metadata, iv, ciphertext, tag] {
        hash.update(part);
    }
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    const SPEC_AAD: &[u8] = b"project=nile,department=marketing";
    const SPEC_CTM: &[u8] = b"key_version=1";

    #[test]
    fn aad_5_spec_worked_example() {
        let framed = ekm_aad(SPEC_AAD, SPEC_CTM).unwrap();
        assert_eq!(framed.len(), 49);
        assert_eq!(
            hex::encode(framed),
            "002170726f6a6563743d6e696c652c6465706172746d656e743d6d61726b6574696e67\
             0d6b65795f76657273696f6e3d31"
        );
    }

    #[test]
    fn aad_2_absent_parts_keep_zero_lengths() {
        assert_eq!(ekm_aad(b"", b"").unwrap(), [0, 0, 0]);
        assert_eq!(ekm_aad(b"a", b"").unwrap(), [0, 1, b'a', 0]);
        assert_eq!(ekm_aad(b"", b"m").unwrap(), [0, 0, 1, b'm']);
    }

    #[test]
    fn aad_3_aad_and_metadata_cannot_be_swapped() {
        assert_ne!(ekm_aad(b"X", b"").unwrap(), ekm_aad(b"", b"X").unwrap());
    }

    #[test]
    fn aad_1_length_is_big_endian_and_bounded() {
        let aad = vec![7u8; 0x0102];
        assert_eq!(&ekm_aad(&aad, b"").unwrap()[..2], &[0x01, 0x02]);
        assert!(ekm_aad(&vec![0; MAX_AAD_LEN], b"").is_ok());
        assert_eq!(
            ekm_aad(&vec![0; MAX_AAD_LEN + 1], b""),
            Err(FramingError::AadTooLong)
        );
        assert_eq!(ekm_aad(b"", &[0; 21]), Err(FramingError::MetadataTooLong));
        assert!(ekm_aad(b"", &[0; 20]).is_ok());
    }

    #[test]
    fn cdiv_5_spec_example() {
        let iv = STANDARD.decode("HMrlRw85cAJUd5Ax").unwrap();
        let ciphertext = STANDARD.decode("ghxkK1txeDNn3q8Y").unwrap();
        let tag = STANDARD.decode("vBxN2ncH1oEkR8WVXpmyYQ==").unwrap();
        assert_eq!(
            SPEC_AAD.len() + SPEC_CTM.len() + iv.len() + ciphertext.len() + tag.len(),
            86
        );
        let cdiv = cdiv_sha256(SPEC_AAD, SPEC_CTM, &iv, &ciphertext, &tag);
        assert_eq!(
            hex::encode(cdiv),
            "a8703f2260bd8791ec2d15ea0b23e65a0631eedcf2a13a65cc82db3f47cf5ec7"
        );
        assert_eq!(
            STANDARD.encode(cdiv),
            "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="
        );
    }

    #[test]
    fn key_version_metadata_is_format_byte_then_big_endian_version() {
        let v = |n| KeyVersion::new(n).unwrap();
        assert_eq!(key_version_metadata(v(1)), [0x01, 0, 0, 0, 1]);
        assert_eq!(key_version_metadata(v(0x0102_0304)), [1, 1, 2, 3, 4]);
        for n in [1, 2, 300, u32::MAX] {
            let bytes = key_version_metadata(v(n));
            assert!(bytes.len() <= MAX_CIPHERTEXT_METADATA_LEN);
            assert_eq!(
                CiphertextMetadata::parse(&bytes),
                CiphertextMetadata::KeyVersion(v(n))
            );
        }
    }

    #[test]
    fn other_metadata_means_version_one() {
        for foreign in [
            &b""[..],
            b"key_version=1",
            &[0x01, 0, 0, 0, 0],
            &[0x01, 0, 0, 2],
            &[0x01, 0, 0, 0, 2, 0],
            &[0x02, 0, 0, 0, 2],
        ] {
            let parsed = CiphertextMetadata::parse(foreign);
            assert_eq!(parsed, CiphertextMetadata::Foreign, "{foreign:?}");
            assert_eq!(parsed.version(), KeyVersion::FIRST);
        }
    }

    #[test]
    fn aws_sample_aad_hashes_a_present_aad_and_only_frames_an_absent_one() {
        assert_eq!(aws_sample_aad(None, b"").unwrap(), [0, 0, 0]);
        assert_eq!(aws_sample_aad(None, b"m").unwrap(), [0, 0, 1, b'm']);
        let empty = aws_sample_aad(Some(b""), b"").unwrap();
        assert_eq!(
            hex::encode(&empty),
            // SHA-256 of the empty string between the two lengths.
            "0000e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85500"
        );
        let framed = aws_sample_aad(Some(b"abc"), b"xy").unwrap();
        assert_eq!(&framed[..2], &[0, 3]);
        assert_eq!(
            hex::encode(&framed[2..34]),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(&framed[34..], &[2, b'x', b'y']);
        assert_eq!(
            aws_sample_aad(None, &[0; 21]),
            Err(FramingError::MetadataTooLong)
        );
    }
}
