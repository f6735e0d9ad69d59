//! XKS API conformance against the real server, real TLS, real SigV4 and a real SoftHSM2
//! token. Each test names the checklist IDs it covers and asserts exact statuses, exact
//! `errorName`s and round-trip bytes.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use xks_proxy::hsm::KeyUsage;

use support::bodies::{self, b64, unb64};
use support::softhsm::{self, create_key};
use support::{AKID_A2, AKID_B, Proxy, ProxyBuilder, SECRET_A2, SECRET_B, Signer};

const AAD: &[u8] = b"project=nile,department=marketing";

fn key_path(prefix: &str, key: &str, op: &str) -> String {
    format!("{prefix}/kms/xks/v1/keys/{key}/{op}")
}

fn ed_key() -> String {
    create_key("ed", &[KeyUsage::Encrypt, KeyUsage::Decrypt])
}

#[tokio::test]
async fn h_2_h_6_h_7_h_12_h_17_health_is_a_deep_check_with_the_spec_shape() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let reply = proxy
        .client()
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await;
    let body = reply.assert_ok();
    assert!(reply.text().contains("\"healthStatus\":"));
    assert_eq!(body["xksProxyFleetSize"], json!(2));
    assert_eq!(body["xksProxyVendor"], "xks-proxy");
    assert!(
        body["xksProxyModel"]
            .as_str()
            .unwrap()
            .starts_with("xks-proxy ")
    );
    assert_eq!(body["ekmVendor"], "SoftHSM project");
    let fleet = body["ekmFleetDetails"].as_array().unwrap();
    assert_eq!(fleet.len(), 1);
    assert_eq!(fleet[0]["healthStatus"], "ACTIVE");
    assert!(!fleet[0]["id"].as_str().unwrap().is_empty());
    assert!(fleet[0]["model"].as_str().unwrap().contains("SoftHSM"));
}

#[tokio::test]
async fn h_18_err_3_g_7_malformed_health_requests_are_validation_errors() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let client = proxy.client();
    for body in [&b"{}"[..], br#"{"requestMetadata":{}}"#, b"not json"] {
        client
            .post("/tenant-a/kms/xks/v1/health", body)
            .await
            .assert_error(400, "ValidationException");
    }
    // H-5, G-4: an unlisted kmsOperation is accepted.
    let odd = br#"{"requestMetadata":{"kmsRequestId":"x","kmsOperation":"SomethingNew"}}"#;
    client
        .post("/tenant-a/kms/xks/v1/health", odd)
        .await
        .assert_ok();
}

#[tokio::test]
async fn k_1_to_k_7_metadata_reports_the_keys_real_attributes() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let client = proxy.client();
    let cases = [
        (
            vec![KeyUsage::Encrypt, KeyUsage::Decrypt],
            json!(["ENCRYPT", "DECRYPT"]),
        ),
        (vec![KeyUsage::Encrypt], json!(["ENCRYPT"])),
        (vec![KeyUsage::Decrypt], json!(["DECRYPT"])),
        (vec![], json!([])),
        (
            vec![
                KeyUsage::Encrypt,
                KeyUsage::Decrypt,
                KeyUsage::Wrap,
                KeyUsage::Unwrap,
            ],
            json!(["ENCRYPT", "DECRYPT", "WRAP", "UNWRAP"]),
        ),
    ];
    for (usages, expected) in cases {
        let key = create_key("meta", &usages);
        let reply = client
            .post(
                &key_path("/tenant-a", &key, "metadata"),
                &bodies::metadata(),
            )
            .await;
        let body = reply.assert_ok();
        assert_eq!(
            body,
            json!({"keySpec": "AES_256", "keyUsage": expected, "keyStatus": "ENABLED"})
        );
    }
}

#[tokio::test]
async fn g_5_g_4_extra_metadata_fields_and_unlisted_operations_are_accepted() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let key = ed_key();
    let body = json!({"requestMetadata": {
        "awsPrincipalArn": "AWS Internal", "kmsOperation": "DescribeKey", "kmsRequestId": "not-a-uuid",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/x", "kmsViaService": "ebs",
        "kmsRecipientAttestationImageSha384": "abc"}, "futureTopLevel": true});
    let reply = proxy
        .client()
        .post(
            &key_path("/tenant-a", &key, "metadata"),
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(reply.assert_ok()["keySpec"], "AES_256");
    // G-7: a missing REQUIRED field is a ValidationException.
    let missing = json!({"requestMetadata": {"kmsOperation": "CreateKey", "kmsRequestId": "r"}});
    proxy
        .client()
        .post(
            &key_path("/tenant-a", &key, "metadata"),
            missing.to_string().as_bytes(),
        )
        .await
        .assert_error(400, "ValidationException");
}

