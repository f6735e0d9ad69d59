//! The audit record: exactly one structured line per XKS API request (checklist §5.2 LOG-1,
//! LOG-4, LOG-6, LOG-8), plus the request metrics recorded from the same facts.
//!
//! The line is an `info` event with target [`TARGET`] (`xks_proxy::audit`), so operators can
//! route or filter it on its own, e.g. `[logging] level = "warn,xks_proxy::audit=info"`. With
//! `format = "json"` it is one JSON object per line; `format = "text"` gives the same fields
//! human-readable for development. Fields (snake_case), absent when unknown:
//!
//! | field | content |
//! |---|---|
//! | `timestamp`, `level`, `target` | added by the formatter; `target` is `xks_proxy::audit` |
//! | `message` | always `xks request` |
//! | `kms_request_id` | `requestMetadata.kmsRequestId` (LOG-1: correlates with CloudTrail) |
//! | `key_store` | the key store's configured name; absent for unknown paths |
//! | `operation` | `Encrypt`, `Decrypt`, `GetKeyMetadata` or `GetHealthStatus`; absent for unknown paths |
//! | `kms_operation` | `requestMetadata.kmsOperation`, e.g. `GenerateDataKey` |
//! | `aws_principal_arn` | `requestMetadata.awsPrincipalArn` |
//! | `kms_key_arn` | `requestMetadata.kmsKeyArn` |
//! | `kms_via_service` | `requestMetadata.kmsViaService` |
//! | `aws_source_vpc`, `aws_source_vpce` | `requestMetadata.awsSourceVpc` / `awsSourceVpce`, when present |
//! | `external_key_id` | the key id from the URI |
//! | `status` | the HTTP status answered |
//! | `outcome` | `success` (2xx) or `failure` |
//! | `error_name` | the XKS `errorName` of a failure |
//! | `reason` | why it failed: for a 401 the [`AuthError::reason`] code (`bad_signature`, `unknown_access_key_id`, `clock_skew`, …), otherwise the `errorMessage` sent to KMS |
//! | `data_bytes`, `aad_bytes` | decoded sizes of the plaintext (Encrypt) or ciphertext (Decrypt) and of the AAD: lengths only (LOG-8) |
//! | `duration_us` | time from request start to response, in microseconds (LOG-6) |
//! | `hsm_member` | the HSM member (token serial) that served the request, when it reached the HSM (LOG-4) |
//!
//! A request whose handler panics still gets its line (status 500, `InternalException`), and so
//! does one whose client went away before the answer (status 499, reason
//! `client closed the request`): every request that reached the handler is accounted for.
//!
//! `requestMetadata` is only known once the body has been authenticated and parsed, so a 401
//! or a malformed body has no `kms_request_id`. Never logged: plaintext, AAD or ciphertext
//! contents, IVs, tags, the `Authorization` header, signatures, secrets or PINs (LOG-2,
//! LOG-8). The request body is never formatted: only the validated metadata strings are.
//!
//! [`AuthError::reason`]: crate::auth::AuthError::reason

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::StatusCode;

use super::error::ApiError;
use super::routing::Operation;
use super::{ApiConfig, AppState, KeepsConnectionAlive};
use crate::authz::Verdict;
use crate::metrics::{Metrics, RequestLabels};
use crate::xks::XksError;
use crate::xks::wire::RequestMetadata;

/// The tracing target of the audit line.
pub const TARGET: &str = "xks_proxy::audit";

/// `key_store` metric label before a key store was resolved: a bounded value, never the path.
const NO_KEY_STORE: &str = "none";
/// `operation` metric label for a path that is no XKS API.
const UNKNOWN_OPERATION: &str = "unknown";

