//! The request pipeline without sockets or SoftHSM: the real router (`oneshot`) over the
//! in-memory backend, SigV4-signed with `aws-sigv4`. One test per spec error and stage, so a
//! change to the pipeline's order shows up here in milliseconds. The same behaviour is tested
//! end to end over TLS against SoftHSM2 in `tests/api.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, router};
use crate::hsm::fake::MemoryBackend;
use crate::hsm::{HsmError, KeyUsage};
use crate::metrics::Metrics;

mod authorization;
mod lifecycle;

const AKID: &str = "AKIAI2SFODNN7EXAMPLE";
const SECRET: &str = "GfHQzWbmSw4uRGZqKo5nhQKE+ILlcOt7VEqNdWCtuLY=";
const HOST: &str = "xks.example.com";

/// The proxy's router over an in-memory backend with keys `both`, `enc-only` and `dec-only`;
/// store `/a` serves every key, store `/b` only `both` and is limited to 4300-byte data.
struct Harness {
    backend: Arc<MemoryBackend>,
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(extra_store: &str) -> Self {
        let backend = MemoryBackend::default()
            .with_key("both", &[KeyUsage::Encrypt, KeyUsage::Decrypt])
            .with_key("enc-only", &[KeyUsage::Encrypt])
            .with_key("dec-only", &[KeyUsage::Decrypt]);
        Self::with(extra_store, "", backend)
    }

    /// The harness over `backend`, with `extra_store` in store `/a` and `tail` (top-level
    /// tables such as `[[keys]]`) at the end of the configuration.
    fn with(extra_store: &str, tail: &str, backend: MemoryBackend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), extra_store, tail);
        let backend = Arc::new(backend);
        let state = Arc::new(AppState::new(
            &settings,
            backend.clone(),
            Arc::new(Metrics::new()),
        ));
        Self {
            backend,
            state,
            _dir: dir,
        }
    }

    /// Reloads with another `extra_store` and `tail`, as SIGHUP would.
    fn reconfigure(&self, extra_store: &str, tail: &str) {
        let settings = settings(self._dir.path(), extra_store, tail);
        self.state.reconfigure(&settings);
    }
}

/// The harness configuration: stores `/a` (with `extra_store`) and `/b`, then `tail`.
fn settings(dir: &std::path::Path, extra_store: &str, tail: &str) -> crate::config::Settings {
    let module = dir.join("module.so");
    std::fs::write(&module, b"x").unwrap();
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
plaintext_behind_load_balancer = true
[hsm]
module = {module:?}
token_label = "t"
user_pin = "1234"
[[key_stores]]
name = "a"
path_prefix = "/a"
{extra_store}
[[key_stores.credentials]]
access_key_id = "{AKID}"
secret = "{SECRET}"
[[key_stores]]
name = "b"
path_prefix = "/b"
allowed_keys = ["both"]
[[key_stores.credentials]]
access_key_id = "BBBBBBBBBBBBBBBBBBBBBBBB22"
secret = "{SECRET}"
{tail}
"#
    );
    crate::config::load_from_str(&toml).unwrap()
}

impl Harness {
    /// Sends `method path` with `body`, signed with `akid` (when `Some`).
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        akid: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", HOST)
            .header("content-type", "application/json");
        if let Some(akid) = akid {
            for (name, value) in signature(method, path, body, akid) {
                builder = builder.header(name, value);
            }
        }
        let request = builder.body(Body::from(body.to_vec())).unwrap();
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send("POST", path, body.to_string().as_bytes(), Some(AKID))
            .await
    }
}

