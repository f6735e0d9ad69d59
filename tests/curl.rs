//! curl, a real independent client, against the real `xks-proxy serve` binary: the README's
//! promise (Appendix D of the spec), AU-6 (curl signs content-type), TR-2/3, MT-7, and a clean
//! exit on SIGTERM.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;

use support::binary::Server;
use support::bodies::{self, unb64};
use support::{Ca, softhsm};
use xks_proxy::hsm::KeyUsage;

fn config(dir: &Path, ca: &Ca, client_auth: &str) -> std::path::PathBuf {
    let (chain, key) = ca.server().write(dir, ca, "server");
    let path = dir.join("xks-proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificate_chain = {chain:?}\nprivate_key = {key:?}\n{client_auth}\n\
             [hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\nuser_pin_file = {:?}\n[logging]\nlevel = \"trace\"\nformat = \"json\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[key_stores]]\npath_prefix = \"/tenant-a\"\n[[key_stores.credentials]]\naccess_key_id = \"{}\"\nsecret = \"{}\"\n",
            softhsm::MODULE,
            softhsm::TOKEN_LABEL,
            pin_file(dir),
            support::AKID_A1,
            support::SECRET_A1
        ),
    )
    .unwrap();
    path
}

fn pin_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("pin");
    std::fs::write(&path, format!("{}\n", softhsm::USER_PIN)).unwrap();
    path
}

/// `curl --aws-sigv4 … --data @file URL`, as in the spec's Appendix D.
fn curl(
    server: &Server,
    ca_file: &Path,
    path: &str,
    body: &[u8],
    extra: &[&str],
) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, body).unwrap();
    let url = format!("https://localhost:{}{path}", server.addr.port());
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "20",
            "--aws-sigv4",
            "aws:amz:us-east-1:kms-xks-proxy",
        ])
        .args([
            "--user",
            &format!("{}:{}", support::AKID_A1, support::SECRET_A1),
        ])
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", server.addr.port()),
        ])
        .arg("--cacert")
        .arg(ca_file)
        .args([
            "-H",
            "Content-Type: application/json",
            "-X",
            "POST",
            "--data",
        ])
        .arg(format!("@{}", body_file.display()))
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(&url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (json, meta) = stdout.rsplit_once('\n').unwrap();
    (
        serde_json::from_str(json).unwrap_or_else(|_| panic!("not JSON: {json}")),
        meta.to_owned(),
    )
}

#[test]
fn au_6_tr_2_tr_3_curl_round_trip_over_http2_and_http1_then_clean_shutdown() {
    let key = softhsm::create_key("curl", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("curl CA");
    let ca_file = ca.write(dir.path(), "ca");
    let server = Server::start(&config(dir.path(), &ca, ""));

    // Canaries: none of these may appear in the log, even at trace level (LOG-2, LOG-8, E-2,
    // D-9), in raw or Base64 form.
    let aad = b"CANARY-AAD-5c1e0d";
    for (extra, version) in [(&[][..], "2"), (&["--http1.1"][..], "1.1")] {
        let plaintext = format!("CANARY-PLAINTEXT-9b2f over HTTP/{version}");
        let path = format!("/tenant-a/kms/xks/v1/keys/{key}/encrypt");
        let (enc, meta) = curl(
            &server,
            &ca_file,
            &path,
            &bodies::encrypt(plaintext.as_bytes(), Some(aad), true),
            extra,
        );
        assert_eq!(meta, format!("200 {version}"));
        assert!(enc["ciphertextDataIntegrityValue"].is_string());
        let dec = bodies::decrypt_from(&enc, Some(aad)).to_string();
        let path = format!("/tenant-a/kms/xks/v1/keys/{key}/decrypt");
        let (plain, meta) = curl(&server, &ca_file, &path, dec.as_bytes(), extra);
        assert_eq!(meta, format!("200 {version}"));
        assert_eq!(unb64(&plain["plaintext"]), plaintext.as_bytes());
    }
    let (health, _) = curl(
        &server,
        &ca_file,
        "/tenant-a/kms/xks/v1/health",
        &bodies::health(),
        &[],
    );
    assert_eq!(health["ekmFleetDetails"][0]["healthStatus"], "ACTIVE");

    // LOG-1: one line per request with the kmsRequestId.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.drain_log().join("\n");
    assert!(
        log.contains("4112f4d6-db54-4af4-ae30-c55a22a8dfae"),
        "{log}"
    );
    assert!(
        log.len() > 10_000,
        "trace logging was not on ({} bytes)",
        log.len()
    );
    let mut canaries = vec![
        "CANARY".to_owned(),
        support::SECRET_A1.to_owned(),
        softhsm::USER_PIN.to_owned(),
    ];
    for version in ["2", "1.1"] {
        let plaintext = format!("CANARY-PLAINTEXT-9b2f over HTTP/{version}");
        canaries.push(bodies::b64(plaintext.as_bytes()));
    }
    canaries.push(bodies::b64(aad));
    for canary in &canaries {
        assert!(
            !log.contains(canary.as_str()),
            "{canary} leaked into the log"
        );
    }

    let status = server.terminate();
    assert!(status.success(), "exit status on SIGTERM: {status:?}");
}

#[test]
fn mt_7_curl_sees_handshake_failure_for_a_wrong_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("mtls server CA");
    let client_ca = Ca::new("client CA");
    let client_ca_file = client_ca.write(dir.path(), "client-ca");
    let client_auth = format!(
        "[server.tls.client_auth]\nca_bundle = {client_ca_file:?}\nallowed_subject_names = [\"cks.kms.eu-west-1.amazonaws.com\"]\n"
    );
    let ca_file = ca.write(dir.path(), "ca");
    let server = Server::start(&config(dir.path(), &ca, &client_auth));

    let good = client_ca.client("cks.kms.eu-west-1.amazonaws.com", &[]);
    let (good_cert, good_key) = good.write(dir.path(), &client_ca, "good");
    let (health, _) = curl(
        &server,
        &ca_file,
        "/tenant-a/kms/xks/v1/health",
        &bodies::health(),
        &[
            "--cert",
            good_cert.to_str().unwrap(),
            "--key",
            good_key.to_str().unwrap(),
        ],
    );
    assert_eq!(health["ekmFleetDetails"][0]["healthStatus"], "ACTIVE");

    let wrong = client_ca.client("cks.kms.us-east-1.example.com", &[]);
    let (cert, key) = wrong.write(dir.path(), &client_ca, "wrong");
    let out = Command::new("curl")
        .args(["-v", "--max-time", "20", "--cacert"])
        .arg(&ca_file)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", server.addr.port()),
        ])
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-X", "POST", "--data", "{}"])
        .arg(format!(
            "https://localhost:{}/tenant-a/kms/xks/v1/health",
            server.addr.port()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS alert, handshake failure"), "{stderr}");
}