#[tokio::test]
async fn e_1_e_6_e_7_e_11_e_12_d_8_round_trip_over_http1_and_http2() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let key = ed_key();
    for client in [proxy.client(), proxy.client().http2()] {
        let reply = client
            .encrypt("/tenant-a", &key, b"Hello World!", Some(AAD), false)
            .await;
        let enc = reply.assert_ok();
        assert!(reply.text().contains("\"ciphertext\":"));
        let keys: Vec<_> = enc.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys.len(),
            4,
            "only ciphertext, its metadata, IV and tag: {keys:?}"
        );
        // Format 1, key version 1 (the key was never rotated).
        assert_eq!(unb64(&enc["ciphertextMetadata"]), [1, 0, 0, 0, 1]);
        assert_eq!(unb64(&enc["ciphertext"]).len(), 12);
        assert_eq!(unb64(&enc["initializationVector"]).len(), 12);
        assert_eq!(unb64(&enc["authenticationTag"]).len(), 16);
        assert_ne!(unb64(&enc["ciphertext"]), b"Hello World!");

        let dec = bodies::decrypt_from(&enc, Some(AAD));
        let reply = client.decrypt("/tenant-a", &key, &dec).await;
        assert_eq!(unb64(&reply.assert_ok()["plaintext"]), b"Hello World!");
    }
}

#[tokio::test]
async fn e_11_every_encryption_gets_a_fresh_iv() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let key = ed_key();
    let client = proxy.client();
    let mut ivs = std::collections::HashSet::new();
    for _ in 0..20 {
        let enc = client
            .encrypt("/tenant-a", &key, b"same", None, false)
            .await
            .assert_ok();
        assert!(ivs.insert(unb64(&enc["initializationVector"])), "IV reused");
    }
}

#[tokio::test]
async fn e_16_tr_11_tr_12_largest_spec_inputs_round_trip() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let key = ed_key();
    let client = proxy.client();
    let plaintext: Vec<u8> = (0..4300u32).map(|i| (i * 7 % 251) as u8).collect();
    let aad: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 253) as u8).collect();
    let long_arn = format!("arn:aws:iam::123456789012:role/{}", "r".repeat(2048 - 31));
    assert_eq!(long_arn.len(), 2048);
    let mut body: serde_json::Value =
        serde_json::from_slice(&bodies::encrypt(&plaintext, Some(&aad), true)).unwrap();
    body["requestMetadata"]["awsPrincipalArn"] = json!(long_arn);
    body["requestMetadata"]["kmsKeyArn"] = json!(long_arn);
    let enc = client
        .post(
            &key_path("/tenant-a", &key, "encrypt"),
            body.to_string().as_bytes(),
        )
        .await
        .assert_ok();
    assert_eq!(unb64(&enc["ciphertext"]).len(), 4300);
    let mut dec = bodies::decrypt_from(&enc, Some(&aad));
    dec["requestMetadata"]["awsPrincipalArn"] = json!(long_arn);
    let reply = client.decrypt("/tenant-a", &key, &dec).await;
    assert_eq!(unb64(&reply.assert_ok()["plaintext"]), plaintext);
}

#[tokio::test]
async fn cdiv_1_cdiv_2_cdiv_3_the_integrity_value_recomputes() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let key = ed_key();
    let client = proxy.client();
    for aad in [Some(AAD), None] {
        let reply = client
            .encrypt("/tenant-a", &key, b"Hello World!", aad, true)
            .await;
        let enc = reply.assert_ok();
        assert!(reply.text().contains("\"ciphertextDataIntegrityValue\":"));
        let mut hash = Sha256::new();
        hash.update(aad.unwrap_or_default());
        hash.update(unb64(&enc["ciphertextMetadata"]));
        hash.update(unb64(&enc["initializationVector"]));
        hash.update(unb64(&enc["ciphertext"]));
        hash.update(unb64(&enc["authenticationTag"]));
        assert_eq!(
            enc["ciphertextDataIntegrityValue"],
            json!(b64(&hash.finalize()))
        );
    }
}

