//! Optional SigV4 on inbound calls (service `kms`), as KMS requires of every SDK call.
//!
//! The proxy's own verifier (`xks_proxy::auth`) is fixed to service `kms-xks-proxy`, so this
//! module re-signs the request the same way, with `aws-sigv4`: only the headers the request
//! names in `SignedHeaders`, its own `X-Amz-Date`, its credential scope's region, the raw body,
//! and a constant-time comparison. The errors are KMS's: `MissingAuthenticationTokenException`,
//! `IncompleteSignatureException`, `UnrecognizedClientException` (unknown access key id) and
//! `InvalidSignatureException`. The clock-skew check of real KMS is left out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::request::Parts;
use subtle::ConstantTimeEq;

use crate::config::InboundCredential;
use crate::error::{ErrorName, KmsError};

/// The SigV4 service of the KMS API.
const SERVICE: &str = "kms";

/// Checks the request's signature against `credential`.
pub fn verify(credential: &InboundCredential, parts: &Parts, body: &[u8]) -> Result<(), KmsError> {
    let incomplete = |m: &str| KmsError::new(ErrorName::IncompleteSignature, m.to_owned());
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| {
            KmsError::new(
                ErrorName::MissingAuthenticationToken,
                "Missing Authentication Token",
            )
        })?
        .to_str()
        .map_err(|_| incomplete("Authorization is not ASCII"))?;
    let fields = header
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| incomplete("Unsupported signature algorithm"))?;
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name))
            .ok_or_else(|| incomplete("Authorization lacks Credential, SignedHeaders or Signature"))
    };
    let scope: Vec<&str> = field("Credential=")?.split('/').collect();
    let signed_headers: Vec<&str> = field("SignedHeaders=")?.split(';').collect();
    let signature = field("Signature=")?;
    let [access_key_id, _date, region, service, "aws4_request"] = scope[..] else {
        return Err(incomplete("Malformed credential scope"));
    };
    if service != SERVICE {
        return Err(incomplete("Credential should be scoped to service 'kms'"));
    }
    if access_key_id != credential.access_key_id {
        return Err(KmsError::new(
            ErrorName::UnrecognizedClient,
            "The security token included in the request is invalid.",
        ));
    }
    let time = parts
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_amz_date)
        .ok_or_else(|| incomplete("Missing or malformed X-Amz-Date"))?;
    let mut headers = Vec::with_capacity(signed_headers.len());
    for name in &signed_headers {
        for value in parts.headers.get_all(*name) {
            let value = value.to_str().map_err(|_| incomplete("Non-ASCII header"))?;
            headers.push((*name, value));
        }
    }
    let computed = resign(credential, parts, &headers, body, region, time)
        .ok_or_else(|| incomplete("The request could not be canonicalised"))?;
    if bool::from(computed.as_bytes().ct_eq(signature.as_bytes())) {
        Ok(())
    } else {
        Err(KmsError::new(
            ErrorName::InvalidSignature,
            "The request signature we calculated does not match the signature you provided.",
        ))
    }
}

fn resign(
    credential: &InboundCredential,
    parts: &Parts,
    headers: &[(&str, &str)],
    body: &[u8],
    region: &str,
    time: SystemTime,
) -> Option<String> {
    let identity: Identity = Credentials::new(
        &credential.access_key_id,
        credential.secret.as_str(),
        None,
        None,
        "xks-kms-local",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.excluded_headers = None;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .ok()?
        .into();
    let request = SignableRequest::new(
        parts.method.as_str(),
        parts.uri.path(),
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .ok()?;
    let (_, signature) = sign(request, &params).ok()?.into_parts();
    Some(signature)
}

/// `YYYYMMDDTHHMMSSZ` → time.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, s) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn amz_dates() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_440_938_160
        );
        assert_eq!(parse_amz_date("19700101T000000Z").unwrap(), UNIX_EPOCH);
        for bad in [
            "20150830T123600",
            "2015083XT123600Z",
            "20151330T123600Z",
            "",
        ] {
            assert!(parse_amz_date(bad).is_none(), "{bad}");
        }
    }

    fn credential() -> InboundCredential {
        InboundCredential {
            access_key_id: "AKIDEXAMPLE".into(),
            secret: zeroize::Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        }
    }

    /// A request signed by `aws-sigv4` as a client would, then verified.
    fn signed(secret: &str, body: &[u8]) -> Parts {
        let identity: Identity = Credentials::new("AKIDEXAMPLE", secret, None, None, "test").into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("kms")
            .time(UNIX_EPOCH + Duration::from_secs(1_440_938_160))
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let headers = [
            ("host", "localhost:8444"),
            ("x-amz-target", "TrentService.ListKeys"),
        ];
        let signable = SignableRequest::new(
            "POST",
            "/",
            headers.iter().copied(),
            SignableBody::Bytes(body),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut request = http::Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "localhost:8444")
            .header("x-amz-target", "TrentService.ListKeys")
            .body(())
            .unwrap();
        instructions.apply_to_request_http1x(&mut request);
        request.into_parts().0
    }

    #[test]
    fn accepts_a_good_signature_and_names_each_failure() {
        let good = signed("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"{}");
        verify(&credential(), &good, b"{}").unwrap();
        let err = verify(&credential(), &good, b"{ }").unwrap_err();
        assert_eq!(err.name, ErrorName::InvalidSignature);
        let wrong = signed("another secret", b"{}");
        assert_eq!(
            verify(&credential(), &wrong, b"{}").unwrap_err().name,
            ErrorName::InvalidSignature
        );
        let unknown = InboundCredential {
            access_key_id: "OTHER".into(),
            ..credential()
        };
        assert_eq!(
            verify(&unknown, &good, b"{}").unwrap_err().name,
            ErrorName::UnrecognizedClient
        );
        let (bare, ()) = http::Request::builder().body(()).unwrap().into_parts();
        assert_eq!(
            verify(&credential(), &bare, b"{}").unwrap_err().name,
            ErrorName::MissingAuthenticationToken
        );
    }
}
