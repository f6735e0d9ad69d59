//! Loading: TOML file plus `XKS__…` environment through the `config` crate, then validation
//! (in `validate.rs`), collecting every error with the dotted path of its field.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use config::{Config, Environment, File, FileFormat};

use super::error::{ConfigError, ConfigErrors, Errors};
use super::raw::{RawConfig, RawHsmOnly, RawKeyAdmin};
use super::{Hsm, KeyControls, Settings};

/// Environment variables starting with this prefix override file values: `XKS__HSM__USER_PIN`
/// sets `hsm.user_pin`.
pub const ENV_PREFIX: &str = "XKS";

/// Loads `path` (TOML) plus `XKS__…` environment overrides and validates the result.
pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
    load_with_env(path, None)
}

/// [`load`] with an explicit environment instead of the process's (tests).
pub(super) fn load_with_env(
    path: &Path,
    env: Option<HashMap<String, String>>,
) -> Result<Settings, ConfigErrors> {
    let env = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .source(env);
    let source = File::from(path).format(FileFormat::Toml);
    build(Config::builder().add_source(source).add_source(env))
}

/// Loads only the `[hsm]` section of `path` (plus `XKS__HSM__…` overrides): what the `keys`
/// commands need. Other sections are neither required nor checked.
pub fn load_hsm(path: &Path) -> Result<Hsm, ConfigErrors> {
    let raw: RawHsmOnly = read_sections(path)?;
    let mut errors = Errors::default();
    match super::validate::validate_hsm_only(raw, &mut errors) {
        Some(hsm) if errors.0.is_empty() => Ok(hsm),
        _ => Err(ConfigErrors(errors.0)),
    }
}

/// Loads the `[hsm]` section and the optional `[[keys]]` kill switch of `path` (plus
/// environment overrides), validated as [`load`] does: what `keys list` and `keys rotate`
/// need. Other sections are neither required nor checked.
pub fn load_key_admin(path: &Path) -> Result<(Hsm, KeyControls), ConfigErrors> {
    let raw: RawKeyAdmin = read_sections(path)?;
    let mut errors = Errors::default();
    match super::validate::validate_key_admin(raw, &mut errors) {
        Some(loaded) if errors.0.is_empty() => Ok(loaded),
        _ => Err(ConfigErrors(errors.0)),
    }
}

/// Deserialises the sections `T` names from `path` plus `XKS__…` overrides; sections `T`
/// does not name are ignored.
fn read_sections<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigErrors> {
    let env = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__");
    let source = File::from(path).format(FileFormat::Toml);
    Config::builder()
        .add_source(source)
        .add_source(env)
        .build()
        .and_then(Config::try_deserialize)
        .map_err(|e| ConfigErrors(vec![deserialize_error(&e)]))
}

/// Loads a TOML document without environment overrides (tests, `check-config` of a snippet).
pub fn load_from_str(toml: &str) -> Result<Settings, ConfigErrors> {
    build(Config::builder().add_source(File::from_str(toml, FileFormat::Toml)))
}

fn build(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
) -> Result<Settings, ConfigErrors> {
    let raw: RawConfig = builder
        .build()
        .and_then(Config::try_deserialize)
        .map_err(|e| ConfigErrors(vec![deserialize_error(&e)]))?;
    let mut errors = Errors::default();
    let settings = super::validate::validate(raw, &mut errors);
    match settings {
        Some(settings) if errors.0.is_empty() => Ok(settings),
        _ => Err(ConfigErrors(errors.0)),
    }
}

/// `config` reports one error at a time, with the key when it knows it.
///
/// The message is rebuilt from the error's parts, never from its text: config and serde quote
/// the offending value (`invalid type: string "1234", expected usize`), and a PIN or secret typed
/// into the wrong field must not reach the log or the admin reload response. Whatever is not
/// recognised is reported without detail (fail closed).
fn deserialize_error(err: &config::ConfigError) -> ConfigError {
    let (key, message) = describe(err);
    ConfigError {
        field: key.unwrap_or_else(|| "(file)".to_owned()),
        message,
    }
}

/// The key (if known) and a message that quotes no value.
fn describe(err: &config::ConfigError) -> (Option<String>, String) {
    use config::ConfigError as E;
    match err {
        E::Type {
            unexpected,
            expected,
            key,
            ..
        } => (
            key.clone(),
            format!(
                "invalid type: {} where {expected} was expected",
                value_kind(unexpected)
            ),
        ),
        E::At { error, key, .. } => {
            let (inner, message) = describe(error);
            (key.clone().or(inner), message)
        }
        E::Message(text) => (None, serde_message(text)),
        E::NotFound(key) => (Some(key.clone()), "required but missing".to_owned()),
        // TOML syntax errors: position and reason, without the quoted source lines.
        E::FileParse { cause, .. } => (None, without_source_lines(&cause.to_string())),
        _ => (None, "the configuration could not be read".to_owned()),
    }
}

/// What kind of value was found, never the value. `config::Unexpected` is not exported, so
/// the kind is read from the first word of its text (`string "…"`, `64-bit integer `5``, …).
fn value_kind(unexpected: &impl fmt::Display) -> &'static str {
    let text = unexpected.to_string();
    let kind = text.split(' ').next().unwrap_or_default();
    match kind {
        "boolean" => "a boolean",
        "64-bit" | "128-bit" => "an integer",
        "floating" => "a floating-point number",
        "string" => "a string",
        "unit" => "an empty value",
        "sequence" => "an array",
        "map" => "a table",
        _ => "a value",
    }
}

/// serde's own messages. Missing and unknown fields name keys (from the schema or the file's
/// key names, not its values) and are kept; every other message carries a value, so only what
/// serde expected is kept: the text after the last `, expected ` comes from the schema.
fn serde_message(text: &str) -> String {
    let names_a_key = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .any(|lead| text.starts_with(lead));
    if names_a_key {
        return text.to_owned();
    }
    match text.rsplit_once(", expected ") {
        Some((_, expected)) => format!("invalid value; expected {expected}"),
        None => "invalid value".to_owned(),
    }
}

/// TOML parse errors quote the offending line, which may hold a secret or a PIN (and the
/// message reaches logs and the admin reload response): keep only the position and reason.
fn without_source_lines(text: &str) -> String {
    let quoted = |line: &str| {
        let line = line.trim_start();
        line.starts_with('|')
            || line
                .split_once(" |")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    text.lines()
        .filter(|line| !line.trim().is_empty() && !quoted(line))
        .collect::<Vec<_>>()
        .join("; ")
}
