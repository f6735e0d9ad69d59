//! The server under test: `serve` on 127.0.0.1 with a small app and a shutdown trigger.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use xks_proxy::server::{ServeOptions, serve_with_grace};

use crate::support::Pki;
use crate::support::client::PROMPT;

/// `GET /ping` → 200 `pong`; `GET /peer` → the ConnectInfo address; `GET /slow` → 200 after
/// 300 ms.
pub(crate) fn app() -> Router {
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        )
}

/// A running `serve` on 127.0.0.1 with a shutdown trigger.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<io::Result<()>>,
}

pub(crate) fn options() -> ServeOptions {
    ServeOptions {
        max_connections: 64,
        handshake_timeout: Duration::from_secs(2),
        ..ServeOptions::default()
    }
}

impl Server {
    pub(crate) async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        options: ServeOptions,
    ) -> Self {
        Self::start_with_grace(tls, options, Duration::from_secs(2)).await
    }

    pub(crate) async fn start_with_grace(
        tls: Option<Arc<rustls::ServerConfig>>,
        options: ServeOptions,
        grace: Duration,
    ) -> Self {
        // Logs show up for failing tests only (the test writer is captured).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("xks_proxy=debug")
            .try_init();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let handle = tokio::spawn(serve_with_grace(
            listener,
            tls,
            app(),
            options,
            shutdown,
            grace,
        ));
        Self {
            addr,
            shutdown: Some(tx),
            handle,
        }
    }

    pub(crate) async fn tls(pki: &Pki) -> Self {
        Self::start(
            Some(xks_proxy::tls::server_config(&pki.tls()).unwrap()),
            options(),
        )
        .await
    }

    pub(crate) async fn mtls(pki: &Pki) -> Self {
        Self::start(
            Some(xks_proxy::tls::server_config(&pki.mtls()).unwrap()),
            options(),
        )
        .await
    }

    /// Triggers shutdown without waiting.
    pub(crate) fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Triggers shutdown and waits (bounded) for `serve` to return.
    pub(crate) async fn stop(mut self) {
        self.trigger_shutdown();
        timeout(PROMPT, &mut self.handle)
            .await
            .expect("serve did not return")
            .unwrap()
            .unwrap();
    }

    /// Waits (bounded) for `serve` to return after `trigger_shutdown`.
    pub(crate) async fn join(mut self) {
        timeout(PROMPT, &mut self.handle)
            .await
            .expect("serve did not return")
            .unwrap()
            .unwrap();
    }
}