#[tokio::test]
async fn cdiv_8_d_11_e_key_usage_is_enforced_by_the_hsm() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let client = proxy.client();
    let encrypt_only = create_key("enc-only", &[KeyUsage::Encrypt]);
    let decrypt_only = create_key("dec-only", &[KeyUsage::Decrypt]);
    let neither = create_key("no-usage", &[]);
    let both = ed_key();

    let enc = client
        .encrypt("/tenant-a", &encrypt_only, b"x", None, false)
        .await
        .assert_ok();
    // D-11: decrypt with an encrypt-only key.
    let dec = bodies::decrypt_from(&enc, None);
    client
        .decrypt("/tenant-a", &encrypt_only, &dec)
        .await
        .assert_error(400, "InvalidKeyUsageException");
    // CDIV-8: the verification decrypt is not permitted on an encrypt-only key.
    client
        .encrypt("/tenant-a", &encrypt_only, b"x", None, true)
        .await
        .assert_error(400, "InvalidKeyUsageException");
    for key in [&decrypt_only, &neither] {
        client
            .encrypt("/tenant-a", key, b"x", None, false)
            .await
            .assert_error(400, "InvalidKeyUsageException");
    }
    // A ciphertext of another key decrypts with a decrypt-only key only if it is that key's.
    let enc = client
        .encrypt("/tenant-a", &both, b"x", None, false)
        .await
        .assert_ok();
    let dec = bodies::decrypt_from(&enc, None);
    client
        .decrypt("/tenant-a", &neither, &dec)
        .await
        .assert_error(400, "InvalidKeyUsageException");
    client
        .decrypt("/tenant-a", &decrypt_only, &dec)
        .await
        .assert_error(400, "InvalidCiphertextException");
}

#[tokio::test]
async fn d_3_d_10_aad_3_any_tampering_is_invalid_ciphertext() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let key = ed_key();
    let client = proxy.client();
    let path = key_path("/tenant-a", &key, "decrypt");
    let enc = client
        .encrypt("/tenant-a", &key, b"Hello World!", Some(AAD), false)
        .await
        .assert_ok();

    let mut cases = vec![
        ("no AAD", bodies::decrypt_from(&enc, None)),
        (
            "other AAD",
            bodies::decrypt_from(&enc, Some(b"project=nile,department=sales")),
        ),
    ];
    let mut with_ctm = bodies::decrypt_from(&enc, Some(AAD));
    with_ctm["ciphertextMetadata"] = json!(b64(b"key_version=1"));
    cases.push(("metadata added", with_ctm));
    for field in ["ciphertext", "authenticationTag", "initializationVector"] {
        let mut bytes = unb64(&enc[field]);
        bytes[0] ^= 1;
        let mut body = bodies::decrypt_from(&enc, Some(AAD));
        body[field] = json!(b64(&bytes));
        cases.push((field, body));
    }
    // AAD-3: the AAD moved into the metadata slot must not authenticate.
    let enc2 = client
        .encrypt("/tenant-a", &key, b"x", Some(b"m"), false)
        .await
        .assert_ok();
    let mut swapped = bodies::decrypt_from(&enc2, None);
    swapped["ciphertextMetadata"] = json!(b64(b"m"));
    cases.push(("aad as metadata", swapped));
    for (what, body) in cases {
        let reply = client.post(&path, body.to_string().as_bytes()).await;
        assert_eq!(
            (reply.status, reply.error_name()),
            (400, "InvalidCiphertextException".to_owned()),
            "{what}"
        );
    }
    // And the untouched request still decrypts.
    let ok = client
        .post(
            &path,
            bodies::decrypt_from(&enc, Some(AAD)).to_string().as_bytes(),
        )
        .await;
    assert_eq!(unb64(&ok.assert_ok()["plaintext"]), b"Hello World!");
}

#[tokio::test]
async fn d_2_d_6_d_7_malformed_iv_tag_and_metadata_are_rejected_before_the_hsm() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let key = ed_key();
    let client = proxy.client();
    let path = key_path("/tenant-a", &key, "decrypt");
    let enc = client
        .encrypt("/tenant-a", &key, b"abc", None, false)
        .await
        .assert_ok();
    let with = |field: &str, value: serde_json::Value| {
        let mut body = bodies::decrypt_from(&enc, None);
        body[field] = value;
        body.to_string().into_bytes()
    };
    client
        .post(&path, &with("initializationVector", json!(b64(&[0; 8]))))
        .await
        .assert_error(400, "InvalidCiphertextException");
    client
        .post(&path, &with("authenticationTag", json!(b64(&[0; 15]))))
        .await
        .assert_error(400, "InvalidCiphertextException");
    // D-6: a 16-byte IV passes validation and reaches the HSM, where it cannot authenticate
    // (the length check would answer with another message).
    let reply = client
        .post(&path, &with("initializationVector", json!(b64(&[7; 16]))))
        .await;
    reply.assert_error(400, "InvalidCiphertextException");
    assert_eq!(
        reply.json()["errorMessage"],
        "ciphertext authentication failed"
    );
    client
        .post(&path, &with("ciphertextMetadata", json!(b64(&[1; 21]))))
        .await
        .assert_error(400, "ValidationException");
    client
        .post(&path, &with("ciphertext", json!("not base64!")))
        .await
        .assert_error(400, "ValidationException");
    client
        .post(&path, &with("encryptionAlgorithm", json!("AES_CBC")))
        .await
        .assert_error(400, "ValidationException");
}

