//! Parsing of the SigV4 `Authorization` and `X-Amz-Date` headers (XKS spec Appendix A;
//! checklist AU-2, AU-3, AU-9).
//!
//! `AWS4-HMAC-SHA256 Credential=<AKID>/<yyyymmdd>/<region>/<service>/<terminator>,
//! SignedHeaders=<a;b;c>, Signature=<64 lowercase hex>`. Parsed tolerantly: optional spaces or
//! tabs around components, components in any order. Duplicate, missing or unknown components
//! are rejected. Only the shape is checked here; scope values are judged by the verifier.

use std::time::SystemTime;

use time::PrimitiveDateTime;
use time::macros::format_description;

use super::AuthError;

/// The only algorithm accepted (AU-2).
pub(super) const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// A parsed `Authorization` header, borrowing from the header value.
///
/// No `Debug`: it holds the signature, which must not reach logs.
pub(super) struct AuthorizationHeader<'a> {
    /// Access key id from the credential; not format-checked (AU-14).
    pub(super) access_key_id: &'a str,
    /// The credential scope after the access key id.
    pub(super) scope: CredentialScope<'a>,
    /// `SignedHeaders` as sent, e.g. `content-type;host;x-amz-date`.
    pub(super) signed_headers_raw: &'a str,
    /// `SignedHeaders` split: lowercase, strictly ascending, no duplicates.
    pub(super) signed_headers: Vec<&'a str>,
    /// The signature: exactly 64 lowercase hex digits.
    pub(super) signature: &'a str,
}

/// `<yyyymmdd>/<region>/<service>/<terminator>`, each non-empty.
pub(super) struct CredentialScope<'a> {
    pub(super) date: &'a str,
    pub(super) region: &'a str,
    pub(super) service: &'a str,
    pub(super) terminator: &'a str,
}

/// Parses an `Authorization` header value.
pub(super) fn parse_authorization(value: &str) -> Result<AuthorizationHeader<'_>, AuthError> {
    use AuthError::MalformedAuthorization as Malformed;

    let (algorithm, rest) = value
        .trim_start_matches(is_ows)
        .split_once(is_ows)
        .ok_or(Malformed("expected an algorithm followed by components"))?;
    if algorithm != ALGORITHM {
        return Err(AuthError::UnsupportedAlgorithm);
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for component in rest.split(',') {
        let (key, val) = component
            .trim_matches(is_ows)
            .split_once('=')
            .ok_or(Malformed("each component must be Name=value"))?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => return Err(Malformed("unknown component")),
        };
        if slot.replace(val).is_some() {
            return Err(Malformed("duplicate component"));
        }
    }
    let credential = credential.ok_or(Malformed("missing Credential"))?;
    let signed_headers_raw = signed_headers.ok_or(Malformed("missing SignedHeaders"))?;
    let signature = signature.ok_or(Malformed("missing Signature"))?;

    let (access_key_id, scope) = parse_credential(credential)?;
    let signed_headers = parse_signed_headers(signed_headers_raw)?;
    let signature_ok = signature.len() == 64
        && signature
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !signature_ok {
        return Err(Malformed("Signature must be 64 lowercase hex digits"));
    }
    Ok(AuthorizationHeader {
        access_key_id,
        scope,
        signed_headers_raw,
        signed_headers,
        signature,
    })
}

/// Splits `AKID/date/region/service/terminator` from the right, so the scope is always the last
/// four parts.
fn parse_credential(value: &str) -> Result<(&str, CredentialScope<'_>), AuthError> {
    let mut parts = value.rsplitn(5, '/');
    let mut next = || {
        parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(AuthError::MalformedAuthorization(
                "Credential must be AKID/date/region/service/aws4_request",
            ))
    };
    let terminator = next()?;
    let service = next()?;
    let region = next()?;
    let date = next()?;
    let access_key_id = next()?;
    let scope = CredentialScope {
        date,
        region,
        service,
        terminator,
    };
    Ok((access_key_id, scope))
}

