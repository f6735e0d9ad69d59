//! Cedar authorization in the pipeline, over the in-memory backend: where it runs (after
//! SigV4, never for GetHealthStatus), what a denial answers, log-only mode, per-store policies.
//! End to end through TLS and SoftHSM2: `tests/authorization.rs`.

use super::*;

const BOTH: &[KeyUsage] = &[KeyUsage::Encrypt, KeyUsage::Decrypt];

/// Writes `policies` to a file in `dir` and returns the TOML table pointing at it.
fn table(dir: &tempfile::TempDir, name: &str, header: &str, policies: &str, mode: &str) -> String {
    let path = dir.path().join(format!("{name}.cedar"));
    std::fs::write(&path, policies).unwrap();
    format!("{header}\npolicy_file = {path:?}\nmode = \"{mode}\"\n")
}

fn counter(h: &Harness, series: &str) -> f64 {
    let text = h.state.metrics().render_text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const FORBID_ALL: &str = r#"@id("nobody") forbid (principal, action, resource);"#;

#[tokio::test]
async fn a_denial_is_403_but_health_is_never_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let tail = table(&dir, "deny", "[authorization]", FORBID_ALL, "enforce");
    let h = Harness::with("", &tail, MemoryBackend::default().with_key("both", BOTH));
    let (status, health) = h
        .post(
            "/a/kms/xks/v1/health",
            &json!({"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "KmsHealthCheck"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{health}");
    for (path, body) in [
        ("/a/kms/xks/v1/keys/both/encrypt", encrypt_body(b"x")),
        (
            "/a/kms/xks/v1/keys/both/metadata",
            json!({"requestMetadata": metadata("DescribeKey")}),
        ),
    ] {
        let reply = h.post(path, &body).await;
        assert_error(&reply, 403, "AccessDeniedException");
        // Generic: the policy id is for the operator's audit log, not the caller.
        assert!(!reply.1.to_string().contains("nobody"), "{}", reply.1);
    }
    let deny =
        r#"xks_authorization_decisions_total{key_store="a",action="Encrypt",outcome="deny"}"#;
    assert_eq!(counter(&h, deny), 1.0);
    let text = h.state.metrics().render_text();
    assert!(!text.contains(r#"action="GetHealthStatus""#), "{text}");
    // An unauthenticated request never reaches the policies.
    let unsigned = h
        .send(
            "POST",
            "/a/kms/xks/v1/keys/both/encrypt",
            encrypt_body(b"x").to_string().as_bytes(),
            None,
        )
        .await;
    assert_error(&unsigned, 401, "AuthenticationFailedException");
    assert_eq!(counter(&h, deny), 1.0);
}

#[tokio::test]
async fn log_only_serves_what_it_would_deny_and_stores_override_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let default = table(&dir, "default", "[authorization]", FORBID_ALL, "log-only");
    let own = table(
        &dir,
        "own",
        "[key_stores.authorization]",
        r#"@id("alice-only") permit (principal, action, resource) when { principal.arn like "*:user/Alice" };"#,
        "enforce",
    );
    let backend = MemoryBackend::default().with_key("both", BOTH);
    let h = Harness::with(&own, &default, backend);
    // Store a has its own policies: Alice (the harness's principal) is allowed.
    let (status, _) = h
        .post("/a/kms/xks/v1/keys/both/encrypt", &encrypt_body(b"x"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let allow =
        r#"xks_authorization_decisions_total{key_store="a",action="Encrypt",outcome="allow"}"#;
    assert_eq!(counter(&h, allow), 1.0);
    // Store b uses the default, log-only: denied by policy, served anyway.
    let body = encrypt_body(b"x").to_string();
    let (status, _) = h
        .send(
            "POST",
            "/b/kms/xks/v1/keys/both/encrypt",
            body.as_bytes(),
            Some("BBBBBBBBBBBBBBBBBBBBBBBB22"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let would =
        r#"xks_authorization_decisions_total{key_store="b",action="Encrypt",outcome="would_deny"}"#;
    assert_eq!(counter(&h, would), 1.0);
    // Another principal on store a is refused.
    let mut other = encrypt_body(b"x");
    other["requestMetadata"]["awsPrincipalArn"] = json!("arn:aws:iam::123456789012:user/Bob");
    let reply = h.post("/a/kms/xks/v1/keys/both/encrypt", &other).await;
    assert_error(&reply, 403, "AccessDeniedException");
}

#[tokio::test]
async fn a_reload_swaps_the_policies() {
    let dir = tempfile::tempdir().unwrap();
    let allow = table(
        &dir,
        "allow",
        "[authorization]",
        r#"permit (principal, action, resource);"#,
        "enforce",
    );
    let h = Harness::with("", &allow, MemoryBackend::default().with_key("both", BOTH));
    let (status, _) = h
        .post("/a/kms/xks/v1/keys/both/encrypt", &encrypt_body(b"x"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let deny = table(&dir, "deny", "[authorization]", FORBID_ALL, "enforce");
    h.reconfigure("", &deny);
    let reply = h
        .post("/a/kms/xks/v1/keys/both/encrypt", &encrypt_body(b"x"))
        .await;
    assert_error(&reply, 403, "AccessDeniedException");
}
