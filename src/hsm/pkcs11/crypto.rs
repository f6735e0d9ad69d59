//! AES-GCM with `CKM_AES_GCM`, key metadata and the deep health check, run on a worker's
//! session (XKS spec Encrypt, Decrypt, GetKeyMetadata, GetHealthStatus; checklist E-7, E-11,
//! E-12, D-6, D-10…D-12, K-2…K-6, H-2, H-3).
//!
//! The IV is never the caller's: every encryption draws a fresh 12-byte IV from the OS CSPRNG
//! here, because SoftHSM silently accepts an empty IV and would reuse the nonce. PKCS#11
//! returns `ciphertext‖tag`; the tag is split off on the way out and appended on the way in.

use cryptoki::context::Function;
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::types::Ulong;
use zeroize::Zeroizing;

use super::Shared;
use super::errors::{Operation, fail};
use super::keys::{read_usages, with_key};
use super::timing::call;
use super::token::{self, TokenIdentity};
use crate::hsm::{
    DecryptRequest, EncryptRequest, GCM_IV_LEN, GCM_TAG_LEN, GcmCiphertext, HsmError, KeyMetadata,
    KeyStatus, Pkcs11Call, Pkcs11Code, Pkcs11Failure, Tier,
};
use crate::xks::VersionedKey;

/// Tag length in bits, as `CK_GCM_PARAMS.ulTagBits` wants it.
const TAG_BITS: u64 = (GCM_TAG_LEN * 8) as u64;
/// What the health check encrypts and expects back.
const HEALTH_PLAINTEXT: &[u8] = b"xks-proxy deep health check";
/// The AAD of the health check.
const HEALTH_AAD: &[u8] = b"xks-proxy health";

/// AES-256-GCM encryption of a customer request under `key`.
pub(super) fn encrypt(
    session: &Session,
    shared: &Shared,
    key: &VersionedKey,
    request: &EncryptRequest,
) -> Result<GcmCiphertext, HsmError> {
    let op = Operation::Encrypt;
    with_key(session, shared, key, op, |key| {
        key.info.require_aes_256()?;
        gcm_encrypt(
            session,
            shared,
            key.handle,
            &request.plaintext,
            &request.aad,
            op,
        )
    })
}

/// AES-256-GCM decryption and tag check of a customer request under `key`.
pub(super) fn decrypt(
    session: &Session,
    shared: &Shared,
    key: &VersionedKey,
    request: &DecryptRequest,
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let op = Operation::Decrypt;
    // The caller validated the IV (D-6); an empty IV must never reach SoftHSM regardless.
    if !matches!(request.iv.len(), 12 | 16) {
        return Err(HsmError::InvalidCiphertext);
    }
    let mut input = Vec::with_capacity(request.ciphertext.len() + GCM_TAG_LEN);
    input.extend_from_slice(&request.ciphertext);
    input.extend_from_slice(&request.tag);
    with_key(session, shared, key, op, |key| {
        key.info.require_aes_256()?;
        gcm_decrypt(
            session,
            shared,
            key.handle,
            &input,
            &request.iv,
            &request.aad,
            op,
        )
    })
}

/// The key's real attributes (K-2…K-6). PKCS#11 has no "disabled" flag, so the status is
/// always [`KeyStatus::Enabled`].
pub(super) fn metadata(
    session: &Session,
    shared: &Shared,
    key: &VersionedKey,
) -> Result<KeyMetadata, HsmError> {
    let op = Operation::Metadata;
    with_key(session, shared, key, op, |key| {
        Ok(KeyMetadata {
            spec: key.info.spec(),
            usages: match key.info.fixed_usages {
                Some(usages) => usages.usages(),
                None => read_usages(session, &*shared.observer, key.handle, op)?,
            },
            status: KeyStatus::Enabled,
        })
    })
}

