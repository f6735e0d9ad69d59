//! KMS errors as the JSON 1.1 protocol carries them: HTTP 400 (500 for
//! `KMSInternalException`) with `{"__type": "<Name>", "message": "…"}`. botocore raises the
//! exception class named by `__type`; the JavaScript SDK v3 does the same.
//!
//! Messages are fixed text plus identifiers the caller sent; never plaintext, keys or secrets.

use std::fmt;

/// The `__type` of a KMS error; only the ones this front produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorName {
    /// A cryptographic operation's ciphertext is malformed or does not authenticate.
    InvalidCiphertext,
    /// The blob names another key than the `KeyId` given.
    IncorrectKey,
    /// The operation is not allowed for this key's usage or algorithm.
    InvalidKeyUsage,
    /// The key is disabled.
    Disabled,
    /// The key's state (e.g. `Unavailable`) or its key store does not allow the operation.
    KmsInvalidState,
    /// A bug or an I/O failure in this front.
    KmsInternal,
    /// The key or alias does not exist.
    NotFound,
    /// A parameter is missing or malformed.
    Validation,
    /// The body is not a JSON object.
    Serialization,
    /// `X-Amz-Target` names no operation this front implements.
    UnknownOperation,
    /// A feature of real KMS this front does not implement (CloudHSM stores, asymmetric keys).
    UnsupportedOperation,
    /// Unknown access key id (inbound SigV4).
    UnrecognizedClient,
    /// Wrong signature (inbound SigV4).
    InvalidSignature,
    /// No `Authorization` header (inbound SigV4).
    MissingAuthenticationToken,
    /// A malformed `Authorization` header (inbound SigV4).
    IncompleteSignature,
    /// No custom key store with that id or name.
    CustomKeyStoreNotFound,
    /// Another custom key store has that name.
    CustomKeyStoreNameInUse,
    /// The store's `ConnectionState` does not allow the operation.
    CustomKeyStoreInvalidState,
    /// The store still holds KMS keys.
    CustomKeyStoreHasCmks,
    /// Another store uses the same endpoint and path.
    XksProxyUriInUse,
    /// The proxy could not be reached, timed out, or reports every HSM unavailable.
    XksProxyUriUnreachable,
    /// The proxy refused the store's SigV4 credential.
    XksProxyIncorrectAuthenticationCredential,
    /// The proxy's answer could not be interpreted.
    XksProxyInvalidResponse,
    /// The proxy refused the path, the TLS configuration or the access.
    XksProxyInvalidConfiguration,
    /// The proxy does not know the `XksKeyId`.
    XksKeyNotFound,
    /// The external key is not AES-256, lacks ENCRYPT or DECRYPT, or is disabled.
    XksKeyInvalidConfiguration,
    /// Another KMS key of the store uses the same `XksKeyId`.
    XksKeyAlreadyInUse,
}

impl ErrorName {
    /// The wire name, as botocore's model spells the exception shape.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidCiphertext => "InvalidCiphertextException",
            Self::IncorrectKey => "IncorrectKeyException",
            Self::InvalidKeyUsage => "InvalidKeyUsageException",
            Self::Disabled => "DisabledException",
            Self::KmsInvalidState => "KMSInvalidStateException",
            Self::KmsInternal => "KMSInternalException",
            Self::NotFound => "NotFoundException",
            Self::Validation => "ValidationException",
            Self::Serialization => "SerializationException",
            Self::UnknownOperation => "UnknownOperationException",
            Self::UnsupportedOperation => "UnsupportedOperationException",
            Self::UnrecognizedClient => "UnrecognizedClientException",
            Self::InvalidSignature => "InvalidSignatureException",
            Self::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            Self::IncompleteSignature => "IncompleteSignatureException",
            Self::CustomKeyStoreNotFound => "CustomKeyStoreNotFoundException",
            Self::CustomKeyStoreNameInUse => "CustomKeyStoreNameInUseException",
            Self::CustomKeyStoreInvalidState => "CustomKeyStoreInvalidStateException",
            Self::CustomKeyStoreHasCmks => "CustomKeyStoreHasCMKsException",
            Self::XksProxyUriInUse => "XksProxyUriInUseException",
            Self::XksProxyUriUnreachable => "XksProxyUriUnreachableException",
            Self::XksProxyIncorrectAuthenticationCredential => {
                "XksProxyIncorrectAuthenticationCredentialException"
            }
            Self::XksProxyInvalidResponse => "XksProxyInvalidResponseException",
            Self::XksProxyInvalidConfiguration => "XksProxyInvalidConfigurationException",
            Self::XksKeyNotFound => "XksKeyNotFoundException",
            Self::XksKeyInvalidConfiguration => "XksKeyInvalidConfigurationException",
            Self::XksKeyAlreadyInUse => "XksKeyAlreadyInUseException",
        }
    }

    /// 500 for an internal error, 400 for everything else (as KMS answers).
    pub fn status(self) -> u16 {
        match self {
            Self::KmsInternal => 500,
            _ => 400,
        }
    }
}

/// A KMS error: the `__type` and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsError {
    /// The exception.
    pub name: ErrorName,
    /// The `message` field.
    pub message: String,
}

impl KmsError {
    /// An error with a message.
    pub fn new(name: ErrorName, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
        }
    }

    /// `ValidationException`.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorName::Validation, message)
    }

    /// `NotFoundException`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorName::NotFound, message)
    }

    /// `KMSInternalException`; the detail is logged here once and never sent.
    pub fn internal(detail: &dyn fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(ErrorName::KmsInternal, "internal error in xks-kms-local")
    }

    /// `CustomKeyStoreNotFoundException` for an id.
    pub fn store_not_found(id: &str) -> Self {
        Self::new(
            ErrorName::CustomKeyStoreNotFound,
            format!("Custom key store '{id}' does not exist"),
        )
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name.as_str(), self.message)
    }
}

impl std::error::Error for KmsError {}