#[tokio::test]
async fn e_3_e_5_e_18_encrypt_input_validation() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let key = ed_key();
    let client = proxy.client();
    let path = key_path("/tenant-a", &key, "encrypt");
    let base: serde_json::Value =
        serde_json::from_slice(&bodies::encrypt(b"abc", None, false)).unwrap();
    let with = |field: &str, value: serde_json::Value| {
        let mut body = base.clone();
        body[field] = value;
        body.to_string().into_bytes()
    };
    client
        .post(&path, &with("encryptionAlgorithm", json!("AES_CBC")))
        .await
        .assert_error(400, "ValidationException");
    client
        .post(
            &path,
            &with("ciphertextDataIntegrityValueAlgorithm", json!("SHA_512")),
        )
        .await
        .assert_error(400, "ValidationException");
    client
        .post(&path, &with("plaintext", json!("SGVsbG8")))
        .await
        .assert_error(400, "ValidationException");
    client
        .post(&path, &with("plaintext", json!(null)))
        .await
        .assert_error(400, "ValidationException");
    // E-18: an empty plaintext is refused (KMS never sends one).
    client
        .post(&path, &with("plaintext", json!("")))
        .await
        .assert_error(400, "ValidationException");
    // G-9: an empty AAD string is the same as no AAD.
    let enc = client
        .post(&path, &with("additionalAuthenticatedData", json!("")))
        .await
        .assert_ok();
    let dec = bodies::decrypt_from(&enc, None);
    client.decrypt("/tenant-a", &key, &dec).await.assert_ok();
}

#[tokio::test]
async fn uri_8_k_2_unknown_ambiguous_and_hidden_keys() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let client = proxy.client();
    client
        .post(
            &key_path("/tenant-a", "no-such-key", "metadata"),
            &bodies::metadata(),
        )
        .await
        .assert_error(404, "KeyNotFoundException");
    client
        .encrypt("/tenant-a", "no-such-key", b"x", None, false)
        .await
        .assert_error(404, "KeyNotFoundException");
    // The health-check key is never a customer key (H-3).
    client
        .encrypt("/tenant-a", softhsm::HEALTH_KEY, b"x", None, false)
        .await
        .assert_error(404, "KeyNotFoundException");

    // URI-8: a second object with the same label makes the id ambiguous; never guess.
    let label = ed_key();
    softhsm::pkcs11_tool_keygen(&label, "AES:32");
    client
        .post(
            &key_path("/tenant-a", &label, "metadata"),
            &bodies::metadata(),
        )
        .await
        .assert_error(404, "KeyNotFoundException");

    // K-2: a 128-bit AES key is reported truthfully and refused for crypto.
    let small = softhsm::unique_label("aes128");
    softhsm::pkcs11_tool_keygen(&small, "AES:16");
    let body = client
        .post(
            &key_path("/tenant-a", &small, "metadata"),
            &bodies::metadata(),
        )
        .await
        .assert_ok();
    assert_eq!(body["keySpec"], "AES_128");
    client
        .encrypt("/tenant-a", &small, b"x", None, false)
        .await
        .assert_error(400, "InvalidKeyUsageException");
}

#[tokio::test]
async fn uri_10_uri_11_au_12_invalid_paths_are_404_before_authentication() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let key = ed_key();
    let client = proxy.client();
    let long_key = "k".repeat(129);
    let paths = [
        "/tenant-a/invalid/kms/xks/v1/health".to_owned(),
        "/tenant-c/kms/xks/v1/health".to_owned(),
        "/kms/xks/v1/health".to_owned(),
        "/tenant-a/kms/xks/v2/health".to_owned(),
        "/tenant-a/kms/xks/v1/health/".to_owned(),
        "/tenant-a/kms/xks/v1/keys//encrypt".to_owned(),
        format!("/tenant-a/kms/xks/v1/keys/{key}/sign"),
        format!("/tenant-a/kms/xks/v1/keys/{key}/ENCRYPT"),
        format!("/tenant-a/kms/xks/v1/keys/{long_key}/encrypt"),
        "/tenant-a/kms/xks/v1/keys/a%2Fb/encrypt".to_owned(),
        "/tenant-a/kms/xks/v1/keys/a:b/encrypt".to_owned(),
        "/tenant-a/kms/xks/v1/health?x=1".to_owned(),
    ];
    for path in &paths {
        // Correctly signed for that path, and unsigned: both 404.
        client
            .post(path, &bodies::health())
            .await
            .assert_error(404, "InvalidUriPathException");
        client
            .clone()
            .signer(None)
            .post(path, &bodies::health())
            .await
            .assert_error(404, "InvalidUriPathException");
    }
}

