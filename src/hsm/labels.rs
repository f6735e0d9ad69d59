//! How key versions are named on the token.
//!
//! Version 1 of external key `K` is the private secret key whose `CKA_LABEL` is `K`: every key
//! made before versioning, unchanged. Version `n ≥ 2` (made by `xks-proxy keys rotate`) is
//! labelled `K#v<n>` and carries `CKA_ID = K`, so that one `C_FindObjects` on `CKA_ID` finds
//! every later version of a key when the proxy first needs them. `#` is outside the external
//! key id alphabet (URI-7: `A-Z a-z 0-9 - . _`), so a version label can never be another
//! valid key id, and no key id can name another key's version.

use crate::xks::{ExternalKeyId, KeyVersion, VersionedKey};

/// Between the key id and the version number in the label of a version ≥ 2.
pub const VERSION_SEPARATOR: &str = "#v";

/// The `CKA_LABEL` of `key` on the token.
pub fn token_label(key: &VersionedKey) -> String {
    if key.version == KeyVersion::FIRST {
        key.id.as_str().to_owned()
    } else {
        format!("{}{VERSION_SEPARATOR}{}", key.id, key.version.get())
    }
}

/// The `CKA_ID` every version ≥ 2 of `id` carries.
pub fn versions_id(id: &ExternalKeyId) -> Vec<u8> {
    id.as_str().as_bytes().to_vec()
}

/// The key version a label names: `K` is version 1 of `K`, `K#v<n>` version `n ≥ 2`, written
/// without leading zeros. Anything else is not a customer key label.
pub fn parse_token_label(label: &str) -> Option<VersionedKey> {
    let Some((id, number)) = label.rsplit_once(VERSION_SEPARATOR) else {
        return ExternalKeyId::parse(label).ok().map(VersionedKey::first);
    };
    let canonical = !number.is_empty()
        && !number.starts_with('0')
        && number.bytes().all(|b| b.is_ascii_digit());
    let version = canonical
        .then(|| number.parse().ok().and_then(KeyVersion::new))
        .flatten()
        .filter(|v| *v != KeyVersion::FIRST)?;
    let id = ExternalKeyId::parse(id).ok()?;
    Some(VersionedKey::new(id, version))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(id: &str, n: u32) -> VersionedKey {
        VersionedKey::new(
            ExternalKeyId::parse(id).unwrap(),
            KeyVersion::new(n).unwrap(),
        )
    }

    #[test]
    fn version_one_is_the_key_id_itself() {
        assert_eq!(token_label(&key("tenant-a.key_1", 1)), "tenant-a.key_1");
        assert_eq!(
            parse_token_label("tenant-a.key_1"),
            Some(key("tenant-a.key_1", 1))
        );
    }

    #[test]
    fn later_versions_round_trip() {
        for n in [2, 10, 4_294_967_295] {
            let k = key("k.v2", n);
            let label = token_label(&k);
            assert_eq!(label, format!("k.v2#v{n}"));
            assert_eq!(parse_token_label(&label), Some(k));
        }
    }

    #[test]
    fn version_labels_are_never_valid_key_ids() {
        let label = token_label(&key(&"k".repeat(128), 7));
        assert!(ExternalKeyId::parse(&label).is_err());
    }

    #[test]
    fn non_canonical_labels_name_no_version() {
        for label in [
            "k#v1",
            "k#v01",
            "k#v",
            "k#v-2",
            "k#v2x",
            "k#v4294967296",
            "#v2",
            "a b#v2",
            "k#w2",
        ] {
            assert_eq!(parse_token_label(label), None, "{label}");
        }
    }
}
