//! SigV4 verification by re-signing (XKS spec Appendix A, Tasks 1–4; checklist AU-3…AU-11,
//! AU-16, AU-17).
//!
//! Ordinary requests are signed directly by `canonical` (the same canonical form, a cached
//! signing key). Any other is signed again by `aws-sigv4`'s full signer, with its own
//! `X-Amz-Date` as the signing time, its credential scope region and the matching secret. The
//! signer gets only the headers named in the request's `SignedHeaders`, with these settings:
//!
//! * `excluded_headers: None`: sign whatever we pass (its default drops `user-agent` etc.);
//! * `payload_checksum_kind: NoHeader` and credentials without a session token: add no
//!   `x-amz-content-sha256` or `x-amz-security-token`. `session_token_mode` stays `Include`:
//!   `Exclude` would silently drop an `x-amz-security-token` header the client did sign;
//! * `uri_path_normalization_mode: Disabled` and `percent_encoding_mode: Single`: the canonical
//!   URI is the path exactly as received. The HTTP layer only lets `[A-Za-z0-9/_.-]` through
//!   without `.`/`..` segments (AU-17), where encoding and normalization change nothing; with
//!   them disabled nothing can be normalized away;
//! * the `host` header is always passed explicitly, so the signer never rebuilds it from the
//!   URI (it would drop a default port).
//!
//! As a guard, the `SignedHeaders` list the signer produced must equal the request's.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::PayloadChecksumKind;
use aws_sigv4::http_request::{
    PercentEncodingMode, SessionTokenMode, SignableBody, SignableRequest, SignatureLocation,
    SigningSettings, UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::header::{AUTHORIZATION, HOST};
use http::request::Parts;
use subtle::ConstantTimeEq;

use super::canonical::{self, Signable, Signer};
use super::header::{AuthorizationHeader, parse_amz_date, parse_authorization};
use super::{AuthError, Authenticated, CredentialStore};

/// The service in every XKS credential scope (AU-3).
pub(super) const SERVICE: &str = "kms-xks-proxy";
/// The credential scope terminator (AU-3).
const TERMINATOR: &str = "aws4_request";
/// Largest accepted distance between `X-Amz-Date` and the server clock, either way (AU-11).
const MAX_SKEW: Duration = Duration::from_secs(5 * 60);
/// Headers that must always be signed (AU-16).
const REQUIRED_SIGNED: [&str; 2] = ["host", "x-amz-date"];
const X_AMZ_DATE: &str = "x-amz-date";

/// Verifies a request's SigV4 signature against one key store's credentials.
///
/// `parts` is the request head as hyper/axum received it, `body` the exact raw body bytes
/// (AU-8), `now` the server time used for the ±5-minute check (AU-11).
pub fn verify(
    store: &CredentialStore,
    parts: &Parts,
    body: &[u8],
    now: SystemTime,
) -> Result<Authenticated, AuthError> {
    let auth = match authorization_value(parts).and_then(parse_authorization) {
        Ok(auth) => auth,
        Err(err) => {
            tracing::debug!(reason = err.reason(), "SigV4 authentication failed");
            return Err(err);
        }
    };
    let result = verify_parsed(store, parts, body, now, &auth);
    if let Err(err) = &result {
        tracing::debug!(
            access_key_id = auth.access_key_id,
            reason = err.reason(),
            "SigV4 authentication failed"
        );
    }
    result
}

/// The single `Authorization` header value.
fn authorization_value(parts: &Parts) -> Result<&str, AuthError> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(AuthError::MissingAuthorization),
        (Some(_), Some(_)) => Err(AuthError::MalformedAuthorization("more than one header")),
        (Some(v), None) => v
            .to_str()
            .map_err(|_| AuthError::MalformedAuthorization("not visible ASCII")),
    }
}

/// Everything after parsing, in a fixed order; the secret-dependent step comes last.
fn verify_parsed(
    store: &CredentialStore,
    parts: &Parts,
    body: &[u8],
    now: SystemTime,
    auth: &AuthorizationHeader<'_>,
) -> Result<Authenticated, AuthError> {
    if auth.scope.service != store.service {
        return Err(AuthError::WrongService);
    }
    if auth.scope.terminator != TERMINATOR {
        return Err(AuthError::WrongTerminator);
    }
    for required in REQUIRED_SIGNED {
        if !auth.signed_headers.contains(&required) {
            return Err(AuthError::MissingSignedHeader(required));
        }
    }
    let amz_date = amz_date_value(parts)?;
    let signing_time = parse_amz_date(amz_date)?;
    if amz_date.get(..8) != Some(auth.scope.date) {
        return Err(AuthError::ScopeDateMismatch);
    }
    check_skew(signing_time, now)?;
    if parts.uri.query().is_some() {
        return Err(AuthError::UnexpectedQuery);
    }
    let headers = signed_header_values(parts, &auth.signed_headers)?;

    let known = store.lookup(auth.access_key_id);
    let (credential, identity) = known.unwrap_or((store.credentials.len(), &store.decoy));
    let request = Signable {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        headers: &headers,
        body,
        amz_date,
        time: signing_time,
    };
    let signer = Signer { store, credential };
    let computed = match canonical::signature(&request, auth, &signer) {
        Some(signature) => Ok(signature),
        None => compute_signature(parts, &headers, body, identity, auth, signing_time),
    };
    if known.is_none() {
        return Err(AuthError::UnknownAccessKeyId);
    }
    let computed = computed?;
    if !bool::from(computed.as_bytes().ct_eq(auth.signature.as_bytes())) {
        return Err(AuthError::SignatureMismatch);
    }
    // Only a caller holding the secret learns that the region is the problem (the wire
    // message is the same for every failure anyway), and the check costs the same time.
    if store.region_allowed(auth.scope.region) {
        Ok(Authenticated {
            access_key_id: auth.access_key_id.to_owned(),
            region: auth.scope.region.to_owned(),
        })
    } else {
        Err(AuthError::RegionNotAllowed)
    }
}

