//! Logging never holds up a request: the proxy binary with a stdout nobody reads (a stalled
//! journald or container log pipe). Every request is still answered, and the audit lines that
//! could not be written are counted in `xks_log_lines_dropped_total` and reported on stderr,
//! never lost silently.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::binary::BIN;
use support::{Client, bodies, softhsm};

/// More audit lines than the writer buffers (`logging::BUFFERED_LINES`, 16,384) plus what a
/// pipe holds: some must be dropped.
const REQUESTS: usize = 24_000;
const CONNECTIONS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_never_holds_up_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("xks-proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nplaintext_behind_load_balancer = true\n\
             [hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\nuser_pin = \"{}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [[key_stores]]\npath_prefix = \"/tenant-a\"\n[[key_stores.credentials]]\n\
             access_key_id = \"{}\"\nsecret = \"{}\"\n",
            softhsm::MODULE,
            softhsm::TOKEN_LABEL,
            softhsm::USER_PIN,
            support::AKID_A1,
            support::SECRET_A1,
        ),
    )
    .unwrap();
    // Reaped below (kill + wait).
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("SOFTHSM2_CONF", &softhsm::token().conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read stdout only up to the startup line, for the addresses; then never again.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let started = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "no startup line");
        if line.contains("xks-proxy started") {
            break serde_json::from_str::<serde_json::Value>(&line).unwrap();
        }
    };
    let addr = started["listen"].as_str().unwrap().parse().unwrap();
    let admin = started["admin_listen"].as_str().unwrap().parse().unwrap();

    // Signed health checks: one audit line each, answered from the cached deep check.
    let client = Client::plaintext(addr);
    let body = bodies::health();
    let began = Instant::now();
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let client = client.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut conn = client.connect().await.unwrap();
                let mut answered = 0;
                for _ in 0..REQUESTS / CONNECTIONS {
                    let reply = tokio::time::timeout(
                        Duration::from_secs(5),
                        conn.send(
                            &client,
                            "POST",
                            "/tenant-a/kms/xks/v1/health",
                            &[("content-type", "application/json")],
                            &body,
                        ),
                    )
                    .await
                    .expect("a request was held up by logging");
                    assert_eq!(reply.status, 200, "{}", reply.text());
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for worker in workers {
        answered += worker.await.unwrap();
    }
    eprintln!(
        "{answered} requests answered in {:?} with stdout unread",
        began.elapsed()
    );
    assert_eq!(answered, REQUESTS / CONNECTIONS * CONNECTIONS);

    let metrics = Client::plaintext(admin)
        .signer(None)
        .send("GET", "/metrics", &[], b"")
        .await
        .text();
    let dropped: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("xks_log_lines_dropped_total "))
        .expect("the dropped-lines counter")
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 0, "{metrics}");

    // The loss is reported on stderr within one report interval (10 s).
    let mut stderr = child.stderr.take().unwrap();
    let report = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && stderr.read(&mut byte).unwrap_or(0) == 1 {
            seen.push(byte[0]);
            let text = String::from_utf8_lossy(&seen);
            if text.contains("log line(s) dropped") && text.ends_with('\n') {
                return text.into_owned();
            }
        }
        panic!(
            "no loss report on stderr: {}",
            String::from_utf8_lossy(&seen)
        );
    });
    let report = tokio::time::timeout(Duration::from_secs(20), report)
        .await
        .expect("the loss report within 20 s")
        .unwrap();
    assert!(report.contains("xks_log_lines_dropped_total"), "{report}");
    let _ = child.kill();
    let _ = child.wait();
}
