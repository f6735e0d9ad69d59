//! The AWS SDK for JavaScript v3 (`@aws-sdk/client-kms`) and the AWS Encryption SDK for Python
//! against the local KMS front (`softhsm/kms-local`), the real `xks-proxy serve` binary
//! (mTLS required) and a real SoftHSM2 token, on the stage of `tests/kms_local.rs`
//! ([`support::kms_front::Stage`]). The suites are `tests/sdk/js_suite.mjs` and
//! `tests/sdk/esdk_suite.py`; each failure they provoke asserts the exception the SDK raises.
//!
//! Node is `$XKS_NODE` or `node`, with `@aws-sdk/client-kms` from `$XKS_NODE_MODULES` or
//! `<target>/sdk-js/node_modules`; Python is found as in `tests/kms_local.rs`. Both are
//! installed by `tests/run.sh`; without them the tests fail and say so.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::kms_front::{Stage, node_modules, python, run_suite};

#[test]
fn javascript_sdk_suite_against_front_proxy_and_softhsm() {
    let modules = node_modules();
    let node = std::env::var("XKS_NODE").unwrap_or_else(|_| "node".into());
    let stage = Stage::start("kms-local-js");
    let stdout = run_suite(
        "JavaScript SDK suite",
        &node,
        "tests/sdk/js_suite.mjs",
        &[],
        &stage.env,
        &[("XKS_NODE_MODULES", modules.display().to_string())],
    );
    assert!(stdout.contains("OK js:"), "{stdout}");
}

#[test]
fn encryption_sdk_suite_against_front_proxy_and_softhsm() {
    let python = python(&["boto3", "aws_encryption_sdk"]);
    let stage = Stage::start("kms-local-esdk");
    let stdout = run_suite(
        "AWS Encryption SDK suite",
        &python,
        "tests/sdk/esdk_suite.py",
        &[],
        &stage.env,
        &[],
    );
    assert!(stdout.contains("OK esdk:"), "{stdout}");
}
