//! Test fixture: every test runs in its own child process with its own SoftHSM2 token and
//! control file, and talks to the fault module through cryptoki, as the proxy does.
//!
//! A PKCS#11 module is initialised once per process and reads `SOFTHSM2_CONF`,
//! `XKS_FAULT_CONTROL` and `XKS_FAULT_REAL_MODULE` once, so [`isolated`] re-runs the test
//! binary filtered to one test with those variables set, through the proxy's own
//! `tests/support/isolation.rs` (included here, so both crates share one copy of the
//! re-exec and the token directory). That works the same under `cargo test` and
//! `cargo nextest`.
//!
//! The module under test is the `cdylib` that Cargo builds together with the `rlib` this test
//! binary links: `target/<profile>/deps/libxks_fault_pkcs11.so`, next to the test binary
//! itself, so the path follows `CARGO_TARGET_DIR`, `--target` and the profile. Cargo builds
//! both crate types of the library in the same compiler run, so that file is as fresh as the
//! test. `XKS_FAULT_TEST_MODULE` overrides the path.

// Not every test binary uses every helper.
#![allow(dead_code)]

#[path = "../../../../tests/support/isolation.rs"]
mod isolation;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::OnceLock;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use xks_fault_pkcs11::{CONTROL_ENV, DEFAULT_REAL_MODULE, REAL_MODULE_ENV, control};

/// Label of the token each test process gets.
pub(crate) const TOKEN_LABEL: &str = "fault-test";
/// Label of a second token in the same token directory (same PINs), for per-token rules.
pub(crate) const OTHER_LABEL: &str = "fault-other";
/// Its CKU_USER PIN.
pub(crate) const USER_PIN: &str = "fault-user-pin";
/// Overrides the path of the module under test.
const MODULE_OVERRIDE: &str = "XKS_FAULT_TEST_MODULE";

/// Declares a `#[test]` whose body runs in a child process with a fresh token.
macro_rules! fault_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            support::isolated(stringify!($name), || $body);
        }
    };
}

/// In the parent: makes a token and an empty control file, runs `test` in a child process,
/// forwards its output and returns its stderr. In the child: runs `body`, returns `None`.
pub(crate) fn isolated(test: &str, body: impl FnOnce()) -> Option<String> {
    if isolation::is_child(test) {
        body();
        return None;
    }
    let dir = tempfile::tempdir().expect("create a temp dir");
    let conf = isolation::token_dir(dir.path(), &[TOKEN_LABEL, OTHER_LABEL], USER_PIN);
    let control = dir.path().join("faults");
    std::fs::write(&control, "").expect("create an empty control file");
    let stderr = isolation::run_child(
        test,
        [
            ("SOFTHSM2_CONF", conf.as_os_str()),
            (CONTROL_ENV, control.as_os_str()),
            (REAL_MODULE_ENV, OsStr::new(DEFAULT_REAL_MODULE)),
        ],
    );
    Some(stderr)
}

/// The fault module: next to this test binary (see the module docs).
pub(crate) fn module_path() -> PathBuf {
    if let Some(path) = std::env::var_os(MODULE_OVERRIDE) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let file = format!(
        "{}xks_fault_pkcs11{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(&file))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{file} not found next to {}; build it with `cargo build -p xks-fault-pkcs11` \
                 or set {MODULE_OVERRIDE}",
                exe.display()
            )
        })
}

/// The control file of this test process.
pub(crate) fn control_path() -> PathBuf {
    std::env::var_os(CONTROL_ENV)
        .expect("run inside `isolated`")
        .into()
}

/// Replaces the control file and waits until the module sees it.
pub(crate) fn set_faults(text: &str) {
    control::install(&control_path(), text).expect("write the control file");
}

/// The module, initialised, and the slot of the test token.
pub(crate) struct Fixture {
    pub(crate) pkcs11: Pkcs11,
    pub(crate) slot: Slot,
}

/// The process's fixture, loaded on first use.
pub(crate) fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pkcs11 = Pkcs11::new(module_path()).expect("load the fault module");
        pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        let slot = find_token(&pkcs11).expect("the test token");
        Fixture { pkcs11, slot }
    })
}

/// The slot holding the test token, if `C_GetSlotList(CK_TRUE)` lists it.
pub(crate) fn find_token(pkcs11: &Pkcs11) -> Option<Slot> {
    find_labelled(pkcs11, TOKEN_LABEL)
}

/// The slot holding the token labelled `label`, if `C_GetSlotList(CK_TRUE)` lists it.
pub(crate) fn find_labelled(pkcs11: &Pkcs11, label: &str) -> Option<Slot> {
    pkcs11
        .get_slots_with_token()
        .expect("C_GetSlotList")
        .into_iter()
        .find(|slot| {
            pkcs11
                .get_token_info(*slot)
                .is_ok_and(|info| info.label().trim() == label)
        })
}

/// A new R/W session, logged in as the user.
pub(crate) fn session() -> Result<Session, Error> {
    session_on(fixture().slot)
}

/// A new R/W session on `slot`, logged in as the user.
pub(crate) fn session_on(slot: Slot) -> Result<Session, Error> {
    let session = fixture().pkcs11.open_rw_session(slot)?;
    match session.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(err) => Err(err),
    }
}

/// A session AES-256 key for encryption and decryption.
pub(crate) fn aes_key(session: &Session) -> ObjectHandle {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .expect("C_GenerateKey")
}

/// AES-256-GCM under a fixed IV (fine for a test; the proxy draws a fresh one every time).
pub(crate) fn encrypt(
    session: &Session,
    key: ObjectHandle,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut iv = [7u8; 12];
    let params = GcmParams::new(&mut iv, b"aad", 128.into())?;
    session.encrypt(&Mechanism::AesGcm(params), key, plaintext)
}

/// The inverse of [`encrypt`].
pub(crate) fn decrypt(
    session: &Session,
    key: ObjectHandle,
    sealed: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut iv = [7u8; 12];
    let params = GcmParams::new(&mut iv, b"aad", 128.into())?;
    session.decrypt(&Mechanism::AesGcm(params), key, sealed)
}

/// The PKCS#11 return value of a failed call.
pub(crate) fn rv<T: std::fmt::Debug>(result: Result<T, Error>) -> RvError {
    match result {
        Err(Error::Pkcs11(rv, _)) => rv,
        other => panic!("expected a PKCS#11 error, got {other:?}"),
    }
}
