//! Identifier newtypes from the XKS URI grammar (spec "URI structure", checklist URI-7).

use std::fmt;
use std::num::NonZeroU32;

/// Longest external key id the spec allows (URI-7).
pub const MAX_EXTERNAL_KEY_ID_LEN: usize = 128;

/// An `externalKeyId`: 1–128 characters from `A-Z a-z 0-9 - . _` (URI-7).
///
/// The proxy maps it to the PKCS#11 object whose `CKA_LABEL` equals it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExternalKeyId(String);

/// Why a string is not a valid [`ExternalKeyId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyIdError {
    /// The id is empty.
    #[error("external key id is empty")]
    Empty,
    /// The id is longer than 128 characters.
    #[error("external key id is longer than 128 characters")]
    TooLong,
    /// The id has a character outside `A-Z a-z 0-9 - . _`.
    #[error("external key id may only contain A-Z a-z 0-9 - . _")]
    BadCharacter,
    /// The id is `.` or `..`, which are dot segments in a URI path (RFC 3986 §5.2.4).
    #[error("external key id cannot be . or ..")]
    DotSegment,
}

impl ExternalKeyId {
    /// Parses and validates a key id.
    pub fn parse(raw: &str) -> Result<Self, KeyIdError> {
        if raw.is_empty() {
            return Err(KeyIdError::Empty);
        }
        if raw.len() > MAX_EXTERNAL_KEY_ID_LEN {
            return Err(KeyIdError::TooLong);
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        if !raw.bytes().all(allowed) {
            return Err(KeyIdError::BadCharacter);
        }
        // Clients normalise these away before signing, so they could never authenticate.
        if raw == "." || raw == ".." {
            return Err(KeyIdError::DotSegment);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExternalKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ExternalKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExternalKeyId({})", self.0)
    }
}

impl std::str::FromStr for ExternalKeyId {
    type Err = KeyIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// One version of an external key: 1 is the object whose label is the key id itself (every
/// key made before versioning), later versions come from `keys rotate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyVersion(NonZeroU32);

impl KeyVersion {
    /// Version 1: the original key object.
    pub const FIRST: Self = Self(NonZeroU32::MIN);

    /// The version numbered `n`, if `n` is at least 1.
    pub fn new(n: u32) -> Option<Self> {
        NonZeroU32::new(n).map(Self)
    }

    /// The version number.
    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// The version after this one, unless this is the last one a `u32` can count.
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// An external key id and one of its versions: what the HSM layer looks up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionedKey {
    /// The external key id (`XksKeyId`).
    pub id: ExternalKeyId,
    /// Which version of it.
    pub version: KeyVersion,
}

impl VersionedKey {
    /// Version `version` of `id`.
    pub fn new(id: ExternalKeyId, version: KeyVersion) -> Self {
        Self { id, version }
    }

    /// Version 1 of `id`: the object labelled with the id itself.
    pub fn first(id: ExternalKeyId) -> Self {
        Self::new(id, KeyVersion::FIRST)
    }
}

impl fmt::Display for VersionedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.id, self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_7_accepts_the_spec_charset() {
        for ok in ["a", "Key-1.v2_x", &"k".repeat(128)] {
            assert_eq!(
                ExternalKeyId::parse(ok).map(|k| k.to_string()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn uri_11_rejects_everything_else() {
        assert_eq!(ExternalKeyId::parse(""), Err(KeyIdError::Empty));
        assert_eq!(
            ExternalKeyId::parse(&"k".repeat(129)),
            Err(KeyIdError::TooLong)
        );
        assert_eq!(ExternalKeyId::parse("."), Err(KeyIdError::DotSegment));
        assert_eq!(ExternalKeyId::parse(".."), Err(KeyIdError::DotSegment));
        assert!(ExternalKeyId::parse("...").is_ok());
        for bad in ["a/b", "a b", "a%2F", "ä", "a+b", "a:b"] {
            assert_eq!(
                ExternalKeyId::parse(bad),
                Err(KeyIdError::BadCharacter),
                "{bad}"
            );
        }
    }
}
