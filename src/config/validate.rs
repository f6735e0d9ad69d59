//! Validation: raw serde structs → [`Settings`], one [`Errors`] entry per bad field, all
//! reported together.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::load::Errors;
use super::raw::{
    RawAdmin, RawClientAuth, RawConfig, RawCredential, RawHsm, RawKeyStore, RawServer,
};
use super::types::{AccessKeyId, ClientSubjectName, UriPrefix};
use super::{
    AdminSettings, ClientAuth, Credential, HealthSettings, HsmMemberSettings, HsmSettings,
    KeyStoreSettings, Limits, LogFormat, LoggingSettings, RateLimit, ServerSettings, Settings,
    TlsSettings, TokenSelector, Transport,
};
use crate::xks::ExternalKeyId;

pub(super) fn validate(raw: RawConfig, errors: &mut Errors) -> Option<Settings> {
    let server = validate_server(raw.server, errors);
    let limits = validate_limits(&raw.limits, errors);
    let (hsm, hsm_members) = validate_hsm(raw.hsm, errors);
    let health = validate_health(&raw.health, errors);
    let key_stores = validate_key_stores(raw.key_stores, hsm.as_ref(), errors);
    let logging = validate_logging(raw.logging, errors);
    let admin = validate_admin(raw.admin, errors);
    Some(Settings {
        server: server?,
        limits: limits?,
        hsm: hsm?,
        hsm_members,
        health: health?,
        key_stores,
        logging: logging?,
        admin: admin?,
    })
}

