//! The HSM behind the proxy, seen through the small [`KeyBackend`] trait.
//!
//! The HTTP layer only ever talks to `dyn KeyBackend`; PKCS#11 types stay inside
//! [`pkcs11`]. Implementations must never block an async worker thread: they hand work to
//! their own threads and return a future.

mod error;
#[cfg(test)]
pub(crate) mod fake;
mod fleet;
pub mod labels;
mod observer;
pub mod pkcs11;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use zeroize::Zeroizing;

pub use error::{HsmError, Pkcs11Call, Pkcs11Code, Pkcs11Failure, Tier};
pub use fleet::{FleetBackend, FleetMember};
pub use observer::{HsmObserver, NoObserver};

use crate::xks::{ExternalKeyId, KeyVersion, VersionedKey};

/// Length of the GCM IV the proxy generates for every encryption (E-11).
pub const GCM_IV_LEN: usize = 12;
/// Length of the GCM authentication tag (E-12).
pub const GCM_TAG_LEN: usize = 16;

/// A boxed future of one HSM call's result.
pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, HsmError>> + Send + 'a>>;

/// A boxed future returned by [`KeyBackend`] methods: the result and who served it.
pub type ServedFuture<'a, T> = Pin<Box<dyn Future<Output = Served<T>> + Send + 'a>>;

/// The outcome of one [`KeyBackend`] call and the HSM member that served it, for the audit
/// log (`hsm_member`, LOG-4).
#[derive(Debug)]
pub struct Served<T> {
    /// What the HSM answered.
    pub result: Result<T, HsmError>,
    /// The member's id (e.g. the token serial, as in `ekmFleetDetails[].id`); `None` when the
    /// call never reached a member (a full queue, a deadline that passed first) or when
    /// several members answered together (a fleet's health check).
    pub member: Option<String>,
}

impl<T> Served<T> {
    /// `result` as served by `member`, unless the call never reached it
    /// ([`HsmError::Busy`], [`HsmError::Timeout`]).
    pub fn by(member: &str, result: Result<T, HsmError>) -> Self {
        let reached = !matches!(result, Err(HsmError::Busy | HsmError::Timeout));
        Self {
            member: reached.then(|| member.to_owned()),
            result,
        }
    }
}

/// What the proxy needs from a key manager.
///
/// Every call carries the request's `deadline`: an implementation gives up waiting for a
/// session or the device once it has passed and answers [`HsmError::Timeout`].
pub trait KeyBackend: Send + Sync + 'static {
    /// The versions of `key` that can serve, oldest first; never empty (no version at all is
    /// [`HsmError::KeyNotFound`]). Answered from a cache once the key is known: callers ask
    /// on every Encrypt to pick the newest version.
    fn key_versions(
        &self,
        key: ExternalKeyId,
        deadline: Instant,
    ) -> ServedFuture<'_, Arc<[KeyVersion]>>;

    /// Forgets every cached key handle and list of versions (a configuration reload), so that
    /// versions made since by `keys rotate` are used from the next request on, and an object
    /// destroyed since is never reached through a reused handle number.
    fn forget_keys(&self);

    /// Reads the key version's real attributes (GetKeyMetadata, K-1…10).
    fn key_metadata(&self, key: VersionedKey, deadline: Instant) -> ServedFuture<'_, KeyMetadata>;

    /// AES-256-GCM encryption under a fresh random 12-byte IV chosen by the backend (E-11);
    /// callers cannot supply an IV, so IV reuse is impossible by construction.
    fn encrypt(
        &self,
        key: VersionedKey,
        request: EncryptRequest,
        deadline: Instant,
    ) -> ServedFuture<'_, GcmCiphertext>;

    /// AES-GCM decryption and tag verification.
    fn decrypt(
        &self,
        key: VersionedKey,
        request: DecryptRequest,
        deadline: Instant,
    ) -> ServedFuture<'_, Zeroizing<Vec<u8>>>;

    /// A deep health check: real cryptography on a dedicated, non-customer key (H-2, H-3),
    /// plus the identity of every HSM member.
    fn health(&self, deadline: Instant) -> ServedFuture<'_, HsmHealth>;
}

