//! The closed loop: what all workers share, and one worker sending requests back to back on
//! its own connection (reconnecting after a transport error) until the measured window ends or
//! `--requests` measured requests were claimed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Bytes;
use rustls::ClientConfig;

use crate::args::Operation;
use crate::bodies::BodyTemplate;
use crate::client::{Connection, connect, ping_request, send, signed_post};
use crate::signer::Signer;
use crate::stats::WorkerStats;
use crate::target::Target;

/// Pause before reconnecting after a failed connection attempt.
pub(crate) const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Everything the workers share.
pub(crate) struct Shared {
    pub(crate) target: Target,
    pub(crate) signer: Signer,
    pub(crate) tls: Arc<ClientConfig>,
    pub(crate) http2: bool,
    pub(crate) operation: Operation,
    /// Request path for `operation` (for the summary with `ping`).
    pub(crate) path: String,
    /// The request body around the `kmsRequestId`.
    pub(crate) body: BodyTemplate,
    /// Run-unique part of every `kmsRequestId`.
    pub(crate) run_id: String,
    pub(crate) measure_start: Instant,
    pub(crate) measure_end: Instant,
    pub(crate) max_requests: Option<u64>,
    /// Measured requests claimed so far (for `--requests`).
    pub(crate) claimed: AtomicU64,
}

impl Shared {
    /// Claims one measured request; false once `--requests` were claimed.
    fn claim(&self) -> bool {
        self.max_requests
            .is_none_or(|max| self.claimed.fetch_add(1, Ordering::Relaxed) < max)
    }
}

/// Signs (unless `ping`) and sends one request of `operation` on `conn`: an unsigned
/// `GET /ping`, or the signed POST of `body` (which `ping` ignores) to the run's path. Also
/// returns when the request was ready to go, after the client's own signing: closed-loop
/// latency counts from there, so it is the proxy's round trip and not the load tool's SigV4.
pub(crate) async fn send_one(
    shared: &Shared,
    conn: &mut Connection,
    operation: Operation,
    body: String,
) -> (Result<(u16, Bytes), String>, Instant) {
    let request = match operation {
        Operation::Ping => ping_request(conn, &shared.target),
        _ => signed_post(conn, &shared.target, &shared.signer, &shared.path, body),
    };
    let ready = Instant::now();
    let result = match request {
        Ok(request) => send(conn, request).await,
        Err(e) => Err(e),
    };
    (result, ready)
}

/// `conn`'s connection, or a new one. After a failed connect (recorded in `stats` when
/// `measured`) it waits [`RECONNECT_BACKOFF`] and returns `None`: the caller moves on.
pub(crate) async fn reuse_or_connect(
    shared: &Shared,
    conn: &mut Option<Connection>,
    stats: &mut WorkerStats,
    measured: bool,
) -> Option<Connection> {
    if let Some(c) = conn.take() {
        return Some(c);
    }
    match connect(&shared.target, &shared.tls, shared.http2).await {
        Ok(c) => Some(c),
        Err(e) => {
            if measured {
                stats.error("transport".into(), e);
            }
            tokio::time::sleep(RECONNECT_BACKOFF).await;
            None
        }
    }
}

/// Records the outcome of one measured request that took `latency`.
pub(crate) fn record(
    stats: &mut WorkerStats,
    result: &Result<(u16, Bytes), String>,
    latency: Duration,
) {
    match result {
        Ok((200, _)) => stats.ok(latency),
        Ok((status, reply)) => {
            let sample: String = String::from_utf8_lossy(reply).chars().take(200).collect();
            stats.error(format!("HTTP {status}"), sample);
        }
        Err(e) => stats.error("transport".into(), e.clone()),
    }
}

/// Runs worker number `worker` until the measured window ends; returns what it measured.
pub(crate) async fn run_worker(shared: Arc<Shared>, worker: u32) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut conn: Option<Connection> = None;
    let mut seq: u64 = 0;
    loop {
        let now = Instant::now();
        if now >= shared.measure_end {
            break;
        }
        let measured = now >= shared.measure_start;
        if measured && !shared.claim() {
            break;
        }
        let Some(mut c) = reuse_or_connect(&shared, &mut conn, &mut stats, measured).await else {
            continue;
        };
        seq += 1;
        let body = shared
            .body
            .render(&format!("{}-{worker}-{seq}", shared.run_id));
        let (result, sent) = send_one(&shared, &mut c, shared.operation, body).await;
        let latency = sent.elapsed();
        // Keep the connection after a response; after a transport error drop it, so the next
        // iteration reconnects.
        if result.is_ok() {
            conn = Some(c);
        }
        if sent < shared.measure_start {
            stats.warmup_requests += 1;
            continue;
        }
        record(&mut stats, &result, latency);
    }
    stats
}
