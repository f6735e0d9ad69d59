//! `[reload] watch_config`: the running binary reloads by itself when its configuration file
//! changes (an edit in place, a Kubernetes ConfigMap symlink swap), loads a broken file once
//! and keeps serving the old configuration, and does nothing of the kind when the watch is off
//! (ROT-2).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::binary::Server;
use support::{AKID_A1, AKID_A2, Ca, Client, SECRET_A1, SECRET_A2, Signer, bodies, softhsm};

const HEALTH: &str = "/tenant-a/kms/xks/v1/health";
/// The watch interval of these tests.
const INTERVAL: Duration = Duration::from_millis(200);
const WATCH_ON: &str = "[reload]\nwatch_config = true\nwatch_interval_ms = 200\n";
/// How long a change may take to apply: the settle check plus the reload, with room for a
/// loaded machine.
const DEADLINE: Duration = Duration::from_secs(5);

/// TLS files and the PIN file in `dir`, for configs written anywhere.
fn prepare(dir: &Path) -> Ca {
    let ca = Ca::new("config watch CA");
    ca.server().write(dir, &ca, "server");
    std::fs::write(dir.join("pin"), softhsm::USER_PIN).unwrap();
    ca
}

/// A config with TLS and the PIN from `dir`, the given credentials and `[reload]` section.
fn config(dir: &Path, credentials: &[(&str, &str)], reload: &str) -> String {
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificate_chain = {:?}\n\
         private_key = {:?}\n[hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\nuser_pin_file = {:?}\n\
         [logging]\nlevel = \"info\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{reload}\
         [[key_stores]]\npath_prefix = \"/tenant-a\"\n",
        dir.join("server-chain.pem"),
        dir.join("server-key.pem"),
        softhsm::MODULE,
        softhsm::TOKEN_LABEL,
        dir.join("pin"),
    );
    for (id, secret) in credentials {
        toml.push_str(&format!(
            "[[key_stores.credentials]]\naccess_key_id = \"{id}\"\nsecret = \"{secret}\"\n"
        ));
    }
    toml
}

fn client(server: &Server, ca: &Ca, akid: &str, secret: &str) -> Client {
    Client::tls(server.addr, ca, None).signer(Some(Signer::new(akid, secret)))
}

