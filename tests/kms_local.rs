//! The AWS SDK for Python (boto3) against the local KMS front (`softhsm/kms-local`), the real
//! `xks-proxy serve` binary and a real SoftHSM2 token: store lifecycle, CreateKey, every
//! cryptographic operation with and without encryption context, ReEncrypt between an XKS key
//! and an AWS_KMS key, a wrong credential, an unreachable proxy, a disabled key, credential
//! rotation, and the request id joining the SDK's answer to the proxy's audit line. The proxy
//! requires mTLS, so every call also proves the front presents KMS's client certificate. The suite
//! itself is `tests/sdk/boto3_suite.py`; this test sets the stage and checks the joins.
//!
//! The front is built by the test command (`cargo build -p xks-kms-local` in `tests/run.sh`)
//! and found next to the proxy binary; a test never runs cargo itself. Python is `$XKS_PYTHON`
//! (the venv `tests/run.sh` makes when boto3 is missing) or `python3`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use support::binary::{BIN, Server, run};
use support::{AKID_A1, AKID_A2, AKID_B, Ca, SECRET_A1, SECRET_A2, SECRET_B, softhsm};

/// The inbound SigV4 credential the front requires (boto3 signs with it).
const KMS_AKID: &str = "AKIAKMSLOCALTESTUSER";
const KMS_SECRET: &str = "kms-local-test-secret-0123456789abcdefghij";

/// The subject KMS's client certificate carries in us-east-1 (the proxy pins it, MT-4).
const KMS_CN: &str = "cks.kms.us-east-1.amazonaws.com";

/// The front's binary, next to the proxy's.
fn front_binary() -> PathBuf {
    let path = Path::new(BIN).parent().unwrap().join("xks-kms-local");
    assert!(
        path.exists(),
        "{} missing: run `cargo build -p xks-kms-local` first (tests/run.sh does)",
        path.display()
    );
    path
}

/// A running front, killed on drop.
struct Front {
    child: Child,
    addr: SocketAddr,
}

