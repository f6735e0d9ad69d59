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

use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};
use parking_lot::RwLock;

use super::Shared;
use super::errors::{Operation, is_stale_handle};
use super::timing::call;
use crate::hsm::{HsmError, KeySpec, KeyUsage, Pkcs11Failure, Tier};
use crate::metrics::Metrics;
use crate::xks::ExternalKeyId;

/// How a key object is protected on its token, from `CKA_PRIVATE`, `CKA_SENSITIVE` and
/// `CKA_EXTRACTABLE` (an attribute the object lacks counts as the unsafe value).
///
/// The proxy serves only keys that are private, sensitive and never extractable: a public
/// object can be planted by anyone with token access, and the value of a readable or
/// extractable key can leave the HSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyProtection {
    /// `CKA_PRIVATE`: visible and usable only after a login.
    pub private: bool,
    /// `CKA_SENSITIVE`: the value can never be read in plaintext.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the value can be wrapped out of the token.
    pub extractable: bool,
}

impl KeyProtection {
    /// Whether the proxy may serve a key protected like this.
    pub fn is_servable(self) -> bool {
        self.problems().is_empty()
    }

    /// Why the proxy refuses a key protected like this, in attribute order; empty when it
    /// is servable.
    pub fn problems(self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if !self.private {
            problems.push("not private (CKA_PRIVATE=false)");
        }
        if !self.sensitive {
            problems.push("not sensitive (CKA_SENSITIVE=false)");
        }
        if self.extractable {
            problems.push("extractable (CKA_EXTRACTABLE=true)");
        }
        problems
    }
}

/// Attributes of a key object, read once and cached with its handle: the class, key type
/// and size never change, and a cached key is protected in a way only a logged-in user could
/// weaken (and keys the proxy makes are not modifiable at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeyInfo {
    /// `CKA_CLASS`.
    pub(super) class: ObjectClass,
    /// `CKA_KEY_TYPE`, absent on objects that are not keys.
    pub(super) key_type: Option<KeyType>,
    /// `CKA_VALUE_LEN` in bytes, present on secret keys.
    pub(super) value_len: Option<u64>,
    /// `CKA_PRIVATE`, `CKA_SENSITIVE`, `CKA_EXTRACTABLE`.
    pub(super) protection: KeyProtection,
}

impl KeyInfo {
    /// Key type and size as GetKeyMetadata reports them (K-2): truthful for every object.
    pub(super) fn spec(&self) -> KeySpec {
        let strip =
            |s: String, prefix: &str| s.strip_prefix(prefix).map(str::to_owned).unwrap_or(s);
        let Some(key_type) = self.key_type else {
            return KeySpec::Other(strip(self.class.to_string(), "CKO_"));
        };
        let type_name = strip(key_type.to_string(), "CKK_");
        if self.class != ObjectClass::SECRET_KEY {
            let class_name = strip(self.class.to_string(), "CKO_");
            return KeySpec::Other(format!("{type_name}_{class_name}"));
        }
        match (key_type, self.value_len) {
            (KeyType::AES, Some(16)) => KeySpec::Aes128,
            (KeyType::AES, Some(24)) => KeySpec::Aes192,
            (KeyType::AES, Some(32)) => KeySpec::Aes256,
            (_, Some(bytes)) => KeySpec::Other(format!("{type_name}_{}", bytes.saturating_mul(8))),
            (_, None) => KeySpec::Other(type_name),
        }
    }

