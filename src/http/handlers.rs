//! Request handling for the four XKS APIs, in the order of checklist §3.4.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header, request::Parts};
use zeroize::Zeroizing;

use super::audit::{AuditGuard, AuditRecord};
use super::body;
use super::error::{ApiError, json_response};
use super::routing::Operation;
use super::{ApiConfig, AppState, KeepsConnectionAlive, KeyStore};
use crate::hsm::{self, GCM_TAG_LEN, HsmError};
use crate::xks::framing::{self, MAX_CIPHERTEXT_METADATA_LEN};
use crate::xks::wire::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, HealthRequest,
    KeyMetadataRequest, KeyMetadataResponse, b64,
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

/// Everything except `/ping`: the XKS API. Every request ends in exactly one audit line
/// and one `xks_requests_total` increment ([`AuditGuard`]), even if its handler panics or
/// its client goes away.
pub(super) async fn xks(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let _in_flight = state.metrics.request_started();
    let started = Instant::now();
    let api = state.api.load_full();
    let deadline = started + api.request_timeout;
    let (parts, body) = request.into_parts();

    let mut audit = AuditGuard::new(&state.metrics, started);
    let result = handle(&state, &api, &parts, body, deadline, audit.record()).await;
    let status = match &result {
        Ok(resp) => resp.status(),
        Err(err) => err.status(),
    };
    let authenticated = audit.authenticated();
    audit.finish(status, result.as_ref().err());
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if authenticated {
        response.extensions_mut().insert(KeepsConnectionAlive);
    }
    response
}

