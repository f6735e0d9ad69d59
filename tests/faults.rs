//! Surviving the HSM: the real `xks-proxy serve` binary on the fault-injecting PKCS#11 module
//! (`softhsm/fault-pkcs11`) in front of a real SoftHSM2 token. For each failure class: the
//! status and `errorName` the client sees, that the answer comes within the deadline, and how
//! long until requests succeed again once the fault is lifted (printed as `MEASURE` lines;
//! `cargo nextest run --test faults --no-capture` shows them).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::binary::Server;
use support::bodies::{self, unb64};
use support::faults::FaultySetup;
use support::{Client, softhsm};
use xks_proxy::hsm::KeyUsage;

/// The request budget the proxies here run with.
const TIMEOUT_MS: u64 = 200;

/// A proxy whose HSM is the fault module; `set` changes the faults while it runs.
struct Faulty {
    server: Server,
    setup: FaultySetup,
    key: String,
}

impl Faulty {
    fn start(sessions: usize, queue_depth: usize) -> Self {
        let key = softhsm::create_key("fault", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
        let setup = FaultySetup::write(
            "fault CA",
            &format!("request_timeout_ms = {TIMEOUT_MS}\nshutdown_grace_ms = 1000"),
            &format!(
                "[hsm]\nmodule = {{module}}\ntoken_label = \"{}\"\nuser_pin = \"{}\"\n\
                 sessions = {sessions}\nqueue_depth = {queue_depth}",
                softhsm::TOKEN_LABEL,
                softhsm::USER_PIN,
            ),
        );
        let server = Server::start_with_env(&setup.config, &setup.env());
        Self { server, setup, key }
    }

    /// Replaces the fault rules; the module sees the change within a few milliseconds.
    fn set(&self, rules: &str) {
        self.setup.set(rules);
    }

    fn client(&self) -> Client {
        self.setup.client(&self.server)
    }

    fn path(&self, op: &str) -> String {
        format!("/t/kms/xks/v1/keys/{}/{op}", self.key)
    }

    async fn encrypt(&self) -> support::Reply {
        self.client()
            .post(
                &self.path("encrypt"),
                &bodies::encrypt(b"fault test", None, false),
            )
            .await
    }

    async fn decrypt(&self, body: &str) -> support::Reply {
        self.client()
            .post(&self.path("decrypt"), body.as_bytes())
            .await
    }

    /// Decrypts `body` (a Decrypt body for an [`Faulty::encrypt`] result): 200 and the
    /// plaintext back.
    async fn assert_decrypts(&self, body: &str) {
        let plain = self.decrypt(body).await.assert_ok();
        assert_eq!(unb64(&plain["plaintext"]), b"fault test");
    }

    /// Polls encrypt until it succeeds; returns how long that took (at most 15 s).
    async fn time_to_recover(&self) -> Duration {
        let start = Instant::now();
        loop {
            if self.encrypt().await.status == 200 {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no recovery within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The client must hear back within the deadline plus scheduling slack.
#[track_caller]
fn within_deadline(elapsed: Duration) {
    assert!(
        elapsed < Duration::from_millis(TIMEOUT_MS + 800),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn deadline_a_hung_hsm_call_is_dependency_timeout_and_spares_free_sessions() {
    softhsm::isolate!();
    let hsm = Faulty::start(2, 16);
    hsm.encrypt().await.assert_ok();
    hsm.set("hang C_Encrypt\n");
    let started = Instant::now();
    let hung = hsm.encrypt();
    let metadata = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        hsm.client()
            .post(&hsm.path("metadata"), &bodies::metadata())
            .await
    };
    let (hung, metadata) = tokio::join!(hung, metadata);
    hung.assert_error(503, "DependencyTimeoutException");
    within_deadline(started.elapsed());
    // The other session was free: a request that does not need C_Encrypt is served.
    metadata.assert_ok();
    hsm.set("");
    let took = hsm.time_to_recover().await;
    eprintln!("MEASURE hang released -> first success: {took:?}");
}

#[tokio::test]
async fn back_pressure_a_full_queue_is_throttling_at_once() {
    softhsm::isolate!();
    let hsm = Faulty::start(1, 0);
    hsm.encrypt().await.assert_ok();
    hsm.set("hang C_Encrypt\n");
    let hung = hsm.encrypt();
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        (hsm.encrypt().await, started.elapsed())
    };
    let (hung, (second, waited)) = tokio::join!(hung, second);
    hung.assert_error(503, "DependencyTimeoutException");
    second.assert_error(429, "ThrottlingException");
    assert!(
        waited < Duration::from_millis(TIMEOUT_MS),
        "429 must not wait: {waited:?}"
    );
    hsm.set("");
    hsm.time_to_recover().await;
}

#[tokio::test]
async fn recovery_session_and_login_failures_are_retried_invisibly() {
    softhsm::isolate!();
    let hsm = Faulty::start(2, 16);
    for rv in [
        "CKR_SESSION_HANDLE_INVALID",
        "CKR_SESSION_CLOSED",
        "CKR_USER_NOT_LOGGED_IN",
    ] {
        hsm.set(&format!("fail C_Encrypt {rv} once\n"));
        let started = Instant::now();
        hsm.encrypt().await.assert_ok();
        eprintln!(
            "MEASURE {rv} once -> served by retry in {:?}",
            started.elapsed()
        );
    }
    // A session failure that persists is an internal error, not a hang.
    hsm.set("fail C_Encrypt CKR_SESSION_HANDLE_INVALID always\n");
    let started = Instant::now();
    hsm.encrypt().await.assert_error(500, "InternalException");
    within_deadline(started.elapsed());
    hsm.set("");
    let took = hsm.time_to_recover().await;
    eprintln!("MEASURE session failures lifted -> first success: {took:?}");
}

/// A worker whose session is gone and whose reopen is in backoff takes no requests: the worker
/// that still has a session serves them all. With no session anywhere, requests fail fast
/// (500, not a 503 at the deadline).
#[tokio::test]
async fn recovery_a_worker_in_reopen_backoff_leaves_requests_to_live_sessions() {
    softhsm::isolate!();
    let hsm = Faulty::start(2, 16);
    hsm.encrypt().await.assert_ok();
    // One worker loses its session, and cannot open a new one (a request-class refusal, so
    // no context rebuild): it stays without a session, retrying with backoff.
    hsm.set(
        "fail C_Encrypt CKR_SESSION_HANDLE_INVALID once\n\
         fail C_OpenSession CKR_FUNCTION_REJECTED always\n",
    );
    hsm.encrypt().await.assert_error(500, "InternalException");
    hsm.server.wait_for_log("cannot open a PKCS#11 session");
    for i in 0..20 {
        let reply = hsm.encrypt().await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }

    // The other worker loses its session too: nobody can serve, and clients hear so at once.
    hsm.set(
        "fail C_Encrypt CKR_SESSION_HANDLE_INVALID always\n\
         fail C_OpenSession CKR_FUNCTION_REJECTED always\n",
    );
    for _ in 0..4 {
        let started = Instant::now();
        hsm.encrypt().await.assert_error(500, "InternalException");
        assert!(
            started.elapsed() < Duration::from_millis(TIMEOUT_MS),
            "must fail fast, took {:?}",
            started.elapsed()
        );
    }
    hsm.set("");
    let took = hsm.time_to_recover().await;
    eprintln!("MEASURE sessions reopen after backoff -> first success: {took:?}");
}

#[tokio::test]
async fn recovery_a_removed_token_fails_fast_then_heals_without_a_restart() {
    softhsm::isolate!();
    let hsm = Faulty::start(2, 16);
    hsm.encrypt().await.assert_ok();
    hsm.set("token-removed\n");
    for _ in 0..3 {
        let started = Instant::now();
        hsm.encrypt().await.assert_error(500, "InternalException");
        within_deadline(started.elapsed());
    }
    // H-16: no member can serve → health is an error; readiness fails.
    hsm.client()
        .post("/t/kms/xks/v1/health", &bodies::health())
        .await
        .assert_error(500, "InternalException");
    let ready = Client::plaintext(hsm.server.admin_addr)
        .signer(None)
        .send("GET", "/readyz", &[], b"")
        .await;
    assert_eq!(ready.status, 503, "{}", ready.text());

    hsm.set("");
    let took = hsm.time_to_recover().await;
    eprintln!("MEASURE token reinserted -> first success: {took:?}");
    hsm.server.wait_for_log("PKCS#11 context rebuilt");
    let health = hsm
        .client()
        .post("/t/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
    assert_eq!(health["ekmFleetDetails"][0]["healthStatus"], "ACTIVE");
}

#[tokio::test]
async fn recovery_device_errors_rebuild_the_context_in_the_background() {
    softhsm::isolate!();
    let hsm = Faulty::start(2, 16);
    hsm.encrypt().await.assert_ok();
    for rv in [
        "CKR_DEVICE_ERROR",
        "CKR_GENERAL_ERROR",
        "CKR_DEVICE_REMOVED",
    ] {
        hsm.set(&format!("fail C_Encrypt {rv} once\n"));
        let started = Instant::now();
        hsm.encrypt().await.assert_error(500, "InternalException");
        within_deadline(started.elapsed());
        hsm.set("");
        let took = hsm.time_to_recover().await;
        eprintln!("MEASURE {rv} once -> context rebuilt, first success after {took:?}");
    }
}

#[tokio::test]
async fn error_map_hsm_answers_reach_the_client_as_their_xks_errors() {
    softhsm::isolate!();
    let hsm = Faulty::start(2, 16);
    let enc = hsm.encrypt().await.assert_ok();
    let dec = bodies::decrypt_from(&enc, None).to_string();
    // D-12: other HSMs report a tag mismatch as ENCRYPTED_DATA_INVALID or FUNCTION_FAILED.
    for rv in ["CKR_ENCRYPTED_DATA_INVALID", "CKR_FUNCTION_FAILED"] {
        hsm.set(&format!("fail C_Decrypt {rv} once\n"));
        hsm.decrypt(&dec)
            .await
            .assert_error(400, "InvalidCiphertextException");
    }
    hsm.set("fail C_EncryptInit CKR_KEY_FUNCTION_NOT_PERMITTED once\n");
    hsm.encrypt()
        .await
        .assert_error(400, "InvalidKeyUsageException");
    // CDIV-9: the verification decrypt failing makes the new ciphertext untrustworthy.
    hsm.set("fail C_Decrypt CKR_FUNCTION_FAILED once\n");
    let cdiv = bodies::encrypt(b"fault test", None, true);
    hsm.client()
        .post(&hsm.path("encrypt"), &cdiv)
        .await
        .assert_error(500, "InternalException");
    hsm.set("");
    hsm.assert_decrypts(&dec).await;
    hsm.client()
        .post(&hsm.path("encrypt"), &cdiv)
        .await
        .assert_ok();
}

#[tokio::test]
async fn shutdown_a_hung_hsm_call_does_not_keep_the_process_alive() {
    softhsm::isolate!();
    let hsm = Faulty::start(2, 16);
    hsm.set("hang C_Encrypt\n");
    hsm.encrypt()
        .await
        .assert_error(503, "DependencyTimeoutException");
    // Keep the setup (its directory) while the server stops.
    let Faulty { server, setup, .. } = hsm;
    let started = Instant::now();
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    eprintln!(
        "MEASURE SIGTERM with a hung HSM call -> exit after {:?}",
        started.elapsed()
    );
    drop(setup);
}

/// Key hygiene: `keys create` locks keys with `CKA_MODIFIABLE=false` and `CKA_COPYABLE=false`;
/// a token that rejects one of them (`CKR_ATTRIBUTE_TYPE_INVALID`) still gets a working key,
/// without that attribute, and the command says so.
#[tokio::test]
async fn key_hygiene_keys_create_falls_back_when_the_token_rejects_a_lock_attribute() {
    softhsm::isolate!();
    let hsm = Faulty::start(1, 4);
    hsm.set("fail C_GenerateKey CKR_ATTRIBUTE_TYPE_INVALID once\n");
    let label = softhsm::unique_label("unlockable");
    let out = softhsm::serialised_write(|| {
        std::process::Command::new(support::binary::BIN)
            .args(["keys", "create", "--config"])
            .arg(&hsm.setup.config)
            .args(["--label", &label])
            .env("SOFTHSM2_CONF", &softhsm::token().conf)
            .envs(hsm.setup.env())
            .output()
            .unwrap()
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("CKA_COPYABLE") && stderr.contains("CKR_ATTRIBUTE_TYPE_INVALID"),
        "{stderr}"
    );
    hsm.set("");
    hsm.client()
        .post(
            &format!("/t/kms/xks/v1/keys/{label}/encrypt"),
            &bodies::encrypt(b"fallback", None, false),
        )
        .await
        .assert_ok();
}

/// Key hygiene over HTTP, through the real binary: keys planted without the PIN (public,
/// readable, extractable) and private keys that can be extracted answer 404
/// KeyNotFoundException for every operation, exactly like a missing key, and the proxy logs
/// why at warn with the label, once per lookup.
#[tokio::test]
async fn key_hygiene_refused_keys_are_key_not_found_over_http() {
    softhsm::isolate!();
    let hsm = Faulty::start(2, 16);
    let squatted = softhsm::unique_label("squatted");
    softhsm::plant_public_key(&squatted, &[0x42; 32]);
    let extractable = softhsm::unique_label("extractable");
    softhsm::pkcs11_tool_extractable_key(&extractable);
    for label in [&squatted, &extractable] {
        for (op, body) in [
            ("metadata", bodies::metadata()),
            ("encrypt", bodies::encrypt(b"secret", None, false)),
        ] {
            hsm.client()
                .post(&format!("/t/kms/xks/v1/keys/{label}/{op}"), &body)
                .await
                .assert_error(404, "KeyNotFoundException");
        }
    }
    // In request order: the squatted key's lookups first.
    let public = hsm.server.wait_for_log("only public objects");
    assert!(public.contains(&squatted), "{public}");
    let refused = hsm.server.wait_for_log("refusing to serve a key");
    assert!(
        refused.contains(&extractable) && refused.contains("extractable (CKA_EXTRACTABLE=true)"),
        "{refused}"
    );
    // The real key of this proxy still serves.
    hsm.encrypt().await.assert_ok();
}

/// Log lines printed until one contains `needle` (at most 10 s), plus those printed in the
/// 200 ms after it, so that a line the same failure logs a little later is included too.
fn log_through(server: &Server, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains(needle)) {
        assert!(
            Instant::now() < deadline,
            "no log line containing {needle:?} within 10 s:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
        lines.extend(server.drain_log());
    }
    std::thread::sleep(Duration::from_millis(200));
    lines.extend(server.drain_log());
    lines
}

/// The log lines that say the PKCS#11 context is (being) rebuilt.
fn rebuilds(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains("rebuilding the context") || l.contains("context rebuilt"))
        .collect()
}

/// A vendor-defined return code says nothing about the device: once, it costs the request
/// (its XKS error as before) and the session it came from, not a rebuild of the module that
/// every session (and every fleet member on it) shares.
#[tokio::test]
async fn recovery_one_unknown_return_code_replaces_its_session_only() {
    softhsm::isolate!();
    let hsm = Faulty::start(2, 16);
    hsm.encrypt().await.assert_ok();
    hsm.set("fail C_Encrypt 0x80000001 once\n");
    let started = Instant::now();
    hsm.encrypt().await.assert_error(500, "InternalException");
    within_deadline(started.elapsed());
    let lines = log_through(&hsm.server, "CKR_VENDOR_DEFINED(0x80000001)");
    assert_eq!(rebuilds(&lines), Vec::<&String>::new(), "one unknown code");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("replacing the PKCS#11 session")),
        "{lines:#?}"
    );
    // Nothing is being rebuilt, so nothing fails fast: every request is served.
    for i in 0..10 {
        let reply = hsm.encrypt().await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
}

/// The same unknown code again and again is the device: after a few in a row the context is
/// rebuilt like after CKR_DEVICE_ERROR, and the proxy heals once the code stops.
#[tokio::test]
async fn recovery_a_repeating_unknown_return_code_rebuilds_the_context() {
    softhsm::isolate!();
    let hsm = Faulty::start(2, 16);
    hsm.encrypt().await.assert_ok();
    hsm.set("fail C_Encrypt 0x80000001 always\n");
    for _ in 1..xks_proxy::hsm::pkcs11::UNKNOWN_CODE_STREAK {
        hsm.encrypt().await.assert_error(500, "InternalException");
    }
    let lines = log_through(&hsm.server, "CKR_VENDOR_DEFINED(0x80000001)");
    assert_eq!(rebuilds(&lines), Vec::<&String>::new(), "before the streak");
    let started = Instant::now();
    hsm.encrypt().await.assert_error(500, "InternalException");
    within_deadline(started.elapsed());
    hsm.server
        .wait_for_log("rebuilding the context in the background");
    hsm.set("");
    let took = hsm.time_to_recover().await;
    eprintln!("MEASURE repeated unknown code lifted -> first success: {took:?}");
    hsm.server.wait_for_log("PKCS#11 context rebuilt");
}

/// Item 2 of the performance work: an Encrypt makes one `C_Encrypt` and a Decrypt one
/// `C_Decrypt` (each after its `Init`), with the output buffer sized in advance, not a
/// length query first. Counted on the real module's side: with every second `C_Encrypt`
/// failing, one call per request fails every second request; two calls per request (query,
/// then the call) would fail every request.
#[tokio::test]
async fn hsm_calls_one_single_part_call_per_encrypt_and_decrypt() {
    softhsm::isolate!();
    let hsm = Faulty::start(1, 16);
    let sealed = hsm.encrypt().await.assert_ok();
    let dec = bodies::decrypt_from(&sealed, None).to_string();
    for (function, send) in [("C_Encrypt", "encrypt"), ("C_Decrypt", "decrypt")] {
        hsm.set(&format!("fail {function} CKR_DATA_LEN_RANGE every 2\n"));
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let reply = match send {
                "encrypt" => hsm.encrypt().await,
                _ => hsm.decrypt(&dec).await,
            };
            statuses.push(reply.status);
        }
        assert_eq!(statuses[0], 200, "{function}: {statuses:?}");
        assert_eq!(statuses[2], 200, "{function}: {statuses:?}");
        assert_ne!(statuses[1], 200, "{function}: {statuses:?}");
        assert_ne!(statuses[3], 200, "{function}: {statuses:?}");
        hsm.set("");
    }
    hsm.assert_decrypts(&dec).await;
}

/// A module that answers `CKR_BUFFER_TOO_SMALL` to the single-part call keeps the operation
/// active (PKCS#11 §5.2), so the session cannot start another: the proxy replaces the session
/// and retries, and the client never sees it.
#[tokio::test]
async fn hsm_calls_buffer_too_small_replaces_the_session_invisibly() {
    softhsm::isolate!();
    let hsm = Faulty::start(1, 16);
    let sealed = hsm.encrypt().await.assert_ok();
    let dec = bodies::decrypt_from(&sealed, None).to_string();
    hsm.set("fail C_Encrypt CKR_BUFFER_TOO_SMALL once\n");
    hsm.encrypt().await.assert_ok();
    hsm.encrypt().await.assert_ok();
    hsm.set("fail C_Decrypt CKR_BUFFER_TOO_SMALL once\n");
    for _ in 0..2 {
        hsm.assert_decrypts(&dec).await;
    }
}
