//! Configuration: a TOML file plus `XKS__SECTION__KEY` environment overrides, loaded with the
//! `config` crate into raw serde structs (module `raw`) and then turned into the validated
//! [`Settings`] below ("parse, don't validate"). Every error names its field path, and all
//! errors are reported at once before the proxy binds a socket.
//!
//! `config/xks-proxy.example.toml` documents every field.

mod error;
mod load;
mod raw;
mod restart;
#[cfg(test)]
mod tests;
mod types;
mod validate;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

pub use error::{ConfigError, ConfigErrors};
pub use load::{ENV_PREFIX, load, load_from_str, load_hsm, load_key_admin};
pub use restart::RestartOnly;
pub use types::{AccessKeyId, ClientSubjectName, UriPrefix};

use crate::authz::Policies;
use crate::xks::{ExternalKeyId, KeyVersion};

/// The validated configuration of one proxy process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The XKS listener.
    pub server: ServerSettings,
    /// Request size limits.
    pub limits: Limits,
    /// The HSM: the single `[hsm]` token, or a fleet of `[[hsm.members]]`.
    pub hsm: Hsm,
    /// GetHealthStatus answers.
    pub health: HealthSettings,
    /// One logical key store per path prefix (URI-3); never empty, prefixes unique.
    pub key_stores: Vec<KeyStoreSettings>,
    /// Logging.
    pub logging: LoggingSettings,
    /// The admin listener: metrics, probes, reload.
    pub admin: AdminSettings,
    /// The per-key kill switch (`[[keys]]`).
    pub keys: KeyControls,
    /// How the configuration reloads besides SIGHUP and `POST /admin/reload`.
    pub reload: ReloadSettings,
    /// Cedar policies for every key store without its own (`[authorization]`); `None`: no
    /// secondary authorization.
    pub authorization: Option<Policies>,
}

impl Settings {
    /// Valid but risky choices, for `check-config` to print and `serve` to log at `warn`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.admin.exposed() {
            warnings.push(format!(
                "admin.listen = {} is not a loopback address: /metrics, /healthz and /readyz \
                 answer anyone who can reach it (plain HTTP, no authentication); restrict it \
                 with a firewall or network policy, or bind 127.0.0.1",
                self.admin.listen
            ));
        }
        warnings
    }
}

/// The admin listener (plain HTTP): `GET /metrics`, `GET /healthz`, `GET /readyz`,
/// `POST /admin/reload`. It is unauthenticated, so it defaults to loopback.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Address to bind, e.g. `127.0.0.1:9443`.
    pub listen: SocketAddr,
    /// File holding the bearer token `POST /admin/reload` requires; `None` disables reload
    /// over HTTP (SIGHUP still works). Read on every reload request, so it can be rotated.
    pub reload_token_file: Option<PathBuf>,
    /// Host names (besides IP literals and `localhost`) the admin listener answers to; any
    /// other `Host` is refused, which defeats DNS rebinding from a browser.
    pub allowed_hosts: Vec<String>,
}

impl AdminSettings {
    /// Whether the admin listener is reachable from other machines.
    pub fn exposed(&self) -> bool {
        !self.listen.ip().is_loopback()
    }
}

/// The XKS listener.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address to bind, e.g. `0.0.0.0:443`.
    pub listen: SocketAddr,
    /// TLS, or plain HTTP behind a TLS-terminating load balancer.
    pub transport: Transport,
    /// Most concurrent connections; further ones wait in the accept backlog.
    pub max_connections: NonZeroUsize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time budget of one XKS request inside the proxy (KMS allows 250 ms end to end, TR-8).
    pub request_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    /// A connection with no request in progress for this long is closed (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Time a client has to send a request body once its head arrived (reloadable).
    pub body_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
}

/// How the listener speaks.
#[derive(Debug, Clone)]
pub enum Transport {
    /// HTTPS (TR-1).
    Tls(TlsSettings),
    /// Plain HTTP: only for a load balancer that terminates TLS in front of the proxy.
    PlaintextBehindLoadBalancer,
}

/// Server certificate and optional client authentication.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM file with the leaf certificate followed by its intermediates (TR-7).
    pub certificate_chain: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// mTLS (MT-1…7).
    pub client_auth: ClientAuth,
}

