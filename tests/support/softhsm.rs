//! A real SoftHSM2 token in a temporary directory, and the PKCS#11 helpers of the tests.
//!
//! `SOFTHSM2_CONF` is never set in a test process (see [`super::isolation`]). A test that only
//! drives child processes (the proxy binary, `pkcs11-tool`) gets a token per process from
//! [`token`] and passes its [`Token::conf`] to them. A test that opens PKCS#11 itself starts
//! with [`isolate!`]: its body then runs in a child process of the test binary with a fresh
//! token of its own, where [`Token::backend`] works. Tests stay independent within a process by
//! using their own key labels ([`unique_label`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use secrecy::SecretString;
use xks_proxy::config::{HsmSettings, TokenSelector};
use xks_proxy::hsm::KeyUsage;
use xks_proxy::hsm::pkcs11::Pkcs11Backend;
use xks_proxy::xks::{ExternalKeyId, VersionedKey};

use super::binary::BIN;
use super::isolation;
use super::{AKID_A1, SECRET_A1};

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const TOKEN_LABEL: &str = "xks-test";
pub const USER_PIN: &str = "87654321";
pub const HEALTH_KEY: &str = "xks-proxy-health-check";

/// Runs the rest of the calling test in a child process of its own, with a fresh token and
/// `SOFTHSM2_CONF` set there: in the parent it re-runs the test binary filtered to this test
/// and returns once the child passed; in the child it falls through. Write it first in a test
/// that opens PKCS#11 in-process ([`Token::backend`], [`create_key`], [`raw_session`]).
macro_rules! isolate {
    () => {{
        fn here() {}
        if !$crate::support::softhsm::isolated(::std::any::type_name_of_val(&here)) {
            return;
        }
    }};
}
pub(crate) use isolate;

/// The parent half of [`isolate!`], given the type name of an item inside the test function
/// (`crate::path::to::test::{{closure}}::here`): in the child returns `true`; in the parent
/// makes a token, runs the child and returns `false`.
pub fn isolated(item: &str) -> bool {
    let test = test_name(item);
    if isolation::is_child(&test) {
        return true;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = isolation::token_dir(dir.path(), &[TOKEN_LABEL], USER_PIN);
    isolation::run_child(&test, [("SOFTHSM2_CONF", conf.as_os_str())]);
    false
}

/// `crate::a::test::{{closure}}::here` → `a::test`, the test's name for libtest's filter.
fn test_name(item: &str) -> String {
    let mut segments: Vec<&str> = item
        .split("::")
        .skip(1)
        .filter(|s| *s != "{{closure}}")
        .collect();
    assert_eq!(segments.pop(), Some("here"), "{item}");
    segments.join("::")
}

/// The process's token.
pub struct Token {
    /// Keeps the directory alive for the whole process (`None` in an [`isolate!`] child, whose
    /// parent owns it).
    _dir: Option<tempfile::TempDir>,
    pub conf: PathBuf,
    backend: OnceLock<Arc<Pkcs11Backend>>,
}

static TOKEN: OnceLock<Token> = OnceLock::new();

/// The token, created on first use; in an [`isolate!`] child, the one its parent made.
pub fn token() -> &'static Token {
    TOKEN.get_or_init(|| {
        if isolation::in_child() {
            let conf = std::env::var_os("SOFTHSM2_CONF").expect("SOFTHSM2_CONF in the child");
            return Token {
                _dir: None,
                conf: conf.into(),
                backend: OnceLock::new(),
            };
        }
        let dir = tempfile::tempdir().unwrap();
        let conf = isolation::token_dir(dir.path(), &[TOKEN_LABEL], USER_PIN);
        create_health_key(dir.path(), &conf);
        Token {
            _dir: Some(dir),
            conf,
            backend: OnceLock::new(),
        }
    })
}

/// Creates the health-check key on a fresh token before any test uses it, the way the proxy
/// does (`keys list` opens the backend, which creates it): proxies that a test starts at the
/// same moment would otherwise all create it, and SoftHSM2's file store does not survive
/// concurrent writers (see [`TOKEN_WRITES`]).
fn create_health_key(dir: &Path, conf: &Path) {
    let config = dir.join("health-key.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nplaintext_behind_load_balancer = true\n\
             [hsm]\nmodule = {MODULE:?}\ntoken_label = {TOKEN_LABEL:?}\nuser_pin = {USER_PIN:?}\n\
             health_key_label = {HEALTH_KEY:?}\nsessions = 1\n\
             [[key_stores]]\npath_prefix = \"\"\n[[key_stores.credentials]]\n\
             access_key_id = {AKID_A1:?}\nsecret = {SECRET_A1:?}\n"
        ),
    )
    .unwrap();
    isolation::run_ok(
        Command::new(BIN)
            .args(["keys", "list", "--config"])
            .arg(&config)
            .env("SOFTHSM2_CONF", conf),
        "xks-proxy keys list",
    );
}

