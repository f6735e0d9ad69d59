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
use super::{ApiConfig, AppState, KeyStore};
use crate::hsm::{self, GCM_TAG_LEN, HsmError, KeyStatus, Served};
use crate::xks::framing::{self, CiphertextMetadata, MAX_CIPHERTEXT_METADATA_LEN};
use crate::xks::wire::{
    DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, KeyMetadataResponse, b64,
};
use crate::xks::{ErrorName, ExternalKeyId, KeyVersion, VersionedKey, XksError};

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

/// GetKeyMetadata of the version that encrypts: the newest one the kill switch leaves
/// enabled. `DISABLED` when `[[keys]]` turns the key off or disables every version (K-6).
pub(super) async fn key_metadata(
    state: &AppState,
    api: &ApiConfig,
    key: ExternalKeyId,
    deadline: Instant,
    audit: &mut AuditRecord,
) -> Result<Response, ApiError> {
    let versions = served_by(
        audit,
        state.backend.key_versions(key.clone(), deadline).await,
    )?;
    let encrypting = newest_enabled(api, &key, &versions);
    let Some(version) = encrypting.or_else(|| versions.last().copied()) else {
        return Err(HsmError::KeyNotFound.into());
    };
    audit.key_version = Some(version.get());
    let versioned = VersionedKey::new(key, version);
    let served = state
        .backend
        .key_metadata(versioned.clone(), deadline)
        .await;
    let meta = served_by(audit, served)?;
    let status = if api.keys.key_enabled(&versioned.id) && encrypting.is_some() {
        meta.status
    } else {
        KeyStatus::Disabled
    };
    Ok(ok_json(&KeyMetadataResponse {
        key_spec: meta.spec.as_str().to_owned(),
        // K-5: at most 10 values; PKCS#11 yields at most 7.
        key_usage: meta
            .usages
            .iter()
            .take(10)
            .map(|u| u.as_str().to_owned())
            .collect(),
        key_status: status.as_str().to_owned(),
    }))
}

/// The newest of `versions` (oldest first) that `[[keys]]` does not disable.
fn newest_enabled(
    api: &ApiConfig,
    key: &ExternalKeyId,
    versions: &[KeyVersion],
) -> Option<KeyVersion> {
    versions
        .iter()
        .rev()
        .copied()
        .find(|v| api.keys.version_enabled(key, *v))
}

/// Refuses a request the `[[keys]]` kill switch stops (K-7): the whole key, or `version` of
/// it. The audit line says so and a metric counts it.
fn kill_switch(
    state: &AppState,
    api: &ApiConfig,
    at: (&KeyStore, &str),
    key: &ExternalKeyId,
    version: Option<KeyVersion>,
    audit: &mut AuditRecord,
) -> Result<(), ApiError> {
    let message = if !api.keys.key_enabled(key) {
        "the key is disabled at the proxy (kill switch)".to_owned()
    } else if let Some(version) = version.filter(|v| !api.keys.version_enabled(key, *v)) {
        format!(
            "key version {} is disabled at the proxy (kill switch)",
            version.get()
        )
    } else {
        return Ok(());
    };
    Err(refused_by_switch(state, at, key, message, audit))
}

/// The InvalidStateException of a kill-switch refusal, audited and counted.
fn refused_by_switch(
    state: &AppState,
    (store, operation): (&KeyStore, &str),
    key: &ExternalKeyId,
    message: impl Into<std::borrow::Cow<'static, str>>,
    audit: &mut AuditRecord,
) -> ApiError {
    audit.refused_by = Some(KILL_SWITCH);
    state
        .metrics
        .kill_switch_refused(&store.settings.name, operation, key.as_str());
    XksError::new(ErrorName::InvalidStateException, message).into()
}

/// `refused_by` of an audit line for a request the kill switch stopped.
const KILL_SWITCH: &str = "kill_switch";
/// Operation names in metrics, as the audit layer writes them.
const ENCRYPT: &str = "Encrypt";
const DECRYPT: &str = "Decrypt";

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

/// Encrypt under the newest version the kill switch leaves enabled; the version travels in
/// `ciphertextMetadata` (bound into the AAD) so that Decrypt finds it again.
pub(super) async fn encrypt(
    state: &AppState,
    api: &ApiConfig,
    store: &KeyStore,
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
    let at = (store, ENCRYPT);
    kill_switch(state, api, at, &key, None, audit)?;
    let versions = served_by(
        audit,
        state.backend.key_versions(key.clone(), deadline).await,
    )?;
    let Some(version) = newest_enabled(api, &key, &versions) else {
        let message = "every version of the key is disabled at the proxy (kill switch)";
        return Err(refused_by_switch(state, at, &key, message, audit));
    };
    audit.key_version = Some(version.get());
    let metadata = framing::key_version_metadata(version);
    let ekm_aad =
        framing::ekm_aad(&req.aad, &metadata).map_err(|e| XksError::unsupported(e.to_string()))?;
    let key = VersionedKey::new(key, version);
    let plaintext = req.plaintext;
    let request = hsm::EncryptRequest {
        plaintext: plaintext.clone(),
        aad: ekm_aad.clone(),
    };
    let served = state.backend.encrypt(key.clone(), request, deadline).await;
    let sealed = served_by(audit, served)?;
    let cdiv = if req.want_cdiv {
        // CDIV-6/7: hash the HSM's output first, then prove it decrypts.
        let cdiv = framing::cdiv_sha256(
            &req.aad,
            &metadata,
            &sealed.iv,
            &sealed.ciphertext,
            &sealed.tag,
        );
        verify_decryptable(state, key, &sealed, ekm_aad, &plaintext, deadline).await?;
        Some(b64(&cdiv))
    } else {
        None
    };
    Ok(ok_json(&EncryptResponse {
        ciphertext: b64(&sealed.ciphertext),
        ciphertext_metadata: Some(b64(&metadata)),
        initialization_vector: b64(&sealed.iv),
        authentication_tag: b64(&sealed.tag),
        ciphertext_data_integrity_value: cdiv,
    }))
}