/// Attributes of an external key, as GetKeyMetadata reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMetadata {
    /// Key type and size.
    pub spec: KeySpec,
    /// What the key may be used for, from its PKCS#11 attributes (K-3, K-4).
    pub usages: Vec<KeyUsage>,
    /// Whether the key is enabled (K-6).
    pub status: KeyStatus,
}

/// Key type and size (K-2).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySpec {
    /// AES with a 128-bit key.
    Aes128,
    /// AES with a 192-bit key.
    Aes192,
    /// AES with a 256-bit key: the only spec KMS accepts.
    Aes256,
    /// Anything else, described truthfully (e.g. `GENERIC_SECRET_256`, `RSA`).
    Other(String),
}

impl KeySpec {
    /// The `keySpec` string on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Aes128 => "AES_128",
            Self::Aes192 => "AES_192",
            Self::Aes256 => "AES_256",
            Self::Other(s) => s,
        }
    }
}

/// A key capability, in the order the spec lists them (K-3, K-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum KeyUsage {
    /// `CKA_ENCRYPT`.
    Encrypt,
    /// `CKA_DECRYPT`.
    Decrypt,
    /// `CKA_SIGN`.
    Sign,
    /// `CKA_VERIFY`.
    Verify,
    /// `CKA_WRAP`.
    Wrap,
    /// `CKA_UNWRAP`.
    Unwrap,
    /// `CKA_DERIVE`.
    Derive,
}

impl KeyUsage {
    /// The uppercase `keyUsage` string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Encrypt => "ENCRYPT",
            Self::Decrypt => "DECRYPT",
            Self::Sign => "SIGN",
            Self::Verify => "VERIFY",
            Self::Wrap => "WRAP",
            Self::Unwrap => "UNWRAP",
            Self::Derive => "DERIVE",
        }
    }
}

/// `keyStatus` (K-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// The key may be used.
    Enabled,
    /// The key exists but is administratively disabled.
    Disabled,
}

impl KeyStatus {
    /// The `keyStatus` string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "ENABLED",
            Self::Disabled => "DISABLED",
        }
    }
}

/// Input to [`KeyBackend::encrypt`].
pub struct EncryptRequest {
    /// The plaintext; wiped from memory when dropped.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The AAD handed to the HSM: the AAD-1 composite, not the raw request AAD.
    pub aad: Vec<u8>,
}

/// Output of [`KeyBackend::encrypt`], with the PKCS#11 `ciphertext‖tag` already split (E-12).
#[derive(Clone, PartialEq, Eq)]
pub struct GcmCiphertext {
    /// Ciphertext, exactly as long as the plaintext (E-7).
    pub ciphertext: Vec<u8>,
    /// The 12-byte IV the backend generated.
    pub iv: [u8; GCM_IV_LEN],
    /// The 16-byte authentication tag.
    pub tag: [u8; GCM_TAG_LEN],
}

/// Input to [`KeyBackend::decrypt`]. Lengths are validated by the caller before the HSM.
pub struct DecryptRequest {
    /// Ciphertext without the tag.
    pub ciphertext: Vec<u8>,
    /// The IV: 12 or 16 bytes (D-6).
    pub iv: Vec<u8>,
    /// The 16-byte tag (D-7).
    pub tag: [u8; GCM_TAG_LEN],
    /// The AAD-1 composite.
    pub aad: Vec<u8>,
}

/// Result of a deep health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsmHealth {
    /// The HSM vendor, e.g. the token's manufacturer id (`ekmVendor`).
    pub vendor: String,
    /// One entry per HSM member (1–10 on the wire, H-12).
    pub members: Vec<MemberHealth>,
}

/// Health of one HSM member (`ekmFleetDetails[]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    /// Unique id within the fleet, e.g. the token serial number (H-10).
    pub id: String,
    /// Model, hardware and firmware version (H-9).
    pub model: String,
    /// Whether this member can serve.
    pub status: MemberStatus,
}

/// `healthStatus` of one member (H-11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStatus {
    /// Healthy.
    Active,
    /// Unhealthy but still serving.
    Degraded,
    /// Cannot serve.
    Unavailable,
}

impl MemberStatus {
    /// The `healthStatus` string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Degraded => "DEGRADED",
            Self::Unavailable => "UNAVAILABLE",
        }
    }
}
