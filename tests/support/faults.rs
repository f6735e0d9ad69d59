//! Driving the fault-injecting PKCS#11 module (`softhsm/fault-pkcs11`) from tests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use super::binary::BIN;

/// The fault module, next to the proxy binary. The test command builds it
/// (`cargo build -p xks-fault-pkcs11` in `tests/run.sh`); a test never runs cargo itself.
pub fn module() -> &'static Path {
    static MODULE: OnceLock<PathBuf> = OnceLock::new();
    MODULE.get_or_init(|| {
        let module = Path::new(BIN)
            .parent()
            .unwrap()
            .join("libxks_fault_pkcs11.so");
        assert!(
            module.exists(),
            "{} missing: run `cargo build -p xks-fault-pkcs11` first (tests/run.sh does)",
            module.display()
        );
        module
    })
}

/// Replaces the rules in `control` atomically; the module sees them within a few milliseconds.
pub fn set_rules(control: &Path, rules: &str) {
    let staged = control.with_extension("new");
    std::fs::write(&staged, rules).unwrap();
    std::fs::rename(&staged, control).unwrap();
    std::thread::sleep(Duration::from_millis(30));
}
