//! SoftHSM2 fixture for integration tests: a fresh token per test process, one backend per
//! process.
//!
//! SoftHSM reads `SOFTHSM2_CONF` when `C_Initialize` runs, and `C_Initialize` works once per
//! process. The crate forbids unsafe code and `std::env::set_var` is unsafe in edition 2024,
//! so a test cannot point SoftHSM at its own configuration in-process. Instead
//! [`hsm_test!`] runs every test body in a child process of the test binary: the parent
//! writes a `softhsm2.conf` into a temp dir, initialises a token with `softhsm2-util`, and
//! re-runs the binary filtered to exactly this test with `SOFTHSM2_CONF` set. The child opens
//! one backend ([`backend`], a `OnceLock`) and runs the body. This behaves the same under
//! `cargo test` (threads in one process) and `cargo nextest` (a process per test).

use std::future::Future;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use secrecy::SecretString;
use xks_proxy::config::{HsmSettings, TokenSelector};
use xks_proxy::hsm::pkcs11::Pkcs11Backend;
use xks_proxy::xks::ExternalKeyId;

/// The SoftHSM2 module of the Debian package.
pub(crate) const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Label of the token each test process gets.
pub(crate) const TOKEN_LABEL: &str = "xks-test-token";
/// The CKU_USER PIN of that token.
pub(crate) const USER_PIN: &str = "test-user-pin";
const SO_PIN: &str = "test-so-pin";
/// Label of the dedicated health-check key.
pub(crate) const HEALTH_KEY: &str = "xks-health-check";
/// Names the test a child process must run; absent in the parent.
const CHILD_MARKER: &str = "XKS_SOFTHSM_CHILD_TEST";

/// Declares a `#[test]` whose async body runs against a fresh SoftHSM token in a child process.
macro_rules! hsm_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            softhsm::isolated(stringify!($name), || softhsm::block_on(async $body));
        }
    };
}

/// In the parent: prepares a token and runs `test` in a child process, forwarding its output.
/// In the child: runs `body`.
pub(crate) fn isolated(test: &str, body: impl FnOnce()) {
    if std::env::var(CHILD_MARKER).as_deref() == Ok(test) {
        body();
        return;
    }
    let dir = tempfile::tempdir().expect("create a temp dir");
    let conf = write_conf(dir.path());
    init_token(&conf);
    let exe = std::env::current_exe().expect("path of the test binary");
    let output = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD_MARKER, test)
        .output()
        .expect("run the test in a child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "test {test} failed in its SoftHSM child process"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child process ran no test named {test}"
    );
}

/// Runs a future to completion on a fresh multi-threaded runtime.
///
/// Backend logs go to the test's output, filtered by `RUST_LOG`.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
        .block_on(future)
}

/// Backend settings for the test token.
pub(crate) fn settings(sessions: usize, queue_depth: usize) -> HsmSettings {
    HsmSettings {
        module: PathBuf::from(MODULE),
        token: TokenSelector::Label(TOKEN_LABEL.into()),
        user_pin: SecretString::from(USER_PIN),
        sessions: NonZeroUsize::new(sessions).expect("at least one session"),
        queue_depth,
        health_key_label: key_id(HEALTH_KEY),
        create_health_key: true,
    }
}

/// The process's shared backend: two sessions, a roomy queue.
pub(crate) fn backend() -> &'static Pkcs11Backend {
    static BACKEND: OnceLock<Pkcs11Backend> = OnceLock::new();
    BACKEND.get_or_init(|| Pkcs11Backend::open(&settings(2, 64)).expect("open the backend"))
}

/// A logged-in R/W session of the test's own, for setting up objects the backend's admin
/// API refuses to create (duplicates, AES-128). Opens the shared backend first, which
/// initialises the module; this second handle then finds it already initialised.
pub(crate) fn raw_session() -> Session {
    let _ = backend();
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

/// Plants a public (`CKA_PRIVATE=false`), non-sensitive, extractable AES-256 secret key with
/// the given value and label the way an attacker with token access but no PIN can: OpenSC's
/// pkcs11-tool in a R/W public session, without `--login`. The value is known to the caller,
/// so anything encrypted under this object is readable by whoever planted it.
pub(crate) fn plant_public_key(label: &str, value: &[u8; 32]) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let file = dir.path().join("squatter.key");
    std::fs::write(&file, value).expect("write the key value");
    let output = Command::new("pkcs11-tool")
        .args(["--module", MODULE, "--token-label", TOKEN_LABEL])
        .arg("--write-object")
        .arg(&file)
        .args([
            "--type",
            "secrkey",
            "--key-type",
            "AES:32",
            "--label",
            label,
        ])
        .args(["--usage-decrypt", "--extractable"])
        .output()
        .expect("pkcs11-tool (opensc) must be installed");
    assert!(
        output.status.success(),
        "pkcs11-tool --write-object failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Parses a key id.
pub(crate) fn key_id(label: &str) -> ExternalKeyId {
    ExternalKeyId::parse(label).expect("valid key id")
}

/// A deadline far enough away for any single test operation.
pub(crate) fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

fn write_conf(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir(&tokens).expect("create the token dir");
    let conf = dir.join("softhsm2.conf");
    let text = format!(
        "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
        tokens.display()
    );
    std::fs::write(&conf, text).expect("write softhsm2.conf");
    conf
}

fn init_token(conf: &Path) {
    let output = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN_LABEL])
        .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("run softhsm2-util");
    assert!(
        output.status.success(),
        "softhsm2-util --init-token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
