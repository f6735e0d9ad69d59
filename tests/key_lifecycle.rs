//! Key lifecycle against a real SoftHSM2 token through the real server (TLS, SigV4): versioned
//! keys named in `ciphertextMetadata`, and Decrypt of ciphertexts made by AWS's sample proxy.
//! Key versions and "foreign" ciphertexts are made here independently of the proxy: objects
//! through the test's own PKCS#11 session, ciphertexts with `ring` over known key material.
//! Rotation with the CLI under load, fleets and the kill switch through reloads are in
//! `tests/key_rotation.rs`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde_json::{Value, json};
use xks_proxy::hsm::KeyUsage;
use xks_proxy::hsm::pkcs11::Pkcs11Backend;
use xks_proxy::xks::framing;
use zeroize::Zeroizing;

use support::bodies::{self, b64, unb64};
use support::softhsm::{self, key_id, unique_label};
use support::{Proxy, ProxyBuilder, Signer};

const BOTH: &[KeyUsage] = &[KeyUsage::Encrypt, KeyUsage::Decrypt];
const IV: [u8; 12] = [9; 12];

/// Imports version 1 of a fresh key with `material` (label = key id) and returns the id.
fn import_v1(stem: &str, material: &[u8; 32]) -> String {
    let label = unique_label(stem);
    let backend = softhsm::token().backend();
    softhsm::serialised_write(|| {
        backend
            .import_key(&key_id(&label), &Zeroizing::new(*material), BOTH)
            .unwrap()
    });
    label
}

/// Creates version `n ≥ 2` of `id` with `material` the way the naming scheme says: label
/// `id#v<n>`, `CKA_ID` = id, private, sensitive and (unless `extractable`) never extractable.
fn create_version(id: &str, n: u32, material: &[u8; 32], extractable: bool) -> ObjectHandle {
    create_version_with(softhsm::token().backend(), id, n, material, extractable)
}

/// [`create_version`] once `backend` has initialised the module.
fn create_version_with(
    backend: &Pkcs11Backend,
    id: &str,
    n: u32,
    material: &[u8; 32],
    extractable: bool,
) -> ObjectHandle {
    let session = softhsm::raw_session(backend);
    let template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Value(material.to_vec()),
        Attribute::Label(format!("{id}#v{n}").into_bytes()),
        Attribute::Id(id.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(extractable),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    softhsm::serialised_write(|| session.create_object(&template).unwrap())
}

/// Seals `plaintext` under `material` with `gcm_aad` and returns an Encrypt-response shape.
fn seal(material: &[u8; 32], plaintext: &[u8], gcm_aad: &[u8]) -> Value {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, material).unwrap());
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

/// `sealed` with its `ciphertextMetadata` replaced (`None`: removed).
fn with_metadata(sealed: &Value, ctm: Option<&[u8]>) -> Value {
    let mut sealed = sealed.clone();
    let object = sealed.as_object_mut().unwrap();
    object.remove("ciphertextMetadata");
    if let Some(ctm) = ctm {
        object.insert("ciphertextMetadata".into(), json!(b64(ctm)));
    }
    sealed
}

#[tokio::test]
async fn versions_on_a_real_token_encrypt_newest_and_decrypt_by_metadata() {
    softhsm::isolate!();
    let (m1, m2) = ([0x11; 32], [0x22; 32]);
    let key = import_v1("rot", &m1);
    let proxy = Proxy::start().await;
    let client = proxy.client();
    let aad = Some(&b"ctx"[..]);

    let v1 = client
        .encrypt("/tenant-a", &key, b"one", aad, true)
        .await
        .assert_ok();
    assert_eq!(unb64(&v1["ciphertextMetadata"]), [1, 0, 0, 0, 1]);

    create_version(&key, 2, &m2, false);
    // The list of versions is cached: version 2 is used once it is looked up again (a reload
    // forgets the lists; the proxy binary's reload is tested in tests/key_rotation.rs).
    let still_v1 = client
        .encrypt("/tenant-a", &key, b"x", aad, false)
        .await
        .assert_ok();
    assert_eq!(unb64(&still_v1["ciphertextMetadata"]), [1, 0, 0, 0, 1]);
    softhsm::token().backend().forget_keys();
    let v2 = client
        .encrypt("/tenant-a", &key, b"two", aad, true)
        .await
        .assert_ok();
    let v2_ctm = framing::key_version_metadata(xks_proxy::xks::KeyVersion::new(2).unwrap());
    assert_eq!(unb64(&v2["ciphertextMetadata"]), v2_ctm);

    // Every version's ciphertexts decrypt, from the proxy and from an independent AES-GCM.
    for (sealed, plaintext) in [(&v1, &b"one"[..]), (&v2, b"two")] {
        let reply = client
            .decrypt("/tenant-a", &key, &bodies::decrypt_from(sealed, aad))
            .await;
        assert_eq!(unb64(&reply.assert_ok()["plaintext"]), plaintext);
    }
    let elsewhere = seal(
        &m2,
        b"sealed by ring",
        &framing::ekm_aad(b"ctx", &v2_ctm).unwrap(),
    );
    let body = bodies::decrypt_from(&with_metadata(&elsewhere, Some(&v2_ctm)), aad);
    let reply = client.decrypt("/tenant-a", &key, &body).await;
    assert_eq!(unb64(&reply.assert_ok()["plaintext"]), b"sealed by ring");

    // Tampered metadata: another real version, none, a version that does not exist.
    for ctm in [Some(&[1u8, 0, 0, 0, 1][..]), None] {
        let body = bodies::decrypt_from(&with_metadata(&v2, ctm), aad);
        client
            .decrypt("/tenant-a", &key, &body)
            .await
            .assert_error(400, "InvalidCiphertextException");
    }
    let body = bodies::decrypt_from(&with_metadata(&v2, Some(&[1, 0, 0, 0, 3])), aad);
    let reply = client.decrypt("/tenant-a", &key, &body).await;
    reply.assert_error(400, "InvalidCiphertextException");
    assert!(reply.text().contains("key version 3"), "{}", reply.text());
}

