//! Administrative calls for the CLI: create, rotate and list keys, and the health-check key at
//! startup (XKS spec §"Testing": keys for encrypt/decrypt, encrypt-only, decrypt-only and
//! neither; checklist H-3, K-3, K-4). Key versions are named as `crate::hsm::labels` says:
//! version 1 of `K` is labelled `K`, version `n ≥ 2` is labelled `K#v<n>` with `CKA_ID = K`.
//!
//! These calls block and run on the backend's own R/W session, never on the worker pool; do
//! not call them from an async task. That session is also the long-lived "anchor" that keeps
//! the application logged in while worker sessions come and go.

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::{Zeroize, Zeroizing};

mod listing;

pub use listing::KeyListing;

use super::Pkcs11Backend;
use super::errors::{Operation, fail};
use super::keys;
use super::timing::{call, timed};
use super::token;
use crate::hsm::HsmObserver;
use crate::hsm::labels::{token_label, versions_id};
use crate::hsm::{HsmError, KeyUsage, Tier};
use crate::xks::{ExternalKeyId, VersionedKey};

/// Length in bytes of the keys the proxy creates (AES-256).
const AES_256_LEN: u64 = 32;

impl Pkcs11Backend {
    /// Creates an AES-256 token key labelled `label` (blocking): version 1 of `label`.
    ///
    /// The key is `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` and not `CKA_EXTRACTABLE`,
    /// and neither `CKA_MODIFIABLE` nor `CKA_COPYABLE` where the token knows those attributes;
    /// `CKA_ENCRYPT`, `CKA_DECRYPT`, `CKA_WRAP`, `CKA_UNWRAP`, `CKA_SIGN`, `CKA_VERIFY` and
    /// `CKA_DERIVE` are set exactly as `usages` says (explicitly false otherwise), and
    /// `CKA_ID` is the label. Refuses with [`HsmError::KeyAlreadyExists`] if a private token
    /// object already carries the label (public objects are never served, so they do not
    /// block it).
    pub fn create_key(&self, label: &ExternalKeyId, usages: &[KeyUsage]) -> Result<(), HsmError> {
        self.generate_key_version(&VersionedKey::first(label.clone()), usages)
    }

    /// Generates version `key.version` of `key.id` inside the token (`C_GenerateKey`;
    /// blocking), labelled [`crate::hsm::labels::token_label`] with `CKA_ID` = the key id, with the
    /// attributes and the refusal of [`Pkcs11Backend::create_key`].
    pub fn generate_key_version(
        &self,
        key: &VersionedKey,
        usages: &[KeyUsage],
    ) -> Result<(), HsmError> {
        self.with_admin_session(|session| create(session, &*self.shared.observer, key, usages))
    }

    /// Whether a private token object carries `label` (blocking); public objects, which the
    /// proxy never serves, do not count.
    pub fn key_exists(&self, label: &ExternalKeyId) -> Result<bool, HsmError> {
        self.with_admin_session(|session| {
            match keys::find(session, &*self.shared.observer, label, Operation::Admin) {
                Ok(_) | Err(HsmError::AmbiguousKey { .. }) => Ok(true),
                Err(HsmError::KeyNotFound) => Ok(false),
                Err(err) => Err(err),
            }
        })
    }

    /// Whether a private token object carries the label of `key`'s version (blocking),
    /// whatever its `CKA_ID`; public objects do not count.
    pub fn key_version_exists(&self, key: &VersionedKey) -> Result<bool, HsmError> {
        let label = token_label(key);
        self.with_admin_session(|session| {
            Ok(!find_private(session, &*self.shared.observer, &label_template(&label))?.is_empty())
        })
    }

    /// Creates an AES-256 token key labelled `label` from the given key material
    /// (`C_CreateObject` with `CKA_VALUE`; blocking), with the attributes and the refusal of
    /// [`Pkcs11Backend::create_key`]. This is how `keys import` puts the same key into every
    /// member of a SoftHSM/test fleet; real HSM clusters replicate keys with the vendor's
    /// own tools instead.
    pub fn import_key(
        &self,
        label: &ExternalKeyId,
        value: &Zeroizing<[u8; 32]>,
        usages: &[KeyUsage],
    ) -> Result<(), HsmError> {
        self.import_key_version(&VersionedKey::first(label.clone()), value, usages)
    }