async fn handle(
    state: &AppState,
    api: &ApiConfig,
    parts: &Parts,
    body: Body,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<Response, ApiError> {
    let (store, operation) = match route(api, parts, audit) {
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
    if let Err(err) = crate::auth::verify(&store.credentials, parts, &body, SystemTime::now()) {
        state
            .metrics
            .auth_failed(&store.settings.name, err.reason());
        audit.auth_failure = Some(err.reason());
        return Err(err.into());
    }
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
    dispatch(state, api, store, operation, &body, deadline, audit).await
}

/// The steps before the body is read (§3.4 steps 1–2): a well-formed HTTP/2 request head,
/// the key store and operation from the path (404), and the method (405).
fn route<'a>(
    api: &'a ApiConfig,
    parts: &Parts,
    audit: &mut AuditRecord,
) -> Result<(&'a KeyStore, Operation), ApiError> {
    require_consistent_authority(parts)?;
    let (store_index, operation) = api.routes.resolve(parts.uri.path(), parts.uri.query())?;
    let store = api
        .stores
        .get(store_index)
        .ok_or_else(|| XksError::internal("route table is inconsistent"))?;
    audit.key_store = Some(store.settings.name.clone());
    audit.operation = Some(operation.name());
    audit.external_key_id = operation.key().map(|k| k.to_string());
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
async fn dispatch(
    state: &AppState,
    api: &ApiConfig,
    store: &KeyStore,
    operation: Operation,
    body: &[u8],
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<Response, ApiError> {
    match operation {
        Operation::Health => {
            let req = HealthRequest::parse(body)?;
            audit.metadata = Some(req.metadata);
            let resp = state.health.status(deadline).await?;
            audit.hsm_member = state.backend.member_id().map(str::to_owned);
            Ok(ok_json(&resp))
        }
        Operation::KeyMetadata(key) => {
            let req = KeyMetadataRequest::parse(body)?;
            audit.metadata = Some(req.metadata);
            served_key(store, api, &key)?;
            key_metadata(state, key, deadline, audit).await
        }
        Operation::Encrypt(key) => {
            let req = EncryptRequest::parse(body)?;
            audit.metadata = Some(req.metadata.clone());
            audit.data_bytes = Some(req.plaintext.len());
            audit.aad_bytes = Some(req.aad.len());
            served_key(store, api, &key)?;
            encrypt(state, api, key, req, deadline, audit).await
        }
        Operation::Decrypt(key) => {
            let req = DecryptRequest::parse(body)?;
            audit.metadata = Some(req.metadata.clone());
            audit.data_bytes = Some(req.ciphertext.len());
            audit.aad_bytes = Some(req.aad.len());
            served_key(store, api, &key)?;
            decrypt(state, api, key, req, deadline, audit).await
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

/// Records which HSM member served a backend call — the one the backend `noted` (a fleet),
/// else its only one — unless the call never reached one: a full queue
/// ([`HsmError::Busy`]) or a deadline that passed first ([`HsmError::Timeout`]).
fn served_by<T>(
    state: &AppState,
    audit: &mut AuditRecord,
    result: &Result<T, HsmError>,
    noted: Option<String>,
) {
    if !matches!(result, Err(HsmError::Busy | HsmError::Timeout)) {
        audit.hsm_member = noted.or_else(|| state.backend.member_id().map(str::to_owned));
    }
}

fn ok_json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(_) => {
            ApiError::Xks(XksError::internal("response serialization failed")).into_response()
        }
    }
}

async fn key_metadata(
    state: &AppState,
    key: ExternalKeyId,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<Response, ApiError> {
    let (meta, member) = hsm::recording_member(state.backend.key_metadata(key, deadline)).await;
    served_by(state, audit, &meta, member);
    let meta = meta?;
    Ok(ok_json(&KeyMetadataResponse {
        key_spec: meta.spec.as_str().to_owned(),
        // K-5: at most 10 values; PKCS#11 yields at most 7.
        key_usage: meta
            .usages
            .iter()
            .take(10)
            .map(|u| u.as_str().to_owned())
            .collect(),
        key_status: meta.status.as_str().to_owned(),
    }))
}

fn check_sizes(api: &ApiConfig, data_len: usize, aad_len: usize) -> Result<(), XksError> {
    let limits = &api.limits;
    if data_len > limits.max_plaintext_bytes {
        return Err(XksError::unsupported(format!(
            "data longer than {} bytes is not supported",
            limits.max_plaintext_bytes
        )));
    }
    if aad_len > limits.max_aad_bytes {
        return Err(XksError::unsupported(format!(
            "additionalAuthenticatedData longer than {} bytes is not supported",
            limits.max_aad_bytes
        )));
    }
    Ok(())
}

async fn encrypt(
    state: &AppState,
    api: &ApiConfig,
    key: ExternalKeyId,
    req: EncryptRequest,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<Response, ApiError> {
    // E-18: KMS never encrypts an empty plaintext; refusing it keeps GCM inputs non-trivial.
    if req.plaintext.is_empty() {
        return Err(XksError::validation("plaintext must not be empty").into());
    }
    check_sizes(api, req.plaintext.len(), req.aad.len())?;
    // No ciphertextMetadata is emitted: the AAD carries a zero metadata length (AAD-2).
    let ekm_aad =
        framing::ekm_aad(&req.aad, &[]).map_err(|e| XksError::unsupported(e.to_string()))?;
    let plaintext = req.plaintext;
    let (sealed, member) = hsm::recording_member(state.backend.encrypt(
        key.clone(),
        hsm::EncryptRequest {
            plaintext: plaintext.clone(),
            aad: ekm_aad.clone(),
        },
        deadline,
    ))
    .await;
    served_by(state, audit, &sealed, member);
    let sealed = sealed?;
    let cdiv = if req.want_cdiv {
        // CDIV-6/7: hash the HSM's output first, then prove it decrypts.
        let cdiv = framing::cdiv_sha256(&req.aad, &[], &sealed.iv, &sealed.ciphertext, &sealed.tag);
        verify_decryptable(state, key, &sealed, ekm_aad, &plaintext, deadline).await?;
        Some(b64(&cdiv))
    } else {
        None
    };
    Ok(ok_json(&EncryptResponse {
        ciphertext: b64(&sealed.ciphertext),
        ciphertext_metadata: None,
        initialization_vector: b64(&sealed.iv),
        authentication_tag: b64(&sealed.tag),
        ciphertext_data_integrity_value: cdiv,
    }))
}

/// The verification decrypt of CDIV-6 through the same path as XKS Decrypt.
async fn verify_decryptable(
    state: &AppState,
    key: ExternalKeyId,
    sealed: &hsm::GcmCiphertext,
    ekm_aad: Vec<u8>,
    plaintext: &[u8],
    deadline: Instant,
) -> Result<(), ApiError> {
    let request = hsm::DecryptRequest {
        ciphertext: sealed.ciphertext.clone(),
        iv: sealed.iv.to_vec(),
        tag: sealed.tag,
        aad: ekm_aad,
    };
    match state.backend.decrypt(key, request, deadline).await {
        Ok(roundtrip) if roundtrip.as_slice() == plaintext => Ok(()),
        Ok(_) => Err(XksError::internal("the verification decrypt returned different data").into()),
        // CDIV-8: an encrypt-only key cannot pass the verification decrypt.
        Err(err @ (HsmError::KeyUsageNotPermitted { .. } | HsmError::Timeout | HsmError::Busy)) => {
            Err(err.into())
        }
        // CDIV-9: any other failure means the ciphertext cannot be trusted.
        Err(err) => {
            tracing::error!(error = %err, "CDIV verification decrypt failed");
            Err(XksError::internal("the new ciphertext failed its verification decrypt").into())
        }
    }
}

async fn decrypt(
    state: &AppState,
    api: &ApiConfig,
    key: ExternalKeyId,
    req: DecryptRequest,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<Response, ApiError> {
    // D-6, D-7: malformed IV or tag make the ciphertext invalid; checked before the HSM.
    if !matches!(req.iv.len(), 12 | 16) {
        return Err(XksError::new(
            ErrorName::InvalidCiphertextException,
            "initializationVector must be 12 or 16 bytes",
        )
        .into());
    }
    let tag: [u8; GCM_TAG_LEN] = req.tag.as_slice().try_into().map_err(|_| {
        XksError::new(
            ErrorName::InvalidCiphertextException,
            "authenticationTag must be 16 bytes",
        )
    })?;
    if req.ciphertext_metadata.len() > MAX_CIPHERTEXT_METADATA_LEN {
        return Err(XksError::validation("ciphertextMetadata must be at most 20 bytes").into());
    }
    if req.ciphertext.is_empty() {
        return Err(XksError::validation("ciphertext must not be empty").into());
    }
    check_sizes(api, req.ciphertext.len(), req.aad.len())?;
    let ekm_aad = framing::ekm_aad(&req.aad, &req.ciphertext_metadata)?;
    let (plaintext, member) = hsm::recording_member(state.backend.decrypt(
        key,
        hsm::DecryptRequest {
            ciphertext: req.ciphertext,
            iv: req.iv,
            tag,
            aad: ekm_aad,
        },
        deadline,
    ))
    .await;
    served_by(state, audit, &plaintext, member);
    let plaintext = plaintext?;
    Ok(ok_json(&DecryptResponse {
        plaintext: Zeroizing::new(b64(&plaintext)),
    }))
}
