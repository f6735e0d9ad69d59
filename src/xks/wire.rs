//! Request and response bodies of the four XKS APIs (spec §"GetKeyMetadata", "Encrypt",
//! "Decrypt", "GetHealthStatus"; checklist G-1…9).
//!
//! Requests are read field by field: the body is split into the raw JSON text of the fields
//! the XKS APIs define (no tree of `Value`s is built, and unknown fields are skipped, G-5), and
//! each field is then checked on its own, so that every problem gets its own
//! `ValidationException` message without echoing input (ERR-2). An explicit `null` counts as
//! absent (G-8), a field given twice is refused (which of two values counts would otherwise
//! be up to the reader), and `kmsOperation`/`kmsRequestId` are never validated beyond their
//! type (G-3, G-4).
//! Structs holding plaintext have hand-written `Debug` impls that redact it (LOG-2).

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use zeroize::Zeroizing;

use super::XksError;

/// The only `encryptionAlgorithm` of XKS v1 (E-3, D-4).
pub const AES_GCM: &str = "AES_GCM";
/// The only `ciphertextDataIntegrityValueAlgorithm` of XKS v1 (E-5).
pub const SHA_256: &str = "SHA_256";

/// `requestMetadata`: context for audit logs and authorization (G-1, G-2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMetadata {
    /// Opaque; correlates with CloudTrail (G-3).
    pub kms_request_id: String,
    /// Never rejected for an unlisted value (G-4).
    pub kms_operation: String,
    /// The caller (required except for health).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_principal_arn: Option<String>,
    /// The KMS key (required for Encrypt and Decrypt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,
    /// The AWS service that called KMS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_via_service: Option<String>,
    /// Present when the call came through a VPC endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_source_vpc: Option<String>,
    /// Present when the call came through a VPC endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_source_vpce: Option<String>,
}

/// Which `requestMetadata` fields an API requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Required {
    Health,
    KeyMetadata,
    Crypto,
}

/// A parsed GetKeyMetadata request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMetadataRequest {
    /// Request metadata.
    pub metadata: RequestMetadata,
}

/// A parsed GetHealthStatus request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRequest {
    /// Request metadata.
    pub metadata: RequestMetadata,
}

/// A parsed Encrypt request, Base64 already decoded.
pub struct EncryptRequest {
    /// Request metadata.
    pub metadata: RequestMetadata,
    /// Plaintext bytes; never logged (E-2).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Raw request AAD (empty when absent, G-9).
    pub aad: Vec<u8>,
    /// Whether the response must carry a SHA-256 CDIV (E-5).
    pub want_cdiv: bool,
}

impl fmt::Debug for EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("metadata", &self.metadata)
            .field("plaintext_len", &self.plaintext.len())
            .field("aad_len", &self.aad.len())
            .field("want_cdiv", &self.want_cdiv)
            .finish()
    }
}

/// A parsed Decrypt request, Base64 already decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct DecryptRequest {
    /// Request metadata.
    pub metadata: RequestMetadata,
    /// Ciphertext without the tag.
    pub ciphertext: Vec<u8>,
    /// `ciphertextMetadata` (empty when absent).
    pub ciphertext_metadata: Vec<u8>,
    /// Raw request AAD (empty when absent).
    pub aad: Vec<u8>,
    /// Whether the request carried `additionalAuthenticatedData` at all, even empty: the spec's
    /// AAD does not tell (AAD-2), but AWS's sample proxy framed the two differently.
    pub aad_present: bool,
    /// The IV as sent; its length is checked by the caller (D-6).
    pub iv: Vec<u8>,
    /// The tag as sent; its length is checked by the caller (D-7).
    pub tag: Vec<u8>,
}

impl fmt::Debug for DecryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptRequest")
            .field("metadata", &self.metadata)
            .field("ciphertext_len", &self.ciphertext.len())
            .field("ciphertext_metadata_len", &self.ciphertext_metadata.len())
            .field("aad_len", &self.aad.len())
            .field("iv_len", &self.iv.len())
            .field("tag_len", &self.tag.len())
            .finish()
    }
}

impl KeyMetadataRequest {
    /// Parses a GetKeyMetadata body.
    pub fn parse(body: &[u8]) -> Result<Self, XksError> {
        let root = Root::parse(body)?;
        Ok(Self {
            metadata: request_metadata(&root, Required::KeyMetadata)?,
        })
    }
}

impl HealthRequest {
    /// Parses a GetHealthStatus body; `{}` and `{"requestMetadata":{}}` are invalid (H-18).
    pub fn parse(body: &[u8]) -> Result<Self, XksError> {
        let root = Root::parse(body)?;
        Ok(Self {
            metadata: request_metadata(&root, Required::Health)?,
        })
    }
}

