//! What the HSM layer reports about itself: the one seam between PKCS#11 and whatever records
//! it (the process's Prometheus metrics, a test's counters, or nothing), so the backend never
//! depends on the metrics module.

use std::time::Duration;

/// Receives the HSM layer's measurements. Implementations must be cheap and never block: they
/// are called on the PKCS#11 worker threads around every call.
pub trait HsmObserver: Send + Sync + 'static {
    /// A PKCS#11 function (`C_Encrypt`, …) returned after `elapsed`.
    fn hsm_call(&self, function: &'static str, elapsed: Duration);

    /// `delta` sessions entered (or, negative, left) `state` (`idle` or `in_use`).
    fn add_hsm_sessions(&self, state: &str, delta: i64);

    /// One session moved from idle to in use (`busy`) or back.
    fn hsm_session_busy(&self, busy: bool);
}

/// Records nothing: for one-shot commands (`keys create`, …) that report no metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl HsmObserver for NoObserver {
    fn hsm_call(&self, _: &'static str, _: Duration) {}
    fn add_hsm_sessions(&self, _: &str, _: i64) {}
    fn hsm_session_busy(&self, _: bool) {}
}
