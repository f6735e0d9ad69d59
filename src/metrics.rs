//! Prometheus metrics (official `prometheus-client`), served on the admin listener.
//!
//! One [`Metrics`] per process, shared by the HTTP layer, SigV4, TLS and the HSM backend;
//! each records through a small method here so metric names, labels and units live in one
//! file. Names follow Prometheus conventions: `xks_` prefix, base units (seconds), `_total` on
//! counters. Latency buckets resolve 0.5 ms–1 s, around the 250 ms KMS deadline (TR-8).
//!
//! Two expositions of the same registry: OpenMetrics 1.0 ([`Metrics::render`], what
//! Prometheus asks for first) and the Prometheus text format 0.0.4 ([`Metrics::render_text`],
//! what `curl` and `promtool check metrics` read). [`Metrics::exposition`] picks one from the
//! scraper's `Accept` header and returns the matching `Content-Type`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// `Content-Type` of [`Metrics::render`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of [`Metrics::render_text`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Request latency buckets in seconds: fine below 25 ms, then around the 250 ms deadline.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5,
];

/// Labels of `xks_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// Key store name, or `none` before routing succeeded.
    pub key_store: String,
    /// `Encrypt`, `Decrypt`, `GetKeyMetadata`, `GetHealthStatus` or `unknown`.
    pub operation: String,
    /// HTTP status code.
    pub status: u16,
    /// XKS `errorName`, empty on success.
    pub error_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthFailureLabels {
    key_store: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FunctionLabel {
    function: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SessionStateLabel {
    state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MemberLabel {
    member: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KeyStoreLabel {
    key_store: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KillSwitchLabels {
    key_store: String,
    operation: String,
    external_key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SampleDecryptLabels {
    key_store: String,
    format: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthorizationLabels {
    key_store: String,
    action: String,
    outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    /// The TLS crypto provider compiled in (`crate::tls::provider::NAME`).
    tls_provider: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The `hsm_sessions` gauge of `state` (a handle sharing the family's value).
fn session_gauge(family: &Family<SessionStateLabel, Gauge>, state: &str) -> Gauge {
    family
        .get_or_create(&SessionStateLabel {
            state: state.into(),
        })
        .clone()
}

/// All metrics of the process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<OperationLabel>,
    in_flight: Gauge,
    auth_failures: Family<AuthFailureLabels, Counter>,
    hsm_call_duration: HistogramFamily<FunctionLabel>,
    hsm_sessions: Family<SessionStateLabel, Gauge>,
    /// `hsm_sessions{state="in_use"}` and `{state="idle"}`, looked up once: every PKCS#11 job
    /// moves a session between them twice.
    sessions_in_use: Gauge,
    sessions_idle: Gauge,
    hsm_health: Family<MemberLabel, Gauge>,
    credentials: Family<KeyStoreLabel, Gauge>,
    reloads: Family<ResultLabel, Counter>,
    kill_switch_refusals: Family<KillSwitchLabels, Counter>,
    aws_sample_decrypts: Family<SampleDecryptLabels, Counter>,
    authorization_decisions: Family<AuthorizationLabels, Counter>,
    /// notAfter of the serving certificate, Unix seconds; 0 when TLS is off. Read by the
    /// [`TlsExpiry`] collector at every scrape.
    tls_not_after: Arc<AtomicI64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("xks");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "XKS API requests by key store, operation, HTTP status and errorName",
            requests.clone(),
        );
        let request_duration: HistogramFamily<OperationLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from request start to response, by XKS operation",
            Unit::Seconds,
            request_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "XKS requests being processed",
            in_flight.clone(),
        );
        let auth_failures = Family::<AuthFailureLabels, Counter>::default();
        registry.register(
            "authentication_failures",
            "Rejected authentications by key store and reason (SigV4 reasons, or mtls)",
            auth_failures.clone(),
        );
        let hsm_call_duration: HistogramFamily<FunctionLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "hsm_call_duration",
            "Duration of PKCS#11 calls by function",
            Unit::Seconds,
            hsm_call_duration.clone(),
        );
        let hsm_sessions = Family::<SessionStateLabel, Gauge>::default();
        registry.register(
            "hsm_sessions",
            "PKCS#11 worker sessions by state (in_use, idle)",
            hsm_sessions.clone(),
        );
        let hsm_health = Family::<MemberLabel, Gauge>::default();
        registry.register(
            "hsm_health_state",
            "Last deep health check per HSM member: 2 ACTIVE, 1 DEGRADED, 0 UNAVAILABLE",
            hsm_health.clone(),
        );
        let credentials = Family::<KeyStoreLabel, Gauge>::default();
        registry.register(
            "key_store_credentials",
            "SigV4 credentials configured per key store",
            credentials.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result (success, failure)",
            reloads.clone(),
        );
        let kill_switch_refusals = Family::<KillSwitchLabels, Counter>::default();
        registry.register(
            "kill_switch_refusals",
            "Requests refused because [[keys]] disables the key or the key version, by key store, \
             operation and external key id (only configured keys can appear)",
            kill_switch_refusals.clone(),
        );
        let aws_sample_decrypts = Family::<SampleDecryptLabels, Counter>::default();
        registry.register(
            "aws_sample_migration_decrypts",
            "Decrypts that went through a key store's aws_sample_migration path, by the format \
             that opened the ciphertext: aws_sample, or spec (the fallback after the sample's \
             format failed)",
            aws_sample_decrypts.clone(),
        );
        let authorization_decisions = Family::<AuthorizationLabels, Counter>::default();
        registry.register(
            "authorization_decisions",
            "Cedar authorization decisions by key store, action and outcome (allow, deny, \
             would_deny in log-only mode)",
            authorization_decisions.clone(),
        );
        let tls_not_after = Arc::new(AtomicI64::new(0));
        registry.register_collector(Box::new(TlsExpiry(Arc::clone(&tls_not_after))));
        registry.register_collector(Box::new(LogLinesDropped));
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                tls_provider: crate::tls::provider::NAME,
            })
            .set(1);
        registry.register("build_info", "Build information; always 1", build);
        Self {
            registry,
            requests,
            request_duration,
            in_flight,
            auth_failures,
            hsm_call_duration,
            sessions_in_use: session_gauge(&hsm_sessions, "in_use"),
            sessions_idle: session_gauge(&hsm_sessions, "idle"),
            hsm_sessions,
            hsm_health,
            credentials,
            reloads,
            kill_switch_refusals,
            aws_sample_decrypts,
            authorization_decisions,
            tls_not_after,
        }
    }

    /// Counts one Cedar authorization decision (`outcome`: `allow`, `deny`, `would_deny`).
    pub fn authorization_decided(&self, key_store: &str, action: &str, outcome: &str) {
        let labels = AuthorizationLabels {
            key_store: key_store.into(),
            action: action.into(),
            outcome: outcome.into(),
        };
        self.authorization_decisions.get_or_create(&labels).inc();
    }

    /// Counts a request refused by the `[[keys]]` kill switch.
    pub fn kill_switch_refused(&self, key_store: &str, operation: &str, external_key_id: &str) {
        let labels = KillSwitchLabels {
            key_store: key_store.into(),
            operation: operation.into(),
            external_key_id: external_key_id.into(),
        };
        self.kill_switch_refusals.get_or_create(&labels).inc();
    }

    /// Counts a Decrypt on a key store's `aws_sample_migration` path, by the format that
    /// opened it (`aws_sample`, or `spec` after the sample's format failed).
    pub fn aws_sample_decrypt(&self, key_store: &str, format: &str) {
        let labels = SampleDecryptLabels {
            key_store: key_store.into(),
            format: format.into(),
        };
        self.aws_sample_decrypts.get_or_create(&labels).inc();
    }

    /// Counts a finished XKS request and observes its latency.
    pub fn request_finished(&self, labels: RequestLabels, elapsed: Duration) {
        self.request_duration
            .get_or_create(&OperationLabel {
                operation: labels.operation.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }

    /// Tracks a request in flight until the guard is dropped.
    pub fn request_started(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts a rejected authentication (`reason` as in `AuthError::reason`, or `mtls`).
    pub fn auth_failed(&self, key_store: &str, reason: &str) {
        let labels = AuthFailureLabels {
            key_store: key_store.into(),
            reason: reason.into(),
        };
        self.auth_failures.get_or_create(&labels).inc();
    }

    /// Observes the duration of one PKCS#11 call.
    pub fn hsm_call(&self, function: &'static str, elapsed: Duration) {
        self.hsm_call_duration
            .get_or_create(&FunctionLabel { function })
            .observe(elapsed.as_secs_f64());
    }

    /// Moves one worker session between `idle` and `in_use`.
    pub fn hsm_session_busy(&self, busy: bool) {
        let delta = if busy { 1 } else { -1 };
        self.sessions_in_use.inc_by(delta);
        self.sessions_idle.dec_by(delta);
    }

    /// Adds `delta` (negative to remove) to the worker sessions in a state (`in_use` or
    /// `idle`): a session opened, lost or closed outside the idle ↔ in-use cycle.
    pub fn add_hsm_sessions(&self, state: &str, delta: i64) {
        match state {
            "in_use" => self.sessions_in_use.inc_by(delta),
            "idle" => self.sessions_idle.inc_by(delta),
            other => self
                .hsm_sessions
                .get_or_create(&SessionStateLabel {
                    state: other.into(),
                })
                .inc_by(delta),
        };
    }

    /// Records a member's health: 2 ACTIVE, 1 DEGRADED, 0 UNAVAILABLE.
    pub fn set_hsm_health(&self, member: &str, state: i64) {
        self.hsm_health
            .get_or_create(&MemberLabel {
                member: member.into(),
            })
            .set(state);
    }

    /// Sets the credential count of every key store, dropping stores that went away.
    pub fn set_credentials<'a>(&self, stores: impl IntoIterator<Item = (&'a str, usize)>) {
        self.credentials.clear();
        for (store, count) in stores {
            let count = i64::try_from(count).unwrap_or(i64::MAX);
            self.credentials
                .get_or_create(&KeyStoreLabel {
                    key_store: store.into(),
                })
                .set(count);
        }
    }

    /// Counts a configuration reload.
    pub fn reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Remembers when the serving certificate expires (`None`: TLS off).
    pub fn set_tls_not_after(&self, not_after: Option<SystemTime>) {
        let secs = not_after.map_or(0, |t| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        });
        self.tls_not_after.store(secs, Ordering::Relaxed);
    }

    /// The OpenMetrics 1.0 exposition of every metric ([`OPENMETRICS_CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }

    /// The Prometheus text format 0.0.4 exposition of every metric ([`TEXT_CONTENT_TYPE`]).
    ///
    /// Derived from [`Metrics::render`]: OpenMetrics names a counter family without its
    /// `_total` suffix in `# HELP`/`# TYPE` and adds `# UNIT` and `# EOF`, none of which the
    /// 0.0.4 format has. Our families use only counters, gauges and histograms, whose samples
    /// are written identically in both formats.
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render())
    }

    /// The exposition a scraper asked for with `accept` (its `Accept` header), and its
    /// `Content-Type`: OpenMetrics when `application/openmetrics-text` is acceptable (what
    /// Prometheus sends), else the 0.0.4 text format.
    pub fn exposition(&self, accept: Option<&str>) -> (&'static str, String) {
        if accept.is_some_and(accepts_openmetrics) {
            (OPENMETRICS_CONTENT_TYPE, self.render())
        } else {
            (TEXT_CONTENT_TYPE, self.render_text())
        }
    }
}

