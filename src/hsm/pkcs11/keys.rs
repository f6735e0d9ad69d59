//! Key lookup by `CKA_LABEL` and the shared handle cache (checklist URI-7, URI-8, K-2…K-4).
//!
//! A key version names the one *private* token object whose `CKA_LABEL` is its token label
//! ([`crate::hsm::labels`]: the external key id itself for version 1). No match is
//! [`HsmError::KeyNotFound`], several are [`HsmError::AmbiguousKey`]: the proxy never
//! guesses. Token object handles are valid in every session of the application, so found
//! handles are cached by key version together with the immutable class, key type and size,
//! and each key's list of versions is cached for [`VERSIONS_TTL`]: requests never search the
//! token once a key is known. A cached handle that the HSM rejects as invalid is dropped and
//! the lookup repeated once ([`with_key`]).
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::Function;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};
use parking_lot::RwLock;

use super::Shared;
use super::errors::{Operation, is_stale_handle};
use super::key_info::{KeyInfo, KeyProtection, UsageFlags};
use super::timing::call;
use crate::hsm::HsmObserver;
use crate::hsm::labels::{parse_token_label, token_label, versions_id};
use crate::hsm::{HsmError, KeyUsage, Pkcs11Call, Pkcs11Code, Pkcs11Failure, Tier};
use crate::xks::{ExternalKeyId, KeyVersion, VersionedKey};

/// How long a key's list of versions is trusted before the next request that needs it looks
/// again: a version made by `keys rotate` starts encrypting within this time even without a
/// reload (a reload forgets every list at once).
pub(super) const VERSIONS_TTL: Duration = Duration::from_secs(60);

/// A cached lookup result.
#[derive(Debug, Clone, Copy)]
pub(super) struct CachedKey {
    /// The token object.
    pub(super) handle: ObjectHandle,
    /// Its immutable attributes.
    pub(super) info: KeyInfo,
}

/// The servable versions of one key, oldest first, and when they were looked up.
#[derive(Debug, Clone)]
struct Versions {
    versions: Arc<[KeyVersion]>,
    found_at: Instant,
}

/// What the cache knows about a key's versions.
pub(super) enum CachedVersions {
    /// Looked up less than [`VERSIONS_TTL`] ago.
    Fresh(Arc<[KeyVersion]>),
    /// Older, and this caller is the one to look again (the old list is here in case the
    /// token cannot answer); meanwhile others keep using the old list.
    Refresh(Arc<[KeyVersion]>),
    /// Never looked up, or forgotten.
    Unknown,
}

/// Handles of token keys by key version, and each key's list of versions; shared by all
/// workers.
#[derive(Debug, Default)]
pub(super) struct KeyCache {
    map: RwLock<HashMap<VersionedKey, CachedKey>>,
    versions: RwLock<HashMap<ExternalKeyId, Versions>>,
    /// Bumped whenever the cache is forgotten, so that a lookup that started before does not
    /// write its (possibly outdated) result back afterwards.
    generation: AtomicU64,
}

impl KeyCache {
    /// The cached key for `key`, or a fresh lookup on `session` that fills the cache.
    ///
    /// Only a key that passes the hygiene check ([`KeyProtection::is_servable`]) is cached
    /// and returned; any other answers [`HsmError::KeyNotFound`], logged with the reason once
    /// per lookup (never cached, so fixing the key's attributes takes effect at once).
    pub(super) fn get(
        &self,
        session: &Session,
        observer: &dyn HsmObserver,
        key: &VersionedKey,
        op: Operation,
    ) -> Result<CachedKey, HsmError> {
        if let Some(cached) = self.map.read().get(key) {
            return Ok(*cached);
        }
        let generation = self.generation.load(Ordering::SeqCst);
        // Versions after the first must also carry CKA_ID = id, as the version list requires:
        // both ways of finding a version agree on what it is.
        let id = (key.version != KeyVersion::FIRST).then(|| versions_id(&key.id));
        let found = find_label(session, observer, &token_label(key), id, op)?;
        if !servable(key, &found, op) {
            return Err(HsmError::KeyNotFound);
        }
        let mut map = self.map.write();
        if self.generation.load(Ordering::SeqCst) == generation {
            map.insert(key.clone(), found);
        }
        Ok(found)
    }

