//! Lower-level client pieces for the TLS front tests: rustls client configurations with chosen
//! versions, suites and ALPN ([`TlsClient`]), TLS connects that report the alert received
//! ([`connect`], [`alert_received`], [`raw_ping`]) and plain hyper requests over any stream
//! ([`http1_gets`], [`http2_get`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig, RootCertStore, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Ca, Leaf};

/// Upper bound for anything that should succeed promptly.
pub const PROMPT: Duration = Duration::from_secs(5);
/// Upper bound for a TLS handshake (longer than [`PROMPT`]: load tests queue handshakes).
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The TLS side of a client: protocol versions, cipher suites and ALPN offered.
pub struct TlsClient {
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    /// `None`: all of ring's suites (the test client is ring whatever the proxy's provider).
    pub suites: Option<Vec<SupportedCipherSuite>>,
    pub alpn: Vec<&'static [u8]>,
}

impl Default for TlsClient {
    /// TLS 1.3 and 1.2, ring's suites, ALPN `h2` then `http/1.1`.
    fn default() -> Self {
        Self {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            suites: None,
            alpn: vec![b"h2", b"http/1.1"],
        }
    }
}

impl TlsClient {
    pub fn tls12() -> Self {
        Self {
            versions: vec![&rustls::version::TLS12],
            ..Self::default()
        }
    }

    pub fn tls13() -> Self {
        Self {
            versions: vec![&rustls::version::TLS13],
            ..Self::default()
        }
    }

    /// A config trusting `trust` (a [`Ca`], or a [`super::pki::Pki`]'s root), with an
    /// optional client certificate.
    pub fn config(&self, trust: &impl AsRef<Ca>, cert: Option<&Leaf>) -> Arc<ClientConfig> {
        let mut provider = rustls::crypto::ring::default_provider();
        // A `fips` proxy has no X25519: offer P-256 first, as a FIPS client (KMS) does,
        // so that handshakes stay free of a HelloRetryRequest (`HandshakeKind::Full`).
        #[cfg(feature = "fips")]
        {
            use rustls::crypto::ring::kx_group;
            provider.kx_groups = vec![kx_group::SECP256R1, kx_group::SECP384R1];
        }
        if let Some(suites) = &self.suites {
            provider.cipher_suites = suites.clone();
        }
        let mut roots = RootCertStore::empty();
        roots.add(trust.as_ref().cert_der.clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&self.versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match cert {
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf.cert_der.clone()], leaf.key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// TCP connect and TLS handshake with `localhost` at `addr`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").unwrap();
    timeout(HANDSHAKE, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| io::Error::other("TLS handshake timed out"))?
}

/// The alert a TLS error reports as received from the server, if any.
pub fn alert_received(error: &io::Error) -> Option<AlertDescription> {
    match error.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(alert) => Some(*alert),
        _ => None,
    }
}
/// Handshake, then a raw `GET /ping` read to the end: a TLS 1.3 server rejects the client
/// certificate after the client's handshake is complete, so its alert only surfaces on read.
/// Returns the status line, or the alert received.
pub async fn raw_ping(
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
pub async fn http1_gets<I>(io: I, path: &str, count: usize) -> Vec<(u16, String)>
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
        let request = Request::get(path)
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
pub async fn http2_get<I>(io: I, path: &str) -> (u16, String)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    try_http2_get(io, path).await.unwrap()
}

/// [`http2_get`] returning the request's error instead of panicking.
pub async fn try_http2_get<I>(io: I, path: &str) -> Result<(u16, String), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await?;
    tokio::spawn(conn);
    let request = Request::get(format!("https://localhost{path}"))
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