/// Whether an `Accept` header lists `application/openmetrics-text` with a non-zero quality.
fn accepts_openmetrics(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let quality = parts
            .filter_map(|p| p.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, q)| q.trim().parse::<f64>().ok())
            .unwrap_or(1.0);
        media.eq_ignore_ascii_case("application/openmetrics-text") && quality > 0.0
    })
}

/// Rewrites an OpenMetrics exposition of counters, gauges and histograms into the
/// Prometheus text format 0.0.4 (see [`Metrics::render_text`]).
fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|kind| Some((kind, line.strip_prefix(kind)?)));
        match descriptor {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(&name) {
                    "_total"
                } else {
                    ""
                };
                let _ = writeln!(out, "{kind}{name}{suffix} {tail}");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// `xks_tls_certificate_expiry_seconds`, computed at scrape time from the stored `notAfter`;
/// no sample at all while TLS is off, so that an expiry alert cannot fire for a plaintext
/// listener.
#[derive(Debug)]
struct TlsExpiry(Arc<AtomicI64>);

impl Collector for TlsExpiry {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let not_after = self.0.load(Ordering::Relaxed);
        if not_after == 0 {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let gauge = ConstGauge::new(not_after as f64 - now);
        let metric = encoder.encode_descriptor(
            "tls_certificate_expiry",
            "Time until the serving TLS certificate expires (negative once expired).",
            Some(&Unit::Seconds),
            ConstGauge::<f64>::TYPE,
        )?;
        gauge.encode(metric)
    }
}

/// `xks_log_lines_dropped_total`: read from the log writer at every scrape.
#[derive(Debug)]
struct LogLinesDropped;

impl Collector for LogLinesDropped {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let counter = ConstCounter::new(crate::logging::dropped_lines());
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines (audit lines included) dropped because stdout did not keep up; requests \
             are never held up by logging",
            None,
            ConstCounter::<u64>::TYPE,
        )?;
        counter.encode(metric)
    }
}

/// Decrements `xks_requests_in_flight` when dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The HSM layer reports into the process's metrics through its one seam.
impl crate::hsm::HsmObserver for Metrics {
    fn hsm_call(&self, function: &'static str, elapsed: Duration) {
        Self::hsm_call(self, function, elapsed);
    }

    fn add_hsm_sessions(&self, state: &str, delta: i64) {
        Self::add_hsm_sessions(self, state, delta);
    }

    fn hsm_session_busy(&self, busy: bool) {
        Self::hsm_session_busy(self, busy);
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
