//! The direct signature (`canonical`) against `aws-sigv4`'s full signer: for ordinary requests
//! the direct path computes the client's signature itself; for requests that need normalising
//! it declines and the full signer verifies them. Both are checked through [`verify`] too.

use http::request::Parts;

use super::*;
use crate::auth::CredentialStore;
use crate::auth::canonical::{self, Signable, Signer};
use crate::auth::header::{parse_amz_date, parse_authorization};
use crate::auth::sigv4::signed_header_values;

/// What the direct path computes for `parts` with `store`'s first credential, `None` if it
/// declines.
fn direct(parts: &Parts, body: &[u8], store: &CredentialStore) -> Option<String> {
    let auth_value = parts.headers["authorization"].to_str().unwrap();
    let auth = parse_authorization(auth_value).unwrap();
    let amz_date = parts.headers["x-amz-date"].to_str().unwrap();
    let headers = signed_header_values(parts, &auth.signed_headers).unwrap();
    let request = Signable {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        headers: &headers,
        body,
        amz_date,
        time: parse_amz_date(amz_date).unwrap(),
    };
    let signer = Signer {
        store,
        credential: 0,
    };
    canonical::signature(&request, &auth, &signer)
}

/// The signature the client sent.
fn sent(parts: &Parts) -> String {
    let value = parts.headers["authorization"].to_str().unwrap();
    parse_authorization(value).unwrap().signature.to_owned()
}

#[test]
fn ordinary_requests_are_signed_directly_with_the_clients_result() {
    let keys = store_1();
    let cases: Vec<(Parts, Vec<u8>)> = vec![
        curl_encrypt(),
        boto_h2(),
        ClientRequest::new().sign(),
        ClientRequest {
            headers: &[
                ("host", "xks.example.com:8443"),
                ("content-type", "application/json; charset=utf-8"),
                ("user-agent", "aws-sdk-js/3 ua/2.1 os/linux lang/js"),
                ("x-amz-user-agent", "kms"),
            ],
            body: br#"{"requestMetadata":{"kmsOperation":"Encrypt"},"plaintext":"AA=="}"#,
            ..ClientRequest::new()
        }
        .sign(),
        ClientRequest {
            uri: "https://xks.example.com/tenant-a/kms/xks/v1/health",
            headers: &[("content-type", "application/json")],
            region: "eu-west-1",
            ..ClientRequest::new()
        }
        .sign(),
    ];
    for (n, (parts, body)) in cases.iter().enumerate() {
        // Twice: the second derives nothing (the key comes from the cache).
        for _ in 0..2 {
            assert_eq!(
                direct(parts, body, &keys).as_deref(),
                Some(sent(parts).as_str()),
                "case {n}"
            );
        }
        let date = parts.headers["x-amz-date"].to_str().unwrap();
        assert!(
            verify(&store_1(), parts, body, at(date)).is_ok(),
            "case {n}"
        );
    }
    // A client with another secret gets another signature, from a cold cache and a warm one.
    let (parts, body) = ClientRequest {
        secret: SECRET_2,
        ..ClientRequest::new()
    }
    .sign();
    let fresh = store_1();
    for _ in 0..2 {
        assert_ne!(direct(&parts, &body, &fresh), Some(sent(&parts)));
    }
}

/// AU-12: the cache is keyed by date and region only, with every credential's key and the
/// decoy's derived together, so an unknown access key id warms or finds the same entry as a
/// known one: the time a request takes does not tell whether its access key id exists.
#[test]
fn known_and_unknown_access_key_ids_share_the_cache_entry() {
    let store = store_1();
    let unknown = ClientRequest {
        akid: "AKIAUNKNOWNUNKNOWN00",
        region: "eu-central-2",
        ..ClientRequest::new()
    }
    .sign();
    let date = unknown.0.headers["x-amz-date"].to_str().unwrap().to_owned();
    assert_eq!(
        verify(&store, &unknown.0, &unknown.1, at(&date)),
        Err(AuthError::UnknownAccessKeyId)
    );
    assert_eq!(store.signing_keys.scopes(), 1);
    let known = ClientRequest {
        region: "eu-central-2",
        ..ClientRequest::new()
    }
    .sign();
    assert!(verify(&store, &known.0, &known.1, at(&date)).is_ok());
    assert_eq!(
        store.signing_keys.scopes(),
        1,
        "the known id used the same entry"
    );
    let elsewhere = ClientRequest {
        region: "ap-south-2",
        ..ClientRequest::new()
    }
    .sign();
    assert!(verify(&store, &elsewhere.0, &elsewhere.1, at(&date)).is_ok());
    assert_eq!(store.signing_keys.scopes(), 2);
}

#[test]
fn requests_that_need_normalising_go_to_the_full_signer_and_verify() {
    let keys = store_1();
    let doubled_spaces = ClientRequest {
        headers: &[
            ("host", "xks.example.com"),
            ("content-type", "application/json"),
            ("x-note", "two  spaces   inside"),
        ],
        ..ClientRequest::new()
    }
    .sign();
    let mut repeated = ClientRequest {
        headers: &[
            ("host", "xks.example.com"),
            ("content-type", "application/json"),
            ("x-note", "a"),
        ],
        ..ClientRequest::new()
    };
    // aws-sigv4 joins repeated values with ',' and signs one line.
    repeated.headers = &[
        ("host", "xks.example.com"),
        ("content-type", "application/json"),
        ("x-note", "a"),
        ("x-note", "b"),
    ];
    let repeated = repeated.sign();
    for (name, (parts, body)) in [("doubled spaces", doubled_spaces), ("repeated", repeated)] {
        assert_eq!(direct(&parts, &body, &keys), None, "{name}");
        let date = parts.headers["x-amz-date"].to_str().unwrap();
        assert!(
            verify(&store_1(), &parts, &body, at(date)).is_ok(),
            "{name}: the full signer verifies it"
        );
    }
}
