//! The XKS wire error: one variant per `errorName` of the XKS Proxy API spec v1.0.3, §"Error
//! codes" (checklist §3.2), with its HTTP status.
//!
//! Every layer has its own error type; each converts into [`XksError`] in exactly one `From`
//! impl. The `errorMessage` is customer-visible (KMS copies it into CloudWatch Logs, ERR-4), so
//! it is sanitised here to printable ASCII below 512 characters (ERR-2) and never carries input.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;

/// The spec's `errorName` values, in the spec's table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorName {
    /// 400: one or more inputs are invalid.
    ValidationException,
    /// 400: the external key or key store is disabled.
    InvalidStateException,
    /// 400: ciphertext, IV, AAD or tag is corrupted or invalid (Decrypt).
    InvalidCiphertextException,
    /// 400: the key does not support the requested operation.
    InvalidKeyUsageException,
    /// 401: SigV4 authentication failed.
    AuthenticationFailedException,
    /// 403: secondary authorization denied the request.
    AccessDeniedException,
    /// 404: the external key was not found.
    KeyNotFoundException,
    /// 404: the URI path is invalid.
    InvalidUriPathException,
    /// 429: request rate too high.
    ThrottlingException,
    /// 501: the operation or a parameter size is not supported.
    UnsupportedOperationException,
    /// 503: a dependency (the HSM) did not answer in time.
    DependencyTimeoutException,
    /// 500: generic server error.
    InternalException,
}

impl ErrorName {
    /// The HTTP status the spec assigns to this error.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ValidationException
            | Self::InvalidStateException
            | Self::InvalidCiphertextException
            | Self::InvalidKeyUsageException => StatusCode::BAD_REQUEST,
            Self::AuthenticationFailedException => StatusCode::UNAUTHORIZED,
            Self::AccessDeniedException => StatusCode::FORBIDDEN,
            Self::KeyNotFoundException | Self::InvalidUriPathException => StatusCode::NOT_FOUND,
            Self::ThrottlingException => StatusCode::TOO_MANY_REQUESTS,
            Self::UnsupportedOperationException => StatusCode::NOT_IMPLEMENTED,
            Self::DependencyTimeoutException => StatusCode::SERVICE_UNAVAILABLE,
            Self::InternalException => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `errorName` string on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationException => "ValidationException",
            Self::InvalidStateException => "InvalidStateException",
            Self::InvalidCiphertextException => "InvalidCiphertextException",
            Self::InvalidKeyUsageException => "InvalidKeyUsageException",
            Self::AuthenticationFailedException => "AuthenticationFailedException",
            Self::AccessDeniedException => "AccessDeniedException",
            Self::KeyNotFoundException => "KeyNotFoundException",
            Self::InvalidUriPathException => "InvalidUriPathException",
            Self::ThrottlingException => "ThrottlingException",
            Self::UnsupportedOperationException => "UnsupportedOperationException",
            Self::DependencyTimeoutException => "DependencyTimeoutException",
            Self::InternalException => "InternalException",
        }
    }
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest `errorMessage` we emit; the spec requires fewer than 512 characters (ERR-2).
const MAX_MESSAGE_CHARS: usize = 511;

/// An XKS API error: the `errorName` plus a short, safe `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksError {
    name: ErrorName,
    message: Cow<'static, str>,
}

impl XksError {
    /// Builds an error; the message is sanitised to printable ASCII and truncated (ERR-2).
    pub fn new(name: ErrorName, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            name,
            message: sanitize_message(message.into()),
        }
    }

    /// 400 `ValidationException`.
    pub fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorName::ValidationException, message)
    }

    /// 404 `InvalidUriPathException`.
    pub fn invalid_uri_path(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorName::InvalidUriPathException, message)
    }

    /// 401 `AuthenticationFailedException`.
    pub fn authentication_failed(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorName::AuthenticationFailedException, message)
    }

    /// 501 `UnsupportedOperationException`.
    pub fn unsupported(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorName::UnsupportedOperationException, message)
    }

    /// 500 `InternalException`.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorName::InternalException, message)
    }

    /// The `errorName`.
    pub fn name(&self) -> ErrorName {
        self.name
    }

    /// The sanitised `errorMessage`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        self.name.status()
    }

    /// The compact, single-line JSON body `{"errorName":…,"errorMessage":…}` (ERR-1).
    pub fn to_json(&self) -> String {
        /// The body's shape, fields in a fixed order whatever `serde_json`'s map features.
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Body<'a> {
            error_name: &'a str,
            error_message: &'a str,
        }
        let body = Body {
            error_name: self.name.as_str(),
            error_message: self.message(),
        };
        serde_json::to_string(&body).unwrap_or_default()
    }
}

impl fmt::Display for XksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl std::error::Error for XksError {}

/// Keeps only printable ASCII (0x20–0x7E), replacing anything else with `?`, and truncates.
fn sanitize_message(message: Cow<'static, str>) -> Cow<'static, str> {
    let clean = message.chars().count() <= MAX_MESSAGE_CHARS
        && message.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if clean {
        return message;
    }
    message
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn err_2_message_is_printable_ascii_and_short() {
        let e = XksError::validation(format!("bad\nvalue\u{e9}{}", "x".repeat(600)));
        assert!(e.message().len() < 512);
        assert!(e.message().bytes().all(|b| (0x20..=0x7e).contains(&b)));
        assert!(e.message().starts_with("bad?value?"));
    }

    #[test]
    fn err_1_body_is_compact_json_with_error_name() {
        let body = XksError::new(ErrorName::KeyNotFoundException, "no such key").to_json();
        assert_eq!(
            body,
            r#"{"errorName":"KeyNotFoundException","errorMessage":"no such key"}"#
        );
    }

    #[test]
    fn statuses_match_the_spec_table() {
        use ErrorName::*;
        let expected = [
            (ValidationException, 400),
            (InvalidStateException, 400),
            (InvalidCiphertextException, 400),
            (InvalidKeyUsageException, 400),
            (AuthenticationFailedException, 401),
            (AccessDeniedException, 403),
            (KeyNotFoundException, 404),
            (InvalidUriPathException, 404),
            (ThrottlingException, 429),
            (UnsupportedOperationException, 501),
            (DependencyTimeoutException, 503),
            (InternalException, 500),
        ];
        for (name, status) in expected {
            assert_eq!(name.status().as_u16(), status, "{name}");
            assert_eq!(name.to_string(), format!("{name:?}"));
        }
    }
}
