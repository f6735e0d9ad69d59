//! The accept loop (XKS spec §1.1 TR-1…3, TR-8, TR-9): TCP, optional TLS (see [`crate::tls`]),
//! then HTTP/1.1 or HTTP/2 through hyper-util's auto connection builder.
//!
//! Per accepted socket: `TCP_NODELAY` (KMS allows 250 ms end to end, TR-8), TCP keepalive,
//! one permit of a connection semaphore held for the connection's whole life (further
//! connections wait in the kernel's accept backlog), the TLS handshake under a timeout, the
//! client's first bytes under the same timeout again, then HTTP. With TLS the ALPN result
//! picks HTTP/2 or HTTP/1.1 (keep-alive on, TR-9); without ALPN, and in plaintext mode,
//! hyper-util detects the HTTP/2 preface (h2c prior knowledge). Every log line of a
//! connection is inside a `connection{peer=…}` span.
//!
//! Handlers can extract `axum::extract::ConnectInfo<SocketAddr>`: each connection's service is
//! the `Router` wrapped in `tower::ServiceExt::map_request`, which inserts the peer address
//! into every request's extensions, the same value `into_make_service_with_connect_info`
//! would provide.
//!
//! Idle connections: a connection with no request in progress is closed gracefully (HTTP/1.1
//! after the current response, HTTP/2 with GOAWAY) once it has been idle for
//! [`ServeOptions::idle_timeout`], or for the handshake timeout before its first request, so a
//! client that only sends the HTTP/2 preface cannot hold a connection slot. Keep-alive PINGs
//! (every [`H2_PING_INTERVAL`]) close HTTP/2 connections whose peer has gone away; pings do not
//! count as activity. HTTP/2 streams per connection are capped by
//! [`ServeOptions::http2_max_concurrent_streams`] and flow-control windows are small (see
//! [`H2_CONNECTION_WINDOW`]), which bounds what hyper buffers for a connection before the
//! application reads it.
//!
//! Shutdown: when the `shutdown` future resolves the listener is closed, in-flight
//! connections are told to finish (the same graceful close as for idleness), and whatever is
//! still running after the grace period ([`DEFAULT_SHUTDOWN_GRACE`] or [`serve_with_grace`])
//! is aborted.

mod connection;
mod idle;
mod service;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use connection::Conn;

use crate::config::ServerSettings;
use crate::metrics::Metrics;

/// Pause after an accept error such as `EMFILE`, so a full fd table does not spin the loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How long in-flight connections may take to finish once [`serve`]'s shutdown starts.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Interval of HTTP/2 keep-alive PINGs; a peer that does not answer within
/// [`H2_PING_TIMEOUT`] is gone and its connection is closed.
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// How long an HTTP/2 keep-alive PING may go unanswered.
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 flow-control window of one connection: the most request bytes hyper buffers for a
/// connection before the application reads them (hyper's default is 1 MiB).
pub const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Read buffer of an HTTP/1.1 connection (hyper's default is about 400 KiB): the request head
/// must fit; body bytes are read into it only as the application asks for them.
pub const H1_MAX_BUFFER: usize = 64 * 1024;
/// HTTP/2 flow-control window of one stream (the protocol's default).
pub const H2_STREAM_WINDOW: u32 = 64 * 1024;

/// Tuning of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Most concurrent connections (0 is treated as 1); further ones wait in the backlog.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake, counted from accept, and again for the client's
    /// first bytes after it (after accept in plaintext mode), and for its first request.
    pub handshake_timeout: Duration,
    /// A connection with no request in progress for this long is closed.
    pub idle_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection (0 is treated as 1).
    pub http2_max_concurrent_streams: u32,
}

impl Default for ServeOptions {
    /// The configuration file's defaults.
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            http2_max_concurrent_streams: 32,
        }
    }
}

impl ServeOptions {
    /// The options for `settings`.
    pub fn from_settings(settings: &ServerSettings) -> Self {
        Self {
            max_connections: settings.max_connections.get(),
            handshake_timeout: settings.handshake_timeout,
            idle_timeout: settings.idle_timeout,
            http2_max_concurrent_streams: settings.http2_max_concurrent_streams,
        }
    }
}

