//! Instance admission: a bound on the guest instances alive at once, per node (the size of the
//! engine's instance pool) and per HTTP container (the agent's setting). An HTTP request past
//! the bound waits in a bounded queue for a bounded time, then is refused as overloaded (the
//! proxy answers 503 with `Retry-After`); it never reaches the instance pool, so a full pool
//! is never counted as a failure of the container. Commands wait for a slot without a limit:
//! a command has no client to answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    #[error("{0} instances are busy and {1} requests already wait")]
    QueueFull(usize, usize),
    #[error("no instance was free within the admission wait ({0} instances busy)")]
    TimedOut(usize),
}

/// Slots for instances, and a bounded queue of waiters.
#[derive(Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Admission {
    /// `limit` instances at once; at most `max_waiting` callers wait for a slot.
    pub fn new(limit: usize, max_waiting: usize) -> Self {
        let limit = limit.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// A slot now, or after waiting in the queue until `deadline`.
    pub async fn admit_until(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, Overloaded> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = Leave(&self.waiting);
        if waiting >= self.max_waiting {
            return Err(Overloaded::QueueFull(self.limit, waiting));
        }
        match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout is the only other way out.
            _ => Err(Overloaded::TimedOut(self.limit)),
        }
    }

    /// A slot, waiting as long as it takes.
    pub async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }

    /// Instances running now.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

/// Leaves the queue however the wait ends (admitted, refused, or the caller gone).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn past_the_limit_callers_wait_a_bounded_time_in_a_bounded_queue() {
        let admission = Arc::new(Admission::new(2, 2));
        let deadline = || Instant::now() + Duration::from_secs(1);
        let a = admission.admit_until(deadline()).await.unwrap();
        let _b = admission.admit_until(deadline()).await.unwrap();
        assert_eq!(admission.in_use(), 2);
        // Two wait; a third finds the queue full at once.
        let first = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit_until(deadline()).await }
        });
        let second = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit_until(deadline()).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            admission.admit_until(deadline()).await.unwrap_err(),
            Overloaded::QueueFull(2, 2)
        );
        // A slot frees: the first waiter gets it; the second times out.
        drop(a);
        let held = first.await.unwrap().expect("the first waiter is admitted");
        assert_eq!(second.await.unwrap(), Err(Overloaded::TimedOut(2)));
        drop(held);
        assert_eq!(
            admission.waiting.load(Ordering::Acquire),
            0,
            "the queue is empty again"
        );
    }
}
