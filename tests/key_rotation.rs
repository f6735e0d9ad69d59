//! Key lifecycle with the real binary and real SoftHSM2 tokens: the `[[keys]]` kill switch
//! through SIGHUP and through the configuration file watch, and `keys rotate` while a load runs
//! (a single token and a two-member fleet), with every ciphertext of every version decrypting.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::binary::{Server, run};
use support::bodies::{self, unb64};
use support::{AKID_A1, Ca, Client, Reply, SECRET_A1, Signer, eventually, isolation, softhsm};

const PREFIX: &str = "/tenant-a";
const AAD: &[u8] = b"lifecycle";

/// TLS files and the PIN file in `dir`.
fn prepare(dir: &Path) -> Ca {
    let ca = Ca::new("key lifecycle CA");
    ca.server().write(dir, &ca, "server");
    std::fs::write(dir.join("pin"), softhsm::USER_PIN).unwrap();
    ca
}

/// A config on the test token with `hsm_extra` in `[hsm]`, then `tail` (`[reload]`,
/// `[[keys]]`, ...) after the key store.
fn config(dir: &Path, hsm: &str, tail: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificate_chain = {:?}\n\
         private_key = {:?}\n[hsm]\nmodule = \"{}\"\nuser_pin_file = {:?}\n{hsm}\n\
         [logging]\nlevel = \"info\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[key_stores]]\npath_prefix = \"{PREFIX}\"\n[[key_stores.credentials]]\n\
         access_key_id = \"{AKID_A1}\"\nsecret = \"{SECRET_A1}\"\n{tail}",
        dir.join("server-chain.pem"),
        dir.join("server-key.pem"),
        softhsm::MODULE,
        dir.join("pin"),
    )
}

/// `[hsm]` naming the test token.
fn single_token() -> String {
    format!("token_label = \"{}\"", softhsm::TOKEN_LABEL)
}

