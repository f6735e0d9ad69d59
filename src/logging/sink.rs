//! Where formatted log lines go: a bounded in-memory batch that request threads append to,
//! and one thread that writes whole batches to stdout.
//!
//! A request thread never waits for stdout: it takes a mutex for the length of one copy and
//! leaves. The writer thread wakes when the first line of a batch arrives, then lingers
//! [`LINGER`] after each write so the lines of the next moment share one `write(2)`; while it
//! is busy or lingering, nobody wakes it. (`tracing-appender`'s channel, used before, woke it
//! for every line, and its idle receiver spun in `sched_yield`.) Lines beyond the bound are
//! dropped and counted, as are lines whose write fails.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer gathers lines after a write before it looks again: short enough that
/// a line reaches stdout within a few milliseconds, long enough that under load one system
/// call carries many lines.
const LINGER: Duration = Duration::from_millis(2);
/// A batch buffer grown past this (a burst behind a slow stdout) is given back after use.
const KEEP_CAPACITY: usize = 1024 * 1024;
/// How long dropping the [`SinkGuard`] waits for queued lines to reach stdout.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(1);

/// The lines waiting for stdout.
struct Batch {
    bytes: Vec<u8>,
    lines: usize,
    /// The writer is waiting for a line (not writing, not lingering).
    writer_idle: bool,
    /// No more lines are coming: write what is left and stop.
    closing: bool,
    /// The writer has written everything and stopped.
    done: bool,
}

