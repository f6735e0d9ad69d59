//! The AWS SDK for Python (boto3) against the local KMS front (`softhsm/kms-local`), the real
//! `xks-proxy serve` binary and a real SoftHSM2 token: store lifecycle, CreateKey, every
//! cryptographic operation with and without encryption context, ReEncrypt between an XKS key
//! and an AWS_KMS key, a wrong credential, an unreachable proxy, a disabled key, credential
//! rotation, and the request id joining the SDK's answer to the proxy's audit line. The proxy
//! requires mTLS, so every call also proves the front presents KMS's client certificate. The suite
//! itself is `tests/sdk/boto3_suite.py`; this test sets the stage
//! ([`support::kms_front::Stage`]) and checks the joins. The JavaScript SDK and the AWS
//! Encryption SDK run in `tests/kms_local_sdks.rs`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::kms_front::{KMS_AKID, Stage, python, run_suite};

/// Runs one phase of the boto3 suite and returns its stdout.
fn suite(phase: &str, stage: &Stage) -> String {
    run_suite(
        &format!("boto3 phase {phase}"),
        &python(&["boto3"]),
        "tests/sdk/boto3_suite.py",
        &[phase],
        &stage.env,
        &[],
    )
}

#[test]
fn boto3_suite_against_front_proxy_and_softhsm() {
    let mut stage = Stage::start("kms-local");
    let stdout = suite("main", &stage);

    // The SDK's x-amzn-RequestId is the kmsRequestId of the proxy's audit line.
    let request_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REQUEST_ID "))
        .expect("the suite printed a request id")
        .to_owned();
    let line = stage
        .proxy
        .wait_for_log(&format!("\"kms_request_id\":\"{request_id}\""));
    let audit: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(audit["kms_operation"], "Encrypt", "{line}");
    assert_eq!(audit["operation"], "Encrypt", "{line}");
    assert_eq!(audit["external_key_id"], stage.key.as_str(), "{line}");
    assert_eq!(audit["status"], 200, "{line}");
    let principal = audit["aws_principal_arn"].as_str().unwrap();
    assert_eq!(
        principal,
        format!("arn:aws:iam::111122223333:user/{KMS_AKID}")
    );
    assert!(
        audit["kms_key_arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kms:us-east-1:111122223333:key/"),
        "{line}"
    );

    // Stores, keys and AWS-side keys survive a restart of the front (the state file).
    stage.front.stop();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&stage.state)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the state file holds key material");
    }
    stage.restart_front();
    suite("after-restart", &stage);
}
