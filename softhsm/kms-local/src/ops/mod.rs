//! The KMS operations: dispatch by `X-Amz-Target`, the shared context of one call, key
//! resolution and key states, and how XKS failures become KMS exceptions.
//!
//! | module | operations |
//! |---|---|
//! | [`stores`] | CreateCustomKeyStore, ConnectCustomKeyStore, DisconnectCustomKeyStore, UpdateCustomKeyStore, DescribeCustomKeyStores, DeleteCustomKeyStore |
//! | [`keys`] | CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey |
//! | [`crypto`] | Encrypt, Decrypt, GenerateDataKey, GenerateDataKeyWithoutPlaintext, ReEncrypt |

pub mod crypto;
pub mod keys;
pub mod stores;

use serde_json::Value;

use crate::config::Settings;
use crate::error::{ErrorName, KmsError};
use crate::protocol::Input;
use crate::state::{ConnectionState, CustomKeyStore, Db, Key, KeyOrigin, State, StateError};
use crate::xks_client::{Endpoint, Metadata, XksClient, XksFailure};

/// Everything an operation works with; built once at startup.
pub struct Front {
    /// Stores and keys.
    pub db: Db,
    /// The client to XKS proxies.
    pub xks: XksClient,
    /// Region, account, inbound credential.
    pub settings: Settings,
}

/// One inbound call: the front, its request id and the operation name.
pub struct Call<'a> {
    /// The front.
    pub front: &'a Front,
    /// `x-amzn-RequestId` of the answer, sent to the proxy as `kmsRequestId`.
    pub request_id: &'a str,
    /// The KMS operation, sent to the proxy as `kmsOperation`.
    pub operation: &'a str,
}

impl From<StateError> for KmsError {
    fn from(err: StateError) -> Self {
        Self::internal(&err)
    }
}

/// Runs `operation` (the part of `X-Amz-Target` after `TrentService.`).
pub async fn dispatch(call: &Call<'_>, input: &Input) -> Result<Value, KmsError> {
    match call.operation {
        "CreateCustomKeyStore" => stores::create(call, input).await,
        "ConnectCustomKeyStore" => stores::connect(call, input).await,
        "DisconnectCustomKeyStore" => stores::disconnect(call, input).await,
        "UpdateCustomKeyStore" => stores::update(call, input).await,
        "DescribeCustomKeyStores" => stores::describe(call, input).await,
        "DeleteCustomKeyStore" => stores::delete(call, input).await,
        "CreateKey" => keys::create(call, input).await,
        "DescribeKey" => keys::describe(call, input).await,
        "ListKeys" => keys::list(call, input).await,
        "EnableKey" => keys::set_enabled(call, input, true).await,
        "DisableKey" => keys::set_enabled(call, input, false).await,
        "Encrypt" => crypto::encrypt(call, input).await,
        "Decrypt" => crypto::decrypt(call, input).await,
        "GenerateDataKey" => crypto::generate_data_key(call, input, true).await,
        "GenerateDataKeyWithoutPlaintext" => crypto::generate_data_key(call, input, false).await,
        "ReEncrypt" => crypto::re_encrypt(call, input).await,
        other => Err(KmsError::new(
            ErrorName::UnknownOperation,
            format!("xks-kms-local does not implement {other}"),
        )),
    }
}

impl Call<'_> {
    /// `requestMetadata` for a call about `key` (none for health checks).
    fn metadata(&self, key: Option<&Key>) -> Metadata {
        Metadata {
            kms_request_id: self.request_id.to_owned(),
            kms_operation: self.operation.to_owned(),
            aws_principal_arn: self.front.settings.principal_arn(),
            kms_key_arn: key.map(|k| self.front.settings.key_arn(&k.id)),
        }
    }

    /// Logs a failed XKS call once, with the request id; the failure carries no secrets.
    fn log_failure(&self, failure: &XksFailure) {
        tracing::warn!(
            kms_request_id = self.request_id,
            operation = self.operation,
            %failure,
            "XKS proxy call failed"
        );
    }
}

/// The proxy endpoint of a store.
fn endpoint(store: &CustomKeyStore) -> Endpoint<'_> {
    Endpoint {
        uri_endpoint: &store.uri_endpoint,
        uri_path: &store.uri_path,
        access_key_id: &store.access_key_id,
        secret: &store.secret,
    }
}

/// Finds a key by id or key ARN. Aliases are not implemented (`NotFoundException`).
pub fn resolve_key<'s>(
    state: &'s State,
    settings: &Settings,
    key_id: &str,
) -> Result<&'s Key, KmsError> {
    let id = match key_id.strip_prefix("arn:aws:kms:") {
        Some(rest) => {
            let prefix = format!("{}:{}:key/", settings.region, settings.account_id);
            rest.strip_prefix(prefix.as_str())
                .ok_or_else(|| KmsError::not_found(format!("Invalid arn {key_id}")))?
        }
        None if key_id.starts_with("alias/") => {
            return Err(KmsError::not_found(format!(
                "Alias {key_id} is not found (xks-kms-local has no aliases)"
            )));
        }
        None => key_id,
    };
    state.keys.get(id).ok_or_else(|| {
        KmsError::not_found(format!("Key '{}' does not exist", settings.key_arn(id)))
    })
}