/// The verification decrypt of CDIV-6 through the same path as XKS Decrypt.
async fn verify_decryptable(
    state: &AppState,
    key: VersionedKey,
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

/// Decrypt with the key version `ciphertextMetadata` names (version 1 when it names none).
/// On a key store migrated from AWS's sample proxy, a request carrying the sample's static
/// metadata is first tried in the sample's AAD format, then in the spec's.
pub(super) async fn decrypt(
    state: &AppState,
    api: &ApiConfig,
    store: &KeyStore,
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
    let version = CiphertextMetadata::parse(&req.ciphertext_metadata).version();
    let at = (store, DECRYPT);
    kill_switch(state, api, at, &key, Some(version), audit)?;
    // Without an AAD field the sample's framing is byte for byte the spec's
    // (`00 00 ‖ U8(len) ‖ ctm`), so only requests with one need the sample's own path.
    let sample = req.aad_present
        && store
            .settings
            .aws_sample_migration
            .as_ref()
            .is_some_and(|m| m.ciphertext_metadata == req.ciphertext_metadata);
    let request = |aad| hsm::DecryptRequest {
        ciphertext: req.ciphertext.clone(),
        iv: req.iv.clone(),
        tag,
        aad,
    };
    let store_name = store.settings.name.as_str();
    if sample {
        // The sample's keys are version 1: the object labelled with the key id.
        kill_switch(state, api, at, &key, Some(KeyVersion::FIRST), audit)?;
        let aad = req.aad_present.then_some(req.aad.as_slice());
        let sample_aad = framing::aws_sample_aad(aad, &req.ciphertext_metadata)?;
        let first = VersionedKey::first(key.clone());
        let served = state
            .backend
            .decrypt(first, request(sample_aad), deadline)
            .await;
        match served_by(audit, served) {
            Ok(plaintext) => {
                audit.key_version = Some(KeyVersion::FIRST.get());
                audit.ciphertext_format = Some(AWS_SAMPLE_FORMAT);
                state
                    .metrics
                    .aws_sample_decrypt(store_name, AWS_SAMPLE_FORMAT);
                return Ok(plaintext_response(&plaintext));
            }
            // Not the sample's. Only where this proxy could have written the same metadata
            // (none, before versions; or the sample's value happens to be ours) is it worth
            // trying the spec's format: elsewhere the fallback would only let a ciphertext
            // bound to AAD `B` open under AAD `SHA-256(B)`, the one input where the two
            // framings coincide.
            Err(HsmError::InvalidCiphertext) if spec_fallback(&req.ciphertext_metadata) => {}
            Err(HsmError::KeyNotFound) => {
                let first = VersionedKey::first(key);
                return Err(missing_version(state, first, deadline).await);
            }
            Err(err) => return Err(err.into()),
        }
    }
    audit.key_version = Some(version.get());
    let ekm_aad = framing::ekm_aad(&req.aad, &req.ciphertext_metadata)?;
    let versioned = VersionedKey::new(key, version);
    let served = state
        .backend
        .decrypt(versioned.clone(), request(ekm_aad), deadline)
        .await;
    match served_by(audit, served) {
        Ok(plaintext) => {
            if sample {
                audit.ciphertext_format = Some(SPEC_FORMAT);
                state.metrics.aws_sample_decrypt(store_name, SPEC_FORMAT);
            }
            Ok(plaintext_response(&plaintext))
        }
        Err(HsmError::KeyNotFound) => Err(missing_version(state, versioned, deadline).await),
        Err(err) => Err(err.into()),
    }
}

/// `ciphertext_format` of a Decrypt the sample proxy's AAD opened.
const AWS_SAMPLE_FORMAT: &str = "aws_sample";
/// `ciphertext_format` of a Decrypt on a migration store that the spec's AAD opened.
const SPEC_FORMAT: &str = "spec";

fn plaintext_response(plaintext: &[u8]) -> Response {
    ok_json(&DecryptResponse {
        plaintext: Zeroizing::new(b64(plaintext)),
    })
}

/// The HSM holds no object for `key`: if it holds other versions of the key, the ciphertext
/// names a version that was never made or was destroyed (InvalidCiphertextException); if it
/// holds none, the key itself is missing (KeyNotFoundException).
async fn missing_version(state: &AppState, key: VersionedKey, deadline: Instant) -> ApiError {
    match state.backend.key_versions(key.id, deadline).await.result {
        Err(HsmError::KeyNotFound) => HsmError::KeyNotFound.into(),
        // A timeout, a busy or failing HSM: say that, not that the key is missing.
        Err(err) => err.into(),
        Ok(_) => XksError::new(
            ErrorName::InvalidCiphertextException,
            format!(
                "the ciphertext was made with key version {}, which the HSM does not hold \
                 (never created, or destroyed)",
                key.version.get()
            ),
        )
        .into(),
    }
}

/// Whether a Decrypt whose metadata is the sample's static value, and that the sample's
/// format did not open, may still be one of this proxy's: metadata it writes (empty before key
/// versions, `0x01 ‖ BE32(n)` since).
fn spec_fallback(ciphertext_metadata: &[u8]) -> bool {
    ciphertext_metadata.is_empty()
        || matches!(
            CiphertextMetadata::parse(ciphertext_metadata),
            CiphertextMetadata::KeyVersion(_)
        )
}