    /// Creates version `key.version` of `key.id` from the given key material
    /// (`C_CreateObject`; blocking), labelled [`crate::hsm::labels::token_label`] with `CKA_ID` = the key
    /// id, with the attributes and the refusal of [`Pkcs11Backend::create_key`]: how `keys
    /// rotate` gives every member of a fleet the same new version.
    pub fn import_key_version(
        &self,
        key: &VersionedKey,
        value: &Zeroizing<[u8; 32]>,
        usages: &[KeyUsage],
    ) -> Result<(), HsmError> {
        self.with_admin_session(|session| {
            let observer = &*self.shared.observer;
            let label = token_label(key);
            refuse_existing(session, observer, &label)?;
            let mut template = key_template(&label, versions_id(&key.id), usages);
            template.push(Attribute::Value(value.to_vec()));
            let created = make_locked(observer, &label, "C_CreateObject", &mut template, |t| {
                session.create_object(t)
            });
            for attribute in &mut template {
                if let Attribute::Value(bytes) = attribute {
                    bytes.zeroize();
                }
            }
            created?;
            tracing::info!(key = %label, ?usages, "imported an AES-256 key");
            Ok(())
        })
    }

    /// Runs `f` on the admin session, reopening it first if an earlier failure closed it, and
    /// dropping it after a session-, login- or device-tier failure.
    fn with_admin_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let module = std::sync::Arc::clone(&self.shared.module);
        let _calls = module.calls();
        let mut slot = self.admin.lock();
        let session = match slot.take() {
            Some(session) => session,
            None => {
                let shared = &self.shared;
                token::open_session(
                    &shared.pkcs11,
                    &*shared.observer,
                    *shared.slot.read(),
                    &shared.pin,
                    true,
                )?
            }
        };
        let result = f(&session);
        match &result {
            Err(HsmError::Pkcs11(failure)) if failure.tier != Tier::Request => {
                tracing::warn!(tier = ?failure.tier, "dropping the admin PKCS#11 session");
            }
            _ => *slot = Some(session),
        }
        result
    }
}

/// Makes sure the health-check key exists, creating it if allowed. Problems other than an
/// HSM failure are logged, not fatal: the health check then reports the member unavailable.
pub(super) fn ensure_health_key(
    session: &Session,
    observer: &dyn HsmObserver,
    label: &ExternalKeyId,
    create_if_missing: bool,
) -> Result<(), HsmError> {
    match keys::find(session, observer, label, Operation::Admin) {
        Ok(key) => {
            if let Err(err) = key.info.require_aes_256() {
                tracing::warn!(key = %label, error = %err, "the health-check key is unusable");
            }
            let problems = key.info.protection.problems();
            if !problems.is_empty() {
                tracing::warn!(key = %label, problems = %problems.join(", "),
                    "the health-check key is unusable: it is not private, sensitive and \
                     non-extractable");
            }
            Ok(())
        }
        Err(HsmError::KeyNotFound) if create_if_missing => {
            create(
                session,
                observer,
                &VersionedKey::first(label.clone()),
                &[KeyUsage::Encrypt, KeyUsage::Decrypt],
            )?;
            tracing::info!(key = %label, "created the health-check key");
            Ok(())
        }
        Err(HsmError::KeyNotFound) => {
            tracing::warn!(key = %label, "the health-check key does not exist; deep health \
                checks will report the HSM unavailable");
            Ok(())
        }
        Err(HsmError::AmbiguousKey { count }) => {
            tracing::warn!(key = %label, count, "several objects carry the health-check key id");
            Ok(())
        }
        Err(err) => Err(err),
    }
}

fn create(
    session: &Session,
    observer: &dyn HsmObserver,
    key: &VersionedKey,
    usages: &[KeyUsage],
) -> Result<(), HsmError> {
    let label = token_label(key);
    refuse_existing(session, observer, &label)?;
    let mut template = key_template(&label, versions_id(&key.id), usages);
    template.push(Attribute::ValueLen(AES_256_LEN.into()));
    make_locked(observer, &label, "C_GenerateKey", &mut template, |t| {
        session.generate_key(&Mechanism::AesKeyGen, t)
    })?;
    tracing::info!(key = %label, ?usages, "created an AES-256 key");
    Ok(())
}

