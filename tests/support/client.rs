//! Clients of the server under test: a real HTTPS client (rustls + hyper, HTTP/1.1 or HTTP/2)
//! that signs with SigV4 ([`Client`]), and lower-level pieces for the TLS front tests: rustls
//! client configurations with chosen versions, suites and ALPN ([`TlsClient`]), TLS connects
//! that report the alert received ([`connect`], [`alert_received`], [`raw_ping`]) and plain
//! hyper requests over any stream ([`http1_gets`], [`http2_get`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{AlertDescription, ClientConfig, RootCertStore, SupportedCipherSuite};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Ca, Leaf, Signer};

/// Upper bound for anything that should succeed promptly.
pub const PROMPT: Duration = Duration::from_secs(5);
/// Upper bound for a TLS handshake (longer than [`PROMPT`]: load tests queue handshakes).
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `errorName` of an error body.
    pub fn error_name(&self) -> String {
        self.json()["errorName"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned()
    }

    /// Asserts an XKS error: exact status, exact errorName, JSON content type, a printable
    /// ASCII errorMessage under 512 characters (ERR-1, ERR-2, MTH-3).
    #[track_caller]
    pub fn assert_error(&self, status: u16, name: &str) {
        assert_eq!(
            (self.status, self.error_name().as_str()),
            (status, name),
            "body: {}",
            self.text()
        );
        assert_eq!(self.headers["content-type"], "application/json");
        let message = self.json()["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.len() < 512 && message.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "{message:?}"
        );
        assert!(!self.text().contains('\n'), "multi-line body");
    }

    /// Asserts 200 with a compact single-line JSON body (E-15).
    #[track_caller]
    pub fn assert_ok(&self) -> serde_json::Value {
        assert_eq!(self.status, 200, "body: {}", self.text());
        assert_eq!(self.headers["content-type"], "application/json");
        let text = self.text();
        assert!(
            !text.contains('\n') && !text.contains(": ") && !text.contains(", "),
            "{text}"
        );
        self.json()
    }
}

/// Connection settings.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    pub http2: bool,
    pub signer: Option<Signer>,
    /// The Host / :authority value sent (and signed).
    pub host: String,
    /// Also sign `content-type`, as curl does (AU-6).
    pub sign_content_type: bool,
    /// Signing time; `None` is now.
    pub signing_time: Option<OffsetDateTime>,
    /// Change one body byte after signing (AU-8 negative test).
    pub tamper_after_signing: bool,
}

impl Client {
    pub fn tls(addr: SocketAddr, ca: &Ca, client_cert: Option<&Leaf>) -> Self {
        Self {
            tls: Some(TlsClient::default().config(ca, client_cert)),
            ..Self::plaintext(addr)
        }
    }

    pub fn plaintext(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            http2: false,
            signer: Some(Signer::new(super::AKID_A1, super::SECRET_A1)),
            host: format!("localhost:{}", addr.port()),
            sign_content_type: false,
            signing_time: None,
            tamper_after_signing: false,
        }
    }

    /// A TLS client trusting `ca` that offers only `http/1.1` in ALPN.
    pub fn tls_http1_only(addr: SocketAddr, ca: &Ca) -> Self {
        Self {
            tls: Some(
                TlsClient {
                    alpn: vec![b"http/1.1"],
                    ..TlsClient::default()
                }
                .config(ca, None),
            ),
            ..Self::plaintext(addr)
        }
    }

    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    pub fn signer(mut self, signer: Option<Signer>) -> Self {
        self.signer = signer;
        self
    }

    /// A signed POST of a JSON body.
    pub async fn post(&self, path: &str, body: &[u8]) -> Reply {
        self.send("POST", path, &[("content-type", "application/json")], body)
            .await
    }

    /// An Encrypt of `plaintext` (with `aad`, asking for CDIV if `cdiv`) for `key` of the key
    /// store at `prefix` (e.g. `/tenant-a`).
    pub async fn encrypt(
        &self,
        prefix: &str,
        key: &str,
        plaintext: &[u8],
        aad: Option<&[u8]>,
        cdiv: bool,
    ) -> Reply {
        let path = format!("{prefix}/kms/xks/v1/keys/{key}/encrypt");
        self.post(&path, &super::bodies::encrypt(plaintext, aad, cdiv))
            .await
    }

    /// A Decrypt of `body` (e.g. from [`super::bodies::decrypt_from`]) for `key` of the key
    /// store at `prefix`.
    pub async fn decrypt(&self, prefix: &str, key: &str, body: &serde_json::Value) -> Reply {
        let path = format!("{prefix}/kms/xks/v1/keys/{key}/decrypt");
        self.post(&path, body.to_string().as_bytes()).await
    }

    /// Sends one request on a new connection, signing it when a signer is set.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut conn = self.connect().await.unwrap();
        conn.send(self, method, path, headers, body).await
    }

    /// Opens a connection (TCP + TLS + HTTP handshake).
    pub async fn connect(&self) -> io::Result<Connection> {
        match &self.tls {
            None => {
                let tcp = TcpStream::connect(self.addr).await?;
                tcp.set_nodelay(true)?;
                Connection::handshake(TokioIo::new(tcp), self.http2).await
            }
            Some(config) => {
                let tls = connect(self.addr, Arc::clone(config)).await?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                assert_eq!(
                    h2,
                    self.http2 || h2,
                    "server chose h2 although the client wanted h1"
                );
                Connection::handshake(TokioIo::new(tls), h2).await
            }
        }
    }
}

/// An open HTTP connection.
pub enum Connection {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Connection {
    async fn handshake<T>(io: TokioIo<T>, h2: bool) -> io::Result<Self>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(io::Error::other)?;
            tokio::spawn(conn);
            Ok(Self::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(io::Error::other)?;
            tokio::spawn(conn);
            Ok(Self::H1(send))
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Self::H2(_))
    }

    /// Sends a request on this connection (keep-alive).
    pub async fn send(
        &mut self,
        client: &Client,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let uri = match self {
            Self::H1(_) => path.to_owned(),
            Self::H2(_) => format!("https://{}{path}", client.host),
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if let Self::H1(_) = self {
            builder = builder.header("host", &client.host);
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if let Some(signer) = &client.signer {
            let signed: Vec<(&str, &str)> = headers
                .iter()
                .copied()
                .filter(|(k, _)| client.sign_content_type && k.eq_ignore_ascii_case("content-type"))
                .collect();
            let when = client.signing_time.unwrap_or_else(OffsetDateTime::now_utc);
            let (date, auth) = signer.sign(method, path, &client.host, &signed, body, when);
            builder = builder
                .header("x-amz-date", date)
                .header("authorization", auth);
        }
        let mut body = body.to_vec();
        if client.tamper_after_signing {
            let last = body.len() - 1;
            body[last] ^= 0x01;
        }
        let request = builder.body(Full::new(Bytes::from(body))).unwrap();
        let response = timeout(Duration::from_secs(30), async {
            match self {
                Self::H1(s) => s.send_request(request).await,
                Self::H2(s) => s.send_request(request).await,
            }
        })
        .await
        .expect("response timed out")
        .expect("request failed");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }
}

/// The TLS side of a client: protocol versions, cipher suites and ALPN offered.
pub struct TlsClient {
    pub versions: Vec<&'static rustls::SupportedProtocolVersion>,
    /// `None`: all of ring's suites.
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
