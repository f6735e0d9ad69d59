//! Whether a connection is idle: requests in progress on it, and since when none is.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Requests in progress on one connection, and when the last one ended.
pub(super) struct Activity {
    in_flight: AtomicUsize,
    /// Whether a request ever started: before the first one the shorter limit applies.
    served: AtomicBool,
    /// When the connection last went from busy to idle (or started).
    idle_since: Mutex<Instant>,
    changed: Notify,
}

/// Marks one request in progress until dropped.
pub(super) struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock() = Instant::now();
        }
        self.0.changed.notify_waiters();
    }
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            changed: Notify::new(),
        }
    }

    pub(super) fn begin(self: &Arc<Self>) -> InProgress {
        self.served.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        InProgress(Arc::clone(self))
    }

    /// Resolves once no request has been in progress for `idle` (`first` before the first
    /// request), counting from `since` at the earliest.
    pub(super) async fn idle(&self, first: Duration, idle: Duration, since: Instant) {
        loop {
            let mut changed = pin!(self.changed.notified());
            // Registered before the state is read, so no change between the two is missed.
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            let limit = if self.served.load(Ordering::Acquire) {
                idle
            } else {
                first.min(idle)
            };
            let deadline = (*self.idle_since.lock()).max(since) + limit;
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
