//! `xks_load`: a small closed-loop load generator for a running xks-proxy.
//!
//! Each of `--concurrency` workers opens one persistent TLS connection (HTTP/1.1 keep-alive,
//! or HTTP/2 with `--http2`) to a **loopback** proxy and sends requests back to back. Every
//! request is SigV4-signed at send time (signed headers `host;x-amz-date`, service
//! `kms-xks-proxy`, signer written here from AWS's documentation) and carries a KMS-like body
//! with a unique `kmsRequestId`. The first `--warmup` seconds (default 1) are not counted; then
//! the tool measures for `--duration` seconds (or until `--requests` requests were sent) and
//! prints one summary: requests, errors by status, duration, requests/s and p50/p90/p99/max
//! latency of the successful (HTTP 200) requests.
//!
//! ```text
//! cargo run --release --example xks_load -- \
//!     --url https://localhost:8443/demo/kms/xks/v1/keys/demo-key-1/encrypt \
//!     --cacert .demo/tls/cert.pem --console-json .demo/kms-console.json \
//!     --concurrency 32 --duration 10 [--http2] [--operation encrypt|decrypt|health]
//! ```
//!
//! `--url` is always the key's `.../keys/{keyId}/encrypt` URL. `--operation decrypt` first
//! encrypts once (and checks one decrypt round trip) and then decrypts that ciphertext
//! repeatedly on `.../keys/{keyId}/decrypt`; `--operation health` calls `.../kms/xks/v1/health`
//! (the part of the path before `/keys/`, plus `/health`).
//!
//! The credential comes from `--console-json` (the file the proxy's `credentials new --output
//! console-json` writes) or from `--access-key-id` plus `--secret` / `XKS_LOAD_SECRET` (a
//! `--secret` on the command line is visible to other local users in the process list; prefer
//! the file or the environment). The secret is never printed.
//!
//! The load tool shares the CPU with the proxy when both run on one machine, so the numbers
//! are a lower bound for the proxy alone; `--client-threads` caps the tool's runtime threads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Parser, ValueEnum};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::macros::format_description;
use tokio::net::TcpStream;

/// SigV4 service name of every XKS credential scope.
const SERVICE: &str = "kms-xks-proxy";
/// Upper bound on one request (connect + TLS + exchange), so a stuck proxy ends the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before reconnecting after a failed connection attempt.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Operation {
    Encrypt,
    Decrypt,
    Health,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Health => "health",
        }
    }
}

/// Closed-loop load generator for a loopback xks-proxy (see the module docs).
// No `Debug`: the struct holds the secret.
#[derive(Parser)]
#[command(
    name = "xks_load",
    about = "Closed-loop SigV4 load generator for a loopback xks-proxy (encrypt, decrypt or health)"
)]
struct Args {
    /// The key's Encrypt URL, https://HOST:PORT/PREFIX/kms/xks/v1/keys/KEY/encrypt (loopback only).
    #[arg(
        long,
        default_value = "https://localhost:8443/demo/kms/xks/v1/keys/demo-key-1/encrypt"
    )]
    url: String,
    /// PEM file with the CA certificate(s) that issued the proxy's TLS certificate.
    #[arg(long)]
    cacert: PathBuf,
    /// KMS console JSON with XksProxyAuthenticationCredential.{AccessKeyId,RawSecretAccessKey}.
    #[arg(long, conflicts_with_all = ["access_key_id", "secret"])]
    console_json: Option<PathBuf>,
    /// SigV4 access key id (with --secret).
    #[arg(long, requires = "secret")]
    access_key_id: Option<String>,
    /// SigV4 secret (with --access-key-id); prefer XKS_LOAD_SECRET or --console-json.
    #[arg(long, env = "XKS_LOAD_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Region of the SigV4 credential scope.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Number of workers, each with one connection and one request in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration: u64,
    /// Also stop after this many measured requests.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Warm-up seconds before measuring (requests sent, not counted).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=60))]
    warmup: u64,
    /// Use HTTP/2 (one connection per worker) instead of HTTP/1.1 keep-alive.
    #[arg(long)]
    http2: bool,
    /// Plaintext size for encrypt/decrypt.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    plaintext_bytes: u32,
    /// Additional authenticated data size for encrypt/decrypt (0 = none sent).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    aad_bytes: u32,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Operation::Encrypt)]
    operation: Operation,
    /// Tokio worker threads of the load tool (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    client_threads: usize,
}

