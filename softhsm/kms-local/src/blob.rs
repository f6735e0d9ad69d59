//! The ciphertext blob this front returns as `CiphertextBlob`, version 1, and the encoding that
//! binds the encryption context into both layers.
//!
//! Real KMS blobs are opaque and undocumented; this format is our own. Byte by byte:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | format version, `0x01` |
//! | 1 | 1 | origin: `0x01` `AWS_KMS`, `0x02` `EXTERNAL_KEY_STORE` |
//! | 2 | 16 | the KMS key id (a UUID, raw bytes) |
//!
//! then for `AWS_KMS`: `IV (12) ‖ ciphertext ‖ tag (16)` under the key's AWS-side key; for
//! `EXTERNAL_KEY_STORE`, what the XKS proxy returned from Encrypt:
//!
//! | size | field |
//! |---|---|
//! | 1 | `m`, length of `ciphertextMetadata` (0–20) |
//! | m | `ciphertextMetadata` (sent back on Decrypt, as KMS does) |
//! | 1 | `v`, length of the proxy's IV (12 or 16) |
//! | v | the proxy's IV |
//! | 16 | the proxy's authentication tag |
//! | rest | the proxy's ciphertext: the AWS-side envelope `IV (12) ‖ ciphertext ‖ tag (16)` |
//!
//! Both layers use the same additional data, [`binding_aad`]: the 18 header bytes followed by
//! SHA-256 of the [`encode_context`] encoding of the encryption context. So the key, the
//! origin, the format version and the whole context are authenticated by the AWS-side key and
//! by the HSM; the proxy sees only a digest of the context, never its values. The largest
//! blob (4,096-byte plaintext, 20-byte metadata, 16-byte IV) is 18 + 1 + 20 + 1 + 16 + 16 +
//! 4,096 + 28 = 4,196 bytes, under KMS's 6,144-byte `CiphertextBlob` limit.

use ring::digest::{SHA256, digest};

use crate::aws_layer::OVERHEAD;
use crate::protocol::EncryptionContext;

/// The only format version so far.
pub const VERSION: u8 = 0x01;
/// Length of the header every blob starts with.
pub const HEADER_LEN: usize = 18;
/// Longest `ciphertextMetadata` the XKS spec allows.
pub const MAX_METADATA_LEN: usize = 20;
/// Length of the XKS authentication tag.
pub const XKS_TAG_LEN: usize = 16;
/// KMS's limit on `CiphertextBlob`.
pub const MAX_BLOB_LEN: usize = 6144;

/// Which kind of key made the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A key whose material this front holds alone.
    AwsKms,
    /// A key in an external key store: double encryption through the XKS proxy.
    ExternalKeyStore,
}

impl Origin {
    fn byte(self) -> u8 {
        match self {
            Self::AwsKms => 0x01,
            Self::ExternalKeyStore => 0x02,
        }
    }
}

/// The first 18 bytes of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The kind of key.
    pub origin: Origin,
    /// The KMS key id as raw UUID bytes.
    pub key_id: [u8; 16],
}

impl Header {
    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = VERSION;
        out[1] = self.origin.byte();
        out[2..].copy_from_slice(&self.key_id);
        out
    }
}

/// What the XKS proxy returned from Encrypt, as kept in the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksParts {
    /// `ciphertextMetadata` (possibly empty).
    pub metadata: Vec<u8>,
    /// The proxy's IV.
    pub iv: Vec<u8>,
    /// The proxy's tag.
    pub tag: Vec<u8>,
    /// The proxy's ciphertext.
    pub ciphertext: Vec<u8>,
}

/// A parsed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blob {
    /// `AWS_KMS`: the AWS-side envelope.
    AwsKms {
        /// The header.
        header: Header,
        /// `IV ‖ ciphertext ‖ tag`.
        envelope: Vec<u8>,
    },
    /// `EXTERNAL_KEY_STORE`: the proxy's output.
    External {
        /// The header.
        header: Header,
        /// The proxy's output.
        xks: XksParts,
    },
}

