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
//! Shutdown: when the `shutdown` future resolves the listener is closed, in-flight
//! connections are told to finish (hyper-util `GracefulShutdown`: HTTP/1.1 closes after the
//! current response, HTTP/2 sends GOAWAY), and whatever is still running after
//! the grace period ([`DEFAULT_SHUTDOWN_GRACE`] or [`serve_with_grace`]) is aborted.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::Instrument;

use crate::config::ServerSettings;

/// Idle time before the first TCP keepalive probe, and the interval between probes.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Pause after an accept error such as `EMFILE`, so a full fd table does not spin the loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How long in-flight connections may take to finish once [`serve`]'s shutdown starts.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Tuning of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Most concurrent connections (0 is treated as 1); further ones wait in the backlog.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake, counted from accept, and again for the client's
    /// first bytes after it (after accept in plaintext mode).
    pub handshake_timeout: Duration,
}

impl ServeOptions {
    /// The options for `settings`.
    pub fn from_settings(settings: &ServerSettings) -> Self {
        Self {
            max_connections: settings.max_connections.get(),
            handshake_timeout: settings.handshake_timeout,
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
pub struct TlsHandle(Arc<ArcSwap<rustls::ServerConfig>>);

impl TlsHandle {
    /// Wraps the initial configuration.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(Arc::new(ArcSwap::new(config)))
    }

    /// Installs a new configuration for connections accepted from now on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        self.0.store(config);
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.load_full()
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
    let http = http_builder();
    let graceful = GracefulShutdown::new();
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
            http: http.clone(),
            handshake_timeout: options.handshake_timeout,
            watcher: graceful.watcher(),
            _permit: permit,
        };
        tasks.spawn(conn.run(stream, app.clone()));
    }

    drop(listener);
    tracing::info!(%local, connections = tasks.len(), "shutting down; draining connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
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
fn http_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    // The timer enables hyper's HTTP/1 header read timeout (30 s by default) against
    // slow-loris clients; keep-alive is hyper's default.
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// One accepted connection and what it needs to run.
struct Conn {
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    http: Builder<TokioExecutor>,
    handshake_timeout: Duration,
    watcher: Watcher,
    /// Held until the connection ends: the connection cap.
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    /// Runs the connection inside a span carrying the peer address, so every log line of it,
    /// including the mTLS verifier's rejections, names the client.
    async fn run(self, stream: TcpStream, app: Router) {
        let span = tracing::info_span!("connection", peer = %self.peer);
        self.run_in_span(stream, app).instrument(span).await;
    }

    async fn run_in_span(self, stream: TcpStream, app: Router) {
        tune_socket(&stream);
        let Some(acceptor) = self.acceptor.clone() else {
            let http = self.http.clone();
            return self.serve_http(stream, http, app).await;
        };
        let Some(tls) = self.handshake(&acceptor, stream).await else {
            return;
        };
        let http = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => self.http.clone().http2_only(),
            Some(b"http/1.1") => self.http.clone().http1_only(),
            _ => self.http.clone(),
        };
        self.serve_http(tls, http, app).await;
    }

    /// Waits, at most the handshake timeout, for the client's first bytes (HTTP/2 preface or
    /// first request line): hyper has no such limit for a silent HTTP/2 client, which would
    /// otherwise hold a connection slot for as long as it likes.
    async fn first_bytes<I>(&self, io: &mut BufReader<I>) -> bool
    where
        I: tokio::io::AsyncRead + Unpin,
    {
        match tokio::time::timeout(self.handshake_timeout, io.fill_buf()).await {
            Ok(Ok(buffered)) if !buffered.is_empty() => true,
            Ok(Ok(_)) => {
                tracing::debug!("client closed before sending a request");
                false
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "reading the first request failed");
                false
            }
            Err(_) => {
                tracing::debug!(timeout = ?self.handshake_timeout, "no request before timeout");
                false
            }
        }
    }

    /// The TLS handshake under the handshake timeout; failures are logged at `debug` (scanners
    /// and health probes cause plenty; mTLS rejections are logged at `warn` by the verifier).
    async fn handshake(
        &self,
        acceptor: &TlsAcceptor,
        stream: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let accept = acceptor.accept(stream).into_fallible();
        match tokio::time::timeout(self.handshake_timeout, accept).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err((e, stream))) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                linger_close(stream).await;
                None
            }
            Err(_) => {
                tracing::debug!(timeout = ?self.handshake_timeout, "TLS handshake timed out");
                None
            }
        }
    }

    /// Serves HTTP on `io` until the client closes, an error occurs or shutdown completes.
    async fn serve_http<I>(self, io: I, http: Builder<TokioExecutor>, app: Router)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let mut io = BufReader::new(io);
        if !self.first_bytes(&mut io).await {
            return;
        }
        let peer = self.peer;
        let service = app.map_request(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
        if let Err(e) = self.watcher.watch(conn.into_owned()).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// How long a failed handshake's socket keeps draining the client's bytes before closing.
const FAILED_HANDSHAKE_LINGER: Duration = Duration::from_secs(1);

/// Closes a socket after a failed handshake so that the client reads our alert (MT-7).
///
/// In TLS 1.3 the client finishes its side of the handshake and sends its request before
/// learning that its certificate was rejected. Closing a socket that still holds unread bytes
/// makes the kernel send a reset, and the client then sees "broken pipe" or "connection reset"
/// instead of the `handshake_failure` alert. Sending FIN and draining what the client already
/// sent, for a short bounded time, lets the alert through.
async fn linger_close(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(FAILED_HANDSHAKE_LINGER, drain).await;
}

/// `TCP_NODELAY` and keepalive; failures only cost latency, so they are logged, not fatal.
fn tune_socket(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot enable TCP keepalive");
    }
}