    /// Succeeds for an AES-256 secret key, the only kind the proxy uses for customer crypto.
    pub(super) fn require_aes_256(&self) -> Result<(), HsmError> {
        match self.spec() {
            KeySpec::Aes256 => Ok(()),
            other => Err(HsmError::UnsupportedKey {
                found: other.as_str().to_owned(),
            }),
        }
    }
}

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
        metrics: &Metrics,
        label: &ExternalKeyId,
        op: Operation,
    ) -> Result<CachedKey, HsmError> {
        if let Some(key) = self.map.read().get(label) {
            return Ok(*key);
        }
        let key = find(session, metrics, label, op)?;
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
    let (cache, metrics) = (&shared.keys, &*shared.metrics);
    let key = cache.get(session, metrics, label, op)?;
    match f(&key) {
        Err(err) if is_stale_handle(&err) => {
            tracing::info!(key = %label, "cached key handle went stale; looking the key up again");
            cache.invalidate(label, key.handle);
            let key = cache.get(session, metrics, label, op)?;
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
    metrics: &Metrics,
    label: &ExternalKeyId,
    op: Operation,
) -> Result<CachedKey, HsmError> {
    let template = [
        Attribute::Label(label.as_str().as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
    ];
    // find_objects always ends with C_FindObjectsFinal, also on error.
    let handles = call(metrics, "C_FindObjects", op, || {
        session.find_objects(&template)
    })?;
    match handles.as_slice() {
        [] => {
            ensure_logged_in(session, metrics, op)?;
            report_public_objects(session, metrics, label, op)?;
            Err(HsmError::KeyNotFound)
        }
        [handle] => Ok(CachedKey {
            handle: *handle,
            info: read_info(session, metrics, *handle, op)?,
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
    metrics: &Metrics,
    label: &ExternalKeyId,
    op: Operation,
) -> Result<(), HsmError> {
    let template = [
        Attribute::Label(label.as_str().as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(false),
    ];
    let public = call(metrics, "C_FindObjects", op, || {
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
    metrics: &Metrics,
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
    let attributes = call(metrics, "C_GetAttributeValue", op, || {
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
            function: "C_GetAttributeValue",
            code: "object without CKA_CLASS".into(),
            tier: Tier::Request,
        }));
    }
    Ok(info)
}

/// Reads the seven usage flags, in spec order (K-3, K-4). Absent flags count as false.
pub(super) fn read_usages(
    session: &Session,
    metrics: &Metrics,
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
    let attributes = call(metrics, "C_GetAttributeValue", op, || {
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
fn ensure_logged_in(session: &Session, metrics: &Metrics, op: Operation) -> Result<(), HsmError> {
    let info = call(metrics, "C_GetSessionInfo", op, || {
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
                function: "C_GetSessionInfo",
                code: "session not logged in as user".into(),
                tier: Tier::Login,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(class: ObjectClass, key_type: Option<KeyType>, value_len: Option<u64>) -> KeyInfo {
        KeyInfo {
            class,
            key_type,
            value_len,
            protection: LOCKED,
        }
    }

    const LOCKED: KeyProtection = KeyProtection {
        private: true,
        sensitive: true,
        extractable: false,
    };

    #[test]
    fn key_hygiene_only_private_sensitive_unextractable_keys_are_servable() {
        assert!(LOCKED.is_servable());
        assert!(LOCKED.problems().is_empty());
        let planted = KeyProtection {
            private: false,
            sensitive: false,
            extractable: true,
        };
        assert!(!planted.is_servable());
        assert_eq!(
            planted.problems(),
            [
                "not private (CKA_PRIVATE=false)",
                "not sensitive (CKA_SENSITIVE=false)",
                "extractable (CKA_EXTRACTABLE=true)"
            ]
        );
        for weakened in [
            KeyProtection {
                private: false,
                ..LOCKED
            },
            KeyProtection {
                sensitive: false,
                ..LOCKED
            },
            KeyProtection {
                extractable: true,
                ..LOCKED
            },
        ] {
            assert_eq!(weakened.problems().len(), 1, "{weakened:?}");
            assert!(!weakened.is_servable());
        }
    }

    #[test]
    fn k_2_aes_sizes_get_their_spec_names() {
        let secret = |len| info(ObjectClass::SECRET_KEY, Some(KeyType::AES), Some(len));
        assert_eq!(secret(16).spec(), KeySpec::Aes128);
        assert_eq!(secret(24).spec(), KeySpec::Aes192);
        assert_eq!(secret(32).spec(), KeySpec::Aes256);
        assert_eq!(secret(32).require_aes_256(), Ok(()));
        assert_eq!(
            secret(16).require_aes_256(),
            Err(HsmError::UnsupportedKey {
                found: "AES_128".into()
            })
        );
    }

    #[test]
    fn k_2_other_objects_are_described_truthfully() {
        let cases = [
            (
                info(
                    ObjectClass::SECRET_KEY,
                    Some(KeyType::GENERIC_SECRET),
                    Some(32),
                ),
                "GENERIC_SECRET_256",
            ),
            (
                info(ObjectClass::SECRET_KEY, Some(KeyType::AES), Some(8)),
                "AES_64",
            ),
            (
                info(ObjectClass::SECRET_KEY, Some(KeyType::DES3), None),
                "DES3",
            ),
            (
                info(ObjectClass::PRIVATE_KEY, Some(KeyType::RSA), None),
                "RSA_PRIVATE_KEY",
            ),
            (info(ObjectClass::DATA, None, None), "DATA"),
        ];
        for (info, spec) in cases {
            assert_eq!(info.spec(), KeySpec::Other(spec.into()));
            assert_eq!(
                info.require_aes_256(),
                Err(HsmError::UnsupportedKey { found: spec.into() })
            );
        }
    }
}