/// Polls until `client` is served, within [`DEADLINE`]; returns how long that took.
async fn wait_until_served(client: &Client, since: Instant) -> Duration {
    loop {
        if client.post(HEALTH, &bodies::health()).await.status == 200 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < DEADLINE,
            "the change did not apply within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `xks_config_reloads_total` as (success, failure).
async fn reload_counts(server: &Server) -> (u64, u64) {
    let metrics = Client::plaintext(server.admin_addr)
        .signer(None)
        .send("GET", "/metrics", &[], b"")
        .await
        .text();
    let count = |result: &str| {
        let prefix = format!("xks_config_reloads_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |n| n.parse().unwrap())
    };
    (count("success"), count("failure"))
}

/// Log lines so far that contain `needle`.
fn count_log(server: &Server, needle: &str) -> usize {
    server
        .drain_log()
        .iter()
        .filter(|line| line.contains(needle))
        .count()
}

#[tokio::test]
async fn an_edit_in_place_applies_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = prepare(dir.path());
    let path = dir.path().join("xks-proxy.toml");
    std::fs::write(&path, config(dir.path(), &[(AKID_A1, SECRET_A1)], WATCH_ON)).unwrap();
    let server = Server::start(&path);
    server.wait_for_log("watching the configuration file for changes");
    let new = client(&server, &ca, AKID_A2, SECRET_A2);
    new.post(HEALTH, &bodies::health())
        .await
        .assert_error(401, "AuthenticationFailedException");

    let credentials = [(AKID_A1, SECRET_A1), (AKID_A2, SECRET_A2)];
    let written = Instant::now();
    std::fs::write(&path, config(dir.path(), &credentials, WATCH_ON)).unwrap();
    let took = wait_until_served(&new, written).await;
    eprintln!("edit in place applied after {took:?} (interval {INTERVAL:?})");

    let line = server.wait_for_log("configuration file changed; reloading");
    assert!(line.contains(r#""reason":"content changed""#), "{line}");
    server.wait_for_log("configuration reloaded");
    client(&server, &ca, AKID_A1, SECRET_A1)
        .post(HEALTH, &bodies::health())
        .await
        .assert_ok();
    assert_eq!(reload_counts(&server).await, (1, 0));
}

#[tokio::test]
async fn a_kubernetes_configmap_symlink_swap_applies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = prepare(dir.path());
    // kubelet's layout: xks-proxy.toml -> ..data/xks-proxy.toml, ..data -> ..<timestamp>.
    let version = |name: &str, credentials: &[(&str, &str)]| {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        let toml = config(dir.path(), credentials, WATCH_ON);
        std::fs::write(dir.path().join(name).join("xks-proxy.toml"), toml).unwrap();
    };
    version("..2026_a", &[(AKID_A1, SECRET_A1)]);
    let data = dir.path().join("..data");
    std::os::unix::fs::symlink("..2026_a", &data).unwrap();
    let path = dir.path().join("xks-proxy.toml");
    std::os::unix::fs::symlink("..data/xks-proxy.toml", &path).unwrap();
    let server = Server::start(&path);
    server.wait_for_log("watching the configuration file for changes");
    let new = client(&server, &ca, AKID_A2, SECRET_A2);
    new.post(HEALTH, &bodies::health())
        .await
        .assert_error(401, "AuthenticationFailedException");

    // The update: a new directory, a temporary symlink to it renamed over `..data`, then the
    // old directory removed, as kubelet's AtomicWriter does.
    version("..2026_b", &[(AKID_A2, SECRET_A2)]);
    let swapped = Instant::now();
    std::os::unix::fs::symlink("..2026_b", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), &data).unwrap();
    std::fs::remove_dir_all(dir.path().join("..2026_a")).unwrap();
    let took = wait_until_served(&new, swapped).await;
    eprintln!("ConfigMap swap applied after {took:?} (interval {INTERVAL:?})");

    let line = server.wait_for_log("configuration file changed; reloading");
    assert!(
        line.contains(r#""reason":"symlink target changed""#),
        "{line}"
    );
    assert!(line.contains("..2026_b"), "{line}");
    client(&server, &ca, AKID_A1, SECRET_A1)
        .post(HEALTH, &bodies::health())
        .await
        .assert_error(401, "AuthenticationFailedException");
}

#[tokio::test]
async fn a_broken_file_is_loaded_once_and_the_next_good_edit_applies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = prepare(dir.path());
    let path = dir.path().join("xks-proxy.toml");
    std::fs::write(&path, config(dir.path(), &[(AKID_A1, SECRET_A1)], WATCH_ON)).unwrap();
    let server = Server::start(&path);
    server.wait_for_log("watching the configuration file for changes");
    let old = client(&server, &ca, AKID_A1, SECRET_A1);

    // Written atomically, so the only version the watch can see is the broken one.
    let broken = config(dir.path(), &[(AKID_A1, SECRET_A1)], WATCH_ON).replace(
        "listen = \"127.0.0.1:0\"\n[server.tls]",
        "listen = 1\n[server.tls]",
    );
    replace(&path, &broken);
    server.wait_for_log("configuration reload rejected");
    old.post(HEALTH, &bodies::health()).await.assert_ok();
    // A negative needs a wait: several intervals pass without another attempt.
    tokio::time::sleep(INTERVAL * 6).await;
    assert_eq!(count_log(&server, "configuration file changed"), 0);
    assert_eq!(reload_counts(&server).await, (0, 1));
    old.post(HEALTH, &bodies::health()).await.assert_ok();

    let good = config(dir.path(), &[(AKID_A2, SECRET_A2)], WATCH_ON);
    let written = Instant::now();
    replace(&path, &good);
    let took = wait_until_served(&client(&server, &ca, AKID_A2, SECRET_A2), written).await;
    eprintln!("good edit after a broken one applied after {took:?}");
    assert_eq!(reload_counts(&server).await, (1, 1));
}

#[tokio::test]
async fn without_watch_config_an_edit_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let ca = prepare(dir.path());
    let path = dir.path().join("xks-proxy.toml");
    // The interval alone does not turn the watch on.
    let reload = "[reload]\nwatch_interval_ms = 200\n";
    std::fs::write(&path, config(dir.path(), &[(AKID_A1, SECRET_A1)], reload)).unwrap();
    let server = Server::start(&path);
    let new = client(&server, &ca, AKID_A2, SECRET_A2);

    let credentials = [(AKID_A1, SECRET_A1), (AKID_A2, SECRET_A2)];
    std::fs::write(&path, config(dir.path(), &credentials, reload)).unwrap();
    tokio::time::sleep(INTERVAL * 6).await;
    new.post(HEALTH, &bodies::health())
        .await
        .assert_error(401, "AuthenticationFailedException");
    let log = server.drain_log().join("\n");
    assert!(!log.contains("watching the configuration file"), "{log}");
    assert!(!log.contains("configuration file changed"), "{log}");
    assert_eq!(reload_counts(&server).await, (0, 0));

    // The edit was valid: SIGHUP applies it.
    server.hangup();
    server.wait_for_log("configuration reloaded");
    new.post(HEALTH, &bodies::health()).await.assert_ok();
}

/// Writes a temporary file and renames it over `path`, as an operator should.
fn replace(path: &Path, text: &str) {
    let tmp: PathBuf = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
