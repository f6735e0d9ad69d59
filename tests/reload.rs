//! Operating the running binary: the admin listener (metrics, probes, reload) and hot
//! configuration reload without dropping connections (ROT-1, ROT-2, ROT-3).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use support::binary::Server;
use support::{AKID_A1, AKID_A2, Ca, Client, SECRET_A1, SECRET_A2, Signer, bodies, softhsm};

const HEALTH: &str = "/tenant-a/kms/xks/v1/health";

/// A config with TLS from `dir/server-*.pem`, the given credentials and log level.
fn write_config(dir: &Path, credentials: &[(&str, &str)], level: &str) -> PathBuf {
    let pin = dir.join("pin");
    std::fs::write(&pin, softhsm::USER_PIN).unwrap();
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificate_chain = {:?}\nprivate_key = {:?}\n\
         [hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\nuser_pin_file = {pin:?}\n\
         [logging]\nlevel = \"{level}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[key_stores]]\npath_prefix = \"/tenant-a\"\n",
        dir.join("server-chain.pem"),
        dir.join("server-key.pem"),
        softhsm::MODULE,
        softhsm::TOKEN_LABEL,
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

async fn admin(server: &Server, method: &str, path: &str) -> support::Reply {
    Client::plaintext(server.admin_addr)
        .signer(None)
        .send(method, path, &[], b"")
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
    let config = support::client::client_config(ca, None, &[b"http/1.1"]);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
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