/// Serves `app` on `listener` (TLS when `tls` is given, else plain HTTP behind a
/// TLS-terminating load balancer) until `shutdown` resolves, then stops accepting, lets
/// in-flight connections finish for up to [`DEFAULT_SHUTDOWN_GRACE`] and returns.
///
/// Accept errors are logged and retried after a short pause; connection errors are logged
/// at `debug` and only end that connection. Only fails if the listener has no local address.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with_grace(
        listener,
        tls,
        app,
        options,
        shutdown,
        DEFAULT_SHUTDOWN_GRACE,
    )
    .await
}

/// [`serve`] with an explicit shutdown grace period: connections still running `grace`
/// after `shutdown` resolved are aborted.
pub async fn serve_with_grace(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let tls = tls.map(TlsHandle::new);
    serve_reloadable(listener, tls, app, options, shutdown, grace).await
}

/// The TLS configuration that new connections get. [`TlsHandle::replace`] swaps it
/// atomically (certificate rotation, ROT-2-style reload); established connections keep the
/// configuration they were accepted with, so nothing is dropped.
#[derive(Clone)]
pub struct TlsHandle {
    config: Arc<ArcSwap<rustls::ServerConfig>>,
    /// Counts handshakes refused for want of a client certificate (the verifier counts the
    /// certificates it rejects; rustls refuses a missing one before asking it).
    metrics: Option<Arc<Metrics>>,
}

impl TlsHandle {
    /// Wraps the initial configuration.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            config: Arc::new(ArcSwap::new(config)),
            metrics: None,
        }
    }

    /// Counts mTLS handshakes without a client certificate in `metrics` (reason `mtls`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Installs a new configuration for connections accepted from now on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        self.config.store(config);
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.load_full()
    }
}

/// [`serve_with_grace`] with a [`TlsHandle`] whose configuration can be replaced while
/// serving.
pub async fn serve_reloadable(
    listener: TcpListener,
    tls: Option<TlsHandle>,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(%local, tls = tls.is_some(), "listening");
    let limit = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let http = http_builder(&options);
    let (closing, close) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let (stream, peer, permit) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = joined {
                    tracing::error!(error = %e, "connection task failed");
                }
                continue;
            }
            accepted = accept(&listener, &limit) => accepted,
        };
        let conn = Conn {
            peer,
            acceptor: tls
                .as_ref()
                .map(|handle| TlsAcceptor::from(handle.current())),
            tls_metrics: tls.as_ref().and_then(|handle| handle.metrics.clone()),
            http: http.clone(),
            handshake_timeout: options.handshake_timeout,
            idle_timeout: options.idle_timeout,
            close: close.clone(),
            _permit: permit,
        };
        tasks.spawn(conn.run(stream, app.clone()));
    }

    drop(listener);
    tracing::info!(%local, connections = tasks.len(), "shutting down; draining connections");
    let _ = closing.send(true);
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            "shutdown grace period over; aborting connections"
        );
    }
    tasks.shutdown().await;
    tracing::info!(%local, "stopped");
    Ok(())
}

/// Waits for a connection slot, then for a connection. Cancel-safe: dropping it releases
/// the slot and loses no connection.
async fn accept(
    listener: &TcpListener,
    limit: &Arc<Semaphore>,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    loop {
        // Never closed, so `acquire_owned` cannot fail; treat a failure like a full table.
        let Ok(permit) = Arc::clone(limit).acquire_owned().await else {
            tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            continue;
        };
        match listener.accept().await {
            Ok((stream, peer)) => return (stream, peer, permit),
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "accept failed for one connection");
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Errors that concern one aborted connection, not the listener.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// The HTTP/1.1 + HTTP/2 connection builder shared by all connections.
fn http_builder(options: &ServeOptions) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    // The timer enables hyper's HTTP/1 header read timeout (30 s by default) against
    // slow-loris clients; keep-alive is hyper's default.
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(H1_MAX_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.http2_max_concurrent_streams.max(1))
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}
