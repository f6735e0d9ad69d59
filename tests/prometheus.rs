//! A real Prometheus server (Debian's `prometheus` package) scrapes the real binary's admin
//! listener on loopback while XKS requests flow; its HTTP API must then show the request
//! counter and the latency histograms moving. `promtool check metrics` must find nothing to
//! complain about in a scraped `/metrics` body.
//!
//! Without a `prometheus` binary the test is skipped with a message, unless
//! `XKS_REQUIRE_PROMETHEUS` is set (as `tests/run.sh` and CI do); then it fails.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::binary::Server;
use support::{AKID_A1, Ca, Client, SECRET_A1, SECRET_B, Signer, bodies, softhsm};
use xks_proxy::hsm::KeyUsage;

/// How long Prometheus gets to become ready and to show what was sent.
const PATIENCE: Duration = Duration::from_secs(30);

/// Whether the test can run; panics when Prometheus is required but missing.
fn prometheus_available() -> bool {
    let found = ["prometheus", "promtool"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    });
    if !found {
        assert!(
            std::env::var_os("XKS_REQUIRE_PROMETHEUS").is_none(),
            "XKS_REQUIRE_PROMETHEUS is set but `prometheus`/`promtool` are not installed \
             (apt-get install prometheus)"
        );
        eprintln!(
            "SKIPPED: `prometheus`/`promtool` not installed (apt-get install prometheus); set \
             XKS_REQUIRE_PROMETHEUS=1 to make this a failure"
        );
    }
    found
}

/// A proxy config with TLS, the admin listener on a free loopback port, and one key store.
fn proxy_config(dir: &Path, ca: &Ca) -> std::path::PathBuf {
    let (chain, key) = ca.server().write(dir, ca, "server");
    let pin = dir.join("pin");
    std::fs::write(&pin, softhsm::USER_PIN).unwrap();
    let path = dir.join("xks-proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificate_chain = {chain:?}\n\
             private_key = {key:?}\n[hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\n\
             user_pin_file = {pin:?}\n[logging]\nlevel = \"info\"\n[admin]\n\
             listen = \"127.0.0.1:0\"\n[[key_stores]]\nname = \"tenant-a\"\n\
             path_prefix = \"/tenant-a\"\n[[key_stores.credentials]]\n\
             access_key_id = \"{AKID_A1}\"\nsecret = \"{SECRET_A1}\"\n",
            softhsm::MODULE,
            softhsm::TOKEN_LABEL,
        ),
    )
    .unwrap();
    path
}