/// What is known about a request so far; filled in while it is handled, emitted once at the
/// end by [`AuditRecord::finish`].
#[derive(Debug, Default, Clone)]
pub(super) struct AuditRecord {
    /// The key store's name, once the path resolved.
    pub(super) key_store: Option<String>,
    /// The XKS API, once the path resolved.
    pub(super) operation: Option<&'static str>,
    /// The key id from the URI.
    pub(super) external_key_id: Option<String>,
    /// The parsed `requestMetadata`.
    pub(super) metadata: Option<RequestMetadata>,
    /// [`AuthError::reason`](crate::auth::AuthError::reason) of a SigV4 rejection.
    pub(super) auth_failure: Option<&'static str>,
    /// Decoded plaintext (Encrypt) or ciphertext (Decrypt) length.
    pub(super) data_bytes: Option<usize>,
    /// Decoded AAD length.
    pub(super) aad_bytes: Option<usize>,
    /// The HSM member that served the request.
    pub(super) hsm_member: Option<String>,
    /// The key version used (Encrypt, Decrypt, GetKeyMetadata).
    pub(super) key_version: Option<u32>,
    /// What refused the request besides an error of the HSM, e.g. `kill_switch`.
    pub(super) refused_by: Option<&'static str>,
    /// On a key store migrated from AWS's sample proxy: which AAD format opened the
    /// ciphertext (`aws_sample` or `spec`).
    pub(super) ciphertext_format: Option<&'static str>,
    /// The Cedar decision, when the key store has policies (LOG-5).
    pub(super) authorization: Option<Verdict>,
    /// Whether the request passed SigV4 (not logged: `auth_failure` and `status` say it).
    pub(super) authenticated: bool,
}

impl AuditRecord {
    /// Writes the audit line and records the request in `metrics`.
    pub(super) fn finish(
        self,
        metrics: &Metrics,
        status: StatusCode,
        error: Option<&ApiError>,
        elapsed: Duration,
    ) {
        let error_name = error.map(|e| e.name().as_str());
        let reason = self.auth_failure.or(match error {
            Some(ApiError::Xks(e)) => Some(e.message()),
            Some(ApiError::MethodNotAllowed { .. }) => Some("method not allowed"),
            None => None,
        });
        self.write(metrics, status, error_name, reason, elapsed);
    }

    /// A request that ended without an answer: its client went away.
    fn abandoned(self, metrics: &Metrics, elapsed: Duration) {
        let status = StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST);
        self.write(
            metrics,
            status,
            None,
            Some("client closed the request before the answer"),
            elapsed,
        );
    }

    fn write(
        self,
        metrics: &Metrics,
        status: StatusCode,
        error_name: Option<&str>,
        reason: Option<&str>,
        elapsed: Duration,
    ) {
        let meta = self.metadata.as_ref();
        let authz = self.authorization.as_ref();
        tracing::info!(
            target: TARGET,
            kms_request_id = meta.map(|m| m.kms_request_id.as_str()),
            key_store = self.key_store.as_deref(),
            operation = self.operation,
            kms_operation = meta.map(|m| m.kms_operation.as_str()),
            aws_principal_arn = meta.and_then(|m| m.aws_principal_arn.as_deref()),
            kms_key_arn = meta.and_then(|m| m.kms_key_arn.as_deref()),
            kms_via_service = meta.and_then(|m| m.kms_via_service.as_deref()),
            aws_source_vpc = meta.and_then(|m| m.aws_source_vpc.as_deref()),
            aws_source_vpce = meta.and_then(|m| m.aws_source_vpce.as_deref()),
            external_key_id = self.external_key_id.as_deref(),
            status = status.as_u16(),
            outcome = if status.is_success() { "success" } else { "failure" },
            error_name,
            reason,
            data_bytes = self.data_bytes,
            aad_bytes = self.aad_bytes,
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            hsm_member = self.hsm_member.as_deref(),
            key_version = self.key_version,
            refused_by = self.refused_by,
            ciphertext_format = self.ciphertext_format,
            authz_decision = authz.map(|v| v.outcome.as_str()),
            // Absent for a default deny: no policy decided it.
            authz_policies = authz
                .filter(|v| !v.policies.is_empty())
                .map(|v| v.policies.join(",")),
            authz_mode = authz.map(|v| v.mode.as_str()),
            "xks request"
        );
        metrics.request_finished(
            RequestLabels {
                key_store: self.key_store.unwrap_or_else(|| NO_KEY_STORE.to_owned()),
                operation: self.operation.unwrap_or(UNKNOWN_OPERATION).to_owned(),
                status: status.as_u16(),
                error_name: error_name.unwrap_or_default().to_owned(),
            },
            elapsed,
        );
    }
}

/// Status recorded for a request whose client went away before it was answered (nginx's
/// convention; never sent on the wire).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// An [`AuditRecord`] that is written exactly once: by [`AuditGuard::finish`], or, if the
/// handler panicked or was dropped (client gone) first, when the guard is dropped.
struct AuditGuard<'a> {
    record: AuditRecord,
    metrics: &'a Metrics,
    started: Instant,
    written: bool,
}