fn validate_admin(raw: RawAdmin, errors: &mut Errors) -> Option<AdminSettings> {
    let listen = errors.check(
        "admin.listen",
        raw.listen
            .parse::<SocketAddr>()
            .map_err(|_| "must be an IP address and port, e.g. 127.0.0.1:9443".to_owned()),
    );
    let reload_token_file = match raw.reload_token_file {
        None => Some(None),
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(mut text) => {
                let long_enough = text.trim().len() >= MIN_RELOAD_TOKEN_LEN;
                zeroize::Zeroize::zeroize(&mut text);
                if long_enough {
                    Some(Some(path))
                } else {
                    errors.push(
                        "admin.reload_token_file",
                        format!("the token must be at least {MIN_RELOAD_TOKEN_LEN} characters"),
                    );
                    None
                }
            }
            Err(e) => {
                errors.push(
                    "admin.reload_token_file",
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        },
    };
    let hosts_before = errors.0.len();
    let allowed_hosts = raw
        .allowed_hosts
        .iter()
        .enumerate()
        .filter_map(|(i, host)| {
            let lower = host.to_ascii_lowercase();
            let ok = !lower.is_empty()
                && lower.len() <= 253
                && lower
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if ok {
                Some(lower)
            } else {
                errors.push(
                    format!("admin.allowed_hosts[{i}]"),
                    "must be a host name without port, e.g. xks-proxy-admin.monitoring.svc",
                );
                None
            }
        })
        .collect();
    (errors.0.len() == hosts_before).then_some(())?;
    Some(AdminSettings {
        listen: listen?,
        reload_token_file: reload_token_file?,
        allowed_hosts,
    })
}

/// Shortest accepted admin reload token: guessing must be hopeless.
const MIN_RELOAD_TOKEN_LEN: usize = 32;

fn validate_server(raw: RawServer, errors: &mut Errors) -> Option<ServerSettings> {
    let listen = errors.check(
        "server.listen",
        raw.listen
            .parse::<SocketAddr>()
            .map_err(|_| "must be an IP address and port, e.g. 0.0.0.0:443".into()),
    );
    let transport = match (raw.tls, raw.plaintext_behind_load_balancer) {
        (Some(_), true) => {
            errors.push(
                "server.tls",
                "set either [server.tls] or plaintext_behind_load_balancer, not both",
            );
            None
        }
        (None, false) => {
            errors.push("server.tls", "required (or set plaintext_behind_load_balancer = true when a load balancer terminates TLS)");
            None
        }
        (None, true) => Some(Transport::PlaintextBehindLoadBalancer),
        (Some(tls), false) => {
            let chain = existing_file(
                "server.tls.certificate_chain",
                tls.certificate_chain,
                errors,
            );
            let key = existing_file("server.tls.private_key", tls.private_key, errors);
            let client_auth = match tls.client_auth {
                None => Some(ClientAuth::Disabled),
                Some(auth) => validate_client_auth(auth, errors),
            };
            Some(Transport::Tls(TlsSettings {
                certificate_chain: chain?,
                private_key: key?,
                client_auth: client_auth?,
            }))
        }
    };
    let max_connections = errors.check(
        "server.max_connections",
        NonZeroUsize::new(raw.max_connections).ok_or_else(|| "must be at least 1".to_owned()),
    );
    let handshake_timeout = millis(
        "server.handshake_timeout_ms",
        raw.handshake_timeout_ms,
        1..=60_000,
        errors,
    );
    let shutdown_grace = millis(
        "server.shutdown_grace_ms",
        raw.shutdown_grace_ms,
        0..=600_000,
        errors,
    );
    let request_timeout = millis(
        "server.request_timeout_ms",
        raw.request_timeout_ms,
        1..=60_000,
        errors,
    );
    let idle_timeout = millis(
        "server.idle_timeout_ms",
        raw.idle_timeout_ms,
        1_000..=3_600_000,
        errors,
    );
    let http2_max_concurrent_streams = range(
        "server.http2_max_concurrent_streams",
        raw.http2_max_concurrent_streams,
        1..=1000,
        errors,
    );
    Some(ServerSettings {
        listen: listen?,
        transport: transport?,
        max_connections: max_connections?,
        handshake_timeout: handshake_timeout?,
        request_timeout: request_timeout?,
        shutdown_grace: shutdown_grace?,
        idle_timeout: idle_timeout?,
        http2_max_concurrent_streams: http2_max_concurrent_streams?,
    })
}

fn validate_client_auth(raw: RawClientAuth, errors: &mut Errors) -> Option<ClientAuth> {
    let ca_bundle = existing_file("server.tls.client_auth.ca_bundle", raw.ca_bundle, errors);
    if raw.allowed_subject_names.is_empty() {
        errors.push(
            "server.tls.client_auth.allowed_subject_names",
            "must list at least one name, e.g. cks.kms.eu-west-1.amazonaws.com",
        );
    }
    let names: Vec<_> = raw
        .allowed_subject_names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            errors.check(
                &format!("server.tls.client_auth.allowed_subject_names[{i}]"),
                ClientSubjectName::parse(n),
            )
        })
        .collect();
    (names.len() == raw.allowed_subject_names.len() && !names.is_empty()).then_some(
        ClientAuth::Required {
            ca_bundle: ca_bundle?,
            allowed_subject_names: names,
        },
    )
}

fn validate_limits(raw: &super::raw::RawLimits, errors: &mut Errors) -> Option<Limits> {
    let body = range(
        "limits.max_body_bytes",
        raw.max_body_bytes,
        64 * 1024..=16 * 1024 * 1024,
        errors,
    );
    let plaintext = range(
        "limits.max_plaintext_bytes",
        raw.max_plaintext_bytes,
        4300..=1024 * 1024,
        errors,
    );
    // The AAD length travels in two bytes (AAD-1), so 65535 is a hard ceiling.
    let aad = range(
        "limits.max_aad_bytes",
        raw.max_aad_bytes,
        8192..=65_535,
        errors,
    );
    let pre_auth = range(
        "limits.pre_auth_buffer_bytes",
        raw.pre_auth_buffer_bytes,
        raw.max_body_bytes..=1024 * 1024 * 1024,
        errors,
    );
    Some(Limits {
        max_body_bytes: body?,
        max_plaintext_bytes: plaintext?,
        max_aad_bytes: aad?,
        pre_auth_buffer_bytes: pre_auth?,
    })
}

/// Most HSM members GetHealthStatus can report (`ekmFleetDetails`, H-12).
const MAX_HSM_MEMBERS: usize = 10;

