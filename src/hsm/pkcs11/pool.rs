//! Dedicated PKCS#11 worker threads behind a bounded queue (checklist TR-8, "naive
//! implementation" #37; style guide "PKCS#11 work runs on dedicated blocking workers").
//!
//! Each worker is a std thread that owns one logged-in [`Session`] (sessions are `Send` but
//! not `Sync`, so one thread per session). Requests arrive through an MPMC queue; at most
//! `sessions + queue_depth` jobs are admitted (running or waiting), and beyond that the answer
//! is [`HsmError::Busy`] at once (ThrottlingException),
//! and every job carries its request deadline. The async caller waits on a oneshot with
//! `timeout_at(deadline)` ([`HsmError::Timeout`], DependencyTimeoutException); a worker drops
//! a job whose deadline has passed without touching the HSM. No PKCS#11 call ever runs on a
//! tokio thread.
//!
//! Recovery: a job that fails with a session or login [`Tier`] makes its worker close the
//! session and open and log in a fresh one, then retry the job once on it if the deadline
//! allows, so a dropped session costs the client nothing. A vendor-defined or unknown return
//! code also replaces the session but fails its request without a retry, and becomes a device
//! failure when it repeats (`repair`). A device failure instead drops the
//! session and asks the recovery thread (`recovery`) to rebuild the whole context in the
//! background; until it has, jobs fail fast with [`HsmError::Unavailable`], and afterwards
//! every worker replaces its stale session before its next job. Login and device failures
//! also flush the key-handle cache. If a session cannot be opened, the worker retries with
//! exponential backoff, never spinning. While it waits, it takes no jobs as long as another
//! worker holds a session (those can serve them; `liveness`); when no worker holds one, the
//! workers without a session take jobs again, to answer [`HsmError::Unavailable`] at once
//! instead of letting requests wait for their deadline (or to serve them, once a reopen is
//! due or another worker has shown the token answers again).
//!
//! Metrics: `xks_hsm_sessions{state="idle"|"in_use"}` counts the workers' open sessions,
//! `in_use` while a job runs on one; a worker whose session is lost leaves both until it
//! reopens one, so the two always add up to the open worker sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki::context::Function;
use cryptoki::session::Session;
use tokio::sync::oneshot;

use super::Shared;
use super::errors::is_unknown_code;
use super::liveness::Liveness;
use super::queue::{JobQueue, RecvError};
use super::repair::{self, Repair};
use super::token;
use crate::hsm::{HsmError, Pkcs11Call, Tier};

/// First wait before retrying to open a session.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// How long shutdown waits for workers to finish their current job.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Longest wait between attempts to open a session.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// `xks_hsm_sessions` state of an open session no job is running on.
const IDLE: &str = "idle";
/// `xks_hsm_sessions` state of a session a job is running on.
const IN_USE: &str = "in_use";

/// The work of one job: runs on the worker (its session, its repair) and sends the reply.
type Work = Box<dyn FnOnce(&mut Worker) + Send>;

/// A queued request.
struct Job {
    deadline: Instant,
    work: Work,
}

/// The worker threads and the sending side of their queue.
pub(super) struct Pool {
    /// Shared with the workers; closed at shutdown.
    queue: Arc<JobQueue<Job>>,
    /// Jobs queued or running. A job gives its place back before its caller hears the answer,
    /// so a request's next job (e.g. the Encrypt after a key's first version lookup) is never
    /// refused because the worker that answered has not yet gone back to the queue.
    admitted: Arc<AtomicUsize>,
    /// Sessions plus `queue_depth`: the most jobs admitted at once.
    capacity: usize,
    workers: Vec<JoinHandle<()>>,
    /// Which workers hold a session; shutdown wakes the parked ones through it.
    liveness: Arc<Liveness>,
}

/// A job's place among the admitted ones, given back on drop.
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A job accepted by the queue; [`Submitted::wait`] yields its result.
pub(super) struct Submitted<T> {
    receiver: oneshot::Receiver<Result<T, HsmError>>,
    deadline: Instant,
}

