//! The admin listener: Prometheus metrics, liveness and readiness probes, and reload.
//!
//! Plain HTTP and unauthenticated, so it binds to loopback unless the operator chooses
//! otherwise (and then protects it with a network policy). It never serves the XKS API.
//!
//! - `GET /metrics`: every metric, in OpenMetrics when the `Accept` header asks for it (as
//!   Prometheus does), else in the Prometheus text format 0.0.4 (curl, `promtool`).
//! - `GET /healthz`: 200 while the process runs (liveness).
//! - `GET /readyz`: 200 when the HSM passes the deep health check (cached as for
//!   GetHealthStatus), else 503 (readiness: take the replica out of the load balancer).
//! - `POST /admin/reload`: same as SIGHUP; 200 with a report, 400 if the new configuration is
//!   rejected (the old one keeps serving).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;

use crate::http::{AppState, json_response};
use crate::reload::Reloader;

/// Time a readiness probe may spend on a fresh deep health check.
const READINESS_BUDGET: Duration = Duration::from_secs(2);

struct Admin {
    app: Arc<AppState>,
    reloader: Option<Arc<Reloader>>,
}

/// The admin routes. Without a `reloader`, `POST /admin/reload` answers 501.
pub fn router(app: Arc<AppState>, reloader: Option<Arc<Reloader>>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/reload", post(reload))
        .fallback(not_found)
        .with_state(Arc::new(Admin { app, reloader }))
}

async fn metrics(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = admin.app.metrics().exposition(accept);
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({"status": "alive"}).to_string())
}

async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    match admin.app.ready(Instant::now() + READINESS_BUDGET).await {
        Ok(()) => json_response(StatusCode::OK, json!({"status": "ready"}).to_string()),
        Err(err) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready", "reason": err.message()}).to_string(),
        ),
    }
}

async fn reload(State(admin): State<Arc<Admin>>) -> Response {
    let Some(reloader) = admin.reloader.clone() else {
        let body = json!({"result": "unsupported", "error": "reload is not available"});
        return json_response(StatusCode::NOT_IMPLEMENTED, body.to_string());
    };
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(report)) => json_response(
            StatusCode::OK,
            json!({"result": "reloaded", "report": report}).to_string(),
        ),
        Ok(Err(error)) => json_response(
            StatusCode::BAD_REQUEST,
            json!({"result": "rejected", "error": error}).to_string(),
        ),
        Err(_) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"result": "failed", "error": "the reload task failed"}).to_string(),
        ),
    }
}

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        json!({"error": "not found"}).to_string(),
    )
}
