//! The front door under hostile or merely common clients, against the real `xks-proxy serve`
//! binary: early errors that reach Debian's curl over HTTP/2 and HTTP/1.1, idle HTTP/2
//! connections that cannot hold every slot (main and admin listeners), a stream flood that
//! cannot grow the process beyond the pre-authentication budget, and a `Host` that disagrees
//! with `:authority`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::binary::Server;
use support::client::TlsClient;
use support::{Ca, Client, bodies, softhsm};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The HTTP/2 client preface and an empty SETTINGS frame: all an idle-flood client sends.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Writes a config with TLS, the test token, one key store and `server_extra` in `[server]`.
fn config(dir: &Path, ca: &Ca, server_extra: &str) -> PathBuf {
    let (chain, key) = ca.server().write(dir, ca, "server");
    let pin = dir.join("pin");
    std::fs::write(&pin, softhsm::USER_PIN).unwrap();
    let path = dir.join("xks-proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\
             [server.tls]\ncertificate_chain = {chain:?}\nprivate_key = {key:?}\n\
             [hsm]\nmodule = \"{}\"\ntoken_label = \"{}\"\nuser_pin_file = {pin:?}\n\
             [logging]\nlevel = \"info\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[key_stores]]\npath_prefix = \"/tenant-a\"\n[[key_stores.credentials]]\n\
             access_key_id = \"{}\"\nsecret = \"{}\"\n",
            softhsm::MODULE,
            softhsm::TOKEN_LABEL,
            support::AKID_A1,
            support::SECRET_A1
        ),
    )
    .unwrap();
    path
}

/// One `curl` call with a `size`-byte body; `Some((status, errorName))` when an XKS error
/// answer arrived intact, `None` when curl reported a transport error instead.
fn curl_error(
    server: &Server,
    ca_file: &Path,
    body: &Path,
    method: &str,
    path: &str,
    http: &str,
) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20", http])
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", server.addr.port()),
        ])
        .arg("--cacert")
        .arg(ca_file)
        .args(["-X", method, "-H", "Content-Type: application/json"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://localhost:{}{path}", server.addr.port()))
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (json, status) = stdout.rsplit_once('\n')?;
    let json: serde_json::Value = serde_json::from_str(json).ok()?;
    Some((status.parse().ok()?, json["errorName"].as_str()?.to_owned()))
}

/// Issue 7 item 1: a 404 or 405 answered before the body is read must reach curl intact,
/// over HTTP/2 and HTTP/1.1, whatever the body size up to the cap. Before the fix about one
/// in ten HTTP/2 answers with a 128 KiB body was lost to `(92) Stream error in the HTTP/2
/// framing layer`, and HTTP/1.1 saw `(55) Broken pipe`.
#[test]
fn early_errors_reach_curl_over_h2_and_http1_for_every_body_size() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("early error CA");
    let ca_file = ca.write(dir.path(), "ca");
    let server = Server::start(&config(dir.path(), &ca, ""));
    let cap = 128 * 1024;
    let mut lost = Vec::new();
    for size in [1024, 64 * 1024, cap - 1] {
        let body = dir.path().join(format!("body-{size}"));
        std::fs::write(&body, vec![b'a'; size]).unwrap();
        for http in ["--http2", "--http1.1"] {
            for (method, path, want) in [
                (
                    "POST",
                    "/nope/kms/xks/v1/health",
                    (404, "InvalidUriPathException"),
                ),
                (
                    "PUT",
                    "/tenant-a/kms/xks/v1/health",
                    (405, "UnsupportedOperationException"),
                ),
            ] {
                for _ in 0..15 {
                    match curl_error(&server, &ca_file, &body, method, path, http) {
                        Some((status, name)) => {
                            assert_eq!((status, name.as_str()), want, "{http} {size} {path}")
                        }
                        None => lost.push(format!("{http} {size} {method} {path}")),
                    }
                }
            }
        }
    }
    assert!(lost.is_empty(), "answers lost by curl: {lost:?}");
}

/// Item 1 with hyper's own clients: twenty 404s in a row with a body one byte short of the cap
/// on one keep-alive connection, over HTTP/2 and HTTP/1.1; every answer arrives and the
/// connection stays usable.
#[tokio::test]
async fn early_errors_reach_hyper_clients_on_one_keep_alive_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("hyper early error CA");
    let server = Server::start(&config(dir.path(), &ca, ""));
    let body = vec![b'a'; 128 * 1024 - 1];
    let headers = [("content-type", "application/json")];
    for h2 in [true, false] {
        let client = if h2 {
            Client::tls(server.addr, &ca, None).http2()
        } else {
            Client::tls_http1_only(server.addr, &ca)
        }
        .signer(None);
        let mut conn = client.connect().await.unwrap();
        assert_eq!(conn.is_h2(), h2);
        for _ in 0..20 {
            conn.send(&client, "POST", "/nope/kms/xks/v1/health", &headers, &body)
                .await
                .assert_error(404, "InvalidUriPathException");
            conn.send(
                &client,
                "PUT",
                "/tenant-a/kms/xks/v1/health",
                &headers,
                &body,
            )
            .await
            .assert_error(405, "UnsupportedOperationException");
        }
    }
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection that offers only ALPN h2.
async fn tls_h2(server: &Server, ca: &Ca) -> TlsStream {
    let client = TlsClient {
        alpn: vec![b"h2"],
        ..TlsClient::default()
    };
    support::client::connect(server.addr, client.config(ca, None))
        .await
        .unwrap()
}

