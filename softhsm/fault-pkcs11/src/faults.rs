//! What happens before a call reaches the real module: hang, latency, failure and token
//! removal, in that order.
//!
//! 1. `hang`: while a `hang` rule matches the function, the calling thread sleeps and re-reads
//!    the control file every [`HANG_POLL`]; no lock is held meanwhile.
//! 2. `latency`: the matching delays are added up and slept (ranges sampled per call).
//! 3. `fail`: every matching rule counts the call; the first that fires decides the return
//!    value and the real module is not called.
//! 4. `token-removed`: per PKCS#11 2.40 (§5.5, §5.6 and the return values of §5.1):
//!    `C_GetTokenInfo`, `C_GetMechanismList`, `C_GetMechanismInfo`, `C_InitToken` and
//!    `C_OpenSession` return `CKR_TOKEN_NOT_PRESENT`; every function on a session returns
//!    `CKR_DEVICE_REMOVED`; `C_GetSlotList(CK_TRUE)` finds no slot and `C_GetSlotInfo`
//!    clears `CKF_TOKEN_PRESENT`. `C_Initialize`, `C_Finalize`, `C_GetInfo`,
//!    `C_WaitForSlotEvent`, `C_CloseSession` and `C_CloseAllSessions` go through, so an
//!    application can release its sessions; sessions of the real module stay valid, and work
//!    again once the line is gone (a real token would have closed them).
//!
//! A call that fails ends the active operation it belongs to (PKCS#11 2.40 §5.8–§5.12: e.g.
//! "a call to C_Encrypt always terminates the active encryption operation unless it returns
//! CKR_BUFFER_TOO_SMALL or is a successful call […] to determine the length"). When a fault
//! makes such a call fail, the real module never saw it and would keep the operation open,
//! answering the application's next `C_EncryptInit` with `CKR_OPERATION_ACTIVE`;
//! [`end_operation`] ends it there too, so the session behaves as after a real failure.

use std::cell::{Cell, OnceCell};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cryptoki_sys::{
    CK_BYTE, CK_FUNCTION_LIST, CK_RV, CK_SESSION_HANDLE, CK_ULONG, CKR_BUFFER_TOO_SMALL,
    CKR_DEVICE_REMOVED, CKR_OK, CKR_TOKEN_NOT_PRESENT,
};

use crate::control::{Control, HANG_POLL, Version};
use crate::tokens::{self, Scope};
use crate::{CONTROL_ENV, Function, real};

/// What a function does while the token is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Goes through unchanged.
    Forward,
    /// Goes through; the wrapper hides the token itself (`C_GetSlotList`, `C_GetSlotInfo`).
    Slot,
    /// Returns `CKR_TOKEN_NOT_PRESENT`.
    TokenNotPresent,
    /// Returns `CKR_DEVICE_REMOVED`.
    DeviceRemoved,
}

/// Sleeps `delay` with the calling thread's timer slack at 1 ns, then restores it. Linux lets
/// an ordinary thread's sleep end up to its slack (50 µs by default) late, on top of wake-up
/// latency: a 2 ms sleep took about 2.08 ms on a 2-core test machine, 2.02 ms with the slack
/// at 1 ns. A network HSM's round trip has no such slack, and benchmarks compare against the
/// delay as written.
#[cfg(target_os = "linux")]
fn sleep_precisely(delay: Duration) {
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_GET_TIMERSLACK takes no pointer and only reads this thread's setting; the
    // unused arguments are passed as the `unsigned long` the kernel reads.
    let slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, zero, zero, zero, zero) };
    let one_ns: libc::c_ulong = 1;
    // SAFETY: PR_SET_TIMERSLACK takes a value, no pointer, and affects only this thread.
    let set = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, one_ns, zero, zero, zero) };
    std::thread::sleep(delay);
    if let (0, Ok(slack)) = (set, libc::c_ulong::try_from(slack)) {
        // SAFETY: as above; restores the value read before.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, slack, zero, zero, zero) };
    }
}

/// Elsewhere: a plain sleep.
#[cfg(not(target_os = "linux"))]
fn sleep_precisely(delay: Duration) {
    std::thread::sleep(delay);
}

/// The outcome of the rules for one call.
pub(crate) enum Verdict {
    /// Return this value without calling the real module.
    Return(CK_RV),
    /// Call the real module.
    Forward {
        /// Its function list.
        real: &'static CK_FUNCTION_LIST,
        /// Whether the addressed token counts as removed (for [`Removal::Slot`] functions).
        token_removed: bool,
        /// The rules that applied (`None`: no control file), for `C_GetSlotList` to hide the
        /// slots of tokens removed by name.
        version: Option<Arc<Version>>,
    },
}

/// The label of the token a call addresses, looked up at most once per call and only when
/// some rule is limited to a token.
struct Call {
    scope: Scope,
    label: OnceCell<Option<String>>,
}

impl Call {
    fn token(&self, version: &Version) -> Option<&str> {
        if !version.has_token_rules() {
            return None;
        }
        self.label
            .get_or_init(|| tokens::label(self.scope))
            .as_deref()
    }
}

