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
    softhsm::isolate!();
    let key = softhsm::create_key("curl", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("curl CA");
    let ca_file = ca.write(dir.path(), "ca");
    let server = Server::start(&config(dir.path(), &ca, ""));

    for (extra, version) in [(&[][..], "2"), (&["--http1.1"][..], "1.1")] {
        let plaintext = format!("round trip over HTTP/{version}");
        let path = format!("/tenant-a/kms/xks/v1/keys/{key}/encrypt");
        let (enc, meta) = curl(
            &server,
            &ca_file,
            &path,
            &bodies::encrypt(plaintext.as_bytes(), Some(b"aad"), true),
            extra,
        );
        assert_eq!(meta, format!("200 {version}"));
        assert!(enc["ciphertextDataIntegrityValue"].is_string());
        let dec = bodies::decrypt_from(&enc, Some(b"aad")).to_string();
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

    let status = server.terminate();
    assert!(status.success(), "exit status on SIGTERM: {status:?}");
}

/// `body` with `requestMetadata.<field>` set to `value`.
fn with_metadata(body: &[u8], field: &str, value: &str) -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::from_slice(body).unwrap();
    json["requestMetadata"][field] = value.into();
    json.to_string().into_bytes()
}

/// What one audit line must say; `None` means the field must be absent.
struct Expected {
    request_id: Option<&'static str>,
    operation: Option<&'static str>,
    status: u64,
    error_name: Option<&'static str>,
    reached_hsm: bool,
}

