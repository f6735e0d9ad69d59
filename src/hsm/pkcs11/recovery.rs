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
//!
//! Several members (tokens) can share one module (`module`): the finalize/initialize part is
//! then done once per failure for all of them, and the other members only reselect their
//! tokens. A member alone on its module repeats the whole rebuild on every retry; a member
//! sharing its module retries only the token selection and login after the first rebuild,
//! so that one missing token does not keep tearing down its neighbours' sessions.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki::context::Function;
use parking_lot::{Condvar, Mutex};

use super::errors::is_unknown_code;
use super::{Shared, token};
use crate::config::TokenSelector;
use crate::hsm::{HsmError, Pkcs11Call, Tier};

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
    /// The module's context generation when the failure was seen.
    seen: Option<u64>,
}

impl Recovery {
    /// Asks for a rebuild; returns at once. Repeated requests while one is pending merge.
    pub(super) fn request(&self, shared: &Shared) {
        // Fail fast from now on: nobody should open sessions on a device we know is broken.
        if !shared.recovering.swap(true, Ordering::SeqCst) {
            tracing::error!("PKCS#11 device failure: rebuilding the context in the background");
        }
        let mut signal = self.signal.lock();
        signal.requested = true;
        signal.seen = Some(shared.module.generation());
        drop(signal);
        self.wake.notify_all();
    }

    /// Asks this member to reconnect after another member rebuilt the shared context: it
    /// reselects its token and replaces its sessions but never finalises the module for it.
    pub(super) fn request_reconnect(&self, shared: &Shared) {
        shared.recovering.store(true, Ordering::SeqCst);
        let mut signal = self.signal.lock();
        signal.requested = true;
        // No context generation equals this one, so `reinitialize` does nothing for it.
        signal.seen = Some(u64::MAX);
        drop(signal);
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
        let mut seen = None;
        loop {
            attempts += 1;
            // Clear the request first: a failure reported during this attempt asks again.
            {
                let mut signal = shared.recovery.signal.lock();
                signal.requested = false;
                if let Some(at) = signal.seen.take() {
                    seen = Some(at);
                }
            }
            let now = shared.module.generation();
            let seen_now = if attempts > 1 && shared.module.member_count() <= 1 {
                now
            } else {
                seen.unwrap_or(now)
            };
            match rebuild(shared, selector, seen_now) {
                Ok(()) => break,
                Err(err) if super::pool::refuses_login(&err) => {
                    // Logging in again could lock the user PIN: stay down until a restart.
                    shared.login_refused.store(true, Ordering::SeqCst);
                    tracing::error!(error = %err,
                        "the token refused the PIN during recovery; not retrying until restart");
                    return;
                }
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

/// Brings the member back: find the token again (its slot may have changed) and prove a login
/// works. A member alone on its module first rebuilds the whole context (`C_Finalize`,
/// `C_Initialize`, unless done since generation `seen`). A member sharing its module with
/// others only reconnects — one pulled token must not take its healthy neighbours down — and
/// rebuilds the context only when the library itself fails (`C_GetSlotList` at device tier,
/// or with an unknown code: during a recovery that is no longer a session's problem).
fn rebuild(shared: &Shared, selector: &TokenSelector, seen: u64) -> Result<(), HsmError> {
    let alone = shared.module.member_count() <= 1;
    if alone {
        shared.module.reinitialize(seen, shared)?;
    }
    match reconnect(shared, selector) {
        Err(HsmError::Pkcs11(failure))
            if !alone
                && (failure.tier == Tier::Device || is_unknown_code(&failure))
                && failure.function == Pkcs11Call::Function(Function::GetSlotList) =>
        {
            shared.module.reinitialize(seen, shared)?;
            reconnect(shared, selector)
        }
        other => other,
    }
}

/// Token selection and a test login, under the module's call guard.
fn reconnect(shared: &Shared, selector: &TokenSelector) -> Result<(), HsmError> {
    let _calls = shared.module.calls();
    let slot = token::select(&shared.pkcs11, &*shared.observer, selector)?;
    let probe = token::open_session(&shared.pkcs11, &*shared.observer, slot, &shared.pin, false)?;
    drop(probe);
    *shared.slot.write() = slot;
    Ok(())
}