/// A `prometheus` process on loopback, killed (and reaped) on drop, also when a test panics.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s `/metrics` every second, with its own storage.
    fn start(target: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: xks-proxy\n    static_configs:\n\
                 \x20     - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port; the small window until Prometheus binds it is acceptable on loopback.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        // Reaped in `Drop`.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Self { child, addr, dir }
    }

    /// Prometheus's own log, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> support::Reply {
        Client::plaintext(self.addr)
            .signer(None)
            .send("GET", path, &[], b"")
            .await
    }

    /// Waits until the server answers `/-/ready`.
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok()
                && self.get("/-/ready").await.status == 200
            {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "prometheus not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of an instant query returning one sample, `None` while it returns none.
    async fn query(&self, promql: &str) -> Option<f64> {
        let reply = self
            .get(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .await;
        assert_eq!(reply.status, 200, "{promql}: {}", reply.text());
        let body = reply.json();
        assert_eq!(body["status"], "success", "{promql}: {body}");
        let result = body["data"]["result"].as_array()?;
        let [sample] = result.as_slice() else {
            assert!(result.is_empty(), "{promql}: several series: {body}");
            return None;
        };
        sample["value"][1].as_str()?.parse().ok()
    }

    /// Polls `promql` until `accept` holds for its value, at most [`PATIENCE`].
    async fn wait_for(&self, promql: &str, accept: impl Fn(f64) -> bool) -> f64 {
        let started = Instant::now();
        loop {
            let value = self.query(promql).await;
            if let Some(v) = value.filter(|v| accept(*v)) {
                return v;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{promql} is {value:?} after {PATIENCE:?}; prometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `promtool check metrics` on `exposition`; returns its exit success and output.
fn promtool_check(exposition: &str) -> (bool, String) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn prometheus_scrapes_request_counter_and_latency_histograms() {
    softhsm::isolate!();
    if !prometheus_available() {
        return;
    }
    let key = softhsm::create_key("prom", &[KeyUsage::Encrypt, KeyUsage::Decrypt]);
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("prometheus CA");
    let server = Server::start(&proxy_config(dir.path(), &ca));
    let mut prometheus = Prometheus::start(server.admin_addr);
    prometheus.wait_ready().await;
    prometheus
        .wait_for(r#"up{job="xks-proxy"}"#, |up| up == 1.0)
        .await;

    // Requests spread over a few scrapes, so that rates see them arrive.
    let client = Client::tls(server.addr, &ca, None).signer(Some(Signer::new(AKID_A1, SECRET_A1)));
    let intruder = client.clone().signer(Some(Signer::new(AKID_A1, SECRET_B)));
    let encrypt_path = format!("/tenant-a/kms/xks/v1/keys/{key}/encrypt");
    let mut sent = 0u32;
    for round in 0..12 {
        let body = bodies::encrypt(format!("round {round}").as_bytes(), Some(b"aad"), false);
        client.post(&encrypt_path, &body).await.assert_ok();
        client
            .post("/tenant-a/kms/xks/v1/health", &bodies::health())
            .await
            .assert_ok();
        sent += 2;
        if round % 4 == 0 {
            intruder
                .post("/tenant-a/kms/xks/v1/health", &bodies::health())
                .await
                .assert_error(401, "AuthenticationFailedException");
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let total = prometheus
        .wait_for("sum(xks_requests_total)", |n| n >= f64::from(sent))
        .await;
    assert_eq!(total, f64::from(sent), "more requests counted than sent");
    prometheus
        .wait_for(
            r#"sum(xks_requests_total{key_store="tenant-a",operation="Encrypt",status="200",error_name=""})"#,
            |n| n >= 12.0,
        )
        .await;
    prometheus
        .wait_for(
            r#"sum(xks_request_duration_seconds_count{operation="Encrypt"})"#,
            |n| n >= 12.0,
        )
        .await;
    prometheus
        .wait_for(
            r#"sum(xks_authentication_failures_total{reason="bad_signature"})"#,
            |n| n >= 3.0,
        )
        .await;
    prometheus
        .wait_for(
            r#"sum(xks_hsm_call_duration_seconds_count{function="C_Encrypt"})"#,
            |n| n >= 12.0,
        )
        .await;
    // The histogram resolves the latency: a quantile over the last minute is a real number
    // inside the bucket range, not NaN or +Inf.
    let p99 = prometheus
        .wait_for(
            "histogram_quantile(0.99, sum by (le) \
             (rate(xks_request_duration_seconds_bucket{operation=\"Encrypt\"}[1m])))",
            f64::is_finite,
        )
        .await;
    assert!(p99 > 0.0 && p99 <= 2.5, "p99 = {p99}");
    prometheus
        .wait_for(r#"xks_hsm_health_state"#, |state| state == 2.0)
        .await;
    let expiry = prometheus
        .wait_for("xks_tls_certificate_expiry_seconds", |s| s > 0.0)
        .await;
    assert!(expiry > 86_400.0, "certificate expiry in {expiry} s");

    // What an operator gets with curl is what promtool accepts, without any lint finding.
    let exposition = Client::plaintext(server.admin_addr)
        .signer(None)
        .send("GET", "/metrics", &[], b"")
        .await;
    assert_eq!(exposition.status, 200);
    let text = exposition.text();
    assert!(text.contains("xks_requests_total{"), "{text}");
    let (clean, findings) = promtool_check(&text);
    assert!(
        clean && findings.trim().is_empty(),
        "promtool: {findings}\n{text}"
    );
}