#[tokio::test]
async fn mth_2_mth_3_lb_1_non_post_is_405_and_ping_is_open() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let client = proxy.client().signer(None);
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let reply = client
            .send(method, "/tenant-a/kms/xks/v1/health", &[], b"")
            .await;
        assert_eq!(reply.status, 405, "{method}");
        assert_eq!(reply.headers["allow"], "POST");
        assert_eq!(reply.headers["content-type"], "application/json");
        reply.assert_error(405, "UnsupportedOperationException");
        let reply = client
            .send(method, "/tenant-a/kms/xks/v1/keys/k/encrypt", &[], b"")
            .await;
        assert_eq!(reply.status, 405, "{method}");
    }
    let ping = client.send("GET", "/ping", &[], b"").await;
    assert_eq!((ping.status, ping.text().as_str()), (200, "pong"));
    let ping = client.clone().http2().send("GET", "/ping", &[], b"").await;
    assert_eq!(ping.status, 200);
    let post = client.send("POST", "/ping", &[], b"").await;
    post.assert_error(405, "UnsupportedOperationException");
    assert_eq!(post.headers["allow"], "GET");
}

#[tokio::test]
async fn au_1_au_11_au_12_authentication_failures_are_401() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let path = "/tenant-a/kms/xks/v1/health";
    let body = bodies::health();
    let client = proxy.client();
    client
        .clone()
        .signer(None)
        .post(path, &body)
        .await
        .assert_error(401, "AuthenticationFailedException");
    let unknown = Signer::new(&format!("Invalid{}", support::AKID_A1), support::SECRET_A1);
    let bad_secret = Signer::new(support::AKID_A1, SECRET_B);
    let unknown_reply = client.clone().signer(Some(unknown)).post(path, &body).await;
    let bad_secret_reply = client
        .clone()
        .signer(Some(bad_secret))
        .post(path, &body)
        .await;
    unknown_reply.assert_error(401, "AuthenticationFailedException");
    bad_secret_reply.assert_error(401, "AuthenticationFailedException");
    assert_eq!(
        unknown_reply.body, bad_secret_reply.body,
        "unknown id and bad signature must look alike"
    );
    let mut wrong_service = Signer::new(support::AKID_A1, support::SECRET_A1);
    wrong_service.service = "kms".into();
    client
        .clone()
        .signer(Some(wrong_service))
        .post(path, &body)
        .await
        .assert_error(401, "AuthenticationFailedException");
    // AU-11: ±5 minutes.
    for skew in [-360i64, 360] {
        let mut skewed = client.clone();
        skewed.signing_time = Some(OffsetDateTime::now_utc() + time::Duration::seconds(skew));
        skewed
            .post(path, &body)
            .await
            .assert_error(401, "AuthenticationFailedException");
    }
    let mut slightly = client.clone();
    slightly.signing_time = Some(OffsetDateTime::now_utc() - time::Duration::seconds(240));
    slightly.post(path, &body).await.assert_ok();
    // AU-8: the signature covers the exact body bytes; one flipped bit fails it.
    let mut tampered = client.clone();
    tampered.tamper_after_signing = true;
    let mut spaced = body.clone();
    spaced.push(b' ');
    tampered
        .post(path, &spaced)
        .await
        .assert_error(401, "AuthenticationFailedException");
    client.post(path, &spaced).await.assert_ok();
}

#[tokio::test]
async fn rot_1_au_13_two_credentials_per_store_and_no_crossing_between_stores() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let path_a = "/tenant-a/kms/xks/v1/health";
    let path_b = "/tenant-b/kms/xks/v1/health";
    let body = bodies::health();
    let a1 = proxy.client();
    let a2 = proxy.client().signer(Some(Signer::new(AKID_A2, SECRET_A2)));
    let b = proxy.client().signer(Some(Signer::new(AKID_B, SECRET_B)));
    a1.post(path_a, &body).await.assert_ok();
    a2.post(path_a, &body).await.assert_ok();
    b.post(path_b, &body).await.assert_ok();
    b.post(path_a, &body)
        .await
        .assert_error(401, "AuthenticationFailedException");
    a1.post(path_b, &body)
        .await
        .assert_error(401, "AuthenticationFailedException");
}

#[tokio::test]
async fn au_6_au_7_curl_style_signed_content_type_and_host_with_port() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let mut client = proxy.client();
    client.sign_content_type = true;
    assert!(client.host.contains(':'), "host carries the port");
    client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
    client
        .http2()
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
}

