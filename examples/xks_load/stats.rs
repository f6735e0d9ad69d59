//! What the workers measured and the summaries printed at the end: request and error counts by
//! outcome, throughput, and exact nearest-rank p50/p90/p99/p99.9/max latency (µs resolution) of
//! HTTP 200s; in the open loop also how many requests were sent late.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::args::Args;
use crate::worker::Shared;

/// A request handed to a connection more than this after its intended send time was late.
pub(crate) const LATE_AFTER: Duration = Duration::from_millis(1);

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
    /// Open loop: measured requests sent more than [`LATE_AFTER`] after their intended time.
    late: u64,
    /// Open loop: the largest delay between intended and actual send time, in microseconds.
    max_send_delay_us: u64,
}

impl WorkerStats {
    /// Counts one measured HTTP 200 that took `latency`.
    pub(crate) fn ok(&mut self, latency: Duration) {
        self.ok_latencies_us.push(micros(latency));
    }

    /// Counts one measured request with outcome `kind`, keeping the first `sample` per kind.
    pub(crate) fn error(&mut self, kind: String, sample: String) {
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.samples.entry(kind).or_insert(sample);
    }

    /// Open loop: records that a measured request was sent `delay` after its intended time.
    pub(crate) fn send_delay(&mut self, delay: Duration) {
        if delay > LATE_AFTER {
            self.late += 1;
        }
        self.max_send_delay_us = self.max_send_delay_us.max(micros(delay));
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
        self.late += other.late;
        self.max_send_delay_us = self.max_send_delay_us.max(other.max_send_delay_us);
    }

    /// Measured HTTP 200s.
    pub(crate) fn ok_count(&self) -> u64 {
        self.ok_latencies_us.len() as u64
    }

    /// Measured requests that did not get an HTTP 200.
    pub(crate) fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Sorts the latencies; percentiles need it.
    pub(crate) fn finish(&mut self) {
        self.ok_latencies_us.sort_unstable();
    }

    /// Nearest-rank percentile `p` of the HTTP 200 latencies in µs (after [`Self::finish`]).
    pub(crate) fn percentile_us(&self, p: f64) -> u64 {
        percentile(&self.ok_latencies_us, p)
    }

    /// `p50 … p90 … p99 … p99.9 … max …` in milliseconds (after [`Self::finish`]).
    pub(crate) fn latency_figures(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (HTTP 200 only, n={})",
            ms(self.percentile_us(50.0)),
            ms(self.percentile_us(90.0)),
            ms(self.percentile_us(99.0)),
            ms(self.percentile_us(99.9)),
            ms(self.ok_latencies_us.last().copied().unwrap_or(0)),
            self.ok_count()
        )
    }

    /// One `errors` line per outcome, or `errors none`.
    pub(crate) fn print_errors(&self) {
        if self.errors.is_empty() {
            println!("  errors      none");
        }
        for (kind, n) in &self.errors {
            let sample = self.samples.get(kind).map_or("", String::as_str);
            println!("  errors      {kind}: {n}  (first: {sample})");
        }
    }
}

/// The open loop's schedule, for the summary.
pub(crate) struct OpenLoop {
    /// `--rate`, requests per second.
    pub(crate) rate: f64,
    /// Measured requests scheduled (intended send time inside the measured window).
    pub(crate) scheduled: u64,
}

/// Prints the summary of a run measured for `elapsed`; `open` for an open-loop run.
pub(crate) fn print_summary(
    args: &Args,
    shared: &Shared,
    mut stats: WorkerStats,
    elapsed: Duration,
    open: Option<OpenLoop>,
) {
    stats.finish();
    let ok = stats.ok_count();
    let failed = stats.error_count();
    let total = ok + failed;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { total as f64 / secs } else { 0.0 };
    let ok_rate = if secs > 0.0 { ok as f64 / secs } else { 0.0 };

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
    if let Some(open) = &open {
        println!(
            "  schedule    open loop at {:.1} req/s: {} scheduled, {} sent late (> {} ms after \
             intended), worst send delay {} ms; latency from intended send time",
            open.rate,
            open.scheduled,
            stats.late,
            LATE_AFTER.as_millis(),
            ms(stats.max_send_delay_us)
        );
    }
    println!(
        "  requests    {total} measured: {ok} ok (HTTP 200), {failed} errors; {} warm-up requests not counted",
        stats.warmup_requests
    );
    stats.print_errors();
    println!(
        "  duration    {secs:.3} s measured (after {} s warm-up)",
        args.warmup
    );
    let label = if open.is_some() { "achieved " } else { "" };
    println!("  throughput  {label}{rate:.1} req/s ({ok_rate:.1} ok/s)");
    println!("  latency ms  {}", stats.latency_figures());
}

/// A duration in whole microseconds, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The small epsilon keeps float noise (99.9 × 1000 / 100 = 999.000…1) from adding a rank.
    let rank = (p * sorted.len() as f64 / 100.0 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds as milliseconds with three decimals.
pub(crate) fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&values, 50.0), 500);
        assert_eq!(percentile(&values, 99.0), 990);
        assert_eq!(percentile(&values, 99.9), 999);
        assert_eq!(percentile(&values, 100.0), 1000);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
