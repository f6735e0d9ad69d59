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
pub struct PreAuthBudget {
    bytes: Arc<Semaphore>,
    capacity: usize,
}

/// Budget held by one request until it is authenticated (or fails); released on drop.
pub(super) struct Reserved(Option<OwnedSemaphorePermit>);

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

impl PreAuthBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Bytes currently held by unauthenticated requests.
    pub fn in_use(&self) -> usize {
        self.capacity - self.bytes.available_permits()
    }

    /// Takes `n` more bytes for `reserved`, or fails at once when the budget is spent.
    fn take(&self, reserved: &mut Reserved, n: usize) -> Result<(), ApiError> {
        let Ok(n) = u32::try_from(n) else {
            return Err(budget_spent());
        };
        match Arc::clone(&self.bytes).try_acquire_many_owned(n) {
            Ok(permit) => {
                match &mut reserved.0 {
                    Some(held) => held.merge(permit),
                    None => reserved.0 = Some(permit),
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

/// Reads the whole body, at most `max` bytes (TR-12, E-17), charging every byte to `budget`
/// until the caller drops the returned [`Reserved`] (after authentication).
pub(super) async fn read_capped(
    parts: &Parts,
    mut body: Body,
    max: usize,
    budget: &PreAuthBudget,
) -> Result<(Bytes, Reserved), Refused> {
    if declared_length(parts).is_some_and(|n| n > max as u64) {
        return Err(too_large(max).into());
    }
    let mut reserved = Reserved(None);
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
        if let Err(spent) = budget.take(&mut reserved, data.len()) {
            // Answer the throttled request intact too; draining buffers nothing.
            return Err(Refused {
                error: spent,
                unread: Some(body),
            });
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
        let budget = PreAuthBudget::new(100);
        let mut first = Reserved(None);
        budget.take(&mut first, 60).unwrap();
        budget.take(&mut first, 30).unwrap();
        assert_eq!(budget.in_use(), 90);
        let mut second = Reserved(None);
        assert!(budget.take(&mut second, 11).is_err());
        budget.take(&mut second, 10).unwrap();
        drop(first);
        assert_eq!(budget.in_use(), 10);
        drop(second);
        assert_eq!(budget.in_use(), 0);
    }
}