/// Opens a TLS connection with ALPN h2 and sends only the preface and SETTINGS.
async fn idle_h2_over_tls(server: &Server, ca: &Ca) -> TlsStream {
    let mut tls = tls_h2(server, ca).await;
    tls.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
    tls.flush().await.unwrap();
    tls
}

/// Reads until the server closes the connection (frames it sends, such as SETTINGS and GOAWAY,
/// are skipped); `false` if it is still open after `within`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(within, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await
    .is_ok()
}

/// Issue 7 items 2 and 4: connections that only send the HTTP/2 preface fill every slot of the
/// main listener (max_connections = 8) and of the admin listener (32 slots); both are closed
/// after the first-request limit, so a signed health request and `/healthz` are answered
/// meanwhile. Before the fix they stayed open for good and both requests timed out.
#[tokio::test]
async fn idle_http2_connections_cannot_hold_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("idle CA");
    let server = Server::start(&config(
        dir.path(),
        &ca,
        "max_connections = 8\nhandshake_timeout_ms = 1000\nidle_timeout_ms = 2000\n",
    ));
    let started = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(idle_h2_over_tls(&server, &ca).await);
    }
    let mut admin_flood = Vec::new();
    for _ in 0..32 {
        let mut tcp = TcpStream::connect(server.admin_addr).await.unwrap();
        tcp.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
        admin_flood.push(tcp);
    }

    // New clients get in once the flood is closed (1 s before a first request).
    let health = Client::tls(server.addr, &ca, None).http2();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        health.post("/tenant-a/kms/xks/v1/health", &bodies::health()),
    )
    .await
    .expect("a signed request got no slot while idle HTTP/2 connections held them");
    reply.assert_ok();
    let live = tokio::time::timeout(
        Duration::from_secs(10),
        Client::plaintext(server.admin_addr)
            .signer(None)
            .send("GET", "/healthz", &[], b""),
    )
    .await
    .expect("/healthz got no slot on the admin listener");
    assert_eq!(live.status, 200);
    for conn in flood.iter_mut() {
        assert!(
            closed_within(conn, Duration::from_secs(5)).await,
            "flood connection still open"
        );
    }
    for conn in admin_flood.iter_mut() {
        assert!(
            closed_within(conn, Duration::from_secs(5)).await,
            "admin flood connection still open"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(15));

    // After a request, a connection stays usable while busy and is closed once idle.
    let mut conn = health.connect().await.unwrap();
    assert!(conn.is_h2());
    let headers = [("content-type", "application/json")];
    conn.send(
        &health,
        "POST",
        "/tenant-a/kms/xks/v1/health",
        &headers,
        &bodies::health(),
    )
    .await
    .assert_ok();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let again = tokio::time::timeout(Duration::from_secs(5), async {
        let support::client::Connection::H2(send) = &mut conn else {
            unreachable!()
        };
        send.ready().await.is_err()
    })
    .await
    .unwrap_or(false);
    assert!(
        again,
        "an idle HTTP/2 connection was still open after idle_timeout_ms"
    );
}

/// A request body that sends `len` bytes and then never ends.
struct Stalled(Option<Bytes>);

impl Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }
}

