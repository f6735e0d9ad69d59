//! `xks-proxy serve`: load and validate everything, then bind and serve.

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{ClientAuth, Settings, Transport};
use crate::hsm::KeyBackend;
use crate::hsm::pkcs11::Pkcs11Backend;
use crate::http::{AppState, router};
use crate::server::{ServeOptions, serve};

/// Runs the proxy until SIGINT or SIGTERM.
pub(super) fn run(config: &Path) -> Result<(), String> {
    // Everything that can be wrong with the configuration is reported before any socket
    // is bound or the HSM is touched.
    let settings = super::load_settings(config)?;
    super::init_logging(&settings)?;
    warn_if_root();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let tls = match &settings.server.transport {
        Transport::Tls(tls) => {
            let material = crate::tls::load(tls, Some(Arc::clone(&metrics)))
                .map_err(|e| format!("server.tls: {e}"))?;
            metrics.set_tls_not_after(Some(material.leaf_not_after));
            Some(material.config)
        }
        Transport::PlaintextBehindLoadBalancer => None,
    };
    let backend = Arc::new(
        Pkcs11Backend::open_with_metrics(&settings.hsm, Arc::clone(&metrics))
            .map_err(|e| format!("cannot open the HSM: {e}"))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("xks-proxy")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(serve_until_signal(
        settings,
        tls,
        Arc::clone(&backend),
        metrics,
    ));
    // Connections still draining hold the app state; once the runtime is gone the last
    // reference to the backend is ours, so its workers stop and `C_Finalize` runs here, on
    // the main thread, not on an async worker.
    drop(runtime);
    drop(backend);
    result
}

async fn serve_until_signal(
    settings: Settings,
    tls: Option<Arc<rustls::ServerConfig>>,
    backend: Arc<Pkcs11Backend>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<(), String> {
    let listener = TcpListener::bind(settings.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.server.listen))?;
    log_startup(&settings, &listener, &backend);
    let state = Arc::new(AppState::new(
        &settings,
        Arc::clone(&backend) as Arc<dyn KeyBackend>,
        metrics,
    ));
    let options = ServeOptions {
        max_connections: settings.server.max_connections.get(),
        handshake_timeout: settings.server.handshake_timeout,
    };
    serve(listener, tls, router(state), options, shutdown_signal())
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    tracing::info!("stopped");
    Ok(())
}

fn log_startup(settings: &Settings, listener: &TcpListener, backend: &Pkcs11Backend) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
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
    let identity = backend.token_identity();
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
        transport,
        key_stores = %stores.join("; "),
        hsm_token = %identity.label,
        hsm_serial = %identity.serial,
        hsm_model = %format!("{} {}", identity.manufacturer, identity.model_description()),
        "xks-proxy started"
    );
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