/// LOG-1…LOG-8 and the issue's audit log: exactly one JSON audit line per request (target
/// `xks_proxy::audit`) with the request metadata, outcome, errorName, reason, duration and
/// HSM member, for every operation and for failures; and, with the whole process logging at
/// trace level, no canary plaintext or AAD (raw or Base64), secret, PIN or signature anywhere
/// in the output (LOG-2, LOG-8, E-2, D-9).
#[test]
fn log_1_to_log_8_one_audit_line_per_request_and_no_canary_at_trace_level() {
    softhsm::isolate!();
    let key = softhsm::create_key("audit", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("audit CA");
    let ca_file = ca.write(dir.path(), "ca");
    // aws-sigv4 logs whole request bodies at trace level when this variable is set; the proxy
    // must not depend on it being unset.
    let server = Server::start_with_env(
        &config(dir.path(), &ca, ""),
        &[("LOG_SIGNABLE_BODY", Path::new("true"))],
    );
    let _ = server.drain_log();

    let plaintext = b"CANARY-PLAINTEXT-9b2f";
    let aad = b"CANARY-AAD-5c1e0d";
    let keys = |op: &str| format!("/tenant-a/kms/xks/v1/keys/{key}/{op}");
    let http1: &[&str] = &["--http1.1"];
    let bad_secret = format!("{}:{}", support::AKID_A1, support::SECRET_B);
    let mut expected = Vec::new();
    let mut call = |path: &str, body: Vec<u8>, extra: &[&str], want: Expected| {
        let (reply, meta) = curl(&server, &ca_file, path, &body, extra);
        let status = if want.error_name.is_some() {
            "4"
        } else {
            "200"
        };
        assert!(meta.starts_with(status), "{path}: {meta} {reply}");
        expected.push(want);
        reply
    };

    let encrypt = |id, cdiv| {
        with_metadata(
            &bodies::encrypt(plaintext, Some(aad), cdiv),
            "kmsRequestId",
            id,
        )
    };
    let ok = |id, operation| Expected {
        request_id: Some(id),
        operation: Some(operation),
        status: 200,
        error_name: None,
        reached_hsm: true,
    };
    call(
        &keys("encrypt"),
        encrypt("audit-encrypt-cdiv", true),
        &[],
        ok("audit-encrypt-cdiv", "Encrypt"),
    );
    let sealed = call(
        &keys("encrypt"),
        encrypt("audit-encrypt", false),
        http1,
        ok("audit-encrypt", "Encrypt"),
    );
    let decrypt = |id, aad: &[u8]| {
        let body = bodies::decrypt_from(&sealed, Some(aad)).to_string();
        with_metadata(body.as_bytes(), "kmsRequestId", id)
    };
    call(
        &keys("decrypt"),
        decrypt("audit-decrypt", aad),
        &[],
        ok("audit-decrypt", "Decrypt"),
    );
    call(
        &keys("decrypt"),
        decrypt("audit-decrypt-wrong-aad", b"CANARY-AAD-wrong"),
        http1,
        Expected {
            status: 400,
            error_name: Some("InvalidCiphertextException"),
            ..ok("audit-decrypt-wrong-aad", "Decrypt")
        },
    );
    let metadata = with_metadata(&bodies::metadata(), "kmsRequestId", "audit-metadata");
    let metadata = with_metadata(&metadata, "awsSourceVpc", "vpc-0123abcd");
    let metadata = with_metadata(&metadata, "awsSourceVpce", "vpce-0123abcd");
    call(
        &keys("metadata"),
        metadata,
        &[],
        ok("audit-metadata", "GetKeyMetadata"),
    );
    let health = with_metadata(&bodies::health(), "kmsRequestId", "audit-health");
    call(
        "/tenant-a/kms/xks/v1/health",
        health,
        &[],
        ok("audit-health", "GetHealthStatus"),
    );
    call(
        &keys("encrypt"),
        encrypt("audit-bad-signature", false),
        &["--user", &bad_secret],
        Expected {
            request_id: None,
            operation: Some("Encrypt"),
            status: 401,
            error_name: Some("AuthenticationFailedException"),
            reached_hsm: false,
        },
    );
    call(
        "/tenant-a/kms/xks/v1/keys/audit-no-such-key/encrypt",
        encrypt("audit-unknown-key", false),
        &[],
        Expected {
            status: 404,
            error_name: Some("KeyNotFoundException"),
            ..ok("audit-unknown-key", "Encrypt")
        },
    );
    call(
        "/tenant-a/invalid/kms/xks/v1/health",
        bodies::health(),
        &[],
        Expected {
            request_id: None,
            operation: None,
            status: 404,
            error_name: Some("InvalidUriPathException"),
            reached_hsm: false,
        },
    );

    std::thread::sleep(std::time::Duration::from_millis(300));
    let lines = server.drain_log();
    let log = lines.join("\n");
    assert!(
        log.len() > 10_000,
        "trace logging was not on ({} bytes)",
        log.len()
    );
    let audit: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|_| panic!("not JSON: {line}"))
        })
        .filter(|line| line["target"] == "xks_proxy::audit")
        .collect();
    assert_eq!(
        audit.len(),
        expected.len(),
        "one audit line per request:\n{audit:#?}"
    );
    for (line, want) in audit.iter().zip(&expected) {
        let context = format!("{line:#}");
        assert_eq!(
            line["kms_request_id"].as_str(),
            want.request_id,
            "{context}"
        );
        assert_eq!(line["operation"].as_str(), want.operation, "{context}");
        assert_eq!(line["status"].as_u64(), Some(want.status), "{context}");
        assert_eq!(line["error_name"].as_str(), want.error_name, "{context}");
        let outcome = if want.error_name.is_some() {
            "failure"
        } else {
            "success"
        };
        assert_eq!(line["outcome"], outcome, "{context}");
        assert_eq!(
            line["reason"].is_string(),
            want.error_name.is_some(),
            "{context}"
        );
        assert_eq!(
            line["hsm_member"].is_string(),
            want.reached_hsm,
            "{context}"
        );
        assert!(line["duration_us"].is_u64(), "{context}");
        assert!(line["timestamp"].is_string(), "{context}");
        assert_eq!(line["level"], "INFO", "{context}");
        let store = if want.operation.is_some() {
            Some("tenant-a")
        } else {
            None
        };
        assert_eq!(line["key_store"].as_str(), store, "{context}");
    }
    // Field by field where the request says what to expect.
    let by_id = |id: &str| audit.iter().find(|l| l["kms_request_id"] == id).unwrap();
    let encrypted = by_id("audit-encrypt-cdiv");
    assert_eq!(encrypted["kms_operation"], "Encrypt");
    assert_eq!(
        encrypted["aws_principal_arn"],
        "arn:aws:iam::123456789012:user/Alice"
    );
    assert!(
        encrypted["kms_key_arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kms:us-east-1:")
    );
    assert_eq!(encrypted["kms_via_service"], "ebs");
    assert_eq!(encrypted["external_key_id"], key.as_str());
    assert_eq!(encrypted["data_bytes"], plaintext.len());
    assert_eq!(encrypted["aad_bytes"], aad.len());
    let metadata = by_id("audit-metadata");
    assert_eq!(metadata["aws_source_vpc"], "vpc-0123abcd");
    assert_eq!(metadata["aws_source_vpce"], "vpce-0123abcd");
    assert!(metadata.get("kms_key_arn").is_none(), "{metadata}");
    assert!(encrypted.get("aws_source_vpc").is_none(), "{encrypted}");
    assert_eq!(audit[6]["reason"], "bad_signature");
    assert_eq!(audit[6]["external_key_id"], key.as_str());
    assert_eq!(by_id("audit-decrypt-wrong-aad")["aad_bytes"], 16);

    let mut canaries = vec![
        "CANARY".to_owned(),
        bodies::b64(plaintext),
        bodies::b64(aad),
        bodies::b64(b"CANARY-AAD-wrong"),
        support::SECRET_A1.to_owned(),
        support::SECRET_B.to_owned(),
        softhsm::USER_PIN.to_owned(),
        "Signature=".to_owned(),
    ];
    canaries.push(sealed["ciphertext"].as_str().unwrap().to_owned());
    for canary in &canaries {
        assert!(
            !log.contains(canary.as_str()),
            "{canary} leaked into the log"
        );
        // Also as a Rust byte-slice Debug rendering (`[67, 65, 78, …]`), the way aws-sigv4
        // prints a request body.
        let as_bytes = format!("{:?}", canary.as_bytes());
        let as_bytes = as_bytes.trim_start_matches('[').trim_end_matches(']');
        assert!(
            !log.contains(as_bytes),
            "{canary} leaked into the log as bytes"
        );
    }
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
    let out = curl_health_with_cert(&server, &ca_file, Some((&cert, &key)));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS alert, handshake failure"), "{stderr}");

    // No certificate at all: refused too, and counted like the wrong one.
    let out = curl_health_with_cert(&server, &ca_file, None);
    assert!(!out.status.success());
    let metrics = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .arg(format!("http://{}/metrics", server.admin_addr))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains(r#"xks_authentication_failures_total{key_store="none",reason="mtls"} 2"#),
        "{metrics}"
    );
}

/// `curl -v -X POST` of an empty health request, with a client certificate and key or none.
fn curl_health_with_cert(
    server: &Server,
    ca_file: &Path,
    cert_and_key: Option<(&Path, &Path)>,
) -> std::process::Output {
    let mut curl = Command::new("curl");
    curl.args(["-v", "--max-time", "20", "--cacert"])
        .arg(ca_file)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", server.addr.port()),
        ]);
    if let Some((cert, key)) = cert_and_key {
        curl.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    curl.args(["-X", "POST", "--data", "{}"])
        .arg(format!(
            "https://localhost:{}/tenant-a/kms/xks/v1/health",
            server.addr.port()
        ))
        .output()
        .unwrap()
}