struct Shared {
    batch: Mutex<Batch>,
    /// Wakes the idle writer (a line arrived, or closing) and the closer (done).
    signal: Condvar,
    /// Most lines waiting in `batch`; more are dropped. The writer may hold as many again in
    /// the batch it is writing.
    max_lines: usize,
    dropped: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Batch> {
        // A panic while holding the lock leaves a batch that is still bytes and a count.
        self.batch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, line: &[u8]) {
        let mut batch = self.lock();
        if batch.lines >= self.max_lines || batch.closing {
            drop(batch);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        batch.bytes.extend_from_slice(line);
        batch.lines += 1;
        if batch.writer_idle {
            batch.writer_idle = false;
            drop(batch);
            self.signal.notify_all();
        }
    }
}

/// The bounded, non-blocking line sink (a [`MakeWriter`] for the fmt layer).
#[derive(Clone)]
pub(super) struct LineSink {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it wrote what was queued (at most
/// [`FLUSH_AT_EXIT`]: a stdout nobody reads must not keep the process from exiting).
pub(super) struct SinkGuard {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

/// One event's writer: the fmt layer writes each formatted line with a single `write_all`.
pub(super) struct LineWriter<'a> {
    shared: &'a Shared,
}

impl LineSink {
    /// Starts the writer thread `thread_name`, writing to `out`; at most `max_lines` wait
    /// while the writer writes (at most `max_lines` more).
    pub(super) fn start(
        out: impl Write + Send + 'static,
        max_lines: usize,
        thread_name: &str,
    ) -> std::io::Result<(Self, SinkGuard)> {
        let shared = Arc::new(Shared {
            batch: Mutex::new(Batch {
                bytes: Vec::new(),
                lines: 0,
                writer_idle: false,
                closing: false,
                done: false,
            }),
            signal: Condvar::new(),
            max_lines,
            dropped: AtomicU64::new(0),
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(thread_name.to_owned())
                .spawn(move || write_batches(&shared, out))?
        };
        Ok((
            Self {
                shared: Arc::clone(&shared),
            },
            SinkGuard {
                shared,
                writer: Some(writer),
            },
        ))
    }

    /// Lines dropped so far: the batch was full, or stdout failed.
    pub(super) fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl<'a> MakeWriter<'a> for LineSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.shared.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread: waits for a line, writes the whole batch, lingers, repeats; after
/// `closing`, writes what is left and reports `done`.
fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut writing = Vec::new();
    loop {
        let (lines, closing) = {
            let mut batch = shared.lock();
            while batch.bytes.is_empty() && !batch.closing {
                batch.writer_idle = true;
                batch = shared
                    .signal
                    .wait(batch)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            batch.writer_idle = false;
            if batch.bytes.is_empty() {
                // Closing, and nothing left.
                batch.done = true;
                drop(batch);
                shared.signal.notify_all();
                return;
            }
            std::mem::swap(&mut batch.bytes, &mut writing);
            (std::mem::take(&mut batch.lines), batch.closing)
        };
        // Written outside the lock: a stalled stdout holds up only this thread.
        if out.write_all(&writing).and_then(|()| out.flush()).is_err() {
            shared
                .dropped
                .fetch_add(u64::try_from(lines).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        writing.clear();
        if writing.capacity() > KEEP_CAPACITY {
            writing.shrink_to(KEEP_CAPACITY / 16);
        }
        if !closing {
            std::thread::sleep(LINGER);
        }
    }
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        let deadline = Instant::now() + FLUSH_AT_EXIT;
        let mut batch = self.shared.lock();
        batch.closing = true;
        self.shared.signal.notify_all();
        while !batch.done {
            let now = Instant::now();
            if now >= deadline {
                // The writer is stuck on stdout; leave it behind.
                return;
            }
            batch = self
                .shared
                .signal
                .wait_timeout(batch, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(batch);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` into a shared buffer, optionally stuck until released.
    #[derive(Clone, Default)]
    struct Capture {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
        /// Writes begun (counted before a stuck write waits).
        started: Arc<AtomicU64>,
        writes: Arc<AtomicU64>,
    }

    impl Capture {
        fn stuck() -> Self {
            let capture = Self::default();
            *capture.gate.0.lock().unwrap() = true;
            capture
        }
        fn release(&self) {
            *self.gate.0.lock().unwrap() = false;
            self.gate.1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.started.fetch_add(1, Ordering::SeqCst);
            let mut stuck = self.gate.0.lock().unwrap();
            while *stuck {
                stuck = self.gate.1.wait(stuck).unwrap();
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn write_line(sink: &LineSink, line: &str) {
        sink.make_writer().write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn every_line_reaches_the_output_in_order_by_exit() {
        let capture = Capture::default();
        let (sink, guard) = LineSink::start(capture.clone(), 100_000, "test-log").unwrap();
        let expected: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        for i in 0..10_000 {
            write_line(&sink, &format!("line {i}\n"));
        }
        drop(guard);
        assert_eq!(capture.text(), expected);
        assert_eq!(sink.dropped_lines(), 0);
        // Many lines per write: the writer gathers, it is not woken per line.
        assert!(capture.writes.load(Ordering::Relaxed) < 10_000);
    }

    #[test]
    fn a_line_is_written_without_waiting_for_exit() {
        let capture = Capture::default();
        let (sink, _guard) = LineSink::start(capture.clone(), 10, "test-log").unwrap();
        write_line(&sink, "first\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while capture.text().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(capture.text(), "first\n");
        write_line(&sink, "second\n");
        while capture.text() == "first\n" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(capture.text(), "first\nsecond\n");
    }

    #[test]
    fn a_stuck_output_drops_and_counts_lines_beyond_the_bound() {
        let capture = Capture::stuck();
        let (sink, guard) = LineSink::start(capture.clone(), 5, "test-log").unwrap();
        // The writer may take the first line into its (stuck) write; then 5 wait, the rest
        // are dropped. Never does a push wait for the output.
        write_line(&sink, "0\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while capture.started.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let began = Instant::now();
        for i in 1..20 {
            write_line(&sink, &format!("{i}\n"));
        }
        assert!(began.elapsed() < Duration::from_secs(1));
        assert_eq!(sink.dropped_lines(), 14);
        capture.release();
        drop(guard);
        assert_eq!(capture.text(), "0\n1\n2\n3\n4\n5\n");
    }

    #[test]
    fn exit_does_not_wait_forever_for_a_stuck_output() {
        let capture = Capture::stuck();
        let (sink, guard) = LineSink::start(capture.clone(), 5, "test-log").unwrap();
        write_line(&sink, "never written\n");
        let began = Instant::now();
        drop(guard);
        assert!(began.elapsed() < FLUSH_AT_EXIT + Duration::from_secs(1));
        capture.release();
    }
}
