//! Loading and error tests for [`super::load`]; handshakes live in `tests/tls_front`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair};

use super::*;
use crate::config::ClientSubjectName;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

fn self_signed(not_after_year: i32) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_after = rcgen::date_time_ymd(not_after_year, 6, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn settings(chain: &Path, key: &Path, client_auth: ClientAuth) -> TlsSettings {
    TlsSettings {
        certificate_chain: chain.to_owned(),
        private_key: key.to_owned(),
        client_auth,
    }
}

fn required(ca: &Path) -> ClientAuth {
    ClientAuth::Required {
        ca_bundle: ca.to_owned(),
        allowed_subject_names: vec![
            ClientSubjectName::parse("cks.kms.eu-west-1.amazonaws.com").unwrap(),
        ],
    }
}

#[test]
fn tr_3_tr_5_tr_9_valid_material_builds_the_spec_config() {
    let files = Files::new();
    let (cert, key) = self_signed(2040);
    let chain = files.write("chain.pem", &cert);
    let key = files.write("key.pem", &key);

    let material = load(&settings(&chain, &key, ClientAuth::Disabled), None).unwrap();
    let config = &material.config;
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let suites: Vec<_> = config
        .crypto_provider()
        .cipher_suites
        .iter()
        .map(|s| s.suite())
        .collect();
    let expected: Vec<_> = CIPHER_SUITES.iter().map(|s| s.suite()).collect();
    assert_eq!(suites, expected);
    // The spec's four (TR-5) by name, whatever the provider; FIPS drops ChaCha20-Poly1305.
    use rustls::{CipherSuite as S, NamedGroup as G};
    let mut spec = vec![
        S::TLS13_AES_256_GCM_SHA384,
        S::TLS13_CHACHA20_POLY1305_SHA256,
        S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ];
    let mut groups = vec![G::X25519, G::secp256r1, G::secp384r1];
    if cfg!(feature = "fips") {
        spec.remove(1);
        groups.remove(0);
    }
    assert_eq!(suites, spec);
    let offered: Vec<_> = config
        .crypto_provider()
        .kx_groups
        .iter()
        .map(|g| g.name())
        .collect();
    assert_eq!(offered, groups);
    assert_eq!(config.fips(), cfg!(feature = "fips"));
    assert!(config.ticketer.enabled());
    assert_eq!(config.max_early_data_size, 0);

    let year_2040 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_222_121_600); // 2040-06-01
    assert_eq!(material.leaf_not_after, year_2040);
    assert_eq!(
        leaf_not_after(&settings(&chain, &key, ClientAuth::Disabled)).unwrap(),
        year_2040
    );

    // mTLS with a CA bundle holding that self-signed certificate also builds.
    assert!(server_config(&settings(&chain, &key, required(&chain))).is_ok());
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let files = Files::new();
    let (cert, key_pem) = self_signed(2040);
    let (_, other_key) = self_signed(2040);
    let chain = files.write("chain.pem", &cert);
    let key = files.write("key.pem", &key_pem);
    let missing = files.dir.path().join("missing.pem");
    let only_key = files.write("only-key.pem", &key_pem);
    let garbage = files.write("garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!\n");
    let wrong_key = files.write("other-key.pem", &other_key);
    let empty = files.write("empty.pem", "");
    let bad_ca = files.write(
        "bad-ca.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    );
    let bad_key = files.write(
        "bad-key.pem",
        "-----BEGIN PRIVATE KEY-----\naGVsbG8=\n-----END PRIVATE KEY-----\n",
    );

    let err = |s: TlsSettings| load(&s, None).unwrap_err();
    let cases = [
        (
            err(settings(&missing, &key, ClientAuth::Disabled)),
            "missing.pem: cannot read",
        ),
        (
            err(settings(&only_key, &key, ClientAuth::Disabled)),
            "only-key.pem: no CERTIFICATE",
        ),
        (
            err(settings(&garbage, &key, ClientAuth::Disabled)),
            "garbage.pem: malformed PEM",
        ),
        (
            err(settings(&chain, &chain, ClientAuth::Disabled)),
            "chain.pem: no private key",
        ),
        (
            err(settings(&chain, &bad_key, ClientAuth::Disabled)),
            "bad-key.pem: unsupported",
        ),
        (
            err(settings(&chain, &wrong_key, ClientAuth::Disabled)),
            "other-key.pem: private key",
        ),
        (
            err(settings(&chain, &key, required(&empty))),
            "empty.pem: CA bundle contains no",
        ),
        (
            err(settings(&chain, &key, required(&bad_ca))),
            "bad-ca.pem: CA certificate #0",
        ),
        (
            err(settings(&chain, &key, required(&missing))),
            "missing.pem: cannot read",
        ),
    ];
    for (error, expected) in cases {
        let message = error.to_string();
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
    assert!(matches!(
        err(settings(&chain, &wrong_key, ClientAuth::Disabled)),
        TlsError::KeyMismatch { .. }
    ));
}
