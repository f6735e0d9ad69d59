//! Verifier tests (XKS spec Appendix A; checklist AU-*, ROT-*), on requests captured from curl
//! and botocore (see `fixtures`) and on requests signed by `aws-sigv4` as a client:
//! `accepts` holds the known-answer and positive cases, `rejects` the negatives.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accepts;
mod fixtures;
mod paths;
mod rejects;

use http::HeaderValue;
use http::request::Parts;

use crate::auth::{AuthError, Authenticated, CredentialStore, verify};
use fixtures::*;

const CURL_ENCRYPT_DATE: &str = "20261122T104145Z";

fn curl_encrypt() -> (Parts, Vec<u8>) {
    parse_raw(CURL_ENCRYPT)
}

fn store_1() -> CredentialStore {
    store(&[(AKID_1, SECRET_1)], None)
}

/// Verifies against [`store_1`] at the request's own `X-Amz-Date`.
fn check(parts: &Parts, body: &[u8]) -> Result<Authenticated, AuthError> {
    let date = parts
        .headers
        .get("x-amz-date")
        .map_or(CURL_ENCRYPT_DATE, |v| v.to_str().unwrap());
    verify(&store_1(), parts, body, at(date))
}

fn set(parts: &mut Parts, name: &'static str, value: &str) {
    parts
        .headers
        .insert(name, HeaderValue::from_str(value).unwrap());
}

fn edit_authorization(parts: &mut Parts, from: &str, to: &str) {
    let value = parts.headers["authorization"]
        .to_str()
        .unwrap()
        .replace(from, to);
    assert_ne!(
        value, parts.headers["authorization"],
        "edit must change the header"
    );
    set(parts, "authorization", &value);
}
