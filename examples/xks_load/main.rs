//! `xks_load`: a small closed-loop load generator for a running xks-proxy.
//!
//! Each of `--concurrency` workers opens one persistent TLS connection (HTTP/1.1 keep-alive,
//! or HTTP/2 with `--http2`) to a **loopback** proxy and sends requests back to back. Every
//! request is SigV4-signed at send time with `aws-sigv4` (signed headers `host;x-amz-date`,
//! service `kms-xks-proxy`) and carries a KMS-like body with a unique `kmsRequestId`. The first
//! `--warmup` seconds (default 1) are not counted; then the tool measures for `--duration`
//! seconds (or until `--requests` requests were sent) and prints one summary: requests, errors
//! by status, duration, requests/s and p50/p90/p99/max latency of the successful (HTTP 200)
//! requests.
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

//!
//! Modules, in the order a run uses them: [`args`] (command line, credential), [`target`]
//! (`--url`, TLS trust), [`bodies`] (request bodies), [`signer`] (SigV4), [`client`]
//! (connection, one exchange), [`setup`] (fail-fast requests before the load), [`worker`] (the
//! closed loop), [`stats`] (figures and the summary).

mod args;
mod bodies;
mod client;
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
use crate::stats::{WorkerStats, print_summary};
use crate::target::{parse_target, tls_config};
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

/// Setup, then `--concurrency` workers for warm-up plus the measured window, then the summary.
async fn run_async(args: Args) -> Result<(), String> {
    let signer = Signer::new(load_credential(&args)?);
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
    drop(conn);

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

    let mut handles = Vec::with_capacity(args.concurrency as usize);
    for worker in 0..args.concurrency {
        handles.push(tokio::spawn(run_worker(Arc::clone(&shared), worker)));
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
    print_summary(&args, &shared, all, elapsed);
    Ok(())
}
