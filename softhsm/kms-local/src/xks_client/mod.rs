//! Calls to the XKS proxy, made the way KMS makes them (XKS Proxy API spec v1.0.3): `POST
//! {XksProxyUriEndpoint}{XksProxyUriPath}/health` or `/keys/{XksKeyId}/{metadata|encrypt|
//! decrypt}`, JSON bodies with `requestMetadata`, SigV4 with service `kms-xks-proxy` and the
//! store's credential, HTTPS trusting the configured CA bundle (optionally with a client
//! certificate), and one deadline (250 ms by default) for connection, TLS, request and answer.
//!
//! Every answer is checked as KMS checks it: Encrypt must return a 12- or 16-byte IV, a 16-byte
//! tag, a ciphertext as long as the plaintext, metadata of at most 20 bytes and the SHA-256
//! CDIV we asked for, recomputed here independently of the proxy's code (spec Appendix C);
//! Decrypt must return a plaintext as long as the ciphertext. Anything else is
//! [`XksFailure::InvalidResponse`]. Plaintext and secrets are never logged.

mod transport;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::digest::{Context, SHA256};
use rustls::ClientConfig;
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

use crate::blob::{MAX_METADATA_LEN, XKS_TAG_LEN, XksParts};
use crate::protocol::b64;
pub use transport::parse_endpoint;

/// The SigV4 service name of XKS calls.
const SERVICE: &str = "kms-xks-proxy";
/// Largest proxy answer read; XKS answers are a few KiB at most.
const MAX_ANSWER: usize = 64 * 1024;

/// Where and as whom to call: one custom key store's connection settings.
pub struct Endpoint<'a> {
    /// `https://host[:port]`.
    pub uri_endpoint: &'a str,
    /// `[/prefix]/kms/xks/v1`.
    pub uri_path: &'a str,
    /// SigV4 access key id.
    pub access_key_id: &'a str,
    /// SigV4 secret.
    pub secret: &'a str,
}

/// `requestMetadata` of one call.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// The id returned to the SDK caller as `x-amzn-RequestId`.
    pub kms_request_id: String,
    /// The KMS operation, e.g. `GenerateDataKey`.
    pub kms_operation: String,
    /// The caller.
    pub aws_principal_arn: String,
    /// The KMS key (absent for health checks).
    pub kms_key_arn: Option<String>,
}

/// How a call failed, in the terms KMS distinguishes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum XksFailure {
    /// No TCP connection (refused, no route, unknown host) or a malformed endpoint.
    #[error("the proxy could not be reached: {0}")]
    Unreachable(String),
    /// The TLS handshake failed (untrusted certificate, wrong name, refused client cert).
    #[error("TLS with the proxy failed: {0}")]
    Tls(String),
    /// No complete answer within the deadline.
    #[error("the proxy did not answer in time")]
    TimedOut,
    /// 401 `AuthenticationFailedException`: the credential was refused.
    #[error("the proxy refused the SigV4 credential")]
    Authentication,
    /// 403 `AccessDeniedException`: an authorization policy refused the call.
    #[error("the proxy denied access")]
    AccessDenied,
    /// 404 `InvalidUriPathException`: no key store at this path.
    #[error("the proxy has no key store at this URI path")]
    InvalidUriPath,
    /// 404 `KeyNotFoundException`.
    #[error("the proxy does not know this key")]
    KeyNotFound,
    /// Every external key manager instance reports `UNAVAILABLE`.
    #[error("every external key manager instance is unavailable")]
    AllUnavailable,
    /// An answer that breaks the spec.
    #[error("invalid answer from the proxy: {0}")]
    InvalidResponse(String),
    /// Any other XKS error (`InvalidCiphertextException`, `InvalidStateException`, …).
    #[error("the proxy answered {status} {error_name}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The `errorName`.
        error_name: String,
    },
}

/// What GetKeyMetadata reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMetadata {
    /// e.g. `AES_256`.
    pub key_spec: String,
    /// e.g. `["ENCRYPT", "DECRYPT"]`.
    pub key_usage: Vec<String>,
    /// `ENABLED` or `DISABLED`.
    pub key_status: String,
}