impl EncryptRequest {
    /// Parses an Encrypt body.
    pub fn parse(body: &[u8]) -> Result<Self, XksError> {
        let root = Root::parse(body)?;
        let metadata = request_metadata(&root, Required::Crypto)?;
        expect_algorithm(&root)?;
        let plaintext = Zeroizing::new(required_b64(root.plaintext, "plaintext")?);
        let aad = optional_b64(
            root.additional_authenticated_data,
            "additionalAuthenticatedData",
        )?
        .unwrap_or_default();
        let cdiv = optional_str(
            root.ciphertext_data_integrity_value_algorithm,
            "ciphertextDataIntegrityValueAlgorithm",
        )?;
        let want_cdiv = match cdiv.as_deref() {
            None => false,
            Some(SHA_256) => true,
            Some(_) => {
                return Err(XksError::validation(
                    "ciphertextDataIntegrityValueAlgorithm must be SHA_256",
                ));
            }
        };
        Ok(Self {
            metadata,
            plaintext,
            aad,
            want_cdiv,
        })
    }
}

impl DecryptRequest {
    /// Parses a Decrypt body.
    pub fn parse(body: &[u8]) -> Result<Self, XksError> {
        let root = Root::parse(body)?;
        let metadata = request_metadata(&root, Required::Crypto)?;
        expect_algorithm(&root)?;
        let aad = optional_b64(
            root.additional_authenticated_data,
            "additionalAuthenticatedData",
        )?;
        Ok(Self {
            metadata,
            ciphertext: required_b64(root.ciphertext, "ciphertext")?,
            ciphertext_metadata: optional_b64(root.ciphertext_metadata, "ciphertextMetadata")?
                .unwrap_or_default(),
            aad_present: aad.is_some(),
            aad: aad.unwrap_or_default(),
            iv: required_b64(root.initialization_vector, "initializationVector")?,
            tag: required_b64(root.authentication_tag, "authenticationTag")?,
        })
    }
}

/// GetKeyMetadata 200 body (K-1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyMetadataResponse {
    /// e.g. `AES_256`.
    pub key_spec: String,
    /// Uppercase usages, at most 10 (K-5).
    pub key_usage: Vec<String>,
    /// `ENABLED` or `DISABLED`.
    pub key_status: String,
}

/// Encrypt 200 body; absent optional fields are omitted, never `null` (E-6).
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptResponse {
    /// Base64 ciphertext.
    pub ciphertext: String,
    /// Base64 vendor metadata (≤ 20 bytes decoded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext_metadata: Option<String>,
    /// Base64 IV.
    pub initialization_vector: String,
    /// Base64 tag.
    pub authentication_tag: String,
    /// Base64 SHA-256 CDIV, when requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ciphertext_data_integrity_value: Option<String>,
}

/// Decrypt 200 body. `Debug` redacts the plaintext (D-9).
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct DecryptResponse {
    /// Base64 plaintext.
    pub plaintext: Zeroizing<String>,
}

impl fmt::Debug for DecryptResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DecryptResponse { plaintext: <redacted> }")
    }
}

/// GetHealthStatus 200 body (H-6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthResponse {
    /// A JSON integer > 0 (H-7).
    pub xks_proxy_fleet_size: u32,
    /// Our vendor name.
    pub xks_proxy_vendor: String,
    /// Product name and version (H-9).
    pub xks_proxy_model: String,
    /// The HSM vendor.
    pub ekm_vendor: String,
    /// 1–10 entries (H-12).
    pub ekm_fleet_details: Vec<EkmFleetMember>,
}

/// One `ekmFleetDetails` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EkmFleetMember {
    /// Unique within the fleet (H-10).
    pub id: String,
    /// Model and versions (H-9).
    pub model: String,
    /// `ACTIVE`, `DEGRADED` or `UNAVAILABLE` (H-11).
    pub health_status: String,
}

/// Standard, padded Base64 (G-6).
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The raw JSON text of each top-level field an XKS request may carry (absent or `null`:
/// `None`); every other field is skipped without being built.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Root<'a> {
    #[serde(borrow)]
    request_metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    encryption_algorithm: Option<&'a RawValue>,
    #[serde(borrow)]
    plaintext: Option<&'a RawValue>,
    #[serde(borrow)]
    additional_authenticated_data: Option<&'a RawValue>,
    #[serde(borrow)]
    ciphertext_data_integrity_value_algorithm: Option<&'a RawValue>,
    #[serde(borrow)]
    ciphertext: Option<&'a RawValue>,
    #[serde(borrow)]
    ciphertext_metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    initialization_vector: Option<&'a RawValue>,
    #[serde(borrow)]
    authentication_tag: Option<&'a RawValue>,
}

/// The raw JSON text of each `requestMetadata` field.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataFields<'a> {
    #[serde(borrow)]
    kms_request_id: Option<&'a RawValue>,
    #[serde(borrow)]
    kms_operation: Option<&'a RawValue>,
    #[serde(borrow)]
    aws_principal_arn: Option<&'a RawValue>,
    #[serde(borrow)]
    kms_key_arn: Option<&'a RawValue>,
    #[serde(borrow)]
    kms_via_service: Option<&'a RawValue>,
    #[serde(borrow)]
    aws_source_vpc: Option<&'a RawValue>,
    #[serde(borrow)]
    aws_source_vpce: Option<&'a RawValue>,
}