impl Front {
    /// Trusts `dir/ca.pem` and presents `dir/kms-client-{chain,key}.pem` to the proxy.
    fn start(dir: &Path, state: &Path) -> Self {
        let mut child = Command::new(front_binary())
            .args(["--listen", "127.0.0.1:0", "--ca-bundle"])
            .arg(dir.join("ca.pem"))
            .arg("--client-cert")
            .arg(dir.join("kms-client-chain.pem"))
            .arg("--client-key")
            .arg(dir.join("kms-client-key.pem"))
            .arg("--state")
            .arg(state)
            .args(["--credentials", &format!("{KMS_AKID}:{KMS_SECRET}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("xks-kms-local listening on http://")
            .unwrap_or_else(|| panic!("unexpected startup line {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy's config: mTLS (a client certificate of `ca` with KMS's us-east-1 name), store
/// `/tenant-a` with two credentials (or only the first, once "rotated"), store `/tenant-b`,
/// JSON audit lines on stdout.
fn proxy_config(dir: &Path, ca: &Ca, second_credential: bool) -> String {
    let (chain, key) = ca.server().write(dir, ca, "server");
    let ca_file = dir.join("ca.pem");
    let second = if second_credential {
        format!(
            "[[key_stores.credentials]]\naccess_key_id = \"{AKID_A2}\"\nsecret = \"{SECRET_A2}\"\n"
        )
    } else {
        String::new()
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncertificate_chain = {chain:?}\nprivate_key = {key:?}\n\
         [server.tls.client_auth]\nca_bundle = {ca_file:?}\nallowed_subject_names = [\"{KMS_CN}\"]\n\
         [hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\nuser_pin = \"{}\"\n\
         [logging]\nlevel = \"info\"\nformat = \"json\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[key_stores]]\nname = \"tenant-a\"\npath_prefix = \"/tenant-a\"\n\
         [[key_stores.credentials]]\naccess_key_id = \"{AKID_A1}\"\nsecret = \"{SECRET_A1}\"\n{second}\
         [[key_stores]]\nname = \"tenant-b\"\npath_prefix = \"/tenant-b\"\n\
         [[key_stores.credentials]]\naccess_key_id = \"{AKID_B}\"\nsecret = \"{SECRET_B}\"\n",
        softhsm::MODULE,
        softhsm::TOKEN_LABEL,
        softhsm::USER_PIN,
    )
}

fn create_key(config: &Path, label: &str, usage: &str) {
    let config = config.to_str().unwrap();
    let out = softhsm::serialised_write(|| {
        run(&[
            "keys", "create", "--config", config, "--label", label, "--usage", usage,
        ])
    });
    assert!(out.status.success(), "{out:?}");
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn python() -> String {
    std::env::var("XKS_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs one phase of the boto3 suite and returns its stdout.
fn suite(phase: &str, env: &[(&str, String)]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/boto3_suite.py");
    let started = Instant::now();
    let out = Command::new(python())
        .arg(&script)
        .arg(phase)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "boto3 suite phase {phase} failed");
    println!("MEASURE boto3 phase {phase}: {:?}", started.elapsed());
    stdout
}

#[test]
fn boto3_suite_against_front_proxy_and_softhsm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("kms-local test CA");
    ca.write(dir.path(), "ca");
    ca.client(KMS_CN, &[]).write(dir.path(), &ca, "kms-client");
    let config = dir.path().join("xks-proxy.toml");
    let rotated = dir.path().join("xks-proxy.rotated.toml");
    std::fs::write(&config, proxy_config(dir.path(), &ca, true)).unwrap();
    std::fs::write(&rotated, proxy_config(dir.path(), &ca, false)).unwrap();

    let key = softhsm::unique_label("kms-local");
    let encrypt_only = softhsm::unique_label("kms-local-encrypt-only");
    create_key(&config, &key, "encrypt,decrypt");
    create_key(&config, &encrypt_only, "encrypt");

    let proxy = Server::start(&config);
    let state = dir.path().join("kms-state.json");
    let front = Front::start(dir.path(), &state);
    let env = vec![
        ("KMS_ENDPOINT", format!("http://{}", front.addr)),
        ("KMS_AKID", KMS_AKID.into()),
        ("KMS_SECRET", KMS_SECRET.into()),
        (
            "XKS_ENDPOINT",
            format!("https://localhost:{}", proxy.addr.port()),
        ),
        ("XKS_PATH", "/tenant-a/kms/xks/v1".into()),
        ("XKS_PATH_B", "/tenant-b/kms/xks/v1".into()),
        ("XKS_AKID", AKID_A1.into()),
        ("XKS_SECRET", SECRET_A1.into()),
        ("XKS_AKID_2", AKID_A2.into()),
        ("XKS_SECRET_2", SECRET_A2.into()),
        ("XKS_AKID_B", AKID_B.into()),
        ("XKS_SECRET_B", SECRET_B.into()),
        ("XKS_KEY", key.clone()),
        ("XKS_KEY_ENCRYPT_ONLY", encrypt_only),
        (
            "UNREACHABLE_ENDPOINT",
            format!("https://localhost:{}", closed_port()),
        ),
        ("PROXY_PID", proxy.child.id().to_string()),
        ("PROXY_CONFIG", config.display().to_string()),
        ("PROXY_CONFIG_ROTATED", rotated.display().to_string()),
        (
            "SUITE_OUT",
            dir.path().join("suite.json").display().to_string(),
        ),
    ];
    let stdout = suite("main", &env);

    // The SDK's x-amzn-RequestId is the kmsRequestId of the proxy's audit line.
    let request_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REQUEST_ID "))
        .expect("the suite printed a request id")
        .to_owned();
    let line = proxy.wait_for_log(&format!("\"kms_request_id\":\"{request_id}\""));
    let audit: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(audit["kms_operation"], "Encrypt", "{line}");
    assert_eq!(audit["operation"], "Encrypt", "{line}");
    assert_eq!(audit["external_key_id"], key.as_str(), "{line}");
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
    drop(front);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the state file holds key material");
    }
    let front = Front::start(dir.path(), &state);
    let mut env = env;
    env[0].1 = format!("http://{}", front.addr);
    suite("after-restart", &env);
}
