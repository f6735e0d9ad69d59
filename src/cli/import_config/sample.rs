//! The settings file of AWS's sample proxy (`aws-samples/aws-kms-xks-proxy`, `xks-axum`,
//! `configuration/settings*.toml`) as serde sees it.
//!
//! Lenient on purpose: unknown keys are ignored (the sample ignores them too, and its versions
//! differ, e.g. `server.port_http_ping` or a flat `server.tcp_keepalive_secs`), and a setting
//! the mapping does not need is optional even where the sample requires it. What the mapping
//! needs (`server.ip`, `server.port`, `security.is_tls_enabled`, `security.is_mtls_enabled`,
//! `pkcs11.user_pin`, `pkcs11.PKCS11_HSM_MODULE`) is required, as in the sample.

use std::collections::BTreeSet;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, de};

/// The whole file.
#[derive(Debug, Deserialize)]
pub(super) struct Sample {
    pub(super) server: Server,
    pub(super) security: Security,
    pub(super) tls: Option<Tls>,
    pub(super) tracing: Option<Tracing>,
    pub(super) pkcs11: Pkcs11,
    pub(super) pkcs11_logger: Option<Pkcs11Logger>,
    pub(super) limits: Option<Limits>,
    pub(super) hsm_capabilities: Option<HsmCapabilities>,
    #[serde(default)]
    pub(super) external_key_stores: Vec<ExternalKeyStore>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
pub(super) struct Server {
    pub(super) ip: String,
    pub(super) port: u16,
    pub(super) port_http_ping: Option<u16>,
    pub(super) region: Option<String>,
    pub(super) service: Option<String>,
    pub(super) ciphertext_metadata_b64: Option<String>,
    /// `[server.tcp_keepalive]` (a table) in most versions.
    pub(super) tcp_keepalive: Option<toml::Value>,
    /// The same, flat, in older versions.
    pub(super) tcp_keepalive_secs: Option<toml::Value>,
}

/// `[security]`.
#[derive(Debug, Deserialize)]
pub(super) struct Security {
    #[serde(default = "yes")]
    pub(super) is_sigv4_auth_enabled: bool,
    pub(super) is_tls_enabled: bool,
    pub(super) is_mtls_enabled: bool,
    pub(super) secondary_auth: Option<toml::Value>,
    pub(super) oso: Option<toml::Value>,
}

fn yes() -> bool {
    true
}

/// `[tls]`: paths, relative to the sample's working directory.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Tls {
    #[serde(default)]
    pub(super) tls_cert_pem: String,
    #[serde(default)]
    pub(super) tls_key_pem: String,
    pub(super) mtls_client_ca_pem: Option<String>,
    pub(super) mtls_client_dns_name: Option<String>,
}

/// `[tracing]`.
#[derive(Debug, Deserialize)]
pub(super) struct Tracing {
    #[serde(default = "yes")]
    pub(super) is_stdout_writer_enabled: bool,
    #[serde(default)]
    pub(super) is_file_writer_enabled: bool,
    pub(super) level: Option<String>,
    pub(super) directory: Option<String>,
    pub(super) file_prefix: Option<String>,
    pub(super) rotation_kind: Option<String>,
}

/// `[pkcs11]`.
#[derive(Debug, Deserialize)]
pub(super) struct Pkcs11 {
    pub(super) session_pool_max_size: Option<u64>,
    pub(super) session_pool_timeout_milli: Option<u64>,
    pub(super) user_pin: SampleSecret,
    pub(super) session_eager_close: Option<bool>,
    #[serde(rename = "PKCS11_HSM_MODULE")]
    pub(super) module: String,
    pub(super) context_read_timeout_milli: Option<u64>,
}

/// `[pkcs11_logger]`: environment defaults for the pkcs11-logger wrapper library.
#[derive(Debug, Deserialize)]
pub(super) struct Pkcs11Logger {
    #[serde(rename = "PKCS11_LOGGER_LIBRARY_PATH", default)]
    pub(super) library_path: String,
}

/// `[limits]`: sizes of the Base64 fields of a request.
#[derive(Debug, Deserialize)]
pub(super) struct Limits {
    pub(super) max_plaintext_in_base64: Option<u64>,
    pub(super) max_aad_in_base64: Option<u64>,
}

/// `[hsm_capabilities]`.
#[derive(Debug, Deserialize)]
pub(super) struct HsmCapabilities {
    #[serde(default)]
    pub(super) can_generate_iv: bool,
}

/// One `[[external_key_stores]]` entry.
#[derive(Debug, Deserialize)]
pub(super) struct ExternalKeyStore {
    pub(super) uri_path_prefix: String,
    pub(super) sigv4_access_key_id: String,
    pub(super) sigv4_secret_access_key: SampleSecret,
    /// A set in the sample; sorted here so the output is stable.
    #[serde(default)]
    pub(super) xks_key_id_set: BTreeSet<String>,
}

/// A secret string (PIN, SigV4 secret). A value of the wrong type is refused with a message
/// that never shows it: serde's own message would quote the value (`invalid type: integer
/// `1234``) and the error goes to stderr.
pub(super) struct SampleSecret(pub(super) SecretString);

impl std::fmt::Debug for SampleSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SampleSecret([REDACTED])")
    }
}

impl<'de> Deserialize<'de> for SampleSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(deserializer)? {
            toml::Value::String(s) => Ok(Self(SecretString::from(s))),
            _ => Err(de::Error::custom(
                "a secret (PIN or SigV4 secret) must be a quoted string; the value is not shown",
            )),
        }
    }
}