/// Resident set size of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Issue 7 item 3: 12 connections each try 64 unsigned streams holding a body one byte short
/// of the 128 KiB cap. The server allows 32 streams per connection and holds at most
/// `pre_auth_buffer_bytes` (16 MiB by default) of unauthenticated bodies, answering the rest
/// with 429; its RSS stays within a bound and comes back after the flood. Before the fix RSS
/// grew by over 300 MB and stayed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flood_stays_within_the_pre_authentication_budget() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("flood CA");
    let server = Server::start(&config(dir.path(), &ca, "body_timeout_ms = 2000\n"));
    let pid = server.child.id();
    let client = Client::tls(server.addr, &ca, None).http2();
    client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
    let baseline = rss(pid);

    let chunk = Bytes::from(vec![b'x'; 128 * 1024 - 1]);
    let mut streams = tokio::task::JoinSet::new();
    let mut senders = Vec::new();
    for _ in 0..12 {
        let tls = tls_h2(&server, &ca).await;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        for _ in 0..64 {
            let mut send = send.clone();
            let request = http::Request::post(format!(
                "https://localhost:{}/tenant-a/kms/xks/v1/health",
                server.addr.port()
            ))
            .header("content-type", "application/json")
            .body(Stalled(Some(chunk.clone())))
            .unwrap();
            streams.spawn(async move {
                let response = tokio::time::timeout(Duration::from_secs(20), async {
                    send.ready().await.ok()?;
                    send.send_request(request).await.ok()
                })
                .await
                .ok()
                .flatten()?;
                let status = response.status().as_u16();
                let _ = response.into_body().collect().await;
                Some(status)
            });
        }
        senders.push(send);
    }

    let mut peak = baseline;
    let flood_started = Instant::now();
    while flood_started.elapsed() < Duration::from_secs(1) {
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The flood cannot spend the budget of others: a connection may hold a sixteenth of it.
    let during = client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await;
    while flood_started.elapsed() < Duration::from_secs(4) {
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    during.assert_ok();
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(joined) = streams.join_next().await {
        peak = peak.max(rss(pid));
        *statuses.entry(joined.unwrap()).or_insert(0) += 1;
    }
    drop(senders);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(pid);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "RSS baseline {:.1} MiB, peak {:.1} MiB, after {:.1} MiB; answers {statuses:?}",
        mib(baseline),
        mib(peak),
        mib(after)
    );
    assert!(
        statuses.get(&Some(429)).is_some_and(|n| *n > 0),
        "no stream was refused by the budget: {statuses:?}"
    );
    assert!(
        peak - baseline < 64 * 1024 * 1024,
        "RSS grew by {:.1} MiB under the flood",
        mib(peak - baseline)
    );
    assert!(
        after.saturating_sub(baseline) < 48 * 1024 * 1024,
        "RSS stayed {:.1} MiB above baseline after the flood",
        mib(after - baseline)
    );
    // The proxy still serves.
    client
        .post("/tenant-a/kms/xks/v1/health", &bodies::health())
        .await
        .assert_ok();
}

/// Issue 7 item 6: RFC 9113 §8.3.1, an HTTP/2 request whose `Host` header names another
/// server than its `:authority` is malformed (before the fix it reached SigV4).
#[tokio::test]
async fn http2_host_that_differs_from_authority_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("authority CA");
    let server = Server::start(&config(dir.path(), &ca, ""));
    let client = Client::tls(server.addr, &ca, None).http2();
    let headers = [
        ("content-type", "application/json"),
        ("host", "other.example"),
    ];
    let reply = client
        .send(
            "POST",
            "/tenant-a/kms/xks/v1/health",
            &headers,
            &bodies::health(),
        )
        .await;
    reply.assert_error(400, "ValidationException");
    // The same Host as :authority is fine.
    let same = client.host.clone();
    let headers = [
        ("content-type", "application/json"),
        ("host", same.as_str()),
    ];
    client
        .send(
            "POST",
            "/tenant-a/kms/xks/v1/health",
            &headers,
            &bodies::health(),
        )
        .await
        .assert_ok();
}

/// Issue 7 items 2 and 4, the other way to hold a slot: a cheap unauthenticated request every
/// few hundred milliseconds (`GET /ping` on the XKS listener, `GET /healthz` on the admin one)
/// does not keep a connection open; only authenticated requests do.
#[tokio::test]
async fn unauthenticated_requests_do_not_keep_a_connection_open() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("keep-alive CA");
    let server = Server::start(&config(
        dir.path(),
        &ca,
        "handshake_timeout_ms = 1000\nidle_timeout_ms = 2000\n",
    ));
    let main = Client::tls(server.addr, &ca, None).http2().signer(None);
    let admin = Client::plaintext(server.admin_addr).signer(None);
    for (client, path) in [(main, "/ping"), (admin, "/healthz")] {
        let mut conn = client.connect().await.unwrap();
        let started = Instant::now();
        let mut answered = 0;
        let closed_after = loop {
            let request = http::Request::get(format!("http://{}{path}", client.host))
                .header("host", &client.host)
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap();
            let sent = match &mut conn {
                support::client::Connection::H2(send) => match send.ready().await {
                    Ok(()) => send.send_request(request).await.is_ok(),
                    Err(_) => false,
                },
                support::client::Connection::H1(send) => match send.ready().await {
                    Ok(()) => send.send_request(request).await.is_ok(),
                    Err(_) => false,
                },
            };
            if !sent {
                break started.elapsed();
            }
            answered += 1;
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "{path}: still open after {answered} unauthenticated requests"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(answered > 0, "{path}: not even one answer");
        assert!(
            closed_after < Duration::from_secs(5),
            "{path}: closed after {closed_after:?}"
        );
    }
}