/// The single `X-Amz-Date` header value.
fn amz_date_value(parts: &Parts) -> Result<&str, AuthError> {
    let mut values = parts.headers.get_all(X_AMZ_DATE).iter();
    match (values.next(), values.next()) {
        (None, _) => Err(AuthError::MissingDate),
        (Some(v), None) => v.to_str().map_err(|_| AuthError::MalformedDate),
        (Some(_), Some(_)) => Err(AuthError::MalformedDate),
    }
}

/// Rejects a timestamp more than five minutes before or after `now` (AU-11).
fn check_skew(signed_at: SystemTime, now: SystemTime) -> Result<(), AuthError> {
    let skew = now
        .duration_since(signed_at)
        .unwrap_or_else(|ahead| ahead.duration());
    if skew > MAX_SKEW {
        return Err(AuthError::ClockSkew);
    }
    Ok(())
}

/// `(name, value)` for every header named in `SignedHeaders`, all values of repeated headers
/// included (the signer joins them with `,`). `host` is the `Host` header, else the HTTP/2
/// `:authority` that hyper puts in the URI, exactly as received, port included (AU-7).
pub(super) fn signed_header_values<'a>(
    parts: &'a Parts,
    signed: &[&'a str],
) -> Result<Vec<(&'a str, &'a str)>, AuthError> {
    let mut out = Vec::with_capacity(signed.len());
    for &name in signed {
        if name == HOST.as_str() {
            out.push((name, host_value(parts)?));
            continue;
        }
        let before = out.len();
        for value in parts.headers.get_all(name) {
            let value = value.to_str().map_err(|_| AuthError::InvalidHeaderValue)?;
            out.push((name, value));
        }
        if out.len() == before {
            return Err(AuthError::SignedHeaderAbsent);
        }
    }
    Ok(out)
}

/// The host as the client sent it: the `Host` header if present (HTTP/1.1, or HTTP/2 with an
/// explicit one), else the URI authority (HTTP/2 `:authority`).
fn host_value(parts: &Parts) -> Result<&str, AuthError> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(v), None) => v.to_str().map_err(|_| AuthError::InvalidHeaderValue),
        (Some(_), Some(_)) => Err(AuthError::InvalidHeaderValue),
        (None, _) => parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .ok_or(AuthError::SignedHeaderAbsent),
    }
}

/// Recomputes the signature with `aws-sigv4`'s full signer (Appendix A Tasks 1–3): for
/// requests `canonical` does not take, and in tests as its reference.
fn compute_signature(
    parts: &Parts,
    headers: &[(&str, &str)],
    body: &[u8],
    identity: &Identity,
    auth: &AuthorizationHeader<'_>,
    signing_time: SystemTime,
) -> Result<String, AuthError> {
    let params = v4::SigningParams::builder()
        .identity(identity)
        .region(auth.scope.region)
        // Equal to the verifier's service: checked before any signing.
        .name(auth.scope.service)
        .time(signing_time)
        .settings(signing_settings())
        .build()
        .map_err(|_| AuthError::Signer)?
        .into();
    let request = SignableRequest::new(
        parts.method.as_str(),
        parts.uri.path(),
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|_| AuthError::Signer)?;
    let (instructions, signature) = sign(request, &params)
        .map_err(|_| AuthError::Signer)?
        .into_parts();
    // Guard (AU-6): the signer must have signed exactly the request's SignedHeaders, nothing
    // added (x-amz-content-sha256, x-amz-security-token) and nothing dropped.
    let same_list = instructions
        .headers()
        .find(|(name, _)| name.eq_ignore_ascii_case(AUTHORIZATION.as_str()))
        .and_then(|(_, value)| parse_authorization(value).ok())
        .is_some_and(|produced| produced.signed_headers_raw == auth.signed_headers_raw);
    if !same_list {
        return Err(AuthError::Signer);
    }
    Ok(signature)
}

/// Settings that make the signer canonicalize exactly what it is given (module docs).
fn signing_settings() -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    settings.signature_location = SignatureLocation::Headers;
    settings.excluded_headers = None;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.session_token_mode = SessionTokenMode::Include;
    settings.expires_in = None;
    settings
}