    /// What the cache knows about `id`'s versions. When the list is older than
    /// [`VERSIONS_TTL`], exactly one caller is told to look again ([`CachedVersions::Refresh`]);
    /// the others keep getting the old list until it has, so an expiry never sends every
    /// request of a busy key to the token at once.
    pub(super) fn cached_versions(&self, id: &ExternalKeyId) -> CachedVersions {
        if let Some(entry) = self.versions.read().get(id) {
            if entry.found_at.elapsed() < VERSIONS_TTL {
                return CachedVersions::Fresh(Arc::clone(&entry.versions));
            }
        } else {
            return CachedVersions::Unknown;
        }
        let mut versions = self.versions.write();
        match versions.get_mut(id) {
            Some(entry) if entry.found_at.elapsed() < VERSIONS_TTL => {
                CachedVersions::Fresh(Arc::clone(&entry.versions))
            }
            Some(entry) => {
                // Claimed: the list counts as fresh for everyone else while this caller looks.
                entry.found_at = Instant::now();
                CachedVersions::Refresh(Arc::clone(&entry.versions))
            }
            None => CachedVersions::Unknown,
        }
    }

    /// The servable versions of `id`, oldest first, found on the token (`CKA_LABEL` = id for
    /// version 1, `CKA_ID` = id for the others; see [`crate::hsm::labels`]) and cached, as are
    /// the keys found. No version at all is [`HsmError::KeyNotFound`], and is not cached.
    pub(super) fn look_up_versions(
        &self,
        session: &Session,
        observer: &dyn HsmObserver,
        id: &ExternalKeyId,
        op: Operation,
    ) -> Result<Arc<[KeyVersion]>, HsmError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let found = find_versions(session, observer, id, op)?;
        let mut versions = Vec::with_capacity(found.len());
        let mut servable_keys = Vec::with_capacity(found.len());
        for (key, cached) in found {
            if servable(&key, &cached, op) {
                versions.push(key.version);
                servable_keys.push((key, cached));
            }
        }
        if versions.is_empty() {
            self.versions.write().remove(id);
            return Err(HsmError::KeyNotFound);
        }
        versions.sort_unstable();
        let versions: Arc<[KeyVersion]> = versions.into();
        let mut keys = self.map.write();
        let mut lists = self.versions.write();
        // A reload while this lookup ran has forgotten everything: leave it forgotten.
        if self.generation.load(Ordering::SeqCst) == generation {
            keys.extend(servable_keys);
            lists.insert(
                id.clone(),
                Versions {
                    versions: Arc::clone(&versions),
                    found_at: Instant::now(),
                },
            );
        }
        Ok(versions)
    }

    /// Forgets every handle and version list: after a reload (`keys rotate` may have made a
    /// version, an operator may have destroyed one and the HSM reuse its handle number), a
    /// lost login or a device failure.
    pub(super) fn clear(&self) {
        let mut keys = self.map.write();
        let mut lists = self.versions.write();
        self.generation.fetch_add(1, Ordering::SeqCst);
        keys.clear();
        lists.clear();
    }

    /// Forgets `key` if it still maps to `handle`.
    pub(super) fn invalidate(&self, key: &VersionedKey, handle: ObjectHandle) {
        let mut map = self.map.write();
        if map.get(key).is_some_and(|cached| cached.handle == handle) {
            map.remove(key);
        }
        drop(map);
        // The list may name a version that is gone now.
        self.versions.write().remove(&key.id);
    }
}

/// The hygiene check of a found key: logs and refuses what is not private, sensitive and
/// non-extractable.
fn servable(key: &VersionedKey, found: &CachedKey, op: Operation) -> bool {
    let problems = found.info.protection.problems();
    if problems.is_empty() {
        return true;
    }
    tracing::warn!(
        key = %key.id, version = key.version.get(), operation = op.as_str(),
        problems = %problems.join(", "),
        "refusing to serve a key that is not private, sensitive and non-extractable; \
         answering KeyNotFound"
    );
    false
}