/// A SigV4 credential. No `Debug`, so the secret cannot end up in output.
struct Credential {
    access_key_id: String,
    secret: String,
    region: String,
}

/// Where requests go, parsed from `--url`.
struct Target {
    /// `host[:port]` as sent in `Host` / `:authority` and signed.
    authority: String,
    /// TLS server name.
    server_name: ServerName<'static>,
    /// Resolved loopback addresses.
    addrs: Vec<SocketAddr>,
    encrypt_path: String,
    decrypt_path: String,
    health_path: String,
}

/// Everything the workers share.
struct Shared {
    target: Target,
    credential: Credential,
    tls: Arc<ClientConfig>,
    http2: bool,
    operation: Operation,
    /// Request path for `operation`.
    path: String,
    /// JSON body around the request id: `prefix + id + suffix`.
    body_prefix: String,
    body_suffix: String,
    /// Run-unique part of every `kmsRequestId`.
    run_id: String,
    measure_start: Instant,
    measure_end: Instant,
    max_requests: Option<u64>,
    /// Measured requests claimed so far (for `--requests`).
    claimed: AtomicU64,
}

/// What one worker saw during the measured window.
#[derive(Default)]
struct WorkerStats {
    /// Latency of each measured HTTP 200, in microseconds.
    ok_latencies_us: Vec<u64>,
    /// Measured requests by outcome other than 200 (`HTTP 503`, `transport`, ...).
    errors: BTreeMap<String, u64>,
    /// First response body / error message per outcome, for diagnosis.
    samples: BTreeMap<String, String>,
    /// Requests sent during the warm-up.
    warmup_requests: u64,
}

