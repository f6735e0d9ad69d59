//! Requests that must fail, each with its specific [`AuthError`] (XKS spec Appendix A;
//! AU-2…AU-4, AU-6, AU-8…AU-16).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use super::*;
use crate::xks::{ErrorName, XksError};

#[test]
fn au_10_au_12_wrong_secret_and_unknown_akid_fail_identically_on_the_wire() {
    let (parts, body) = curl_encrypt();
    let now = at(CURL_ENCRYPT_DATE);
    let wrong_secret = store(
        &[(AKID_1, "2fh+uXuhA9Ix8c2wQJ0gIL4mAK9kC6OCQ0Qlb4wTwNd=")],
        None,
    );
    let wrong = verify(&wrong_secret, &parts, &body, now).unwrap_err();
    assert_eq!(wrong, AuthError::SignatureMismatch);
    let unknown_store = store(&[("AKIA4GBY3I6JCE5M2HPN", SECRET_1)], None);
    let unknown = verify(&unknown_store, &parts, &body, now).unwrap_err();
    assert_eq!(unknown, AuthError::UnknownAccessKeyId);
    assert_eq!(
        (wrong.reason(), unknown.reason()),
        ("bad_signature", "unknown_access_key_id")
    );
    let (wrong, unknown) = (XksError::from(wrong), XksError::from(unknown));
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.name(), ErrorName::AuthenticationFailedException);
    assert_eq!(wrong.status().as_u16(), 401);
}

#[test]
fn au_13_credential_of_another_store_is_unknown() {
    let (parts, body) = parse_raw(CURL_HEALTH_PORT);
    let result = verify(&store_1(), &parts, &body, at("20261122T104150Z"));
    assert_eq!(result, Err(AuthError::UnknownAccessKeyId));
}

#[test]
fn au_8_body_is_hashed_as_raw_bytes() {
    let (parts, mut body) = curl_encrypt();
    body[10] ^= 1;
    assert_eq!(check(&parts, &body), Err(AuthError::SignatureMismatch));
    let (parts, body) = curl_encrypt();
    let reserialized =
        serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(&body).unwrap())
            .unwrap();
    assert_eq!(
        check(&parts, &reserialized),
        Err(AuthError::SignatureMismatch)
    );
    assert_eq!(check(&parts, b""), Err(AuthError::SignatureMismatch));
}

#[test]
fn au_6_signed_header_values_count_and_unsigned_ones_do_not() {
    let (mut parts, body) = curl_encrypt();
    set(&mut parts, "user-agent", "something-else/1.0");
    set(&mut parts, "accept", "application/json");
    set(&mut parts, "x-forwarded-for", "192.0.2.1");
    assert!(check(&parts, &body).is_ok());
    set(
        &mut parts,
        "content-type",
        "application/json; charset=utf-8",
    );
    assert_eq!(check(&parts, &body), Err(AuthError::SignatureMismatch));
    let (mut parts, body) = curl_encrypt();
    parts
        .headers
        .append("content-type", HeaderValue::from_static("text/plain"));
    assert_eq!(check(&parts, &body), Err(AuthError::SignatureMismatch));
}

#[test]
fn au_6_signed_header_listed_but_absent() {
    let (mut parts, body) = curl_encrypt();
    parts.headers.remove("content-type");
    assert_eq!(check(&parts, &body), Err(AuthError::SignedHeaderAbsent));
}

#[test]
fn au_16_signed_headers_must_include_host_and_x_amz_date() {
    let (mut parts, body) = curl_encrypt();
    edit_authorization(
        &mut parts,
        "content-type;host;x-amz-date",
        "content-type;x-amz-date",
    );
    assert_eq!(
        check(&parts, &body),
        Err(AuthError::MissingSignedHeader("host"))
    );
    let (mut parts, body) = curl_encrypt();
    edit_authorization(
        &mut parts,
        "content-type;host;x-amz-date",
        "content-type;host",
    );
    assert_eq!(
        check(&parts, &body),
        Err(AuthError::MissingSignedHeader("x-amz-date"))
    );
}

#[test]
fn au_16_missing_authorization_or_date() {
    let (mut parts, body) = curl_encrypt();
    parts.headers.remove("authorization");
    assert_eq!(check(&parts, &body), Err(AuthError::MissingAuthorization));
    let (mut parts, body) = curl_encrypt();
    parts.headers.remove("x-amz-date");
    assert_eq!(check(&parts, &body), Err(AuthError::MissingDate));
}

#[test]
fn au_9_malformed_or_repeated_date() {
    let (mut parts, body) = curl_encrypt();
    set(&mut parts, "x-amz-date", "2026-11-22T10:41:45Z");
    let now = at(CURL_ENCRYPT_DATE);
    assert_eq!(
        verify(&store_1(), &parts, &body, now),
        Err(AuthError::MalformedDate)
    );
    let (mut parts, body) = curl_encrypt();
    parts
        .headers
        .append("x-amz-date", HeaderValue::from_static("20261122T104145Z"));
    assert_eq!(
        verify(&store_1(), &parts, &body, now),
        Err(AuthError::MalformedDate)
    );
}