impl Pool {
    /// Starts one worker per session, sharing a queue of `queue_depth` waiting jobs.
    pub(super) fn start(
        shared: &Arc<Shared>,
        sessions: Vec<Session>,
        queue_depth: usize,
    ) -> Result<Self, HsmError> {
        let capacity = sessions.len().saturating_add(queue_depth);
        // Admission is counted (`admitted`); the queue only holds what was admitted.
        let queue = Arc::new(JobQueue::new(capacity));
        let open = i64::try_from(sessions.len()).unwrap_or(i64::MAX);
        // Added, not set: the members of a fleet share one gauge.
        shared.observer.add_hsm_sessions(IDLE, open);
        shared.observer.add_hsm_sessions(IN_USE, 0);
        let liveness = Arc::new(Liveness::new(sessions.len()));
        let mut workers = Vec::with_capacity(sessions.len());
        for (id, session) in sessions.into_iter().enumerate() {
            let worker = Worker::new(id, session, Arc::clone(shared), Arc::clone(&liveness));
            let jobs = Arc::clone(&queue);
            let handle = std::thread::Builder::new()
                .name(format!("pkcs11-worker-{id}"))
                .spawn(move || worker.run(&jobs))
                .map_err(|e| HsmError::Unavailable(format!("cannot start a worker thread: {e}")))?;
            workers.push(handle);
        }
        Ok(Self {
            queue,
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity,
            workers,
            liveness,
        })
    }

