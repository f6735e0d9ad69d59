//! Key lifecycle through the pipeline, over the in-memory backend: versioned keys and their
//! `ciphertextMetadata`, the `[[keys]]` kill switch, and Decrypt of ciphertexts made by AWS's
//! sample proxy. Ciphertexts of "other" makers are sealed here with `ring`, independently of
//! the proxy. The same behaviour against SoftHSM2 is in `tests/key_lifecycle.rs`.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use super::*;
use crate::xks::framing;

const BOTH: &[KeyUsage] = &[KeyUsage::Encrypt, KeyUsage::Decrypt];
/// Material of the keys whose ciphertexts tests make themselves.
const MATERIAL: [u8; 32] = [0x42; 32];
const IV: [u8; 12] = [7; 12];
/// The access key id of store `/b` in the harness.
const STORE_B: &str = "BBBBBBBBBBBBBBBBBBBBBBBB22";

/// Key `rot` in versions 1 and 2, `legacy` (version 1) and `both` with known material.
fn rotated() -> MemoryBackend {
    MemoryBackend::default()
        .with_key_version("rot", 1, BOTH)
        .with_key_version("rot", 2, BOTH)
        .with_key_material("legacy", 1, &MATERIAL, BOTH)
        .with_key_material("both", 1, &MATERIAL, BOTH)
}

fn unb64(value: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap())
        .unwrap()
}

/// A Decrypt body for `sealed` (an Encrypt response), with AAD `aad` and metadata `ctm`
/// (`None`: the field is left out).
fn decrypt_body(sealed: &Value, aad: Option<&[u8]>, ctm: Option<&[u8]>) -> Value {
    let mut body = json!({"requestMetadata": metadata("Decrypt"),
        "ciphertext": sealed["ciphertext"], "encryptionAlgorithm": "AES_GCM",
        "initializationVector": sealed["initializationVector"],
        "authenticationTag": sealed["authenticationTag"]});
    if let Some(aad) = aad {
        body["additionalAuthenticatedData"] = json!(b64(aad));
    }
    if let Some(ctm) = ctm {
        body["ciphertextMetadata"] = json!(b64(ctm));
    }
    body
}

/// Seals `plaintext` under [`MATERIAL`] with `gcm_aad`, as another maker would, and returns
/// an Encrypt-response-shaped value.
fn sealed_elsewhere(plaintext: &[u8], gcm_aad: &[u8]) -> Value {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &MATERIAL).unwrap());
    let mut ciphertext = plaintext.to_vec();
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(IV),
            Aad::from(gcm_aad),
            &mut ciphertext,
        )
        .unwrap();
    json!({"ciphertext": b64(&ciphertext), "initializationVector": b64(&IV),
           "authenticationTag": b64(tag.as_ref())})
}

