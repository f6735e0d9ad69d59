//! One TLS connection to the target (HTTP/1.1 keep-alive or HTTP/2) and one exchange on it (a
//! signed POST, or an unsigned `GET /ping`), each bounded by [`REQUEST_TIMEOUT`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use tokio::net::TcpStream;

use crate::signer::Signer;
use crate::target::Target;

/// Upper bound on one request (connect + TLS + exchange), so a stuck proxy ends the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One open HTTP connection.
pub(crate) enum Connection {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// Opens a TCP + TLS connection and runs the HTTP/1.1 or HTTP/2 handshake; with `http2` the
/// server must negotiate `h2`.
pub(crate) async fn connect(
    target: &Target,
    tls: &Arc<ClientConfig>,
    http2: bool,
) -> Result<Connection, String> {
    let attempt = async {
        let tcp = TcpStream::connect(target.addrs.as_slice())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let got_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(stream);
        if http2 {
            if !got_h2 {
                return Err("the server did not negotiate h2".to_owned());
            }
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Connection::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Connection::H1(send))
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .map_err(|_| "connect: timed out".to_owned())?
}

/// Signs and sends one POST, returning the status and the whole response body. Transport
/// errors (and timeouts) are `Err`; the caller then drops the connection.
pub(crate) async fn exchange(
    conn: &mut Connection,
    target: &Target,
    signer: &Signer,
    path: &str,
    body: String,
) -> Result<(u16, Bytes), String> {
    let request = signed_post(conn, target, signer, path, body)?;
    send(conn, request).await
}

/// The SigV4-signed POST of `body` to `path`, shaped for `conn`'s HTTP version.
pub(crate) fn signed_post(
    conn: &Connection,
    target: &Target,
    signer: &Signer,
    path: &str,
    body: String,
) -> Result<Request<Full<Bytes>>, String> {
    let signed = signer.sign(
        "POST",
        path,
        &target.authority,
        body.as_bytes(),
        SystemTime::now(),
    )?;
    let builder = match conn {
        Connection::H1(_) => Request::post(path).header("host", &target.authority),
        Connection::H2(_) => Request::post(format!("https://{}{path}", target.authority)),
    };
    builder
        .header("content-type", "application/json")
        .header("x-amz-date", signed.amz_date)
        .header("authorization", signed.authorization)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the request: {e}"))
}

/// Sends one unsigned `GET` of `target.ping_path`, returning the status and the body.
pub(crate) async fn ping(conn: &mut Connection, target: &Target) -> Result<(u16, Bytes), String> {
    let request = ping_request(conn, target)?;
    send(conn, request).await
}

/// The unsigned `GET` of `target.ping_path`, shaped for `conn`'s HTTP version.
pub(crate) fn ping_request(
    conn: &Connection,
    target: &Target,
) -> Result<Request<Full<Bytes>>, String> {
    let path = &target.ping_path;
    let builder = match conn {
        Connection::H1(_) => Request::get(path.as_str()).header("host", &target.authority),
        Connection::H2(_) => Request::get(format!("https://{}{path}", target.authority)),
    };
    builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("building the request: {e}"))
}

/// Sends `request` and reads the whole response, bounded by [`REQUEST_TIMEOUT`].
pub(crate) async fn send(
    conn: &mut Connection,
    request: Request<Full<Bytes>>,
) -> Result<(u16, Bytes), String> {
    let send = async {
        let response = match conn {
            Connection::H1(send) => {
                send.ready().await.map_err(|e| format!("HTTP/1.1: {e}"))?;
                send.send_request(request)
                    .await
                    .map_err(|e| format!("HTTP/1.1: {e}"))?
            }
            Connection::H2(send) => {
                send.ready().await.map_err(|e| format!("HTTP/2: {e}"))?;
                send.send_request(request)
                    .await
                    .map_err(|e| format!("HTTP/2: {e}"))?
            }
        };
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the response body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, send)
        .await
        .map_err(|_| "request timed out".to_owned())?
}
