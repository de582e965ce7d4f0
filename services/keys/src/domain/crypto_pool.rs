//! A fixed set of threads for slow crypto (RSA key generation, RSA
//! signing and decryption). Each thread takes the next job from a shared
//! queue as soon as it finishes one, so the cores stay busy with RSA without
//! waiting for the async runtime to hand work over; the async workers only
//! enqueue and await the answer.
//!
//! The threads run at a lower scheduling priority (nice 10): RSA keeps
//! every idle cycle, but a core is handed to the async workers, the audit
//! path and the database threads whenever they have work, so a signing
//! load does not stretch the latency of cheap calls on the same cores.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct CryptoPool {
    jobs: mpsc::Sender<Job>,
}

impl CryptoPool {
    /// `threads` workers (at least one). Threads end when the pool is dropped.
    pub(crate) fn new(threads: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
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

    /// Runs `work` on a pool thread; `None` if the pool has stopped.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller may have gone away; the work is done regardless.
            let _caller_gone = answer.send(work());
        });
        self.jobs.send(job).ok()?;
        answered.await.ok()
    }
}

/// How much lower than the process the crypto threads are scheduled.
#[cfg(unix)]
const CRYPTO_NICENESS: i32 = 10;

/// Lowers the calling thread's priority (Linux applies `setpriority` to one
/// thread). Failing to is harmless: the thread runs at normal priority.
fn lower_priority() {
    #[cfg(unix)]
    {
        let current = rustix::process::getpriority_process(None).unwrap_or(0);
        if let Err(error) = rustix::process::setpriority_process(None, current + CRYPTO_NICENESS) {
            tracing::debug!(%error, "the crypto thread keeps its priority");
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

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
}