/// Why a blob does not parse (KMS answers `InvalidCiphertextException`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the ciphertext blob is malformed: {0}")]
pub struct BlobError(&'static str);

impl Blob {
    /// The header.
    pub fn header(&self) -> Header {
        match self {
            Self::AwsKms { header, .. } | Self::External { header, .. } => *header,
        }
    }

    /// Serialises the blob.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header().to_bytes().to_vec();
        match self {
            Self::AwsKms { envelope, .. } => out.extend_from_slice(envelope),
            Self::External { xks, .. } => {
                // Lengths were checked when the proxy's answer was accepted (xks_client), so
                // both fit a byte; saturate rather than wrap if that ever changes.
                out.push(u8::try_from(xks.metadata.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(&xks.metadata);
                out.push(u8::try_from(xks.iv.len()).unwrap_or(u8::MAX));
                out.extend_from_slice(&xks.iv);
                out.extend_from_slice(&xks.tag);
                out.extend_from_slice(&xks.ciphertext);
            }
        }
        out
    }

    /// Parses a blob, checking every length.
    pub fn parse(bytes: &[u8]) -> Result<Self, BlobError> {
        if bytes.len() > MAX_BLOB_LEN {
            return Err(BlobError("longer than 6144 bytes"));
        }
        let (head, rest) = bytes
            .split_at_checked(HEADER_LEN)
            .ok_or(BlobError("shorter than its header"))?;
        if head[0] != VERSION {
            return Err(BlobError("unknown format version"));
        }
        let mut key_id = [0u8; 16];
        key_id.copy_from_slice(&head[2..]);
        match head[1] {
            0x01 => {
                if rest.len() < OVERHEAD {
                    return Err(BlobError("envelope too short"));
                }
                Ok(Self::AwsKms {
                    header: Header {
                        origin: Origin::AwsKms,
                        key_id,
                    },
                    envelope: rest.to_vec(),
                })
            }
            0x02 => Ok(Self::External {
                header: Header {
                    origin: Origin::ExternalKeyStore,
                    key_id,
                },
                xks: parse_xks(rest)?,
            }),
            _ => Err(BlobError("unknown origin")),
        }
    }
}

fn parse_xks(bytes: &[u8]) -> Result<XksParts, BlobError> {
    let (&m, rest) = bytes.split_first().ok_or(BlobError("truncated"))?;
    let m = usize::from(m);
    if m > MAX_METADATA_LEN {
        return Err(BlobError("metadata longer than 20 bytes"));
    }
    let (metadata, rest) = rest.split_at_checked(m).ok_or(BlobError("truncated"))?;
    let (&v, rest) = rest.split_first().ok_or(BlobError("truncated"))?;
    let v = usize::from(v);
    if v != 12 && v != 16 {
        return Err(BlobError("IV is neither 12 nor 16 bytes"));
    }
    let (iv, rest) = rest.split_at_checked(v).ok_or(BlobError("truncated"))?;
    let (tag, ciphertext) = rest
        .split_at_checked(XKS_TAG_LEN)
        .ok_or(BlobError("truncated"))?;
    if ciphertext.len() < OVERHEAD {
        return Err(BlobError("ciphertext too short"));
    }
    Ok(XksParts {
        metadata: metadata.to_vec(),
        iv: iv.to_vec(),
        tag: tag.to_vec(),
        ciphertext: ciphertext.to_vec(),
    })
}

/// The canonical encoding of an encryption context: `BE32(count)`, then for each pair in
/// byte order of the keys `BE32(len(key)) ‖ key ‖ BE32(len(value)) ‖ value` (UTF-8). Length
/// prefixes make it unambiguous (`{"a":"bc"}` ≠ `{"ab":"c"}`), and sorting makes the order the
/// caller listed the pairs in irrelevant, as in KMS. Absent and empty contexts encode alike.
pub fn encode_context(context: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::new();
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&len32(context.len()));
    for (key, value) in context {
        out.extend_from_slice(&len32(key.len()));
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&len32(value.len()));
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The additional data of both layers: `header (18) ‖ SHA-256(encode_context(context))`.
pub fn binding_aad(header: Header, context: &EncryptionContext) -> Vec<u8> {
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(digest(&SHA256, &encode_context(context)).as_ref());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn header(origin: Origin) -> Header {
        Header {
            origin,
            key_id: [7; 16],
        }
    }

    #[test]
    fn external_blob_layout_is_as_documented() {
        let blob = Blob::External {
            header: header(Origin::ExternalKeyStore),
            xks: XksParts {
                metadata: vec![1, 0, 0, 0, 1],
                iv: vec![0xaa; 12],
                tag: vec![0xbb; 16],
                ciphertext: vec![0xcc; 40],
            },
        };
        let bytes = blob.to_bytes();
        assert_eq!(&bytes[..2], &[0x01, 0x02]);
        assert_eq!(&bytes[2..18], &[7; 16]);
        assert_eq!(bytes[18], 5);
        assert_eq!(&bytes[19..24], &[1, 0, 0, 0, 1]);
        assert_eq!(bytes[24], 12);
        assert_eq!(&bytes[25..37], &[0xaa; 12]);
        assert_eq!(&bytes[37..53], &[0xbb; 16]);
        assert_eq!(&bytes[53..], &[0xcc; 40]);
        assert_eq!(Blob::parse(&bytes).unwrap(), blob);
    }

    #[test]
    fn aws_blob_round_trips() {
        let blob = Blob::AwsKms {
            header: header(Origin::AwsKms),
            envelope: vec![9; 40],
        };
        let bytes = blob.to_bytes();
        assert_eq!(&bytes[..2], &[0x01, 0x01]);
        assert_eq!(Blob::parse(&bytes).unwrap(), blob);
    }

    #[test]
    fn malformed_blobs_are_refused() {
        let good = Blob::External {
            header: header(Origin::ExternalKeyStore),
            xks: XksParts {
                metadata: vec![],
                iv: vec![0; 12],
                tag: vec![0; 16],
                ciphertext: vec![0; 29],
            },
        }
        .to_bytes();
        // Shorter than header, lengths, IV, tag and an empty envelope: always refused. (A
        // shortened ciphertext still parses; the layers' tags refuse it later.)
        let minimum = HEADER_LEN + 2 + 12 + XKS_TAG_LEN + OVERHEAD;
        assert!(Blob::parse(&good[..minimum]).is_ok());
        for n in 0..minimum {
            assert!(Blob::parse(&good[..n]).is_err(), "prefix of {n} bytes");
        }
        let mut bad = good.clone();
        bad[0] = 2;
        assert!(Blob::parse(&bad).is_err());
        let mut bad = good.clone();
        bad[1] = 3;
        assert!(Blob::parse(&bad).is_err());
        let mut bad = good;
        bad[19] = 13;
        assert!(Blob::parse(&bad).is_err());
        assert!(Blob::parse(&vec![1; MAX_BLOB_LEN + 1]).is_err());
    }

    #[test]
    fn context_encoding_is_unambiguous_and_order_free() {
        let ctx = |pairs: &[(&str, &str)]| -> EncryptionContext {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_ne!(
            encode_context(&ctx(&[("a", "bc")])),
            encode_context(&ctx(&[("ab", "c")]))
        );
        assert_ne!(
            encode_context(&ctx(&[("a", "b"), ("c", "d")])),
            encode_context(&ctx(&[("a", "b\0\0\0\x01c\0\0\0\x01d")]))
        );
        assert_eq!(
            encode_context(&ctx(&[("b", "2"), ("a", "1")])),
            encode_context(&ctx(&[("a", "1"), ("b", "2")]))
        );
        assert_eq!(encode_context(&ctx(&[])), vec![0, 0, 0, 0]);
        let h = header(Origin::AwsKms);
        assert_eq!(binding_aad(h, &ctx(&[])).len(), HEADER_LEN + 32);
        assert_ne!(
            binding_aad(h, &ctx(&[])),
            binding_aad(header(Origin::ExternalKeyStore), &ctx(&[]))
        );
    }
}
