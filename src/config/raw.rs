//! The configuration file as serde sees it, before validation. Field names here are the TOML
//! keys documented in `config/xks-proxy.example.toml`; `deny_unknown_fields` everywhere so a
//! typo is an error, not a silently ignored setting.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) hsm: RawHsm,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) key_stores: Vec<RawKeyStore>,
    #[serde(default)]
    pub(super) logging: RawLogging,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    #[serde(default)]
    pub(super) keys: Vec<RawKeyControl>,
    #[serde(default)]
    pub(super) reload: RawReload,
    pub(super) authorization: Option<RawAuthorization>,
}

/// `[authorization]` and `[key_stores.authorization]`: Cedar policies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthorization {
    pub(super) policy_file: PathBuf,
    #[serde(default = "defaults::authorization_mode")]
    pub(super) mode: String,
}

/// Just `[hsm]`, every other section ignored (`keys` commands).
#[derive(Debug, Deserialize)]
pub(super) struct RawHsmOnly {
    pub(super) hsm: RawHsm,
}

/// `[hsm]` and the optional `[[keys]]`, every other section ignored (`keys list`, `keys
/// rotate`: the kill switch says which version encrypts).
#[derive(Debug, Deserialize)]
pub(super) struct RawKeyAdmin {
    pub(super) hsm: RawHsm,
    #[serde(default)]
    pub(super) keys: Vec<RawKeyControl>,
}

/// `[[keys]]`: the per-key kill switch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyControl {
    pub(super) id: String,
    #[serde(default = "defaults::yes")]
    pub(super) enabled: bool,
    #[serde(default)]
    pub(super) disabled_versions: Vec<u32>,
}

/// `[reload]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReload {
    #[serde(default)]
    pub(super) watch_config: bool,
    #[serde(default = "defaults::watch_interval_ms")]
    pub(super) watch_interval_ms: u64,
}