impl<'a> Root<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, XksError> {
        // The whole body, skipped fields included, must be UTF-8 (RFC 8259 §8.1): fields that
        // are skipped are not otherwise decoded.
        let body = std::str::from_utf8(body)
            .map_err(|_| XksError::validation("the request body is not valid JSON"))?;
        // A derived struct would also accept a JSON array, field by position: only an object
        // may reach it.
        if !body.trim_start().starts_with('{') {
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(body) {
                Ok(_) => XksError::validation("the request body must be a JSON object"),
                Err(_) => XksError::validation("the request body is not valid JSON"),
            });
        }
        serde_json::from_str(body).map_err(|e| fields_error(&e, "the request body"))
    }
}

/// The error for an object whose fields could not be split out: not JSON, or a field twice.
fn fields_error(err: &serde_json::Error, what: &str) -> XksError {
    // serde's own message names the field, which is ours, never the input.
    if err.is_data() && err.to_string().starts_with("duplicate field") {
        XksError::validation(format!("{what} gives a field more than once"))
    } else {
        XksError::validation(format!("{what} is not valid JSON"))
    }
}

fn request_metadata(root: &Root<'_>, required: Required) -> Result<RequestMetadata, XksError> {
    let Some(raw) = root.request_metadata else {
        return Err(XksError::validation("requestMetadata is required"));
    };
    if !raw.get().starts_with('{') {
        return Err(XksError::validation(
            "requestMetadata must be a JSON object",
        ));
    }
    let meta: MetadataFields<'_> =
        serde_json::from_str(raw.get()).map_err(|e| fields_error(&e, "requestMetadata"))?;
    let field = |raw: Option<&RawValue>,
                 name: &'static str,
                 needed: bool|
     -> Result<Option<String>, XksError> {
        let value = raw.map(|raw| match as_str(raw)? {
            Some(s) => Ok(s.into_owned()),
            None => Err(XksError::validation(format!(
                "requestMetadata.{name} must be a string"
            ))),
        });
        match value.transpose()? {
            None if needed => Err(XksError::validation(format!(
                "requestMetadata.{name} is required"
            ))),
            value => Ok(value),
        }
    };
    let needs_principal = required != Required::Health;
    let needs_key_arn = required == Required::Crypto;
    Ok(RequestMetadata {
        kms_request_id: field(meta.kms_request_id, "kmsRequestId", true)?.unwrap_or_default(),
        kms_operation: field(meta.kms_operation, "kmsOperation", true)?.unwrap_or_default(),
        aws_principal_arn: field(meta.aws_principal_arn, "awsPrincipalArn", needs_principal)?,
        kms_key_arn: field(meta.kms_key_arn, "kmsKeyArn", needs_key_arn)?,
        kms_via_service: field(meta.kms_via_service, "kmsViaService", false)?,
        aws_source_vpc: field(meta.aws_source_vpc, "awsSourceVpc", false)?,
        aws_source_vpce: field(meta.aws_source_vpce, "awsSourceVpce", false)?,
    })
}

/// The string `raw` holds (borrowed unless it has escapes); `None` if it is not a string.
fn as_str(raw: &RawValue) -> Result<Option<Cow<'_, str>>, XksError> {
    if !raw.get().starts_with('"') {
        return Ok(None);
    }
    // Only escapes need the owned form. A string that does not decode (a lone UTF-16
    // surrogate escape) is malformed JSON, not a wrong type.
    match serde_json::from_str::<&str>(raw.get()) {
        Ok(s) => Ok(Some(Cow::Borrowed(s))),
        Err(_) => serde_json::from_str::<String>(raw.get())
            .map(|s| Some(Cow::Owned(s)))
            .map_err(|_| XksError::validation("the request body is not valid JSON")),
    }
}

fn optional_str<'a>(
    raw: Option<&'a RawValue>,
    name: &'static str,
) -> Result<Option<Cow<'a, str>>, XksError> {
    raw.map(|raw| {
        as_str(raw)?.ok_or_else(|| XksError::validation(format!("{name} must be a string")))
    })
    .transpose()
}

fn expect_algorithm(root: &Root<'_>) -> Result<(), XksError> {
    match optional_str(root.encryption_algorithm, "encryptionAlgorithm")?.as_deref() {
        Some(AES_GCM) => Ok(()),
        Some(_) => Err(XksError::validation("encryptionAlgorithm must be AES_GCM")),
        None => Err(XksError::validation("encryptionAlgorithm is required")),
    }
}

fn optional_b64(raw: Option<&RawValue>, name: &'static str) -> Result<Option<Vec<u8>>, XksError> {
    optional_str(raw, name)?
        .map(|s| {
            STANDARD
                .decode(s.as_bytes())
                .map_err(|_| XksError::validation(format!("{name} is not valid standard Base64")))
        })
        .transpose()
}

fn required_b64(raw: Option<&RawValue>, name: &'static str) -> Result<Vec<u8>, XksError> {
    optional_b64(raw, name)?.ok_or_else(|| XksError::validation(format!("{name} is required")))
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
