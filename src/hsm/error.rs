//! Errors of the HSM layer, and the one place they become XKS wire errors.
//!
//! PKCS#11 return codes are classified into [`HsmError`] by `pkcs11::errors` (one exhaustive
//! match); `impl From<HsmError> for XksError` below is the only place an HSM failure gets an
//! `errorName`.

use std::fmt;
use std::mem::discriminant;

use cryptoki::context::Function;
use cryptoki::error::RvError;

use crate::xks::{ErrorName, XksError};

/// How far the damage of a PKCS#11 failure reaches; drives recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tier {
    /// The request itself was at fault (bad input, key usage); nothing to repair.
    Request,
    /// The session (or a cached handle) is broken; retry on a fresh session.
    Session,
    /// The login was lost; log in again.
    Login,
    /// The device, token or library is broken; rebuild the whole context.
    Device,
}

/// A PKCS#11 failure: which function, which `CKR_*` code, how bad.
///
/// Displayed as `C_Encrypt failed with CKR_DEVICE_ERROR` (names from `pkcs11::codes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Failure {
    /// The PKCS#11 function, e.g. `C_Encrypt`.
    pub function: Pkcs11Call,
    /// The return value, e.g. `CKR_DEVICE_ERROR`.
    pub code: Pkcs11Code,
    /// Recovery class.
    pub tier: Tier,
}

/// Where a [`Pkcs11Failure`] happened.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Pkcs11Call {
    /// A PKCS#11 function, displayed by its `C_*` name.
    Function(Function),
    /// The PKCS#11 binding before or around any function: `dlopen`, `dlsym`, `cryptoki`.
    Binding(&'static str),
}

// By hand: cryptoki's `Function` is a fieldless enum without `PartialEq`; its discriminant
// names the function exactly.
impl PartialEq for Pkcs11Call {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Function(a), Self::Function(b)) => discriminant(a) == discriminant(b),
            (Self::Binding(a), Self::Binding(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Pkcs11Call {}

/// What a [`Pkcs11Failure`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pkcs11Code {
    /// A `CK_RV` other than `CKR_OK`, displayed by its `CKR_*` name.
    Rv(RvError),
    /// No return value explains the failure (the module could not be loaded, or answered
    /// `CKR_OK` with an unusable result); displayed as this description.
    Anomaly(&'static str),
}

impl fmt::Display for Pkcs11Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed with {}", self.function, self.code)
    }
}

/// Everything that can go wrong below the HTTP layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// No private object carries the requested label, or the one that does is not sensitive
    /// or is extractable (key hygiene): the caller cannot tell the two apart, the log can.
    #[error("no key with this id exists in the HSM")]
    KeyNotFound,
    /// Several objects carry the label; the proxy never guesses (URI-8).
    #[error("more than one HSM object carries this key id; it must identify exactly one key")]
    AmbiguousKey {
        /// How many objects matched.
        count: usize,
    },
    /// The object is not an AES-256 secret key.
    #[error("the key is not an AES-256 secret key ({found})")]
    UnsupportedKey {
        /// What was found instead, e.g. `AES_128`.
        found: String,
    },
    /// The key's attributes do not allow this operation (`CKR_KEY_FUNCTION_NOT_PERMITTED`).
    #[error("the key does not permit {operation}")]
    KeyUsageNotPermitted {
        /// `encrypt` or `decrypt`.
        operation: &'static str,
    },
    /// GCM authentication failed: wrong AAD, IV, tag or ciphertext.
    #[error("ciphertext authentication failed")]
    InvalidCiphertext,
    /// The HSM refused the size of an input.
    #[error("the HSM rejected the input size")]
    InputTooLarge,
    /// All sessions are busy and the wait queue is full.
    #[error("all HSM sessions are busy and the wait queue is full")]
    Busy,
    /// The request's deadline passed while waiting for a session or the HSM.
    #[error("the HSM did not answer within the request deadline")]
    Timeout,
    /// The backend cannot serve at the moment (no session, context being rebuilt, shutting down).
    #[error("the HSM is unavailable: {0}")]
    Unavailable(String),
    /// Any other PKCS#11 failure.
    #[error("{0}")]
    Pkcs11(Pkcs11Failure),
    /// Key creation refused: an object with this label already exists (admin CLI only).
    #[error("a key with this id already exists in the HSM")]
    KeyAlreadyExists,
}

impl From<HsmError> for XksError {
    fn from(err: HsmError) -> Self {
        let name = match &err {
            HsmError::KeyNotFound | HsmError::AmbiguousKey { .. } => {
                ErrorName::KeyNotFoundException
            }
            HsmError::UnsupportedKey { .. } | HsmError::KeyUsageNotPermitted { .. } => {
                ErrorName::InvalidKeyUsageException
            }
            HsmError::InvalidCiphertext => ErrorName::InvalidCiphertextException,
            HsmError::InputTooLarge => ErrorName::UnsupportedOperationException,
            HsmError::Busy => ErrorName::ThrottlingException,
            HsmError::Timeout => ErrorName::DependencyTimeoutException,
            HsmError::Unavailable(_) | HsmError::Pkcs11(_) | HsmError::KeyAlreadyExists => {
                ErrorName::InternalException
            }
        };
        // Internal details (function names, codes) go to the log, not to the customer.
        let message = match &err {
            HsmError::Unavailable(_) | HsmError::Pkcs11(_) | HsmError::KeyAlreadyExists => {
                "the external key manager failed to process the request".to_owned()
            }
            other => other.to_string(),
        };
        Self::new(name, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hsm_error_has_its_spec_error_name() {
        let failure = Pkcs11Failure {
            function: Pkcs11Call::Function(Function::Encrypt),
            code: Pkcs11Code::Rv(RvError::DeviceError),
            tier: Tier::Device,
        };
        let cases = [
            (HsmError::KeyNotFound, ErrorName::KeyNotFoundException),
            (
                HsmError::AmbiguousKey { count: 2 },
                ErrorName::KeyNotFoundException,
            ),
            (
                HsmError::UnsupportedKey {
                    found: "AES_128".into(),
                },
                ErrorName::InvalidKeyUsageException,
            ),
            (
                HsmError::KeyUsageNotPermitted {
                    operation: "decrypt",
                },
                ErrorName::InvalidKeyUsageException,
            ),
            (
                HsmError::InvalidCiphertext,
                ErrorName::InvalidCiphertextException,
            ),
            (
                HsmError::InputTooLarge,
                ErrorName::UnsupportedOperationException,
            ),
            (HsmError::Busy, ErrorName::ThrottlingException),
            (HsmError::Timeout, ErrorName::DependencyTimeoutException),
            (
                HsmError::Unavailable("x".into()),
                ErrorName::InternalException,
            ),
            (HsmError::Pkcs11(failure), ErrorName::InternalException),
            (HsmError::KeyAlreadyExists, ErrorName::InternalException),
        ];
        for (err, name) in cases {
            assert_eq!(XksError::from(err.clone()).name(), name, "{err:?}");
        }
    }

    #[test]
    fn internal_details_stay_out_of_the_message() {
        let err = HsmError::Pkcs11(Pkcs11Failure {
            function: Pkcs11Call::Function(Function::Encrypt),
            code: Pkcs11Code::Rv(RvError::DeviceError),
            tier: Tier::Device,
        });
        assert_eq!(err.to_string(), "C_Encrypt failed with CKR_DEVICE_ERROR");
        assert!(!XksError::from(err).message().contains("CKR_"));
    }
}