#[tokio::test]
async fn au_4_region_allowlist_per_store() {
    softhsm::isolate!();
    let proxy = ProxyBuilder {
        store_a_extra: "allowed_regions = [\"eu-west-1\"]".into(),
        ..Default::default()
    }
    .start()
    .await;
    let path = "/tenant-a/kms/xks/v1/health";
    let wrong_region = proxy.client().post(path, &bodies::health()).await;
    wrong_region.assert_error(401, "AuthenticationFailedException");
    // An unauthenticated caller cannot tell a refused region from a wrong secret.
    let wrong_secret = proxy
        .client()
        .signer(Some(Signer::new(support::AKID_A1, SECRET_B)))
        .post(path, &bodies::health())
        .await;
    assert_eq!(
        wrong_region.json()["errorMessage"],
        wrong_secret.json()["errorMessage"]
    );
    let mut eu = Signer::new(support::AKID_A1, support::SECRET_A1);
    eu.region = "eu-west-1".into();
    proxy
        .client()
        .signer(Some(eu))
        .post(path, &bodies::health())
        .await
        .assert_ok();
}

#[tokio::test]
async fn tr_12_e_17_sizes_above_our_limits_are_unsupported() {
    softhsm::isolate!();
    let limits =
        "max_body_bytes = 65536\nmax_plaintext_bytes = 4300\nmax_aad_bytes = 8192".to_owned();
    let proxy = ProxyBuilder {
        limits,
        ..Default::default()
    }
    .start()
    .await;
    let key = ed_key();
    let client = proxy.client();
    let path = key_path("/tenant-a", &key, "encrypt");
    client
        .post(&path, &bodies::encrypt(&[1; 4301], None, false))
        .await
        .assert_error(501, "UnsupportedOperationException");
    client
        .post(&path, &bodies::encrypt(&[1; 10], Some(&[2; 8193]), false))
        .await
        .assert_error(501, "UnsupportedOperationException");
    let huge = vec![b' '; 70_000];
    client
        .post(&path, &huge)
        .await
        .assert_error(501, "UnsupportedOperationException");
    // The spec minimums still pass at these limits.
    client
        .post(&path, &bodies::encrypt(&[1; 4300], Some(&[2; 8192]), true))
        .await
        .assert_ok();
}

#[tokio::test]
async fn mth_4_content_type_must_be_json() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let client = proxy.client();
    let path = "/tenant-a/kms/xks/v1/health";
    let reply = client
        .send(
            "POST",
            path,
            &[("content-type", "text/plain")],
            &bodies::health(),
        )
        .await;
    reply.assert_error(400, "ValidationException");
    let reply = client
        .send(
            "POST",
            path,
            &[("content-type", "application/json; charset=utf-8")],
            &bodies::health(),
        )
        .await;
    reply.assert_ok();
}

#[tokio::test]
async fn uri_3_disabled_stores_and_key_allowlists() {
    softhsm::isolate!();
    let extra = "[[key_stores]]\nname = \"off\"\npath_prefix = \"/off\"\nenabled = false\n[[key_stores.credentials]]\naccess_key_id = \"DDDDDDDDDDDDDDDDDDDDDDDD\"\nsecret = \"ZGlzYWJsZWQtc3RvcmUtc2VjcmV0LXZhbHVlLWxvbmctZW5vdWdo\"\n";
    let allowed = ed_key();
    let other = ed_key();
    let proxy = ProxyBuilder {
        extra: extra.into(),
        store_a_extra: format!("allowed_keys = [\"{allowed}\"]"),
        ..Default::default()
    }
    .start()
    .await;
    let off = proxy.client().signer(Some(Signer::new(
        "DDDDDDDDDDDDDDDDDDDDDDDD",
        "ZGlzYWJsZWQtc3RvcmUtc2VjcmV0LXZhbHVlLWxvbmctZW5vdWdo",
    )));
    off.post("/off/kms/xks/v1/health", &bodies::health())
        .await
        .assert_error(400, "InvalidStateException");
    let client = proxy.client();
    client
        .post(
            &key_path("/tenant-a", &allowed, "metadata"),
            &bodies::metadata(),
        )
        .await
        .assert_ok();
    client
        .post(
            &key_path("/tenant-a", &other, "metadata"),
            &bodies::metadata(),
        )
        .await
        .assert_error(404, "KeyNotFoundException");
    // tenant-b has no allowlist and sees every key.
    let b = proxy.client().signer(Some(Signer::new(AKID_B, SECRET_B)));
    b.post(
        &key_path("/tenant-b", &other, "metadata"),
        &bodies::metadata(),
    )
    .await
    .assert_ok();
}

