//! What a container's instances use, measured as they run: CPU as the time spent inside
//! polls of their guest futures (wasmtime runs a guest on a fiber within the poll of its
//! call, so a poll's duration is the guest's execution plus the host calls it makes), and
//! memory as the bytes their linear memories and tables hold plus a fixed overhead per live
//! store. One [`Usage`] per container is shared by every instance of it (each command run,
//! each HTTP request, each exec); the agent samples it for the metrics API.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::{ResourceLimiter, StoreLimits};

/// Bytes a table element takes in wasmtime (a function or extern reference: one pointer).
const TABLE_ELEMENT_BYTES: u64 = 8;

/// Bytes counted for each live store besides its memories and tables: its WASI context,
/// resource table, instance handles and fiber stack bookkeeping. An estimate (the allocator
/// cannot attribute heap blocks to a store), of the order a store with a WASI context takes.
pub const STORE_OVERHEAD_BYTES: u64 = 16 << 10;

/// Cumulative CPU time and current memory of one container's instances.
#[derive(Debug, Default)]
pub struct Usage {
    cpu_nanos: AtomicU64,
    memory_bytes: AtomicU64,
}

impl Usage {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Nanoseconds of CPU its instances have used since the container started.
    pub fn cpu_nanos(&self) -> u64 {
        self.cpu_nanos.load(Ordering::Relaxed)
    }

    /// Bytes its live instances hold now.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    fn add_cpu(&self, nanos: u64) {
        self.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn add_memory(&self, bytes: u64) {
        self.memory_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn release_memory(&self, bytes: u64) {
        // Never below zero, even if a count was missed: saturate instead of wrapping.
        let _ = (self.memory_bytes).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            Some(held.saturating_sub(bytes))
        });
    }

    /// Runs `future` (a guest's call), counting the time spent in its polls as CPU.
    pub async fn metered<F: Future>(&self, future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        std::future::poll_fn(|cx| {
            let started = Instant::now();
            let polled = future.as_mut().poll(cx);
            let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.add_cpu(nanos);
            polled
        })
        .await
    }
}

/// A store's limits (wasmtime's [`StoreLimits`]) that also count what the store holds into
/// its container's [`Usage`], and give it back when the store is dropped.
pub struct MeteredLimits {
    limits: StoreLimits,
    usage: Arc<Usage>,
    held: u64,
}

impl MeteredLimits {
    pub fn new(limits: StoreLimits, usage: Arc<Usage>) -> Self {
        usage.add_memory(STORE_OVERHEAD_BYTES);
        Self {
            limits,
            usage,
            held: STORE_OVERHEAD_BYTES,
        }
    }

    fn grew(&mut self, bytes: u64) {
        self.held = self.held.saturating_add(bytes);
        self.usage.add_memory(bytes);
    }
}

impl Drop for MeteredLimits {
    fn drop(&mut self) {
        self.usage.release_memory(self.held);
    }
}

impl ResourceLimiter for MeteredLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.grew(desired.saturating_sub(current) as u64);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.table_growing(current, desired, maximum)?;
        if allowed {
            let elements = desired.saturating_sub(current) as u64;
            self.grew(elements.saturating_mul(TABLE_ELEMENT_BYTES));
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::StoreLimitsBuilder;

    #[test]
    fn memory_is_counted_while_a_store_lives_and_given_back_after() {
        let usage = Usage::new();
        let limits = StoreLimitsBuilder::new().memory_size(4 << 20).build();
        let mut metered = MeteredLimits::new(limits, usage.clone());
        assert_eq!(usage.memory_bytes(), STORE_OVERHEAD_BYTES);
        assert!(metered.memory_growing(0, 1 << 20, None).unwrap());
        assert!(metered.table_growing(0, 10, None).unwrap());
        assert_eq!(
            usage.memory_bytes(),
            STORE_OVERHEAD_BYTES + (1 << 20) + 10 * TABLE_ELEMENT_BYTES
        );
        // Past the limit: refused, and not counted.
        assert!(!metered.memory_growing(1 << 20, 8 << 20, None).unwrap());
        assert_eq!(
            usage.memory_bytes(),
            STORE_OVERHEAD_BYTES + (1 << 20) + 10 * TABLE_ELEMENT_BYTES
        );
        let second = MeteredLimits::new(StoreLimits::default(), usage.clone());
        drop(metered);
        assert_eq!(usage.memory_bytes(), STORE_OVERHEAD_BYTES);
        drop(second);
        assert_eq!(usage.memory_bytes(), 0);
    }

    #[tokio::test]
    async fn cpu_is_the_time_spent_in_polls_not_while_waiting() {
        let usage = Usage::new();
        usage
            .metered(async {
                let started = Instant::now();
                while started.elapsed() < std::time::Duration::from_millis(30) {
                    std::hint::spin_loop();
                }
                // Waiting (not polled) is not CPU.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            })
            .await;
        let millis = usage.cpu_nanos() / 1_000_000;
        assert!((30..150).contains(&millis), "{millis} ms counted");
    }
}
