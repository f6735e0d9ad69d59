//! The listener: every request is `POST /` with `X-Amz-Target`; one handler parses the
//! envelope, checks the optional SigV4, dispatches and answers with `x-amzn-RequestId`. Plain
//! HTTP by default, HTTPS when a certificate is configured. One log line per request with the
//! request id, operation and outcome; never bodies, plaintext or keys.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::aws_layer;
use crate::error::{ErrorName, KmsError};
use crate::inbound_auth;
use crate::ops::{Call, Front, dispatch};
use crate::protocol::{Input, TARGET_PREFIX, error_response, ok_response};

/// Largest request body read (a 6,144-byte blob is about 8 KiB in Base64 JSON).
const MAX_BODY: usize = 1024 * 1024;

/// The router: one handler for every path and method.
pub fn router(front: Arc<Front>) -> Router {
    Router::new().fallback(handle).with_state(front)
}

async fn handle(State(front): State<Arc<Front>>, request: Request<Body>) -> Response {
    // A failed random generator still gets an answer; the id is then not unique.
    let request_id =
        aws_layer::uuid_v4().unwrap_or_else(|_| "00000000-0000-4000-8000-000000000000".into());
    let (parts, body) = request.into_parts();
    let operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .unwrap_or_default()
        .to_owned();
    let result = async {
        if parts.method != http::Method::POST {
            return Err(KmsError::new(
                ErrorName::UnknownOperation,
                "The KMS API takes POST requests only",
            ));
        }
        let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            KmsError::new(ErrorName::Serialization, "The request body is too large")
        })?;
        if let Some(credential) = &front.settings.inbound {
            inbound_auth::verify(credential, &parts, &body)?;
        }
        let input = Input::parse(&body)?;
        let call = Call {
            front: &front,
            request_id: &request_id,
            operation: &operation,
        };
        dispatch(&call, &input).await
    }
    .await;
    match result {
        Ok(value) => {
            tracing::info!(request_id, operation, outcome = "success", "kms request");
            ok_response(&request_id, &value)
        }
        Err(err) => {
            tracing::info!(
                request_id,
                operation,
                outcome = "failure",
                error = err.name.as_str(),
                message = err.message,
                "kms request"
            );
            error_response(&request_id, &err)
        }
    }
}

/// Serves `router` on `listener` (HTTPS if `tls`) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let acceptor = TlsAcceptor::from(tls);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%err, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
