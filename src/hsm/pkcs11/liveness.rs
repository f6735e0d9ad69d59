//! How many of a pool's workers hold a PKCS#11 session (style guide "PKCS#11 work runs on
//! dedicated blocking workers"; the worker pool in `pool`).
//!
//! A worker that lost its session and waits out its reopen backoff must not take jobs from
//! the shared queue while other workers could serve them: it could only fail them. It parks
//! here instead, until its backoff ends, until no worker holds a session any more (then it
//! takes jobs again, to fail them fast rather than let them wait for the deadline), or until
//! the pool stops.

use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// The count of workers with a session, and a way to wait for it to drop to zero.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Workers holding a session.
    sessions: usize,
    /// Set at shutdown: parked workers go back to the queue to see it closed.
    stopping: bool,
}

impl Liveness {
    /// Starts with `sessions` workers holding a session.
    pub(super) fn new(sessions: usize) -> Self {
        Self {
            state: Mutex::new(State {
                sessions,
                stopping: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// A worker opened a session.
    pub(super) fn gained(&self) {
        self.state.lock().sessions += 1;
    }

    /// A worker lost (or gave up) its session; wakes parked workers when it was the last.
    pub(super) fn lost(&self) {
        let mut state = self.state.lock();
        state.sessions = state.sessions.saturating_sub(1);
        if state.sessions == 0 {
            self.changed.notify_all();
        }
    }

    /// Whether any worker holds a session.
    pub(super) fn any(&self) -> bool {
        self.state.lock().sessions > 0
    }

    /// Wakes every parked worker for good (pool shutdown).
    pub(super) fn stop(&self) {
        self.state.lock().stopping = true;
        self.changed.notify_all();
    }

    /// Parks a worker without a session while other workers hold one, until `until`.
    ///
    /// `true`: `until` came while others still serve (time to try a reopen); `false`: no
    /// worker holds a session, or the pool is stopping, so the caller should go to the queue.
    pub(super) fn wait_while_others_serve(&self, until: Instant) -> bool {
        let mut state = self.state.lock();
        loop {
            if state.stopping || state.sessions == 0 {
                return false;
            }
            if Instant::now() >= until {
                return true;
            }
            // Spurious and timed-out wakeups both re-check the state above.
            let _ = self.changed.wait_until(&mut state, until);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_parked_worker_returns_when_its_backoff_ends_while_others_serve() {
        let liveness = Liveness::new(1);
        let started = Instant::now();
        assert!(liveness.wait_while_others_serve(started + Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn a_parked_worker_wakes_when_the_last_session_goes_or_the_pool_stops() {
        let liveness = Arc::new(Liveness::new(2));
        let far = Instant::now() + Duration::from_secs(30);
        let parked = {
            let liveness = Arc::clone(&liveness);
            std::thread::spawn(move || liveness.wait_while_others_serve(far))
        };
        liveness.lost();
        assert!(liveness.any());
        liveness.lost();
        assert!(!liveness.any());
        assert_eq!(parked.join().ok(), Some(false));
        assert!(!liveness.wait_while_others_serve(far), "nobody serves");

        liveness.gained();
        let parked = {
            let liveness = Arc::clone(&liveness);
            std::thread::spawn(move || liveness.wait_while_others_serve(far))
        };
        liveness.stop();
        assert_eq!(parked.join().ok(), Some(false));
    }
}
