//! XKS Proxy API domain: wire types, identifiers, AAD framing and CDIV, errors.
//!
//! Spec: XKS Proxy API v1.0.3, sections "GetKeyMetadata", "Encrypt", "Decrypt",
//! "GetHealthStatus", "Error codes" and Appendix C.

mod error;
pub mod framing;
mod ids;
pub mod wire;

pub use error::{ErrorName, XksError};
pub use ids::{ExternalKeyId, KeyIdError, KeyVersion, MAX_EXTERNAL_KEY_ID_LEN, VersionedKey};
