//! The pool's job queue: a mutex-guarded FIFO whose idle workers sleep on a condition
//! variable at once.
//!
//! A crossbeam channel spins and then calls `sched_yield` in a loop before a receiver
//! sleeps. On a small machine the PKCS#11 workers outnumber the cores and are idle between
//! almost every two jobs, so that spinning took CPU from the threads serving requests (8 % of
//! the proxy's CPU in a profile at 16 concurrent requests on 2 cores). Here a worker with
//! nothing to do sleeps until a job arrives, and each job wakes exactly one worker.
//!
//! The queue holds only admitted jobs (the pool counts admission), so it needs no bound.

use std::collections::VecDeque;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

/// Why no job was returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecvError {
    /// The deadline passed with the queue empty.
    Timeout,
    /// The queue is closed and empty.
    Closed,
}

/// A multi-producer, multi-consumer FIFO of `T`.
pub(super) struct JobQueue<T> {
    state: Mutex<State<T>>,
    /// Signalled once per pushed job, and to every waiter on close.
    ready: Condvar,
}

struct State<T> {
    jobs: VecDeque<T>,
    closed: bool,
}

impl<T> JobQueue<T> {
    /// An empty, open queue with room for `capacity` jobs before it reallocates.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                jobs: VecDeque::with_capacity(capacity),
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }

    /// Appends `job` and wakes one waiting worker; gives the job back if the queue is closed.
    pub(super) fn push(&self, job: T) -> Result<(), T> {
        let mut state = self.state.lock();
        if state.closed {
            return Err(job);
        }
        state.jobs.push_back(job);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The oldest job, waiting for one as long as it takes; `Closed` once the queue is
    /// closed and drained.
    pub(super) fn recv(&self) -> Result<T, RecvError> {
        self.recv_until(None)
    }

    /// [`JobQueue::recv`], giving up at `deadline`.
    pub(super) fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvError> {
        self.recv_until(Some(deadline))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, RecvError> {
        let mut state = self.state.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Ok(job);
            }
            if state.closed {
                return Err(RecvError::Closed);
            }
            match deadline {
                None => self.ready.wait(&mut state),
                Some(deadline) => {
                    if self.ready.wait_until(&mut state, deadline).timed_out() {
                        return state.jobs.pop_front().ok_or(RecvError::Timeout);
                    }
                }
            }
        }
    }

    /// Refuses further jobs and wakes every waiter; queued jobs are still handed out.
    pub(super) fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn jobs_come_out_in_order_and_close_drains_first() {
        let queue = JobQueue::new(4);
        for n in 0..3 {
            queue.push(n).unwrap();
        }
        assert_eq!(queue.recv(), Ok(0));
        queue.close();
        assert_eq!(queue.push(9), Err(9));
        assert_eq!(queue.recv(), Ok(1));
        assert_eq!(queue.recv_deadline(Instant::now()), Ok(2));
        assert_eq!(queue.recv(), Err(RecvError::Closed));
    }

    #[test]
    fn an_empty_queue_times_out_and_a_sleeping_worker_is_woken() {
        let queue = Arc::new(JobQueue::new(1));
        let start = Instant::now();
        assert_eq!(
            queue.recv_deadline(start + Duration::from_millis(20)),
            Err(RecvError::Timeout)
        );
        assert!(start.elapsed() >= Duration::from_millis(20));
        let waiter = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || queue.recv())
        };
        std::thread::sleep(Duration::from_millis(20));
        queue.push(7).unwrap();
        assert_eq!(waiter.join().unwrap(), Ok(7));
        let closed = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || {
                queue.recv_deadline(Instant::now() + Duration::from_secs(60))
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        queue.close();
        assert_eq!(closed.join().unwrap(), Err(RecvError::Closed));
    }
}
