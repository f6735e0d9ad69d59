//! What a worker repairs after a job, and when an unknown return code stops being a
//! session's problem and becomes the device's (PKCS#11 v3.2 §5.1.6: `CKR_VENDOR_DEFINED` and
//! up carry a meaning only the vendor knows).
//!
//! A failure's [`Tier`] (`errors`) says how much to repair: a session or login failure is
//! repaired and the job retried once on the fresh session; a device failure asks `recovery`
//! to rebuild the context. A vendor-defined or unknown `CKR_*` says nothing about how far the
//! damage reaches. Treating it as a device failure would rebuild the PKCS#11 context, which
//! stops every session of the member (and, when the library itself is reinitialised, every
//! member sharing the module) for one odd answer. `errors` therefore classifies it as a
//! session failure: the worker answers the request with its error, as for any failure it
//! does not understand, and replaces its session. Only when such codes keep coming on the
//! same module — [`UNKNOWN_CODE_STREAK`] in a row, with no success in between, within
//! [`UNKNOWN_CODE_WINDOW`] — does the worker escalate to the device tier.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Shared;
use super::errors::is_unknown_code;
use crate::hsm::{HsmError, Tier};

/// Unknown-code failures in a row on one module that make the worker rebuild the context.
///
/// Three: one is noise (a vendor's transient refusal), two can be two sessions hitting the
/// same transient condition at once, and a third in a row with nothing served in between
/// means the module answers nothing else. Fresh sessions after each failure have already
/// been tried by then, so the next repair tier is the device's.
pub const UNKNOWN_CODE_STREAK: u32 = 3;

/// How close together the failures of a streak must be.
///
/// Ten seconds: a failing device produces a streak within a few requests (milliseconds at
/// any real load), while a vendor code that turns up a few times an hour on an otherwise
/// healthy module never adds up to a rebuild.
pub const UNKNOWN_CODE_WINDOW: Duration = Duration::from_secs(10);

/// What a job's result asks its worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Repair {
    /// What to repair.
    pub(super) tier: Tier,
    /// Whether the job may run again on the repaired session (once, deadline permitting).
    pub(super) retry: bool,
}

/// The repair `result` asks for, if any; records the result in the module's streak of
/// unknown return codes.
///
/// An unknown code is not retried: the request fails with its error as it always did, and a
/// retry would count one request's trouble twice towards the streak.
pub(super) fn after<T>(shared: &Shared, result: &Result<T, HsmError>) -> Option<Repair> {
    match result {
        Ok(_) => {
            shared.module.unknown_codes().succeeded();
            None
        }
        Err(HsmError::Pkcs11(failure)) if is_unknown_code(failure) => Some(Repair {
            tier: unknown_code_tier(shared),
            retry: false,
        }),
        Err(HsmError::Pkcs11(failure)) if failure.tier != Tier::Request => Some(Repair {
            tier: failure.tier,
            retry: matches!(failure.tier, Tier::Session | Tier::Login),
        }),
        Err(_) => None,
    }
}

/// The tier to repair after an unknown return code: the session, or the device when the code
/// completes a streak on the module.
pub(super) fn unknown_code_tier(shared: &Shared) -> Tier {
    if shared.module.unknown_codes().failed(Instant::now()) {
        tracing::error!(
            streak = UNKNOWN_CODE_STREAK,
            window = ?UNKNOWN_CODE_WINDOW,
            "unknown PKCS#11 return codes keep coming; treating them as a device failure"
        );
        Tier::Device
    } else {
        Tier::Session
    }
}

/// The current streak of unknown-code failures on one module.
#[derive(Debug, Default)]
pub(super) struct UnknownCodes {
    streak: Mutex<Streak>,
    /// Whether a streak may be running: every successful job checks it, and only takes the
    /// lock when it is set.
    open: AtomicBool,
}

#[derive(Debug, Default)]
struct Streak {
    /// Failures in the streak.
    count: u32,
    /// When the streak's first failure happened; `None`: no streak.
    since: Option<Instant>,
}

impl UnknownCodes {
    /// Records an unknown-code failure at `now`; `true` when it completes a streak, which
    /// then starts over (one rebuild per streak).
    pub(super) fn failed(&self, now: Instant) -> bool {
        let mut streak = self.streak.lock();
        match streak.since {
            Some(since) if now.saturating_duration_since(since) <= UNKNOWN_CODE_WINDOW => {
                streak.count += 1;
            }
            _ => {
                *streak = Streak {
                    count: 1,
                    since: Some(now),
                };
            }
        }
        if streak.count >= UNKNOWN_CODE_STREAK {
            *streak = Streak::default();
            self.open.store(false, Ordering::Relaxed);
            return true;
        }
        self.open.store(true, Ordering::Relaxed);
        false
    }

    /// A call on the module succeeded: the failures so far were not the device.
    pub(super) fn succeeded(&self) {
        // A stale `false` only lets one streak survive a concurrent success: harmless.
        if self.open.swap(false, Ordering::Relaxed) {
            *self.streak.lock() = Streak::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_within_the_window_escalates_once() {
        let codes = UnknownCodes::default();
        let start = Instant::now();
        for i in 1..UNKNOWN_CODE_STREAK {
            assert!(!codes.failed(start + Duration::from_millis(u64::from(i))));
        }
        assert!(codes.failed(start + Duration::from_secs(1)));
        // The streak starts over after escalating.
        assert!(!codes.failed(start + Duration::from_secs(2)));
    }

    #[test]
    fn a_success_or_the_window_ends_the_streak() {
        let codes = UnknownCodes::default();
        let start = Instant::now();
        for _ in 1..UNKNOWN_CODE_STREAK {
            assert!(!codes.failed(start));
        }
        codes.succeeded();
        assert!(!codes.failed(start));

        let codes = UnknownCodes::default();
        for _ in 1..UNKNOWN_CODE_STREAK {
            assert!(!codes.failed(start));
        }
        let late = start + UNKNOWN_CODE_WINDOW + Duration::from_millis(1);
        assert!(!codes.failed(late), "the window passed: a new streak");
    }
}
