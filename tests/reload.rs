//! Operating the running binary: the admin listener (metrics, probes, reload) and hot
//! configuration reload without dropping connections (ROT-1, ROT-2, ROT-3).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use support::binary::Server;
use support::client::TlsClient;
use support::{AKID_A1, AKID_A2, Ca, Client, SECRET_A1, SECRET_A2, Signer, bodies, softhsm};

const HEALTH: &str = "/tenant-a/kms/xks/v1/health";

/// The bearer token `POST /admin/reload` needs in these tests.
const RELOAD_TOKEN: &str = "reload-token-for-tests-0123456789abcdef";

/// A config with TLS from `dir/server-*.pem`, the given credentials and log level, and a
/// reload token.
fn write_config(dir: &Path, credentials: &[(&str, &str)], level: &str) -> PathBuf {
    let token = dir.join("reload-token");
    std::fs::write(&token, format!("{RELOAD_TOKEN}\n")).unwrap();
    write_config_with(
        dir,
        credentials,
        level,
        &Extra {
            admin: format!("reload_token_file = {token:?}\n"),
            ..Extra::default()
        },
    )
}

/// TOML added to sections of the test config.
#[derive(Default)]
struct Extra {
    server: String,
    admin: String,
    store: String,
}

fn write_config_with(
    dir: &Path,
    credentials: &[(&str, &str)],
    level: &str,
    extra: &Extra,
) -> PathBuf {
    let pin = dir.join("pin");
    std::fs::write(&pin, softhsm::USER_PIN).unwrap();
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}[server.tls]\ncertificate_chain = {:?}\nprivate_key = {:?}\n\
         [hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\nuser_pin_file = {pin:?}\n\
         [logging]\nlevel = \"{level}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\
         [[key_stores]]\npath_prefix = \"/tenant-a\"\n{}",
        extra.server,
        dir.join("server-chain.pem"),
        dir.join("server-key.pem"),
        softhsm::MODULE,
        softhsm::TOKEN_LABEL,
        extra.admin,
        extra.store,
    );
    for (id, secret) in credentials {
        toml.push_str(&format!(
            "[[key_stores.credentials]]\naccess_key_id = \"{id}\"\nsecret = \"{secret}\"\n"
        ));
    }
    let path = dir.join("xks-proxy.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn client(server: &Server, ca: &Ca, akid: &str, secret: &str) -> Client {
    Client::tls(server.addr, ca, None).signer(Some(Signer::new(akid, secret)))
}

/// An admin request; reloads carry the bearer token.
async fn admin(server: &Server, method: &str, path: &str) -> support::Reply {
    let bearer = format!("Bearer {RELOAD_TOKEN}");
    let headers: &[(&str, &str)] = if path == "/admin/reload" {
        &[("authorization", &bearer)]
    } else {
        &[]
    };
    Client::plaintext(server.admin_addr)
        .signer(None)
        .send(method, path, headers, b"")
        .await
}