/// The HTTPS client to XKS proxies.
#[derive(Clone)]
pub struct XksClient {
    tls: TlsConnector,
    region: String,
    timeout: Duration,
}

impl XksClient {
    /// A client trusting `tls`'s roots, signing for `region`, with a per-call deadline.
    pub fn new(tls: Arc<ClientConfig>, region: String, timeout: Duration) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            region,
            timeout,
        }
    }

    /// GetHealthStatus; succeeds unless the answer is an error, malformed, or reports every
    /// external key manager instance unavailable.
    pub async fn health(&self, ep: &Endpoint<'_>, meta: &Metadata) -> Result<(), XksFailure> {
        let body = json!({ "requestMetadata": {
            "kmsRequestId": meta.kms_request_id,
            "kmsOperation": meta.kms_operation,
        }});
        let answer = self.call(ep, "/health", &body).await?;
        let fleet = answer
            .get("ekmFleetDetails")
            .and_then(Value::as_array)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| invalid("ekmFleetDetails missing or empty"))?;
        for field in ["xksProxyVendor", "xksProxyModel", "ekmVendor"] {
            answer
                .get(field)
                .and_then(Value::as_str)
                .ok_or_else(|| invalid(field))?;
        }
        answer
            .get("xksProxyFleetSize")
            .and_then(Value::as_u64)
            .filter(|n| *n > 0)
            .ok_or_else(|| invalid("xksProxyFleetSize"))?;
        let mut statuses = Vec::with_capacity(fleet.len());
        for member in fleet {
            let status = member
                .get("healthStatus")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("ekmFleetDetails[].healthStatus"))?;
            if !matches!(status, "ACTIVE" | "DEGRADED" | "UNAVAILABLE") {
                return Err(invalid("unknown healthStatus"));
            }
            statuses.push(status);
        }
        if statuses.iter().all(|s| *s == "UNAVAILABLE") {
            return Err(XksFailure::AllUnavailable);
        }
        Ok(())
    }

    /// GetKeyMetadata.
    pub async fn metadata(
        &self,
        ep: &Endpoint<'_>,
        key: &str,
        meta: &Metadata,
    ) -> Result<KeyMetadata, XksFailure> {
        let body = json!({ "requestMetadata": request_metadata(meta) });
        let answer = self
            .call(ep, &format!("/keys/{key}/metadata"), &body)
            .await?;
        let text = |name: &str| {
            answer
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| invalid(name))
        };
        let key_usage = answer
            .get("keyUsage")
            .and_then(Value::as_array)
            .and_then(|u| u.iter().map(|v| v.as_str().map(str::to_owned)).collect())
            .ok_or_else(|| invalid("keyUsage"))?;
        Ok(KeyMetadata {
            key_spec: text("keySpec")?,
            key_usage,
            key_status: text("keyStatus")?,
        })
    }

    /// Encrypt with `aad`, asking for and verifying the SHA-256 CDIV.
    pub async fn encrypt(
        &self,
        ep: &Endpoint<'_>,
        key: &str,
        plaintext: &[u8],
        aad: &[u8],
        meta: &Metadata,
    ) -> Result<XksParts, XksFailure> {
        let body = json!({
            "requestMetadata": request_metadata(meta),
            "plaintext": Zeroizing::new(b64(plaintext)).as_str(),
            "encryptionAlgorithm": "AES_GCM",
            "additionalAuthenticatedData": b64(aad),
            "ciphertextDataIntegrityValueAlgorithm": "SHA_256",
        });
        let answer = self
            .call(ep, &format!("/keys/{key}/encrypt"), &body)
            .await?;
        let parts = XksParts {
            ciphertext: field_b64(&answer, "ciphertext")?,
            metadata: optional_b64(&answer, "ciphertextMetadata")?.unwrap_or_default(),
            iv: field_b64(&answer, "initializationVector")?,
            tag: field_b64(&answer, "authenticationTag")?,
        };
        if parts.iv.len() != 12 && parts.iv.len() != 16 {
            return Err(invalid("initializationVector is neither 12 nor 16 bytes"));
        }
        if parts.tag.len() != XKS_TAG_LEN {
            return Err(invalid("authenticationTag is not 16 bytes"));
        }
        if parts.metadata.len() > MAX_METADATA_LEN {
            return Err(invalid("ciphertextMetadata is longer than 20 bytes"));
        }
        // AES-GCM: the ciphertext is exactly as long as the plaintext.
        if parts.ciphertext.len() != plaintext.len() {
            return Err(invalid("ciphertext length differs from the plaintext's"));
        }
        let cdiv = field_b64(&answer, "ciphertextDataIntegrityValue")?;
        if cdiv != cdiv_sha256(aad, &parts) {
            return Err(invalid("ciphertextDataIntegrityValue does not match"));
        }
        Ok(parts)
    }

    /// Decrypt with `aad`; the plaintext is zeroized on drop.
    pub async fn decrypt(
        &self,
        ep: &Endpoint<'_>,
        key: &str,
        parts: &XksParts,
        aad: &[u8],
        meta: &Metadata,
    ) -> Result<Zeroizing<Vec<u8>>, XksFailure> {
        let mut body = json!({
            "requestMetadata": request_metadata(meta),
            "ciphertext": b64(&parts.ciphertext),
            "encryptionAlgorithm": "AES_GCM",
            "initializationVector": b64(&parts.iv),
            "authenticationTag": b64(&parts.tag),
            "additionalAuthenticatedData": b64(aad),
        });
        if !parts.metadata.is_empty() {
            body["ciphertextMetadata"] = Value::String(b64(&parts.metadata));
        }
        let answer = self
            .call(ep, &format!("/keys/{key}/decrypt"), &body)
            .await?;
        let plaintext = answer
            .get("plaintext")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("plaintext"))?;
        let plaintext = STANDARD
            .decode(plaintext)
            .map(Zeroizing::new)
            .map_err(|_| invalid("plaintext is not Base64"))?;
        if plaintext.len() != parts.ciphertext.len() {
            return Err(invalid("plaintext length differs from the ciphertext's"));
        }
        Ok(plaintext)
    }
}