/// The `x-amz-date` and `authorization` headers `aws-sigv4` computes for the request.
fn signature(method: &str, path: &str, body: &[u8], akid: &str) -> Vec<(String, String)> {
    let identity: Identity = Credentials::new(akid, SECRET, None, None, "test").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::NoHeader;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("kms-xks-proxy")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let headers = [("host", HOST)];
    let signable =
        SignableRequest::new(method, path, headers.into_iter(), SignableBody::Bytes(body)).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

fn metadata(operation: &str) -> Value {
    json!({"kmsRequestId": "r-1", "kmsOperation": operation,
           "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
           "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/k-1"})
}

fn encrypt_body(plaintext: &[u8]) -> Value {
    json!({"requestMetadata": metadata("Encrypt"), "plaintext": b64(plaintext),
           "encryptionAlgorithm": "AES_GCM", "additionalAuthenticatedData": b64(b"aad")})
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[track_caller]
fn assert_error(reply: &(StatusCode, Value), status: u16, name: &str) {
    assert_eq!(
        (reply.0.as_u16(), reply.1["errorName"].as_str()),
        (status, Some(name)),
        "{}",
        reply.1
    );
    assert!(
        reply.1["errorMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn a_round_trip_through_the_whole_pipeline() {
    let h = Harness::new("");
    let (status, sealed) = h
        .post("/a/kms/xks/v1/keys/both/encrypt", &encrypt_body(b"hello"))
        .await;
    assert_eq!(status, StatusCode::OK, "{sealed}");
    let decrypt = json!({"requestMetadata": metadata("Decrypt"), "ciphertext": sealed["ciphertext"],
        "ciphertextMetadata": sealed["ciphertextMetadata"],
        "initializationVector": sealed["initializationVector"],
        "authenticationTag": sealed["authenticationTag"], "encryptionAlgorithm": "AES_GCM",
        "additionalAuthenticatedData": b64(b"aad")});
    let (status, plain) = h.post("/a/kms/xks/v1/keys/both/decrypt", &decrypt).await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    assert_eq!(plain["plaintext"], b64(b"hello"));
    let (status, meta) = h
        .post(
            "/a/kms/xks/v1/keys/both/metadata",
            &json!({"requestMetadata": metadata("DescribeKey")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["keySpec"], "AES_256");
    assert_eq!(meta["keyUsage"], json!(["ENCRYPT", "DECRYPT"]));
}

#[tokio::test]
async fn errors_before_authentication_come_in_spec_order() {
    let h = Harness::new("");
    let body = encrypt_body(b"x").to_string();
    // 404 before 405 before 401: an unknown prefix is never authenticated.
    let unknown = h
        .send("POST", "/zz/kms/xks/v1/health", body.as_bytes(), None)
        .await;
    assert_error(&unknown, 404, "InvalidUriPathException");
    let wrong_method = h
        .send("GET", "/a/kms/xks/v1/health", body.as_bytes(), None)
        .await;
    assert_eq!(wrong_method.0, StatusCode::METHOD_NOT_ALLOWED);
    let unsigned = h
        .send("POST", "/a/kms/xks/v1/health", body.as_bytes(), None)
        .await;
    assert_error(&unsigned, 401, "AuthenticationFailedException");
    // A credential of store b does not open store a (AU-13), with the same message.
    let other_store = h
        .send(
            "POST",
            "/a/kms/xks/v1/health",
            body.as_bytes(),
            Some("BBBBBBBBBBBBBBBBBBBBBBBB22"),
        )
        .await;
    assert_error(&other_store, 401, "AuthenticationFailedException");
    assert_eq!(other_store.1["errorMessage"], unsigned.1["errorMessage"]);
}

#[tokio::test]
async fn errors_after_authentication_name_the_spec_error() {
    let h = Harness::new("");
    let keys = |key: &str, op: &str| format!("/a/kms/xks/v1/keys/{key}/{op}");
    let cases = [
        (
            keys("both", "encrypt"),
            json!({"requestMetadata": metadata("Encrypt")}),
            400,
            "ValidationException",
        ),
        (
            keys("missing", "encrypt"),
            encrypt_body(b"x"),
            404,
            "KeyNotFoundException",
        ),
        (
            keys("dec-only", "encrypt"),
            encrypt_body(b"x"),
            400,
            "InvalidKeyUsageException",
        ),
        (
            keys("both", "encrypt"),
            encrypt_body(&[7; 40_000]),
            501,
            "UnsupportedOperationException",
        ),
        (
            keys("both", "encrypt"),
            encrypt_body(b""),
            400,
            "ValidationException",
        ),
        (
            keys("both", "decrypt"),
            json!({"requestMetadata": metadata("Decrypt"), "ciphertext": b64(b"c"),
                   "initializationVector": b64(&[1; 11]), "authenticationTag": b64(&[1; 16]),
                   "encryptionAlgorithm": "AES_GCM"}),
            400,
            "InvalidCiphertextException",
        ),
        (
            keys("both", "decrypt"),
            json!({"requestMetadata": metadata("Decrypt"), "ciphertext": b64(b"c"),
                   "initializationVector": b64(&[1; 12]), "authenticationTag": b64(&[1; 16]),
                   "encryptionAlgorithm": "AES_GCM"}),
            400,
            "InvalidCiphertextException",
        ),
    ];
    for (path, body, status, name) in cases {
        let reply = h.post(&path, &body).await;
        assert_error(&reply, status, name);
    }
    // Store b serves only `both`: another key is not found there (URI-3).
    let reply = h
        .send(
            "POST",
            "/b/kms/xks/v1/keys/enc-only/encrypt",
            encrypt_body(b"x").to_string().as_bytes(),
            Some("BBBBBBBBBBBBBBBBBBBBBBBB22"),
        )
        .await;
    assert_error(&reply, 404, "KeyNotFoundException");
}

#[tokio::test]
async fn hsm_failures_map_to_their_spec_errors() {
    let h = Harness::new("");
    let path = "/a/kms/xks/v1/keys/both/encrypt";
    for (failure, status, name) in [
        (HsmError::Busy, 429, "ThrottlingException"),
        (HsmError::Timeout, 503, "DependencyTimeoutException"),
        (
            HsmError::Unavailable("rebuilding".into()),
            500,
            "InternalException",
        ),
        (HsmError::KeyNotFound, 404, "KeyNotFoundException"),
    ] {
        h.backend.fail_next(failure);
        let reply = h.post(path, &encrypt_body(b"x")).await;
        assert_error(&reply, status, name);
        assert!(
            !reply.1["errorMessage"]
                .as_str()
                .unwrap_or_default()
                .contains("rebuilding"),
            "internal detail leaked: {}",
            reply.1
        );
    }
}

#[tokio::test]
async fn a_disabled_store_answers_invalid_state_after_authentication() {
    let h = Harness::new("enabled = false");
    let reply = h
        .post("/a/kms/xks/v1/keys/both/encrypt", &encrypt_body(b"x"))
        .await;
    assert_error(&reply, 400, "InvalidStateException");
    let unsigned = h
        .send("POST", "/a/kms/xks/v1/keys/both/encrypt", b"{}", None)
        .await;
    assert_error(&unsigned, 401, "AuthenticationFailedException");
}
