//! Process logging: `tracing` with a JSON (default) or text formatter on stdout, and a filter
//! that can be replaced at runtime (configuration reload).
//!
//! Lines reach stdout through a bounded, non-blocking writer (the `sink` module): a request
//! thread queues its audit line, and a dedicated thread writes. If stdout stops keeping up
//! (a stalled journald, a full container log pipe), requests still complete: lines beyond
//! [`BUFFERED_LINES`] are dropped, counted in `xks_log_lines_dropped_total` and reported on
//! stderr once per [`LOSS_REPORT_INTERVAL`]. Never silently.

mod json;
mod sink;

use std::sync::OnceLock;
use std::time::Duration;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::{LogFormat, LoggingSettings};
use sink::{LineSink, SinkGuard};

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

/// Lines the writer holds for stdout before it drops: about 10 MiB of audit lines, and
/// seconds of the highest request rates.
pub const BUFFERED_LINES: usize = 16_384;
/// How often dropped lines are reported on stderr (when there are new ones).
pub const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The installed sink, for its count of dropped lines.
static SINK: OnceLock<LineSink> = OnceLock::new();

/// Log lines dropped so far because stdout did not keep up.
pub fn dropped_lines() -> u64 {
    SINK.get().map_or(0, LineSink::dropped_lines)
}

/// Keeps the log writer running; dropping it flushes what is queued (at process exit).
pub struct LogGuard {
    _writer: SinkGuard,
}

/// Installs the global subscriber; fails if one is installed already. Keep the [`LogGuard`]
/// until the process exits, so queued lines are written.
pub fn init(settings: &LoggingSettings) -> Result<(LogLevelHandle, LogGuard), String> {
    // A batch is whole lines, so stdout's line buffering passes it on in one `write(2)`.
    // Half wait while the writer writes the other half: BUFFERED_LINES in memory at most.
    let (writer, guard) = LineSink::start(std::io::stdout(), BUFFERED_LINES / 2, "xks-proxy-log")
        .map_err(|e| format!("cannot start the log writer: {e}"))?;
    if SINK.set(writer.clone()).is_ok() {
        report_losses(writer.clone());
    }
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
                    .event_format(json::JsonLines::new())
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer().with_writer(writer)).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok((LogLevelHandle(handle), LogGuard { _writer: guard }))
}

/// Reports new losses on stderr every [`LOSS_REPORT_INTERVAL`]: stdout is the thing not keeping
/// up, so the report goes elsewhere (and to the metric).
fn report_losses(sink: LineSink) {
    let spawned = std::thread::Builder::new()
        .name("xks-proxy-log-loss".into())
        .spawn(move || {
            let mut reported = 0;
            loop {
                std::thread::sleep(LOSS_REPORT_INTERVAL);
                let dropped = sink.dropped_lines();
                if dropped > reported {
                    eprintln!(
                        "xks-proxy: {} log line(s) dropped in the last {}s ({dropped} in all): \
                         stdout is not keeping up with the log (see xks_log_lines_dropped_total)",
                        dropped - reported,
                        LOSS_REPORT_INTERVAL.as_secs(),
                    );
                    reported = dropped;
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("xks-proxy: cannot start the log loss reporter: {e}");
    }
}
