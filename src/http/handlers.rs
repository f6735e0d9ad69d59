//! Request handling for the four XKS APIs, in the order of checklist §3.4.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, header, request::Parts};

use super::ClientSubject;
use super::audit::{AuditRecord, Routed};
use super::error::ApiError;
use super::routing::Operation;
use super::{ApiConfig, AppState, KeyStore};
use super::{body, operations};
use crate::authz::{self, Action, Policies, Query};
use crate::xks::framing::CiphertextMetadata;
use crate::xks::wire::{
    DecryptRequest, EncryptRequest, HealthRequest, KeyMetadataRequest, RequestMetadata,
};
use crate::xks::{ErrorName, ExternalKeyId, XksError};

/// `GET /ping`: liveness for load balancers, unauthenticated, no version disclosed (LB-1).
pub(super) async fn ping() -> &'static str {
    "pong"
}

/// Most of a body sent to `/ping` that is read (and dropped) before the 405, and for how long.
const PING_DRAIN_BYTES: usize = 64 * 1024;
const PING_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Any other method on `/ping`; a small body is drained first so the answer arrives (body.rs).
pub(super) async fn ping_method_not_allowed(request: Request) -> Response {
    let drain = body::discard(request.into_body(), PING_DRAIN_BYTES);
    let _ = tokio::time::timeout(PING_DRAIN_TIME, drain).await;
    ApiError::MethodNotAllowed { allow: "GET" }.into_response()
}

/// Everything except `/ping`: the XKS API, behind [`audit::layer`] (which resolved the route
/// and writes the audit line from what this handler attaches to its response).
pub(super) async fn xks(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let routed = match parts.extensions.remove::<Routed>() {
        Some(routed) => routed,
        // Mounted without the layer: resolve here, so the API still works (unaudited).
        None => Routed::resolve(&state, &parts.uri),
    };
    let deadline = Instant::now() + routed.api.request_timeout;
    let mut facts = AuditRecord::default();
    let result = handle(&state, &routed, &parts, body, deadline, &mut facts).await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(facts);
    response
}

async fn handle(
    state: &AppState,
    routed: &Routed,
    parts: &Parts,
    body: Body,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<Response, ApiError> {
    let api = &*routed.api;
    let (store, operation) = match route(routed, parts) {
        Ok(routed) => routed,
        Err(err) => {
            // Read what the client is still sending, so the answer reaches it (body.rs).
            let drain = body::discard(body, api.limits.max_body_bytes);
            let _ = tokio::time::timeout(api.body_timeout, drain).await;
            return Err(err);
        }
    };

    // A client that never finishes its body must not hold the connection forever.
    let body_deadline = tokio::time::Instant::now() + api.body_timeout;
    let read = body::read_capped(parts, body, api.limits.max_body_bytes, &state.pre_auth);
    let (body, unauthenticated) = match tokio::time::timeout_at(body_deadline, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(refused)) => {
            if let Some(unread) = refused.unread {
                let drain = body::discard(unread, api.limits.max_body_bytes);
                let _ = tokio::time::timeout_at(body_deadline, drain).await;
            }
            return Err(refused.error);
        }
        Err(_) => {
            return Err(XksError::validation("the request body did not arrive in time").into());
        }
    };
    let authenticated =
        match crate::auth::verify(&store.credentials, parts, &body, SystemTime::now()) {
            Ok(authenticated) => authenticated,
            Err(err) => {
                state
                    .metrics
                    .auth_failed(&store.settings.name, err.reason());
                audit.auth_failure = Some(err.reason());
                return Err(err.into());
            }
        };
    drop(unauthenticated);
    audit.authenticated = true;
    if !store.settings.enabled {
        return Err(XksError::new(
            ErrorName::InvalidStateException,
            "this key store is disabled",
        )
        .into());
    }
    // URI-3: after authentication, so nobody can spend a tenant's quota without its key.
    if let Some(quota) = &store.quota
        && !quota.try_take()
    {
        return Err(XksError::new(
            ErrorName::ThrottlingException,
            "the request rate of this key store exceeds its quota",
        )
        .into());
    }
    require_json_content_type(parts)?;
    let caller = Caller {
        region: &authenticated.region,
        mtls_subject: parts.extensions.get::<ClientSubject>().map(|s| &*s.0),
    };
    dispatch(state, api, store, operation, &body, caller, deadline, audit).await
}

/// What the transport and SigV4 established about the caller, for authorization.
#[derive(Clone, Copy)]
struct Caller<'a> {
    region: &'a str,
    mtls_subject: Option<&'a str>,
}

/// The steps before the body is read (§3.4 steps 1–2): a well-formed HTTP/2 request head,
/// the key store and operation the layer resolved from the path (404), and the method (405).
fn route<'a>(routed: &'a Routed, parts: &Parts) -> Result<(&'a KeyStore, Operation), ApiError> {
    require_consistent_authority(parts)?;
    let (store_index, operation) = routed.route.clone()?;
    let store = routed
        .api
        .stores
        .get(store_index)
        .ok_or_else(|| XksError::internal("route table is inconsistent"))?;
    if parts.method != Method::POST {
        return Err(ApiError::MethodNotAllowed { allow: "POST" });
    }
    Ok((store, operation))
}

