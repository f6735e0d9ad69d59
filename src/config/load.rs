//! Loading: TOML file plus `XKS__…` environment through the `config` crate, then validation
//! (in `validate.rs`), collecting every error with the dotted path of its field.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use config::{Config, Environment, File, FileFormat};

use super::Settings;
use super::raw::RawConfig;

/// Environment variables starting with this prefix override file values: `XKS__HSM__USER_PIN`
/// sets `hsm.user_pin`.
pub const ENV_PREFIX: &str = "XKS";

/// One configuration error, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted field path, e.g. `key_stores[0].path_prefix`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// All errors found in a configuration; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} error(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

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
fn deserialize_error(err: &config::ConfigError) -> ConfigError {
    let text = err.to_string();
    let field = text
        .split_once("for key `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .unwrap_or_else(|| "(file)".to_owned());
    ConfigError {
        field,
        message: without_quoted_values(&without_source_lines(&text)),
    }
}

/// serde quotes the offending value (`invalid type: string "1234", expected usize`): a PIN or
/// secret typed into the wrong field would reach the log and the admin reload response. Drop
/// every quoted span except the names of keys and fields, which come from the schema.
fn without_quoted_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(['"', '`']) {
        let (before, quoted) = rest.split_at(start);
        out.push_str(before);
        let quote = quoted.as_bytes()[0] as char;
        let Some(len) = quoted[1..].find(quote) else {
            out.push_str("(value)");
            return out;
        };
        let span = &quoted[..len + 2];
        let names_a_key = [
            "for key ",
            "unknown field ",
            "missing field ",
            "duplicate field ",
        ]
        .iter()
        .any(|lead| out.ends_with(lead));
        out.push_str(if names_a_key { span } else { "(value)" });
        rest = &quoted[len + 2..];
    }
    out.push_str(rest);
    out
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

/// Collects validation errors.
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Records the error of `result`, if any, and passes the value on.
    pub(super) fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|m| self.push(field, m)).ok()
    }
}