impl WorkerStats {
    fn error(&mut self, kind: String, sample: String) {
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.samples.entry(kind).or_insert(sample);
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xks_load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if args.client_threads > 0 {
        builder.worker_threads(args.client_threads);
    }
    let runtime = builder
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<(), String> {
    let credential = load_credential(&args)?;
    let target = parse_target(&args.url).await?;
    let tls = Arc::new(tls_config(&args.cacert, args.http2)?);

    let plaintext: Vec<u8> = (0..args.plaintext_bytes).map(|i| (i % 251) as u8).collect();
    let aad: Vec<u8> = (0..args.aad_bytes)
        .map(|i| (i % 241) as u8 ^ 0x5a)
        .collect();
    let run_id = format!(
        "xks-load-{:x}-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        std::process::id()
    );

    // Bodies are `prefix + kmsRequestId + suffix`; only the id changes between requests.
    let (path, body_prefix, body_suffix) = match args.operation {
        Operation::Encrypt | Operation::Health => {
            let (path, (p, s)) = if args.operation == Operation::Encrypt {
                (&target.encrypt_path, encrypt_body_parts(&plaintext, &aad))
            } else {
                (&target.health_path, health_body_parts())
            };
            // Fail fast on a wrong URL, certificate or credential instead of counting errors.
            let mut conn = connect(&target, &tls, args.http2).await?;
            let body = format!("{p}{}{s}", json_str(&format!("{run_id}-setup-1")));
            expect_ok(&mut conn, &target, &credential, path, body, "setup request").await?;
            (path.clone(), p, s)
        }
        Operation::Decrypt => {
            let (p, s) = prepare_decrypt(
                &target,
                &credential,
                &tls,
                args.http2,
                &run_id,
                &plaintext,
                &aad,
            )
            .await?;
            (target.decrypt_path.clone(), p, s)
        }
    };

    let start = Instant::now();
    let measure_start = start + Duration::from_secs(args.warmup);
    let shared = Arc::new(Shared {
        target,
        credential,
        tls,
        http2: args.http2,
        operation: args.operation,
        path,
        body_prefix,
        body_suffix,
        run_id,
        measure_start,
        measure_end: measure_start + Duration::from_secs(args.duration),
        max_requests: args.requests,
        claimed: AtomicU64::new(0),
    });

    let mut handles = Vec::with_capacity(args.concurrency as usize);
    for worker in 0..args.concurrency {
        handles.push(tokio::spawn(run_worker(Arc::clone(&shared), worker)));
    }
    let mut all = WorkerStats::default();
    for handle in handles {
        let stats = handle
            .await
            .map_err(|e| format!("a worker task failed: {e}"))?;
        all.ok_latencies_us.extend(stats.ok_latencies_us);
        for (kind, n) in stats.errors {
            *all.errors.entry(kind).or_default() += n;
        }
        for (kind, sample) in stats.samples {
            all.samples.entry(kind).or_insert(sample);
        }
        all.warmup_requests += stats.warmup_requests;
    }
    // The measured window runs until the last in-flight request has finished.
    let elapsed = Instant::now().saturating_duration_since(shared.measure_start);
    print_summary(&args, &shared, all, elapsed);
    Ok(())
}

fn load_credential(args: &Args) -> Result<Credential, String> {
    let (access_key_id, secret) = match (&args.console_json, &args.access_key_id, &args.secret) {
        (Some(path), _, _) => read_console_json(path)?,
        (None, Some(id), Some(secret)) => (id.clone(), secret.clone()),
        _ => {
            return Err(
                "give --console-json, or --access-key-id with --secret / XKS_LOAD_SECRET".into(),
            );
        }
    };
    if access_key_id.is_empty() || secret.is_empty() {
        return Err("the access key id and the secret must not be empty".into());
    }
    Ok(Credential {
        access_key_id,
        secret,
        region: args.region.clone(),
    })
}

fn read_console_json(path: &Path) -> Result<(String, String), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let credential = &json["XksProxyAuthenticationCredential"];
    let field = |name: &str| {
        credential[name].as_str().map(str::to_owned).ok_or_else(|| {
            format!(
                "{} has no XksProxyAuthenticationCredential.{name} string",
                path.display()
            )
        })
    };
    Ok((field("AccessKeyId")?, field("RawSecretAccessKey")?))
}

/// Parses `--url`, derives the decrypt and health paths and resolves the host, which must be
/// loopback: this tool is for measuring a local proxy, not for loading remote services.
async fn parse_target(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("invalid --url: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("--url must start with https://".into());
    }
    if uri.query().is_some() {
        return Err("--url must not have a query".into());
    }
    let authority = uri
        .authority()
        .ok_or("--url has no host")?
        .as_str()
        .to_owned();
    if authority.contains('@') {
        return Err("--url must not contain user info".into());
    }
    let host = uri.host().ok_or("--url has no host")?;
    let port = uri.port_u16().unwrap_or(443);
    let path = uri.path();
    // The canonical URI is the path as sent; with only these characters AWS's URI encoding
    // (single or double) leaves it unchanged, so signer and proxy agree.
    if !path
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
    {
        return Err("--url path may only contain A-Z a-z 0-9 / - _ . ~".into());
    }
    let key_base = path
        .strip_suffix("/encrypt")
        .filter(|base| base.contains("/keys/"))
        .ok_or("--url must be a key's Encrypt URL, .../keys/KEY/encrypt")?;
    let api_base = key_base
        .rsplit_once("/keys/")
        .map(|(api, _)| api)
        .ok_or("--url must contain /keys/")?;

    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(bare_host.to_owned())
        .map_err(|e| format!("invalid TLS server name {bare_host:?}: {e}"))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare_host, port))
        .await
        .map_err(|e| format!("cannot resolve {bare_host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{bare_host} resolves to no address"));
    }
    if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(format!(
            "{bare_host} resolves to {}, which is not loopback; xks_load only targets a local proxy",
            remote.ip()
        ));
    }
    Ok(Target {
        authority,
        server_name,
        addrs,
        encrypt_path: path.to_owned(),
        decrypt_path: format!("{key_base}/decrypt"),
        health_path: format!("{api_base}/health"),
    })
}

