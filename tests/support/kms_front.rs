//! The stage of the SDK acceptance suites: a real SoftHSM2 token, the real `xks-proxy serve`
//! binary requiring mTLS with KMS's client subject, and the local KMS front
//! (`softhsm/kms-local`, binary `xks-kms-local`) presenting that client certificate; plus the
//! SDK toolchains the suites run in (Python with boto3 and the AWS Encryption SDK, Node with
//! `@aws-sdk/client-kms`).
//!
//! Tools are found through `XKS_PYTHON` / `XKS_NODE_MODULES` (set by `tests/run.sh`) or the
//! fixed paths `tests/run.sh` installs into (`<target>/sdk-venv`, `<target>/sdk-js`). A missing
//! tool fails the test with a message naming `./tests/run.sh`: a suite never passes silently.
//! The front is built by the test command (`cargo build -p xks-kms-local` in `tests/run.sh`)
//! and found next to the proxy binary; a test never runs cargo itself.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::binary::{BIN, Server, run};
use super::{AKID_A1, AKID_A2, AKID_B, Ca, SECRET_A1, SECRET_A2, SECRET_B, softhsm};

/// The inbound SigV4 credential the front requires (the SDKs sign with it).
pub const KMS_AKID: &str = "AKIAKMSLOCALTESTUSER";
pub const KMS_SECRET: &str = "kms-local-test-secret-0123456789abcdefghij";

/// The subject KMS's client certificate carries in us-east-1 (the proxy pins it, MT-4).
pub const KMS_CN: &str = "cks.kms.us-east-1.amazonaws.com";

/// The Cargo target directory (the proxy binary is `<target>/<profile>/xks-proxy`).
pub fn target_dir() -> PathBuf {
    Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned()
}

/// The front's binary, next to the proxy's.
pub fn front_binary() -> PathBuf {
    let path = Path::new(BIN).parent().unwrap().join("xks-kms-local");
    assert!(
        path.exists(),
        "{} missing: run `./tests/run.sh` (it builds it with `cargo build -p xks-kms-local`)",
        path.display()
    );
    path
}

/// A Python that imports every module of `modules`: `$XKS_PYTHON`, else the venv
/// `tests/run.sh` makes (`<target>/sdk-venv`), else `python3`. Panics, naming
/// `./tests/run.sh`, when none does.
pub fn python(modules: &[&str]) -> String {
    let venv = target_dir().join("sdk-venv");
    let candidates = std::env::var("XKS_PYTHON").into_iter().chain([
        venv.join("bin/python").display().to_string(),
        "python3".into(),
    ]);
    let probe = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    for candidate in candidates {
        let ok = Command::new(&candidate)
            .args(["-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return candidate;
        }
    }
    panic!(
        "no Python with {modules:?}: run `./tests/run.sh` (it installs them into the venv {}) \
         or set XKS_PYTHON",
        venv.display()
    );
}

/// The `node_modules` folder holding `@aws-sdk/client-kms`: `$XKS_NODE_MODULES`, else
/// `<target>/sdk-js/node_modules`. Panics, naming `./tests/run.sh`, when it is missing.
pub fn node_modules() -> PathBuf {
    let path = std::env::var_os("XKS_NODE_MODULES")
        .map_or_else(|| target_dir().join("sdk-js/node_modules"), PathBuf::from);
    assert!(
        path.join("@aws-sdk/client-kms/package.json").exists(),
        "@aws-sdk/client-kms missing from {}: run `./tests/run.sh` (it runs `npm install` there) \
         or set XKS_NODE_MODULES",
        path.display()
    );
    path
}

/// A running front, killed on drop.
pub struct Front {
    child: Child,
    pub addr: SocketAddr,
}

impl Front {
    /// Trusts `dir/ca.pem` and presents `dir/kms-client-{chain,key}.pem` to the proxy.
    pub fn start(dir: &Path, state: &Path) -> Self {
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

impl Front {
    /// Kills the front and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The proxy's config: mTLS (a client certificate of `ca` with KMS's us-east-1 name), store
/// `/tenant-a` with two credentials (or only the first, once "rotated"), store `/tenant-b`,
/// JSON audit lines on stdout.
pub fn proxy_config(dir: &Path, ca: &Ca, second_credential: bool) -> String {
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

/// Creates an AES-256 key `label` with `usage` (`encrypt,decrypt`, `encrypt`) on the token.
pub fn create_key(config: &Path, label: &str, usage: &str) {
    let config = config.to_str().unwrap();
    let out = softhsm::serialised_write(|| {
        run(&[
            "keys", "create", "--config", config, "--label", label, "--usage", usage,
        ])
    });
    assert!(out.status.success(), "{out:?}");
}

/// A port nothing listens on.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Token, proxy and front, with the environment every suite reads.
pub struct Stage {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
    /// The decrypt-capable key (`XKS_KEY`).
    pub key: String,
    pub proxy: Server,
    pub front: Front,
    /// KMS_ENDPOINT first (a restarted front replaces it), then the rest.
    pub env: Vec<(&'static str, String)>,
}

impl Stage {
    /// Makes the PKI, the proxy's config (and its "rotated" variant), two keys (`XKS_KEY`,
    /// `XKS_KEY_ENCRYPT_ONLY`) and starts proxy and front.
    pub fn start(stem: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("kms-local test CA");
        ca.write(dir.path(), "ca");
        ca.client(KMS_CN, &[]).write(dir.path(), &ca, "kms-client");
        let config = dir.path().join("xks-proxy.toml");
        let rotated = dir.path().join("xks-proxy.rotated.toml");
        std::fs::write(&config, proxy_config(dir.path(), &ca, true)).unwrap();
        std::fs::write(&rotated, proxy_config(dir.path(), &ca, false)).unwrap();

        let key = softhsm::unique_label(stem);
        let encrypt_only = softhsm::unique_label(&format!("{stem}-encrypt-only"));
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
        Self {
            dir,
            config,
            state,
            key,
            proxy,
            front,
            env,
        }
    }

    /// Stops the front and starts it again on the same state file.
    pub fn restart_front(&mut self) {
        // The old front must be gone before the new one loads the state.
        self.front.stop();
        self.front = Front::start(self.dir.path(), &self.state);
        self.env[0].1 = format!("http://{}", self.front.addr);
    }
}

/// Runs `program script args…` with the stage's environment (plus `extra`), prints its output,
/// asserts it succeeded and returns its stdout. `what` names the suite in messages.
pub fn run_suite(
    what: &str,
    program: &str,
    script: &str,
    args: &[&str],
    env: &[(&str, String)],
    extra: &[(&str, String)],
) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let started = Instant::now();
    let out = Command::new(program)
        .arg(&script)
        .args(args)
        .envs(env.iter().chain(extra).map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({})", out.status);
    println!("MEASURE {what}: {:?}", started.elapsed());
    stdout
}