/// Runs `f` on `key`; if the HSM rejects the cached handle as invalid, forgets it, looks the
/// key up again and runs `f` once more.
pub(super) fn with_key<T>(
    session: &Session,
    shared: &Shared,
    key: &VersionedKey,
    op: Operation,
    mut f: impl FnMut(&CachedKey) -> Result<T, HsmError>,
) -> Result<T, HsmError> {
    let (cache, observer) = (&shared.keys, &*shared.observer);
    let cached = cache.get(session, observer, key, op)?;
    match f(&cached) {
        Err(err) if is_stale_handle(&err) => {
            tracing::info!(key = %key.id, version = key.version.get(), "cached key handle went stale; looking the key up again");
            cache.invalidate(key, cached.handle);
            let cached = cache.get(session, observer, key, op)?;
            f(&cached)
        }
        other => other,
    }
}

/// Every version of `id` on the token, whatever its protection (the caller checks it): the
/// object labelled `id` (version 1) and the objects with `CKA_ID = id` whose label names a
/// later version of `id`. A version held by two objects is left out, with a warning.
fn find_versions(
    session: &Session,
    observer: &dyn HsmObserver,
    id: &ExternalKeyId,
    op: Operation,
) -> Result<Vec<(VersionedKey, CachedKey)>, HsmError> {
    let mut found = Vec::new();
    match find_label(session, observer, id.as_str(), None, op) {
        Ok(first) => found.push((VersionedKey::first(id.clone()), first)),
        // Version 1 may have been destroyed after a rotation; ambiguity was logged by find.
        Err(HsmError::KeyNotFound | HsmError::AmbiguousKey { .. }) => {}
        Err(err) => return Err(err),
    }
    let template = [
        Attribute::Id(versions_id(id)),
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Token(true),
        Attribute::Private(true),
    ];
    let handles = call(observer, "C_FindObjects", op, || {
        session.find_objects(&template)
    })?;
    let mut later: HashMap<KeyVersion, Vec<ObjectHandle>> = HashMap::new();
    for handle in handles {
        let label = read_label(session, observer, handle, op)?;
        let Some(key) = label.as_deref().and_then(parse_token_label) else {
            continue;
        };
        // Version 1 keys made by `keys create` carry CKA_ID = id too; they were found above.
        if key.id == *id && key.version != KeyVersion::FIRST {
            later.entry(key.version).or_default().push(handle);
        }
    }
    for (version, handles) in later {
        match handles.as_slice() {
            [handle] => found.push((
                VersionedKey::new(id.clone(), version),
                CachedKey {
                    handle: *handle,
                    info: read_info(session, observer, *handle, op)?,
                },
            )),
            several => tracing::warn!(
                key = %id, version = version.get(), count = several.len(),
                "several HSM objects hold one key version; it is not served"
            ),
        }
    }
    Ok(found)
}

/// `CKA_LABEL` of an object, if it has one in UTF-8.
fn read_label(
    session: &Session,
    observer: &dyn HsmObserver,
    handle: ObjectHandle,
    op: Operation,
) -> Result<Option<String>, HsmError> {
    let attributes = call(observer, "C_GetAttributeValue", op, || {
        session.get_attributes(handle, &[AttributeType::Label])
    })?;
    Ok(attributes.into_iter().find_map(|a| match a {
        Attribute::Label(bytes) => String::from_utf8(bytes).ok(),
        _ => None,
    }))
}

/// [`find_label`] for an external key id (version 1).
pub(super) fn find(
    session: &Session,
    observer: &dyn HsmObserver,
    label: &ExternalKeyId,
    op: Operation,
) -> Result<CachedKey, HsmError> {
    find_label(session, observer, label.as_str(), None, op)
}

