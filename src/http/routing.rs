//! URI → (key store, operation), before anything else happens (checklist §3.4 step 2).
//!
//! The API tail is parsed from the end of the path (`…/kms/xks/v1/health` or
//! `…/kms/xks/v1/keys/<id>/<op>`) and what precedes it must equal a configured prefix
//! exactly (URI-10). Anything else, including query strings, percent-encoding, dot segments,
//! `//`, a trailing slash or an out-of-charset key id, is 404 `InvalidUriPathException` (URI-10,
//! URI-11, AU-17), so SigV4 only ever canonicalizes plain paths.

use std::collections::HashMap;

use crate::xks::{ExternalKeyId, XksError};

/// The four XKS APIs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// GetHealthStatus.
    Health,
    /// GetKeyMetadata.
    KeyMetadata(ExternalKeyId),
    /// Encrypt.
    Encrypt(ExternalKeyId),
    /// Decrypt.
    Decrypt(ExternalKeyId),
}

impl Operation {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Health => "GetHealthStatus",
            Self::KeyMetadata(_) => "GetKeyMetadata",
            Self::Encrypt(_) => "Encrypt",
            Self::Decrypt(_) => "Decrypt",
        }
    }

    /// The key the operation targets, if any.
    pub fn key(&self) -> Option<&ExternalKeyId> {
        match self {
            Self::Health => None,
            Self::KeyMetadata(k) | Self::Encrypt(k) | Self::Decrypt(k) => Some(k),
        }
    }
}

/// Maps prefixes to key store indexes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    prefixes: HashMap<String, usize>,
}

impl RouteTable {
    /// Builds the table; `prefixes[i]` belongs to key store `i`.
    pub fn new<'a>(prefixes: impl IntoIterator<Item = &'a str>) -> Self {
        let prefixes = prefixes
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p.to_owned(), i))
            .collect();
        Self { prefixes }
    }

    /// Resolves a request path (and query) to a key store index and an operation.
    pub fn resolve(&self, path: &str, query: Option<&str>) -> Result<(usize, Operation), XksError> {
        if query.is_some() {
            return Err(XksError::invalid_uri_path(
                "XKS API URIs take no query string",
            ));
        }
        let (prefix, operation) = split_api_tail(path)
            .ok_or_else(|| XksError::invalid_uri_path("the path is not an XKS API URI"))?;
        let store =
            self.prefixes.get(prefix).copied().ok_or_else(|| {
                XksError::invalid_uri_path("no key store is configured at this path")
            })?;
        Ok((store, operation?))
    }
}

/// Splits `<prefix>/kms/xks/v1/<api>`; the inner result fails when only the key id is bad.
fn split_api_tail(path: &str) -> Option<(&str, Result<Operation, XksError>)> {
    if let Some(prefix) = path.strip_suffix("/kms/xks/v1/health") {
        return Some((prefix, Ok(Operation::Health)));
    }
    let (rest, op) = path.rsplit_once('/')?;
    let (rest, key) = rest.rsplit_once('/')?;
    let prefix = rest.strip_suffix("/kms/xks/v1/keys")?;
    let make: fn(ExternalKeyId) -> Operation = match op {
        "metadata" => Operation::KeyMetadata,
        "encrypt" => Operation::Encrypt,
        "decrypt" => Operation::Decrypt,
        _ => return None,
    };
    let key = ExternalKeyId::parse(key)
        .map(make)
        .map_err(|e| XksError::invalid_uri_path(e.to_string()));
    Some((prefix, key))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::xks::ErrorName;

    fn table() -> RouteTable {
        RouteTable::new(["", "/tenant-a", "/a/b"])
    }

    fn key(k: &str) -> ExternalKeyId {
        ExternalKeyId::parse(k).unwrap()
    }

    #[test]
    fn uri_1_uri_4_valid_paths_resolve() {
        let t = table();
        assert_eq!(
            t.resolve("/kms/xks/v1/health", None).unwrap(),
            (0, Operation::Health)
        );
        assert_eq!(
            t.resolve("/tenant-a/kms/xks/v1/health", None).unwrap(),
            (1, Operation::Health)
        );
        assert_eq!(
            t.resolve("/a/b/kms/xks/v1/keys/k.1_x-y/encrypt", None)
                .unwrap(),
            (2, Operation::Encrypt(key("k.1_x-y")))
        );
        assert_eq!(
            t.resolve("/tenant-a/kms/xks/v1/keys/k/metadata", None)
                .unwrap(),
            (1, Operation::KeyMetadata(key("k")))
        );
        assert_eq!(
            t.resolve("/kms/xks/v1/keys/k/decrypt", None).unwrap(),
            (0, Operation::Decrypt(key("k")))
        );
        let long = "k".repeat(128);
        assert_eq!(
            t.resolve(&format!("/tenant-a/kms/xks/v1/keys/{long}/encrypt"), None)
                .unwrap()
                .1,
            Operation::Encrypt(key(&long))
        );
    }

    #[test]
    fn uri_10_uri_11_everything_else_is_invalid_uri_path() {
        let t = table();
        let long = format!("/tenant-a/kms/xks/v1/keys/{}/encrypt", "k".repeat(129));
        for bad in [
            "/tenant-a/invalid/kms/xks/v1/health",
            "/tenant-b/kms/xks/v1/health",
            "/tenant-a/kms/xks/v2/health",
            "/tenant-a/kms/xks/v1/health/",
            "/tenant-a/kms/xks/v1/Health",
            "/tenant-a/kms/xks/v1/keys/k/encrypt/",
            "/tenant-a/kms/xks/v1/keys/k/Encrypt",
            "/tenant-a/kms/xks/v1/keys/k/sign",
            "/tenant-a/kms/xks/v1/keys//encrypt",
            "/tenant-a/kms/xks/v1/keys/a%2Fb/encrypt",
            "/tenant-a/kms/xks/v1/keys/a:b/encrypt",
            "/tenant-a/./kms/xks/v1/health",
            "/tenant-a/kms/xks/v1/keys/../metadata",
            "/tenant-a/kms/xks/v1/keys/./encrypt",
            "//kms/xks/v1/health",
            "/TENANT-A/kms/xks/v1/health",
            "/tenant-a",
            "/",
            long.as_str(),
        ] {
            let err = t.resolve(bad, None).unwrap_err();
            assert_eq!(err.name(), ErrorName::InvalidUriPathException, "{bad}");
        }
        let err = t
            .resolve("/tenant-a/kms/xks/v1/health", Some("a=b"))
            .unwrap_err();
        assert_eq!(err.name(), ErrorName::InvalidUriPathException);
    }
}