fn request_metadata(meta: &Metadata) -> Value {
    let mut out = json!({
        "kmsRequestId": meta.kms_request_id,
        "kmsOperation": meta.kms_operation,
        "awsPrincipalArn": meta.aws_principal_arn,
    });
    if let Some(arn) = &meta.kms_key_arn {
        out["kmsKeyArn"] = Value::String(arn.clone());
    }
    out
}

/// `SHA-256(aad ‖ metadata ‖ iv ‖ ciphertext ‖ tag)` (spec Appendix C).
fn cdiv_sha256(aad: &[u8], parts: &XksParts) -> Vec<u8> {
    let mut hash = Context::new(&SHA256);
    for part in [
        aad,
        &parts.metadata[..],
        &parts.iv[..],
        &parts.ciphertext[..],
        &parts.tag[..],
    ] {
        hash.update(part);
    }
    hash.finish().as_ref().to_vec()
}

fn invalid(what: &str) -> XksFailure {
    XksFailure::InvalidResponse(what.to_owned())
}

fn optional_b64(answer: &Value, name: &str) -> Result<Option<Vec<u8>>, XksFailure> {
    match answer.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => STANDARD
            .decode(s)
            .map(Some)
            .map_err(|_| invalid(&format!("{name} is not Base64"))),
        Some(_) => Err(invalid(&format!("{name} is not a string"))),
    }
}

fn field_b64(answer: &Value, name: &str) -> Result<Vec<u8>, XksFailure> {
    optional_b64(answer, name)?.ok_or_else(|| invalid(&format!("{name} missing")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cdiv_is_the_spec_concatenation() {
        // Appendix C: no length prefixes; the same bytes split differently hash alike.
        let parts = XksParts {
            metadata: vec![1],
            iv: vec![2; 12],
            tag: vec![4; 16],
            ciphertext: vec![3; 5],
        };
        let mut all = b"aad".to_vec();
        all.push(1);
        all.extend([2; 12]);
        all.extend([3; 5]);
        all.extend([4; 16]);
        assert_eq!(
            cdiv_sha256(b"aad", &parts),
            ring::digest::digest(&SHA256, &all).as_ref()
        );
    }
}
