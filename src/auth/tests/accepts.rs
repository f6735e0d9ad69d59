//! Requests that must verify: independent-signer known answers (curl, botocore) and
//! `aws-sigv4` client round trips (XKS spec Appendix A; AU-2, AU-5…AU-7, AU-17, ROT-1).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sigv4::http_request::{SigningSettings, UriPathNormalizationMode};
use base64::Engine;

use super::*;

#[test]
fn au_1_au_6_curl_fixture_with_content_type_signed_verifies() {
    let (parts, body) = curl_encrypt();
    assert_eq!(body.len(), 220, "fixture body matches its Content-Length");
    let ok = check(&parts, &body).unwrap();
    assert_eq!(
        ok,
        Authenticated {
            access_key_id: AKID_1.into(),
            region: "us-east-1".into()
        }
    );
}

#[test]
fn au_7_curl_fixture_with_port_in_host_verifies_and_port_matters() {
    let (mut parts, body) = parse_raw(CURL_HEALTH_PORT);
    assert_eq!(body.len(), 113);
    let store = store(&[(AKID_2, SECRET_2)], None);
    let now = at("20261122T104150Z");
    assert_eq!(
        verify(&store, &parts, &body, now).unwrap().region,
        "eu-west-1"
    );
    for host in ["localhost", "localhost:443", "127.0.0.1:18081"] {
        set(&mut parts, "host", host);
        assert_eq!(
            verify(&store, &parts, &body, now),
            Err(AuthError::SignatureMismatch),
            "{host}"
        );
    }
}

#[test]
fn au_7_http2_botocore_fixture_verifies_from_uri_authority() {
    let (parts, body) = boto_h2();
    assert!(parts.headers.get("host").is_none());
    let ok = verify(&store_1(), &parts, &body, at(BOTO_H2_DATE)).unwrap();
    assert_eq!(ok.region, "ap-southeast-2");
}

#[test]
fn au_7_host_header_is_preferred_over_authority() {
    let (mut parts, body) = boto_h2();
    parts.uri = "https://other.example:1/kms/xks/v1/keys/k1/decrypt"
        .parse()
        .unwrap();
    assert_eq!(check(&parts, &body), Err(AuthError::SignatureMismatch));
    set(&mut parts, "host", "xks.example.com:8443");
    assert!(check(&parts, &body).is_ok());
    // HTTP/2 without :authority and without Host: nothing to canonicalize.
    parts.headers.remove("host");
    parts.uri = "/kms/xks/v1/keys/k1/decrypt".parse().unwrap();
    assert_eq!(check(&parts, &body), Err(AuthError::SignedHeaderAbsent));
}

#[test]
fn au_7_aws_sigv4_client_over_http2_verifies() {
    let (parts, body) = ClientRequest {
        uri: "https://xks.example.com/kms/xks/v1/keys/k1/encrypt",
        headers: &[("content-type", "application/json")],
        ..ClientRequest::new()
    }
    .sign();
    assert!(parts.headers.get("host").is_none());
    assert!(check(&parts, &body).is_ok());
}

#[test]
fn au_5_base64_looking_secret_is_used_raw() {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(SECRET_1)
        .unwrap();
    assert_eq!(
        decoded.len(),
        32,
        "the fixture secret really looks like Base64"
    );
    let (parts, body) = curl_encrypt();
    assert!(check(&parts, &body).is_ok());
    let decoded_store = store(&[(AKID_1, &String::from_utf8_lossy(&decoded))], None);
    let now = at(CURL_ENCRYPT_DATE);
    assert_eq!(
        verify(&decoded_store, &parts, &body, now),
        Err(AuthError::SignatureMismatch)
    );
}

#[test]
fn rot_1_two_credentials_on_one_store_both_verify() {
    let both = store(&[(AKID_2, SECRET_2), (AKID_1, SECRET_1)], None);
    assert_eq!(both.len(), 2);
    let (p1, b1) = curl_encrypt();
    assert_eq!(
        verify(&both, &p1, &b1, at(CURL_ENCRYPT_DATE))
            .unwrap()
            .access_key_id,
        AKID_1
    );
    let (p2, b2) = parse_raw(CURL_HEALTH_PORT);
    assert_eq!(
        verify(&both, &p2, &b2, at("20261122T104150Z"))
            .unwrap()
            .access_key_id,
        AKID_2
    );
}

#[test]
fn au_6_only_the_listed_headers_are_signed() {
    // The client signs only host;x-amz-date, then sends more headers.
    let (mut parts, body) = ClientRequest {
        headers: &[("host", "xks.example.com")],
        ..ClientRequest::new()
    }
    .sign();
    assert!(
        parts.headers["authorization"]
            .to_str()
            .unwrap()
            .contains("SignedHeaders=host;x-amz-date,")
    );
    set(&mut parts, "content-type", "application/json");
    set(&mut parts, "x-amz-content-sha256", "UNSIGNED-PAYLOAD");
    assert!(check(&parts, &body).is_ok());
    // The client signs headers that aws-sigv4's default excludes (user-agent) plus a custom one.
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    // Also x-amz-content-sha256 and x-amz-security-token, which the signer treats specially.
    let headers = [
        ("host", "h:8443"),
        ("user-agent", "kms/1"),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ("x-amz-security-token", "opaque"),
        ("x-custom", "a  b "),
    ];
    let (parts, body) = ClientRequest {
        headers: &headers,
        settings,
        ..ClientRequest::new()
    }
    .sign();
    assert!(
        parts.headers["authorization"]
            .to_str()
            .unwrap()
            .contains("SignedHeaders=host;user-agent;x-amz-content-sha256;x-amz-date;x-amz-security-token;x-custom,")
    );
    assert!(check(&parts, &body).is_ok());
}

#[test]
fn au_2_component_order_and_spacing_do_not_matter_but_duplicates_do() {
    let (mut parts, body) = curl_encrypt();
    let original = parts.headers["authorization"].to_str().unwrap().to_owned();
    let (alg, rest) = original.split_once(' ').unwrap();
    let mut components: Vec<&str> = rest.split(", ").collect();
    components.reverse();
    set(
        &mut parts,
        "authorization",
        &format!("{alg} {}", components.join(",")),
    );
    assert!(check(&parts, &body).is_ok());
    let signature = components[0];
    set(
        &mut parts,
        "authorization",
        &format!("{original}, {signature}"),
    );
    assert!(matches!(
        check(&parts, &body),
        Err(AuthError::MalformedAuthorization(_))
    ));
    parts
        .headers
        .append("authorization", HeaderValue::from_str(&original).unwrap());
    assert!(matches!(
        check(&parts, &body),
        Err(AuthError::MalformedAuthorization(_))
    ));
}

#[test]
fn au_17_path_is_canonicalized_exactly_as_received() {
    let mut settings = SigningSettings::default();
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    let (mut parts, body) = ClientRequest {
        uri: "//kms/xks/v1/health",
        settings,
        ..ClientRequest::new()
    }
    .sign();
    assert!(check(&parts, &body).is_ok());
    parts.uri = "/kms/xks/v1/health".parse().unwrap();
    assert_eq!(check(&parts, &body), Err(AuthError::SignatureMismatch));
}
