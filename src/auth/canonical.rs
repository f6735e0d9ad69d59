//! The signature of an ordinary request, computed directly (Appendix A Tasks 1–3), with the
//! derived signing keys cached per date and region.
//!
//! `aws-sigv4`'s `sign` rebuilds the request as an `http::Request`, sorts and normalises its
//! headers, derives the signing key with four HMACs and formats signing instructions on every
//! call: about a tenth of the proxy's CPU per request in a profile. For a request whose
//! canonical form needs no normalising the canonical request is a plain concatenation, and
//! the key changes only daily, so this module builds the canonical request and the string to
//! sign itself and uses `aws-sigv4`'s own `generate_signing_key` and `calculate_signature`.
//!
//! "Ordinary" (anything else goes to `aws-sigv4`'s full signer, see `sigv4`): a path of
//! `[A-Za-z0-9/_.-]` only (the HTTP layer already refuses others, AU-17), every signed header
//! present exactly once, and no value with leading, trailing or doubled spaces. Header names
//! arrive lowercase and strictly ascending (the `Authorization` parser checks), so they are
//! already in canonical order. The tests check the two paths agree.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::CredentialStore;
use super::header::AuthorizationHeader;

/// The most (date, region) pairs kept per credential store: a handful are live at a time; an
/// attacker cycling regions only restarts the cache.
const MAX_CACHED_SCOPES: usize = 64;

/// Derived SigV4 signing keys of one credential store, by (date, region): for each such scope
/// the keys of every credential and of the decoy, derived together. So a request with an
/// unknown access key id hits or misses the cache exactly when a known one would, and the
/// time a request takes does not tell whether its access key id exists (AU-12).
#[derive(Default)]
pub(super) struct SigningKeys {
    scopes: RwLock<HashMap<(String, String), ScopeKeys>>,
}

/// The signing keys of one (date, region) scope, indexed like the store's credentials, the
/// decoy's last.
type ScopeKeys = Arc<[Zeroizing<Vec<u8>>]>;

impl SigningKeys {
    /// The signing keys of every credential of `store` (in order, the decoy's last) for
    /// `date` (the scope's `YYYYMMDD`, matching `time`) and `region`.
    fn get(
        &self,
        store: &CredentialStore,
        time: SystemTime,
        date: &str,
        region: &str,
    ) -> ScopeKeys {
        let scope = (date.to_owned(), region.to_owned());
        if let Some(found) = self.scopes.read().get(&scope) {
            return Arc::clone(found);
        }
        let derive = |identity: &Identity| {
            let secret = identity
                .data::<Credentials>()
                .map_or("", Credentials::secret_access_key);
            Zeroizing::new(
                v4::generate_signing_key(secret, time, region, store.service)
                    .as_ref()
                    .to_vec(),
            )
        };
        let derived: ScopeKeys = store
            .credentials
            .iter()
            .map(|c| &c.identity)
            .chain(std::iter::once(&store.decoy))
            .map(derive)
            .collect();
        let mut scopes = self.scopes.write();
        if scopes.len() >= MAX_CACHED_SCOPES {
            scopes.clear();
        }
        scopes.insert(scope, Arc::clone(&derived));
        derived
    }

    /// How many (date, region) scopes are cached.
    #[cfg(test)]
    pub(super) fn scopes(&self) -> usize {
        self.scopes.read().len()
    }
}

/// What the signature covers besides the credential.
pub(super) struct Signable<'a> {
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    /// `(name, value)` of every signed header, in `SignedHeaders` order.
    pub(super) headers: &'a [(&'a str, &'a str)],
    pub(super) body: &'a [u8],
    /// The `X-Amz-Date` value (`YYYYMMDDTHHMMSSZ`, already validated) and its time.
    pub(super) amz_date: &'a str,
    pub(super) time: SystemTime,
}

/// The credential that signs: its store and its index there (`store.credentials.len()`
/// for the decoy).
pub(super) struct Signer<'a> {
    pub(super) store: &'a CredentialStore,
    pub(super) credential: usize,
}

/// The hex signature of an ordinary request, or `None` when it needs `aws-sigv4`'s
/// normalising signer.
pub(super) fn signature(
    request: &Signable<'_>,
    auth: &AuthorizationHeader<'_>,
    signer: &Signer<'_>,
) -> Option<String> {
    let canonical = canonical_request(request, auth)?;
    let scope = &auth.scope;
    let mut string_to_sign = String::with_capacity(160);
    string_to_sign.push_str("AWS4-HMAC-SHA256\n");
    string_to_sign.push_str(request.amz_date);
    string_to_sign.push('\n');
    for part in [scope.date, "/", scope.region, "/", scope.service, "/"] {
        string_to_sign.push_str(part);
    }
    string_to_sign.push_str("aws4_request\n");
    string_to_sign.push_str(&hex(&Sha256::digest(canonical.as_bytes())));
    let store = signer.store;
    let keys = store
        .signing_keys
        .get(store, request.time, scope.date, scope.region);
    let key = keys.get(signer.credential)?;
    Some(v4::calculate_signature(&**key, string_to_sign.as_bytes()))
}

/// Task 1's canonical request, or `None` if the request is not ordinary (module docs).
fn canonical_request(request: &Signable<'_>, auth: &AuthorizationHeader<'_>) -> Option<String> {
    let path_ok = request.path.starts_with('/')
        && request
            .path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'-'));
    if !path_ok || request.headers.len() != auth.signed_headers.len() {
        return None;
    }
    let mut canonical = String::with_capacity(256);
    canonical.push_str(request.method);
    canonical.push('\n');
    canonical.push_str(request.path);
    canonical.push_str("\n\n");
    for (&(name, value), &signed) in request.headers.iter().zip(&auth.signed_headers) {
        let plain = !value.starts_with(' ') && !value.ends_with(' ') && !value.contains("  ");
        if name != signed || !plain {
            return None;
        }
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value);
        canonical.push('\n');
    }
    canonical.push('\n');
    canonical.push_str(&auth.signed_headers.join(";"));
    canonical.push('\n');
    canonical.push_str(&hex(&Sha256::digest(request.body)));
    Some(canonical)
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}
