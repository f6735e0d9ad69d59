//! The one seam PKCS#11 calls go through: each is timed under its PKCS#11 function name in
//! `xks_hsm_call_duration_seconds{function}` and, for [`call`], its failure classified once
//! (`errors::fail`).
//!
//! A cryptoki method may issue several PKCS#11 functions; it is labelled with the one that
//! does the work: `C_Encrypt` and `C_Decrypt` include their `C_EncryptInit`/`C_DecryptInit`
//! (cryptoki's single-part calls), `C_FindObjects` includes `C_FindObjectsInit` and
//! `C_FindObjectsFinal`. `C_CloseSession`, `C_Logout` and `C_Finalize` run in destructors at
//! shutdown or after a failure and are not timed.

use std::time::Instant;

use super::errors::{Operation, fail};
use crate::hsm::HsmError;
use crate::hsm::HsmObserver;

/// Runs `call`, recording its duration as one `function` call.
pub(super) fn timed<T>(
    observer: &dyn HsmObserver,
    function: &'static str,
    call: impl FnOnce() -> T,
) -> T {
    let started = Instant::now();
    let result = call();
    observer.hsm_call(function, started.elapsed());
    result
}

/// Runs the cryptoki `call` timed as `function`, classifying a failure during `op`.
pub(super) fn call<T>(
    observer: &dyn HsmObserver,
    function: &'static str,
    op: Operation,
    call: impl FnOnce() -> cryptoki::error::Result<T>,
) -> Result<T, HsmError> {
    timed(observer, function, call).map_err(|e| fail(&e, op))
}