#[test]
fn au_11_five_minute_skew_boundary_both_directions() {
    let (parts, body) = curl_encrypt();
    let signed = at(CURL_ENCRYPT_DATE);
    let five = Duration::from_secs(300);
    let tick = Duration::from_millis(1);
    let store = store_1();
    for now in [signed + five, signed - five, signed] {
        assert!(verify(&store, &parts, &body, now).is_ok());
    }
    for now in [
        signed + five + tick,
        signed - five - tick,
        signed + 2 * five,
    ] {
        assert_eq!(
            verify(&store, &parts, &body, now),
            Err(AuthError::ClockSkew)
        );
    }
    // The reason is logged; on the wire it looks like every other failure.
    assert_eq!(
        XksError::from(AuthError::ClockSkew).message(),
        XksError::from(AuthError::SignatureMismatch).message()
    );
}

#[test]
fn au_9_scope_date_must_match_x_amz_date() {
    let (mut parts, body) = curl_encrypt();
    edit_authorization(&mut parts, "/20261122/", "/20261121/");
    assert_eq!(check(&parts, &body), Err(AuthError::ScopeDateMismatch));
}

#[test]
fn au_3_service_and_terminator_are_fixed() {
    // Validly signed for service `kms`: rejected for the scope, not just the signature.
    let (parts, body) = ClientRequest {
        service: "kms",
        ..ClientRequest::new()
    }
    .sign();
    assert_eq!(check(&parts, &body), Err(AuthError::WrongService));
    let (mut parts, body) = curl_encrypt();
    edit_authorization(&mut parts, "/aws4_request", "/aws4_request2");
    assert_eq!(check(&parts, &body), Err(AuthError::WrongTerminator));
}

#[test]
fn au_4_region_allowlist() {
    let (parts, body) = curl_encrypt();
    let now = at(CURL_ENCRYPT_DATE);
    let eu_only = store(&[(AKID_1, SECRET_1)], Some(&["eu-west-1"]));
    assert_eq!(
        verify(&eu_only, &parts, &body, now),
        Err(AuthError::RegionNotAllowed)
    );
    // Without the secret the region is never the stated reason: the signature fails first.
    let wrong_secret = store(&[(AKID_1, SECRET_2)], Some(&["eu-west-1"]));
    assert_eq!(
        verify(&wrong_secret, &parts, &body, now),
        Err(AuthError::SignatureMismatch)
    );
    let both = store(&[(AKID_1, SECRET_1)], Some(&["eu-west-1", "us-east-1"]));
    assert_eq!(
        verify(&both, &parts, &body, now).unwrap().region,
        "us-east-1"
    );
    // Any region without an allowlist, e.g. one the proxy has never heard of.
    let (parts, body) = ClientRequest {
        region: "xx-mars-7",
        ..ClientRequest::new()
    }
    .sign();
    assert_eq!(check(&parts, &body).unwrap().region, "xx-mars-7");
}

#[test]
fn au_10_uppercase_hex_signature_is_rejected_as_malformed() {
    // Appendix A specifies lowercase hex; we accept nothing else rather than guess.
    let (mut parts, body) = curl_encrypt();
    let value = parts.headers["authorization"].to_str().unwrap();
    let (head, sig) = value.split_once("Signature=").unwrap();
    let upper = format!("{head}Signature={}", sig.to_ascii_uppercase());
    set(&mut parts, "authorization", &upper);
    assert!(matches!(
        check(&parts, &body),
        Err(AuthError::MalformedAuthorization(_))
    ));
}

#[test]
fn au_16_query_string_is_rejected() {
    let (mut parts, body) = curl_encrypt();
    parts.uri = "/kms/xks/v1/keys/foo/encrypt?a=b".parse().unwrap();
    assert_eq!(check(&parts, &body), Err(AuthError::UnexpectedQuery));
}

#[test]
fn au_15_errors_and_debug_never_echo_input_or_secrets() {
    let (mut parts, body) = curl_encrypt();
    edit_authorization(&mut parts, "Credential=", "Credential=<script>/");
    let err = XksError::from(check(&parts, &body).unwrap_err());
    assert_eq!(err.status().as_u16(), 401);
    assert!(!err.message().contains("script"), "{}", err.message());
    let debug = format!("{:?}", store(&[(AKID_1, SECRET_1)], Some(&["us-east-1"])));
    assert!(
        debug.contains(AKID_1) && !debug.contains(SECRET_1),
        "{debug}"
    );
}

#[test]
fn au_12_every_reason_is_401_with_a_snake_case_label_and_one_wire_message() {
    use AuthError::*;
    let all = [
        MissingAuthorization,
        MalformedAuthorization("x"),
        UnsupportedAlgorithm,
        MissingDate,
        MalformedDate,
        ClockSkew,
        ScopeDateMismatch,
        WrongService,
        WrongTerminator,
        RegionNotAllowed,
        MissingSignedHeader("host"),
        SignedHeaderAbsent,
        InvalidHeaderValue,
        UnexpectedQuery,
        UnknownAccessKeyId,
        SignatureMismatch,
        Signer,
    ];
    for err in all {
        let label = err.reason();
        assert!(
            label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{label}"
        );
        let wire = XksError::from(err);
        assert_eq!(
            wire.name(),
            ErrorName::AuthenticationFailedException,
            "{err:?}"
        );
        assert_eq!(
            wire.message(),
            XksError::from(SignatureMismatch).message(),
            "{err:?}"
        );
    }
}
