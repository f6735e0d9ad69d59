//! Whether a connection is idle: requests in progress on it, and since when none that counts
//! has been.
//!
//! Only a request whose response carries [`KeepsConnectionAlive`] (the XKS API sets it once a
//! request is authenticated) restarts the idle clock. Anything else, `/ping`, a 404 or a 401,
//! keeps the connection open while it runs but does not extend its life: a client cannot hold
//! a connection slot by sending a cheap unauthenticated request every few seconds.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

pub(super) use crate::http::KeepsConnectionAlive;

/// Requests in progress on one connection, and when the last one that counts ended.
pub(super) struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

/// Read and written together, so that a reader never sees a count without its timestamp.
struct State {
    in_flight: usize,
    /// Whether a request that counts ever finished: before that the shorter limit applies.
    served: bool,
    /// When the last request that counts finished (or the connection opened).
    last_useful: Instant,
}

/// Marks one request in progress until dropped.
pub(super) struct InProgress {
    activity: Arc<Activity>,
    useful: bool,
}

impl InProgress {
    /// The request counts as activity (its response carried [`KeepsConnectionAlive`]).
    pub(super) fn counts(&mut self) {
        self.useful = true;
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        {
            let mut state = self.activity.state.lock();
            state.in_flight = state.in_flight.saturating_sub(1);
            if self.useful {
                state.served = true;
                state.last_useful = Instant::now();
            }
        }
        self.activity.changed.notify_waiters();
    }
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                in_flight: 0,
                served: false,
                last_useful: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    pub(super) fn begin(self: &Arc<Self>) -> InProgress {
        self.state.lock().in_flight += 1;
        self.changed.notify_waiters();
        InProgress {
            activity: Arc::clone(self),
            useful: false,
        }
    }

    /// When the connection counts as idle if nothing changes: `None` while a request runs.
    fn idle_at(&self, first: Duration, idle: Duration, since: Instant) -> Option<Instant> {
        let state = self.state.lock();
        if state.in_flight > 0 {
            return None;
        }
        let limit = if state.served { idle } else { first.min(idle) };
        Some(state.last_useful.max(since) + limit)
    }

    /// Resolves once no request is in progress and none that counts has finished for `idle`
    /// (`first` before the first one), counting from `since` at the earliest.
    pub(super) async fn idle(&self, first: Duration, idle: Duration, since: Instant) {
        loop {
            let mut changed = pin!(self.changed.notified());
            // Registered before the state is read, so no change between the two is missed.
            changed.as_mut().enable();
            let Some(deadline) = self.idle_at(first, idle, since) else {
                changed.await;
                continue;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = changed => {}
            }
        }
    }
}