fn validate_hsm(raw: RawHsm, errors: &mut Errors) -> (Option<HsmSettings>, Vec<HsmMemberSettings>) {
    let RawHsm {
        module,
        token_label,
        token_serial,
        user_pin,
        user_pin_file,
        members,
        ..
    } = raw;
    let sessions =
        range("hsm.sessions", raw.sessions, 1..=1024, errors).and_then(NonZeroUsize::new);
    let queue_depth = range("hsm.queue_depth", raw.queue_depth, 0..=100_000, errors);
    let health_key_label = errors.check(
        "hsm.health_key_label",
        ExternalKeyId::parse(&raw.health_key_label).map_err(|e| e.to_string()),
    );
    let common = |module, token, user_pin| {
        Some(HsmSettings {
            module,
            token,
            user_pin,
            sessions: sessions?,
            queue_depth: queue_depth?,
            health_key_label: health_key_label.clone()?,
            create_health_key: raw.create_health_key,
        })
    };
    if members.is_empty() {
        let module = existing_file("hsm.module", module, errors);
        let token = token_selector("hsm", token_label, token_serial, errors);
        let user_pin = pin("hsm", user_pin, user_pin_file, errors);
        let single = match (module, token, user_pin) {
            (Some(module), Some(token), Some(user_pin)) => common(module, token, user_pin),
            _ => None,
        };
        return (single, Vec::new());
    }
    for (field, set) in [
        ("hsm.token_label", token_label.is_some()),
        ("hsm.token_serial", token_serial.is_some()),
    ] {
        if set {
            errors.push(
                field,
                "must be absent when [[hsm.members]] are configured: each member names its token",
            );
        }
    }
    if members.len() > MAX_HSM_MEMBERS {
        errors.push(
            "hsm.members",
            format!(
                "{} members configured; GetHealthStatus reports at most {MAX_HSM_MEMBERS} (H-12)",
                members.len()
            ),
        );
    }
    // Only read when a member has no PIN of its own.
    let default_pin = (user_pin.is_some() || user_pin_file.is_some())
        .then(|| pin("hsm", user_pin, user_pin_file, errors))
        .flatten();
    let mut ids = HashSet::new();
    let mut tokens = HashSet::new();
    let mut fleet = Vec::new();
    for (i, member) in members.into_iter().enumerate() {
        let at = format!("hsm.members[{i}]");
        let id = member.id.map(|id| id.trim().to_owned());
        match &id {
            Some(id) if !valid_member_id(id) => errors.push(
                format!("{at}.id"),
                "must be 1–64 printable ASCII characters",
            ),
            Some(id) if !ids.insert(id.clone()) => {
                errors.push(format!("{at}.id"), format!("duplicate member id {id:?}"));
            }
            _ => {}
        }
        let member_module = existing_file(
            &format!("{at}.module"),
            member.module.unwrap_or_else(|| module.clone()),
            errors,
        );
        let token = token_selector(&at, member.token_label, member.token_serial, errors);
        if let (Some(path), Some(token)) = (&member_module, &token) {
            let key = (
                std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()),
                token.clone(),
            );
            if !tokens.insert(key) {
                errors.push(
                    format!("{at}.token_label"),
                    format!("{token:?} on {} is already another member", path.display()),
                );
            }
        }
        let member_pin = if member.user_pin.is_some() || member.user_pin_file.is_some() {
            pin(&at, member.user_pin, member.user_pin_file, errors)
        } else if default_pin.is_none() {
            errors.push(
                format!("{at}.user_pin"),
                "set user_pin or user_pin_file here or in [hsm]",
            );
            None
        } else {
            default_pin.clone()
        };
        if let (Some(module), Some(token), Some(user_pin)) = (member_module, token, member_pin)
            && let Some(hsm) = common(module, token, user_pin)
        {
            fleet.push(HsmMemberSettings { id, hsm });
        }
    }
    let first = fleet.first().map(|member| member.hsm.clone());
    (first, fleet)
}

fn valid_member_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
}

