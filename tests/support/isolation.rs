//! Process isolation for tests against SoftHSM2, and SoftHSM2 token directories.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, in `C_Initialize`, and a PKCS#11 module initialises
//! once per process. Setting that variable in the test process would need
//! `std::env::set_var`, which is unsafe in edition 2024 (the proxy crate forbids unsafe code).
//! So the variable is only ever given to child processes: the proxy binary, `pkcs11-tool`,
//! `softhsm2-util`, or — for a test that opens PKCS#11 itself — the test binary re-run
//! filtered to that one test ([`run_child`]). A child knows it is one from [`is_child`].
//! This behaves the same under `cargo test` (threads in one process) and `cargo nextest`
//! (a process per test).
//!
//! Only `std` here: the fault module's tests (`softhsm/fault-pkcs11/tests`) include this file
//! too.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Names the test a child process must run; absent in the parent.
const CHILD_MARKER: &str = "XKS_TEST_CHILD";
/// The security officer PIN of every test token.
const SO_PIN: &str = "test-so-pin";

/// Whether this process is the child that runs `test`.
pub(crate) fn is_child(test: &str) -> bool {
    std::env::var(CHILD_MARKER).as_deref() == Ok(test)
}

/// Whether this process is a child of [`run_child`] (any test).
pub(crate) fn in_child() -> bool {
    std::env::var_os(CHILD_MARKER).is_some()
}

/// Re-runs this test binary filtered to exactly `test`, with `env` set in the child only;
/// forwards the child's output, asserts that it ran and passed that one test, and returns its
/// stderr.
pub(crate) fn run_child<'a>(
    test: &str,
    env: impl IntoIterator<Item = (&'a str, &'a OsStr)>,
) -> String {
    let exe = std::env::current_exe().expect("path of the test binary");
    let output = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .envs(env)
        .env(CHILD_MARKER, test)
        .output()
        .expect("run the test in a child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success(),
        "test {test} failed in its child process"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child process ran no test named {test}"
    );
    stderr
}

/// A SoftHSM2 token directory under `dir` with one initialised token per label, all with user
/// PIN `pin`; returns the `softhsm2.conf` to give child processes as `SOFTHSM2_CONF`.
pub(crate) fn token_dir(dir: &Path, labels: &[&str], pin: &str) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("create the token dir");
    let conf = dir.join("softhsm2.conf");
    let text = format!(
        "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
         slots.removable = false\n",
        tokens.display()
    );
    std::fs::write(&conf, text).expect("write softhsm2.conf");
    for label in labels {
        run_ok(
            Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", label])
                .args(["--pin", pin, "--so-pin", SO_PIN])
                .env("SOFTHSM2_CONF", &conf),
            "softhsm2-util (apt-get install softhsm2)",
        );
    }
    conf
}

/// Runs a setup command and asserts that it succeeded; `what` names it and its package.
pub(crate) fn run_ok(command: &mut Command, what: &str) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what} must be installed: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