/// Splits `SignedHeaders`; names must be lowercase HTTP tokens in strictly ascending order, as
/// SigV4 canonicalization produces them. `authorization` can never be signed.
fn parse_signed_headers(value: &str) -> Result<Vec<&str>, AuthError> {
    use AuthError::MalformedAuthorization as Malformed;

    let names: Vec<&str> = value.split(';').collect();
    for name in &names {
        let token = !name.is_empty()
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            });
        if !token {
            return Err(Malformed("SignedHeaders must be lowercase header names"));
        }
        if *name == "authorization" {
            return Err(Malformed("SignedHeaders must not include authorization"));
        }
    }
    if !names.windows(2).all(|w| w[0] < w[1]) {
        return Err(Malformed("SignedHeaders must be sorted without duplicates"));
    }
    Ok(names)
}

/// Parses `X-Amz-Date`: exactly `YYYYMMDD'T'HHMMSS'Z'`, UTC (AU-9). The strict shape matters:
/// the signer re-formats the parsed time, which must reproduce the header byte for byte.
pub(super) fn parse_amz_date(value: &str) -> Result<SystemTime, AuthError> {
    let b = value.as_bytes();
    let shape_ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    if !shape_ok {
        return Err(AuthError::MalformedDate);
    }
    let format = format_description!("[year][month][day]T[hour][minute][second]Z");
    PrimitiveDateTime::parse(value, format)
        .map(|t| t.assume_utc().into())
        .map_err(|_| AuthError::MalformedDate)
}

/// Optional whitespace as HTTP defines it.
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

#[cfg(test)]
mod tests {
    // Test code: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    const SIG: &str = "cd05051d2716dfc3770709490639f76352e9235cd5d69044b3a2faeb85e63d96";

    fn header(components: &str) -> String {
        format!("AWS4-HMAC-SHA256 {components}")
    }

    fn malformed(value: &str) -> bool {
        matches!(
            parse_authorization(value),
            Err(AuthError::MalformedAuthorization(_))
        )
    }

    #[test]
    fn au_2_parses_the_appendix_a_shape() {
        let v = header(&format!(
            "Credential=AKIDEXAMPLE/20240515/us-east-1/kms-xks-proxy/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={SIG}"
        ));
        let h = parse_authorization(&v).unwrap();
        assert_eq!(h.access_key_id, "AKIDEXAMPLE");
        assert_eq!(h.scope.date, "20240515");
        assert_eq!(h.scope.region, "us-east-1");
        assert_eq!(h.scope.service, "kms-xks-proxy");
        assert_eq!(h.scope.terminator, "aws4_request");
        assert_eq!(h.signed_headers, ["host", "x-amz-date"]);
        assert_eq!(h.signed_headers_raw, "host;x-amz-date");
        assert_eq!(h.signature, SIG);
    }

    #[test]
    fn au_2_tolerates_spacing_and_component_order() {
        for v in [
            format!(
                "AWS4-HMAC-SHA256 Signature={SIG},SignedHeaders=host;x-amz-date,\
                 Credential=A/20240515/r/kms-xks-proxy/aws4_request"
            ),
            format!(
                "  AWS4-HMAC-SHA256\t Credential=A/20240515/r/kms-xks-proxy/aws4_request ,  \
                 SignedHeaders=host;x-amz-date,\tSignature={SIG} "
            ),
        ] {
            let h = parse_authorization(&v).unwrap();
            assert_eq!(h.access_key_id, "A");
            assert_eq!(h.signed_headers, ["host", "x-amz-date"]);
        }
    }

