//! `xks-proxy serve`: load and validate everything, then bind and serve.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{ClientAuth, Hsm, Settings, Transport};
use crate::hsm::FleetBackend;
use crate::hsm::KeyBackend;
use crate::hsm::pkcs11::{Pkcs11Backend, TokenIdentity};
use crate::http::{AppState, router};
use crate::logging::LogLevelHandle;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::server::{ServeOptions, TlsHandle, serve_reloadable, serve_with_grace};

/// Connections the admin listener accepts at once (probes and a scraper).
const ADMIN_MAX_CONNECTIONS: usize = 32;
/// The admin listener's shutdown grace: probes and scrapes are short.
const ADMIN_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Runs the proxy until SIGINT or SIGTERM; SIGHUP (and, with `[reload] watch_config`, a
/// change of the file) reloads the configuration.
pub(super) fn run(config: &Path) -> Result<(), String> {
    // Everything that can be wrong with the configuration is reported before any socket
    // is bound or the HSM is touched.
    let settings = super::load_settings(config)?;
    let (logging, _log_guard) = crate::logging::init(&settings.logging)?;
    warn_if_root();
    let metrics = Arc::new(Metrics::new());
    let tls = match &settings.server.transport {
        Transport::Tls(tls) => {
            let material = crate::tls::load(tls, Some(Arc::clone(&metrics)))
                .map_err(|e| format!("server.tls: {e}"))?;
            tracing::info!(
                provider = crate::tls::provider::NAME,
                fips = material.config.fips(),
                "TLS crypto provider"
            );
            metrics.set_tls_not_after(Some(material.leaf_not_after));
            Some(TlsHandle::new(material.config).with_metrics(Arc::clone(&metrics)))
        }
        Transport::PlaintextBehindLoadBalancer => None,
    };
    let (backend, identity) = open_backend(&settings, &metrics)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("xks-proxy")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let running = Running {
        config: config.to_owned(),
        settings,
        tls,
        backend: Arc::clone(&backend),
        identity,
        metrics,
        logging,
    };
    let result = runtime.block_on(running.serve_until_signal());
    // Connections still draining hold the app state; once the runtime is gone the last
    // reference to the backend is ours, so its workers stop and `C_Finalize` runs here, on
    // the main thread, not on an async worker.
    drop(runtime);
    drop(backend);
    result
}

/// Everything `serve` built before the runtime started.
/// The single `[hsm]` token, or the fleet of `[[hsm.members]]`.
fn open_backend(
    settings: &Settings,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<dyn KeyBackend>, TokenIdentity), String> {
    let failed = |e| format!("cannot open the HSM: {e}");
    let members = match &settings.hsm {
        Hsm::Single(hsm) => {
            let backend = Pkcs11Backend::open_with_metrics(hsm, metrics.clone()).map_err(failed)?;
            let identity = backend.token_identity();
            return Ok((Arc::new(backend), identity));
        }
        Hsm::Fleet(_) => settings.hsm.members(),
    };
    let fleet = FleetBackend::open(&members, metrics.clone()).map_err(failed)?;
    let identity = fleet.members()[0].backend().token_identity();
    Ok((Arc::new(fleet), identity))
}

struct Running {
    config: std::path::PathBuf,
    settings: Settings,
    tls: Option<TlsHandle>,
    backend: Arc<dyn KeyBackend>,
    /// The (first) HSM token, for the startup line.
    identity: TokenIdentity,
    metrics: Arc<Metrics>,
    logging: LogLevelHandle,
}

impl Running {
    async fn serve_until_signal(self) -> Result<(), String> {
        let settings = &self.settings;
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))
        };
        let listener = bind(settings.server.listen).await?;
        let admin_listener = bind(settings.admin.listen).await?;
        log_startup(settings, &listener, &admin_listener, &self.identity);

        let backend = Arc::clone(&self.backend);
        let state = Arc::new(AppState::new(settings, backend, self.metrics));
        let reloader = Arc::new(Reloader::new(
            self.config.clone(),
            settings.clone(),
            Arc::clone(&state),
            self.tls.clone(),
            Some(self.logging),
        ));
        tokio::spawn(reload_on_sighup(Arc::clone(&reloader)));
        if settings.reload.watch_config {
            tokio::spawn(crate::reload::watch::watch_config(
                Arc::clone(&reloader),
                settings.reload.watch_interval,
            ));
        }

        let (stop, stopped) = watch::channel(false);
        let wait_stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let main = serve_reloadable(
            listener,
            self.tls,
            router(Arc::clone(&state)),
            ServeOptions::from_settings(&settings.server),
            wait_stop(stopped.clone()),
            settings.server.shutdown_grace,
        );
        let admin_options = ServeOptions {
            max_connections: ADMIN_MAX_CONNECTIONS,
            // Probes and scrapes send one request at a time.
            http2_max_concurrent_streams: 4,
            ..ServeOptions::from_settings(&settings.server)
        };
        let admin = serve_with_grace(
            admin_listener,
            None,
            crate::admin::router(state, Some(reloader), settings.admin.clone()),
            admin_options,
            wait_stop(stopped),
            ADMIN_SHUTDOWN_GRACE,
        );
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        let (main, admin) = tokio::join!(main, admin);
        main.and(admin).map_err(|e| format!("server failed: {e}"))?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Reloads the configuration on every SIGHUP (ROT-2).
async fn reload_on_sighup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; use POST /admin/reload");
                return;
            }
        };
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let reloader = Arc::clone(&reloader);
            // Errors are logged and counted by the reloader.
            let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
        }
    }
    #[cfg(not(unix))]
    drop(reloader);
}

fn log_startup(
    settings: &Settings,
    listener: &TcpListener,
    admin: &TcpListener,
    identity: &TokenIdentity,
) {
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let addr = local(listener);
    let admin_addr = local(admin);
    let transport = match &settings.server.transport {
        Transport::Tls(tls) => match &tls.client_auth {
            ClientAuth::Disabled => "https".to_owned(),
            ClientAuth::Required {
                allowed_subject_names,
                ..
            } => {
                let names: Vec<_> = allowed_subject_names.iter().map(|n| n.as_str()).collect();
                format!("https+mtls({})", names.join(","))
            }
        },
        Transport::PlaintextBehindLoadBalancer => {
            tracing::warn!(
                "serving PLAIN HTTP: only safe behind a load balancer that terminates TLS; \
                 KMS itself only speaks HTTPS (TR-1)"
            );
            "http".to_owned()
        }
    };
    let stores: Vec<_> = settings
        .key_stores
        .iter()
        .map(|s| {
            format!(
                "{}={} ({} credentials)",
                s.name,
                s.prefix.uri_path(),
                s.credentials.len()
            )
        })
        .collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %addr,
        admin_listen = %admin_addr,
        transport,
        key_stores = %stores.join("; "),
        hsm_token = %identity.label,
        hsm_serial = %identity.serial,
        hsm_model = %format!("{} {}", identity.manufacturer, identity.model_description()),
        "xks-proxy started"
    );
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the proxy");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested; finishing in-flight requests");
}

/// Running as root is allowed (a privileged port, a container) but rarely needed.
fn warn_if_root() {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
            tracing::warn!(
                "running as root: prefer a dedicated user (CAP_NET_BIND_SERVICE for port 443)"
            );
        }
    }
}
