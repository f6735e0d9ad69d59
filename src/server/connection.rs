//! One accepted connection: socket tuning, the TLS handshake under its timeout, the client's
//! first bytes, then HTTP/1.1 or HTTP/2 until the client leaves, the connection idles out
//! ([`super::idle`]) or the server shuts down.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::Instrument;

use super::idle::{Activity, KeepsConnectionAlive};
use super::service::BoxedService;
use crate::http::{ClientSubject, ConnectionShare};
use crate::metrics::Metrics;

/// Idle time before the first TCP keepalive probe, and the interval between probes.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// One accepted connection and what it needs to run.
pub(super) struct Conn {
    pub(super) peer: SocketAddr,
    pub(super) acceptor: Option<TlsAcceptor>,
    pub(super) tls_metrics: Option<Arc<Metrics>>,
    pub(super) http: Builder<TokioExecutor>,
    pub(super) handshake_timeout: Duration,
    pub(super) idle_timeout: Duration,
    /// Turns `true` when the server shuts down.
    pub(super) close: watch::Receiver<bool>,
    /// Held until the connection ends: the connection cap.
    pub(super) _permit: OwnedSemaphorePermit,
}

impl Conn {
    /// Runs the connection inside a span carrying the peer address, so every log line of it,
    /// including the mTLS verifier's rejections, names the client.
    pub(super) async fn run(self, stream: TcpStream, app: Router) {
        let span = tracing::info_span!("connection", peer = %self.peer);
        self.run_in_span(stream, app).instrument(span).await;
    }

    async fn run_in_span(self, stream: TcpStream, app: Router) {
        tune_socket(&stream);
        let Some(acceptor) = self.acceptor.clone() else {
            let http = self.http.clone();
            return self.serve_http(stream, http, app, None).await;
        };
        let Some(tls) = self.handshake(&acceptor, stream).await else {
            return;
        };
        let http = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => self.http.clone().http2_only(),
            Some(b"http/1.1") => self.http.clone().http1_only(),
            _ => self.http.clone(),
        };
        // Read once per connection; requests carry it for authorization (mTLS subject).
        let subject = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(crate::tls::certificate_subject)
            .map(|subject| ClientSubject(subject.into()));
        self.serve_http(tls, http, app, subject).await;
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
                let no_certificate = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|e| matches!(e, rustls::Error::NoCertificatesPresented));
                if no_certificate {
                    // debug, not warn: scanners do this all day; the metric counts it.
                    tracing::debug!("mTLS client presented no certificate; handshake refused");
                    if let Some(metrics) = &self.tls_metrics {
                        metrics.auth_failed(NO_KEY_STORE, "mtls");
                    }
                } else {
                    tracing::debug!(error = %e, "TLS handshake failed");
                }
                linger_close(stream).await;
                None
            }
            Err(_) => {
                tracing::debug!(timeout = ?self.handshake_timeout, "TLS handshake timed out");
                None
            }
        }
    }

    /// Serves HTTP on `io` until the client closes, an error occurs, the connection stays
    /// idle too long or shutdown completes.
    async fn serve_http<I>(
        mut self,
        io: I,
        http: Builder<TokioExecutor>,
        app: Router,
        subject: Option<ClientSubject>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let mut io = BufReader::new(io);
        if !self.first_bytes(&mut io).await {
            return;
        }
        let peer = self.peer;
        let share = ConnectionShare::default();
        let activity = Arc::new(Activity::new());
        let tracker = Arc::clone(&activity);
        let service = app
            .map_request(move |mut request: http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.extensions_mut().insert(share.clone());
                if let Some(subject) = &subject {
                    request.extensions_mut().insert(subject.clone());
                }
                request
            })
            .map_future(move |response| {
                let mut in_progress = tracker.begin();
                async move {
                    let response = response.await;
                    if let Ok(response) = &response
                        && response
                            .extensions()
                            .get::<KeepsConnectionAlive>()
                            .is_some()
                    {
                        in_progress.counts();
                    }
                    drop(in_progress);
                    response
                }
            });
        let conn = http.serve_connection(TokioIo::new(io), BoxedService(service));
        let mut conn = pin!(conn);
        let opened = Instant::now();
        // Set once a graceful close began: HTTP/2's waits for the client to acknowledge a
        // PING, which a hostile client never does, so an idle connection is dropped outright
        // `handshake_timeout` later.
        let mut closing_since: Option<Instant> = None;
        loop {
            let (first, idle, since) = match closing_since {
                None => (self.handshake_timeout, self.idle_timeout, opened),
                Some(since) => (self.handshake_timeout, self.handshake_timeout, since),
            };
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.close.wait_for(|close| *close), if closing_since.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    closing_since = Some(Instant::now());
                }
                () = activity.idle(first, idle, since) => {
                    if closing_since.is_some() {
                        tracing::debug!("dropping an idle connection that did not close");
                        return;
                    }
                    tracing::debug!("closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing_since = Some(Instant::now());
                }
            }
        }
    }
}

/// `key_store` label of a failure before routing (as the mTLS verifier uses).
const NO_KEY_STORE: &str = "none";

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
