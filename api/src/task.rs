//! Long-lived tasks that survive their own panics. A server or agent runs a handful of loops
//! (controllers, the scheduler, heartbeats, the pod supervisor); a bug that panics one of them
//! must not leave the process up but silently without it. [`Tasks::supervise`] runs a loop, and when
//! it panics logs the panic and starts it again after a pause; a loop that returns is done.
//!
//! [`Tasks`] is the set of tasks one component (a control plane, an agent) started: shutting
//! it down cancels them all and waits until every one has ended, so nothing it started
//! survives it (no task, and through them no socket, file or store handle).
//!
//! Used by the control plane and by the runtime; it knows nothing of the store or the server.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a panicked task waits before it starts again (a loop that panics at once must not
/// spin).
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The tasks of one component, stopped together. Cheap to clone (clones are the same set).
#[derive(Clone, Default)]
pub struct Tasks {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it ends or the set shuts down. After shutdown began, a new task
    /// ends at once without running.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(UntilCancelled {
            cancelled: self.cancel.clone().cancelled_owned(),
            task,
        })
    }

    /// Runs `make()` in this set and restarts it whenever it panics (after
    /// [`RESTART_DELAY`]); a run that returns is done.
    pub fn supervise<F, Fut>(&self, name: &'static str, make: F) -> JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(supervised(name, make))
    }

    /// Cancels every task and waits until all have ended (each is dropped at its next await).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// A set inside this one: its tasks end when this set shuts down (whose shutdown waits
    /// for them), and [`Tasks::cancel`] on it ends them alone (a leader stepping down stops
    /// its controllers and nothing else). Stop a child with `cancel`, not `shutdown`, which
    /// would close the shared tracker.
    pub fn child(&self) -> Tasks {
        Tasks {
            cancel: self.cancel.child_token(),
            tracker: self.tracker.clone(),
        }
    }

    /// Cancels this set's tasks without waiting (each is dropped at its next await).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// How many tasks of the set are running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }
}

pin_project_lite::pin_project! {
    /// `task`, ended early when the set is cancelled. A named future rather than an `async`
    /// block with `select!`: an async block that captures `task` and then moves it into the
    /// select keeps room for both, doubling every spawned future (the pod workers' tasks were
    /// twice their size, 10,000 pods cost ~100 MiB more).
    struct UntilCancelled<F> {
        #[pin]
        cancelled: tokio_util::sync::WaitForCancellationFutureOwned,
        #[pin]
        task: F,
    }
}

impl<F: Future<Output = ()>> Future for UntilCancelled<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // Cancellation first, as a shutdown must not wait for a busy task's next result.
        if this.cancelled.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.task.poll(cx)
    }
}

/// `make()` run and restarted whenever it panics, as one future.
async fn supervised<F, Fut>(name: &'static str, make: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    {
        let mut restarts: u64 = 0;
        loop {
            match AssertUnwindSafe(make()).catch_unwind().await {
                Ok(()) => return,
                Err(panic) => {
                    restarts = restarts.saturating_add(1);
                    let message = panic
                        .downcast_ref::<&str>()
                        .copied()
                        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("(no message)");
                    tracing::error!(
                        "task {name} panicked ({restarts} times): {message}; restarting"
                    );
                    tokio::time::sleep(RESTART_DELAY).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_a_finished_one_is_not() {
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let handle = Tasks::new().supervise("flaky", move || {
            let starts = counted.clone();
            async move {
                if starts.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(handle.is_finished(), "the third run returned");
        assert_eq!(starts.load(Ordering::SeqCst), 3, "two panics, two restarts");
    }

    #[test]
    fn a_task_in_the_set_costs_its_own_size_not_twice_it() {
        async fn large() {
            let buffer = [1u8; 4096];
            tokio::task::yield_now().await;
            assert_eq!(buffer.len(), 4096);
        }
        fn wrapped<F>(_task: F) -> usize {
            std::mem::size_of::<UntilCancelled<F>>()
        }
        let task = std::mem::size_of_val(&large());
        let spawned = wrapped(large());
        assert!(task >= 4096);
        assert!(spawned < task + 256, "{task} bytes became {spawned}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cancels_every_task_and_waits_for_it() {
        struct Dropped(Arc<AtomicUsize>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let tasks = Tasks::new();
        let dropped = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let guard = Dropped(dropped.clone());
            tasks.spawn(async move {
                let _guard = guard;
                std::future::pending::<()>().await
            });
        }
        let guard = Dropped(dropped.clone());
        tasks.supervise("forever", move || {
            let _ = &guard;
            std::future::pending::<()>()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((tasks.len(), dropped.load(Ordering::SeqCst)), (4, 0));
        tasks.shutdown().await;
        assert_eq!(
            (tasks.len(), dropped.load(Ordering::SeqCst)),
            (0, 4),
            "all ended, and what they held was dropped, before shutdown returned"
        );
        let late = tasks.spawn(async { panic!("nothing starts after shutdown") });
        assert!(late.await.is_ok(), "the late task ended without running");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(tasks.is_empty());
    }
}
