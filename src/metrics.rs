//! Prometheus metrics (official `prometheus-client`), served on the admin listener.
//!
//! One [`Metrics`] per process, shared by the HTTP layer, SigV4, TLS and the HSM backend;
//! each records through a small method here so metric names, labels and units live in one
//! file. Names follow Prometheus conventions: `xks_` prefix, base units (seconds), `_total` on
//! counters. Latency buckets resolve 0.5 ms–1 s, around the 250 ms KMS deadline (TR-8).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

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
    function: String,
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
struct BuildLabels {
    version: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
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
    hsm_health: Family<MemberLabel, Gauge>,
    credentials: Family<KeyStoreLabel, Gauge>,
    reloads: Family<ResultLabel, Counter>,
    tls_expiry: Gauge<f64, AtomicU64>,
    /// notAfter of the serving certificate, Unix seconds; 0 when TLS is off.
    tls_not_after: AtomicI64,
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
        let tls_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "tls_certificate_expiry",
            "Time until the serving TLS certificate expires (negative once expired)",
            Unit::Seconds,
            tls_expiry.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
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
            hsm_sessions,
            hsm_health,
            credentials,
            reloads,
            tls_expiry,
            tls_not_after: AtomicI64::new(0),
        }
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
    pub fn hsm_call(&self, function: &str, elapsed: Duration) {
        self.hsm_call_duration
            .get_or_create(&FunctionLabel {
                function: function.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the number of worker sessions in a state (`in_use` or `idle`).
    pub fn set_hsm_sessions(&self, state: &str, count: i64) {
        self.hsm_sessions
            .get_or_create(&SessionStateLabel {
                state: state.into(),
            })
            .set(count);
    }

    /// Moves one worker session between `idle` and `in_use`.
    pub fn hsm_session_busy(&self, busy: bool) {
        let delta = if busy { 1 } else { -1 };
        self.hsm_sessions
            .get_or_create(&SessionStateLabel {
                state: "in_use".into(),
            })
            .inc_by(delta);
        self.hsm_sessions
            .get_or_create(&SessionStateLabel {
                state: "idle".into(),
            })
            .dec_by(delta);
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

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let not_after = self.tls_not_after.load(Ordering::Relaxed);
        if not_after != 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.tls_expiry.set(not_after as f64 - now);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            let _ = writeln!(out, "# metrics encoding failed");
        }
        out
    }
}

/// Decrements `xks_requests_in_flight` when dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_units_and_values() {
        let m = Metrics::new();
        m.request_finished(
            RequestLabels {
                key_store: "a".into(),
                operation: "Encrypt".into(),
                status: 200,
                error_name: String::new(),
            },
            Duration::from_millis(3),
        );
        m.auth_failed("a", "bad_signature");
        m.hsm_call("C_Encrypt", Duration::from_micros(50));
        m.set_hsm_sessions("idle", 4);
        m.hsm_session_busy(true);
        m.set_hsm_health("serial-1", 2);
        m.set_credentials([("a", 2)]);
        m.reload(false);
        m.set_tls_not_after(Some(SystemTime::now() + Duration::from_secs(86_400)));
        let _guard = m.request_started();
        let text = m.render();
        for line in [
            r#"xks_requests_total{key_store="a",operation="Encrypt",status="200",error_name=""} 1"#,
            r#"xks_request_duration_seconds_bucket{le="0.005",operation="Encrypt"} 1"#,
            r#"xks_authentication_failures_total{key_store="a",reason="bad_signature"} 1"#,
            r#"xks_hsm_call_duration_seconds_count{function="C_Encrypt"} 1"#,
            r#"xks_hsm_sessions{state="in_use"} 1"#,
            r#"xks_hsm_sessions{state="idle"} 3"#,
            r#"xks_hsm_health_state{member="serial-1"} 2"#,
            r#"xks_key_store_credentials{key_store="a"} 2"#,
            r#"xks_config_reloads_total{result="failure"} 1"#,
            "xks_requests_in_flight 1",
            "xks_build_info{version=",
            "# UNIT xks_tls_certificate_expiry_seconds seconds",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        let expiry: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("xks_tls_certificate_expiry_seconds "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((86_000.0..=86_400.0).contains(&expiry), "{expiry}");
    }
}