/// Client certificate authentication.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificate is requested.
    Disabled,
    /// A client certificate is mandatory, must chain to `ca_bundle` and carry one of
    /// `allowed_subject_names` as its subject CN or a SAN dNSName (MT-2, MT-3, MT-6).
    Required {
        /// PEM file with the trusted client CA certificates.
        ca_bundle: PathBuf,
        /// Accepted names, e.g. `cks.kms.eu-west-1.amazonaws.com` (MT-4); never empty.
        allowed_subject_names: Vec<ClientSubjectName>,
    },
}

/// Size limits, all at or above the spec minimums (E-1, E-4, TR-12). Requests above them get
/// 501 `UnsupportedOperationException` (E-17).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body in bytes, enforced before buffering (≥ 64 KiB).
    pub max_body_bytes: usize,
    /// Largest plaintext/ciphertext in bytes (≥ 4300).
    pub max_plaintext_bytes: usize,
    /// Largest AAD in bytes (8192…65535).
    pub max_aad_bytes: usize,
    /// Request body bytes the whole process may hold before their requests are authenticated;
    /// beyond it, requests get 429 `ThrottlingException` (≥ `max_body_bytes`).
    pub pre_auth_buffer_bytes: usize,
}

/// The PKCS#11 module and token.
#[derive(Debug, Clone)]
pub struct HsmSettings {
    /// Path of the vendor's PKCS#11 library.
    pub module: PathBuf,
    /// Which token to use; never a slot index, which can change across reboots.
    pub token: TokenSelector,
    /// The CKU_USER PIN; from `user_pin_file` or the `XKS__HSM__USER_PIN` environment variable.
    pub user_pin: SecretString,
    /// Logged-in sessions, one per worker thread.
    pub sessions: NonZeroUsize,
    /// Requests that may wait for a free session before answering `ThrottlingException`.
    pub queue_depth: usize,
    /// Label of the dedicated health-check key (H-3); never served as a customer key.
    pub health_key_label: ExternalKeyId,
    /// Generate the health-check key at startup when the token lacks it.
    pub create_health_key: bool,
}

/// The HSM the proxy uses: one token, or a fleet of tokens holding the same keys.
#[derive(Debug, Clone)]
pub enum Hsm {
    /// The single token `[hsm]` names (the single-token backend).
    Single(HsmSettings),
    /// `[[hsm.members]]` (1–10, H-12), each with `[hsm]`'s defaults applied.
    Fleet(Fleet),
}

impl Hsm {
    /// The settings the members share (pool sizes, health key): those of the single token, or
    /// of the first member of a fleet. (The `keys` commands act on every member.)
    pub fn primary(&self) -> &HsmSettings {
        match self {
            Self::Single(hsm) => hsm,
            Self::Fleet(fleet) => &fleet.first.hsm,
        }
    }

    /// Every token as a fleet member; a single token is a fleet of one without an id.
    pub fn members(&self) -> Vec<HsmMemberSettings> {
        match self {
            Self::Single(hsm) => vec![HsmMemberSettings {
                id: None,
                hsm: hsm.clone(),
            }],
            Self::Fleet(fleet) => fleet.members().cloned().collect(),
        }
    }
}

/// The members of an HSM fleet: never empty.
#[derive(Debug, Clone)]
pub struct Fleet {
    first: HsmMemberSettings,
    rest: Vec<HsmMemberSettings>,
}

impl Fleet {
    /// A fleet of `members`, or `None` when there is none.
    pub fn new(members: Vec<HsmMemberSettings>) -> Option<Self> {
        let mut members = members.into_iter();
        Some(Self {
            first: members.next()?,
            rest: members.collect(),
        })
    }

    /// The members in configuration order.
    pub fn members(&self) -> impl Iterator<Item = &HsmMemberSettings> {
        std::iter::once(&self.first).chain(&self.rest)
    }
}

/// One member of an HSM fleet (`[[hsm.members]]`), with `[hsm]`'s defaults applied.
///
/// ```toml
/// [hsm]
/// module = "/usr/lib/softhsm/libsofthsm2.so"
/// user_pin_file = "/etc/xks-proxy/hsm-pin"
///
/// [[hsm.members]]
/// id = "hsm-a"
/// token_label = "xks-a"
///
/// [[hsm.members]]
/// token_serial = "0123456789abcdef"
/// ```
#[derive(Debug, Clone)]
pub struct HsmMemberSettings {
    /// The member's id in health reports, audit lines and metrics; `None`: the token serial.
    pub id: Option<String>,
    /// Module, token and PIN of this member; sessions, queue and health key from `[hsm]`.
    pub hsm: HsmSettings,
}