/// Writes `text` to `path` atomically (a rename), as editors and kubelet do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Runs `xks-proxy keys <args…> --config <config>` and returns its stdout.
fn keys(config: &Path, args: &[&str]) -> String {
    let config = config.to_str().unwrap();
    let out = softhsm::serialised_write(|| run(&[&["keys"], args, &["--config", config]].concat()));
    assert!(
        out.status.success(),
        "keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn client(server: &Server, ca: &Ca) -> Client {
    Client::tls(server.addr, ca, None).signer(Some(Signer::new(AKID_A1, SECRET_A1)))
}

async fn encrypt(client: &Client, key: &str, plaintext: &[u8]) -> Reply {
    client
        .encrypt(PREFIX, key, plaintext, Some(AAD), false)
        .await
}

async fn decrypt(client: &Client, key: &str, sealed: &Value) -> Reply {
    client
        .decrypt(PREFIX, key, &bodies::decrypt_from(sealed, Some(AAD)))
        .await
}

async fn key_status(client: &Client, key: &str) -> String {
    let path = format!("{PREFIX}/kms/xks/v1/keys/{key}/metadata");
    let reply = client.post(&path, &bodies::metadata()).await;
    reply.assert_ok()["keyStatus"].as_str().unwrap().to_owned()
}

/// The kill switch, as a reload delivers it: the key off, back on, then only its version 1.
async fn exercise_kill_switch(
    server: &Server,
    ca: &Ca,
    path: &Path,
    dir: &Path,
    tail: &str,
    reload: impl Fn(),
) {
    let key = softhsm::unique_label("switch");
    keys(path, &["create", "--label", &key]);
    let client = client(server, ca);
    let sealed = encrypt(&client, &key, b"before").await.assert_ok();

    let off = format!("{tail}[[keys]]\nid = \"{key}\"\nenabled = false\n");
    replace(path, &config(dir, &single_token(), &off));
    reload();
    eventually("the key is switched off", || async {
        encrypt(&client, &key, b"x").await.status == 400
    })
    .await;
    encrypt(&client, &key, b"x")
        .await
        .assert_error(400, "InvalidStateException");
    decrypt(&client, &key, &sealed)
        .await
        .assert_error(400, "InvalidStateException");
    assert_eq!(key_status(&client, &key).await, "DISABLED");
    let line = server.wait_for_log(r#""refused_by":"kill_switch""#);
    assert!(line.contains(&key), "{line}");
    let metrics = Client::plaintext(server.admin_addr)
        .signer(None)
        .send("GET", "/metrics", &[], b"")
        .await
        .text();
    assert!(
        metrics.contains(&format!(
            "xks_kill_switch_refusals_total{{key_store=\"tenant-a\",operation=\"Decrypt\",external_key_id=\"{key}\"}} 1"
        )),
        "{metrics}"
    );

    replace(path, &config(dir, &single_token(), tail));
    reload();
    eventually("the key is switched on again", || async {
        encrypt(&client, &key, b"x").await.status == 200
    })
    .await;
    let reply = decrypt(&client, &key, &sealed).await;
    assert_eq!(unb64(&reply.assert_ok()["plaintext"]), b"before");
    assert_eq!(key_status(&client, &key).await, "ENABLED");

    // Only version 1, the key's only version: nothing can encrypt or decrypt.
    let v1_off = format!("{tail}[[keys]]\nid = \"{key}\"\ndisabled_versions = [1]\n");
    replace(path, &config(dir, &single_token(), &v1_off));
    reload();
    eventually("version 1 is switched off", || async {
        key_status(&client, &key).await == "DISABLED"
    })
    .await;
    let reply = decrypt(&client, &key, &sealed).await;
    reply.assert_error(400, "InvalidStateException");
    assert!(reply.text().contains("version 1"), "{}", reply.text());
}

#[tokio::test]
async fn the_kill_switch_applies_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let ca = prepare(dir.path());
    let path = dir.path().join("xks-proxy.toml");
    std::fs::write(&path, config(dir.path(), &single_token(), "")).unwrap();
    let server = Server::start(&path);
    exercise_kill_switch(&server, &ca, &path, dir.path(), "", || server.hangup()).await;
}

#[tokio::test]
async fn the_kill_switch_applies_through_the_file_watch() {
    let dir = tempfile::tempdir().unwrap();
    let ca = prepare(dir.path());
    let path = dir.path().join("xks-proxy.toml");
    let watch = "[reload]\nwatch_config = true\nwatch_interval_ms = 200\n";
    std::fs::write(&path, config(dir.path(), &single_token(), watch)).unwrap();
    let server = Server::start(&path);
    server.wait_for_log("watching the configuration file for changes");
    exercise_kill_switch(&server, &ca, &path, dir.path(), watch, || {}).await;
}

/// Where the rotation tests' tokens live: the process's test token, or two tokens of a fleet
/// of their own.
struct Tokens {
    /// `[hsm]` lines naming the token(s).
    hsm: String,
    /// `SOFTHSM2_CONF` for the server and the CLI.
    conf: PathBuf,
}

impl Tokens {
    fn single() -> Self {
        Self {
            hsm: single_token(),
            conf: softhsm::token().conf.clone(),
        }
    }

    fn fleet(dir: &Path) -> Self {
        let conf = isolation::token_dir(dir, &["rot-a", "rot-b"], softhsm::USER_PIN);
        Self {
            hsm: "[[hsm.members]]\nid = \"a\"\ntoken_label = \"rot-a\"\n\
                  [[hsm.members]]\nid = \"b\"\ntoken_label = \"rot-b\"\n"
                .to_owned(),
            conf,
        }
    }

    /// `xks-proxy keys <args…> --config <config>` on these tokens; returns stdout.
    fn keys(&self, config: &Path, args: &[&str]) -> String {
        let out = softhsm::serialised_write(|| {
            std::process::Command::new(support::binary::BIN)
                .arg("keys")
                .args(args)
                .arg("--config")
                .arg(config)
                .env("SOFTHSM2_CONF", &self.conf)
                .output()
                .unwrap()
        });
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "keys {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

/// What one load worker saw: every ciphertext it made (with its plaintext) and every failure.
#[derive(Default)]
struct Seen {
    sealed: Vec<(Vec<u8>, Value)>,
    failures: Vec<String>,
}

/// Encrypt-then-decrypt round trips on `key` until `stop`, at most `limit` each.
async fn load(client: Client, key: String, worker: usize, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    for i in 0..LOAD_LIMIT {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let plaintext = format!("worker {worker} request {i}").into_bytes();
        let reply = encrypt(&client, &key, &plaintext).await;
        if reply.status != 200 {
            seen.failures
                .push(format!("encrypt {}: {}", reply.status, reply.text()));
            continue;
        }
        let sealed = reply.json();
        let opened = decrypt(&client, &key, &sealed).await;
        if opened.status != 200 || unb64(&opened.json()["plaintext"]) != plaintext {
            seen.failures
                .push(format!("decrypt {}: {}", opened.status, opened.text()));
        }
        seen.sealed.push((plaintext, sealed));
    }
    seen
}

/// Round trips per load worker, at most (the load also stops once the rotation is seen).
const LOAD_LIMIT: usize = 2_000;
const WORKERS: usize = 4;

/// `keys rotate` and a reload while four workers encrypt and decrypt: no request fails, new
/// ciphertexts switch to version 2, and every ciphertext of both versions still decrypts.
async fn rotate_under_load(tokens: Tokens) {
    let dir = tempfile::tempdir().unwrap();
    let ca = prepare(dir.path());
    let path = dir.path().join("xks-proxy.toml");
    std::fs::write(&path, config(dir.path(), &tokens.hsm, "")).unwrap();
    let key = softhsm::unique_label("rotated");
    tokens.keys(&path, &["create", "--label", &key]);
    let server = Server::start_with_env(&path, &[("SOFTHSM2_CONF", &tokens.conf)]);
    let client = client(&server, &ca);

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(load(client.clone(), key.clone(), w, Arc::clone(&stop))))
        .collect();
    // Let the load run on version 1 first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rotated = tokens.keys(&path, &["rotate", "--label", &key]);
    assert!(rotated.contains(&format!("{key}#v2")), "{rotated}");
    server.hangup();
    eventually("new ciphertexts use version 2", || async {
        let reply = encrypt(&client, &key, b"probe").await;
        reply.status == 200 && unb64(&reply.json()["ciphertextMetadata"]) == [1, 0, 0, 0, 2]
    })
    .await;
    // More load on version 2, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    let mut sealed = Vec::new();
    for worker in workers {
        let seen = worker.await.unwrap();
        assert!(seen.failures.is_empty(), "{:?}", seen.failures);
        sealed.extend(seen.sealed);
    }
    let versions: std::collections::BTreeSet<Vec<u8>> = sealed
        .iter()
        .map(|(_, s)| unb64(&s["ciphertextMetadata"]))
        .collect();
    assert_eq!(
        versions,
        [vec![1, 0, 0, 0, 1], vec![1, 0, 0, 0, 2]].into(),
        "the load saw both versions"
    );
    // After the rotation, every ciphertext of every version decrypts.
    for (plaintext, s) in &sealed {
        let reply = decrypt(&client, &key, s).await;
        assert_eq!(unb64(&reply.assert_ok()["plaintext"]), *plaintext);
    }
    eprintln!(
        "{} round trips across the rotation, none failed",
        sealed.len()
    );
}

#[tokio::test]
async fn rotation_under_load_loses_no_request_on_one_token() {
    rotate_under_load(Tokens::single()).await;
}

#[tokio::test]
async fn rotation_under_load_loses_no_request_in_a_fleet() {
    let dir = tempfile::tempdir().unwrap();
    rotate_under_load(Tokens::fleet(dir.path())).await;
}
