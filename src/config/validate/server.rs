//! `[server]` (listener, TLS, mTLS), `[limits]` and `[admin]`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;

use super::super::error::Errors;
use super::super::raw::{RawAdmin, RawClientAuth, RawLimits, RawServer};
use super::super::{AdminSettings, ClientAuth, Limits, ServerSettings, TlsSettings, Transport};

use super::super::types::ClientSubjectName;

use super::{existing_file, millis, range};

pub(super) fn validate_admin(raw: RawAdmin, errors: &mut Errors) -> Option<AdminSettings> {
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

pub(super) fn validate_server(raw: RawServer, errors: &mut Errors) -> Option<ServerSettings> {
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
    let body_timeout = millis(
        "server.body_timeout_ms",
        raw.body_timeout_ms,
        1..=60_000,
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
        body_timeout: body_timeout?,
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

pub(super) fn validate_limits(raw: &RawLimits, errors: &mut Errors) -> Option<Limits> {
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