fn counter(h: &Harness, series: &str) -> f64 {
    let text = h.state.metrics().render_text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn encrypt_names_the_newest_version_and_decrypt_follows_the_metadata() {
    let h = Harness::with("", "", rotated());
    let (status, sealed) = h
        .post("/a/kms/xks/v1/keys/rot/encrypt", &encrypt_body(b"secret"))
        .await;
    assert_eq!(status, StatusCode::OK, "{sealed}");
    let ctm = unb64(&sealed["ciphertextMetadata"]);
    assert_eq!(ctm, [framing::KEY_VERSION_FORMAT, 0, 0, 0, 2]);

    let path = "/a/kms/xks/v1/keys/rot/decrypt";
    let (status, plain) = h
        .post(path, &decrypt_body(&sealed, Some(b"aad"), Some(&ctm)))
        .await;
    assert_eq!(status, StatusCode::OK, "{plain}");
    assert_eq!(plain["plaintext"], b64(b"secret"));

    // Metadata naming version 1 (a real key) or none: the AAD no longer matches.
    for tampered in [
        Some(&[1u8, 0, 0, 0, 1][..]),
        None,
        Some(b"\x01\x00\x00\x00\x02x"),
    ] {
        let reply = h
            .post(path, &decrypt_body(&sealed, Some(b"aad"), tampered))
            .await;
        assert_error(&reply, 400, "InvalidCiphertextException");
    }
    // A version the HSM never held.
    let reply = h
        .post(
            path,
            &decrypt_body(&sealed, Some(b"aad"), Some(&[1, 0, 0, 0, 9])),
        )
        .await;
    assert_error(&reply, 400, "InvalidCiphertextException");
    assert!(
        reply.1["errorMessage"]
            .as_str()
            .unwrap()
            .contains("key version 9"),
        "{}",
        reply.1
    );
    // A key without any version is still KeyNotFoundException.
    let reply = h
        .post(
            "/a/kms/xks/v1/keys/nowhere/decrypt",
            &decrypt_body(&sealed, Some(b"aad"), Some(&ctm)),
        )
        .await;
    assert_error(&reply, 404, "KeyNotFoundException");
}

#[tokio::test]
async fn ciphertexts_from_before_versions_decrypt_with_version_one() {
    let h = Harness::with("", "", rotated());
    // What every earlier release wrote: spec AAD with no metadata (AAD-2), version 1.
    let gcm_aad = framing::ekm_aad(b"ctx", b"").unwrap();
    let old = sealed_elsewhere(b"from 2025", &gcm_aad);
    let path = "/a/kms/xks/v1/keys/legacy/decrypt";
    for ctm in [None, Some(&b""[..])] {
        let (status, plain) = h.post(path, &decrypt_body(&old, Some(b"ctx"), ctm)).await;
        assert_eq!(status, StatusCode::OK, "{plain}");
        assert_eq!(plain["plaintext"], b64(b"from 2025"));
    }
}

#[tokio::test]
async fn the_kill_switch_disables_a_key_and_a_reload_enables_it_again() {
    let off = "[[keys]]\nid = \"rot\"\nenabled = false\n";
    let h = Harness::with("", "", rotated());
    let (_, sealed) = h
        .post("/a/kms/xks/v1/keys/rot/encrypt", &encrypt_body(b"x"))
        .await;
    h.reconfigure("", off);

    let meta = json!({"requestMetadata": metadata("DescribeKey")});
    let (status, reply) = h.post("/a/kms/xks/v1/keys/rot/metadata", &meta).await;
    assert_eq!(status, StatusCode::OK, "K-7: DISABLED is not an error");
    assert_eq!(reply["keyStatus"], "DISABLED");
    let refused = h
        .post("/a/kms/xks/v1/keys/rot/encrypt", &encrypt_body(b"x"))
        .await;
    assert_error(&refused, 400, "InvalidStateException");
    let ctm = unb64(&sealed["ciphertextMetadata"]);
    let refused = h
        .post(
            "/a/kms/xks/v1/keys/rot/decrypt",
            &decrypt_body(&sealed, Some(b"aad"), Some(&ctm)),
        )
        .await;
    assert_error(&refused, 400, "InvalidStateException");
    let series = r#"xks_kill_switch_refusals_total{key_store="a",operation="Decrypt",external_key_id="rot"}"#;
    assert_eq!(counter(&h, series), 1.0);
    // Other keys are untouched.
    let (status, _) = h
        .post("/a/kms/xks/v1/keys/both/encrypt", &encrypt_body(b"x"))
        .await;
    assert_eq!(status, StatusCode::OK);

    h.reconfigure("", "");
    let (status, reply) = h.post("/a/kms/xks/v1/keys/rot/metadata", &meta).await;
    assert_eq!(
        (status, reply["keyStatus"].as_str()),
        (StatusCode::OK, Some("ENABLED"))
    );
    let (status, plain) = h
        .post(
            "/a/kms/xks/v1/keys/rot/decrypt",
            &decrypt_body(&sealed, Some(b"aad"), Some(&ctm)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{plain}");
}

#[tokio::test]
async fn a_disabled_version_neither_encrypts_nor_decrypts() {
    let h = Harness::with("", "", rotated());
    let (_, v2) = h
        .post("/a/kms/xks/v1/keys/rot/encrypt", &encrypt_body(b"x"))
        .await;
    h.reconfigure("", "[[keys]]\nid = \"rot\"\ndisabled_versions = [2]\n");
    let (status, v1) = h
        .post("/a/kms/xks/v1/keys/rot/encrypt", &encrypt_body(b"y"))
        .await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(unb64(&v1["ciphertextMetadata"]), [1, 0, 0, 0, 1]);
    let path = "/a/kms/xks/v1/keys/rot/decrypt";
    let v2_ctm = unb64(&v2["ciphertextMetadata"]);
    let refused = h
        .post(path, &decrypt_body(&v2, Some(b"aad"), Some(&v2_ctm)))
        .await;
    assert_error(&refused, 400, "InvalidStateException");
    assert!(
        refused.1["errorMessage"]
            .as_str()
            .unwrap()
            .contains("version 2")
    );
    let v1_ctm = unb64(&v1["ciphertextMetadata"]);
    let (status, _) = h
        .post(path, &decrypt_body(&v1, Some(b"aad"), Some(&v1_ctm)))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Every version off: the key reports DISABLED and cannot encrypt.
    h.reconfigure("", "[[keys]]\nid = \"rot\"\ndisabled_versions = [1, 2]\n");
    let meta = json!({"requestMetadata": metadata("DescribeKey")});
    let (_, reply) = h.post("/a/kms/xks/v1/keys/rot/metadata", &meta).await;
    assert_eq!(reply["keyStatus"], "DISABLED");
    let refused = h
        .post("/a/kms/xks/v1/keys/rot/encrypt", &encrypt_body(b"x"))
        .await;
    assert_error(&refused, 400, "InvalidStateException");
}

/// Store `/a` accepts the sample proxy's ciphertexts with static metadata `static_ctm`.
fn migration(static_ctm: &[u8]) -> String {
    format!(
        "[key_stores.aws_sample_migration]\nciphertext_metadata_b64 = \"{}\"\n",
        b64(static_ctm)
    )
}

#[tokio::test]
async fn sample_proxy_ciphertexts_decrypt_only_where_migration_is_on() {
    for static_ctm in [&b""[..], b"sample-v1"] {
        let h = Harness::with(&migration(static_ctm), "", rotated());
        // (request AAD field, what the sample bound): present, present but empty, absent.
        for aad in [Some(&b"tenant=1"[..]), Some(b""), None] {
            let gcm_aad = framing::aws_sample_aad(aad, static_ctm).unwrap();
            let sealed = sealed_elsewhere(b"made by the sample", &gcm_aad);
            let body = decrypt_body(&sealed, aad, Some(static_ctm));
            let (status, plain) = h.post("/a/kms/xks/v1/keys/both/decrypt", &body).await;
            assert_eq!(status, StatusCode::OK, "{static_ctm:?} {aad:?}: {plain}");
            assert_eq!(plain["plaintext"], b64(b"made by the sample"));
            // Store /b has no migration option: the same ciphertext is not authentic there,
            // unless it had no AAD field, where the sample's framing is the spec's.
            let body = body.to_string();
            let path = "/b/kms/xks/v1/keys/both/decrypt";
            let reply = h.send("POST", path, body.as_bytes(), Some(STORE_B)).await;
            if aad.is_some() {
                assert_error(&reply, 400, "InvalidCiphertextException");
            } else {
                assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
            }
        }
        // A present but empty AAD is hashed by the sample: sent without the field, the
        // ciphertext is not authentic.
        let gcm_aad = framing::aws_sample_aad(Some(b""), static_ctm).unwrap();
        let sealed = sealed_elsewhere(b"x", &gcm_aad);
        let reply = h
            .post(
                "/a/kms/xks/v1/keys/both/decrypt",
                &decrypt_body(&sealed, None, Some(static_ctm)),
            )
            .await;
        assert_error(&reply, 400, "InvalidCiphertextException");
        let series =
            r#"xks_aws_sample_migration_decrypts_total{key_store="a",format="aws_sample"}"#;
        // Only the two requests with an AAD field needed the sample's path.
        assert_eq!(counter(&h, series), 2.0);
    }
}

#[tokio::test]
async fn a_migrated_store_still_decrypts_its_own_ciphertexts() {
    let h = Harness::with(&migration(b""), "", rotated());
    // New ciphertexts carry versioned metadata: the sample's format is never tried.
    let (_, sealed) = h
        .post("/a/kms/xks/v1/keys/both/encrypt", &encrypt_body(b"new"))
        .await;
    let ctm = unb64(&sealed["ciphertextMetadata"]);
    let (status, plain) = h
        .post(
            "/a/kms/xks/v1/keys/both/decrypt",
            &decrypt_body(&sealed, Some(b"aad"), Some(&ctm)),
        )
        .await;
    assert_eq!(
        (status, plain["plaintext"].clone()),
        (StatusCode::OK, json!(b64(b"new")))
    );
    // A spec-format ciphertext without metadata (an earlier release of this proxy) shares
    // the sample's empty metadata: tried as the sample's first, then opened by the fallback.
    let old = sealed_elsewhere(b"old", &framing::ekm_aad(b"c", b"").unwrap());
    let (status, plain) = h
        .post(
            "/a/kms/xks/v1/keys/both/decrypt",
            &decrypt_body(&old, Some(b"c"), None),
        )
        .await;
    assert_eq!(
        (status, plain["plaintext"].clone()),
        (StatusCode::OK, json!(b64(b"old")))
    );
    let sample = r#"xks_aws_sample_migration_decrypts_total{key_store="a",format="aws_sample"}"#;
    let fallback = r#"xks_aws_sample_migration_decrypts_total{key_store="a",format="spec"}"#;
    assert_eq!((counter(&h, sample), counter(&h, fallback)), (0.0, 1.0));
}

#[tokio::test]
async fn the_spec_fallback_cannot_swap_an_aad_for_its_hash() {
    use sha2::{Digest, Sha256};
    let static_ctm = b"sample-v1";
    let h = Harness::with(&migration(static_ctm), "", rotated());
    // The sample framed AAD `B` as `00 20 ‖ SHA-256(B) ‖ …`: exactly the spec's framing of the
    // 32-byte AAD `SHA-256(B)`. With the sample's non-empty metadata, which this proxy never
    // wrote, the spec's format is not tried, so the digest does not stand in for `B`.
    let b = b"department=10";
    let sealed = sealed_elsewhere(
        b"bound to B",
        &framing::aws_sample_aad(Some(b), static_ctm).unwrap(),
    );
    let path = "/a/kms/xks/v1/keys/both/decrypt";
    let (status, _) = h
        .post(path, &decrypt_body(&sealed, Some(b), Some(static_ctm)))
        .await;
    assert_eq!(status, StatusCode::OK);
    let digest = Sha256::digest(b);
    let reply = h
        .post(
            path,
            &decrypt_body(&sealed, Some(&digest), Some(static_ctm)),
        )
        .await;
    assert_error(&reply, 400, "InvalidCiphertextException");
    let fallback = r#"xks_aws_sample_migration_decrypts_total{key_store="a",format="spec"}"#;
    assert_eq!(counter(&h, fallback), 0.0);
}
