//! Configuration reload without dropping connections (ROT-2): on SIGHUP or
//! `POST /admin/reload` the file is read and validated again, and only if everything in it is
//! valid are the key stores and credentials, the limits, the TLS certificate and mTLS
//! settings, and the log level swapped in atomically. Requests in progress finish with the
//! configuration they started with; established TLS connections keep theirs.
//!
//! What a reload cannot change (listen addresses, TLS on/off, the HSM module, token, PIN and
//! pool sizes, health reporting, log format) keeps its running value and is named in the log
//! and in the report as needing a restart.
//!
//! Besides SIGHUP and the admin endpoint, [`watch`] reloads when the file changes
//! (`[reload] watch_config`).

pub mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

use crate::config::{self, RestartOnly, Settings, Transport};
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
    /// The restart-only settings the process started with: what still runs, so a reload
    /// reports what differs from that, not from the last file read.
    started: RestartOnly,
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
            started: RestartOnly::of(&started),
            serial: Mutex::new(()),
        }
    }

    /// The configuration file every reload reads.
    pub fn path(&self) -> &Path {
        &self.path
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
        let restart_required = self.started.changed(&RestartOnly::of(&new));
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
