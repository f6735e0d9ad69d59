//! Configuration reload without dropping connections (ROT-2): on SIGHUP or
//! `POST /admin/reload` the file is read and validated again, and only if everything in it is
//! valid are the key stores and credentials, the limits, the TLS certificate and mTLS
//! settings, and the log level swapped in atomically. Requests in progress finish with the
//! configuration they started with; established TLS connections keep theirs.
//!
//! What a reload cannot change (listen addresses, TLS on/off, the HSM module, token, PIN and
//! pool sizes, health reporting, log format) keeps its running value and is named in the log
//! and in the report as needing a restart.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::{self, Settings, Transport};
use crate::http::AppState;
use crate::logging::LogLevelHandle;
use crate::server::TlsHandle;

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// Key stores now served.
    pub key_stores: usize,
    /// Credentials now accepted, over all key stores.
    pub credentials: usize,
    /// Whether a new TLS configuration was installed.
    pub tls_reloaded: bool,
    /// Changed settings that keep their old value until a restart.
    pub restart_required: Vec<&'static str>,
}

/// Re-reads the configuration file and swaps in what can change at runtime.
pub struct Reloader {
    path: PathBuf,
    state: Arc<AppState>,
    tls: Option<TlsHandle>,
    logging: Option<LogLevelHandle>,
    /// The settings the process started with: what restart-only fields still run with, so
    /// `restart_required` compares against what actually runs, not the last file read.
    started: Settings,
    /// Serialises whole reloads.
    serial: Mutex<()>,
}

impl Reloader {
    /// `started` is what the process started with.
    pub fn new(
        path: PathBuf,
        started: Settings,
        state: Arc<AppState>,
        tls: Option<TlsHandle>,
        logging: Option<LogLevelHandle>,
    ) -> Self {
        Self {
            path,
            state,
            tls,
            logging,
            started,
            serial: Mutex::new(()),
        }
    }

    /// Reloads; on any error nothing changes and the old configuration keeps serving.
    /// Blocking (file reads); call it from a blocking thread.
    pub fn reload(&self) -> Result<ReloadReport, String> {
        // One reload at a time, including its log level, so a SIGHUP and a POST racing each
        // other cannot leave the older file's level in effect.
        let _one_at_a_time = self.serial.lock();
        let result = self.try_reload();
        self.state.metrics().reload(result.is_ok());
        match result {
            Ok((report, level)) => {
                tracing::info!(
                    key_stores = report.key_stores,
                    credentials = report.credentials,
                    tls_reloaded = report.tls_reloaded,
                    restart_required = ?report.restart_required,
                    "configuration reloaded"
                );
                // Applied last, so the confirmation above is logged at the old level.
                if let Some(logging) = &self.logging
                    && let Err(error) = logging.set(&level)
                {
                    tracing::error!(%error, "cannot apply the new log level");
                }
                Ok(report)
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    "configuration reload rejected; the old configuration stays in effect"
                );
                Err(error)
            }
        }
    }

    /// Validates and swaps; returns the report and the log level still to apply.
    fn try_reload(&self) -> Result<(ReloadReport, String), String> {
        let new = config::load(&self.path).map_err(|e| e.to_string())?;
        let restart_required = restart_required(&self.started, &new);
        // Build everything that can fail before swapping anything.
        let tls = match (&new.server.transport, &self.tls) {
            (Transport::Tls(settings), Some(_)) => {
                let metrics = Some(Arc::clone(self.state.metrics()));
                Some(crate::tls::load(settings, metrics).map_err(|e| format!("server.tls: {e}"))?)
            }
            _ => None,
        };
        tracing_subscriber::EnvFilter::try_new(&new.logging.level)
            .map_err(|e| format!("logging.level: {e}"))?;
        let tls_reloaded = match (tls, &self.tls) {
            (Some(material), Some(handle)) => {
                handle.replace(material.config);
                self.state
                    .metrics()
                    .set_tls_not_after(Some(material.leaf_not_after));
                true
            }
            _ => false,
        };
        self.state.reconfigure(&new);
        if !restart_required.is_empty() {
            tracing::warn!(
                settings = ?restart_required,
                "these settings changed but need a restart to take effect"
            );
        }
        let report = ReloadReport {
            key_stores: new.key_stores.len(),
            credentials: new.key_stores.iter().map(|s| s.credentials.len()).sum(),
            tls_reloaded,
            restart_required,
        };
        Ok((report, new.logging.level))
    }
}

/// The settings a reload cannot apply that differ between `old` and `new`.
fn restart_required(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let (o, n) = (&old.hsm, &new.hsm);
    let same_transport = matches!(
        (&old.server.transport, &new.server.transport),
        (Transport::Tls(_), Transport::Tls(_))
            | (
                Transport::PlaintextBehindLoadBalancer,
                Transport::PlaintextBehindLoadBalancer
            )
    );
    let checks = [
        ("server.listen", old.server.listen != new.server.listen),
        (
            "server.tls / plaintext_behind_load_balancer",
            !same_transport,
        ),
        (
            "server.max_connections",
            old.server.max_connections != new.server.max_connections,
        ),
        (
            "server.handshake_timeout_ms",
            old.server.handshake_timeout != new.server.handshake_timeout,
        ),
        (
            "server.shutdown_grace_ms",
            old.server.shutdown_grace != new.server.shutdown_grace,
        ),
        (
            "server.idle_timeout_ms",
            old.server.idle_timeout != new.server.idle_timeout,
        ),
        (
            "server.http2_max_concurrent_streams",
            old.server.http2_max_concurrent_streams != new.server.http2_max_concurrent_streams,
        ),
        (
            "limits.pre_auth_buffer_bytes",
            old.limits.pre_auth_buffer_bytes != new.limits.pre_auth_buffer_bytes,
        ),
        ("admin.listen", old.admin.listen != new.admin.listen),
        (
            "admin.reload_token_file",
            old.admin.reload_token_file != new.admin.reload_token_file,
        ),
        (
            "admin.allowed_hosts",
            old.admin.allowed_hosts != new.admin.allowed_hosts,
        ),
        ("hsm.module", o.module != n.module),
        ("hsm.token_label / token_serial", o.token != n.token),
        (
            "hsm.user_pin",
            o.user_pin.expose_secret() != n.user_pin.expose_secret(),
        ),
        ("hsm.sessions", o.sessions != n.sessions),
        ("hsm.queue_depth", o.queue_depth != n.queue_depth),
        (
            "hsm.health_key_label",
            o.health_key_label != n.health_key_label,
        ),
        (
            "health.proxy_fleet_size",
            old.health.proxy_fleet_size != new.health.proxy_fleet_size,
        ),
        (
            "health.cache_ttl_seconds",
            old.health.cache_ttl != new.health.cache_ttl,
        ),
        ("logging.format", old.logging.format != new.logging.format),
        ("hsm.members", members_differ(old, new)),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name)
        .collect()
}

/// Whether the HSM fleet changed: members added, removed or pointed elsewhere.
fn members_differ(old: &Settings, new: &Settings) -> bool {
    old.hsm_members.len() != new.hsm_members.len()
        || old.hsm_members.iter().zip(&new.hsm_members).any(|(o, n)| {
            o.id != n.id
                || o.hsm.module != n.hsm.module
                || o.hsm.token != n.hsm.token
                || o.hsm.user_pin.expose_secret() != n.hsm.user_pin.expose_secret()
        })
}
