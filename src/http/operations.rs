//! The three key operations behind the pipeline in `handlers.rs`: GetKeyMetadata, Encrypt
//! (with CDIV) and Decrypt. Each gets an authenticated, parsed request for a key its store
//! serves, checks what the spec asks before the HSM (sizes, IV and tag lengths, metadata) and
//! calls the [`KeyBackend`](crate::hsm::KeyBackend).

use std::time::Instant;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use zeroize::Zeroizing;

use super::audit::AuditRecord;
use super::error::{ApiError, json_response};
use super::{ApiConfig, AppState};
use crate::hsm::{self, GCM_TAG_LEN, HsmError, Served};
use crate::xks::framing::{self, MAX_CIPHERTEXT_METADATA_LEN};
use crate::xks::wire::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, KeyMetadataResponse, b64,
};
use crate::xks::{ErrorName, ExternalKeyId, XksError};

/// Records which HSM member served a backend call (none when it never reached one) and
/// passes its result on.
fn served_by<T>(audit: &mut AuditRecord, served: Served<T>) -> Result<T, HsmError> {
    audit.hsm_member = served.member;
    served.result
}

pub(super) fn ok_json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(_) => {
            ApiError::Xks(XksError::internal("response serialization failed")).into_response()
        }
    }
}

pub(super) async fn key_metadata(
    state: &AppState,
    key: ExternalKeyId,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<Response, ApiError> {
    let meta = served_by(audit, state.backend.key_metadata(key, deadline).await)?;
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

pub(super) async fn encrypt(
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
    let request = hsm::EncryptRequest {
        plaintext: plaintext.clone(),
        aad: ekm_aad.clone(),
    };
    let served = state.backend.encrypt(key.clone(), request, deadline).await;
    let sealed = served_by(audit, served)?;
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
    match state.backend.decrypt(key, request, deadline).await.result {
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

pub(super) async fn decrypt(
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
    let request = hsm::DecryptRequest {
        ciphertext: req.ciphertext,
        iv: req.iv,
        tag,
        aad: ekm_aad,
    };
    let plaintext = served_by(audit, state.backend.decrypt(key, request, deadline).await)?;
    Ok(ok_json(&DecryptResponse {
        plaintext: Zeroizing::new(b64(&plaintext)),
    }))
}