#[tokio::test]
async fn uri_2_uri_6_longest_prefix_and_key_id_are_served() {
    softhsm::isolate!();
    let prefix = format!("/{}", "p".repeat(116));
    let extra = format!(
        "[[key_stores]]\npath_prefix = \"{prefix}\"\n[[key_stores.credentials]]\naccess_key_id = \"EEEEEEEEEEEEEEEEEEEEEEEEEEEEEE\"\nsecret = \"{}\"\n",
        support::SECRET_A1
    );
    let proxy = ProxyBuilder {
        extra,
        ..Default::default()
    }
    .start()
    .await;
    let key = create_key(&"k".repeat(100), &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let client = proxy.client().signer(Some(Signer::new(
        "EEEEEEEEEEEEEEEEEEEEEEEEEEEEEE",
        support::SECRET_A1,
    )));
    let path = key_path(&prefix, &key, "encrypt");
    assert!(path.len() > 240);
    client
        .post(&path, &bodies::encrypt(b"x", None, false))
        .await
        .assert_ok();
}

#[tokio::test]
async fn tr_1_plaintext_mode_only_when_configured() {
    softhsm::isolate!();
    let proxy = ProxyBuilder {
        plaintext: true,
        ..Default::default()
    }
    .start()
    .await;
    let client = support::Client::plaintext(proxy.addr);
    client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
}

#[tokio::test]
async fn tr_12_a_body_that_never_arrives_is_answered_not_waited_for() {
    softhsm::isolate!();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = ProxyBuilder {
        plaintext: true,
        server_extra: "body_timeout_ms = 300".into(),
        ..Default::default()
    }
    .start()
    .await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = "POST /tenant-a/kms/xks/v1/health HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut response),
    )
    .await;
    let response = String::from_utf8_lossy(&response);
    assert!(read.is_ok(), "no answer within 5 s");
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.contains("\"errorName\":\"ValidationException\""),
        "{response}"
    );
}