/// Runs `make` (`C_GenerateKey` or `C_CreateObject`, timed as `function`) with `template`
/// plus `CKA_MODIFIABLE=false` and `CKA_COPYABLE=false`: without them anyone holding the PIN
/// could later change the key's label or usage flags (`C_SetAttributeValue`) or copy it
/// (`C_CopyObject`) into an object with other attributes. A token that does not know an attribute
/// (`CKR_ATTRIBUTE_TYPE_INVALID`; `CKA_COPYABLE` is PKCS#11 2.40) gets the key without it,
/// and the log says so.
fn make_locked(
    observer: &dyn HsmObserver,
    label: &str,
    function: &'static str,
    template: &mut Vec<Attribute>,
    make: impl Fn(&[Attribute]) -> cryptoki::error::Result<ObjectHandle>,
) -> Result<(), HsmError> {
    // Both locks, then each alone, then none: the first that the token accepts wins, so a
    // token that rejects only one of them still gets the other.
    let base = template.len();
    let mut attempt = |modifiable_lock: bool, copyable_lock: bool| {
        template.truncate(base);
        if modifiable_lock {
            template.push(Attribute::Modifiable(false));
        }
        if copyable_lock {
            template.push(Attribute::Copyable(false));
        }
        let made = timed(observer, function, || make(template));
        if made.is_ok() {
            for (kept, name) in [
                (modifiable_lock, "CKA_MODIFIABLE"),
                (copyable_lock, "CKA_COPYABLE"),
            ] {
                if !kept {
                    tracing::warn!(
                        key = %label, attribute = name,
                        "the token rejects {name}=false (CKR_ATTRIBUTE_TYPE_INVALID); the key was \
                         created without it"
                    );
                }
            }
        }
        made.map(drop)
    };
    let mut first_error = None;
    for (modifiable_lock, copyable_lock) in [(true, true), (true, false), (false, true)] {
        match attempt(modifiable_lock, copyable_lock) {
            Ok(()) => return Ok(()),
            Err(err @ Error::Pkcs11(RvError::AttributeTypeInvalid, _)) => {
                first_error.get_or_insert(err);
            }
            Err(err) => return Err(fail(&err, Operation::Admin)),
        }
    }
    // If even the template without locks is refused, another attribute is the problem: report
    // the original failure.
    attempt(false, false).map_err(|err| fail(&first_error.unwrap_or(err), Operation::Admin))
}

/// [`HsmError::KeyAlreadyExists`] if a private token object carries `label`.
fn refuse_existing(
    session: &Session,
    observer: &dyn HsmObserver,
    label: &str,
) -> Result<(), HsmError> {
    if find_private(session, observer, &label_template(label))?.is_empty() {
        Ok(())
    } else {
        Err(HsmError::KeyAlreadyExists)
    }
}

/// Search template for the private token objects labelled `label`. Public objects are left
/// out: anyone with token access can plant them, so they must neither block nor count as a
/// key (see `keys`).
fn label_template(label: &str) -> [Attribute; 3] {
    [
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Token(true),
        Attribute::Private(true),
    ]
}

/// The objects matching `template` (`C_FindObjects`).
fn find_private(
    session: &Session,
    observer: &dyn HsmObserver,
    template: &[Attribute],
) -> Result<Vec<ObjectHandle>, HsmError> {
    call(observer, "C_FindObjects", Operation::Admin, || {
        session.find_objects(template)
    })
}

/// The attributes of every key the proxy makes, but its value or length and the locks
/// [`make_locked`] adds: a sensitive, non-extractable private AES token key with exactly
/// `usages`, labelled `label` with `CKA_ID` = `cka_id` (the key id, for every version: for
/// version 1 that is its label, as for every key made before versioning).
fn key_template(label: &str, cka_id: Vec<u8>, usages: &[KeyUsage]) -> Vec<Attribute> {
    let has = |usage| usages.contains(&usage);
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(has(KeyUsage::Encrypt)),
        Attribute::Decrypt(has(KeyUsage::Decrypt)),
        Attribute::Wrap(has(KeyUsage::Wrap)),
        Attribute::Unwrap(has(KeyUsage::Unwrap)),
        Attribute::Sign(has(KeyUsage::Sign)),
        Attribute::Verify(has(KeyUsage::Verify)),
        Attribute::Derive(has(KeyUsage::Derive)),
        Attribute::Id(cka_id),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}