impl Default for RawReload {
    fn default() -> Self {
        Self {
            watch_config: false,
            watch_interval_ms: defaults::watch_interval_ms(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default = "defaults::admin_listen")]
    pub(super) listen: String,
    pub(super) reload_token_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) allowed_hosts: Vec<String>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: defaults::admin_listen(),
            reload_token_file: None,
            allowed_hosts: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) tls: Option<RawTls>,
    #[serde(default)]
    pub(super) plaintext_behind_load_balancer: bool,
    #[serde(default = "defaults::max_connections")]
    pub(super) max_connections: usize,
    #[serde(default = "defaults::handshake_timeout_ms")]
    pub(super) handshake_timeout_ms: u64,
    #[serde(default = "defaults::request_timeout_ms")]
    pub(super) request_timeout_ms: u64,
    #[serde(default = "defaults::shutdown_grace_ms")]
    pub(super) shutdown_grace_ms: u64,
    #[serde(default = "defaults::idle_timeout_ms")]
    pub(super) idle_timeout_ms: u64,
    #[serde(default = "defaults::body_timeout_ms")]
    pub(super) body_timeout_ms: u64,
    #[serde(default = "defaults::http2_max_concurrent_streams")]
    pub(super) http2_max_concurrent_streams: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) certificate_chain: PathBuf,
    pub(super) private_key: PathBuf,
    pub(super) client_auth: Option<RawClientAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClientAuth {
    pub(super) ca_bundle: PathBuf,
    pub(super) allowed_subject_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default = "defaults::max_body_bytes")]
    pub(super) max_body_bytes: usize,
    #[serde(default = "defaults::max_plaintext_bytes")]
    pub(super) max_plaintext_bytes: usize,
    #[serde(default = "defaults::max_aad_bytes")]
    pub(super) max_aad_bytes: usize,
    #[serde(default = "defaults::pre_auth_buffer_bytes")]
    pub(super) pre_auth_buffer_bytes: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: defaults::max_body_bytes(),
            max_plaintext_bytes: defaults::max_plaintext_bytes(),
            max_aad_bytes: defaults::max_aad_bytes(),
            pre_auth_buffer_bytes: defaults::pre_auth_buffer_bytes(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHsm {
    pub(super) module: PathBuf,
    pub(super) token_label: Option<String>,
    pub(super) token_serial: Option<String>,
    pub(super) user_pin: Option<SecretString>,
    pub(super) user_pin_file: Option<PathBuf>,
    #[serde(default = "defaults::sessions")]
    pub(super) sessions: usize,
    #[serde(default = "defaults::queue_depth")]
    pub(super) queue_depth: usize,
    #[serde(default = "defaults::health_key_label")]
    pub(super) health_key_label: String,
    #[serde(default = "defaults::yes")]
    pub(super) create_health_key: bool,
    /// `[[hsm.members]]`: an HSM fleet; empty for the single token above.
    #[serde(default)]
    pub(super) members: Vec<RawHsmMember>,
}

/// One `[[hsm.members]]` entry; unset fields default to `[hsm]`'s.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHsmMember {
    pub(super) id: Option<String>,
    pub(super) module: Option<PathBuf>,
    pub(super) token_label: Option<String>,
    pub(super) token_serial: Option<String>,
    pub(super) user_pin: Option<SecretString>,
    pub(super) user_pin_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(default = "defaults::proxy_fleet_size")]
    pub(super) proxy_fleet_size: u32,
    #[serde(default = "defaults::cache_ttl_seconds")]
    pub(super) cache_ttl_seconds: u64,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            proxy_fleet_size: defaults::proxy_fleet_size(),
            cache_ttl_seconds: defaults::cache_ttl_seconds(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyStore {
    pub(super) name: Option<String>,
    pub(super) path_prefix: String,
    #[serde(default)]
    pub(super) credentials: Vec<RawCredential>,
    pub(super) allowed_regions: Option<Vec<String>>,
    pub(super) allowed_keys: Option<Vec<String>>,
    #[serde(default = "defaults::yes")]
    pub(super) enabled: bool,
    pub(super) rate_limit: Option<RawRateLimit>,
    pub(super) aws_sample_migration: Option<RawAwsSampleMigration>,
    pub(super) authorization: Option<RawAuthorization>,
}

/// `[key_stores.aws_sample_migration]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAwsSampleMigration {
    #[serde(default)]
    pub(super) ciphertext_metadata_b64: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    pub(super) requests_per_second: u32,
    pub(super) burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    pub(super) access_key_id: String,
    pub(super) secret: Option<SecretString>,
    pub(super) secret_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLogging {
    #[serde(default = "defaults::log_level")]
    pub(super) level: String,
    #[serde(default = "defaults::log_format")]
    pub(super) format: String,
}

impl Default for RawLogging {
    fn default() -> Self {
        Self {
            level: defaults::log_level(),
            format: defaults::log_format(),
        }
    }
}

/// Defaults, in one place so the example file and the code agree.
pub(super) mod defaults {
    pub(in crate::config) fn max_connections() -> usize {
        4096
    }
    pub(in crate::config) fn handshake_timeout_ms() -> u64 {
        5_000
    }
    /// Leaves KMS's 250 ms budget (TR-8) room for the network and the TLS handshake.
    pub(in crate::config) fn request_timeout_ms() -> u64 {
        200
    }
    pub(in crate::config) fn shutdown_grace_ms() -> u64 {
        10_000
    }
    /// KMS sends a whole request in one go; seconds are generous and still free a stalled
    /// request's budget and stream quickly.
    pub(in crate::config) fn body_timeout_ms() -> u64 {
        5_000
    }
    /// As HTTP/1.1 keep-alive in hyper: a connection with no request for 30 s is closed.
    pub(in crate::config) fn idle_timeout_ms() -> u64 {
        30_000
    }
    /// KMS sends one request at a time per connection; 32 leaves room for other clients
    /// while keeping a connection's worst case small (README "Limits and exposure").
    pub(in crate::config) fn http2_max_concurrent_streams() -> u32 {
        32
    }
    /// Metrics, probes and reload stay on loopback unless the operator opens them up.
    pub(in crate::config) fn admin_listen() -> String {
        "127.0.0.1:9443".into()
    }
    pub(in crate::config) fn max_body_bytes() -> usize {
        128 * 1024
    }
    pub(in crate::config) fn max_plaintext_bytes() -> usize {
        32 * 1024
    }
    pub(in crate::config) fn max_aad_bytes() -> usize {
        16 * 1024
    }
    /// 128 request bodies at the default cap, thousands of KMS-sized ones.
    pub(in crate::config) fn pre_auth_buffer_bytes() -> usize {
        16 * 1024 * 1024
    }
    pub(in crate::config) fn sessions() -> usize {
        4
    }
    pub(in crate::config) fn queue_depth() -> usize {
        256
    }
    pub(in crate::config) fn health_key_label() -> String {
        "xks-proxy-health-check".into()
    }
    pub(in crate::config) fn yes() -> bool {
        true
    }
    pub(in crate::config) fn proxy_fleet_size() -> u32 {
        1
    }
    pub(in crate::config) fn cache_ttl_seconds() -> u64 {
        30
    }
    pub(in crate::config) fn log_level() -> String {
        "info".into()
    }
    /// Kubernetes updates a mounted ConfigMap within about a minute; a second on top of that
    /// is unnoticeable, and one `stat` a second costs nothing.
    pub(in crate::config) fn watch_interval_ms() -> u64 {
        1_000
    }
    pub(in crate::config) fn authorization_mode() -> String {
        "enforce".into()
    }
    pub(in crate::config) fn log_format() -> String {
        "json".into()
    }
}