/// Token selection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenSelector {
    /// By `CKA_LABEL` of the token (padded to 32 chars by PKCS#11; compared trimmed).
    Label(String),
    /// By serial number (compared trimmed).
    Serial(String),
}

/// Values reported by GetHealthStatus.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// `xksProxyFleetSize`: how many proxy replicas serve this endpoint (H-7).
    pub proxy_fleet_size: u32,
    /// How long a deep health check result may be reused (≤ 60 s, H-15).
    pub cache_ttl: Duration,
}

/// One logical key store: a path prefix with its credentials and key set (URI-3).
#[derive(Debug, Clone)]
pub struct KeyStoreSettings {
    /// Human-readable name for logs and metrics.
    pub name: String,
    /// Path prefix before `/kms/xks/v1`; may be empty.
    pub prefix: UriPrefix,
    /// SigV4 credentials accepted on this prefix only (AU-13); at least one, several during
    /// rotation (ROT-1).
    pub credentials: Vec<Credential>,
    /// SigV4 regions accepted; `None` accepts any (AU-4).
    pub allowed_regions: Option<Vec<String>>,
    /// External key ids served on this prefix; `None` serves every key on the token except
    /// the health-check key.
    pub allowed_keys: Option<Vec<ExternalKeyId>>,
    /// A disabled store answers every request with `InvalidStateException`.
    pub enabled: bool,
    /// Optional request quota of this key store (URI-3): beyond it, `ThrottlingException`.
    pub rate_limit: Option<RateLimit>,
    /// Decrypt also accepts ciphertexts made by AWS's sample proxy.
    pub aws_sample_migration: Option<AwsSampleMigration>,
    /// This store's own Cedar policies (`[key_stores.authorization]`), instead of the
    /// process-wide `[authorization]`.
    pub authorization: Option<Policies>,
}

/// The per-key kill switch: keys and key versions the operator turned off (`[[keys]]`).
/// Keys not listed are enabled, with every version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyControls {
    keys: HashMap<ExternalKeyId, KeyControl>,
}

/// One `[[keys]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyControl {
    /// `false`: GetKeyMetadata says `DISABLED`; Encrypt and Decrypt are refused.
    pub enabled: bool,
    /// Versions that neither encrypt nor decrypt any more.
    pub disabled_versions: BTreeSet<KeyVersion>,
}

impl KeyControls {
    /// The switch for `id`, if the configuration lists it.
    pub fn get(&self, id: &ExternalKeyId) -> Option<&KeyControl> {
        self.keys.get(id)
    }

    /// Whether `id` is enabled (not turned off as a whole).
    pub fn key_enabled(&self, id: &ExternalKeyId) -> bool {
        self.get(id).is_none_or(|key| key.enabled)
    }

    /// Whether `version` of `id` may be used, the key itself being enabled.
    pub fn version_enabled(&self, id: &ExternalKeyId, version: KeyVersion) -> bool {
        self.get(id)
            .is_none_or(|key| !key.disabled_versions.contains(&version))
    }

    /// The listed keys, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&ExternalKeyId, &KeyControl)> {
        self.keys.iter()
    }
}

/// `[reload]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSettings {
    /// Reload when the configuration file changes (its content, or the file a symlink points
    /// to, as a Kubernetes ConfigMap update does), checked every `watch_interval`.
    pub watch_config: bool,
    /// How often the file is checked.
    pub watch_interval: Duration,
}

/// Accepting on Decrypt the ciphertexts AWS's sample proxy (`aws-samples/aws-kms-xks-proxy`)
/// made for this key store (`[key_stores.aws_sample_migration]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSampleMigration {
    /// The sample's one static `ciphertextMetadata` (its `ciphertext_metadata_b64`, often
    /// empty): Decrypt requests carrying exactly this value are tried in the sample's format
    /// first.
    pub ciphertext_metadata: Vec<u8>,
}

/// A token bucket: `requests_per_second` sustained, bursts of up to `burst` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained rate.
    pub requests_per_second: u32,
    /// Bucket size (≥ 1).
    pub burst: u32,
}

/// A SigV4 credential (AU-14).
#[derive(Debug, Clone)]
pub struct Credential {
    /// 20–30 characters of `A-Z2-7`.
    pub access_key_id: AccessKeyId,
    /// The raw secret, used as UTF-8 bytes (AU-5).
    pub secret: SecretString,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LoggingSettings {
    /// A `tracing` filter directive, e.g. `info` or `xks_proxy=debug,info`.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Human-readable text, for development.
    Text,
}
