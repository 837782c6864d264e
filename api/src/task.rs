//! Long-lived tasks that survive their own panics. A server or agent runs a handful of loops
//! (controllers, the scheduler, heartbeats, the pod supervisor); a bug that panics one of them
//! must not leave the process up but silently without it. [`supervise`] runs a loop, and when
//! it panics logs the panic and starts it again after a pause; a loop that returns is done.
//!
//! Used by the control plane and by the runtime (the one module besides `api` and `client`
//! that the runtime may use: it knows nothing of the store or the server).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;

/// How long a panicked task waits before it starts again (a loop that panics at once must not
/// spin).
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Spawns `make()` and restarts it whenever it panics; the handle aborts it for good.
pub fn supervise<F, Fut>(name: &'static str, make: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
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
    })
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
        let handle = supervise("flaky", move || {
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
}