    /// Queues `f` to run on a worker's session. Never blocks: with every session busy and
    /// `queue_depth` jobs waiting, the answer is [`HsmError::Busy`]; a deadline already past is
    /// [`HsmError::Timeout`].
    pub(super) fn submit<T, F>(&self, deadline: Instant, f: F) -> Result<Submitted<T>, HsmError>
    where
        T: Send + 'static,
        F: Fn(&Session, &Shared) -> Result<T, HsmError> + Send + 'static,
    {
        if Instant::now() >= deadline {
            return Err(HsmError::Timeout);
        }
        if self.admitted.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.admitted.fetch_sub(1, Ordering::SeqCst);
            return Err(HsmError::Busy);
        }
        // Dropped when the job ends, however it ends (run, dropped past its deadline, or
        // discarded at shutdown).
        let admission = Admission(Arc::clone(&self.admitted));
        let (reply, receiver) = oneshot::channel();
        let work: Work = Box::new(move |worker: &mut Worker| {
            let mut result = worker.attempt(&f);
            let mut repair = repair::after(&worker.shared, &result);
            if let Some(Repair { tier, retry: true }) = repair {
                worker.repair(tier);
                if worker.session.is_some() && Instant::now() < deadline {
                    result = worker.attempt(&f);
                    repair = repair::after(&worker.shared, &result);
                } else {
                    repair = None;
                }
            }
            // The place is free before the caller learns the answer (see `admitted`).
            drop(admission);
            // The caller may have timed out and gone; nothing to do then.
            let _ = reply.send(result);
            if let Some(Repair { tier, .. }) = repair {
                worker.repair(tier);
            }
        });
        match self.queue.push(Job { deadline, work }) {
            Ok(()) => Ok(Submitted { receiver, deadline }),
            Err(_closed) => Err(HsmError::Unavailable(
                "the HSM backend is shutting down".into(),
            )),
        }
    }

    /// Closes the queue and waits for the workers, which finish the jobs already queued.
    ///
    /// A worker stuck in a hung HSM call is not waited for longer than [`SHUTDOWN_WAIT`]: it
    /// is left behind (holding its reference to the module, which is then never finalised
    /// under it) so that the process can still exit.
    pub(super) fn shutdown(&mut self) {
        self.queue.close();
        self.liveness.stop();
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while self.workers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for worker in self.workers.drain(..) {
            if !worker.is_finished() {
                tracing::warn!("a PKCS#11 worker is stuck in an HSM call; not waiting for it");
                continue;
            }
            if worker.join().is_err() {
                tracing::error!("a PKCS#11 worker thread panicked");
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl<T> Submitted<T> {
    /// Waits for the result until the deadline.
    pub(super) async fn wait(self) -> Result<T, HsmError> {
        match tokio::time::timeout_at(self.deadline.into(), self.receiver).await {
            Ok(Ok(result)) => result,
            // The worker dropped the job: it expired in the queue, or the worker died.
            Ok(Err(_)) if Instant::now() >= self.deadline => Err(HsmError::Timeout),
            Ok(Err(_)) => Err(HsmError::Unavailable(
                "the HSM worker dropped the request".into(),
            )),
            Err(_elapsed) => Err(HsmError::Timeout),
        }
    }
}

/// Whether `err` is the token refusing our credentials at `C_Login`: retrying could lock
/// the user PIN, so nobody logs in again until an operator restarts the proxy.
pub(super) fn refuses_login(err: &HsmError) -> bool {
    matches!(err, HsmError::Pkcs11(f)
        if f.function == Pkcs11Call::Function(Function::Login) && f.tier == Tier::Login)
}

/// One worker thread's state.
struct Worker {
    id: usize,
    session: Option<Session>,
    shared: Arc<Shared>,
    backoff: Duration,
    next_attempt: Instant,
    /// Where this worker's session is counted in `xks_hsm_sessions` (and whether it counts
    /// in `liveness`); `None`: no session.
    counted_as: Option<&'static str>,
    /// The pool's count of workers holding a session.
    liveness: Arc<Liveness>,
    /// The context generation `session` belongs to.
    generation: u64,
}

impl Worker {
    fn new(id: usize, session: Session, shared: Arc<Shared>, liveness: Arc<Liveness>) -> Self {
        let generation = shared_generation(&shared);
        Self {
            id,
            session: Some(session),
            shared,
            backoff: MIN_BACKOFF,
            next_attempt: Instant::now(),
            counted_as: Some(IDLE),
            liveness,
            generation,
        }
    }

    fn run(mut self, jobs: &JobQueue<Job>) {
        loop {
            let next = if self.session.is_some() {
                jobs.recv()
            } else if self.liveness.wait_while_others_serve(self.next_attempt) {
                // Others served the queue meanwhile; our backoff is over: try to reopen.
                Err(RecvError::Timeout)
            } else {
                // Nobody holds a session (or the pool stops): take jobs, to fail them fast
                // rather than let them wait for their deadline, until the reopen is due.
                jobs.recv_deadline(self.next_attempt)
            };
            match next {
                Ok(job) => self.handle(job),
                Err(RecvError::Timeout) => {
                    let module = Arc::clone(&self.shared.module);
                    let _calls = module.calls();
                    self.reopen();
                    self.account(false);
                }
                Err(RecvError::Closed) => break,
            }
        }
        // A stopped worker's session no longer counts.
        self.session = None;
        self.account(false);
        tracing::debug!(worker = self.id, "PKCS#11 worker stopped");
    }

    fn handle(&mut self, job: Job) {
        if Instant::now() >= job.deadline {
            tracing::debug!(
                worker = self.id,
                "dropping a request whose deadline passed in the queue"
            );
            return;
        }
        // Every PKCS#11 call below happens under the module's call guard, so that a context
        // rebuild never finalises the library under a running call. Waiting for it past the
        // deadline drops the job: the caller answers DependencyTimeoutException.
        let module = Arc::clone(&self.shared.module);
        let Some(_calls) = module.calls_until(job.deadline) else {
            return;
        };
        if self.generation != shared_generation(&self.shared) {
            // The context was rebuilt: any session belongs to the old one, and a reopen
            // postponed during the outage is due now.
            self.forget_stale_session();
            self.next_attempt = Instant::now();
        }
        // A worker without a session only gets here when no worker had one as it went to the
        // queue; if another has one now, the token answers again: reopen without waiting out
        // the backoff rather than fail this job.
        if self.session.is_none() && (Instant::now() >= self.next_attempt || self.liveness.any()) {
            self.reopen();
        }
        self.account(true);
        (job.work)(self);
        self.account(false);
    }

    /// Moves this worker's session to the `xks_hsm_sessions` state it is in now: `in_use`
    /// while `busy`, `idle` otherwise, and out of both while it has no session.
    fn account(&mut self, busy: bool) {
        let now = match (&self.session, busy) {
            (None, _) => None,
            (Some(_), false) => Some(IDLE),
            (Some(_), true) => Some(IN_USE),
        };
        match (self.counted_as.is_some(), now.is_some()) {
            (false, true) => self.liveness.gained(),
            (true, false) => self.liveness.lost(),
            _ => {}
        }
        let observer = &*self.shared.observer;
        match (self.counted_as, now) {
            (before, after) if before == after => {}
            (Some(IDLE), Some(IN_USE)) => observer.hsm_session_busy(true),
            (Some(IN_USE), Some(IDLE)) => observer.hsm_session_busy(false),
            (before, after) => {
                if let Some(state) = before {
                    observer.add_hsm_sessions(state, -1);
                }
                if let Some(state) = after {
                    observer.add_hsm_sessions(state, 1);
                }
            }
        }
        self.counted_as = now;
    }

    /// Drops a session of a previous context without `C_CloseSession`: after `C_Initialize`
    /// its handle number may belong to a new session of another thread, which closing it
    /// would kill. The finalised library has already freed it.
    fn forget_stale_session(&mut self) {
        if let Some(stale) = self.session.take() {
            std::mem::forget(stale);
        }
    }

    /// Runs `f` on this worker's session, if it has one.
    fn attempt<T>(
        &self,
        f: &impl Fn(&Session, &Shared) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        if self.shared.recovering.load(Ordering::SeqCst)
            || self.generation != shared_generation(&self.shared)
        {
            return Err(HsmError::Unavailable(
                "the HSM connection is being rebuilt".into(),
            ));
        }
        match &self.session {
            Some(session) => f(session, &self.shared),
            None => Err(HsmError::Unavailable(
                "no PKCS#11 session; reconnecting".into(),
            )),
        }
    }

    /// Repairs after a failure of `tier`: a fresh session (and login) for session and login
    /// failures; for device failures the session is dropped and the recovery thread asked to
    /// rebuild the whole context, off the request path.
    fn repair(&mut self, tier: Tier) {
        if matches!(tier, Tier::Login | Tier::Device) {
            self.shared.keys.clear();
        }
        self.session = None;
        self.backoff = MIN_BACKOFF;
        if tier == Tier::Device {
            self.shared.recovery.request(&self.shared);
            self.next_attempt = Instant::now();
            return;
        }
        tracing::warn!(
            worker = self.id,
            ?tier,
            "replacing the PKCS#11 session after a failure"
        );
        self.reopen();
    }

    /// Opens and logs in a new session, or schedules the next attempt.
    fn reopen(&mut self) {
        let shared = &self.shared;
        if shared.login_refused.load(Ordering::Relaxed) {
            self.next_attempt = Instant::now() + MAX_BACKOFF;
            return;
        }
        if shared.recovering.load(Ordering::SeqCst) {
            // The recovery thread owns the device now; look again shortly.
            self.next_attempt = Instant::now() + MIN_BACKOFF;
            return;
        }
        let generation = shared_generation(shared);
        match token::open_session(
            &shared.pkcs11,
            &*shared.observer,
            *shared.slot.read(),
            &shared.pin,
            false,
        ) {
            Ok(session) => {
                tracing::info!(worker = self.id, "opened a new PKCS#11 session");
                self.session = Some(session);
                self.generation = generation;
                self.backoff = MIN_BACKOFF;
            }
            Err(err) => {
                let device = match &err {
                    HsmError::Pkcs11(f) if is_unknown_code(f) => {
                        repair::unknown_code_tier(shared) == Tier::Device
                    }
                    HsmError::Pkcs11(f) => f.tier == Tier::Device,
                    _ => false,
                };
                if device {
                    shared.recovery.request(shared);
                }
                if refuses_login(&err) && !shared.login_refused.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        error = %err,
                        "the token refused the PIN; not logging in again until restart"
                    );
                }
                tracing::warn!(worker = self.id, error = %err, retry_in = ?self.backoff,
                    "cannot open a PKCS#11 session");
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn shared_generation(shared: &Shared) -> u64 {
    shared.generation.load(Ordering::SeqCst)
}