fn tls_config(cacert: &Path, http2: bool) -> Result<ClientConfig, String> {
    let pem =
        std::fs::read(cacert).map_err(|e| format!("cannot read {}: {e}", cacert.display()))?;
    let mut roots = RootCertStore::empty();
    let mut pinned = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("bad PEM in {}: {e}", cacert.display()))?;
        pinned.push(cert.clone());
        roots
            .add(cert)
            .map_err(|e| format!("bad certificate in {}: {e}", cacert.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("no certificate in {}", cacert.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| format!("TLS verifier: {e}"))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedOrWebPki { pinned, webpki }))
        .with_no_client_auth();
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// Accepts a server certificate that is byte-for-byte one of the `--cacert` certificates (the
/// demo's self-signed certificate has `CA:TRUE`, which WebPKI rejects as an end entity even
/// when trusted; curl accepts it), and otherwise verifies normally against `--cacert` as
/// roots. Handshake signatures are always checked, so the server must hold the key.
#[derive(Debug)]
struct PinnedOrWebPki {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for PinnedOrWebPki {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The body up to `"kmsRequestId":`; the caller appends the JSON-encoded id, then the suffix
/// that closes `requestMetadata` and adds the operation's fields.
fn metadata_prefix(operation: &str) -> String {
    format!(
        "{{\"requestMetadata\":{{\"awsPrincipalArn\":\"arn:aws:iam::123456789012:user/xks-load\",\
         \"kmsKeyArn\":\"arn:aws:kms:us-east-1:123456789012:key/xks-load\",\
         \"kmsOperation\":{},\"kmsViaService\":\"ebs\",\"kmsRequestId\":",
        json_str(operation)
    )
}

fn encrypt_body_parts(plaintext: &[u8], aad: &[u8]) -> (String, String) {
    let mut suffix = format!(
        "}},\"plaintext\":\"{}\",\"encryptionAlgorithm\":\"AES_GCM\"",
        B64.encode(plaintext)
    );
    if !aad.is_empty() {
        let _ = write!(
            suffix,
            ",\"additionalAuthenticatedData\":\"{}\"",
            B64.encode(aad)
        );
    }
    suffix.push('}');
    (metadata_prefix("Encrypt"), suffix)
}

fn health_body_parts() -> (String, String) {
    (
        "{\"requestMetadata\":{\"kmsOperation\":\"KmsHealthCheck\",\"kmsRequestId\":".into(),
        "}}".into(),
    )
}

/// Encrypts once, builds the Decrypt body for that result and checks one decrypt round trip.
async fn prepare_decrypt(
    target: &Target,
    credential: &Credential,
    tls: &Arc<ClientConfig>,
    http2: bool,
    run_id: &str,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<(String, String), String> {
    let mut conn = connect(target, tls, http2).await?;
    let (prefix, suffix) = encrypt_body_parts(plaintext, aad);
    let body = format!("{prefix}{}{suffix}", json_str(&format!("{run_id}-setup-1")));
    let reply = expect_ok(
        &mut conn,
        target,
        credential,
        &target.encrypt_path,
        body,
        "setup Encrypt",
    )
    .await?;
    let json: serde_json::Value =
        serde_json::from_slice(&reply).map_err(|e| format!("setup Encrypt reply: {e}"))?;
    let field = |name: &str| {
        json[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("setup Encrypt reply has no {name}"))
    };
    let mut suffix = format!(
        "}},\"ciphertext\":{},\"initializationVector\":{},\"authenticationTag\":{},\
         \"encryptionAlgorithm\":\"AES_GCM\"",
        json_str(&field("ciphertext")?),
        json_str(&field("initializationVector")?),
        json_str(&field("authenticationTag")?)
    );
    if let Some(metadata) = json["ciphertextMetadata"].as_str() {
        let _ = write!(suffix, ",\"ciphertextMetadata\":{}", json_str(metadata));
    }
    if !aad.is_empty() {
        let _ = write!(
            suffix,
            ",\"additionalAuthenticatedData\":\"{}\"",
            B64.encode(aad)
        );
    }
    suffix.push('}');
    let prefix = metadata_prefix("Decrypt");

    let body = format!("{prefix}{}{suffix}", json_str(&format!("{run_id}-setup-2")));
    let reply = expect_ok(
        &mut conn,
        target,
        credential,
        &target.decrypt_path,
        body,
        "setup Decrypt",
    )
    .await?;
    let json: serde_json::Value =
        serde_json::from_slice(&reply).map_err(|e| format!("setup Decrypt reply: {e}"))?;
    if json["plaintext"].as_str() != Some(B64.encode(plaintext).as_str()) {
        return Err("setup Decrypt did not return the encrypted plaintext".into());
    }
    Ok((prefix, suffix))
}

/// Sends one request and requires HTTP 200; returns the body.
async fn expect_ok(
    conn: &mut Connection,
    target: &Target,
    credential: &Credential,
    path: &str,
    body: String,
    what: &str,
) -> Result<Bytes, String> {
    let mut signer = Signer::default();
    let (status, reply) = exchange(conn, target, credential, &mut signer, path, body)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if status != 200 {
        return Err(format!(
            "{what} on {path} returned HTTP {status}: {}",
            String::from_utf8_lossy(&reply)
        ));
    }
    Ok(reply)
}

/// One open HTTP connection.
enum Connection {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

async fn connect(
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
async fn exchange(
    conn: &mut Connection,
    target: &Target,
    credential: &Credential,
    signer: &mut Signer,
    path: &str,
    body: String,
) -> Result<(u16, Bytes), String> {
    let (amz_date, authorization) = signer.sign(
        credential,
        "POST",
        path,
        &target.authority,
        body.as_bytes(),
        OffsetDateTime::now_utc(),
    )?;
    let builder = match conn {
        Connection::H1(_) => Request::post(path).header("host", &target.authority),
        Connection::H2(_) => Request::post(format!("https://{}{path}", target.authority)),
    };
    let request = builder
        .header("content-type", "application/json")
        .header("x-amz-date", amz_date)
        .header("authorization", authorization)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the request: {e}"))?;
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

async fn run_worker(shared: Arc<Shared>, worker: u32) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut signer = Signer::default();
    let mut conn: Option<Connection> = None;
    let mut seq: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= shared.measure_end {
            break;
        }
        let measured = now >= shared.measure_start;
        if measured
            && let Some(max) = shared.max_requests
            && shared.claimed.fetch_add(1, Ordering::Relaxed) >= max
        {
            break;
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connect(&shared.target, &shared.tls, shared.http2).await {
                Ok(c) => c,
                Err(e) => {
                    if measured {
                        stats.error("transport".into(), e);
                    }
                    tokio::time::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            },
        };
        seq += 1;
        let id = format!("{}-{worker}-{seq}", shared.run_id);
        let body = format!(
            "{}{}{}",
            shared.body_prefix,
            json_str(&id),
            shared.body_suffix
        );
        let sent = Instant::now();
        let result = exchange(
            &mut c,
            &shared.target,
            &shared.credential,
            &mut signer,
            &shared.path,
            body,
        )
        .await;
        let done = Instant::now();
        let counted = sent >= shared.measure_start;
        match result {
            Ok((status, reply)) => {
                conn = Some(c);
                if !counted {
                    stats.warmup_requests += 1;
                    continue;
                }
                if status == 200 {
                    let us =
                        u64::try_from(done.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                    stats.ok_latencies_us.push(us);
                } else {
                    let sample: String =
                        String::from_utf8_lossy(&reply).chars().take(200).collect();
                    stats.error(format!("HTTP {status}"), sample);
                }
            }
            Err(e) => {
                // Drop the connection; the next iteration reconnects.
                if !counted {
                    stats.warmup_requests += 1;
                    continue;
                }
                stats.error("transport".into(), e);
            }
        }
    }
    stats
}

/// SigV4 signer (AWS Signature Version 4, "Create a signed AWS API request"), signing `host`
/// and `x-amz-date`. Caches the signing key for the current date.
#[derive(Default)]
struct Signer {
    /// `(yyyymmdd, kSigning)`.
    key: Option<(String, [u8; 32])>,
}

impl Signer {
    /// Returns the `x-amz-date` and `authorization` header values.
    fn sign(
        &mut self,
        credential: &Credential,
        method: &str,
        path: &str,
        host: &str,
        body: &[u8],
        when: OffsetDateTime,
    ) -> Result<(String, String), String> {
        let amz_date = when
            .format(format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .map_err(|e| format!("formatting x-amz-date: {e}"))?;
        let date = amz_date.get(..8).ok_or("x-amz-date too short")?;
        // Task 1: canonical request. No query string; canonical headers sorted by name.
        let signed_headers = "host;x-amz-date";
        let canonical_request = format!(
            "{method}\n{path}\n\nhost:{host}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{}",
            hex::encode(Sha256::digest(body))
        );
        // Task 2: string to sign.
        let scope = format!("{date}/{}/{SERVICE}/aws4_request", credential.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        // Task 3: signing key (per date) and signature.
        let signing_key = match &self.key {
            Some((d, key)) if d == date => *key,
            _ => {
                let k_date = hmac(
                    format!("AWS4{}", credential.secret).as_bytes(),
                    date.as_bytes(),
                )?;
                let k_region = hmac(&k_date, credential.region.as_bytes())?;
                let k_service = hmac(&k_region, SERVICE.as_bytes())?;
                let k_signing = hmac(&k_service, b"aws4_request")?;
                self.key = Some((date.to_owned(), k_signing));
                k_signing
            }
        };
        let signature = hex::encode(hmac(&signing_key, string_to_sign.as_bytes())?);
        // Task 4: the Authorization header.
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
             Signature={signature}",
            credential.access_key_id
        );
        Ok((amz_date, authorization))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Result<[u8; 32], String> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).map_err(|e| format!("HMAC key: {e}"))?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().into())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn print_summary(args: &Args, shared: &Shared, mut stats: WorkerStats, elapsed: Duration) {
    stats.ok_latencies_us.sort_unstable();
    let ok = stats.ok_latencies_us.len() as u64;
    let failed: u64 = stats.errors.values().sum();
    let total = ok + failed;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { total as f64 / secs } else { 0.0 };
    let ok_rate = if secs > 0.0 { ok as f64 / secs } else { 0.0 };
    let lat = &stats.ok_latencies_us;

    println!("xks_load summary");
    println!(
        "  operation   {} on {}{} ({}, concurrency {}, plaintext {} B, aad {} B)",
        shared.operation.name(),
        shared.target.authority,
        shared.path,
        if shared.http2 { "HTTP/2" } else { "HTTP/1.1" },
        args.concurrency,
        args.plaintext_bytes,
        args.aad_bytes
    );
    println!(
        "  requests    {total} measured: {ok} ok (HTTP 200), {failed} errors; {} warm-up requests not counted",
        stats.warmup_requests
    );
    if stats.errors.is_empty() {
        println!("  errors      none");
    } else {
        for (kind, n) in &stats.errors {
            let sample = stats.samples.get(kind).map_or("", String::as_str);
            println!("  errors      {kind}: {n}  (first: {sample})");
        }
    }
    println!(
        "  duration    {secs:.3} s measured (after {} s warm-up)",
        args.warmup
    );
    println!("  throughput  {rate:.1} req/s ({ok_rate:.1} ok/s)");
    println!(
        "  latency ms  p50 {}  p90 {}  p99 {}  max {}  (HTTP 200 only, n={ok})",
        ms(percentile(lat, 50.0)),
        ms(percentile(lat, 90.0)),
        ms(percentile(lat, 99.0)),
        ms(lat.last().copied().unwrap_or(0))
    );
}
