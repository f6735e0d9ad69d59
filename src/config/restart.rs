//! Which settings a reload cannot apply, as a value that can be compared.
//!
//! [`RestartOnly::of`] destructures [`Settings`] without `..`: a new field does not compile until
//! it is bound here (restart-only) or named as reloadable (`field: _`). The struct and its
//! comparison come from one list ([`restart_only!`]), so a field cannot be compared without a
//! key name or named without being compared.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{
    AdminSettings, HealthSettings, Hsm, HsmMemberSettings, HsmSettings, Limits, LogFormat,
    LoggingSettings, ServerSettings, Settings, TokenSelector, Transport,
};
use crate::xks::ExternalKeyId;

/// TLS or plain HTTP: the choice needs a restart; certificates and mTLS settings reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransportKind {
    Tls,
    Plaintext,
}

/// A PIN, compared by its SHA-256 so that no second copy of it is kept.
#[derive(Clone, PartialEq, Eq)]
struct PinDigest([u8; 32]);

impl PinDigest {
    fn of(pin: &SecretString) -> Self {
        Self(Sha256::digest(pin.expose_secret().as_bytes()).into())
    }
}

impl std::fmt::Debug for PinDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinDigest(..)")
    }
}

/// The restart-only part of one HSM token's settings.
#[derive(Debug, Clone, PartialEq)]
struct Token {
    module: PathBuf,
    token: TokenSelector,
    pin: PinDigest,
}

/// One `[[hsm.members]]` entry as far as a restart is concerned.
#[derive(Debug, Clone, PartialEq)]
struct Member {
    id: Option<String>,
    token: Token,
}

/// Declares [`RestartOnly`] with one field per restart-only key, and its comparison.
macro_rules! restart_only {
    ($( $field:ident : $ty:ty => $key:literal ),* $(,)?) => {
        /// The settings a reload cannot apply; see the module docs.
        #[derive(Debug, Clone, PartialEq)]
        pub struct RestartOnly {
            $( $field: $ty, )*
        }

        impl RestartOnly {
            /// The configuration keys whose value differs between `self` and `new`.
            pub fn changed(&self, new: &Self) -> Vec<&'static str> {
                let mut keys = Vec::new();
                $( if self.$field != new.$field { keys.push($key); } )*
                keys
            }
        }
    };
}

restart_only! {
    listen: SocketAddr => "server.listen",
    transport: TransportKind => "server.tls / plaintext_behind_load_balancer",
    max_connections: NonZeroUsize => "server.max_connections",
    handshake_timeout: Duration => "server.handshake_timeout_ms",
    shutdown_grace: Duration => "server.shutdown_grace_ms",
    idle_timeout: Duration => "server.idle_timeout_ms",
    http2_max_concurrent_streams: u32 => "server.http2_max_concurrent_streams",
    pre_auth_buffer_bytes: usize => "limits.pre_auth_buffer_bytes",
    hsm_module: PathBuf => "hsm.module",
    hsm_token: TokenSelector => "hsm.token_label / token_serial",
    hsm_pin: PinDigest => "hsm.user_pin",
    hsm_sessions: NonZeroUsize => "hsm.sessions",
    hsm_queue_depth: usize => "hsm.queue_depth",
    health_key_label: ExternalKeyId => "hsm.health_key_label",
    create_health_key: bool => "hsm.create_health_key",
    hsm_members: Vec<Member> => "hsm.members",
    proxy_fleet_size: u32 => "health.proxy_fleet_size",
    cache_ttl: Duration => "health.cache_ttl_seconds",
    admin_listen: SocketAddr => "admin.listen",
    reload_token_file: Option<PathBuf> => "admin.reload_token_file",
    allowed_hosts: Vec<String> => "admin.allowed_hosts",
    log_format: LogFormat => "logging.format",
    watch_config: bool => "reload.watch_config",
    watch_interval: Duration => "reload.watch_interval_ms",
}

impl RestartOnly {
    /// The restart-only values of `settings`.
    pub fn of(settings: &Settings) -> Self {
        let Settings {
            server,
            limits,
            hsm,
            health,
            key_stores: _, // reloadable: stores, credentials, allowlists, quotas
            logging,
            admin,
            keys: _, // reloadable: the kill switch
            reload,
            authorization: _, // reloadable: Cedar policies
        } = settings;
        let ServerSettings {
            listen,
            transport,
            max_connections,
            handshake_timeout,
            request_timeout: _, // reloadable
            shutdown_grace,
            idle_timeout,
            body_timeout: _, // reloadable
            http2_max_concurrent_streams,
        } = server;
        let Limits {
            max_body_bytes: _,      // reloadable
            max_plaintext_bytes: _, // reloadable
            max_aad_bytes: _,       // reloadable
            pre_auth_buffer_bytes,
        } = limits;
        let HsmSettings {
            module,
            token,
            user_pin,
            sessions,
            queue_depth,
            health_key_label,
            create_health_key,
        } = hsm.primary();
        let hsm_members = match hsm {
            Hsm::Single(_) => Vec::new(),
            Hsm::Fleet(fleet) => fleet.members().map(member).collect(),
        };
        let HealthSettings {
            proxy_fleet_size,
            cache_ttl,
        } = health;
        let LoggingSettings {
            level: _, // reloadable
            format,
        } = logging;
        let AdminSettings {
            listen: admin_listen,
            reload_token_file,
            allowed_hosts,
        } = admin;
        Self {
            listen: *listen,
            transport: match transport {
                // Certificate, key and mTLS settings reload.
                Transport::Tls(_) => TransportKind::Tls,
                Transport::PlaintextBehindLoadBalancer => TransportKind::Plaintext,
            },
            max_connections: *max_connections,
            handshake_timeout: *handshake_timeout,
            shutdown_grace: *shutdown_grace,
            idle_timeout: *idle_timeout,
            http2_max_concurrent_streams: *http2_max_concurrent_streams,
            pre_auth_buffer_bytes: *pre_auth_buffer_bytes,
            hsm_module: module.clone(),
            hsm_token: token.clone(),
            hsm_pin: PinDigest::of(user_pin),
            hsm_sessions: *sessions,
            hsm_queue_depth: *queue_depth,
            health_key_label: health_key_label.clone(),
            create_health_key: *create_health_key,
            hsm_members,
            proxy_fleet_size: *proxy_fleet_size,
            cache_ttl: *cache_ttl,
            admin_listen: *admin_listen,
            reload_token_file: reload_token_file.clone(),
            allowed_hosts: allowed_hosts.clone(),
            log_format: *format,
            watch_config: reload.watch_config,
            watch_interval: reload.watch_interval,
        }
    }
}

/// A fleet member's module, token and PIN; its pool sizes and health key are `[hsm]`'s and
/// compared there.
fn member(member: &HsmMemberSettings) -> Member {
    let HsmMemberSettings { id, hsm } = member;
    Member {
        id: id.clone(),
        token: Token {
            module: hsm.module.clone(),
            token: hsm.token.clone(),
            pin: PinDigest::of(&hsm.user_pin),
        },
    }
}
