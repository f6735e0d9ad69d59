//! Real TLS on 127.0.0.1 against `xks_proxy::server::serve` with `xks_proxy::tls` configs
//! (XKS spec §1.1 TR-1…9, §1.2 MT-1…8; checklist §7 items 22, 23, 33).

// Test helpers outside `#[test]` functions fail loudly on purpose; `allow-*-in-tests` in
// clippy.toml only covers the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../support/mod.rs"]
mod support;

mod server;

use std::time::{Duration, Instant};

use rustls::crypto::ring::cipher_suite as cs;
use rustls::{AlertDescription, HandshakeKind, ProtocolVersion};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use server::Server;
use support::Pki;
use support::client::{self, PROMPT, alert_received, connect, http1_gets, http2_get, raw_ping};
// The TLS side of a client is all these tests configure.
use support::client::TlsClient as Client;

#[tokio::test]
async fn tr_4_tr_5_tls12_client_gets_a_spec_suite() {
    let pki = Pki::new();
    let cases = [
        (pki.tls(), cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        (pki.tls_rsa(), cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
    ];
    for (settings, expected) in cases {
        let config = xks_proxy::tls::server_config(&settings).unwrap();
        let server = Server::start(Some(config), server::options()).await;
        // The client offers all of ring's TLS 1.2 suites, including non-spec ones.
        let tls = connect(server.addr, Client::tls12().config(&pki, None))
            .await
            .unwrap();
        let conn = tls.get_ref().1;
        assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_2));
        assert_eq!(conn.negotiated_cipher_suite(), Some(expected));
        drop(tls);
        server.stop().await;
    }
}

