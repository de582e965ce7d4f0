//! A fixed set of threads for slow crypto (RSA key generation, RSA
//! signing and decryption). Each thread takes the next job from a shared
//! queue as soon as it finishes one, so the cores stay busy with RSA without
//! waiting for the async runtime to hand work over; the async workers only
//! enqueue and await the answer.
//!
//! The threads run at a lower scheduling priority (nice 10, on Linux): RSA
//! keeps every idle cycle, but a core is handed to the async workers, the
//! audit path and the database threads whenever they have work, so a
//! signing load does not stretch the latency of cheap calls on the same
//! cores.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Jobs that may wait for a thread. Calls over the server's concurrency
/// limit never get here, but a call cancelled by its client gives its slot
/// back while its job still waits: the bound keeps such leftovers (and
/// their memory) from piling up without end.
pub(crate) const MAX_QUEUED_JOBS: usize = 4_096;

/// Why a job did not give its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PoolError {
    #[error("the crypto queue is full")]
    Busy,
    #[error("the crypto pool has stopped")]
    Stopped,
    #[error("a crypto job panicked")]
    Panicked,
}

pub(crate) struct CryptoPool {
    jobs: mpsc::SyncSender<Job>,
}

impl CryptoPool {
    /// `threads` workers (at least one). Threads end when the pool is dropped.
    pub(crate) fn new(threads: usize) -> Self {
        Self::with_queue(threads, MAX_QUEUED_JOBS)
    }

    fn with_queue(threads: usize, queued: usize) -> Self {
        let (jobs, queue) = mpsc::sync_channel::<Job>(queued);
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("coffer-crypto-{index}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let next = queue
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .recv();
                        match next {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a crypto thread");
            }
        }
        Self { jobs }
    }

    /// Runs `work` on a pool thread. Work whose caller has gone by the time
    /// a thread takes it is skipped; work that panics answers
    /// [`PoolError::Panicked`] and leaves the thread running.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            if answer.is_closed() {
                return;
            }
            if let Ok(outcome) = std::panic::catch_unwind(AssertUnwindSafe(work)) {
                // The caller may have gone away meanwhile; nothing to undo.
                let _caller_gone = answer.send(Ok(outcome));
            } else {
                let _caller_gone = answer.send(Err(PoolError::Panicked));
            }
        });
        self.jobs.try_send(job).map_err(|error| match error {
            mpsc::TrySendError::Full(_) => PoolError::Busy,
            mpsc::TrySendError::Disconnected(_) => PoolError::Stopped,
        })?;
        answered.await.map_err(|_| PoolError::Stopped)?
    }
}

/// How much lower than the process the crypto threads are scheduled.
#[cfg(target_os = "linux")]
const CRYPTO_NICENESS: i32 = 10;

/// Lowers the calling thread's priority. Only on Linux, where
/// `setpriority` applies to the one thread: elsewhere it would lower the
/// whole process, once more for every crypto thread. Failing to is
/// harmless: the thread runs at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let current = rustix::process::getpriority_process(None).unwrap_or(0);
        if let Err(error) = rustix::process::setpriority_process(None, current + CRYPTO_NICENESS) {
            tracing::debug!(%error, "the crypto thread keeps its priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn crypto_threads_run_below_the_callers_priority() {
        let caller = rustix::process::getpriority_process(None).expect("the caller's priority");
        let pool = CryptoPool::new(1);
        let worker = pool
            .run(|| rustix::process::getpriority_process(None).expect("the worker's priority"))
            .await
            .expect("the pool runs the job");
        // Niceness stops at 19.
        assert_eq!(worker, (caller + CRYPTO_NICENESS).min(19));
    }

    #[tokio::test]
    async fn a_job_whose_caller_has_gone_is_skipped() {
        let pool = Arc::new(CryptoPool::new(1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Occupy the only thread until released.
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || hold.recv().is_ok()).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        let flag = ran.clone();
        let abandoned = pool.run(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        // Queue the job, then drop the caller (as a cancelled call does).
        let _ = tokio::time::timeout(std::time::Duration::from_millis(20), abandoned).await;
        release.send(()).expect("the thread waits");
        assert_eq!(busy.await.expect("joined"), Ok(true));
        // A job queued after the abandoned one runs once it is skipped.
        assert_eq!(pool.run(|| 7).await, Ok(7));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_panicking_job_answers_an_error_and_the_thread_goes_on() {
        let pool = CryptoPool::new(1);
        let outcome: Result<(), PoolError> = pool.run(|| panic!("a crypto bug")).await;
        assert_eq!(outcome, Err(PoolError::Panicked));
        assert_eq!(pool.run(|| 5).await, Ok(5));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_more_work() {
        let pool = Arc::new(CryptoPool::with_queue(1, 1));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run(move || hold.recv().is_ok()).await }
        });
        // Once the thread holds the blocking job, one more fills the queue.
        let mut queued = None;
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            let waiting = tokio::spawn({
                let pool = pool.clone();
                async move { pool.run(|| 1).await }
            });
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            if !waiting.is_finished() {
                queued = Some(waiting);
                break;
            }
        }
        let queued = queued.expect("a job waits behind the busy thread");
        assert_eq!(pool.run(|| 2).await, Err(PoolError::Busy));
        release.send(()).expect("the thread waits");
        assert_eq!(busy.await.expect("joined"), Ok(true));
        assert_eq!(queued.await.expect("joined"), Ok(1));
    }
}
