//! Router tests: the JSON 1.1 envelope, error shape and headers, `AWS_KMS` keys end to end,
//! and the XKS deadline against a proxy that never answers (no proxy or SDK needed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::Request;
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use tower::ServiceExt;
use zeroize::Zeroizing;

use super::router;
use crate::config::{InboundCredential, Settings};
use crate::ops::Front;
use crate::state::{ConnectionState, CustomKeyStore, Db, Key, KeyOrigin};
use crate::xks_client::XksClient;

fn front(inbound: Option<InboundCredential>) -> Arc<Front> {
    let tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
    Arc::new(Front {
        db: Db::open(None).unwrap(),
        xks: XksClient::new(
            Arc::new(tls),
            "us-east-1".into(),
            Duration::from_millis(250),
        ),
        settings: Settings {
            region: "us-east-1".into(),
            account_id: "111122223333".into(),
            inbound,
            xks_timeout: Duration::from_millis(250),
        },
    })
}

/// Calls `operation` and returns status, request id header and JSON body.
async fn call(front: &Arc<Front>, operation: &str, body: &str) -> (u16, String, Value) {
    let request = Request::post("/")
        .header("x-amz-target", format!("TrentService.{operation}"))
        .header("content-type", "application/x-amz-json-1.1")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = router(Arc::clone(front)).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/x-amz-json-1.1"
    );
    let request_id = response.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, request_id, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn errors_have_the_json_1_1_shape() {
    let front = front(None);
    let (status, id, body) = call(&front, "ScheduleKeyDeletion", "{}").await;
    assert_eq!(status, 400);
    assert_eq!(id.len(), 36);
    assert_eq!(body["__type"], "UnknownOperationException");
    assert!(body["message"].is_string());
    let (_, _, body) = call(&front, "ListKeys", "[1]").await;
    assert_eq!(body["__type"], "SerializationException");
    let (_, _, body) = call(&front, "DescribeKey", "{}").await;
    assert_eq!(body["__type"], "ValidationException");
    let (_, _, body) = call(&front, "DescribeKey", r#"{"KeyId":"alias/x"}"#).await;
    assert_eq!(body["__type"], "NotFoundException");
}

#[tokio::test]
async fn inbound_sigv4_is_required_when_configured() {
    let front = front(Some(InboundCredential {
        access_key_id: "AKID".into(),
        secret: Zeroizing::new("secret".into()),
    }));
    let (status, _, body) = call(&front, "ListKeys", "{}").await;
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "MissingAuthenticationTokenException");
}

#[tokio::test]
async fn aws_kms_keys_round_trip_with_epoch_timestamps() {
    let front = front(None);
    let (status, _, created) = call(&front, "CreateKey", "{}").await;
    assert_eq!(status, 200, "{created}");
    let meta = &created["KeyMetadata"];
    assert!(meta["CreationDate"].is_f64(), "epoch seconds: {meta}");
    assert_eq!(meta["KeyState"], "Enabled");
    let key = meta["KeyId"].as_str().unwrap();
    let request = json!({"KeyId": key, "Plaintext": "aGVsbG8=", "EncryptionContext": {"a": "b"}});
    let (_, _, encrypted) = call(&front, "Encrypt", &request.to_string()).await;
    let blob = encrypted["CiphertextBlob"].as_str().unwrap();
    let request = json!({"CiphertextBlob": blob, "EncryptionContext": {"a": "b"}});
    let (_, _, decrypted) = call(&front, "Decrypt", &request.to_string()).await;
    assert_eq!(decrypted["Plaintext"], "aGVsbG8=");
    let (_, _, wrong) = call(
        &front,
        "Decrypt",
        &json!({"CiphertextBlob": blob}).to_string(),
    )
    .await;
    assert_eq!(wrong["__type"], "InvalidCiphertextException");
}

/// A proxy that accepts TCP connections and never speaks: every call hits the deadline.
#[tokio::test]
async fn a_silent_proxy_times_out_after_250_ms() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let front = front(None);
    let store = CustomKeyStore {
        id: "cks-00000000000000000".into(),
        name: "silent".into(),
        uri_endpoint: format!("https://localhost:{port}"),
        uri_path: "/kms/xks/v1".into(),
        access_key_id: "AAAAAAAAAAAAAAAAAAAA".into(),
        secret: Zeroizing::new("s".repeat(43)),
        state: ConnectionState::Connected,
        error_code: None,
        creation_date: 0.0,
    };
    let key = Key {
        id: "6f1c1c8e-8b0a-4c1e-9b7e-2f2d6f1f4a10".into(),
        description: String::new(),
        enabled: true,
        origin: KeyOrigin::ExternalKeyStore,
        custom_key_store_id: Some(store.id.clone()),
        xks_key_id: Some("k".into()),
        aws_key: Zeroizing::new(vec![7; 32]),
        creation_date: 0.0,
    };
    front
        .db
        .update(|s| {
            s.stores.insert(store.id.clone(), store.clone());
            s.keys.insert(key.id.clone(), key.clone());
            Ok::<_, crate::error::KmsError>(())
        })
        .await
        .unwrap();
    let started = Instant::now();
    let request = json!({"KeyId": key.id, "Plaintext": "aGVsbG8="});
    let (_, _, body) = call(&front, "Encrypt", &request.to_string()).await;
    let elapsed = started.elapsed();
    assert_eq!(body["__type"], "KMSInvalidStateException", "{body}");
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");

    let id = json!({"CustomKeyStoreId": store.id}).to_string();
    call(&front, "DisconnectCustomKeyStore", &id).await;
    let (status, _, _) = call(&front, "ConnectCustomKeyStore", &id).await;
    assert_eq!(status, 200);
    let (_, _, described) = call(&front, "DescribeCustomKeyStores", "{}").await;
    let entry = &described["CustomKeyStores"][0];
    assert_eq!(entry["ConnectionState"], "FAILED");
    assert_eq!(entry["ConnectionErrorCode"], "XKS_PROXY_TIMED_OUT");
    drop(silent);
}
