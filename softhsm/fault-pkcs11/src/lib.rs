//! A fault-injecting PKCS#11 module for xks-proxy tests and benchmarks.
//!
//! Built as a `cdylib` (`libxks_fault_pkcs11.so`), this crate is a PKCS#11 2.40 module
//! (PKCS#11 Base Specification 2.40, §5): an application loads it like any vendor module and
//! calls `C_GetFunctionList`. Every one of the 68 functions applies the fault rules of a
//! control file and then forwards the call, arguments unchanged, to a real module (SoftHSM2 by
//! default) — the crates.io "ChaosProxy" idea applied to the HSM, with no test-only code path
//! in the application.
//!
//! # Configuration
//!
//! * [`REAL_MODULE_ENV`] (`XKS_FAULT_REAL_MODULE`): the real module, default
//!   [`DEFAULT_REAL_MODULE`]. Loaded on the first `C_GetFunctionList`; if that fails, the call
//!   returns `CKR_GENERAL_ERROR` and the reason goes to stderr.
//! * [`CONTROL_ENV`] (`XKS_FAULT_CONTROL`): the control file. Unset: a pure pass-through. The
//!   file is re-read when it changes ([`control`]), so a test can change the module's behaviour
//!   while the application runs; give each test process its own file.
//!
//! Both are read once per process. The grammar of the control file is in [`rules`]:
//!
//! ```text
//! latency * 2ms                                   # every call, like a network HSM
//! latency C_Encrypt 1ms..5ms                      # uniformly random per call
//! fail C_Decrypt CKR_DEVICE_ERROR always
//! fail C_Encrypt CKR_SESSION_HANDLE_INVALID once  # once per version of the file
//! fail C_FindObjectsInit CKR_GENERAL_ERROR every 3
//! hang C_Encrypt                                  # until this line is removed
//! token-removed                                   # until this line is removed
//! token-removed fleet-b                           # only the token labelled fleet-b
//! fail C_Encrypt CKR_DEVICE_ERROR token=fleet-b   # only calls to that token
//! ```
//!
//! What each rule does, and in which order, is under [Faults](#faults) below.
//!
//! # Faults
//!
//! Before a call reaches the real module: (1) `hang` rules block it, re-reading the file every
//! [`control::HANG_POLL`], until no `hang` rule matches; (2) matching `latency` delays are
//! added up and slept; (3) every matching `fail` rule counts the call and the first that fires
//! returns its value; (4) `token-removed` answers as PKCS#11 says a module without its token
//! does: `CKR_TOKEN_NOT_PRESENT` from token functions (`C_GetTokenInfo`, `C_OpenSession`…),
//! `CKR_DEVICE_REMOVED` from session functions, no slot from `C_GetSlotList(CK_TRUE)`. A rule
//! with a label (`token-removed <label>`, `… token=<label>`) applies only to calls addressed
//! to that token: by slot, or by a session opened on its slot.
//! Sleeping never holds a lock; the module is safe to call from many threads.
//!
//! A faulted call that the standard says ends the active operation (`C_Encrypt`,
//! `C_DecryptFinal`, `C_SignUpdate`…) ends it in the real module too, so the session stays
//! usable exactly as after a real failure instead of answering `CKR_OPERATION_ACTIVE` next.
//!
//! # Safety and robustness
//!
//! The FFI surface is the [`api`] wrappers and the module loader; each unsafe block says why
//! it is sound. No panic crosses the FFI boundary: every exported function runs inside
//! [`std::panic::catch_unwind`] and answers `CKR_GENERAL_ERROR` if something panicked.
//! Problems with the control file never fail a call: bad lines are skipped with a one-time
//! message on stderr.
//!
//! # Symbols
//!
//! Besides `C_GetFunctionList` every function is exported under its own name, as vendor
//! modules do. Load the module with `RTLD_LOCAL` (the default of `dlopen`, libloading and
//! cryptoki): loaded globally, these symbols would interpose on the real module's own, which
//! the loader detects and refuses.
//!
//! # The rlib
//!
//! The crate is also an `rlib`, so tests can check control text with [`rules::RuleSet::parse`]
//! and replace the control file with [`control::install`], which waits until the module is
//! sure to see the change.

pub mod api;
pub mod control;
mod faults;
mod real;
pub mod rules;
pub mod rv;
mod tokens;

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, PoisonError};

use cryptoki_sys::{CK_RV, CKR_GENERAL_ERROR};

pub use api::Function;

/// Environment variable naming the real PKCS#11 module.
pub const REAL_MODULE_ENV: &str = "XKS_FAULT_REAL_MODULE";

/// The real module when [`REAL_MODULE_ENV`] is unset: SoftHSM2 as Debian installs it.
pub const DEFAULT_REAL_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Environment variable naming the control file; unset means no faults.
pub const CONTROL_ENV: &str = "XKS_FAULT_CONTROL";

/// Runs the body of an exported function, turning a panic into `CKR_GENERAL_ERROR`.
fn guard(body: impl FnOnce() -> CK_RV) -> CK_RV {
    // The body's state is abandoned on panic, so observing it half-updated is impossible.
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(CKR_GENERAL_ERROR)
}

/// Prints `message` on stderr, prefixed with the crate name, the first time it comes up.
fn warn_once(message: String) {
    static SEEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
    if !seen.contains(&message) {
        eprintln!("xks-fault-pkcs11: {message}");
        seen.insert(message);
    }
}