/// `token_label` xor `token_serial` of `section`.
fn token_selector(
    section: &str,
    label: Option<String>,
    serial: Option<String>,
    errors: &mut Errors,
) -> Option<TokenSelector> {
    match (label, serial) {
        (Some(label), None) if !label.trim().is_empty() => {
            Some(TokenSelector::Label(label.trim().to_owned()))
        }
        (None, Some(serial)) if !serial.trim().is_empty() => {
            Some(TokenSelector::Serial(serial.trim().to_owned()))
        }
        (Some(_), Some(_)) => {
            errors.push(
                format!("{section}.token_label"),
                "set token_label or token_serial, not both",
            );
            None
        }
        _ => {
            errors.push(
                format!("{section}.token_label"),
                "set token_label or token_serial (slot indexes are not accepted: they change)",
            );
            None
        }
    }
}

/// The non-empty CKU_USER PIN of `section`.
fn pin(
    section: &str,
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    errors: &mut Errors,
) -> Option<SecretString> {
    let field = format!("{section}.user_pin");
    secret(&field, inline, file, errors).and_then(|pin| {
        (!pin.expose_secret().is_empty())
            .then_some(pin)
            .or_else(|| {
                errors.push(field, "must not be empty");
                None
            })
    })
}

fn validate_health(raw: &super::raw::RawHealth, errors: &mut Errors) -> Option<HealthSettings> {
    let fleet = range(
        "health.proxy_fleet_size",
        raw.proxy_fleet_size,
        1..=u32::MAX,
        errors,
    );
    // H-15: a cached health result may be at most one minute old.
    let ttl = range(
        "health.cache_ttl_seconds",
        raw.cache_ttl_seconds,
        1..=60,
        errors,
    );
    Some(HealthSettings {
        proxy_fleet_size: fleet?,
        cache_ttl: Duration::from_secs(ttl?),
    })
}

fn validate_key_stores(
    raw: Vec<RawKeyStore>,
    hsm: Option<&HsmSettings>,
    errors: &mut Errors,
) -> Vec<KeyStoreSettings> {
    if raw.is_empty() {
        errors.push("key_stores", "configure at least one [[key_stores]]");
    }
    let mut prefixes = HashSet::new();
    let mut key_ids: HashMap<AccessKeyId, usize> = HashMap::new();
    let mut stores = Vec::new();
    for (i, store) in raw.into_iter().enumerate() {
        let at = |field: &str| format!("key_stores[{i}].{field}");
        let prefix = errors.check(&at("path_prefix"), UriPrefix::parse(&store.path_prefix));
        if let Some(p) = &prefix
            && !prefixes.insert(p.clone())
        {
            errors.push(
                at("path_prefix"),
                format!("prefix {:?} is used by two key stores", p.as_str()),
            );
        }
        if store.credentials.is_empty() {
            errors.push(at("credentials"), "needs at least one credential");
        }
        let credentials: Vec<_> = store
            .credentials
            .into_iter()
            .enumerate()
            .filter_map(|(j, c)| {
                validate_credential(
                    c,
                    &format!("key_stores[{i}].credentials[{j}]"),
                    i,
                    &mut key_ids,
                    errors,
                )
            })
            .collect();
        let allowed_regions = store.allowed_regions.inspect(|regions| {
            for (j, r) in regions.iter().enumerate() {
                let ok = !r.is_empty()
                    && r.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if !ok {
                    errors.push(
                        at(&format!("allowed_regions[{j}]")),
                        "must be a region name such as us-east-1",
                    );
                }
            }
        });
        let allowed_keys = store.allowed_keys.map(|keys| {
            keys.iter()
                .enumerate()
                .filter_map(|(j, k)| {
                    let field = at(&format!("allowed_keys[{j}]"));
                    let id =
                        errors.check(&field, ExternalKeyId::parse(k).map_err(|e| e.to_string()))?;
                    if hsm.is_some_and(|h| h.health_key_label == id) {
                        errors.push(field, "the health-check key cannot be served to KMS");
                    }
                    Some(id)
                })
                .collect()
        });
        let name = store.name.unwrap_or_else(|| match &prefix {
            Some(p) if !p.as_str().is_empty() => p.as_str().trim_start_matches('/').to_owned(),
            _ => "default".to_owned(),
        });
        let rate_limit = store.rate_limit.and_then(|raw| {
            let rps = range(
                &at("rate_limit.requests_per_second"),
                raw.requests_per_second,
                1..=1_000_000,
                errors,
            )?;
            let burst = range(
                &at("rate_limit.burst"),
                raw.burst.unwrap_or(rps),
                1..=10_000_000,
                errors,
            )?;
            Some(RateLimit {
                requests_per_second: rps,
                burst,
            })
        });
        if let Some(prefix) = prefix {
            stores.push(KeyStoreSettings {
                name,
                prefix,
                credentials,
                allowed_regions,
                allowed_keys,
                enabled: store.enabled,
                rate_limit,
            });
        }
    }
    stores
}

