//! `xks_load`: a small load generator for a running xks-proxy, closed loop (default), open loop
//! (`--rate`) or ping comparison (`--compare-ping`).
//!
//! Requests go over persistent TLS connections (HTTP/1.1 keep-alive, or HTTP/2 with
//! `--http2`; with `--cert`/`--key` the tool presents a client certificate for mTLS) to a
//! **loopback** proxy. Every XKS request is SigV4-signed at send time with `aws-sigv4` (signed
//! headers `host;x-amz-date`, service `kms-xks-proxy`) and carries a KMS-like body with a
//! unique `kmsRequestId`; `--operation ping` sends unsigned `GET /ping` instead. The first
//! `--warmup` seconds (default 1) are not counted; then the tool measures for `--duration`
//! seconds (or until `--requests` requests were sent) and prints one summary: requests, errors
//! by status, duration, requests/s and exact p50/p90/p99/p99.9/max latency (µs resolution) of
//! the successful (HTTP 200) requests. In the closed loop and `--compare-ping`, a request's
//! latency counts from when it was signed and ready to send: the tool's own SigV4 is not the
//! proxy's latency.
//!
//! * Closed loop (default): `--concurrency` workers, one connection each, send back to back.
//! * Open loop (`--rate R`): request `i` is due at `t0 + i/R`; latency counts from that
//!   intended time, so a stall is not hidden (no coordinated omission); `--concurrency`
//!   connections bound the requests in flight. The summary adds the achieved rate and the
//!   requests sent more than 1 ms late. See [`open_loop`].
//! * `--compare-ping`: one connection alternates `GET /ping` and the operation and prints both
//!   latencies and the ratio of their p50s. See [`compare`].
//!
//! ```text
//! cargo run --release --example xks_load -- \
//!     --url https://localhost:8443/demo/kms/xks/v1/keys/demo-key-1/encrypt \
//!     --cacert .demo/tls/ca.pem --console-json .demo/kms-console.json \
//!     --concurrency 32 --duration 10 [--http2] [--operation encrypt|decrypt|metadata|health|ping] \
//!     [--rate 1800 | --compare-ping] [--cert client.pem --key client-key.pem]
//! ```
//!
//! `--url` is always the key's `.../keys/{keyId}/encrypt` URL. `--operation decrypt` first
//! encrypts once (and checks one decrypt round trip) and then decrypts that ciphertext
//! repeatedly on `.../keys/{keyId}/decrypt`; `--operation metadata` calls
//! `.../keys/{keyId}/metadata`; `--operation health` calls `.../kms/xks/v1/health` (the part of
//! the path before `/keys/`, plus `/health`); `--operation ping` calls `/ping`.
//!
//! The credential comes from `--console-json` (the file the proxy's `credentials new --output
//! console-json` writes) or from `--access-key-id` plus `--secret` / `XKS_LOAD_SECRET` (a
//! `--secret` on the command line is visible to other local users in the process list; prefer
//! the file or the environment). The secret is never printed.
//!
//! The load tool shares the CPU with the proxy when both run on one machine, so the numbers
//! are a lower bound for the proxy alone; `--client-threads` caps the tool's runtime threads.
//!
//! Modules, in the order a run uses them: [`args`] (command line, credential), [`target`]
//! (`--url`, TLS trust and client certificate), [`bodies`] (request bodies), [`signer`]
//! (SigV4), [`client`] (connection, one exchange), [`setup`] (fail-fast requests before the
//! load), [`worker`] (the closed loop), [`open_loop`] (`--rate`), [`compare`]
//! (`--compare-ping`), [`stats`] (figures and the summary).

mod args;
mod bodies;
mod client;
mod compare;
mod open_loop;
mod setup;
mod signer;
mod stats;
mod target;
mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser as _;

use crate::args::{Args, load_credential};
use crate::client::connect;
use crate::signer::Signer;
use crate::stats::{OpenLoop, WorkerStats, print_summary};
use crate::target::{ClientIdentity, parse_target, tls_config};
use crate::worker::{Shared, run_worker};

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

/// Starts the tokio runtime (`--client-threads`) and runs the load on it.
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

/// Setup, then the closed loop, the open loop or the ping comparison for warm-up plus the
/// measured window, then the summary.
async fn run_async(args: Args) -> Result<(), String> {
    let signer = Signer::new(load_credential(&args)?);
    let target = parse_target(&args.url).await?;
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
        _ => None,
    };
    let tls = Arc::new(tls_config(&args.cacert, args.http2, identity)?);

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

    let mut conn = connect(&target, &tls, args.http2).await?;
    let plan = setup::prepare(
        args.operation,
        &mut conn,
        &target,
        &signer,
        &run_id,
        &plaintext,
        &aad,
    )
    .await?;
    if args.compare_ping {
        setup::check_ping(&mut conn, &target).await?;
    }
    let open_conns = match args.rate {
        Some(_) => open_loop::connect_all(&target, &tls, args.http2, args.concurrency).await?,
        None => Vec::new(),
    };

    let start = Instant::now();
    let measure_start = start + Duration::from_secs(args.warmup);
    let shared = Arc::new(Shared {
        target,
        signer,
        tls,
        http2: args.http2,
        operation: args.operation,
        path: plan.path,
        body: plan.body,
        run_id,
        measure_start,
        measure_end: measure_start + Duration::from_secs(args.duration),
        max_requests: args.requests,
        claimed: AtomicU64::new(0),
    });

    if args.compare_ping {
        compare::run(&args, &shared, conn).await;
        return Ok(());
    }
    drop(conn);
    match args.rate {
        Some(rate) => run_open(&args, &shared, rate, open_conns, start).await,
        None => run_closed(&args, &shared).await,
    }
}

/// The closed loop: `--concurrency` workers back to back, then the summary.
async fn run_closed(args: &Args, shared: &Arc<Shared>) -> Result<(), String> {
    let mut handles = Vec::with_capacity(args.concurrency as usize);
    for worker in 0..args.concurrency {
        handles.push(tokio::spawn(run_worker(Arc::clone(shared), worker)));
    }
    let mut all = WorkerStats::default();
    for handle in handles {
        let stats = handle
            .await
            .map_err(|e| format!("a worker task failed: {e}"))?;
        all.merge(stats);
    }
    // The measured window runs until the last in-flight request has finished.
    let elapsed = Instant::now().saturating_duration_since(shared.measure_start);
    print_summary(args, shared, all, elapsed, None);
    Ok(())
}

/// The open loop at `rate` from `start` on the pre-opened `conns`, then the summary.
async fn run_open(
    args: &Args,
    shared: &Arc<Shared>,
    rate: f64,
    conns: Vec<client::Connection>,
    start: Instant,
) -> Result<(), String> {
    let outcome = open_loop::run(Arc::clone(shared), rate, conns, start).await?;
    // As in the closed loop: until the last request has finished (or was dropped).
    let elapsed = Instant::now().saturating_duration_since(shared.measure_start);
    let open = OpenLoop {
        rate,
        scheduled: outcome.scheduled,
    };
    print_summary(args, shared, outcome.stats, elapsed, Some(open));
    Ok(())
}