/// The deep health check (H-2, H-3): encrypts and decrypts a fixed message under the
/// dedicated health key, compares, then reads the token identity.
pub(super) fn health_probe(session: &Session, shared: &Shared) -> Result<TokenIdentity, HsmError> {
    let op = Operation::Health;
    let label = &VersionedKey::first(shared.health_key.clone());
    let observer = &*shared.observer;
    let sealed = with_key(session, shared, label, op, |key| {
        key.info.require_aes_256()?;
        gcm_encrypt(
            session,
            shared,
            key.handle,
            HEALTH_PLAINTEXT,
            HEALTH_AAD,
            op,
        )
    })?;
    let mut input = sealed.ciphertext;
    input.extend_from_slice(&sealed.tag);
    let opened = with_key(session, shared, label, op, |key| {
        gcm_decrypt(
            session, shared, key.handle, &input, &sealed.iv, HEALTH_AAD, op,
        )
    })?;
    if opened.as_slice() != HEALTH_PLAINTEXT {
        tracing::error!("the health-check decryption returned different bytes");
        return Err(HsmError::Pkcs11(Pkcs11Failure {
            function: Pkcs11Call::Function(Function::Decrypt),
            code: Pkcs11Code::Anomaly("health check round trip mismatch"),
            tier: Tier::Device,
        }));
    }
    token::identity(&shared.pkcs11, observer, *shared.slot.read(), op)
}

/// `C_EncryptInit` + `C_Encrypt` with `CKM_AES_GCM` under a fresh random IV: two PKCS#11
/// calls, the output buffer sized in advance (plaintext + tag).
fn gcm_encrypt(
    session: &Session,
    shared: &Shared,
    key: ObjectHandle,
    plaintext: &[u8],
    aad: &[u8],
    op: Operation,
) -> Result<GcmCiphertext, HsmError> {
    let mut iv = [0u8; GCM_IV_LEN];
    getrandom::fill(&mut iv).map_err(|e| {
        tracing::error!(error = %e, "the OS random number generator failed");
        HsmError::Unavailable("no random IV available".into())
    })?;
    let mut output = vec![0; plaintext.len() + GCM_TAG_LEN];
    {
        let params =
            GcmParams::new(&mut iv, aad, Ulong::from(TAG_BITS)).map_err(|e| fail(&e, op))?;
        let mechanism = Mechanism::AesGcm(params);
        call(&*shared.observer, "C_Encrypt", op, || {
            match shared.module.single_part() {
                Some(single_part) => {
                    session.encrypt_init(&mechanism, key)?;
                    single_part.encrypt(session, plaintext, &mut output)
                }
                None => session
                    .encrypt(&mechanism, key, plaintext)
                    .map(|sealed| output = sealed),
            }
        })?;
    }
    if output.len() != plaintext.len() + GCM_TAG_LEN {
        return Err(unexpected_length(Function::Encrypt));
    }
    let tag = <[u8; GCM_TAG_LEN]>::try_from(&output[plaintext.len()..])
        .map_err(|_| unexpected_length(Function::Encrypt))?;
    output.truncate(plaintext.len());
    Ok(GcmCiphertext {
        ciphertext: output,
        iv,
        tag,
    })
}

/// `C_DecryptInit` + `C_Decrypt` of `ciphertext‖tag` with `CKM_AES_GCM`: two PKCS#11 calls,
/// the output buffer as long as the input (some modules ask for room for the tag too).
fn gcm_decrypt(
    session: &Session,
    shared: &Shared,
    key: ObjectHandle,
    input: &[u8],
    iv: &[u8],
    aad: &[u8],
    op: Operation,
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let mut iv = iv.to_vec();
    let params = GcmParams::new(&mut iv, aad, Ulong::from(TAG_BITS)).map_err(|e| fail(&e, op))?;
    let mechanism = Mechanism::AesGcm(params);
    let mut plaintext = Zeroizing::new(vec![0; input.len()]);
    call(&*shared.observer, "C_Decrypt", op, || {
        match shared.module.single_part() {
            Some(single_part) => {
                session.decrypt_init(&mechanism, key)?;
                single_part.decrypt(session, input, &mut plaintext)
            }
            None => session
                .decrypt(&mechanism, key, input)
                .map(|opened| *plaintext = opened),
        }
    })?;
    if plaintext.len() + GCM_TAG_LEN != input.len() {
        return Err(unexpected_length(Function::Decrypt));
    }
    Ok(plaintext)
}

/// The HSM answered `CKR_OK` with an output of the wrong size.
fn unexpected_length(function: Function) -> HsmError {
    let function = Pkcs11Call::Function(function);
    tracing::error!(%function, "PKCS#11 returned an output of unexpected length");
    HsmError::Pkcs11(Pkcs11Failure {
        function,
        code: Pkcs11Code::Anomaly("CKR_OK with an output of unexpected length"),
        tier: Tier::Device,
    })
}
