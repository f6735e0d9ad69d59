//! Byte-level rules of the spec: the AAD handed to the HSM (spec "Encrypt", AAD-1…3) and the
//! ciphertext data integrity value (spec Appendix C, CDIV-1…2).

use sha2::{Digest, Sha256};

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
}
