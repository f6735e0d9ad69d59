//! The open loop (`--rate R`). Request `i` is scheduled at `t0 + i/R` from the start, whatever
//! the proxy is doing, and its latency is measured from that intended send time, not from when
//! a connection was free to send it: a stall shows up in the latency of every request scheduled
//! during it instead of silently lowering the rate (no "coordinated omission"). `--concurrency`
//! connections each carry one request at a time; when all are busy, due requests wait in a
//! FIFO queue and the wait counts in their latency.
//!
//! The schedule runs on its own OS thread sleeping with `std::thread::sleep` (a Linux hrtimer,
//! tens of µs of slack) rather than on tokio's 1 ms timer wheel, so the generator's timer adds
//! little to the measured latency. A measured request handed to a connection more than
//! [`LATE_AFTER`](crate::stats::LATE_AFTER) after its intended time counts as sent late.
//!
//! Bounds: the schedule ends with the measured window (or after `--requests` measured
//! requests); requests still queued [`DRAIN_GRACE`] after the window are counted as errors
//! without being sent, and every sent request is bounded by the client's request timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use tokio::sync::Mutex;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::client::{Connection, connect};
use crate::stats::WorkerStats;
use crate::target::Target;
use crate::worker::{Shared, record, reuse_or_connect, send_one};

/// How long after the measured window queued requests are still sent.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// One scheduled request.
struct Job {
    /// Position in the schedule (part of the `kmsRequestId`).
    index: u64,
    /// When it should have been sent.
    intended: Instant,
}

/// What an open-loop run measured.
pub(crate) struct Outcome {
    pub(crate) stats: WorkerStats,
    /// Measured requests scheduled.
    pub(crate) scheduled: u64,
}

/// Opens the `n` connections before the schedule starts, so no handshake delays it.
pub(crate) async fn connect_all(
    target: &Target,
    tls: &Arc<ClientConfig>,
    http2: bool,
    n: u32,
) -> Result<Vec<Connection>, String> {
    let mut conns = Vec::with_capacity(n as usize);
    for _ in 0..n {
        conns.push(connect(target, tls, http2).await?);
    }
    Ok(conns)
}

/// Runs the schedule at `rate` per second from `t0` through the measured window on `conns`;
/// returns once every scheduled request is answered or dropped.
pub(crate) async fn run(
    shared: Arc<Shared>,
    rate: f64,
    conns: Vec<Connection>,
    t0: Instant,
) -> Result<Outcome, String> {
    let (tx, rx) = unbounded_channel();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::with_capacity(conns.len());
    for (worker, conn) in (0u32..).zip(conns) {
        let task = run_connection(Arc::clone(&shared), Arc::clone(&rx), worker, conn);
        handles.push(tokio::spawn(task));
    }
    let window = Window {
        start: shared.measure_start,
        end: shared.measure_end,
        max_requests: shared.max_requests,
    };
    let scheduler = tokio::task::spawn_blocking(move || schedule(&window, rate, t0, &tx));

    let scheduled = scheduler
        .await
        .map_err(|e| format!("the scheduler failed: {e}"))?;
    let mut stats = WorkerStats::default();
    for handle in handles {
        let worker = handle
            .await
            .map_err(|e| format!("a connection task failed: {e}"))?;
        stats.merge(worker);
    }
    Ok(Outcome { stats, scheduled })
}

/// The measured window, as the scheduler sees it.
struct Window {
    start: Instant,
    end: Instant,
    /// `--requests`: the most measured requests to schedule.
    max_requests: Option<u64>,
}

/// Hands request `i` to the queue at `t0 + i/rate` until the measured window ends (or
/// `--requests` measured requests were scheduled); returns the number of measured requests.
/// Runs on a blocking thread; dropping `tx` at the end lets the connections drain and stop.
fn schedule(window: &Window, rate: f64, t0: Instant, tx: &UnboundedSender<Job>) -> u64 {
    let mut measured: u64 = 0;
    // Bounded: the intended times grow with the index and the loop ends at `window.end`.
    for index in 0..u64::MAX {
        let intended = t0 + Duration::from_secs_f64(index as f64 / rate);
        if intended >= window.end {
            break;
        }
        if intended >= window.start {
            if window.max_requests.is_some_and(|max| measured >= max) {
                break;
            }
            measured += 1;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if tx.send(Job { index, intended }).is_err() {
            break;
        }
    }
    measured
}

/// One connection taking due requests from the queue, one at a time, until it is closed and
/// empty; reconnects after a transport error.
async fn run_connection(
    shared: Arc<Shared>,
    queue: Arc<Mutex<UnboundedReceiver<Job>>>,
    worker: u32,
    conn: Connection,
) -> WorkerStats {
    let mut stats = WorkerStats::default();
    let mut conn = Some(conn);
    let drain_end = shared.measure_end + DRAIN_GRACE;
    loop {
        let job = queue.lock().await.recv().await;
        let Some(job) = job else { break };
        let measured = job.intended >= shared.measure_start;
        if Instant::now() >= drain_end {
            if measured {
                let why = "still queued 5 s after the measured window".to_owned();
                stats.error("not sent".into(), why);
            }
            continue;
        }
        let Some(mut c) = reuse_or_connect(&shared, &mut conn, &mut stats, measured).await else {
            continue;
        };
        let id = format!("{}-{worker}-{}", shared.run_id, job.index);
        let body = shared.body.render(&id);
        let (result, sent) = send_one(&shared, &mut c, shared.operation, body).await;
        let latency = Instant::now().saturating_duration_since(job.intended);
        if result.is_ok() {
            conn = Some(c);
        }
        if !measured {
            stats.warmup_requests += 1;
            continue;
        }
        stats.send_delay(sent.saturating_duration_since(job.intended));
        record(&mut stats, &result, latency);
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1,000/s for 30 ms with a 10 ms warm-up: 30 requests 1 ms apart, 20 of them measured,
    /// none handed over before its intended time.
    #[test]
    fn schedules_at_fixed_intervals_from_the_start() {
        let t0 = Instant::now();
        let window = Window {
            start: t0 + Duration::from_millis(10),
            end: t0 + Duration::from_millis(30),
            max_requests: None,
        };
        let (tx, mut rx) = unbounded_channel();
        let measured = schedule(&window, 1000.0, t0, &tx);
        assert_eq!(measured, 20);
        let mut jobs = Vec::new();
        while let Ok(job) = rx.try_recv() {
            jobs.push(job);
        }
        assert_eq!(jobs.len(), 30);
        for (i, job) in (0u64..).zip(&jobs) {
            assert_eq!(job.index, i);
            // `i / rate` in floating point: within a microsecond of i ms.
            let expected = t0 + Duration::from_millis(i);
            let off = job.intended.max(expected) - job.intended.min(expected);
            assert!(off < Duration::from_micros(1), "request {i} off by {off:?}");
        }
        assert!(Instant::now() >= jobs[29].intended);
    }

    /// `--requests` caps the measured requests; warm-up requests are not counted.
    #[test]
    fn stops_after_max_requests() {
        let t0 = Instant::now();
        let window = Window {
            start: t0 + Duration::from_millis(5),
            end: t0 + Duration::from_secs(5),
            max_requests: Some(3),
        };
        let (tx, mut rx) = unbounded_channel();
        assert_eq!(schedule(&window, 1000.0, t0, &tx), 3);
        let mut sent = 0;
        while rx.try_recv().is_ok() {
            sent += 1;
        }
        assert_eq!(sent, 8);
    }
}
