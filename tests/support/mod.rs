//! Shared harness of the integration tests: a real SoftHSM2 token, a real server on
//! 127.0.0.1:0 with real TLS, and a real HTTP client that signs with SigV4.
//!
//! A test that starts an in-process [`Proxy`] on the SoftHSM2 backend opens PKCS#11 itself, so
//! it starts with `softhsm::isolate!()` (see [`softhsm`]).
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    unused_imports,
    unused_macros
)]

pub mod binary;
pub mod bodies;
pub mod client;
pub mod faults;
pub mod isolation;
pub mod kms_front;
pub mod pki;
pub mod sigv4;
pub mod softhsm;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use xks_proxy::config::{self, Settings, Transport};
use xks_proxy::hsm::KeyBackend;
use xks_proxy::http::{AppState, router};
use xks_proxy::metrics::Metrics;
use xks_proxy::server::{ServeOptions, serve};

pub use client::{Client, Reply};
pub use pki::{Ca, Leaf, Pki};
pub use sigv4::Signer;

/// Two credentials of store `/tenant-a` (rotation, ROT-1) and one of store `/tenant-b`.
pub const AKID_A1: &str = "AKIAI2SFODNN7EXAMPLE";
pub const SECRET_A1: &str = "GfHQzWbmSw4uRGZqKo5nhQKE+ILlcOt7VEqNdWCtuLY=";
pub const AKID_A2: &str = "BBBBBBBBBBBBBBBBBBBBBBBB22";
pub const SECRET_A2: &str = "c2Vjb25kLXNlY3JldC1mb3ItdGVuYW50LWEtcm90YXRpb24=";
pub const AKID_B: &str = "CCCCCCCCCCCCCCCCCCCCCCC777";
pub const SECRET_B: &str = "dGVuYW50LWItc2VjcmV0LXZhbHVlLXRoYXQtaXMtbG9uZw==";

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    pub ca: Arc<Ca>,
    pub settings: Settings,
    /// The metrics the proxy records into.
    pub metrics: Arc<Metrics>,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// How to start a proxy.
pub struct ProxyBuilder {
    /// Extra TOML inserted into `[server.tls]` (e.g. a client_auth table).
    pub tls_extra: String,
    /// Extra TOML appended at the end (e.g. more key stores).
    pub extra: String,
    /// Extra TOML for the first key store.
    pub store_a_extra: String,
    pub plaintext: bool,
    /// Extra TOML for `[server]`.
    pub server_extra: String,
    pub limits: String,
    pub request_timeout_ms: u64,
    pub backend: Option<Arc<dyn KeyBackend>>,
    pub ca: Option<Arc<Ca>>,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self {
            tls_extra: String::new(),
            extra: String::new(),
            store_a_extra: String::new(),
            plaintext: false,
            server_extra: String::new(),
            limits: String::new(),
            request_timeout_ms: 2_000,
            backend: None,
            ca: None,
        }
    }
}

impl ProxyBuilder {
    pub async fn start(self) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let ca = self.ca.unwrap_or_else(|| Arc::new(Ca::new("xks test CA")));
        let (chain, key) = ca.server().write(dir.path(), &ca, "server");
        let transport = if self.plaintext {
            "plaintext_behind_load_balancer = true\n".to_owned()
        } else {
            format!(
                "[server.tls]\ncertificate_chain = {:?}\nprivate_key = {:?}\n{}\n",
                chain, key, self.tls_extra
            )
        };
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
request_timeout_ms = {timeout}
{server_extra}
{transport}
[limits]
{limits}
[hsm]
module = "{module}"
token_label = "{token_label}"
user_pin = "{pin}"
[health]
proxy_fleet_size = 2
cache_ttl_seconds = 1
[logging]
level = "debug"
[[key_stores]]
name = "tenant-a"
path_prefix = "/tenant-a"
{store_a_extra}
[[key_stores.credentials]]
access_key_id = "{AKID_A1}"
secret = "{SECRET_A1}"
[[key_stores.credentials]]
access_key_id = "{AKID_A2}"
secret = "{SECRET_A2}"
[[key_stores]]
name = "tenant-b"
path_prefix = "/tenant-b"
[[key_stores.credentials]]
access_key_id = "{AKID_B}"
secret = "{SECRET_B}"
{extra}
"#,
            timeout = self.request_timeout_ms,
            server_extra = self.server_extra,
            limits = self.limits,
            module = softhsm::MODULE,
            token_label = softhsm::TOKEN_LABEL,
            pin = softhsm::USER_PIN,
            store_a_extra = self.store_a_extra,
            extra = self.extra,
        );
        let settings = config::load_from_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let tls = match &settings.server.transport {
            Transport::Tls(tls) => Some(xks_proxy::tls::server_config(tls).unwrap()),
            Transport::PlaintextBehindLoadBalancer => None,
        };
        let backend = self
            .backend
            .unwrap_or_else(|| Arc::clone(softhsm::token().backend()) as Arc<dyn KeyBackend>);
        let metrics = Arc::new(Metrics::new());
        let state = Arc::new(AppState::new(&settings, backend, Arc::clone(&metrics)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = ServeOptions {
            max_connections: 64,
            ..ServeOptions::from_settings(&settings.server)
        };
        let task = tokio::spawn(serve(listener, tls, router(state), options, async move {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            ca,
            settings,
            metrics,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

impl Proxy {
    pub async fn start() -> Self {
        ProxyBuilder::default().start().await
    }

    /// A TLS client trusting this proxy's CA.
    pub fn client(&self) -> Client {
        Client::tls(self.addr, &self.ca, None)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Stops accepting and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls `check` until it holds, failing the test after 10 s (`what` names the condition).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    const DEADLINE: Duration = Duration::from_secs(10);
    let start = std::time::Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
