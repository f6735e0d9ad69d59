//! SigV4 request authentication: XKS Proxy API spec v1.0.3, section "Authentication" and
//! Appendix A ("Signing XKS API requests"); checklist §4 (AU-1…AU-17, ROT-1…ROT-3).
//!
//! [`verify`] checks one request against the [`CredentialStore`] of the key store that its path
//! prefix selected (AU-13). The HTTP layer has already routed the request, rejected paths
//! outside `[A-Za-z0-9/_.-]` (AU-17) and buffered the body under the size cap (§3.4 step 3).
//!
//! The signature is recomputed over exactly the headers the request names in `SignedHeaders`
//! (curl signs `content-type` too, AU-6), the host as received (AU-7) and the raw body bytes
//! (AU-8), then compared in constant time (AU-10). An ordinary request is signed directly with
//! a cached signing key (`canonical`, with `aws-sigv4`'s key derivation and HMAC); one whose
//! headers need normalising goes through `aws-sigv4`'s full signer (`sigv4`). Secrets and
//! signatures are never logged; failures are logged at `debug` with the access key id and
//! [`AuthError::reason`] only (AU-15).

mod canonical;
mod error;
mod header;
mod sigv4;

use std::fmt;
use std::sync::Arc;

use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::identity::Identity;
use secrecy::ExposeSecret;

pub use error::AuthError;
pub use sigv4::verify;

/// Provider name recorded in the `aws-credential-types` credentials (never on the wire).
const PROVIDER: &str = "xks-proxy-config";

/// Per-key-store verifier: the store's credentials (≥1; several during rotation, ROT-1) and its
/// optional region allowlist (AU-4).
///
/// Build a new one on configuration reload and swap it in (ROT-2); it is immutable.
#[derive(Clone)]
pub struct CredentialStore {
    /// The SigV4 service the credential scope must name: `kms-xks-proxy` for the XKS API
    /// (AU-3); other AWS-style APIs (the local KMS front's `kms`) reuse the verifier with
    /// theirs.
    service: &'static str,
    credentials: Vec<StoredCredential>,
    allowed_regions: Option<Vec<String>>,
    /// Signs requests with an unknown access key id, so that they cost the same time as a
    /// known id with a wrong signature (AU-12).
    decoy: Identity,
    /// Derived signing keys of these credentials (and the decoy), shared by clones.
    signing_keys: Arc<canonical::SigningKeys>,
}

/// One credential, ready for the signer.
#[derive(Clone)]
struct StoredCredential {
    access_key_id: String,
    /// `aws-credential-types` credentials holding the raw secret (zeroized on drop), used as-is
    /// and never Base64-decoded (AU-5).
    identity: Identity,
}

impl CredentialStore {
    /// Builds the verifier for one key store. `allowed_regions: None` accepts any region.
    ///
    /// Access key ids are expected to be unique (the configuration validates this, AU-13); if
    /// one repeats, its first secret wins.
    pub fn new(
        credentials: &[crate::config::Credential],
        allowed_regions: Option<&[String]>,
    ) -> Self {
        let credentials = credentials
            .iter()
            .map(|c| (c.access_key_id.as_str(), c.secret.expose_secret()));
        Self::for_service(sigv4::SERVICE, credentials, allowed_regions)
    }

    /// A verifier for another SigV4 `service` (e.g. `kms`), with plain access key ids and
    /// secrets: the XKS rules on their shape (AU-14) are the configuration's business, not
    /// the verifier's.
    pub fn for_service<'a>(
        service: &'static str,
        credentials: impl IntoIterator<Item = (&'a str, &'a str)>,
        allowed_regions: Option<&[String]>,
    ) -> Self {
        let credentials = credentials
            .into_iter()
            .map(|(access_key_id, secret)| StoredCredential {
                access_key_id: access_key_id.to_owned(),
                identity: identity(access_key_id, secret),
            })
            .collect();
        Self {
            service,
            credentials,
            allowed_regions: allowed_regions.map(<[String]>::to_vec),
            decoy: identity(
                "XKSPROXYDECOYACCESSKEY",
                "xks-proxy decoy secret, never accepted",
            ),
            signing_keys: Arc::default(),
        }
    }

    /// Number of credentials (for metrics).
    pub fn len(&self) -> usize {
        self.credentials.len()
    }

    /// Whether the store has no credential (and so rejects every request).
    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty()
    }

    /// The signing identity for an access key id and its index, if it is one of ours.
    fn lookup(&self, access_key_id: &str) -> Option<(usize, &Identity)> {
        self.credentials
            .iter()
            .position(|c| c.access_key_id == access_key_id)
            .map(|index| (index, &self.credentials[index].identity))
    }

    /// Whether the credential scope region is accepted (AU-4).
    fn region_allowed(&self, region: &str) -> bool {
        self.allowed_regions
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|r| r == region))
    }
}

impl fmt::Debug for CredentialStore {
    /// Lists access key ids and regions; never secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self
            .credentials
            .iter()
            .map(|c| c.access_key_id.as_str())
            .collect();
        f.debug_struct("CredentialStore")
            .field("access_key_ids", &ids)
            .field("allowed_regions", &self.allowed_regions)
            .finish_non_exhaustive()
    }
}

/// Wraps an access key id and raw secret for the signer.
fn identity(access_key_id: &str, secret: &str) -> Identity {
    Credentials::new(access_key_id, secret, None, None, PROVIDER).into()
}

/// Who signed a verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The access key id from the credential scope; one of the store's.
    pub access_key_id: String,
    /// The region from the credential scope: the AWS region KMS called from (AU-3).
    pub region: String,
}

#[cfg(test)]
mod tests;
