//! `keys list` and the version lookup of `keys rotate`: what the token holds, object by
//! object, with each object's key version (`crate::hsm::labels`), protection and usages.

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::super::Pkcs11Backend;
use super::super::errors::{Operation, is_stale_handle};
use super::super::key_info::KeyProtection;
use super::super::keys::{read_info, read_usages};
use super::super::timing::call;
use super::{find_private, label_template};
use crate::hsm::labels::{parse_token_label, versions_id};
use crate::hsm::{HsmError, HsmObserver, KeySpec, KeyUsage};
use crate::xks::{ExternalKeyId, KeyVersion, VersionedKey};

/// One key on the token, for `keys list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyListing {
    /// `CKA_LABEL` (lossily decoded if not UTF-8); the external key id.
    pub label: String,
    /// Key type and size.
    pub spec: KeySpec,
    /// Usage flags that are set, in spec order.
    pub usages: Vec<KeyUsage>,
    /// Whether this is the dedicated health-check key, never served to customers.
    pub health_check: bool,
    /// How the key is protected; the proxy serves it only if
    /// [`KeyProtection::is_servable`].
    pub protection: KeyProtection,
    /// The key version the label names ([`crate::hsm::labels::parse_token_label`]); `None` for a label
    /// that is neither a key id nor a version label.
    pub version: Option<VersionedKey>,
    /// `CKA_ID` (empty when the object has none).
    pub cka_id: Vec<u8>,
}

impl KeyListing {
    /// Whether the proxy can find this object as the version its label names: version 1 is
    /// found by its label, later versions by `CKA_ID` = the key id (a `K#v<n>` object with
    /// another `CKA_ID` is invisible to the proxy). `false` when the label names no version.
    pub fn is_findable(&self) -> bool {
        self.version.as_ref().is_some_and(|key| {
            key.version == KeyVersion::FIRST || self.cka_id == versions_id(&key.id)
        })
    }
}

impl Pkcs11Backend {
    /// Lists the token's keys (secret, private and public; public objects too) sorted by
    /// label, each with its protection (blocking).
    pub fn list_keys(&self) -> Result<Vec<KeyListing>, HsmError> {
        let shared = &self.shared;
        self.with_admin_session(|session| list(session, &*shared.observer, &shared.health_key))
    }

    /// Every version of `id` on the token, sorted by version (blocking): the private objects
    /// labelled `id` (version 1) or carrying `CKA_ID = id` whose label names a version of
    /// `id`. Public objects, which the proxy never serves, are left out; private ones it
    /// refuses to serve (e.g. extractable) are listed, since their labels are taken.
    pub fn key_versions_admin(&self, id: &ExternalKeyId) -> Result<Vec<KeyListing>, HsmError> {
        let shared = &self.shared;
        self.with_admin_session(|session| {
            let observer = &*shared.observer;
            let mut handles = find_private(session, observer, &label_template(id.as_str()))?;
            let by_id = [
                Attribute::Id(versions_id(id)),
                Attribute::Token(true),
                Attribute::Private(true),
            ];
            for handle in find_private(session, observer, &by_id)? {
                if !handles.contains(&handle) {
                    handles.push(handle);
                }
            }
            let mut versions = Vec::new();
            for handle in handles {
                match read_listing(session, observer, handle, &shared.health_key) {
                    Ok(Some(key)) if key.version.as_ref().is_some_and(|v| v.id == *id) => {
                        versions.push(key);
                    }
                    Ok(_) => {}
                    Err(err) if is_stale_handle(&err) => {}
                    Err(err) => return Err(err),
                }
            }
            versions.sort_by_key(|key| key.version.as_ref().map(|v| v.version));
            Ok(versions)
        })
    }
}

fn list(
    session: &Session,
    observer: &dyn HsmObserver,
    health_key: &ExternalKeyId,
) -> Result<Vec<KeyListing>, HsmError> {
    let handles = call(observer, "C_FindObjects", Operation::Admin, || {
        session.find_objects(&[Attribute::Token(true)])
    })?;
    let mut listing = Vec::new();
    for handle in handles {
        match read_listing(session, observer, handle, health_key) {
            Ok(Some(key)) => listing.push(key),
            Ok(None) => {}
            // Deleted since the search: not a key any more.
            Err(err) if is_stale_handle(&err) => {}
            Err(err) => return Err(err),
        }
    }
    listing.sort_by(|a, b| a.label.cmp(&b.label));
    Ok(listing)
}

/// The listing of one object, or `None` if it is not a key.
fn read_listing(
    session: &Session,
    observer: &dyn HsmObserver,
    handle: ObjectHandle,
    health_key: &ExternalKeyId,
) -> Result<Option<KeyListing>, HsmError> {
    let op = Operation::Admin;
    let info = read_info(session, observer, handle, op)?;
    let is_key = [
        ObjectClass::SECRET_KEY,
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
    ]
    .contains(&info.class);
    if !is_key {
        return Ok(None);
    }
    // Label and id have variable sizes, so they are read apart from `read_info`'s fixed ones.
    let (mut label, mut cka_id) = (String::new(), Vec::new());
    let attributes = call(observer, "C_GetAttributeValue", op, || {
        session.get_attributes(handle, &[AttributeType::Label, AttributeType::Id])
    })?;
    for attribute in attributes {
        match attribute {
            Attribute::Label(bytes) => label = String::from_utf8_lossy(&bytes).into_owned(),
            Attribute::Id(bytes) => cka_id = bytes,
            _ => {}
        }
    }
    Ok(Some(KeyListing {
        health_check: label == health_key.as_str(),
        version: parse_token_label(&label),
        label,
        spec: info.spec(),
        usages: read_usages(session, observer, handle, op)?,
        protection: info.protection,
        cka_id,
    }))
}
