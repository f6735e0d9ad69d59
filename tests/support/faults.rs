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

/// What a proxy on the fault module needs on disk: a TLS certificate of its own CA, an empty
/// rules file, and a config with one key store `/t` (credential `AKID_A1`) whose `[hsm]`
/// section the caller writes. [`FaultySetup::env`] is the environment the proxy (or a
/// `keys` command) runs with.
pub struct FaultySetup {
    pub ca: super::Ca,
    /// The rules file the module watches.
    pub control: PathBuf,
    pub config: PathBuf,
    pub dir: tempfile::TempDir,
}

impl FaultySetup {
    /// `server_extra` goes into `[server]`, `hsm` is the whole `[hsm]` section (and any
    /// `[[hsm.members]]`) with `{module}` standing for the fault module's path.
    pub fn write(ca_name: &str, server_extra: &str, hsm: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = super::Ca::new(ca_name);
        let (chain, tls_key) = ca.server().write(dir.path(), &ca, "server");
        let control = dir.path().join("faults");
        std::fs::write(&control, "").unwrap();
        let config = dir.path().join("xks-proxy.toml");
        let hsm = hsm.replace("{module}", &format!("{:?}", module()));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\
                 [server.tls]\ncertificate_chain = {chain:?}\nprivate_key = {tls_key:?}\n\
                 {hsm}\n[health]\ncache_ttl_seconds = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [[key_stores]]\npath_prefix = \"/t\"\n[[key_stores.credentials]]\n\
                 access_key_id = \"{}\"\nsecret = \"{}\"\n",
                super::AKID_A1,
                super::SECRET_A1,
            ),
        )
        .unwrap();
        Self {
            ca,
            control,
            config,
            dir,
        }
    }

    /// The fault module's environment: its rules file and the real module behind it.
    pub fn env(&self) -> [(&'static str, &Path); 2] {
        [
            ("XKS_FAULT_CONTROL", self.control.as_path()),
            ("XKS_FAULT_REAL_MODULE", Path::new(super::softhsm::MODULE)),
        ]
    }

    /// Replaces the fault rules; the module sees them within a few milliseconds.
    pub fn set(&self, rules: &str) {
        set_rules(&self.control, rules);
    }

    /// A TLS client of `server` signing with the key store's credential.
    pub fn client(&self, server: &super::binary::Server) -> super::Client {
        super::Client::tls(server.addr, &self.ca, None)
            .signer(Some(super::Signer::new(super::AKID_A1, super::SECRET_A1)))
    }
}
