//! Why a request failed SigV4 authentication (XKS spec "Authentication", Appendix A;
//! checklist AU-10…AU-16), and how that becomes the 401 `AuthenticationFailedException`.

use crate::xks::{ErrorName, XksError};

/// The one `errorMessage` of every authentication failure: an unauthenticated caller must not
/// learn which access key ids exist (AU-12) or which regions a key store accepts. The reason is
/// in the audit line (`reason`) and in `xks_authentication_failures_total`.
const CREDENTIALS_REJECTED: &str = "the request could not be authenticated: check the access key id, secret, \
     credential scope, signed headers and clock (the proxy's audit log names the reason)";

/// Why SigV4 verification rejected a request.
///
/// The `Display` text is static (it never echoes request input) and is meant for logs; the
/// wire message comes from `From<AuthError> for XksError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing Authorization header")]
    MissingAuthorization,
    /// The `Authorization` header does not have the Appendix A shape; the text says which part.
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorization(&'static str),
    /// The algorithm is not `AWS4-HMAC-SHA256` (e.g. SigV4a).
    #[error("unsupported signing algorithm; expected AWS4-HMAC-SHA256")]
    UnsupportedAlgorithm,
    /// No `X-Amz-Date` header (AU-16).
    #[error("missing X-Amz-Date header")]
    MissingDate,
    /// `X-Amz-Date` is not exactly one `YYYYMMDD'T'HHMMSS'Z'` value (AU-9).
    #[error("X-Amz-Date must be one value of the form YYYYMMDD'T'HHMMSS'Z'")]
    MalformedDate,
    /// `X-Amz-Date` is more than 5 minutes before or after the server time (AU-11).
    #[error("request timestamp is more than 5 minutes from the server time")]
    ClockSkew,
    /// The credential scope date differs from the date part of `X-Amz-Date` (AU-9).
    #[error("credential scope date does not match the date of X-Amz-Date")]
    ScopeDateMismatch,
    /// The credential scope names another service than the verifier's (`kms-xks-proxy` for
    /// the XKS API, AU-3).
    #[error("credential scope names another service")]
    WrongService,
    /// The credential scope does not end with `aws4_request` (AU-3).
    #[error("credential scope terminator must be aws4_request")]
    WrongTerminator,
    /// The credential scope region is not in this key store's allowlist (AU-4).
    #[error("credential scope region is not accepted by this key store")]
    RegionNotAllowed,
    /// `SignedHeaders` omits a header that must be signed: `host` or `x-amz-date` (AU-16).
    #[error("SignedHeaders must include {0}")]
    MissingSignedHeader(&'static str),
    /// A header named in `SignedHeaders` is not present in the request (AU-6).
    #[error("a header named in SignedHeaders is absent from the request")]
    SignedHeaderAbsent,
    /// A signed header value is not visible ASCII, or `Host` appears more than once.
    #[error("a signed header has a value that cannot be canonicalized")]
    InvalidHeaderValue,
    /// The request has a query string; no XKS API uses one (AU-16).
    #[error("XKS requests must not carry a query string")]
    UnexpectedQuery,
    /// No credential of this key store has the request's access key id (AU-12, AU-13).
    #[error("unknown access key id")]
    UnknownAccessKeyId,
    /// The recomputed signature differs from the request's (AU-10).
    #[error("signature mismatch")]
    SignatureMismatch,
    /// The signer failed or signed a different header set than requested; a bug, not a client
    /// error, but still answered with 401.
    #[error("the request signature could not be computed")]
    Signer,
}

impl AuthError {
    /// A short snake_case label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingAuthorization => "missing_authorization",
            Self::MalformedAuthorization(_) => "malformed",
            Self::UnsupportedAlgorithm => "unsupported_algorithm",
            Self::MissingDate => "missing_date",
            Self::MalformedDate => "malformed_date",
            Self::ClockSkew => "clock_skew",
            Self::ScopeDateMismatch => "scope_date_mismatch",
            Self::WrongService => "wrong_service",
            Self::WrongTerminator => "wrong_terminator",
            Self::RegionNotAllowed => "region_not_allowed",
            Self::MissingSignedHeader(_) => "missing_signed_header",
            Self::SignedHeaderAbsent => "signed_header_absent",
            Self::InvalidHeaderValue => "invalid_header_value",
            Self::UnexpectedQuery => "unexpected_query",
            Self::UnknownAccessKeyId => "unknown_access_key_id",
            Self::SignatureMismatch => "bad_signature",
            Self::Signer => "signer_error",
        }
    }
}

impl From<AuthError> for XksError {
    /// Always 401 `AuthenticationFailedException` with one message for every reason (AU-12):
    /// all failures before authentication look the same from outside.
    fn from(_: AuthError) -> Self {
        Self::new(
            ErrorName::AuthenticationFailedException,
            CREDENTIALS_REJECTED,
        )
    }
}
