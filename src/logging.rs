//! Process logging: `tracing` with a JSON (default) or text formatter on stdout, and a filter
//! that can be replaced at runtime (configuration reload).

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::{LogFormat, LoggingSettings};

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogLevelHandle(reload::Handle<EnvFilter, Registry>);

impl LogLevelHandle {
    /// Replaces the filter, e.g. `debug` or `xks_proxy=debug,info`.
    pub fn set(&self, directive: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directive).map_err(|e| format!("logging.level: {e}"))?;
        self.0
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))
    }
}

/// A filter no configured level can lift: `aws-sigv4` traces whole request bodies (plaintext
/// and AAD) when the environment has `LOG_SIGNABLE_BODY=true`, and its other trace lines
/// (canonical requests) say nothing an operator needs.
pub fn dependency_caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("aws_sigv4", LevelFilter::INFO)
        .with_target("aws_smithy_runtime_api", LevelFilter::INFO)
}

/// Installs the global subscriber; fails if one is installed already.
pub fn init(settings: &LoggingSettings) -> Result<LogLevelHandle, String> {
    let filter = EnvFilter::try_new(&settings.level).map_err(|e| format!("logging.level: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(dependency_caps());
    let result = match settings.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stdout),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stdout))
            .try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(LogLevelHandle(handle))
}
