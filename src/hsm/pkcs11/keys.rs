//! Key lookup by `CKA_LABEL` and the shared handle cache (checklist URI-7, URI-8, K-2…K-4).
//!
//! An external key id names the one *private* token object whose `CKA_LABEL` equals it. No
//! match is [`HsmError::KeyNotFound`], several are [`HsmError::AmbiguousKey`]: the proxy never
//! guesses. Token object handles are valid in every session of the application, so found
//! handles are cached by label together with the immutable class, key type and size. A cached
//! handle that the HSM rejects as invalid is dropped and the lookup repeated once
//! ([`with_key`]).
//!
//! Key hygiene ("key squatting"): anyone who can open a session on the token can create a
//! public object (`CKA_PRIVATE=false`) without the PIN, e.g. a secret key whose value they
//! chose, under any label. Serving it would encrypt customer data under a key the attacker
//! knows. So the search template itself asks for `CKA_PRIVATE=true` (public objects can
//! neither take over nor block a real key's label), and a found key is served only if it is
//! also `CKA_SENSITIVE` and not `CKA_EXTRACTABLE` ([`KeyProtection`]); anything else answers
//! [`HsmError::KeyNotFound`], like a missing key. Both checks ride on the one lookup the cache
//! already does: a cached key costs no extra PKCS#11 call per request.

use std::collections::HashMap;

use cryptoki::context::Function;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};
use parking_lot::RwLock;

use super::Shared;
use super::errors::{Operation, is_stale_handle};
use super::key_info::{KeyInfo, KeyProtection};
use super::timing::call;
use crate::hsm::HsmObserver;
use crate::hsm::{HsmError, KeyUsage, Pkcs11Call, Pkcs11Code, Pkcs11Failure, Tier};
use crate::xks::ExternalKeyId;

/// A cached lookup result.
#[derive(Debug, Clone, Copy)]
pub(super) struct CachedKey {
    /// The token object.
    pub(super) handle: ObjectHandle,
    /// Its immutable attributes.
    pub(super) info: KeyInfo,
}

/// Handles of token keys by label, shared by all workers.
#[derive(Debug, Default)]
pub(super) struct KeyCache {
    map: RwLock<HashMap<ExternalKeyId, CachedKey>>,
}

impl KeyCache {
    /// The cached key for `label`, or a fresh lookup on `session` that fills the cache.
    ///
    /// Only a key that passes the hygiene check ([`KeyProtection::is_servable`]) is cached
    /// and returned; any other answers [`HsmError::KeyNotFound`], logged with the reason once
    /// per lookup (never cached, so fixing the key's attributes takes effect at once).
    pub(super) fn get(
        &self,
        session: &Session,
        observer: &dyn HsmObserver,
        label: &ExternalKeyId,
        op: Operation,
    ) -> Result<CachedKey, HsmError> {
        if let Some(key) = self.map.read().get(label) {
            return Ok(*key);
        }
        let key = find(session, observer, label, op)?;
        let problems = key.info.protection.problems();
        if !problems.is_empty() {
            tracing::warn!(
                key = %label, operation = op.as_str(), problems = %problems.join(", "),
                "refusing to serve a key that is not private, sensitive and non-extractable; \
                 answering KeyNotFound"
            );
            return Err(HsmError::KeyNotFound);
        }
        self.map.write().insert(label.clone(), key);
        Ok(key)
    }

    /// Forgets every handle: after a lost login or a device failure a handle number may name
    /// another object, or none.
    pub(super) fn clear(&self) {
        self.map.write().clear();
    }

    /// Forgets `label` if it still maps to `handle`.
    pub(super) fn invalidate(&self, label: &ExternalKeyId, handle: ObjectHandle) {
        let mut map = self.map.write();
        if map.get(label).is_some_and(|key| key.handle == handle) {
            map.remove(label);
        }
    }
}

/// Runs `f` on the key labelled `label`; if the HSM rejects the cached handle as invalid,
/// forgets it, looks the label up again and runs `f` once more.
pub(super) fn with_key<T>(
    session: &Session,
    shared: &Shared,
    label: &ExternalKeyId,
    op: Operation,
    mut f: impl FnMut(&CachedKey) -> Result<T, HsmError>,
) -> Result<T, HsmError> {
    let (cache, observer) = (&shared.keys, &*shared.observer);
    let key = cache.get(session, observer, label, op)?;
    match f(&key) {
        Err(err) if is_stale_handle(&err) => {
            tracing::info!(key = %label, "cached key handle went stale; looking the key up again");
            cache.invalidate(label, key.handle);
            let key = cache.get(session, observer, label, op)?;
            f(&key)
        }
        other => other,
    }
}

