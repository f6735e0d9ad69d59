//! A real SoftHSM2 token in a temporary directory, one per test process.
//!
//! PKCS#11 modules are initialised once per process, so the token and the backend are
//! process-wide; tests stay independent by using their own key labels ([`unique_label`]).
//! Under nextest every test is its own process and gets a fresh token.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use xks_proxy::config::{HsmSettings, TokenSelector};
use xks_proxy::hsm::KeyUsage;
use xks_proxy::hsm::pkcs11::Pkcs11Backend;
use xks_proxy::xks::ExternalKeyId;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const TOKEN_LABEL: &str = "xks-test";
pub const USER_PIN: &str = "87654321";
pub const SO_PIN: &str = "12345678";
pub const HEALTH_KEY: &str = "xks-proxy-health-check";

/// The process-wide token.
pub struct Token {
    /// Keeps the directory alive for the whole process.
    _dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub backend: Arc<Pkcs11Backend>,
}

static TOKEN: OnceLock<Token> = OnceLock::new();

/// The token, created on first use.
pub fn token() -> &'static Token {
    TOKEN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let conf = token_dir(dir.path(), &[TOKEN_LABEL], USER_PIN);
        // Set before the first PKCS#11 call in this process; nothing else reads it concurrently
        // because the OnceLock serialises initialisation.
        set_softhsm_conf(&conf);
        let backend = Arc::new(Pkcs11Backend::open(&hsm_settings(4, 64)).unwrap());
        Token {
            _dir: dir,
            conf,
            backend,
        }
    })
}

/// HSM settings pointing at the test token.
pub fn hsm_settings(sessions: usize, queue_depth: usize) -> HsmSettings {
    HsmSettings {
        module: MODULE.into(),
        token: TokenSelector::Label(TOKEN_LABEL.into()),
        user_pin: USER_PIN.to_owned().into(),
        sessions: std::num::NonZeroUsize::new(sessions).unwrap(),
        queue_depth,
        health_key_label: ExternalKeyId::parse(HEALTH_KEY).unwrap(),
        create_health_key: true,
    }
}

/// A label no other test in this process uses.
pub fn unique_label(stem: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{stem}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates an AES-256 key with exactly `usages` and returns its label.
pub fn create_key(stem: &str, usages: &[KeyUsage]) -> String {
    let label = unique_label(stem);
    let backend = &token().backend;
    let _guard = TOKEN_WRITES.lock().unwrap_or_else(|e| e.into_inner());
    backend
        .create_key(&ExternalKeyId::parse(&label).unwrap(), usages)
        .unwrap();
    label
}

/// Runs `write` (e.g. a `keys create` child process) while no other test of this process
/// writes to the token (see [`TOKEN_WRITES`]).
pub fn serialised_write<T>(write: impl FnOnce() -> T) -> T {
    let _guard = TOKEN_WRITES.lock().unwrap_or_else(|e| e.into_inner());
    write()
}

/// Serialises writes to the token. SoftHSM2's file store is not safe against two processes
/// creating objects at the same moment (seen: `C_GenerateKey` → `CKR_GENERAL_ERROR` while
/// pkcs11-tool wrote the same token), so the tests never do that.
static TOKEN_WRITES: Mutex<()> = Mutex::new(());

/// Creates a key with OpenSC's pkcs11-tool, an independent PKCS#11 client, e.g. to make a
/// second object with an existing label (URI-8) or an AES-128 key (K-2). Like every key the
/// proxy serves, it is private, sensitive and never extractable.
pub fn pkcs11_tool_keygen(label: &str, key_type: &str) {
    pkcs11_tool(&[
        "--login",
        "--pin",
        USER_PIN,
        "--keygen",
        "--key-type",
        key_type,
        "--label",
        label,
        "--usage-decrypt",
        "--private",
        "--sensitive",
    ]);
}

/// A private, sensitive AES-256 key that can be extracted (`--extractable`): its value can
/// leave the HSM, so the proxy must refuse it.
pub fn pkcs11_tool_extractable_key(label: &str) {
    pkcs11_tool(&[
        "--login",
        "--pin",
        USER_PIN,
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        label,
        "--usage-decrypt",
        "--private",
        "--sensitive",
        "--extractable",
    ]);
}

/// Plants a public, non-sensitive, extractable AES-256 key with a known value, as anyone with
/// token access but no PIN can (pkcs11-tool without `--login`: a R/W public session).
pub fn plant_public_key(label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("squatter.key");
    std::fs::write(&file, [0x42u8; 32]).unwrap();
    pkcs11_tool(&[
        "--write-object",
        file.to_str().unwrap(),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        label,
        "--usage-decrypt",
        "--extractable",
    ]);
}

fn pkcs11_tool(args: &[&str]) {
    let token = token();
    let _guard = TOKEN_WRITES.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", &token.conf)
        .args(["--module", MODULE, "--token-label", TOKEN_LABEL])
        .args(args)
        .output()
        .expect("pkcs11-tool (opensc) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A SoftHSM2 token directory under `dir` with one initialised token per label, all with user
/// PIN `pin`; returns the `softhsm2.conf` to point `SOFTHSM2_CONF` at.
pub fn token_dir(dir: &Path, labels: &[&str], pin: &str) -> PathBuf {
    let conf = write_conf(dir);
    for label in labels {
        init_token(&conf, label, pin);
    }
    conf
}

fn write_conf(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .unwrap();
    conf
}

fn init_token(conf: &Path, label: &str, pin: &str) {
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            SO_PIN,
        ])
        .output()
        .expect("softhsm2-util must be installed (apt-get install softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[allow(unsafe_code)]
fn set_softhsm_conf(conf: &Path) {
    // SAFETY: runs once, inside the OnceLock initialiser, before any PKCS#11 call of this
    // process; the tests that race with it only read unrelated variables through std, which
    // holds the environment lock for both reads and writes.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", conf);
    }
}
