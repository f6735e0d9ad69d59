//! Integration tests of the PKCS#11 backend against a real SoftHSM2 token (no mocks).
//!
//! Each test names the checklist ids it covers. Every test runs in its own child process with
//! its own token (`softhsm::isolate!`, see `support/softhsm.rs`); key labels are still unique
//! per test.

// Panics are how tests fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::sync::OnceLock;

use support::softhsm::{self, HEALTH_KEY, deadline, key_id, v1};
use xks_proxy::hsm::pkcs11::Pkcs11Backend;
use xks_proxy::hsm::{
    DecryptRequest, EncryptRequest, GcmCiphertext, HsmError, KeyBackend, KeySpec, KeyStatus,
    KeyUsage, MemberStatus, Pkcs11Call, Pkcs11Code, Tier,
};
use zeroize::Zeroizing;

/// Declares a test whose body runs against a fresh token in a child process of its own, on a
/// runtime with two workers.
macro_rules! hsm_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            softhsm::isolate!();
            $body
        }
    };
}

/// The process's shared backend: two sessions, a roomy queue.
fn backend() -> &'static Pkcs11Backend {
    static BACKEND: OnceLock<Pkcs11Backend> = OnceLock::new();
    BACKEND.get_or_init(|| Pkcs11Backend::open(&softhsm::hsm_settings(2, 64)).unwrap())
}

/// A logged-in R/W session of the test's own, beside the shared backend.
fn raw_session() -> Session {
    softhsm::raw_session(backend())
}

const ENCRYPT_DECRYPT: &[KeyUsage] = &[KeyUsage::Encrypt, KeyUsage::Decrypt];

fn new_key(label: &str, usages: &[KeyUsage]) {
    backend()
        .create_key(&key_id(label), usages)
        .expect("create key");
}

async fn encrypt(label: &str, plaintext: &[u8], aad: &[u8]) -> Result<GcmCiphertext, HsmError> {
    let request = EncryptRequest {
        plaintext: Zeroizing::new(plaintext.to_vec()),
        aad: aad.to_vec(),
    };
    backend().encrypt(v1(label), request, deadline()).await
}

async fn decrypt(label: &str, sealed: &GcmCiphertext, aad: &[u8]) -> Result<Vec<u8>, HsmError> {
    decrypt_parts(label, &sealed.ciphertext, &sealed.iv, sealed.tag, aad).await
}