impl<'a> AuditGuard<'a> {
    fn new(metrics: &'a Metrics, started: Instant) -> Self {
        Self {
            record: AuditRecord::default(),
            metrics,
            started,
            written: false,
        }
    }

    /// The record to fill in.
    fn record(&mut self) -> &mut AuditRecord {
        &mut self.record
    }

    /// Whether the request passed SigV4.
    fn authenticated(&self) -> bool {
        self.record.authenticated
    }

    /// Writes the line for the answer sent.
    fn finish(mut self, status: StatusCode, error: Option<&ApiError>) {
        self.written = true;
        std::mem::take(&mut self.record).finish(
            self.metrics,
            status,
            error,
            self.started.elapsed(),
        );
    }
}

impl Drop for AuditGuard<'_> {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let record = std::mem::take(&mut self.record);
        let elapsed = self.started.elapsed();
        if std::thread::panicking() {
            let error = ApiError::Xks(XksError::internal("request handler panicked"));
            record.finish(self.metrics, error.status(), Some(&error), elapsed);
        } else {
            record.abandoned(self.metrics, elapsed);
        }
    }
}

impl AuditRecord {
    /// Takes every fact `later` knows (the handler's) over this one (the layer's).
    fn absorb(&mut self, later: Self) {
        let Self {
            key_store,
            operation,
            external_key_id,
            metadata,
            auth_failure,
            data_bytes,
            aad_bytes,
            hsm_member,
            key_version,
            refused_by,
            ciphertext_format,
            authorization,
            authenticated,
        } = later;
        self.key_store = key_store.or(self.key_store.take());
        self.operation = operation.or(self.operation);
        self.external_key_id = external_key_id.or(self.external_key_id.take());
        self.metadata = metadata.or(self.metadata.take());
        self.auth_failure = auth_failure.or(self.auth_failure);
        self.data_bytes = data_bytes.or(self.data_bytes);
        self.aad_bytes = aad_bytes.or(self.aad_bytes);
        self.hsm_member = hsm_member.or(self.hsm_member.take());
        self.key_version = key_version.or(self.key_version);
        self.refused_by = refused_by.or(self.refused_by);
        self.ciphertext_format = ciphertext_format.or(self.ciphertext_format);
        self.authorization = authorization.or(self.authorization.take());
        self.authenticated |= authenticated;
    }
}

/// What the audit layer resolved before the handler runs: the configuration snapshot the
/// request uses from start to end, and its route (step 1 of §3.4). A request extension.
#[derive(Clone)]
pub(super) struct Routed {
    pub(super) api: Arc<ApiConfig>,
    pub(super) route: Result<(usize, Operation), XksError>,
}

impl Routed {
    /// Resolves `uri` against the configuration in effect now.
    pub(super) fn resolve(state: &AppState, uri: &http::Uri) -> Self {
        let api = state.api.load_full();
        let route = api.routes.resolve(uri.path(), uri.query());
        Self { api, route }
    }
}

/// The layer around the XKS API: the one place that counts requests in flight and writes every
/// audit line and request metric, from the facts the handler attaches to its response (an
/// [`AuditRecord`] and, for a failure, the [`ApiError`]). It resolves the route first, so even a
/// request whose handler panics or whose client goes away is logged with its key store and
/// operation.
pub(super) async fn layer(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let _in_flight = state.metrics.request_started();
    let mut guard = AuditGuard::new(&state.metrics, Instant::now());
    let routed = Routed::resolve(&state, request.uri());
    if let Ok((index, operation)) = &routed.route
        && let Some(store) = routed.api.stores.get(*index)
    {
        let record = guard.record();
        record.key_store = Some(store.settings.name.clone());
        record.operation = Some(operation.name());
        record.external_key_id = operation.key().map(|k| k.to_string());
    }
    request.extensions_mut().insert(routed);
    let mut response = next.run(request).await;
    if let Some(facts) = response.extensions_mut().remove::<AuditRecord>() {
        guard.record().absorb(facts);
    }
    let error = response.extensions_mut().remove::<ApiError>();
    if guard.authenticated() {
        response.extensions_mut().insert(KeepsConnectionAlive);
    }
    guard.finish(response.status(), error.as_ref());
    response
}
