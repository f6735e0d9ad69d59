//! Rebuilding the whole PKCS#11 context in the background after a device-class failure
//! (device error or removed, token not present, library not initialised, general errors
//! outside decrypt — the `Tier::Device` class of `errors`).
//!
//! A worker that sees such a failure answers its request and asks for a rebuild; it never
//! rebuilds on the request path. The recovery thread then marks the backend as recovering —
//! requests fail fast with `Unavailable` instead of touching a broken device — and retries
//! `C_Finalize`, `C_Initialize`, token selection and a test login with exponential backoff
//! until the token answers again. Success bumps the context generation: every worker drops
//! its session from the old context and opens a fresh one before its next job, and the
//! key-handle cache is cleared. No restart is needed when the HSM comes back.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags};
use cryptoki::error::{Error, RvError};
use parking_lot::{Condvar, Mutex};

use super::errors::{Operation, fail};
use super::{Shared, token};
use crate::config::TokenSelector;
use crate::hsm::HsmError;

/// First pause between rebuild attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest pause between rebuild attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Requests to the recovery thread.
#[derive(Default)]
pub(super) struct Recovery {
    signal: Mutex<Signal>,
    wake: Condvar,
}

#[derive(Default)]
struct Signal {
    requested: bool,
    stop: bool,
}

impl Recovery {
    /// Asks for a rebuild; returns at once. Repeated requests while one is pending merge.
    pub(super) fn request(&self, shared: &Shared) {
        // Fail fast from now on: nobody should open sessions on a device we know is broken.
        if !shared.recovering.swap(true, Ordering::SeqCst) {
            tracing::error!("PKCS#11 device failure: rebuilding the context in the background");
        }
        self.signal.lock().requested = true;
        self.wake.notify_all();
    }

    /// Stops the recovery thread (backend shutdown).
    pub(super) fn stop(&self) {
        self.signal.lock().stop = true;
        self.wake.notify_all();
    }

    /// Waits until a rebuild is requested or the thread must stop; `false` means stop.
    fn wait_for_request(&self) -> bool {
        let mut signal = self.signal.lock();
        while !signal.requested && !signal.stop {
            self.wake.wait(&mut signal);
        }
        !signal.stop
    }

    /// Sleeps for `pause` unless stopped first; `false` means stop.
    fn pause(&self, pause: Duration) -> bool {
        let deadline = Instant::now() + pause;
        let mut signal = self.signal.lock();
        while !signal.stop && !self.wake.wait_until(&mut signal, deadline).timed_out() {}
        !signal.stop
    }
}

/// Starts the recovery thread.
pub(super) fn start(
    shared: &Arc<Shared>,
    selector: TokenSelector,
) -> Result<JoinHandle<()>, HsmError> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name("pkcs11-recovery".into())
        .spawn(move || run(&shared, &selector))
        .map_err(|e| HsmError::Unavailable(format!("cannot start the recovery thread: {e}")))
}

fn run(shared: &Shared, selector: &TokenSelector) {
    while shared.recovery.wait_for_request() {
        let started = Instant::now();
        let mut backoff = MIN_BACKOFF;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            // Clear the request first: a failure reported during this attempt asks again.
            shared.recovery.signal.lock().requested = false;
            match rebuild(shared, selector) {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(error = %err, attempt = attempts, retry_in = ?backoff,
                        "PKCS#11 context rebuild failed; retrying");
                    if !shared.recovery.pause(backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        shared.keys.clear();
        shared.generation.fetch_add(1, Ordering::SeqCst);
        shared.recovering.store(false, Ordering::SeqCst);
        tracing::info!(
            attempts,
            took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "PKCS#11 context rebuilt; the HSM is serving again"
        );
    }
}

/// `C_Finalize`, `C_Initialize`, find the token again (its slot may have changed) and prove
/// a login works.
fn rebuild(shared: &Shared, selector: &TokenSelector) -> Result<(), HsmError> {
    match shared.pkcs11.clone().finalize() {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
        Err(err) => tracing::debug!(error = %err, "C_Finalize before a rebuild failed"),
    }
    match shared
        .pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
    {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => return Err(fail(&err, Operation::Session)),
    }
    let slot = token::select(&shared.pkcs11, &shared.metrics, selector)?;
    let probe = token::open_session(&shared.pkcs11, &shared.metrics, slot, &shared.pin, false)?;
    drop(probe);
    *shared.slot.write() = slot;
    Ok(())
}
