//! What the workers measured and the one summary printed at the end: request and error
//! counts by outcome, throughput, and nearest-rank p50/p90/p99/max latency of HTTP 200s.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::args::Args;
use crate::worker::Shared;

/// What one worker (or, merged, all workers) saw during the measured window.
#[derive(Default)]
pub(crate) struct WorkerStats {
    /// Latency of each measured HTTP 200, in microseconds.
    ok_latencies_us: Vec<u64>,
    /// Measured requests by outcome other than 200 (`HTTP 503`, `transport`, ...).
    errors: BTreeMap<String, u64>,
    /// First response body / error message per outcome, for diagnosis.
    samples: BTreeMap<String, String>,
    /// Requests sent during the warm-up.
    pub(crate) warmup_requests: u64,
}

impl WorkerStats {
    /// Counts one measured HTTP 200 that took `latency`.
    pub(crate) fn ok(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.ok_latencies_us.push(us);
    }

    /// Counts one measured request with outcome `kind`, keeping the first `sample` per kind.
    pub(crate) fn error(&mut self, kind: String, sample: String) {
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.samples.entry(kind).or_insert(sample);
    }

    /// Adds another worker's figures (the first sample per kind wins).
    pub(crate) fn merge(&mut self, other: Self) {
        self.ok_latencies_us.extend(other.ok_latencies_us);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for (kind, sample) in other.samples {
            self.samples.entry(kind).or_insert(sample);
        }
        self.warmup_requests += other.warmup_requests;
    }
}

/// Prints the summary of a run measured for `elapsed`.
pub(crate) fn print_summary(
    args: &Args,
    shared: &Shared,
    mut stats: WorkerStats,
    elapsed: Duration,
) {
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

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}
