//! The server under test and tokio-rustls / hyper clients talking to it over loopback.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig, RootCertStore, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use xks_proxy::server::{ServeOptions, serve_with_grace};

use crate::pki::{ClientCert, Pki};

/// Upper bound for anything that should succeed promptly.
pub(crate) const PROMPT: Duration = Duration::from_secs(5);

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

/// A client configuration trusting the test root.
pub(crate) struct Client {
    pub(crate) versions: Vec<&'static rustls::SupportedProtocolVersion>,
    pub(crate) suites: Option<Vec<SupportedCipherSuite>>,
    pub(crate) alpn: Vec<&'static [u8]>,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            suites: None,
            alpn: vec![b"h2", b"http/1.1"],
        }
    }
}

impl Client {
    pub(crate) fn tls12() -> Self {
        Self {
            versions: vec![&rustls::version::TLS12],
            ..Self::default()
        }
    }

    pub(crate) fn tls13() -> Self {
        Self {
            versions: vec![&rustls::version::TLS13],
            ..Self::default()
        }
    }

    pub(crate) fn config(&self, pki: &Pki, cert: Option<&ClientCert>) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(suites) = &self.suites {
            provider.cipher_suites = suites.clone();
        }
        let mut roots = RootCertStore::empty();
        roots.add(pki.root.clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&self.versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match cert {
            Some(c) => builder
                .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// TLS handshake with `localhost` at `addr`.
pub(crate) async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    timeout(PROMPT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("TLS handshake hung")
}

/// The alert a TLS error reports as received from the server, if any.
pub(crate) fn alert_received(error: &io::Error) -> Option<AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}

/// Handshake, then a raw `GET /ping` read to the end: a TLS 1.3 server rejects the client
/// certificate after the client's handshake is complete, so its alert only surfaces on read.
/// Returns the status line, or the alert received.
pub(crate) async fn raw_ping(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<String, AlertDescription> {
    let outcome = async {
        let mut tls = connect(addr, config).await?;
        tls.write_all(b"GET /ping HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await?;
        Ok::<_, io::Error>(response)
    };
    match timeout(PROMPT, outcome).await.expect("raw ping hung") {
        Ok(response) => {
            let text = String::from_utf8_lossy(&response).into_owned();
            Ok(text.lines().next().unwrap_or_default().to_owned())
        }
        Err(e) => Err(alert_received(&e).unwrap_or_else(|| panic!("no alert in {e:?}"))),
    }
}

/// Sends `GET path` over HTTP/1.1 `count` times on one connection; returns (status, body)s.
pub(crate) async fn http1_gets<I>(io: I, path: &str, count: usize) -> Vec<(u16, String)>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut out = Vec::new();
    for _ in 0..count {
        let request = http::Request::get(path)
            .header("host", "localhost")
            .body(Empty::new())
            .unwrap();
        out.push(
            collect(
                timeout(PROMPT, sender.send_request(request))
                    .await
                    .unwrap()
                    .unwrap(),
            )
            .await,
        );
    }
    out
}

/// Sends `GET path` over HTTP/2 (prior knowledge when not negotiated by ALPN).
pub(crate) async fn http2_get<I>(io: I, path: &str) -> (u16, String)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    try_http2_get(io, path).await.unwrap()
}

/// [`http2_get`] returning the request's error instead of panicking.
pub(crate) async fn try_http2_get<I>(io: I, path: &str) -> Result<(u16, String), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await?;
    tokio::spawn(conn);
    let request = http::Request::get(format!("https://localhost{path}"))
        .body(Empty::new())
        .unwrap();
    let response = timeout(PROMPT, sender.send_request(request))
        .await
        .unwrap()?;
    assert_eq!(response.version(), http::Version::HTTP_2);
    Ok(collect(response).await)
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = timeout(PROMPT, response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