fn validate_credential(
    raw: RawCredential,
    at: &str,
    store: usize,
    seen: &mut HashMap<AccessKeyId, usize>,
    errors: &mut Errors,
) -> Option<Credential> {
    let id = errors.check(
        &format!("{at}.access_key_id"),
        AccessKeyId::parse(&raw.access_key_id),
    );
    if let Some(id) = &id
        && let Some(other) = seen.insert(id.clone(), store)
    {
        let msg = if other == store {
            "appears twice in this key store".to_owned()
        } else {
            format!(
                "is also used by key_stores[{other}]; an access key id must identify one secret (AU-13)"
            )
        };
        errors.push(format!("{at}.access_key_id"), msg);
    }
    let secret = secret(&format!("{at}.secret"), raw.secret, raw.secret_file, errors)?;
    let s = secret.expose_secret();
    let ok = (43..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !ok {
        errors.push(format!("{at}.secret"), "must be 43-64 characters of A-Z a-z 0-9 + / = (AU-14); `xks-proxy credentials new` makes one");
        return None;
    }
    Some(Credential {
        access_key_id: id?,
        secret,
    })
}

fn validate_logging(raw: super::raw::RawLogging, errors: &mut Errors) -> Option<LoggingSettings> {
    let level = errors.check(
        "logging.level",
        tracing_subscriber::EnvFilter::try_new(&raw.level)
            .map(|_| raw.level.clone())
            .map_err(|e| format!("not a tracing filter: {e}")),
    );
    let format = match raw.format.as_str() {
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        _ => {
            errors.push("logging.format", "must be \"json\" or \"text\"");
            None
        }
    };
    Some(LoggingSettings {
        level: level?,
        format: format?,
    })
}

/// A secret given inline or in a file (trailing newlines are ignored).
fn secret(
    field: &str,
    inline: Option<SecretString>,
    file: Option<PathBuf>,
    errors: &mut Errors,
) -> Option<SecretString> {
    match (inline, file) {
        (Some(s), None) => Some(s),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(mut text) => {
                let trimmed = text.trim_end_matches(['\n', '\r']).to_owned();
                zeroize::Zeroize::zeroize(&mut text);
                Some(SecretString::from(trimmed))
            }
            Err(e) => {
                errors.push(
                    format!("{field}_file"),
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        },
        (Some(_), Some(_)) => {
            errors.push(field, format!("set {field} or {field}_file, not both"));
            None
        }
        (None, None) => {
            errors.push(field, format!("required: set {field}_file, or {field} (e.g. through the environment variable XKS__{})", field.replace('.', "__").to_ascii_uppercase()));
            None
        }
    }
}

fn existing_file(field: &str, path: PathBuf, errors: &mut Errors) -> Option<PathBuf> {
    if path.is_file() {
        Some(path)
    } else {
        errors.push(field, format!("{} is not a readable file", path.display()));
        None
    }
}

fn range<T: PartialOrd + fmt::Display + Copy>(
    field: &str,
    value: T,
    allowed: std::ops::RangeInclusive<T>,
    errors: &mut Errors,
) -> Option<T> {
    if allowed.contains(&value) {
        Some(value)
    } else {
        // The value itself is not quoted back: a misplaced secret must not reach the log.
        errors.push(
            field,
            format!("must be within {}..={}", allowed.start(), allowed.end()),
        );
        None
    }
}

fn millis(
    field: &str,
    value: u64,
    allowed: std::ops::RangeInclusive<u64>,
    errors: &mut Errors,
) -> Option<Duration> {
    range(field, value, allowed, errors).map(Duration::from_millis)
}