/// Finds the one private token object labelled `label` and reads its attributes, whatever
/// its protection: callers that serve keys go through [`KeyCache::get`], which checks it.
///
/// Public objects are not even considered (`CKA_PRIVATE=true` is part of the search), so a
/// planted public object can neither be served nor make a real key's label ambiguous. Two
/// private objects with the label are still [`HsmError::AmbiguousKey`].
pub(super) fn find(
    session: &Session,
    observer: &dyn HsmObserver,
    label: &ExternalKeyId,
    op: Operation,
) -> Result<CachedKey, HsmError> {
    let template = [
        Attribute::Label(label.as_str().as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
    ];
    // find_objects always ends with C_FindObjectsFinal, also on error.
    let handles = call(observer, "C_FindObjects", op, || {
        session.find_objects(&template)
    })?;
    match handles.as_slice() {
        [] => {
            ensure_logged_in(session, observer, op)?;
            report_public_objects(session, observer, label, op)?;
            Err(HsmError::KeyNotFound)
        }
        [handle] => Ok(CachedKey {
            handle: *handle,
            info: read_info(session, observer, *handle, op)?,
        }),
        several => {
            tracing::warn!(key = %label, count = several.len(), "several HSM objects share a key id");
            Err(HsmError::AmbiguousKey {
                count: several.len(),
            })
        }
    }
}

/// On a miss, says in the log when only non-private objects carry `label`: an operator's key
/// made public by mistake, or a squatter. They stay ignored. Runs only when the lookup found
/// nothing (never for a served key), and costs one more search then.
fn report_public_objects(
    session: &Session,
    observer: &dyn HsmObserver,
    label: &ExternalKeyId,
    op: Operation,
) -> Result<(), HsmError> {
    let template = [
        Attribute::Label(label.as_str().as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(false),
    ];
    let public = call(observer, "C_FindObjects", op, || {
        session.find_objects(&template)
    })?;
    if !public.is_empty() {
        tracing::warn!(
            key = %label, operation = op.as_str(), count = public.len(),
            "only public objects (CKA_PRIVATE=false) carry this key id; anyone with token \
             access can plant those, so they are ignored"
        );
    }
    Ok(())
}

/// Reads class, key type, value length and protection of an object, in one
/// `C_GetAttributeValue` (every attribute asked for has a fixed size).
pub(super) fn read_info(
    session: &Session,
    observer: &dyn HsmObserver,
    handle: ObjectHandle,
    op: Operation,
) -> Result<KeyInfo, HsmError> {
    let wanted = [
        AttributeType::Class,
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Private,
        AttributeType::Sensitive,
        AttributeType::Extractable,
    ];
    let attributes = call(observer, "C_GetAttributeValue", op, || {
        session.get_attributes(handle, &wanted)
    })?;
    // Absent protection attributes count as the unsafe value.
    let mut info = KeyInfo {
        class: ObjectClass::DATA,
        key_type: None,
        value_len: None,
        protection: KeyProtection {
            private: false,
            sensitive: false,
            extractable: true,
        },
    };
    let mut has_class = false;
    for attribute in attributes {
        match attribute {
            Attribute::Class(class) => {
                info.class = class;
                has_class = true;
            }
            Attribute::KeyType(key_type) => info.key_type = Some(key_type),
            Attribute::ValueLen(len) => info.value_len = Some(*len),
            Attribute::Private(private) => info.protection.private = private,
            Attribute::Sensitive(sensitive) => info.protection.sensitive = sensitive,
            Attribute::Extractable(extractable) => info.protection.extractable = extractable,
            _ => {}
        }
    }
    if !has_class {
        return Err(HsmError::Pkcs11(Pkcs11Failure {
            function: Pkcs11Call::Function(Function::GetAttributeValue),
            code: Pkcs11Code::Anomaly("object without CKA_CLASS"),
            tier: Tier::Request,
        }));
    }
    Ok(info)
}

/// Reads the seven usage flags, in spec order (K-3, K-4). Absent flags count as false.
pub(super) fn read_usages(
    session: &Session,
    observer: &dyn HsmObserver,
    handle: ObjectHandle,
    op: Operation,
) -> Result<Vec<KeyUsage>, HsmError> {
    let wanted = [
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::Sign,
        AttributeType::Verify,
        AttributeType::Wrap,
        AttributeType::Unwrap,
        AttributeType::Derive,
    ];
    let attributes = call(observer, "C_GetAttributeValue", op, || {
        session.get_attributes(handle, &wanted)
    })?;
    let mut usages: Vec<KeyUsage> = attributes
        .iter()
        .filter_map(|attribute| match attribute {
            Attribute::Encrypt(true) => Some(KeyUsage::Encrypt),
            Attribute::Decrypt(true) => Some(KeyUsage::Decrypt),
            Attribute::Sign(true) => Some(KeyUsage::Sign),
            Attribute::Verify(true) => Some(KeyUsage::Verify),
            Attribute::Wrap(true) => Some(KeyUsage::Wrap),
            Attribute::Unwrap(true) => Some(KeyUsage::Unwrap),
            Attribute::Derive(true) => Some(KeyUsage::Derive),
            _ => None,
        })
        .collect();
    usages.sort_unstable();
    Ok(usages)
}

/// Private keys are invisible without a login, so "not found" on a session that lost its
/// login would be a lie: report it as a login-tier failure so the worker logs in again.
fn ensure_logged_in(
    session: &Session,
    observer: &dyn HsmObserver,
    op: Operation,
) -> Result<(), HsmError> {
    let info = call(observer, "C_GetSessionInfo", op, || {
        session.get_session_info()
    })?;
    match info.session_state() {
        SessionState::RoUser | SessionState::RwUser => Ok(()),
        SessionState::RoPublic | SessionState::RwPublic | SessionState::RwSecurityOfficer => {
            tracing::warn!(
                operation = op.as_str(),
                "PKCS#11 session is not logged in as user"
            );
            Err(HsmError::Pkcs11(Pkcs11Failure {
                function: Pkcs11Call::Function(Function::GetSessionInfo),
                code: Pkcs11Code::Anomaly("session not logged in as user"),
                tier: Tier::Login,
            }))
        }
    }
}