impl Token {
    /// `SOFTHSM2_CONF=<conf>` for a child process's environment.
    pub fn env(&self) -> [(&'static str, &OsStr); 1] {
        [("SOFTHSM2_CONF", self.conf.as_os_str())]
    }

    /// The process-wide backend on this token (four sessions). Only in an [`isolate!`]
    /// child: elsewhere SoftHSM2 would not see this token.
    pub fn backend(&self) -> &Arc<Pkcs11Backend> {
        self.backend.get_or_init(|| {
            assert!(
                isolation::in_child(),
                "PKCS#11 in the test process: start the test with `softhsm::isolate!()`"
            );
            Arc::new(Pkcs11Backend::open(&hsm_settings(4, 64)).unwrap())
        })
    }
}

/// HSM settings pointing at the test token.
pub fn hsm_settings(sessions: usize, queue_depth: usize) -> HsmSettings {
    HsmSettings {
        module: MODULE.into(),
        token: TokenSelector::Label(TOKEN_LABEL.into()),
        user_pin: USER_PIN.to_owned().into(),
        sessions: std::num::NonZeroUsize::new(sessions).unwrap(),
        queue_depth,
        health_key_label: key_id(HEALTH_KEY),
        create_health_key: true,
    }
}

/// Parses a key id.
pub fn key_id(label: &str) -> ExternalKeyId {
    ExternalKeyId::parse(label).expect("valid key id")
}

/// Version 1 of a key: the object labelled with the key id itself.
pub fn v1(label: &str) -> VersionedKey {
    VersionedKey::first(key_id(label))
}

/// A deadline far enough away for any single test operation.
pub fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(20)
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
    let backend = token().backend();
    let _guard = TOKEN_WRITES.lock().unwrap_or_else(|e| e.into_inner());
    backend.create_key(&key_id(&label), usages).unwrap();
    label
}

/// A logged-in R/W session of the test's own, for setting up objects the backend's admin
/// API refuses to create (duplicates, AES-128). `backend` is open already, so it initialised
/// the module; this second handle then finds it initialised.
pub fn raw_session(_backend: &Pkcs11Backend) -> Session {
    let pkcs11 = Pkcs11::new(MODULE).expect("load SoftHSM");
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => panic!("C_Initialize: {err}"),
    }
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .expect("list slots")
        .into_iter()
        .find(|slot| {
            pkcs11
                .get_token_info(*slot)
                .is_ok_and(|info| info.label().trim() == TOKEN_LABEL)
        })
        .expect("the test token");
    let session = pkcs11.open_rw_session(slot).expect("open a session");
    match session.login(UserType::User, Some(&SecretString::from(USER_PIN))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(err) => panic!("C_Login: {err}"),
    }
    session
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
    pkcs11_tool_keygen_with(label, key_type, &[]);
}

/// A private, sensitive AES-256 key that can be extracted (`--extractable`): its value can
/// leave the HSM, so the proxy must refuse it.
pub fn pkcs11_tool_extractable_key(label: &str) {
    pkcs11_tool_keygen_with(label, "AES:32", &["--extractable"]);
}

fn pkcs11_tool_keygen_with(label: &str, key_type: &str, extra: &[&str]) {
    let args = [
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
    ];
    pkcs11_tool(&[&args[..], extra].concat());
}

/// Plants a public (`CKA_PRIVATE=false`), non-sensitive, extractable AES-256 secret key with
/// the given value and label the way an attacker with token access but no PIN can: OpenSC's
/// pkcs11-tool in a R/W public session, without `--login`. The value is known to the caller,
/// so anything encrypted under this object is readable by whoever planted it.
pub fn plant_public_key(label: &str, value: &[u8; 32]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("squatter.key");
    std::fs::write(&file, value).unwrap();
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
    isolation::run_ok(
        Command::new("pkcs11-tool")
            .envs(token.env())
            .args(["--module", MODULE, "--token-label", TOKEN_LABEL])
            .args(args),
        "pkcs11-tool (opensc)",
    );
}
