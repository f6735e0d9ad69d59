//! Request bodies before authentication: the size cap (TR-12, E-17), a process-wide budget for
//! the bytes held for requests not yet authenticated, and draining a body that is answered
//! early.
//!
//! Why drain: a request answered before its body is read (404, 405) otherwise ends in an
//! HTTP/2 `RST_STREAM` or an HTTP/1.1 close while the client is still sending, and common
//! clients (Debian's curl 7.88 among them) then report a transport error and drop the answer.
//! Reading and discarding the rest of the body, up to the cap and within the body timeout, lets
//! every early error arrive intact; nothing is buffered while draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use http::header;
use http::request::Parts;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::xks::{ErrorName, XksError};

/// Bytes of request bodies the whole process may hold for requests that are not yet
/// authenticated. Without it, many connections × streams × a body one byte short of the cap
/// would let anyone without a credential make the process hold gigabytes.
///
/// One connection may hold at most a fair share of it ([`PreAuthBudget::per_connection`]), so
/// a handful of connections stalling their bodies cannot spend the whole budget and turn every
/// other client's request into a 429.
pub struct PreAuthBudget {
    bytes: Arc<Semaphore>,
    capacity: usize,
    per_connection: usize,
}

/// Bytes of the pre-authentication budget held by one connection's requests. The server
/// puts one into every request's extensions, shared by the requests of a connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectionShare(Arc<AtomicUsize>);

/// Budget held by one request until it is authenticated (or fails); released on drop.
pub(super) struct Reserved {
    permit: Option<OwnedSemaphorePermit>,
    share: Option<ConnectionShare>,
    /// Bytes of `share` this request holds.
    held: usize,
}

impl Reserved {
    fn new(share: Option<ConnectionShare>) -> Self {
        Self {
            permit: None,
            share,
            held: 0,
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(share) = &self.share {
            share.0.fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

/// Why a body was not read: the error to answer, and the unread rest of the body when it
/// should be drained first (so that the answer arrives, see the module docs).
pub(super) struct Refused {
    pub(super) error: ApiError,
    pub(super) unread: Option<Body>,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Self {
        Self {
            error,
            unread: None,
        }
    }
}

/// The share of the budget one connection may hold: a sixteenth, but at least one whole body.
const CONNECTION_SHARE_DIVISOR: usize = 16;

impl PreAuthBudget {
    /// A budget of `capacity` bytes, of which one connection may hold a sixteenth, and at
    /// least `max_body` (one whole body).
    pub fn new(capacity: usize, max_body: usize) -> Self {
        let capacity = capacity.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(capacity)),
            capacity,
            per_connection: (capacity / CONNECTION_SHARE_DIVISOR).max(max_body),
        }
    }

    /// Bytes currently held by unauthenticated requests.
    pub fn in_use(&self) -> usize {
        self.capacity - self.bytes.available_permits()
    }

    /// The most one connection's requests may hold at once.
    pub fn per_connection(&self) -> usize {
        self.per_connection
    }

    /// Takes `n` more bytes for `reserved`, or fails at once when its connection's share or
    /// the whole budget is spent.
    fn take(&self, reserved: &mut Reserved, n: usize) -> Result<(), ApiError> {
        let Ok(permits) = u32::try_from(n) else {
            return Err(budget_spent());
        };
        if let Some(share) = &reserved.share {
            let before = share.0.fetch_add(n, Ordering::AcqRel);
            if before + n > self.per_connection {
                share.0.fetch_sub(n, Ordering::AcqRel);
                return Err(budget_spent());
            }
            reserved.held += n;
        }
        match Arc::clone(&self.bytes).try_acquire_many_owned(permits) {
            Ok(permit) => {
                match &mut reserved.permit {
                    Some(held) => held.merge(permit),
                    None => reserved.permit = Some(permit),
                }
                Ok(())
            }
            Err(_) => Err(budget_spent()),
        }
    }
}

fn budget_spent() -> ApiError {
    XksError::new(
        ErrorName::ThrottlingException,
        "the proxy holds as many unauthenticated request bytes as it allows; retry later",
    )
    .into()
}

fn too_large(max: usize) -> ApiError {
    XksError::unsupported(format!("the request body exceeds {max} bytes")).into()
}

/// The `Content-Length` the client declared, if any.
fn declared_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads the whole body, at most `max` bytes (TR-12, E-17), charging the buffer's memory to
/// `budget` (and to the connection's share, when the server gave one) until the caller drops
/// the returned [`Reserved`] (after authentication).
pub(super) async fn read_capped(
    parts: &Parts,
    mut body: Body,
    max: usize,
    budget: &PreAuthBudget,
) -> Result<(Bytes, Reserved), Refused> {
    let declared = declared_length(parts);
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large(max).into());
    }
    let mut reserved = Reserved::new(parts.extensions.get::<ConnectionShare>().cloned());
    // Sized up front when the length is known, so the buffer never grows past what is charged.
    let initial = declared.map_or(0, |n| usize::try_from(n).unwrap_or(max).min(max));
    let mut charged = 0;
    let mut buffer = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::from(XksError::validation("the request body could not be read"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not part of the signed body
        };
        if buffer.len() + data.len() > max {
            return Err(too_large(max).into());
        }
        // Grow by doubling, never past `max`, so one body never costs more than the cap.
        let needed = buffer.len() + data.len();
        if needed > buffer.capacity() {
            let target = needed.max(initial).max(buffer.capacity() * 2).min(max);
            buffer.reserve_exact(target - buffer.len());
        }
        // Every allocation is charged before it is filled.
        if buffer.capacity() > charged {
            let more = buffer.capacity() - charged;
            if let Err(spent) = budget.take(&mut reserved, more) {
                // Answer the throttled request intact too; draining buffers nothing.
                return Err(Refused {
                    error: spent,
                    unread: Some(body),
                });
            }
            charged = buffer.capacity();
        }
        buffer.extend_from_slice(&data);
    }
    Ok((Bytes::from(buffer), reserved))
}