/// Applies the rules to a call of `function` addressed to `scope`; blocks for `hang` and
/// `latency`.
pub(crate) fn before(function: Function, scope: Scope) -> Verdict {
    let real = match real::functions() {
        Ok(real) => real,
        Err(rv) => return Verdict::Return(rv),
    };
    let Some(control) = control() else {
        return Verdict::Forward {
            real,
            token_removed: false,
            version: None,
        };
    };
    let call = Call {
        scope,
        label: OnceCell::new(),
    };
    let mut version = control.current();
    while version.hangs(function, call.token(&version)) {
        std::thread::sleep(HANG_POLL);
        version = control.reload_now();
    }
    let token = call.token(&version);
    let delay = version.delay(function, token);
    if !delay.is_zero() {
        sleep_precisely(delay);
    }
    if let Some(rv) = version.failure(function, token) {
        return Verdict::Return(rv);
    }
    let token_removed = version.token_removed(token);
    match function.removal() {
        Removal::TokenNotPresent if token_removed => Verdict::Return(CKR_TOKEN_NOT_PRESENT),
        Removal::DeviceRemoved if token_removed => Verdict::Return(CKR_DEVICE_REMOVED),
        _ => Verdict::Forward {
            real,
            token_removed,
            version: Some(version),
        },
    }
}

/// A cryptographic operation that a failing call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Encrypt,
    Decrypt,
    Digest,
    Sign,
    Verify,
}

/// The signature of `C_EncryptFinal`, `C_DecryptFinal`, `C_DigestFinal` and `C_SignFinal`.
type FinalFn = unsafe extern "C" fn(CK_SESSION_HANDLE, *mut CK_BYTE, *mut CK_ULONG) -> CK_RV;

/// Ends `operation` on `session` in the real module after a fault made a call of it return
/// `rv` (nothing to do for `CKR_OK` and `CKR_BUFFER_TOO_SMALL`, which leave it active).
///
/// The operation is finished with its `C_*Final` function and the result thrown away; a
/// `C_*Final` that fails ends it as well. Best effort: errors are ignored.
pub(crate) fn end_operation(operation: Operation, session: CK_SESSION_HANDLE, rv: CK_RV) {
    if rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL {
        return;
    }
    let Ok(real) = real::functions() else {
        return;
    };
    let final_fn = match operation {
        Operation::Encrypt => real.C_EncryptFinal,
        Operation::Decrypt => real.C_DecryptFinal,
        Operation::Digest => real.C_DigestFinal,
        Operation::Sign => real.C_SignFinal,
        Operation::Verify => {
            if let Some(verify_final) = real.C_VerifyFinal {
                // A one-byte signature that cannot verify ends the operation.
                let mut signature = [0 as CK_BYTE; 1];
                // SAFETY: `signature` is valid for the one byte passed; the session handle is
                // the application's own, used as it just used it.
                unsafe { verify_final(session, signature.as_mut_ptr(), 1) };
            }
            return;
        }
    };
    if let Some(final_fn) = final_fn {
        drain(final_fn, session);
    }
}

/// Calls `final_fn` with a buffer big enough for its output (at most 1 MiB).
fn drain(final_fn: FinalFn, session: CK_SESSION_HANDLE) {
    const LIMIT: usize = 1 << 20;
    let mut buffer = vec![0 as CK_BYTE; 1024];
    loop {
        let mut len = CK_ULONG::try_from(buffer.len()).unwrap_or(0);
        // SAFETY: `buffer` is valid for `len` bytes and `len` for a read and a write; the
        // session handle is the application's own, used as it just used it.
        let rv = unsafe { final_fn(session, buffer.as_mut_ptr(), &raw mut len) };
        let wanted = usize::try_from(len).unwrap_or(usize::MAX);
        if rv != CKR_BUFFER_TOO_SMALL || wanted <= buffer.len() || wanted > LIMIT {
            return;
        }
        buffer.resize(wanted, 0);
    }
}

/// The control file named by [`CONTROL_ENV`], if set (read once per process).
fn control() -> Option<&'static Control> {
    static CONTROL: OnceLock<Option<Control>> = OnceLock::new();
    CONTROL
        .get_or_init(|| {
            std::env::var_os(CONTROL_ENV)
                .filter(|path| !path.is_empty())
                .map(|path| Control::new(path.into()))
        })
        .as_ref()
}

/// A uniformly random duration in `min..=max` (not cryptographic: a per-thread splitmix64
/// seeded from std's random hasher keys).
pub(crate) fn sample(min: Duration, max: Duration) -> Duration {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0_u8));
    }
    let span = u64::try_from(max.saturating_sub(min).as_nanos()).unwrap_or(u64::MAX);
    if span == 0 {
        return min;
    }
    let random = STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    });
    min.saturating_add(Duration::from_nanos(random % span.saturating_add(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stay_in_range_and_vary() {
        let (min, max) = (Duration::from_micros(10), Duration::from_micros(20));
        let samples: Vec<Duration> = (0..1000).map(|_| sample(min, max)).collect();
        assert!(samples.iter().all(|d| (min..=max).contains(d)));
        assert!(samples.iter().any(|d| *d < Duration::from_micros(12)));
        assert!(samples.iter().any(|d| *d > Duration::from_micros(18)));
        assert_eq!(sample(max, max), max);
    }
}