#[tokio::test]
async fn rot_1_rot_2_rot_3_credentials_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("reload CA");
    ca.server().write(dir.path(), &ca, "server");
    let config = write_config(dir.path(), &[(AKID_A1, SECRET_A1)], "info");
    let server = Server::start(&config);
    let old = client(&server, &ca, AKID_A1, SECRET_A1);
    let new = client(&server, &ca, AKID_A2, SECRET_A2);
    old.post(HEALTH, &bodies::health()).await.assert_ok();
    new.post(HEALTH, &bodies::health())
        .await
        .assert_error(401, "AuthenticationFailedException");

    // ROT-3 step 1: add the new credential; both work (SIGHUP).
    write_config(
        dir.path(),
        &[(AKID_A1, SECRET_A1), (AKID_A2, SECRET_A2)],
        "info",
    );
    server.hangup();
    server.wait_for_log("configuration reloaded");
    old.post(HEALTH, &bodies::health()).await.assert_ok();
    new.post(HEALTH, &bodies::health()).await.assert_ok();

    // Step 4: remove the old one (admin endpoint this time).
    write_config(dir.path(), &[(AKID_A2, SECRET_A2)], "info");
    let reply = admin(&server, "POST", "/admin/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["report"]["credentials"], 1);
    old.post(HEALTH, &bodies::health())
        .await
        .assert_error(401, "AuthenticationFailedException");
    new.post(HEALTH, &bodies::health()).await.assert_ok();

    // An invalid file is rejected whole; the running configuration keeps serving.
    std::fs::write(&config, "[server]\nlisten = 1\n").unwrap();
    let reply = admin(&server, "POST", "/admin/reload").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(reply.json()["result"], "rejected");
    new.post(HEALTH, &bodies::health()).await.assert_ok();

    let metrics = admin(&server, "GET", "/metrics").await.text();
    assert!(
        metrics.contains(r#"xks_config_reloads_total{result="success"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"xks_config_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"xks_key_store_credentials{key_store="tenant-a"} 1"#),
        "{metrics}"
    );
}

/// The server's leaf certificate, seen by a fresh TLS connection.
async fn served_leaf(server: &Server, ca: &Ca) -> CertificateDer<'static> {
    let client = TlsClient {
        alpn: vec![b"http/1.1"],
        ..TlsClient::default()
    };
    let tls = support::client::connect(server.addr, client.config(ca, None))
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

#[tokio::test]
async fn certificate_swap_keeps_established_connections_and_log_level_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("swap CA");
    let first = ca.server();
    first.write(dir.path(), &ca, "server");
    let config = write_config(dir.path(), &[(AKID_A1, SECRET_A1)], "info");
    let server = Server::start(&config);
    let client = client(&server, &ca, AKID_A1, SECRET_A1);
    let mut kept = client.connect().await.unwrap();
    kept.send(
        &client,
        "POST",
        HEALTH,
        &[("content-type", "application/json")],
        &bodies::health(),
    )
    .await
    .assert_ok();
    assert_eq!(served_leaf(&server, &ca).await, first.cert_der);

    let second = ca.server();
    second.write(dir.path(), &ca, "server");
    write_config(dir.path(), &[(AKID_A1, SECRET_A1)], "warn");
    server.hangup();
    let line = server.wait_for_log("configuration reloaded");
    assert!(line.contains("\"tls_reloaded\":true"), "{line}");

    // The keep-alive connection accepted before the swap still works…
    for _ in 0..3 {
        kept.send(
            &client,
            "POST",
            HEALTH,
            &[("content-type", "application/json")],
            &bodies::health(),
        )
        .await
        .assert_ok();
    }
    // …and new connections get the new certificate.
    assert_eq!(served_leaf(&server, &ca).await, second.cert_der);
    let metrics = admin(&server, "GET", "/metrics").await.text();
    assert!(
        metrics.contains("xks_tls_certificate_expiry_seconds "),
        "{metrics}"
    );

    // The level is now warn: requests no longer log their info line.
    let _ = server.drain_log();
    client.post(HEALTH, &bodies::health()).await.assert_ok();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = server.drain_log().join("\n");
    assert!(
        !log.contains("6f0a8a5e-health"),
        "info lines still logged after reload: {log}"
    );
}

#[tokio::test]
async fn admin_listener_serves_probes_and_metrics_but_not_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("admin CA");
    ca.server().write(dir.path(), &ca, "server");
    let server = Server::start(&write_config(dir.path(), &[(AKID_A1, SECRET_A1)], "info"));
    client(&server, &ca, AKID_A1, SECRET_A1)
        .post(HEALTH, &bodies::health())
        .await
        .assert_ok();

    let live = admin(&server, "GET", "/healthz").await;
    assert_eq!(
        (live.status, live.json()["status"].as_str()),
        (200, Some("alive"))
    );
    let ready = admin(&server, "GET", "/readyz").await;
    assert_eq!(
        (ready.status, ready.json()["status"].as_str()),
        (200, Some("ready"))
    );
    // OpenMetrics when asked for (Prometheus does), else the 0.0.4 text format.
    let openmetrics = Client::plaintext(server.admin_addr)
        .signer(None)
        .send(
            "GET",
            "/metrics",
            &[("accept", "application/openmetrics-text;version=1.0.0")],
            b"",
        )
        .await;
    assert_eq!(openmetrics.status, 200);
    assert!(
        openmetrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(openmetrics.text().ends_with("# EOF\n"));
    let metrics = admin(&server, "GET", "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(
        metrics.text().contains("xks_build_info{version="),
        "{}",
        metrics.text()
    );
    assert_eq!(admin(&server, "POST", HEALTH).await.status, 404);
    assert_eq!(admin(&server, "GET", "/admin/reload").await.status, 405);

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn admin_listener_refuses_browsers_foreign_hosts_and_reloads_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("admin hardening CA");
    ca.server().write(dir.path(), &ca, "server");
    let server = Server::start(&write_config(dir.path(), &[(AKID_A1, SECRET_A1)], "info"));
    let plain = Client::plaintext(server.admin_addr).signer(None);
    let reload = |headers: &[(&str, &str)]| {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let plain = plain.clone();
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            plain.send("POST", "/admin/reload", &headers, b"").await
        }
    };

    let missing = reload(&[]).await;
    assert_eq!(missing.status, 401, "{}", missing.text());
    assert!(missing.headers.contains_key("www-authenticate"));
    let wrong = reload(&[("authorization", "Bearer not-the-token")]).await;
    assert_eq!(wrong.status, 401);
    // A cross-origin form post from a page carries Origin: refused even with the token.
    let bearer = format!("Bearer {RELOAD_TOKEN}");
    let from_browser = reload(&[
        ("authorization", &bearer),
        ("origin", "http://evil.example"),
        ("content-type", "text/plain"),
    ])
    .await;
    assert_eq!(from_browser.status, 403, "{}", from_browser.text());
    let ok = reload(&[("authorization", &bearer)]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());

    // DNS rebinding: a page on evil.example resolved to this address sends its own Host.
    let mut rebound = plain.clone();
    rebound.host = format!("evil.example:{}", server.admin_addr.port());
    for path in ["/metrics", "/healthz", "/readyz"] {
        let reply = rebound.send("GET", path, &[], b"").await;
        assert_eq!(reply.status, 403, "{path}: {}", reply.text());
    }
    let mut by_ip = plain.clone();
    by_ip.host = server.admin_addr.to_string();
    assert_eq!(by_ip.send("GET", "/metrics", &[], b"").await.status, 200);
    assert_eq!(plain.send("GET", "/metrics", &[], b"").await.status, 200);
}

