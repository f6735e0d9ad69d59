//! Which HSM member served a request (audit `hsm_member`, LOG-4), for backends whose members
//! change per request (an HSM fleet).
//!
//! The caller wraps one backend call in [`recording_member`]; a backend that picks a member
//! per request reports it with [`note_member`] while that call runs on the same task. Backends
//! with a single member report nothing and the caller falls back to
//! [`KeyBackend::member_id`](super::KeyBackend::member_id).

use std::cell::RefCell;
use std::future::Future;

tokio::task_local! {
    static SERVED_BY: RefCell<Option<String>>;
}

/// Runs `call` and returns its output with the member it noted, if any.
pub async fn recording_member<F: Future>(call: F) -> (F::Output, Option<String>) {
    SERVED_BY
        .scope(RefCell::new(None), async move {
            let output = call.await;
            let member = SERVED_BY.with(|served| served.borrow_mut().take());
            (output, member)
        })
        .await
}

/// Records that member `id` served the current call; a no-op outside [`recording_member`].
pub fn note_member(id: &str) {
    let _ = SERVED_BY.try_with(|served| *served.borrow_mut() = Some(id.to_owned()));
}