#[tokio::test]
async fn a_destroyed_or_unsafe_version_is_never_used() {
    softhsm::isolate!();
    let key = import_v1("prune", &[0x33; 32]);
    let proxy = Proxy::start().await;
    let client = proxy.client();
    let v1 = client
        .encrypt("/tenant-a", &key, b"old", None, false)
        .await
        .assert_ok();
    create_version(&key, 2, &[0x44; 32], false);
    // Version 3 could leave the HSM: never served, so version 2 stays the newest.
    create_version(&key, 3, &[0x55; 32], true);
    softhsm::token().backend().forget_keys();
    let v2 = client
        .encrypt("/tenant-a", &key, b"new", None, false)
        .await
        .assert_ok();
    assert_eq!(unb64(&v2["ciphertextMetadata"]), [1, 0, 0, 0, 2]);

    // Destroy version 1 (the last step of a rotation): its ciphertexts fail with a message
    // that says why, the key itself keeps working.
    let session = softhsm::raw_session(softhsm::token().backend());
    let v1_handle = session
        .find_objects(&[Attribute::Label(key.as_bytes().to_vec())])
        .unwrap()[0];
    softhsm::serialised_write(|| session.destroy_object(v1_handle).unwrap());
    let reply = client
        .decrypt("/tenant-a", &key, &bodies::decrypt_from(&v1, None))
        .await;
    reply.assert_error(400, "InvalidCiphertextException");
    assert!(reply.text().contains("key version 1"), "{}", reply.text());
    let reply = client
        .decrypt("/tenant-a", &key, &bodies::decrypt_from(&v2, None))
        .await;
    assert_eq!(unb64(&reply.assert_ok()["plaintext"]), b"new");
    let meta = client
        .post(
            &format!("/tenant-a/kms/xks/v1/keys/{key}/metadata"),
            &bodies::metadata(),
        )
        .await
        .assert_ok();
    assert_eq!(meta["keyStatus"], "ENABLED");
}

/// Store `tenant-a` accepts the sample proxy's ciphertexts with static metadata `ctm`.
fn migration(ctm: &[u8]) -> String {
    format!(
        "[key_stores.aws_sample_migration]\nciphertext_metadata_b64 = \"{}\"\n",
        b64(ctm)
    )
}

#[tokio::test]
async fn sample_proxy_ciphertexts_decrypt_on_a_real_token_where_migration_is_on() {
    softhsm::isolate!();
    let material = [0x5a; 32];
    let key = import_v1("sample", &material);
    for static_ctm in [&b""[..], b"xks-sample"] {
        let proxy = ProxyBuilder {
            store_a_extra: migration(static_ctm),
            ..Default::default()
        }
        .start()
        .await;
        let a = proxy.client();
        let b = proxy
            .client()
            .signer(Some(Signer::new(support::AKID_B, support::SECRET_B)));
        for aad in [Some(&b"department=10"[..]), Some(b""), None] {
            let gcm_aad = framing::aws_sample_aad(aad, static_ctm).unwrap();
            let sealed = with_metadata(&seal(&material, b"from the sample", &gcm_aad), None);
            let mut body = bodies::decrypt_from(&sealed, aad);
            body["ciphertextMetadata"] = json!(b64(static_ctm));
            let reply = a.decrypt("/tenant-a", &key, &body).await;
            assert_eq!(
                unb64(&reply.assert_ok()["plaintext"]),
                b"from the sample",
                "{static_ctm:?} {aad:?}"
            );
            let elsewhere = b.decrypt("/tenant-b", &key, &body).await;
            if aad.is_some() {
                elsewhere.assert_error(400, "InvalidCiphertextException");
            } else {
                // Without an AAD field the sample's framing is the spec's.
                elsewhere.assert_ok();
            }
        }
        // The proxy's own new ciphertexts still round-trip on the migrated store.
        let own = a
            .encrypt("/tenant-a", &key, b"ours", Some(b"department=10"), false)
            .await
            .assert_ok();
        let reply = a
            .decrypt(
                "/tenant-a",
                &key,
                &bodies::decrypt_from(&own, Some(b"department=10")),
            )
            .await;
        assert_eq!(unb64(&reply.assert_ok()["plaintext"]), b"ours");
        let text = proxy.metrics.render_text();
        let series = r#"xks_aws_sample_migration_decrypts_total{key_store="tenant-a",format="aws_sample"} 2"#;
        assert!(text.contains(series), "{text}");
        proxy.stop().await;
    }
}