/// `KeyState`: an external key whose store is not connected is `Unavailable`, whatever its
/// enabled flag (as in KMS).
pub fn key_state(state: &State, key: &Key) -> &'static str {
    let store_connected = key
        .custom_key_store_id
        .as_ref()
        .and_then(|id| state.stores.get(id))
        .is_some_and(|s| s.state == ConnectionState::Connected);
    match (key.origin, store_connected, key.enabled) {
        (KeyOrigin::ExternalKeyStore, false, _) => "Unavailable",
        (_, _, true) => "Enabled",
        (_, _, false) => "Disabled",
    }
}

/// The exception of a failed health check in Create/UpdateCustomKeyStore.
fn health_exception(failure: &XksFailure) -> KmsError {
    use ErrorName as E;
    let name = match failure {
        XksFailure::Unreachable(_) | XksFailure::TimedOut | XksFailure::AllUnavailable => {
            E::XksProxyUriUnreachable
        }
        XksFailure::Refused { status, .. } if *status >= 500 => E::XksProxyUriUnreachable,
        XksFailure::Authentication => E::XksProxyIncorrectAuthenticationCredential,
        XksFailure::Tls(_) | XksFailure::AccessDenied | XksFailure::InvalidUriPath => {
            E::XksProxyInvalidConfiguration
        }
        XksFailure::InvalidResponse(_) | XksFailure::KeyNotFound | XksFailure::Refused { .. } => {
            E::XksProxyInvalidResponse
        }
    };
    KmsError::new(name, failure.to_string())
}

/// The `ConnectionErrorCode` of a failed ConnectCustomKeyStore.
fn connection_error_code(failure: &XksFailure) -> &'static str {
    match failure {
        XksFailure::Unreachable(_) | XksFailure::AllUnavailable => "XKS_PROXY_NOT_REACHABLE",
        XksFailure::Refused { status, .. } if *status >= 500 => "XKS_PROXY_NOT_REACHABLE",
        XksFailure::TimedOut => "XKS_PROXY_TIMED_OUT",
        XksFailure::Tls(_) => "XKS_PROXY_INVALID_TLS_CONFIGURATION",
        XksFailure::Authentication => "INVALID_CREDENTIALS",
        XksFailure::AccessDenied => "XKS_PROXY_ACCESS_DENIED",
        XksFailure::InvalidUriPath => "XKS_PROXY_INVALID_CONFIGURATION",
        XksFailure::InvalidResponse(_) | XksFailure::KeyNotFound | XksFailure::Refused { .. } => {
            "XKS_PROXY_INVALID_RESPONSE"
        }
    }
}

/// The exception of a failed Encrypt/Decrypt call: a ciphertext the HSM refuses is
/// `InvalidCiphertextException`; every other failure is KMS's general
/// `KMSInvalidStateException` for keys in custom key stores, with the reason in the message.
fn crypto_exception(failure: &XksFailure) -> KmsError {
    match failure {
        XksFailure::Refused { error_name, .. } if error_name == "InvalidCiphertextException" => {
            KmsError::new(
                ErrorName::InvalidCiphertext,
                "The external key store proxy rejected the ciphertext or its context",
            )
        }
        other => KmsError::new(
            ErrorName::KmsInvalidState,
            format!("The external key store proxy call failed: {other}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_an_exception_and_a_code() {
        let cases = [
            (
                XksFailure::Unreachable("x".into()),
                "XksProxyUriUnreachableException",
                "XKS_PROXY_NOT_REACHABLE",
            ),
            (
                XksFailure::TimedOut,
                "XksProxyUriUnreachableException",
                "XKS_PROXY_TIMED_OUT",
            ),
            (
                XksFailure::AllUnavailable,
                "XksProxyUriUnreachableException",
                "XKS_PROXY_NOT_REACHABLE",
            ),
            (
                XksFailure::Authentication,
                "XksProxyIncorrectAuthenticationCredentialException",
                "INVALID_CREDENTIALS",
            ),
            (
                XksFailure::Tls("x".into()),
                "XksProxyInvalidConfigurationException",
                "XKS_PROXY_INVALID_TLS_CONFIGURATION",
            ),
            (
                XksFailure::AccessDenied,
                "XksProxyInvalidConfigurationException",
                "XKS_PROXY_ACCESS_DENIED",
            ),
            (
                XksFailure::InvalidUriPath,
                "XksProxyInvalidConfigurationException",
                "XKS_PROXY_INVALID_CONFIGURATION",
            ),
            (
                XksFailure::InvalidResponse("x".into()),
                "XksProxyInvalidResponseException",
                "XKS_PROXY_INVALID_RESPONSE",
            ),
        ];
        for (failure, exception, code) in cases {
            assert_eq!(
                health_exception(&failure).name.as_str(),
                exception,
                "{failure}"
            );
            assert_eq!(connection_error_code(&failure), code, "{failure}");
        }
        let refused = XksFailure::Refused {
            status: 400,
            error_name: "InvalidCiphertextException".into(),
        };
        assert_eq!(
            crypto_exception(&refused).name,
            ErrorName::InvalidCiphertext
        );
        assert_eq!(
            crypto_exception(&XksFailure::TimedOut).name,
            ErrorName::KmsInvalidState
        );
    }
}
