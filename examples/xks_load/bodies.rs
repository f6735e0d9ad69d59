//! KMS-like JSON request bodies (XKS spec §4.1–§4.3 request shapes). Each body is a
//! [`BodyTemplate`]: everything around the `kmsRequestId`, so a worker only formats the id.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// A request body as `prefix + JSON-encoded kmsRequestId + suffix`.
pub(crate) struct BodyTemplate {
    /// The body up to `"kmsRequestId":`.
    prefix: String,
    /// What follows the id: the end of `requestMetadata` and the operation's fields.
    suffix: String,
}

impl BodyTemplate {
    /// The body with `request_id` as its `kmsRequestId`.
    pub(crate) fn render(&self, request_id: &str) -> String {
        format!("{}{}{}", self.prefix, json_str(request_id), self.suffix)
    }

    /// An Encrypt body for `plaintext`, with `aad` as AAD unless it is empty.
    pub(crate) fn encrypt(plaintext: &[u8], aad: &[u8]) -> Self {
        let mut suffix = format!(
            "}},\"plaintext\":\"{}\",\"encryptionAlgorithm\":\"AES_GCM\"",
            B64.encode(plaintext)
        );
        push_aad(&mut suffix, aad);
        suffix.push('}');
        Self {
            prefix: metadata_prefix("Encrypt"),
            suffix,
        }
    }

    /// A Decrypt body for the result of an Encrypt (its parsed reply) with the same `aad`.
    pub(crate) fn decrypt(encrypt_reply: &serde_json::Value, aad: &[u8]) -> Result<Self, String> {
        let field = |name: &str| {
            encrypt_reply[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("setup Encrypt reply has no {name}"))
        };
        let mut suffix = format!(
            "}},\"ciphertext\":{},\"initializationVector\":{},\"authenticationTag\":{},\
             \"encryptionAlgorithm\":\"AES_GCM\"",
            json_str(&field("ciphertext")?),
            json_str(&field("initializationVector")?),
            json_str(&field("authenticationTag")?)
        );
        if let Some(metadata) = encrypt_reply["ciphertextMetadata"].as_str() {
            let _ = write!(suffix, ",\"ciphertextMetadata\":{}", json_str(metadata));
        }
        push_aad(&mut suffix, aad);
        suffix.push('}');
        Ok(Self {
            prefix: metadata_prefix("Decrypt"),
            suffix,
        })
    }

    /// A GetKeyMetadata body.
    pub(crate) fn metadata() -> Self {
        Self {
            prefix: metadata_prefix("DescribeKey"),
            suffix: "}}".into(),
        }
    }

    /// A health-check body.
    pub(crate) fn health() -> Self {
        Self {
            prefix: "{\"requestMetadata\":{\"kmsOperation\":\"KmsHealthCheck\",\"kmsRequestId\":"
                .into(),
            suffix: "}}".into(),
        }
    }
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The body up to `"kmsRequestId":`; the caller appends the JSON-encoded id, then the suffix
/// that closes `requestMetadata` and adds the operation's fields.
fn metadata_prefix(operation: &str) -> String {
    format!(
        "{{\"requestMetadata\":{{\"awsPrincipalArn\":\"arn:aws:iam::123456789012:user/xks-load\",\
         \"kmsKeyArn\":\"arn:aws:kms:us-east-1:123456789012:key/xks-load\",\
         \"kmsOperation\":{},\"kmsViaService\":\"ebs\",\"kmsRequestId\":",
        json_str(operation)
    )
}

/// Appends `,"additionalAuthenticatedData":"…"` unless `aad` is empty (then none is sent).
fn push_aad(suffix: &mut String, aad: &[u8]) {
    if !aad.is_empty() {
        let _ = write!(
            suffix,
            ",\"additionalAuthenticatedData\":\"{}\"",
            B64.encode(aad)
        );
    }
}