/// Finds the one private token object labelled `label` and reads its attributes, whatever
/// its protection: callers that serve keys go through [`KeyCache::get`], which checks it.
///
/// Public objects are not even considered (`CKA_PRIVATE=true` is part of the search), so a
/// planted public object can neither be served nor make a real key's label ambiguous. Two
/// private objects with the label are still [`HsmError::AmbiguousKey`].
pub(super) fn find_label(
    session: &Session,
    observer: &dyn HsmObserver,
    label: &str,
    id: Option<Vec<u8>>,
    op: Operation,
) -> Result<CachedKey, HsmError> {
    let mut template = vec![
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
    ];
    template.extend(id.map(Attribute::Id));
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
    label: &str,
    op: Operation,
) -> Result<(), HsmError> {
    let template = [
        Attribute::Label(label.as_bytes().to_vec()),
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

/// Reads class, key type, value length, protection, `CKA_MODIFIABLE` and the usage flags of
/// an object, in one `C_GetAttributeValue` (every attribute asked for has a fixed size).
pub(super) fn read_info(
    session: &Session,
    observer: &dyn HsmObserver,
    handle: ObjectHandle,
    op: Operation,
) -> Result<KeyInfo, HsmError> {
    let mut wanted = vec![
        AttributeType::Class,
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Private,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Modifiable,
    ];
    wanted.extend(UsageFlags::ATTRIBUTES);
    let attributes = call(observer, "C_GetAttributeValue", op, || {
        session.get_attributes(handle, &wanted)
    })?;
    // Absent protection attributes count as the unsafe value; an absent CKA_MODIFIABLE as
    // its default, true.
    let mut info = KeyInfo {
        class: ObjectClass::DATA,
        key_type: None,
        value_len: None,
        protection: KeyProtection {
            private: false,
            sensitive: false,
            extractable: true,
        },
        fixed_usages: None,
    };
    let mut has_class = false;
    let mut modifiable = true;
    let mut usages = UsageFlags::default();
    for attribute in &attributes {
        usages.record(attribute);
        match attribute {
            Attribute::Class(class) => {
                info.class = *class;
                has_class = true;
            }
            Attribute::KeyType(key_type) => info.key_type = Some(*key_type),
            Attribute::ValueLen(len) => info.value_len = Some(**len),
            Attribute::Private(private) => info.protection.private = *private,
            Attribute::Sensitive(sensitive) => info.protection.sensitive = *sensitive,
            Attribute::Extractable(extractable) => info.protection.extractable = *extractable,
            Attribute::Modifiable(value) => modifiable = *value,
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
    if !modifiable {
        info.fixed_usages = Some(usages);
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
    let attributes = call(observer, "C_GetAttributeValue", op, || {
        session.get_attributes(handle, &UsageFlags::ATTRIBUTES)
    })?;
    let mut usages = UsageFlags::default();
    for attribute in &attributes {
        usages.record(attribute);
    }
    Ok(usages.usages())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cache_with(id: &ExternalKeyId, age: Duration) -> KeyCache {
        let cache = KeyCache::default();
        let versions: Arc<[KeyVersion]> = vec![KeyVersion::FIRST].into();
        let found_at = Instant::now().checked_sub(age).unwrap();
        cache
            .versions
            .write()
            .insert(id.clone(), Versions { versions, found_at });
        cache
    }

    #[test]
    fn an_expired_list_is_refreshed_by_one_caller_while_the_others_keep_it() {
        let id = ExternalKeyId::parse("k").unwrap();
        let cache = cache_with(&id, VERSIONS_TTL + Duration::from_secs(1));
        assert!(matches!(
            cache.cached_versions(&id),
            CachedVersions::Refresh(old) if old.as_ref() == [KeyVersion::FIRST]
        ));
        for _ in 0..3 {
            assert!(matches!(
                cache.cached_versions(&id),
                CachedVersions::Fresh(_)
            ));
        }
    }

    #[test]
    fn a_young_list_is_fresh_and_a_cleared_one_unknown() {
        let id = ExternalKeyId::parse("k").unwrap();
        let cache = cache_with(&id, Duration::from_secs(1));
        assert!(matches!(
            cache.cached_versions(&id),
            CachedVersions::Fresh(_)
        ));
        let before = cache.generation.load(Ordering::SeqCst);
        cache.clear();
        assert!(matches!(
            cache.cached_versions(&id),
            CachedVersions::Unknown
        ));
        assert_eq!(cache.generation.load(Ordering::SeqCst), before + 1);
    }
}
