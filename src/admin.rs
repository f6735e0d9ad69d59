//! The admin listener: Prometheus metrics, liveness and readiness probes, and reload.
//!
//! Plain HTTP, so it binds to loopback unless the operator chooses otherwise (and then
//! protects it with a network policy; the proxy warns at startup). It never serves the XKS API.
//!
//! Browsers are kept out: every request whose `Host` is a name other than `localhost` or one
//! of `admin.allowed_hosts` is refused (IP literals pass), so a DNS-rebinding page cannot read
//! `/metrics`; reload needs a bearer token from `admin.reload_token_file` (no file: reload over
//! HTTP is off) and refuses any request carrying `Origin`, which browsers add to cross-origin
//! posts.
//!
//! - `GET /metrics`: every metric, in OpenMetrics when the `Accept` header asks for it (as
//!   Prometheus does), else in the Prometheus text format 0.0.4 (curl, `promtool`).
//! - `GET /healthz`: 200 while the process runs (liveness).
//! - `GET /readyz`: 200 when the HSM passes the deep health check (cached as for
//!   GetHealthStatus), else 503 (readiness: take the replica out of the load balancer).
//! - `POST /admin/reload` with `Authorization: Bearer <token>`: same as SIGHUP; 200 with a
//!   report, 400 if the new configuration is rejected (the old one keeps serving), 401 without
//!   the right token, 403 from a browser or while reload over HTTP is off.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::config::AdminSettings;
use crate::http::{AppState, json_response};
use crate::reload::Reloader;

/// Time a readiness probe may spend on a fresh deep health check.
const READINESS_BUDGET: Duration = Duration::from_secs(2);

struct Admin {
    app: Arc<AppState>,
    reloader: Option<Arc<Reloader>>,
    settings: AdminSettings,
}

/// The admin routes. Without a `reloader`, `POST /admin/reload` answers 501.
pub fn router(
    app: Arc<AppState>,
    reloader: Option<Arc<Reloader>>,
    settings: AdminSettings,
) -> Router {
    let admin = Arc::new(Admin {
        app,
        reloader,
        settings,
    });
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/reload", post(reload))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&admin),
            only_allowed_hosts,
        ))
        .with_state(admin)
}

/// Refuses requests addressed to a host name the operator did not list: a page that rebinds
/// its own DNS name to this address still sends its own name as `Host`.
async fn only_allowed_hosts(
    State(admin): State<Arc<Admin>>,
    request: Request,
    next: Next,
) -> Response {
    // Fail closed: a Host that is not text is refused; no Host at all (HTTP/1.0, which no
    // browser sends) is let through.
    let host = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok(),
        None => Some(request.uri().authority().map_or("", |a| a.as_str())),
    };
    let allowed =
        host.is_some_and(|h| h.is_empty() || host_allowed(h, &admin.settings.allowed_hosts));
    if allowed {
        return next.run(request).await;
    }
    tracing::warn!(target: "xks_proxy::admin", "admin request for a host that is not allowed refused");
    refusal(
        StatusCode::FORBIDDEN,
        "this Host is not allowed; add it to admin.allowed_hosts",
    )
}

/// IP literals (any port), `localhost` and the configured names are allowed.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let is_port = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let name = match host.strip_prefix('[') {
        // `[v6]:port` or `[v6]`, nothing else after the bracket
        Some(rest) => {
            return rest.split_once(']').is_some_and(|(ip, after)| {
                ip.parse::<IpAddr>().is_ok()
                    && (after.is_empty() || after.strip_prefix(':').is_some_and(is_port))
            });
        }
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn refusal(status: StatusCode, error: &str) -> Response {
    json_response(
        status,
        json!({"result": "refused", "error": error}).to_string(),
    )
}

/// Why a reload request is refused, if it is.
fn reload_refusal(settings: &AdminSettings, headers: &HeaderMap) -> Option<Response> {
    if headers.contains_key(header::ORIGIN) {
        return Some(refusal(
            StatusCode::FORBIDDEN,
            "reload is not accepted from a browser",
        ));
    }
    let Some(path) = &settings.reload_token_file else {
        return Some(refusal(
            StatusCode::FORBIDDEN,
            "reload over HTTP is off: set admin.reload_token_file, or send SIGHUP",
        ));
    };
    let expected = match std::fs::read_to_string(path) {
        Ok(text) => Zeroizing::new(text),
        Err(e) => {
            tracing::error!(error = %e, "cannot read admin.reload_token_file; reload refused");
            return Some(refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the reload token file cannot be read",
            ));
        }
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let expected = expected.trim();
    let matches =
        !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()));
    if matches {
        None
    } else {
        tracing::warn!(target: "xks_proxy::admin", "reload refused: missing or wrong bearer token");
        let mut response = refusal(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"xks-proxy admin\""),
        );
        Some(response)
    }
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

async fn reload(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(refused) = reload_refusal(&admin.settings, &headers) {
        return refused;
    }
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

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn dns_rebinding_names_are_refused_ip_literals_and_listed_names_pass() {
        let listed = ["metrics.internal".to_owned()];
        for ok in [
            "127.0.0.1:9443",
            "127.0.0.1",
            "10.1.2.3:9443",
            "[::1]:9443",
            "[::1]",
            "localhost:9443",
            "LOCALHOST",
            "metrics.internal:9443",
            "Metrics.Internal",
        ] {
            assert!(host_allowed(ok, &listed), "{ok}");
        }
        for bad in [
            "evil.example:9443",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1.evil]:1",
            "[::1].evil",
            "[::1]:x",
            "localhost:",
            "localhost:9443x",
            "metrics.internal.evil",
            "",
        ] {
            assert!(!host_allowed(bad, &listed), "{bad}");
        }
    }
}
