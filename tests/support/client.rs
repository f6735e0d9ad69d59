//! The client of the server under test: a real HTTPS client (rustls + hyper, HTTP/1.1 or
//! HTTP/2) that signs with SigV4 ([`Client`]). The TLS pieces it builds on live in `tls.rs`
//! and are re-exported here.

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

pub use super::tls::{
    PROMPT, TlsClient, alert_received, connect, http1_gets, http2_get, raw_ping, try_http2_get,
};

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
