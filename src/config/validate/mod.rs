//! Validation: raw serde structs → [`Settings`], one [`Errors`] entry per bad field, all
//! reported together. One file per section: `server.rs` (listener, TLS, limits, admin),
//! `hsm.rs` (token, PIN, fleet members), `key_stores.rs` (stores and credentials); the small
//! sections and the shared helpers are here.

mod hsm;
mod key_stores;
mod server;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::error::Errors;
use super::raw::RawConfig;
use super::{
    HealthSettings, Hsm, KeyControls, LogFormat, LoggingSettings, ReloadSettings, Settings,
};
use crate::authz::{Mode, Policies};

pub(super) fn validate(raw: RawConfig, errors: &mut Errors) -> Option<Settings> {
    let server = server::validate_server(raw.server, errors);
    let limits = server::validate_limits(&raw.limits, errors);
    let hsm = hsm::validate_hsm(raw.hsm, errors);
    let health = validate_health(&raw.health, errors);
    let key_stores =
        key_stores::validate_key_stores(raw.key_stores, hsm.as_ref().map(Hsm::primary), errors);
    let logging = validate_logging(raw.logging, errors);
    let admin = server::validate_admin(raw.admin, errors);
    let keys = key_stores::validate_key_controls(raw.keys, hsm.as_ref().map(Hsm::primary), errors);
    let reload = validate_reload(&raw.reload, errors);
    let authorization = raw
        .authorization
        .and_then(|raw| authorization("authorization", raw, errors));
    Some(Settings {
        server: server?,
        limits: limits?,
        hsm: hsm?,
        health: health?,
        key_stores,
        logging: logging?,
        admin: admin?,
        keys,
        reload: reload?,
        authorization,
    })
}

/// `[authorization]` or `[key_stores.authorization]` at `at`: the mode, and the policy file
/// parsed and validated against the schema, every problem reported under `<at>.policy_file`
/// with the file, line, column and policy id.
pub(super) fn authorization(
    at: &str,
    raw: super::raw::RawAuthorization,
    errors: &mut Errors,
) -> Option<Policies> {
    let mode = match raw.mode.as_str() {
        "enforce" => Some(Mode::Enforce),
        "log-only" => Some(Mode::LogOnly),
        _ => {
            errors.push(format!("{at}.mode"), "must be \"enforce\" or \"log-only\"");
            None
        }
    };
    let field = format!("{at}.policy_file");
    match Policies::load(raw.policy_file.clone(), mode.unwrap_or(Mode::Enforce)) {
        Ok(policies) => mode.map(|_| policies),
        Err(problems) => {
            for problem in problems {
                errors.push(&field, format!("{}: {problem}", raw.policy_file.display()));
            }
            None
        }
    }
}

/// Only the `[hsm]` section, for the `keys` commands: a new user makes keys before writing
/// key stores.
pub(super) fn validate_hsm_only(raw: super::raw::RawHsmOnly, errors: &mut Errors) -> Option<Hsm> {
    hsm::validate_hsm(raw.hsm, errors)
}

/// `[hsm]` and `[[keys]]`, for the `keys` commands that show or respect the kill switch.
pub(super) fn validate_key_admin(
    raw: super::raw::RawKeyAdmin,
    errors: &mut Errors,
) -> Option<(Hsm, KeyControls)> {
    let hsm = hsm::validate_hsm(raw.hsm, errors);
    let keys = key_stores::validate_key_controls(raw.keys, hsm.as_ref().map(Hsm::primary), errors);
    Some((hsm?, keys))
}

fn validate_reload(raw: &super::raw::RawReload, errors: &mut Errors) -> Option<ReloadSettings> {
    let interval = millis(
        "reload.watch_interval_ms",
        raw.watch_interval_ms,
        100..=3_600_000,
        errors,
    );
    Some(ReloadSettings {
        watch_config: raw.watch_config,
        watch_interval: interval?,
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
pub(super) fn secret(
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

pub(super) fn existing_file(field: &str, path: PathBuf, errors: &mut Errors) -> Option<PathBuf> {
    if path.is_file() {
        Some(path)
    } else {
        errors.push(field, format!("{} is not a readable file", path.display()));
        None
    }
}

pub(super) fn range<T: PartialOrd + fmt::Display + Copy>(
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

pub(super) fn millis(
    field: &str,
    value: u64,
    allowed: std::ops::RangeInclusive<u64>,
    errors: &mut Errors,
) -> Option<Duration> {
    range(field, value, allowed, errors).map(Duration::from_millis)
}
