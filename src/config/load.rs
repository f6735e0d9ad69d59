//! Loading and validation (stub, being written).
use super::Settings;
use std::path::Path;

/// One configuration error, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted field path, e.g. `key_stores[0].prefix`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// All errors found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration")]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Loads a configuration file plus environment overrides.
pub fn load(_path: &Path) -> Result<Settings, ConfigErrors> {
    Err(ConfigErrors(vec![]))
}

/// Loads from a TOML string (no environment), for tests.
pub fn load_from_str(_toml: &str) -> Result<Settings, ConfigErrors> {
    Err(ConfigErrors(vec![]))
}