    #[test]
    fn au_2_rejects_duplicate_missing_unknown_and_empty_components() {
        let cred = "Credential=A/20240515/r/kms-xks-proxy/aws4_request";
        let sh = "SignedHeaders=host;x-amz-date";
        let sig = format!("Signature={SIG}");
        assert!(malformed(&header(&format!("{cred}, {sh}, {sig}, {sig}"))));
        assert!(malformed(&header(&format!("{cred}, {cred}, {sh}, {sig}"))));
        assert!(malformed(&header(&format!("{cred}, {sh}"))));
        assert!(malformed(&header(&format!("{sh}, {sig}"))));
        assert!(malformed(&header(&format!("{cred}, {sig}"))));
        assert!(malformed(&header(&format!("{cred}, {sh}, {sig}, Foo=bar"))));
        assert!(malformed(&header(&format!("{cred}, {sh}, {sig},"))));
        assert!(malformed(&header(&format!(
            "{cred}, signedheaders=host, {sig}"
        ))));
        assert!(malformed("AWS4-HMAC-SHA256"));
        assert!(malformed(""));
    }

    #[test]
    fn au_2_rejects_other_algorithms() {
        let v = format!(
            "AWS4-ECDSA-P256-SHA256 Credential=A/20240515/kms-xks-proxy/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={SIG}"
        );
        assert!(matches!(
            parse_authorization(&v),
            Err(AuthError::UnsupportedAlgorithm)
        ));
        assert!(matches!(
            parse_authorization("Basic dXNlcjpwYXNz"),
            Err(AuthError::UnsupportedAlgorithm)
        ));
    }

    #[test]
    fn au_2_credential_needs_five_non_empty_parts() {
        let rest = format!("SignedHeaders=host;x-amz-date, Signature={SIG}");
        for cred in [
            "A/20240515/r/kms-xks-proxy",
            "A/20240515//kms-xks-proxy/aws4_request",
            "/20240515/r/kms-xks-proxy/aws4_request",
            "",
        ] {
            assert!(
                malformed(&header(&format!("Credential={cred}, {rest}"))),
                "{cred}"
            );
        }
        // The scope is taken from the right; anything before it is the access key id.
        let v = header(&format!(
            "Credential=A/B/20240515/r/kms-xks-proxy/aws4_request, {rest}"
        ));
        assert_eq!(parse_authorization(&v).unwrap().access_key_id, "A/B");
    }

    #[test]
    fn au_6_signed_headers_must_be_canonical() {
        let cred = "Credential=A/20240515/r/kms-xks-proxy/aws4_request";
        for sh in [
            "x-amz-date;host",
            "host;host;x-amz-date",
            "Host;x-amz-date",
            "host;;x-amz-date",
            "host;x-amz-date;",
            "",
            "authorization;host;x-amz-date",
            "host;x amz;x-amz-date",
        ] {
            let v = header(&format!("{cred}, SignedHeaders={sh}, Signature={SIG}"));
            assert!(malformed(&v), "{sh:?}");
        }
    }

    #[test]
    fn au_10_signature_is_64_lowercase_hex() {
        let cred = "Credential=A/20240515/r/kms-xks-proxy/aws4_request";
        let upper = SIG.to_ascii_uppercase();
        let short = &SIG[..63];
        let long = format!("{SIG}0");
        let non_hex = format!("{}g", &SIG[..63]);
        for sig in [upper.as_str(), short, long.as_str(), non_hex.as_str(), ""] {
            let v = header(&format!(
                "{cred}, SignedHeaders=host;x-amz-date, Signature={sig}"
            ));
            assert!(malformed(&v), "{sig:?}");
        }
    }

    #[test]
    fn au_9_amz_date_is_strict() {
        let t = parse_amz_date("20261122T104145Z").unwrap();
        let expected = time::macros::datetime!(2026-11-22 10:41:45 UTC);
        assert_eq!(t, SystemTime::from(expected));
        for bad in [
            "2026-11-22T10:41:45Z",
            "20261122T104145",
            "20261122t104145Z",
            "20261122T104145z",
            "20261322T104145Z",
            "20261122T246145Z",
            "20261122T104160Z",
            "+0261122T104145Z",
            "20261122T10414 Z",
            "Sun, 22 Nov 2026 10:41:45 GMT",
            "",
        ] {
            assert_eq!(parse_amz_date(bad), Err(AuthError::MalformedDate), "{bad}");
        }
    }
}
