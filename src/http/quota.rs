//! Per-key-store request quotas (spec "URI structure": a proxy MAY throttle each path prefix,
//! URI-3): a token bucket refilled at `requests_per_second`, holding at most `burst`
//! requests. An empty bucket answers 429 `ThrottlingException` at once.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::RateLimit;

/// A token bucket.
#[derive(Debug)]
pub(super) struct TokenBucket {
    per_second: f64,
    burst: f64,
    /// Tokens left and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub(super) fn new(limit: RateLimit) -> Self {
        let burst = f64::from(limit.burst);
        Self {
            per_second: f64::from(limit.requests_per_second),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// The bucket for `limit` after a reload: this very bucket when the limit is unchanged,
    /// else a new one holding the tokens left here (at most its burst), so a reload never
    /// hands out a fresh burst.
    pub(super) fn reconfigured(self: &Arc<Self>, limit: RateLimit) -> Arc<Self> {
        let per_second = f64::from(limit.requests_per_second);
        let burst = f64::from(limit.burst);
        if per_second == self.per_second && burst == self.burst {
            return Arc::clone(self);
        }
        let now = Instant::now();
        let (tokens, since) = *self.state.lock();
        let refilled = now.saturating_duration_since(since).as_secs_f64() * self.per_second;
        let left = (tokens + refilled).min(self.burst).min(burst);
        Arc::new(Self {
            per_second,
            burst,
            state: Mutex::new((left, now)),
        })
    }

    /// Takes one token if there is one.
    pub(super) fn try_take(&self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock();
        let (tokens, since) = *state;
        let refilled = now.saturating_duration_since(since).as_secs_f64() * self.per_second;
        let available = (tokens + refilled).min(self.burst);
        if available >= 1.0 {
            *state = (available - 1.0, now);
            true
        } else {
            *state = (available, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn uri_3_bursts_then_refills_at_the_rate() {
        let bucket = TokenBucket::new(RateLimit {
            requests_per_second: 10,
            burst: 3,
        });
        let start = Instant::now();
        assert!((0..3).all(|_| bucket.try_take_at(start)));
        assert!(!bucket.try_take_at(start));
        // 10/s: one token every 100 ms.
        assert!(!bucket.try_take_at(start + Duration::from_millis(50)));
        assert!(bucket.try_take_at(start + Duration::from_millis(110)));
        assert!(!bucket.try_take_at(start + Duration::from_millis(120)));
        // Never more than the burst, however long it rested.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.try_take_at(later)));
        assert!(!bucket.try_take_at(later));
    }
}
