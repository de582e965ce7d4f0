//! Scheduled work that outlives a panic.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Runs `start()` as a task of its own and, whenever that task panics,
/// logs an error and starts it again after `pause`: one faulty run of
/// scheduled work (a rotation, a relay pass, a policy reload) must not stop
/// that work, unseen, for the rest of the process's life. `pause` is the
/// work's own interval, so that work which panics every time still runs
/// no more often than it is scheduled to. Ends when the task returns;
/// aborting the returned handle aborts the task with it.
pub fn supervised<F, Fut>(name: &'static str, pause: Duration, mut start: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let mut run = AbortOnDrop(tokio::spawn(start()));
            match (&mut run.0).await {
                Err(error) if error.is_panic() => {
                    tracing::error!(task = name, restart_in = ?pause, "a background task panicked; it starts again");
                }
                // Returned, or aborted from outside.
                Ok(()) | Err(_) => return,
            }
            tokio::time::sleep(pause).await;
        }
    })
}

/// Runs `step` every `interval` (the first time at once, a late tick
/// delaying the next rather than bunching), [`supervised`]: a panicking
/// step starts the loop again an interval later.
pub fn every<F, Fut>(name: &'static str, interval: Duration, step: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let step = std::sync::Arc::new(step);
    supervised(name, interval, move || {
        let step = step.clone();
        async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                step().await;
            }
        }
    })
}

/// Runs `future` to its end, turning a panic while it is polled into an
/// `Err` holding the panic's payload, as [`std::panic::catch_unwind`] does
/// for a closure: for a step of long-running work that must outlive one
/// faulty run without the task around it ending (and with what the step
/// was working on still at hand to retry).
pub async fn unwound<F: Future>(future: F) -> std::thread::Result<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |context| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            future.as_mut().poll(context)
        })) {
            Ok(std::task::Poll::Ready(output)) => std::task::Poll::Ready(Ok(output)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    })
    .await
}

/// A task that is aborted when its handle is dropped: the supervisor's own
/// abort reaches the task it runs.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_started_again_and_one_that_returns_is_not() {
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let handle = supervised("test", Duration::from_millis(1), move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(run >= 2, "run {run} fails");
            }
        });
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("the supervisor ended")
            .expect("the supervisor itself did not panic");
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_step_run_every_interval_goes_on_after_it_panics() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let handle = every("test", Duration::from_millis(1), move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                assert!(run != 1, "the second run fails");
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 4 {
            assert!(tokio::time::Instant::now() < deadline, "the step stopped");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        handle.abort();
    }

    #[tokio::test]
    async fn a_panic_in_an_unwound_future_is_an_error_its_output_is_not() {
        let panicking = unwound(async {
            tokio::task::yield_now().await;
            panic!("a faulty step");
        });
        let payload = panicking.await.expect_err("the panic was not caught");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"a faulty step"));
        let finished = unwound(async {
            tokio::task::yield_now().await;
            5
        });
        assert_eq!(finished.await.ok(), Some(5));
    }

    #[tokio::test]
    async fn aborting_the_supervisor_aborts_its_task() {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<()>(1);
        let handle = supervised("test", Duration::from_millis(1), move || {
            let sender = sender.clone();
            async move {
                // Holds its sender until it is dropped.
                let _held = sender;
                std::future::pending::<()>().await;
            }
        });
        tokio::task::yield_now().await;
        handle.abort();
        // Every sender gone: the task was dropped, not left running.
        let ended = tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await;
        assert_eq!(ended.ok(), Some(None));
    }
}