#[tokio::test]
async fn tr_4_tr_5_tls13_gets_a_spec_suite() {
    let pki = Pki::new();
    let server = Server::tls(&pki).await;
    let tls = connect(server.addr, Client::tls13().config(&pki, None))
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert!(
        [
            cs::TLS13_AES_256_GCM_SHA384.suite(),
            cs::TLS13_CHACHA20_POLY1305_SHA256.suite()
        ]
        .contains(&suite),
        "{suite:?}"
    );
    drop(tls); // an idle connection would delay `stop` by the first-bytes timeout
    let chacha = Client {
        suites: Some(vec![cs::TLS13_CHACHA20_POLY1305_SHA256]),
        ..Client::tls13()
    };
    let result = connect(server.addr, chacha.config(&pki, None)).await;
    if cfg!(feature = "fips") {
        // FIPS 140-3 does not approve ChaCha20-Poly1305: a `fips` build serves three suites.
        let error = result.unwrap_err();
        assert_eq!(
            alert_received(&error),
            Some(AlertDescription::HandshakeFailure),
            "{error:?}"
        );
    } else {
        assert_eq!(
            result.unwrap().get_ref().1.negotiated_cipher_suite(),
            Some(cs::TLS13_CHACHA20_POLY1305_SHA256)
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn tr_5_item_33_only_spec_suites_are_enabled() {
    let pki = Pki::new();
    let server = Server::tls(&pki).await;
    let aes128_13 = Client {
        suites: Some(vec![cs::TLS13_AES_128_GCM_SHA256]),
        ..Client::tls13()
    };
    let aes128_12 = Client {
        suites: Some(vec![cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]),
        ..Client::tls12()
    };
    let chacha_12 = Client {
        suites: Some(vec![cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]),
        ..Client::tls12()
    };
    for client in [aes128_13, aes128_12, chacha_12] {
        let error = connect(server.addr, client.config(&pki, None))
            .await
            .unwrap_err();
        assert_eq!(
            alert_received(&error),
            Some(AlertDescription::HandshakeFailure),
            "{error:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn tr_2_tr_3_item_33_alpn_offers_h2_and_http11() {
    let pki = Pki::new();
    let server = Server::tls(&pki).await;
    // (offered by the client, selected by the server)
    type Case = (&'static [&'static [u8]], Option<&'static [u8]>);
    let cases: [Case; 4] = [
        (&[b"h2", b"http/1.1"], Some(b"h2")),
        (&[b"http/1.1", b"h2"], Some(b"h2")),
        (&[b"http/1.1"], Some(b"http/1.1")),
        (&[], None),
    ];
    for (offered, expected) in cases {
        let client = Client {
            alpn: offered.to_vec(),
            ..Client::default()
        };
        let tls = connect(server.addr, client.config(&pki, None))
            .await
            .unwrap();
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            expected,
            "offered {offered:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn tr_7_full_chain_is_served() {
    let pki = Pki::new();
    let server = Server::tls(&pki).await;
    // The client trusts only the root: the handshake succeeds only with the intermediate.
    let tls = connect(server.addr, Client::default().config(&pki, None))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().map(<[_]>::len), Some(2));
    drop(tls);
    server.stop().await;
}

#[tokio::test]
async fn tr_1_tr_2_tr_9_http11_over_tls_with_keep_alive_and_connect_info() {
    let pki = Pki::new();
    let server = Server::tls(&pki).await;
    for client in [Client::tls12(), Client::tls13()] {
        let client = Client {
            alpn: vec![b"http/1.1"],
            ..client
        };
        let tls = connect(server.addr, client.config(&pki, None))
            .await
            .unwrap();
        let local = tls.get_ref().0.local_addr().unwrap();
        let responses = http1_gets(tls, "/ping", 3).await;
        assert_eq!(responses, vec![(200, "pong".to_owned()); 3]);
        let tls = connect(server.addr, client.config(&pki, None))
            .await
            .unwrap();
        let peer = tls.get_ref().0.local_addr().unwrap();
        assert_ne!(peer, local);
        assert_eq!(
            http1_gets(tls, "/peer", 1).await,
            vec![(200, peer.to_string())]
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn tr_3_http2_over_tls_by_alpn() {
    let pki = Pki::new();
    let server = Server::tls(&pki).await;
    for client in [Client::tls12(), Client::tls13()] {
        let tls = connect(server.addr, client.config(&pki, None))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let peer = tls.get_ref().0.local_addr().unwrap();
        assert_eq!(http2_get(tls, "/ping").await, (200, "pong".to_owned()));
        let tls = connect(server.addr, client.config(&pki, None))
            .await
            .unwrap();
        let peer2 = tls.get_ref().0.local_addr().unwrap();
        assert_ne!(peer, peer2);
        assert_eq!(http2_get(tls, "/peer").await, (200, peer2.to_string()));
    }
    server.stop().await;
}

#[tokio::test]
async fn tr_9_sessions_resume() {
    let pki = Pki::new();
    let server = Server::tls(&pki).await;
    for client in [Client::tls12(), Client::tls13()] {
        let config = Client {
            alpn: vec![b"http/1.1"],
            ..client
        }
        .config(&pki, None);
        let tls = connect(server.addr, config.clone()).await.unwrap();
        assert_eq!(tls.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
        // Reading a response also processes TLS 1.3 tickets.
        assert_eq!(http1_gets(tls, "/ping", 1).await[0].0, 200);
        let tls = connect(server.addr, config).await.unwrap();
        assert_eq!(
            tls.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed)
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn mt_1_mt_6_right_client_name_in_cn_or_san_is_served() {
    let pki = Pki::new();
    let server = Server::mtls(&pki).await;
    let clients = &pki.clients;
    for client in [Client::tls12(), Client::tls13()] {
        let client = Client {
            alpn: vec![b"http/1.1"],
            ..client
        };
        for cert in [&clients.right_cn, &clients.right_san_only] {
            let status = raw_ping(server.addr, client.config(&pki, Some(cert))).await;
            assert_eq!(status.as_deref(), Ok("HTTP/1.1 200 OK"));
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn mt_3_mt_7_item_22_23_rejections_send_handshake_failure() {
    let pki = Pki::new();
    let metrics = std::sync::Arc::new(xks_proxy::metrics::Metrics::new());
    let material = xks_proxy::tls::load(&pki.mtls(), Some(metrics.clone())).unwrap();
    let server = Server::start(Some(material.config), server::options()).await;
    let c = &pki.clients;
    let cases = [
        ("wrong CN", &c.wrong_cn),
        ("wrong CA", &c.wrong_ca),
        ("expired", &c.expired),
        ("serverAuth-only EKU", &c.server_auth_only),
    ];
    for client in [Client::tls12(), Client::tls13()] {
        let client = Client {
            alpn: vec![b"http/1.1"],
            ..client
        };
        for (case, cert) in cases {
            let outcome = raw_ping(server.addr, client.config(&pki, Some(cert))).await;
            assert_eq!(
                outcome,
                Err(AlertDescription::HandshakeFailure),
                "{case} {:?}",
                client.versions
            );
        }
    }
    // Every rejection is counted, before any key store is known.
    let text = metrics.render();
    assert!(
        text.contains(r#"xks_authentication_failures_total{key_store="none",reason="mtls"} 8"#),
        "{text}"
    );
    server.stop().await;
}

/// MT-8: without a client certificate rustls answers `certificate_required` (116), in TLS 1.2
/// too; acceptable, as no conformance client tests it.
#[tokio::test]
async fn mt_8_no_client_certificate_is_refused() {
    let pki = Pki::new();
    let server = Server::mtls(&pki).await;
    for client in [Client::tls12(), Client::tls13()] {
        let outcome = raw_ping(server.addr, client.config(&pki, None)).await;
        assert_eq!(outcome, Err(AlertDescription::CertificateRequired));
    }
    server.stop().await;
}

#[tokio::test]
async fn plaintext_serves_http11_and_h2c_prior_knowledge() {
    let server = Server::start(None, server::options()).await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        http1_gets(tcp, "/ping", 2).await,
        vec![(200, "pong".to_owned()); 2]
    );
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let local = tcp.local_addr().unwrap();
    assert_eq!(
        http1_gets(tcp, "/peer", 1).await,
        vec![(200, local.to_string())]
    );
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(http2_get(tcp, "/ping").await, (200, "pong".to_owned()));
    server.stop().await;
}

#[tokio::test]
async fn connection_cap_holds_a_second_connection_until_the_first_closes() {
    let pki = Pki::new();
    let options = xks_proxy::server::ServeOptions {
        max_connections: 1,
        ..server::options()
    };
    let tls = xks_proxy::tls::server_config(&pki.tls()).unwrap();
    let server = Server::start(Some(tls), options).await;
    let config = Client::tls13().config(&pki, None);

    let first = connect(server.addr, config.clone()).await.unwrap();
    let addr = server.addr;
    let second = tokio::spawn(async move { connect(addr, config).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !second.is_finished(),
        "second connection was served while the first was open"
    );

    drop(first);
    let second = timeout(PROMPT, second).await.unwrap().unwrap().unwrap();
    assert_eq!(http2_get(second, "/ping").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn handshake_timeout_closes_silent_clients_and_frees_the_slot() {
    let pki = Pki::new();
    let options = xks_proxy::server::ServeOptions {
        max_connections: 1,
        handshake_timeout: Duration::from_millis(200),
        ..server::options()
    };
    let tls = xks_proxy::tls::server_config(&pki.tls()).unwrap();
    let server = Server::start(Some(tls), options).await;

    // Silent before the TLS handshake.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    let read = timeout(PROMPT, silent.read(&mut [0u8; 16]))
        .await
        .expect("not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(150));

    // Silent after the handshake, with HTTP/2 negotiated (hyper alone would wait forever).
    let mut silent = connect(server.addr, Client::default().config(&pki, None))
        .await
        .unwrap();
    assert_eq!(silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let started = Instant::now();
    let read = timeout(PROMPT, silent.read(&mut [0u8; 16]))
        .await
        .expect("not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(150));

    // The slot is free again.
    let tls = connect(server.addr, Client::default().config(&pki, None))
        .await
        .unwrap();
    assert_eq!(http2_get(tls, "/ping").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_then_serve_returns() {
    let pki = Pki::new();
    let mut server = Server::tls(&pki).await;
    let config = Client {
        alpn: vec![b"http/1.1"],
        ..Client::default()
    }
    .config(&pki, None);

    // An idle keep-alive connection must not hold shutdown up.
    let idle = connect(server.addr, config.clone()).await.unwrap();
    let (mut idle_sender, idle_conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<hyper::body::Bytes>,
    >(hyper_util::rt::TokioIo::new(idle))
    .await
    .unwrap();
    let idle_conn = tokio::spawn(idle_conn);
    let request = http::Request::get("/ping")
        .header("host", "localhost")
        .body(Default::default())
        .unwrap();
    assert_eq!(
        idle_sender.send_request(request).await.unwrap().status(),
        200
    );

    let busy = connect(server.addr, config).await.unwrap();
    let in_flight = tokio::spawn(http1_gets(busy, "/slow", 1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    server.trigger_shutdown();

    assert_eq!(
        timeout(PROMPT, in_flight).await.unwrap().unwrap(),
        vec![(200, "done".to_owned())]
    );
    let addr = server.addr;
    server.join().await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "drain waited for the idle connection"
    );
    assert!(timeout(PROMPT, idle_conn).await.unwrap().is_ok());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open after serve returned"
    );
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let pki = Pki::new();
    let tls = xks_proxy::tls::server_config(&pki.tls()).unwrap();
    let grace = Duration::from_millis(50);
    let mut server = Server::start_with_grace(Some(tls), server::options(), grace).await;
    let busy = connect(server.addr, Client::default().config(&pki, None))
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move { client::try_http2_get(busy, "/slow").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    server.trigger_shutdown();
    server.join().await;
    // `/slow` answers 300 ms after the request: serve returned first, and the request failed.
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let outcome = timeout(PROMPT, in_flight).await.unwrap().unwrap();
    assert!(outcome.is_err(), "{outcome:?}");
}