#[tokio::test]
async fn reload_over_http_is_off_without_a_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("no token CA");
    ca.server().write(dir.path(), &ca, "server");
    let config = write_config_with(
        dir.path(),
        &[(AKID_A1, SECRET_A1)],
        "info",
        &Extra::default(),
    );
    let server = Server::start(&config);
    let reply = admin(&server, "POST", "/admin/reload").await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert!(reply.text().contains("SIGHUP"), "{}", reply.text());
    // SIGHUP still reloads.
    server.hangup();
    server.wait_for_log("configuration reloaded");
}

#[tokio::test]
async fn reload_keeps_quota_state_and_restart_required_tracks_what_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("quota CA");
    ca.server().write(dir.path(), &ca, "server");
    let token = dir.path().join("reload-token");
    std::fs::write(&token, RELOAD_TOKEN).unwrap();
    let write = |max_connections: u32| {
        write_config_with(
            dir.path(),
            &[(AKID_A1, SECRET_A1)],
            "info",
            &Extra {
                server: format!("max_connections = {max_connections}\n"),
                admin: format!("reload_token_file = {token:?}\n"),
                store: "[key_stores.rate_limit]\nrequests_per_second = 1\nburst = 3\n".into(),
            },
        )
    };
    let server = Server::start(&write(100));
    let client = client(&server, &ca, AKID_A1, SECRET_A1);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.post(HEALTH, &bodies::health()).await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);

    // A restart-only change is reported…
    write(200);
    let reply = admin(&server, "POST", "/admin/reload").await;
    assert_eq!(
        reply.json()["report"]["restart_required"],
        serde_json::json!(["server.max_connections"]),
        "{}",
        reply.text()
    );
    // …and the bucket was not refilled by the reload: a fresh one would allow three more.
    let mut served = 0;
    for _ in 0..3 {
        if client.post(HEALTH, &bodies::health()).await.status == 200 {
            served += 1;
        }
    }
    assert!(served < 3, "the reload refilled the quota bucket");

    // Reverted: what runs matches the file again, nothing needs a restart.
    write(100);
    let reply = admin(&server, "POST", "/admin/reload").await;
    assert_eq!(
        reply.json()["report"]["restart_required"],
        serde_json::json!([]),
        "{}",
        reply.text()
    );
}

/// Issue 7 item 4: an admin listener that is not on loopback is valid but loud, in
/// `check-config` and in the startup log.
#[test]
fn an_exposed_admin_listener_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("exposed admin CA");
    ca.server().write(dir.path(), &ca, "server");
    let config = write_config(dir.path(), &[(AKID_A1, SECRET_A1)], "info");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"0.0.0.0:0\"",
    );
    std::fs::write(&config, text).unwrap();
    let out = support::binary::run(&["check-config", "--config", config.to_str().unwrap()]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: admin.listen = 0.0.0.0:0 is not a loopback address"),
        "{stderr}"
    );
    let server = Server::start(&config);
    let line = server.wait_for_log("is not a loopback address");
    assert!(line.contains("\"WARN\""), "{line}");
}