async fn decrypt_parts(
    label: &str,
    ciphertext: &[u8],
    iv: &[u8],
    tag: [u8; 16],
    aad: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let request = DecryptRequest {
        ciphertext: ciphertext.to_vec(),
        iv: iv.to_vec(),
        tag,
        aad: aad.to_vec(),
    };
    backend()
        .decrypt(v1(label), request, deadline())
        .await
        .map(|p| p.to_vec())
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

/// Generates a token AES key of `len` bytes with the test's own session, bypassing the
/// backend's admin API (which only makes AES-256 keys and refuses duplicate labels).
fn raw_aes_key(session: &Session, label: &str, len: u64) -> ObjectHandle {
    let template = aes_key_template(label, Attribute::ValueLen(len.into()));
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .unwrap()
}

/// A private, sensitive, non-extractable AES token key for encryption and decryption, with
/// `size` giving its length (`CKA_VALUE_LEN`) or its value (`CKA_VALUE`).
fn aes_key_template(label: &str, size: Attribute) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        size,
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        // SoftHSM defaults the other usage flags to true.
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn find_raw(session: &Session, label: &str) -> Vec<ObjectHandle> {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()
}

hsm_test! {
    /// E-4, E-7, E-11, E-12, D-5, D-8: AES-GCM round trip with AAD and the split output.
    async fn e_7_e_11_e_12_round_trip_with_aad() {
        new_key("roundtrip-key", ENCRYPT_DECRYPT);
        let plaintext = b"Hello World!";
        let aad = b"project=nile,department=marketing";
        let sealed = encrypt("roundtrip-key", plaintext, aad).await.unwrap();
        assert_eq!(sealed.ciphertext.len(), plaintext.len(), "E-7");
        assert_eq!(sealed.iv.len(), 12, "E-11");
        assert_eq!(sealed.tag.len(), 16, "E-12");
        assert_ne!(sealed.ciphertext, plaintext);
        assert_eq!(decrypt("roundtrip-key", &sealed, aad).await.unwrap(), plaintext);
    }
}

hsm_test! {
    /// E-11: the backend draws a fresh IV for every encryption; equal inputs never repeat.
    async fn e_11_every_encryption_gets_a_fresh_iv() {
        new_key("fresh-iv-key", ENCRYPT_DECRYPT);
        let mut ivs = std::collections::HashSet::new();
        let mut ciphertexts = std::collections::HashSet::new();
        for _ in 0..32 {
            let sealed = encrypt("fresh-iv-key", b"same plaintext", b"same aad").await.unwrap();
            assert_ne!(sealed.iv, [0; 12]);
            ivs.insert(sealed.iv);
            ciphertexts.insert(sealed.ciphertext);
        }
        assert_eq!(ivs.len(), 32);
        assert_eq!(ciphertexts.len(), 32);
    }
}

hsm_test! {
    /// E-1, E-4, E-16, D-1, D-5: 4300 bytes of plaintext under 8192+3 bytes of AAD.
    async fn e_16_large_plaintext_and_aad_round_trip() {
        new_key("large-key", ENCRYPT_DECRYPT);
        let plaintext = random_bytes(4300);
        let aad = random_bytes(8192 + 3);
        let sealed = encrypt("large-key", &plaintext, &aad).await.unwrap();
        assert_eq!(sealed.ciphertext.len(), 4300);
        assert_eq!(decrypt("large-key", &sealed, &aad).await.unwrap(), plaintext);
    }
}

hsm_test! {
    /// E-18: an empty plaintext is accepted and round-trips to empty (GCM allows it).
    async fn e_18_empty_plaintext_round_trips() {
        new_key("empty-key", ENCRYPT_DECRYPT);
        let sealed = encrypt("empty-key", b"", b"aad").await.unwrap();
        assert!(sealed.ciphertext.is_empty());
        assert_eq!(decrypt("empty-key", &sealed, b"aad").await.unwrap(), b"");
    }
}

hsm_test! {
    /// D-3, D-10, D-12: any tampering fails GCM authentication as InvalidCiphertext (SoftHSM
    /// reports CKR_GENERAL_ERROR from C_Decrypt), never as an internal error.
    async fn d_10_tampering_is_invalid_ciphertext() {
        new_key("tamper-key", ENCRYPT_DECRYPT);
        let aad = b"original aad";
        let sealed = encrypt("tamper-key", b"attack at dawn", aad).await.unwrap();
        let label = "tamper-key";

        let wrong_aad = decrypt(label, &sealed, b"other aad").await;
        let missing_aad = decrypt(label, &sealed, b"").await;
        let mut bad_tag = sealed.clone();
        bad_tag.tag[0] ^= 1;
        let mut bad_ciphertext = sealed.clone();
        bad_ciphertext.ciphertext[3] ^= 0x80;
        let mut bad_iv = sealed.clone();
        bad_iv.iv[11] ^= 1;
        for (case, result) in [
            ("wrong AAD", wrong_aad),
            ("missing AAD", missing_aad),
            ("flipped tag", decrypt(label, &bad_tag, aad).await),
            ("flipped ciphertext", decrypt(label, &bad_ciphertext, aad).await),
            ("flipped IV", decrypt(label, &bad_iv, aad).await),
        ] {
            assert_eq!(result, Err(HsmError::InvalidCiphertext), "{case}");
        }
        // The key still works after the failures.
        assert_eq!(decrypt(label, &sealed, aad).await.unwrap(), b"attack at dawn");
    }
}

hsm_test! {
    /// D-6: 16-byte IVs reach the HSM. A ciphertext made by the test's own session under a
    /// 16-byte IV decrypts, and a wrong tag with a 16-byte IV is InvalidCiphertext.
    async fn d_6_sixteen_byte_iv_decrypts() {
        new_key("iv16-key", ENCRYPT_DECRYPT);
        let session = raw_session();
        let handle = find_raw(&session, "iv16-key")[0];
        let mut iv = [7u8; 16];
        let aad = b"sixteen";
        let output = {
            let params = GcmParams::new(&mut iv, aad, 128.into()).unwrap();
            session.encrypt(&Mechanism::AesGcm(params), handle, b"long iv").unwrap()
        };
        let (ciphertext, tag) = output.split_at(output.len() - 16);
        let tag: [u8; 16] = tag.try_into().unwrap();
        let opened = decrypt_parts("iv16-key", ciphertext, &iv, tag, aad).await.unwrap();
        assert_eq!(opened, b"long iv");

        let mut wrong_tag = tag;
        wrong_tag[15] ^= 1;
        let result = decrypt_parts("iv16-key", ciphertext, &iv, wrong_tag, aad).await;
        assert_eq!(result, Err(HsmError::InvalidCiphertext));
        let no_iv = decrypt_parts("iv16-key", ciphertext, &[], tag, aad).await;
        assert_eq!(no_iv, Err(HsmError::InvalidCiphertext), "an empty IV never reaches SoftHSM");
    }
}

hsm_test! {
    /// D-11: an encrypt-only key encrypts but refuses to decrypt (CKR_KEY_FUNCTION_NOT_PERMITTED).
    async fn d_11_encrypt_only_key_cannot_decrypt() {
        new_key("encrypt-only", &[KeyUsage::Encrypt]);
        let sealed = encrypt("encrypt-only", b"data", b"").await.unwrap();
        let result = decrypt("encrypt-only", &sealed, b"").await;
        assert_eq!(result, Err(HsmError::KeyUsageNotPermitted { operation: "decrypt" }));
    }
}

hsm_test! {
    /// D-11 counterpart (spec §Testing): a decrypt-only key refuses to encrypt; its decrypt
    /// is permitted and fails only on authentication.
    async fn decrypt_only_key_cannot_encrypt() {
        new_key("decrypt-only", &[KeyUsage::Decrypt]);
        let result = encrypt("decrypt-only", b"data", b"").await.err();
        assert_eq!(result, Some(HsmError::KeyUsageNotPermitted { operation: "encrypt" }));
        let garbage = decrypt_parts("decrypt-only", b"0123", &[1; 12], [2; 16], b"").await;
        assert_eq!(garbage, Err(HsmError::InvalidCiphertext));
    }
}

hsm_test! {
    /// Spec §Testing, "naive implementation" #14: a key with neither usage refuses both.
    async fn key_without_usages_refuses_both() {
        new_key("no-usage", &[]);
        assert_eq!(
            encrypt("no-usage", b"data", b"").await.err(),
            Some(HsmError::KeyUsageNotPermitted { operation: "encrypt" })
        );
        assert_eq!(
            decrypt_parts("no-usage", b"data", &[1; 12], [2; 16], b"").await,
            Err(HsmError::KeyUsageNotPermitted { operation: "decrypt" })
        );
    }
}

hsm_test! {
    /// K-2, K-3, K-4, K-6: metadata reports the key's real spec and exactly its usage flags,
    /// in spec order, and ENABLED.
    async fn k_2_k_3_k_4_metadata_reflects_the_attributes() {
        use KeyUsage::*;
        let cases: [(&str, &[KeyUsage]); 6] = [
            ("meta-both", &[Encrypt, Decrypt]),
            ("meta-encrypt", &[Encrypt]),
            ("meta-decrypt", &[Decrypt]),
            ("meta-none", &[]),
            ("meta-all", &[Derive, Unwrap, Wrap, Verify, Sign, Decrypt, Encrypt]),
            ("meta-wrap-derive", &[Wrap, Derive]),
        ];
        for (label, usages) in cases {
            new_key(label, usages);
            let metadata = backend().key_metadata(v1(label), deadline()).await.unwrap();
            let mut expected = usages.to_vec();
            expected.sort();
            assert_eq!(metadata.usages, expected, "{label}");
            assert_eq!(metadata.spec, KeySpec::Aes256, "{label}");
            assert_eq!(metadata.status, KeyStatus::Enabled, "{label}");
        }
        let all = backend().key_metadata(v1("meta-all"), deadline()).await.unwrap();
        let names: Vec<_> = all.usages.iter().map(|u| u.as_str()).collect();
        assert_eq!(names, ["ENCRYPT", "DECRYPT", "SIGN", "VERIFY", "WRAP", "UNWRAP", "DERIVE"]);
    }
}

hsm_test! {
    /// K-2: an AES-128 key is reported truthfully and refused for crypto.
    async fn k_2_aes_128_key_is_reported_and_refused() {
        raw_aes_key(&raw_session(), "aes128-key", 16);
        let metadata = backend().key_metadata(v1("aes128-key"), deadline()).await.unwrap();
        assert_eq!(metadata.spec, KeySpec::Aes128);
        assert_eq!(metadata.usages, ENCRYPT_DECRYPT);
        let refused = Some(HsmError::UnsupportedKey { found: "AES_128".into() });
        assert_eq!(encrypt("aes128-key", b"data", b"").await.err(), refused);
        let opened = decrypt_parts("aes128-key", b"data", &[1; 12], [2; 16], b"").await;
        assert_eq!(opened.err(), refused);
    }
}

hsm_test! {
    /// URI-8: two objects with one label are ambiguous for every operation; nothing is guessed.
    async fn uri_8_duplicate_labels_are_ambiguous() {
        let session = raw_session();
        raw_aes_key(&session, "twin-key", 32);
        raw_aes_key(&session, "twin-key", 32);
        let ambiguous = HsmError::AmbiguousKey { count: 2 };
        let metadata = backend().key_metadata(v1("twin-key"), deadline()).await;
        assert_eq!(metadata.err(), Some(ambiguous.clone()));
        assert_eq!(encrypt("twin-key", b"data", b"").await.err(), Some(ambiguous.clone()));
        let opened = decrypt_parts("twin-key", b"data", &[1; 12], [2; 16], b"").await;
        assert_eq!(opened.err(), Some(ambiguous));
        let again = backend().create_key(&key_id("twin-key"), ENCRYPT_DECRYPT);
        assert_eq!(again, Err(HsmError::KeyAlreadyExists));
    }
}

/// Generates a private AES-256 token key with the given `CKA_SENSITIVE` and
/// `CKA_EXTRACTABLE`, as a careless operator's tool might.
fn raw_key_with(session: &Session, label: &str, sensitive: bool, extractable: bool) {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(sensitive),
        Attribute::Extractable(extractable),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .unwrap();
}

/// Every customer operation on `label` answers KeyNotFound.
async fn assert_not_served(label: &str) {
    let metadata = backend().key_metadata(v1(label), deadline()).await;
    assert_eq!(
        metadata.err(),
        Some(HsmError::KeyNotFound),
        "{label}: metadata"
    );
    assert_eq!(
        encrypt(label, b"data", b"").await.err(),
        Some(HsmError::KeyNotFound),
        "{label}"
    );
    let opened = decrypt_parts(label, b"data", &[1; 12], [2; 16], b"").await;
    assert_eq!(
        opened.err(),
        Some(HsmError::KeyNotFound),
        "{label}: decrypt"
    );
}

hsm_test! {
    /// Key hygiene ("key squatting"): a public, non-sensitive, extractable secret key that
    /// anyone with token access can plant without the PIN is never served, even though its
    /// label matches: the planter knows its value.
    async fn key_hygiene_a_public_key_planted_without_login_is_not_found() {
        softhsm::plant_public_key("squatted-key", &[0x42; 32]);
        // It really is on the token, visible to the backend's logged-in sessions.
        let session = raw_session();
        let handles = find_raw(&session, "squatted-key");
        assert_eq!(handles.len(), 1);
        let wanted = [AttributeType::Private, AttributeType::Sensitive, AttributeType::Extractable];
        assert_eq!(
            session.get_attributes(handles[0], &wanted).unwrap(),
            [Attribute::Private(false), Attribute::Sensitive(false), Attribute::Extractable(true)]
        );
        assert_not_served("squatted-key").await;
        // The admin listing shows it, as refused.
        let listed = backend().list_keys().unwrap();
        let squatter = listed.iter().find(|k| k.label == "squatted-key").unwrap();
        assert!(!squatter.protection.is_servable());
        assert_eq!(squatter.protection.problems().len(), 3);
        // A real key can still be made under that label; the squatter does not block it.
        new_key("squatted-key", ENCRYPT_DECRYPT);
        let sealed = encrypt("squatted-key", b"real", b"").await.unwrap();
        assert_eq!(decrypt("squatted-key", &sealed, b"").await.unwrap(), b"real");
    }
}

hsm_test! {
    /// Key hygiene: a private key is refused too unless it is also sensitive and never
    /// extractable; such a key's value can leave the HSM.
    async fn key_hygiene_private_but_extractable_or_readable_keys_are_refused() {
        let session = raw_session();
        raw_key_with(&session, "extractable-key", true, true);
        raw_key_with(&session, "readable-key", false, false);
        raw_key_with(&session, "compliant-key", true, false);
        assert_not_served("extractable-key").await;
        assert_not_served("readable-key").await;
        let sealed = encrypt("compliant-key", b"fine", b"").await.unwrap();
        assert_eq!(decrypt("compliant-key", &sealed, b"").await.unwrap(), b"fine");
    }
}

hsm_test! {
    /// Key hygiene: a public object planted with the label of a real (private) key neither
    /// hijacks it (the real key does the crypto) nor blocks it (no "ambiguous" answer).
    async fn key_hygiene_a_public_squatter_cannot_hijack_or_block_a_real_key() {
        new_key("victim-key", ENCRYPT_DECRYPT);
        softhsm::plant_public_key("victim-key", &[0x42; 32]);
        let session = raw_session();
        let handles = find_raw(&session, "victim-key");
        assert_eq!(handles.len(), 2, "the squatter is on the token");

        let metadata = backend().key_metadata(v1("victim-key"), deadline()).await.unwrap();
        assert_eq!(metadata.spec, KeySpec::Aes256);
        let sealed = encrypt("victim-key", b"for the real key only", b"aad").await.unwrap();
        assert_eq!(decrypt("victim-key", &sealed, b"aad").await.unwrap(), b"for the real key only");

        // The ciphertext was not made under the squatter's (known) value.
        let squatter = handles
            .into_iter()
            .find(|h| {
                session.get_attributes(*h, &[AttributeType::Private]).unwrap()
                    == [Attribute::Private(false)]
            })
            .unwrap();
        let mut iv = sealed.iv.to_vec();
        let params = GcmParams::new(&mut iv, b"aad", 128.into()).unwrap();
        let mut input = sealed.ciphertext.clone();
        input.extend_from_slice(&sealed.tag);
        assert!(session.decrypt(&Mechanism::AesGcm(params), squatter, &input).is_err());
    }
}

hsm_test! {
    /// K-10, URI-8: an unknown key id is KeyNotFound for every operation.
    async fn unknown_key_is_not_found() {
        let metadata = backend().key_metadata(v1("no-such-key"), deadline()).await;
        assert_eq!(metadata.err(), Some(HsmError::KeyNotFound));
        assert_eq!(encrypt("no-such-key", b"data", b"").await.err(), Some(HsmError::KeyNotFound));
        let opened = decrypt_parts("no-such-key", b"data", &[1; 12], [2; 16], b"").await;
        assert_eq!(opened.err(), Some(HsmError::KeyNotFound));
    }
}

hsm_test! {
    /// H-3: the health-check key exists (created at open) but is never a customer key.
    async fn h_3_health_key_is_not_served_to_customers() {
        let listed = backend().list_keys().unwrap();
        let health: Vec<_> = listed.iter().filter(|k| k.health_check).collect();
        assert_eq!(health.len(), 1);
        assert_eq!(health[0].label, HEALTH_KEY);
        assert_eq!(health[0].usages, ENCRYPT_DECRYPT);

        let metadata = backend().key_metadata(v1(HEALTH_KEY), deadline()).await;
        assert_eq!(metadata.err(), Some(HsmError::KeyNotFound));
        assert_eq!(encrypt(HEALTH_KEY, b"data", b"").await.err(), Some(HsmError::KeyNotFound));
        let opened = decrypt_parts(HEALTH_KEY, b"data", &[1; 12], [2; 16], b"").await;
        assert_eq!(opened.err(), Some(HsmError::KeyNotFound));
    }
}

hsm_test! {
    /// H-2, H-8, H-9, H-10, H-11, H-12: a deep check that passes reports one ACTIVE member
    /// identified by the token serial, with model and versions.
    async fn h_2_health_is_active_with_the_token_serial() {
        let identity = backend().token_identity();
        assert!(!identity.serial.is_empty());
        let health = backend().health(deadline()).await.unwrap();
        assert_eq!(health.vendor, "SoftHSM project");
        assert_eq!(health.members.len(), 1);
        let member = &health.members[0];
        assert_eq!(member.id, identity.serial);
        assert_eq!(member.status, MemberStatus::Active);
        let model = format!(
            "SoftHSM v2 hw {} fw {}",
            identity.hardware_version, identity.firmware_version
        );
        assert_eq!(member.model, model);
        assert_eq!(identity.label, softhsm::TOKEN_LABEL);
    }
}

hsm_test! {
    /// H-2, H-16: when the crypto check fails (health key deleted behind the backend's back,
    /// its handle cached), health is still Ok, with the member UNAVAILABLE.
    async fn h_2_failed_crypto_check_reports_unavailable() {
        let before = backend().health(deadline()).await.unwrap();
        assert_eq!(before.members[0].status, MemberStatus::Active);
        let session = raw_session();
        for handle in find_raw(&session, HEALTH_KEY) {
            session.destroy_object(handle).unwrap();
        }
        let after = backend().health(deadline()).await.unwrap();
        assert_eq!(after.members[0].status, MemberStatus::Unavailable);
        assert_eq!(after.members[0].id, before.members[0].id);
    }
}

hsm_test! {
    /// The handle cache: a key destroyed and re-created under the same label is found again
    /// (stale handle → one fresh lookup); a key destroyed for good becomes KeyNotFound.
    async fn stale_cached_handles_are_looked_up_again() {
        new_key("recreated-key", ENCRYPT_DECRYPT);
        new_key("deleted-key", ENCRYPT_DECRYPT);
        let old = encrypt("recreated-key", b"before", b"").await.unwrap();
        encrypt("deleted-key", b"before", b"").await.unwrap();
        let session = raw_session();
        for label in ["recreated-key", "deleted-key"] {
            for handle in find_raw(&session, label) {
                session.destroy_object(handle).unwrap();
            }
        }
        new_key("recreated-key", ENCRYPT_DECRYPT);

        let new = encrypt("recreated-key", b"after", b"").await.unwrap();
        assert_eq!(decrypt("recreated-key", &new, b"").await.unwrap(), b"after");
        assert_eq!(decrypt("recreated-key", &old, b"").await, Err(HsmError::InvalidCiphertext));
        assert_eq!(encrypt("deleted-key", b"after", b"").await.err(), Some(HsmError::KeyNotFound));
    }
}

hsm_test! {
    /// Recovery: after the token logs the application out, a failing request (login tier)
    /// makes its worker open a new session and log in again; service resumes.
    async fn lost_login_is_recovered_without_failing_a_request() {
        new_key("cached-key", ENCRYPT_DECRYPT);
        new_key("uncached-key", ENCRYPT_DECRYPT);
        encrypt("cached-key", b"warm the cache", b"").await.unwrap();

        // First a key never looked up (not found while logged out), then a cached handle.
        // Every worker lost its login; each retries its first job on a fresh, logged-in
        // session, so no request fails (recovery is invisible to KMS).
        for label in ["uncached-key", "cached-key"] {
            raw_session().logout().unwrap();
            let mut sealed = None;
            for attempt in 0..8 {
                let result = encrypt(label, b"after logout", b"").await;
                sealed = Some(result.unwrap_or_else(|e| panic!("{label}: request {attempt}: {e:?}")));
            }
            let sealed = sealed.unwrap();
            assert_eq!(decrypt(label, &sealed, b"").await.unwrap(), b"after logout");
        }
    }
}

hsm_test! {
    /// TR-8, "naive implementation" #37: a request whose deadline has passed is Timeout
    /// without queuing; health answers Err(Timeout), not an UNAVAILABLE member.
    async fn expired_deadline_is_timeout() {
        new_key("late-key", ENCRYPT_DECRYPT);
        let past = Instant::now() - Duration::from_millis(1);
        let request = EncryptRequest { plaintext: Zeroizing::new(b"x".to_vec()), aad: vec![] };
        let encrypted = backend().encrypt(v1("late-key"), request, past).await;
        assert_eq!(encrypted.err(), Some(HsmError::Timeout));
        let metadata = backend().key_metadata(v1("late-key"), past).await;
        assert_eq!(metadata.err(), Some(HsmError::Timeout));
        assert_eq!(backend().health(past).await.err(), Some(HsmError::Timeout));
    }
}

hsm_test! {
    /// ThrottlingException / DependencyTimeoutException paths with one session and a queue of
    /// one: while a long job runs, one more waits, the rest are Busy at once; a queued job
    /// whose deadline passes is Timeout (and the worker later drops it unexecuted).
    async fn full_queue_is_busy_and_queued_jobs_time_out() {
        const LONG: usize = 32 << 20;
        let small = Pkcs11Backend::open(&softhsm::hsm_settings(1, 1)).unwrap();
        small.create_key(&key_id("busy-key"), ENCRYPT_DECRYPT).unwrap();
        let request = |len: usize| EncryptRequest {
            plaintext: Zeroizing::new(vec![0x5a; len]),
            aad: vec![],
        };
        let started = Instant::now();
        let long = small.encrypt(v1("busy-key"), request(LONG), deadline());

        // Submission happens when encrypt() is called. Probe until a job is accepted: the
        // queue holds one job, so acceptance means the worker has taken the long one.
        let mut waker_context = Context::from_waker(Waker::noop());
        let mut queued = loop {
            let short_deadline = Instant::now() + Duration::from_millis(5);
            let mut probe = small.encrypt(v1("busy-key"), request(16), short_deadline);
            match probe.as_mut().poll(&mut waker_context) {
                Poll::Ready(Err(HsmError::Busy)) => std::thread::yield_now(),
                Poll::Pending => break probe,
                Poll::Ready(other) => panic!("probe: {:?}", other.err()),
            }
            assert!(started.elapsed() < Duration::from_secs(5), "the worker never took the job");
        };
        let mut busy = Vec::new();
        for _ in 0..7 {
            busy.push(small.encrypt(v1("busy-key"), request(16), deadline()).await.err());
        }
        assert_eq!(busy, vec![Some(HsmError::Busy); 7]);
        assert_eq!(queued.as_mut().await.err(), Some(HsmError::Timeout));

        let long = long.await;
        let elapsed = started.elapsed();
        println!("{LONG}-byte encrypt took {elapsed:?}");
        assert_eq!(long.map(|sealed| sealed.ciphertext.len()).unwrap(), LONG);
        // The backend serves again once the worker has drained (dropped) the expired job.
        let drained = Instant::now();
        loop {
            match small.encrypt(v1("busy-key"), request(16), deadline()).await {
                Ok(_) => break,
                Err(HsmError::Busy) if drained.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(err) => panic!("after draining: {err:?}"),
            }
        }
    }
}

hsm_test! {
    /// Admin: create_key sets exactly the documented attributes; list_keys reports them.
    async fn create_key_sets_the_documented_attributes() {
        use KeyUsage::*;
        new_key("admin-key", &[Encrypt, Sign]);
        let session = raw_session();
        let handles = find_raw(&session, "admin-key");
        assert_eq!(handles.len(), 1);
        let wanted = [
            AttributeType::Class, AttributeType::KeyType, AttributeType::ValueLen,
            AttributeType::Token, AttributeType::Private, AttributeType::Sensitive,
            AttributeType::Extractable, AttributeType::Id, AttributeType::Encrypt,
            AttributeType::Decrypt, AttributeType::Sign, AttributeType::Verify,
            AttributeType::Wrap, AttributeType::Unwrap, AttributeType::Derive,
            AttributeType::Modifiable, AttributeType::Copyable,
        ];
        let attributes = session.get_attributes(handles[0], &wanted).unwrap();
        let expected = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Id(b"admin-key".to_vec()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(false),
            Attribute::Sign(true),
            Attribute::Verify(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            // Nobody, not even a logged-in user, can loosen the key later or copy it into
            // an object with weaker attributes.
            Attribute::Modifiable(false),
            Attribute::Copyable(false),
        ];
        assert_eq!(attributes, expected);

        let again = backend().create_key(&key_id("admin-key"), &[Encrypt]);
        assert_eq!(again, Err(HsmError::KeyAlreadyExists));
        let listed = backend().list_keys().unwrap();
        let labels: Vec<_> = listed.iter().map(|k| k.label.as_str()).collect();
        assert_eq!(labels, ["admin-key", HEALTH_KEY]);
        assert_eq!(listed[0].spec, KeySpec::Aes256);
        assert_eq!(listed[0].usages, [Encrypt, Sign]);
        assert!(!listed[0].health_check);
    }
}

hsm_test! {
    /// Key hygiene: every key the proxy makes (`keys create`, `keys import`, the health key
    /// made at startup) is private, sensitive, never extractable, and can be neither modified
    /// nor copied.
    async fn key_hygiene_keys_the_proxy_makes_are_locked() {
        new_key("locked-created", ENCRYPT_DECRYPT);
        backend()
            .import_key(&key_id("locked-imported"), &Zeroizing::new([7; 32]), ENCRYPT_DECRYPT)
            .unwrap();
        let session = raw_session();
        let wanted = [
            AttributeType::Private, AttributeType::Sensitive, AttributeType::Extractable,
            AttributeType::Modifiable, AttributeType::Copyable,
        ];
        let locked = [
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Modifiable(false),
            Attribute::Copyable(false),
        ];
        for label in ["locked-created", "locked-imported", HEALTH_KEY] {
            let handles = find_raw(&session, label);
            assert_eq!(handles.len(), 1, "{label}");
            assert_eq!(session.get_attributes(handles[0], &wanted).unwrap(), locked, "{label}");
        }
        // The imported key works: locked does not mean unusable.
        let sealed = encrypt("locked-imported", b"imported", b"").await.unwrap();
        assert_eq!(decrypt("locked-imported", &sealed, b"").await.unwrap(), b"imported");
    }
}

hsm_test! {
    /// Token selection by label or serial, never slot index; clear errors; a failed open
    /// finalises the module so that the next open works, and so does dropping a backend.
    async fn open_selects_the_token_and_fails_clearly() {
        let mut settings = softhsm::hsm_settings(1, 4);
        settings.token = xks_proxy::config::TokenSelector::Label("no-such-token".into());
        let err = Pkcs11Backend::open(&settings).err().unwrap();
        assert!(matches!(&err, HsmError::Unavailable(m) if m.contains("no initialised token")));

        let mut settings = softhsm::hsm_settings(1, 4);
        settings.user_pin = secrecy::SecretString::from("wrong-pin");
        match Pkcs11Backend::open(&settings).err().unwrap() {
            HsmError::Pkcs11(failure) => {
                assert_eq!(
                    failure.function,
                    Pkcs11Call::Function(cryptoki::context::Function::Login)
                );
                assert_eq!(
                    failure.code,
                    Pkcs11Code::Rv(cryptoki::error::RvError::PinIncorrect)
                );
                assert_eq!(failure.to_string(), "C_Login failed with CKR_PIN_INCORRECT");
                assert_eq!(failure.tier, Tier::Login);
            }
            other => panic!("{other:?}"),
        }

        let by_label = Pkcs11Backend::open(&softhsm::hsm_settings(1, 4)).unwrap();
        let serial = by_label.token_identity().serial;
        drop(by_label);
        let mut settings = softhsm::hsm_settings(1, 4);
        settings.token = xks_proxy::config::TokenSelector::Serial(format!("  {serial} "));
        let by_serial = Pkcs11Backend::open(&settings).unwrap();
        assert_eq!(by_serial.token_identity().serial, serial);
        let health = by_serial.health(deadline()).await.unwrap();
        assert_eq!(health.members[0].status, MemberStatus::Active);
    }
}

/// The value of the sample `series` (name and labels exactly as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

hsm_test! {
    /// Metrics of the backend (issue "Metrics"): PKCS#11 call latency by function through the
    /// one timing seam, and worker sessions moving between idle and in_use around a job.
    async fn pkcs11_calls_are_timed_by_function_and_sessions_counted() {
        const LONG: usize = 32 << 20;
        let metrics = std::sync::Arc::new(xks_proxy::metrics::Metrics::new());
        let hsm = Pkcs11Backend::open_with_metrics(&softhsm::hsm_settings(1, 4), metrics.clone()).unwrap();
        let text = metrics.render();
        assert_eq!(sample(&text, r#"xks_hsm_sessions{state="idle"}"#), Some(1.0), "{text}");
        assert_eq!(sample(&text, r#"xks_hsm_sessions{state="in_use"}"#), Some(0.0), "{text}");
        // Through the trait, every result names the token that served it (audit hsm_member).
        let served = KeyBackend::health(&hsm, deadline()).await;
        assert_eq!(served.member.as_deref(), Some(hsm.token_identity().serial.as_str()));

        hsm.create_key(&key_id("timed-key"), ENCRYPT_DECRYPT).unwrap();
        let request = |len: usize| EncryptRequest { plaintext: Zeroizing::new(vec![7; len]), aad: vec![] };
        let sealed = hsm.encrypt(v1("timed-key"), request(16), deadline()).await.unwrap();
        let decrypt = DecryptRequest {
            ciphertext: sealed.ciphertext.clone(),
            iv: sealed.iv.to_vec(),
            tag: sealed.tag,
            aad: vec![],
        };
        hsm.decrypt(v1("timed-key"), decrypt, deadline()).await.unwrap();
        hsm.key_metadata(v1("timed-key"), deadline()).await.unwrap();
        let text = metrics.render();
        for function in [
            "C_GetSlotList", "C_GetTokenInfo", "C_OpenSession", "C_Login", "C_FindObjects",
            "C_GetAttributeValue", "C_GenerateKey", "C_Encrypt", "C_Decrypt",
        ] {
            let series = format!(r#"xks_hsm_call_duration_seconds_count{{function="{function}"}}"#);
            assert!(sample(&text, &series).is_some_and(|n| n >= 1.0), "no {function} in\n{text}");
        }

        // While a long job runs on the only session, it is in use; afterwards idle again.
        let long = hsm.encrypt(v1("timed-key"), request(LONG), deadline());
        let watcher = async {
            let started = Instant::now();
            loop {
                let text = metrics.render();
                if sample(&text, r#"xks_hsm_sessions{state="in_use"}"#) == Some(1.0) {
                    assert_eq!(sample(&text, r#"xks_hsm_sessions{state="idle"}"#), Some(0.0));
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "never in use:\n{text}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let (sealed, ()) = tokio::join!(long, watcher);
        assert_eq!(sealed.unwrap().ciphertext.len(), LONG);
        // The worker replies before it returns to the queue: give it a moment.
        let started = Instant::now();
        loop {
            let text = metrics.render();
            if sample(&text, r#"xks_hsm_sessions{state="idle"}"#) == Some(1.0) {
                assert_eq!(sample(&text, r#"xks_hsm_sessions{state="in_use"}"#), Some(0.0));
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "never idle again:\n{text}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The GCM specification's AES-256 key (McGrew & Viega, "The Galois/Counter Mode of
/// Operation", Appendix B, test cases 13-18; also NIST SP 800-38D's examples).
const GCM_SPEC_KEY: &str = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
const GCM_SPEC_IV: &str = "cafebabefacedbaddecaf888";
const GCM_SPEC_PLAINTEXT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                                  1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
const GCM_SPEC_CIPHERTEXT: &str = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                                   8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad";

/// Puts an AES-256 key of known value on the token, private, sensitive and not extractable
/// like every key the proxy serves.
fn known_aes_key(label: &str, value: &[u8]) {
    let template = aes_key_template(label, Attribute::Value(value.to_vec()));
    raw_session().create_object(&template).unwrap();
}

fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).unwrap()
}

hsm_test! {
    /// AES-256-GCM known answers through the real HSM path (issue 8): test cases 15 (64 bytes,
    /// no AAD) and 16 (60 bytes, 20-byte AAD) of the GCM specification decrypt to their
    /// plaintexts; a changed tag or AAD does not authenticate.
    async fn gcm_spec_known_answers_decrypt_through_the_hsm() {
        known_aes_key("kat-key", &unhex(GCM_SPEC_KEY));
        let iv = unhex(GCM_SPEC_IV);
        let (plaintext, ciphertext) = (unhex(GCM_SPEC_PLAINTEXT), unhex(GCM_SPEC_CIPHERTEXT));
        let tag15: [u8; 16] = unhex("b094dac5d93471bdec1a502270e3cc6c").try_into().unwrap();
        let opened = decrypt_parts("kat-key", &ciphertext, &iv, tag15, b"").await.unwrap();
        assert_eq!(opened, plaintext);

        let aad16 = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let tag16: [u8; 16] = unhex("76fc6ece0f4e1768cddf8853bb2d551b").try_into().unwrap();
        let opened = decrypt_parts("kat-key", &ciphertext[..60], &iv, tag16, &aad16).await.unwrap();
        assert_eq!(opened, &plaintext[..60]);

        let mut wrong_tag = tag16;
        wrong_tag[0] ^= 1;
        for (tag, aad) in [(wrong_tag, &aad16[..]), (tag16, &aad16[1..])] {
            let refused = decrypt_parts("kat-key", &ciphertext[..60], &iv, tag, aad).await;
            assert_eq!(refused.err(), Some(HsmError::InvalidCiphertext));
        }
    }
}

hsm_test! {
    /// The HSM's own encryption checked by an independent implementation (`ring`): what the
    /// proxy seals under a known key, with its own random IV, opens elsewhere to the plaintext.
    async fn hsm_ciphertexts_open_with_an_independent_aes_gcm() {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        known_aes_key("kat-cross-key", &unhex(GCM_SPEC_KEY));
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &unhex(GCM_SPEC_KEY)).unwrap());
        for len in [1, 16, 4300] {
            let plaintext = random_bytes(len);
            let sealed = encrypt("kat-cross-key", &plaintext, b"aad framed by the caller").await.unwrap();
            let mut in_out = [sealed.ciphertext.clone(), sealed.tag.to_vec()].concat();
            let opened = key
                .open_in_place(
                    Nonce::assume_unique_for_key(sealed.iv),
                    Aad::from(b"aad framed by the caller"),
                    &mut in_out,
                )
                .unwrap();
            assert_eq!(opened, plaintext.as_slice(), "{len} bytes");
        }
    }
}