/// The PKCS#11 calls a warm key costs per request, versions and all: no search, one
/// `C_Encrypt` or `C_Decrypt`, and one `C_GetAttributeValue` (the usages) for GetKeyMetadata.
#[tokio::test]
async fn a_known_key_costs_no_token_search_per_request() {
    softhsm::isolate!();
    // A backend of its own that reports into these metrics (the module is initialised once
    // per process, so the shared test backend is never opened here).
    let metrics = std::sync::Arc::new(xks_proxy::metrics::Metrics::new());
    let backend =
        Pkcs11Backend::open_with_metrics(&softhsm::hsm_settings(2, 16), metrics.clone()).unwrap();
    let key = unique_label("warm");
    let material = Zeroizing::new([0x66; 32]);
    backend.import_key(&key_id(&key), &material, BOTH).unwrap();
    create_version_with(&backend, &key, 2, &[0x77; 32], false);
    let fixed = unique_label("fixed");
    backend
        .import_key(&key_id(&fixed), &Zeroizing::new([0x55; 32]), BOTH)
        .unwrap();
    let proxy = ProxyBuilder {
        backend: Some(std::sync::Arc::new(backend)),
        ..Default::default()
    }
    .start()
    .await;
    let client = proxy.client();
    let metadata_path = format!("/tenant-a/kms/xks/v1/keys/{key}/metadata");
    let round = || async {
        let sealed = client
            .encrypt("/tenant-a", &key, b"warm", Some(b"a"), false)
            .await
            .assert_ok();
        assert_eq!(unb64(&sealed["ciphertextMetadata"]), [1, 0, 0, 0, 2]);
        client
            .decrypt(
                "/tenant-a",
                &key,
                &bodies::decrypt_from(&sealed, Some(b"a")),
            )
            .await
            .assert_ok();
        client
            .post(&metadata_path, &bodies::metadata())
            .await
            .assert_ok();
    };
    let calls = |function: &str| {
        let text = metrics.render_text();
        let series = format!(r#"xks_hsm_call_duration_seconds_count{{function="{function}"}} "#);
        text.lines()
            .find_map(|line| line.strip_prefix(&series)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    const FUNCTIONS: [&str; 4] = [
        "C_FindObjects",
        "C_GetAttributeValue",
        "C_Encrypt",
        "C_Decrypt",
    ];
    round().await;
    let before = FUNCTIONS.map(calls);
    const ROUNDS: u64 = 10;
    for _ in 0..ROUNDS {
        round().await;
    }
    let delta: Vec<u64> = FUNCTIONS
        .iter()
        .zip(before)
        .map(|(f, b)| calls(f) - b)
        .collect();
    // Version 2 was made outside the proxy and is modifiable, so its usage flags are read
    // on every GetKeyMetadata.
    assert_eq!(delta, [0, ROUNDS, ROUNDS, ROUNDS], "{FUNCTIONS:?}");

    // A key the proxy made is not modifiable (CKA_MODIFIABLE=false): its usages cannot
    // change, so GetKeyMetadata answers from the cache without any PKCS#11 call.
    let fixed_path = format!("/tenant-a/kms/xks/v1/keys/{fixed}/metadata");
    let metadata = || async {
        let reply = client
            .post(&fixed_path, &bodies::metadata())
            .await
            .assert_ok();
        assert_eq!(reply["keyUsage"], serde_json::json!(["ENCRYPT", "DECRYPT"]));
    };
    metadata().await;
    let before = FUNCTIONS.map(calls);
    for _ in 0..ROUNDS {
        metadata().await;
    }
    let delta: Vec<u64> = FUNCTIONS
        .iter()
        .zip(before)
        .map(|(f, b)| calls(f) - b)
        .collect();
    assert_eq!(delta, [0, 0, 0, 0], "{FUNCTIONS:?}");
}
