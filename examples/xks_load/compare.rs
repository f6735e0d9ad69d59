//! `--compare-ping`: the cost of an operation over the bare transport. One keep-alive
//! connection alternates one unsigned `GET /ping` and one `--operation` request, back to back,
//! so both see the same connection, TLS session and machine load; the summary gives both
//! latencies and the ratio of their p50s (op p50 / ping p50). Warm-up, `--duration` and
//! `--requests` (here: pairs) work as in the closed loop.

use std::time::Instant;

use crate::args::{Args, Operation};
use crate::client::Connection;
use crate::stats::WorkerStats;
use crate::worker::{Shared, record, reuse_or_connect, send_one};

/// What a comparison run measured.
struct Pair {
    ping: WorkerStats,
    op: WorkerStats,
    pairs: u64,
}

/// Runs the alternation on `conn` until the measured window ends, then prints the summary.
pub(crate) async fn run(args: &Args, shared: &Shared, conn: Connection) {
    let mut measured = run_pairs(shared, conn).await;
    let elapsed = Instant::now().saturating_duration_since(shared.measure_start);
    measured.ping.finish();
    measured.op.finish();
    let (ping, op) = (&measured.ping, &measured.op);
    let name = shared.operation.name();

    println!("xks_load compare-ping");
    println!(
        "  operation   GET {} then {name} on {}{}, alternating on one keep-alive connection \
         ({}, plaintext {} B, aad {} B)",
        shared.target.ping_path,
        shared.target.authority,
        shared.path,
        if shared.http2 { "HTTP/2" } else { "HTTP/1.1" },
        args.plaintext_bytes,
        args.aad_bytes
    );
    println!(
        "  requests    {} pairs measured in {:.3} s: ping {} ok, {} errors; {name} {} ok, {} \
         errors",
        measured.pairs,
        elapsed.as_secs_f64(),
        ping.ok_count(),
        ping.error_count(),
        op.ok_count(),
        op.error_count()
    );
    if ping.error_count() + op.error_count() == 0 {
        println!("  errors      none");
    }
    for stats in [ping, op].into_iter().filter(|s| s.error_count() > 0) {
        stats.print_errors();
    }
    println!("  {:<12}{}", "ping ms", ping.latency_figures());
    println!("  {:<12}{}", format!("{name} ms"), op.latency_figures());
    let (ping_p50, op_p50) = (ping.percentile_us(50.0), op.percentile_us(50.0));
    let ratio = if ping_p50 > 0 {
        format!("{:.2}", op_p50 as f64 / ping_p50 as f64)
    } else {
        "n/a".to_owned()
    };
    println!("  ratio       {name} p50 / ping p50 = {ratio}");
}

/// Alternates ping and operation until the window ends or `--requests` pairs were measured;
/// reconnects after a transport error.
async fn run_pairs(shared: &Shared, conn: Connection) -> Pair {
    let mut out = Pair {
        ping: WorkerStats::default(),
        op: WorkerStats::default(),
        pairs: 0,
    };
    let mut conn = Some(conn);
    let mut seq: u64 = 0;
    // Bounded by the measured window (and each request by the client's timeout).
    while Instant::now() < shared.measure_end {
        let measured = Instant::now() >= shared.measure_start;
        if measured && shared.max_requests.is_some_and(|max| out.pairs >= max) {
            break;
        }
        for operation in [Operation::Ping, shared.operation] {
            let stats = if operation == Operation::Ping {
                &mut out.ping
            } else {
                &mut out.op
            };
            let Some(mut c) = reuse_or_connect(shared, &mut conn, stats, true).await else {
                break;
            };
            seq += 1;
            let body = shared.body.render(&format!("{}-cmp-{seq}", shared.run_id));
            let (result, sent) = send_one(shared, &mut c, operation, body).await;
            let latency = sent.elapsed();
            if result.is_ok() {
                conn = Some(c);
            }
            if measured {
                record(stats, &result, latency);
            } else {
                stats.warmup_requests += 1;
            }
        }
        if measured {
            out.pairs += 1;
        }
    }
    out
}