/// Reads and drops the rest of `body`, at most `max` bytes, so that an early answer reaches
/// the client (module docs). Stops at the first error or once `max` bytes were read.
pub(super) async fn discard(mut body: Body, max: usize) {
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen = seen.saturating_add(data.len());
            if seen > max {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_returned_on_drop() {
        let budget = PreAuthBudget::new(100, 10);
        let mut first = Reserved::new(None);
        budget.take(&mut first, 60).unwrap();
        budget.take(&mut first, 30).unwrap();
        assert_eq!(budget.in_use(), 90);
        let mut second = Reserved::new(None);
        assert!(budget.take(&mut second, 11).is_err());
        budget.take(&mut second, 10).unwrap();
        drop(first);
        assert_eq!(budget.in_use(), 10);
        drop(second);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn one_connection_holds_at_most_its_share() {
        // 1600 bytes in all, a sixteenth (100) per connection.
        let budget = PreAuthBudget::new(1600, 10);
        assert_eq!(budget.per_connection(), 100);
        let busy = ConnectionShare::default();
        let mut a = Reserved::new(Some(busy.clone()));
        let mut b = Reserved::new(Some(busy.clone()));
        budget.take(&mut a, 60).unwrap();
        assert!(
            budget.take(&mut b, 41).is_err(),
            "over the connection's share"
        );
        budget.take(&mut b, 40).unwrap();
        // Another connection is not affected.
        let mut other = Reserved::new(Some(ConnectionShare::default()));
        budget.take(&mut other, 100).unwrap();
        drop(a);
        budget.take(&mut b, 60).unwrap();
        drop((b, other));
        assert_eq!(busy.0.load(Ordering::Acquire), 0);
        assert_eq!(budget.in_use(), 0);
    }
}
