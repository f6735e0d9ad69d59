//! The bridge from the connection's tower service to hyper (XKS spec §1.1 TR-2, TR-3: the
//! same service over HTTP/1.1 and HTTP/2), with each request's future boxed.
//!
//! Why boxed: hyper's HTTP/2 server spawns one tokio task per stream holding the service's
//! future, and tokio allocates a task with 128-byte alignment. Unboxed, the future (the whole
//! `Request`, the router's and the middleware's state) made that task 896 bytes, which glibc
//! serves through `posix_memalign`'s large-request path: `malloc_consolidate` on every
//! request, and the future copied through several stack frames on its way into the task.
//! Boxed, the stream task is a few hundred bytes and the request moves once, into an ordinary
//! (thread-cached) allocation. HTTP/1.1 pays one small allocation per request for this; hyper's
//! HTTP/1.1 dispatcher otherwise reuses one slot per connection.

use std::convert::Infallible;
use std::pin::Pin;

use hyper::body::Incoming;
use tower::{Service, ServiceExt};

/// The boxed future of one request.
type BoxedResponse<R> = Pin<Box<dyn Future<Output = Result<R, Infallible>> + Send>>;

/// A `hyper::service::Service` that runs a clone of the tower service `S` for each request
/// (readiness, then the call, as `tower::ServiceExt::oneshot` does) inside one boxed future.
#[derive(Clone)]
pub(super) struct BoxedService<S>(pub(super) S);

impl<S> hyper::service::Service<http::Request<Incoming>> for BoxedService<S>
where
    S: Service<http::Request<Incoming>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: 'static,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = BoxedResponse<S::Response>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        Box::pin(self.0.clone().oneshot(request))
    }
}