/// The value of the sample `series` (name and labels exactly as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Issue "Metrics": requests by key store, operation, status and errorName, with bounded
/// labels for unknown paths; latency by operation; authentication failures by reason;
/// in-flight back to zero; credentials per store; member health from the deep check.
#[tokio::test]
async fn metrics_count_requests_auth_failures_and_health() {
    softhsm::isolate!();
    let proxy = Proxy::start().await;
    let client = proxy.client();
    let key = ed_key();
    let encrypt = bodies::encrypt(b"metrics", None, false);
    client
        .post(&key_path("/tenant-a", &key, "encrypt"), &encrypt)
        .await
        .assert_ok();
    client
        .post(
            &key_path("/tenant-a", "no-such-key", "metadata"),
            &bodies::metadata(),
        )
        .await
        .assert_error(404, "KeyNotFoundException");
    client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
    let bad_secret = Signer::new(support::AKID_A1, SECRET_B);
    client
        .clone()
        .signer(Some(bad_secret))
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_error(401, "AuthenticationFailedException");
    let mut skewed = proxy.client().signer(Some(Signer::new(AKID_B, SECRET_B)));
    skewed.signing_time = Some(OffsetDateTime::now_utc() - time::Duration::seconds(600));
    skewed
        .post("/tenant-b/kms/xks/v1/health", &bodies::health())
        .await
        .assert_error(401, "AuthenticationFailedException");
    // Unknown paths must not mint label values: they all count under none/unknown.
    for path in ["/x/kms/xks/v1/health", "/y/kms/xks/v1/health", "/whatever"] {
        client
            .post(path, &bodies::health())
            .await
            .assert_error(404, "InvalidUriPathException");
    }

    let text = proxy.metrics.render_text();
    let expect = [
        (
            r#"xks_requests_total{key_store="tenant-a",operation="Encrypt",status="200",error_name=""}"#,
            1.0,
        ),
        (
            r#"xks_requests_total{key_store="tenant-a",operation="GetKeyMetadata",status="404",error_name="KeyNotFoundException"}"#,
            1.0,
        ),
        (
            r#"xks_requests_total{key_store="tenant-a",operation="GetHealthStatus",status="200",error_name=""}"#,
            1.0,
        ),
        (
            r#"xks_requests_total{key_store="tenant-a",operation="GetHealthStatus",status="401",error_name="AuthenticationFailedException"}"#,
            1.0,
        ),
        (
            r#"xks_requests_total{key_store="none",operation="unknown",status="404",error_name="InvalidUriPathException"}"#,
            3.0,
        ),
        (
            r#"xks_authentication_failures_total{key_store="tenant-a",reason="bad_signature"}"#,
            1.0,
        ),
        (
            r#"xks_authentication_failures_total{key_store="tenant-b",reason="clock_skew"}"#,
            1.0,
        ),
        (
            r#"xks_request_duration_seconds_count{operation="Encrypt"}"#,
            1.0,
        ),
        (
            r#"xks_request_duration_seconds_count{operation="unknown"}"#,
            3.0,
        ),
        ("xks_requests_in_flight", 0.0),
        (r#"xks_key_store_credentials{key_store="tenant-a"}"#, 2.0),
        (r#"xks_key_store_credentials{key_store="tenant-b"}"#, 1.0),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert_eq!(
        text.matches("xks_requests_total{").count(),
        6,
        "no other label sets: {text}"
    );
    let health = text
        .lines()
        .find(|l| l.starts_with("xks_hsm_health_state{member="))
        .unwrap_or_else(|| panic!("no member health in\n{text}"));
    assert!(health.ends_with(" 2"), "{health}");
}

#[tokio::test]
async fn uri_3_a_key_store_quota_answers_throttling_when_exhausted() {
    softhsm::isolate!();
    let proxy = ProxyBuilder {
        store_a_extra: "[key_stores.rate_limit]\nrequests_per_second = 1\nburst = 2".into(),
        ..Default::default()
    }
    .start()
    .await;
    let client = proxy.client();
    client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
    client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
    client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_error(429, "ThrottlingException");
    // Another key store has its own (absent) quota; unauthenticated requests spend nothing.
    let b = proxy.client().signer(Some(Signer::new(AKID_B, SECRET_B)));
    b.post("/tenant-b/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let bad = proxy
        .client()
        .signer(Some(Signer::new(support::AKID_A1, SECRET_B)));
    bad.post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_error(401, "AuthenticationFailedException");
    client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
}

/// A backend whose every call panics: a bug, not an HSM failure.
struct PanickingBackend;

impl xks_proxy::hsm::KeyBackend for PanickingBackend {
    fn key_versions(
        &self,
        _: xks_proxy::xks::ExternalKeyId,
        _: std::time::Instant,
    ) -> xks_proxy::hsm::ServedFuture<'_, std::sync::Arc<[xks_proxy::xks::KeyVersion]>> {
        Box::pin(async { panic!("simulated handler bug") })
    }

    fn forget_keys(&self) {}

    fn key_metadata(
        &self,
        _: xks_proxy::xks::VersionedKey,
        _: std::time::Instant,
    ) -> xks_proxy::hsm::ServedFuture<'_, xks_proxy::hsm::KeyMetadata> {
        Box::pin(async { panic!("simulated handler bug") })
    }

    fn encrypt(
        &self,
        _: xks_proxy::xks::VersionedKey,
        _: xks_proxy::hsm::EncryptRequest,
        _: std::time::Instant,
    ) -> xks_proxy::hsm::ServedFuture<'_, xks_proxy::hsm::GcmCiphertext> {
        Box::pin(async { panic!("simulated handler bug") })
    }

    fn decrypt(
        &self,
        _: xks_proxy::xks::VersionedKey,
        _: xks_proxy::hsm::DecryptRequest,
        _: std::time::Instant,
    ) -> xks_proxy::hsm::ServedFuture<'_, zeroize::Zeroizing<Vec<u8>>> {
        Box::pin(async { panic!("simulated handler bug") })
    }

    fn health(
        &self,
        _: std::time::Instant,
    ) -> xks_proxy::hsm::ServedFuture<'_, xks_proxy::hsm::HsmHealth> {
        Box::pin(async { panic!("simulated handler bug") })
    }
}

/// ERR-5 and the audit log: a handler that panics answers 500 InternalException, the
/// connection survives, and the request is still counted and audited (before the fix it
/// vanished from `xks_requests_total` and the audit log).
#[tokio::test]
async fn a_panicking_handler_still_writes_its_audit_record() {
    let proxy = ProxyBuilder {
        backend: Some(std::sync::Arc::new(PanickingBackend)),
        ..Default::default()
    }
    .start()
    .await;
    let client = proxy.client();
    let mut conn = client.connect().await.unwrap();
    let headers = [("content-type", "application/json")];
    let path = "/tenant-a/kms/xks/v1/keys/any-key/metadata";
    for _ in 0..2 {
        conn.send(&client, "POST", path, &headers, &bodies::metadata())
            .await
            .assert_error(500, "InternalException");
    }
    let text = proxy.metrics.render_text();
    let series = r#"xks_requests_total{key_store="tenant-a",operation="GetKeyMetadata",status="500",error_name="InternalException"}"#;
    assert_eq!(sample(&text, series), Some(2.0), "{series} in\n{text}");
    assert_eq!(sample(&text, "xks_requests_in_flight"), Some(0.0), "{text}");
}
