//! The KMS wire protocol: AWS JSON 1.1 (`POST /`, `X-Amz-Target: TrentService.<Operation>`,
//! `Content-Type: application/x-amz-json-1.1`), blobs as standard Base64, timestamps as
//! epoch-second numbers, and every answer carrying `x-amzn-RequestId`.
//!
//! Requests are read field by field ([`Input`]) so that each problem gets its own
//! `ValidationException`, as KMS answers, and unknown fields are ignored (newer SDKs send
//! members this front does not know).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::error::{ErrorName, KmsError};

/// The JSON 1.1 content type of requests and responses.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The `X-Amz-Target` prefix of every KMS operation.
pub const TARGET_PREFIX: &str = "TrentService.";
/// The request id header KMS answers with, `x-amzn-RequestId` (boto3:
/// `ResponseMetadata.RequestId`); header names are case-insensitive and `http` stores them
/// lowercase.
pub const REQUEST_ID_HEADER: http::HeaderName = http::HeaderName::from_static("x-amzn-requestid");

/// An encryption context: sorted, so its encoding is canonical.
pub type EncryptionContext = BTreeMap<String, String>;

/// A parsed request body.
#[derive(Debug)]
pub struct Input(Map<String, Value>);

impl Input {
    /// Parses a body; an empty body is `{}` (botocore sends `{}` for no input).
    pub fn parse(body: &[u8]) -> Result<Self, KmsError> {
        if body.is_empty() {
            return Ok(Self(Map::new()));
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            _ => Err(KmsError::new(
                ErrorName::Serialization,
                "The request body is not a JSON object",
            )),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// An optional string member.
    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, KmsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(KmsError::validation(format!("{name} must be a string"))),
        }
    }

    /// A required string member (non-empty).
    pub fn req_str(&self, name: &str) -> Result<&str, KmsError> {
        match self.opt_str(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(KmsError::validation(format!(
                "1 validation error detected: Value null at '{}' failed to satisfy constraint: \
                 Member must not be null",
                lower_first(name)
            ))),
        }
    }

    /// An optional boolean member.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, KmsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(KmsError::validation(format!("{name} must be a boolean"))),
        }
    }

    /// An optional integer member.
    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, KmsError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| KmsError::validation(format!("{name} must be an integer"))),
        }
    }

    /// An optional Base64 blob member; decoded bytes are zeroized on drop (may be plaintext).
    pub fn opt_blob(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, KmsError> {
        self.opt_str(name)?
            .map(|s| {
                STANDARD.decode(s).map(Zeroizing::new).map_err(|_| {
                    KmsError::new(
                        ErrorName::Serialization,
                        format!("{name} is not valid Base64"),
                    )
                })
            })
            .transpose()
    }

    /// A required blob member of `min..=max` bytes.
    pub fn req_blob(
        &self,
        name: &str,
        min: usize,
        max: usize,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let blob = self.opt_blob(name)?.ok_or_else(|| {
            KmsError::validation(format!(
                "1 validation error detected: Value null at '{}' failed to satisfy constraint: \
                 Member must not be null",
                lower_first(name)
            ))
        })?;
        if blob.len() < min || blob.len() > max {
            return Err(KmsError::validation(format!(
                "1 validation error detected: Value at '{}' failed to satisfy constraint: \
                 Member must have length between {min} and {max}",
                lower_first(name)
            )));
        }
        Ok(blob)
    }

    /// An optional string-to-string map (an encryption context); absent is empty.
    pub fn context(&self, name: &str) -> Result<EncryptionContext, KmsError> {
        let Some(value) = self.get(name) else {
            return Ok(EncryptionContext::new());
        };
        let Value::Object(map) = value else {
            return Err(KmsError::validation(format!("{name} must be a map")));
        };
        map.iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(KmsError::validation(format!(
                    "{name} values must be strings"
                ))),
            })
            .collect()
    }

    /// A nested object member, parsed as its own [`Input`].
    pub fn opt_object(&self, name: &str) -> Result<Option<Self>, KmsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Self(m.clone()))),
            Some(_) => Err(KmsError::validation(format!("{name} must be a structure"))),
        }
    }
}

/// `KeyId` → `keyId`, as KMS names members in validation messages.
fn lower_first(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Standard, padded Base64.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Now as epoch seconds with millisecond precision, the number KMS puts in timestamps.
pub fn now_epoch() -> f64 {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Milliseconds since 1970 fit an f64 exactly for the next 280,000 years.
    #[allow(clippy::cast_precision_loss)]
    let millis = millis as f64;
    millis / 1000.0
}

/// A 200 answer.
pub fn ok_response(request_id: &str, body: &Value) -> Response {
    response(200, request_id, body.to_string())
}

/// An error answer: `{"__type", "message"}` with the exception's status.
pub fn error_response(request_id: &str, err: &KmsError) -> Response {
    let body = json!({ "__type": err.name.as_str(), "message": err.message });
    response(err.name.status(), request_id, body.to_string())
}

fn response(status: u16, request_id: &str, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
    if let Ok(value) = http::HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn empty_body_is_an_empty_object_and_null_is_absent() {
        let input = Input::parse(b"").unwrap();
        assert_eq!(input.opt_str("KeyId").unwrap(), None);
        let input = Input::parse(br#"{"KeyId":null,"N":3}"#).unwrap();
        assert_eq!(input.opt_str("KeyId").unwrap(), None);
        assert_eq!(input.opt_u64("N").unwrap(), Some(3));
        assert_eq!(
            input.req_str("KeyId").unwrap_err().name,
            ErrorName::Validation
        );
    }

    #[test]
    fn non_object_bodies_are_serialization_errors() {
        for body in [&b"[]"[..], b"nope", b"\"s\""] {
            assert_eq!(
                Input::parse(body).unwrap_err().name,
                ErrorName::Serialization
            );
        }
    }

    #[test]
    fn blobs_and_contexts() {
        let input = Input::parse(br#"{"P":"AAE=","C":{"b":"2","a":"1"},"X":{"a":1}}"#).unwrap();
        assert_eq!(input.req_blob("P", 1, 4096).unwrap().as_slice(), &[0, 1]);
        assert!(input.req_blob("P", 3, 4096).is_err());
        let context = input.context("C").unwrap();
        assert_eq!(context.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(input.context("X").is_err());
        assert!(input.context("Absent").unwrap().is_empty());
    }
}