/// RFC 9113 §8.3.1: an HTTP/2 request whose `Host` differs from its `:authority` is malformed.
/// SigV4 signs `Host` when present, so the two must not name different servers.
fn require_consistent_authority(parts: &Parts) -> Result<(), XksError> {
    let (Some(authority), Some(host)) = (parts.uri.authority(), parts.headers.get(header::HOST))
    else {
        return Ok(());
    };
    if parts.version == http::Version::HTTP_2
        && !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err(XksError::validation(
            "malformed HTTP/2 request: the Host header differs from :authority",
        ));
    }
    Ok(())
}

/// Parses the authenticated body and runs the operation.
#[allow(clippy::too_many_arguments)]
async fn dispatch(
    state: &AppState,
    api: &ApiConfig,
    store: &KeyStore,
    operation: Operation,
    body: &[u8],
    caller: Caller<'_>,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<Response, ApiError> {
    let authorize = |action,
                     key: &ExternalKeyId,
                     version,
                     metadata: &RequestMetadata,
                     audit: &mut AuditRecord| {
        let Some(policies) = &store.authorization else {
            return Ok(());
        };
        let query = Query {
            action,
            key_store: &store.settings.name,
            key_id: key.as_str(),
            key_version: version,
            metadata,
            region: caller.region,
            mtls_subject: caller.mtls_subject,
        };
        authorize(state, policies, &query, audit)
    };
    match operation {
        Operation::Health => {
            let req = HealthRequest::parse(body)?;
            audit.metadata = Some(req.metadata);
            let resp = state.health.status(deadline).await?;
            audit.hsm_member = state.health.serving_member();
            Ok(operations::ok_json(&resp))
        }
        Operation::KeyMetadata(key) => {
            let req = KeyMetadataRequest::parse(body)?;
            audit.metadata = Some(req.metadata.clone());
            served_key(store, api, &key)?;
            authorize(Action::GetKeyMetadata, &key, None, &req.metadata, audit)?;
            operations::key_metadata(state, api, key, deadline, audit).await
        }
        Operation::Encrypt(key) => {
            let req = EncryptRequest::parse(body)?;
            audit.metadata = Some(req.metadata.clone());
            audit.data_bytes = Some(req.plaintext.len());
            audit.aad_bytes = Some(req.aad.len());
            served_key(store, api, &key)?;
            authorize(Action::Encrypt, &key, None, &req.metadata, audit)?;
            operations::encrypt(state, api, store, key, req, deadline, audit).await
        }
        Operation::Decrypt(key) => {
            let req = DecryptRequest::parse(body)?;
            audit.metadata = Some(req.metadata.clone());
            audit.data_bytes = Some(req.ciphertext.len());
            audit.aad_bytes = Some(req.aad.len());
            served_key(store, api, &key)?;
            let version = CiphertextMetadata::parse(&req.ciphertext_metadata).version();
            authorize(
                Action::Decrypt,
                &key,
                Some(version.get()),
                &req.metadata,
                audit,
            )?;
            operations::decrypt(state, api, store, key, req, deadline, audit).await
        }
    }
}

/// MTH-4: KMS always sends `application/json`; parameters such as charset are allowed.
fn require_json_content_type(parts: &Parts) -> Result<(), XksError> {
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(XksError::validation(
            "Content-Type must be application/json",
        ))
    }
}

fn served_key(store: &KeyStore, api: &ApiConfig, key: &ExternalKeyId) -> Result<(), XksError> {
    if store.serves(key, &api.health_key) {
        Ok(())
    } else {
        Err(XksError::new(
            ErrorName::KeyNotFoundException,
            "no key with this id in this key store",
        ))
    }
}

/// Evaluates the store's Cedar policies (after authentication, before the HSM; never for
/// GetHealthStatus, AZ-3): records the decision in the audit line and the metrics, and turns a
/// denial into 403 `AccessDeniedException` unless the policies are in log-only mode.
fn authorize(
    state: &AppState,
    policies: &Policies,
    query: &Query<'_>,
    audit: &mut AuditRecord,
) -> Result<(), ApiError> {
    let verdict = authz::evaluate(policies, query);
    if !verdict.errors.is_empty() {
        tracing::warn!(
            key_store = query.key_store, action = query.action.as_str(),
            errors = %verdict.errors.join("; "),
            "authorization policies failed to evaluate; denying (fail closed)"
        );
    }
    state.metrics.authorization_decided(
        query.key_store,
        query.action.as_str(),
        verdict.outcome.as_str(),
    );
    let permits = verdict.permits();
    audit.authorization = Some(verdict);
    if permits {
        Ok(())
    } else {
        // Generic on purpose: which policy denied is for the operator (audit line), not the
        // caller.
        Err(XksError::new(
            ErrorName::AccessDeniedException,
            "the request is not allowed by the key store's authorization policies",
        )
        .into())
    }
}
