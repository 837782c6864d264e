//! The reconcile runtime, in kube-runtime's shape: a work queue of [`ObjectKey`]s with
//! de-duplication, at most one reconcile per key at a time (a key added while it is being
//! reconciled runs once more afterwards), at most [`MAX_CONCURRENT`] reconciles at once,
//! requeue after a delay on request, and exponential back-off on errors.
//!
//! One task owns everything: the reconciles in flight (a `JoinSet`) and the requeue timers (a
//! `DelayQueue`), so aborting the controller's task stops all of it; nothing outlives it. A
//! reconcile that panics is caught, logged and retried with back-off like an error: its key is
//! never left "running".

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_util::time::DelayQueue;

use crate::client::WatcherEvent;

/// What a reconcile asks for next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next change of a watched object.
    AwaitChange,
    /// Look again after this long (waiting on something no watch reports, such as time).
    RequeueAfter(Duration),
}

/// The reconciles one controller runs at once; more keys wait in the queue.
pub const MAX_CONCURRENT: usize = 16;

/// Back-off after the n-th consecutive failure of a key: 50 ms doubling, at most 30 s.
pub(super) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1 << failures.min(10))
        .min(Duration::from_secs(30))
}

/// Which object a reconcile is about (cluster-scoped objects have an empty namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn of(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Default)]
struct State {
    queued: HashSet<ObjectKey>,
    running: HashSet<ObjectKey>,
    /// Keys added while running: they run again when the current reconcile ends.
    dirty: HashSet<ObjectKey>,
}

/// A handle to add keys to a controller's queue; cheap to clone.
#[derive(Clone)]
pub struct WorkQueue {
    state: Arc<Mutex<State>>,
    sender: mpsc::UnboundedSender<ObjectKey>,
}

impl WorkQueue {
    pub fn add(&self, key: ObjectKey) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.running.contains(&key) {
            state.dirty.insert(key);
        } else if state.queued.insert(key.clone()) {
            // The runner gone means the controller stopped: nothing left to do.
            let _ = self.sender.send(key);
        }
    }

    /// Whether the key is queued or being reconciled.
    #[cfg(test)]
    pub fn is_pending(&self, key: &ObjectKey) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.queued.contains(key) || state.running.contains(key)
    }
}

/// How one reconcile ended.
enum Outcome {
    Done(Action),
    Failed(String),
    Panicked(String),
}

/// Creates a queue and a task that runs `reconcile` for its keys. The task stops, with every
/// reconcile and timer it owns, once every `WorkQueue` handle is dropped (the controller's
/// trigger loop ended or was aborted).
pub fn spawn<F, Fut, E>(name: &'static str, reconcile: F) -> WorkQueue
where
    F: Fn(ObjectKey) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let (sender, receiver) = mpsc::unbounded_channel::<ObjectKey>();
    let state: Arc<Mutex<State>> = Arc::default();
    tokio::spawn(run(name, state.clone(), receiver, reconcile));
    WorkQueue { state, sender }
}

async fn run<F, Fut, E>(
    name: &'static str,
    state: Arc<Mutex<State>>,
    mut receiver: mpsc::UnboundedReceiver<ObjectKey>,
    reconcile: F,
) where
    F: Fn(ObjectKey) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let mut in_flight: JoinSet<(ObjectKey, Outcome)> = JoinSet::new();
    let mut timers: DelayQueue<ObjectKey> = DelayQueue::new();
    let mut failures: HashMap<ObjectKey, u32> = HashMap::new();
    // Keys marked queued and waiting for room, oldest first.
    let mut ready: VecDeque<ObjectKey> = VecDeque::new();
    // Our own re-adds (dirty keys, timers) go through the same rules as `WorkQueue::add`.
    let enqueue = |key: ObjectKey, ready: &mut VecDeque<ObjectKey>| {
        let mut state = lock();
        if state.running.contains(&key) {
            state.dirty.insert(key);
        } else if state.queued.insert(key.clone()) {
            ready.push_back(key);
        }
    };
    loop {
        while in_flight.len() < MAX_CONCURRENT {
            let Some(key) = ready.pop_front() else { break };
            {
                let mut state = lock();
                state.queued.remove(&key);
                state.running.insert(key.clone());
            }
            let work = reconcile(key.clone());
            in_flight.spawn(async move {
                let outcome = match AssertUnwindSafe(work).catch_unwind().await {
                    Ok(Ok(action)) => Outcome::Done(action),
                    Ok(Err(e)) => Outcome::Failed(e.to_string()),
                    Err(panic) => Outcome::Panicked(panic_message(&panic).to_string()),
                };
                (key, outcome)
            });
        }
        tokio::select! {
            key = receiver.recv() => match key {
                Some(key) => ready.push_back(key),
                // Every handle is gone: the controller stopped. Dropping the JoinSet and the
                // timers ends what is in flight.
                None => return,
            },
            Some(done) = in_flight.join_next() => {
                // Panics are caught inside the task, so only an abort errs here.
                let Ok((key, outcome)) = done else { continue };
                let again = {
                    let mut state = lock();
                    state.running.remove(&key);
                    state.dirty.remove(&key)
                };
                let delay = match outcome {
                    Outcome::Done(Action::RequeueAfter(delay)) => {
                        failures.remove(&key);
                        Some(delay)
                    }
                    Outcome::Done(Action::AwaitChange) => {
                        failures.remove(&key);
                        None
                    }
                    Outcome::Failed(why) => {
                        let count = failures.entry(key.clone()).or_default();
                        *count = count.saturating_add(1);
                        tracing::debug!("{name}: reconciling {key} failed ({count} times): {why}");
                        Some(backoff(*count))
                    }
                    Outcome::Panicked(why) => {
                        let count = failures.entry(key.clone()).or_default();
                        *count = count.saturating_add(1);
                        tracing::error!("{name}: reconciling {key} panicked ({count} times): {why}");
                        Some(backoff(*count))
                    }
                };
                match (again, delay) {
                    (true, _) => enqueue(key, &mut ready),
                    (false, Some(delay)) => {
                        timers.insert(key, delay);
                    }
                    (false, None) => {}
                }
            }
            Some(expired) = timers.next() => enqueue(expired.into_inner(), &mut ready),
        }
    }
}

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The triggers of a controller of pods: enqueues every object of kind `K` that changes and
/// the `K` that controls every pod that changes. Runs until the watches end.
pub async fn watch_owners_and_pods<K>(client: crate::client::Client, queue: WorkQueue)
where
    K: crate::client::ApiObject,
{
    let owners = crate::client::watcher::<K>(&client, crate::client::ListParams::default());
    watch_owners_and_children(owners, client.shared_watch::<Pod>(), queue).await;
}

/// The triggers of a controller of `C`s owned by `K`s: enqueues every `K` that changes and
/// the `K` that controls every `C` that changes. Runs until the watches end.
pub async fn watch_owners_and_children<K, C>(
    mut owners: mpsc::Receiver<WatcherEvent<K>>,
    mut children: mpsc::Receiver<WatcherEvent<C>>,
    queue: WorkQueue,
) where
    K: Resource + Metadata<Ty = ObjectMeta>,
    C: Metadata<Ty = ObjectMeta>,
{
    loop {
        tokio::select! {
            Some(event) = owners.recv() => {
                for owner in event.into_objects() {
                    queue.add(ObjectKey::of(owner.metadata()));
                }
            }
            Some(event) = children.recv() => {
                for child in event.into_objects() {
                    let meta = child.metadata();
                    let owner = super::replicaset::controller_of(meta).filter(|o| o.kind == K::KIND);
                    if let Some(owner) = owner {
                        queue.add(ObjectKey::new(meta.namespace.as_deref().unwrap_or_default(), &owner.name));
                    }
                }
            }
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_collapse_and_errors_retry() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let queue = spawn("test", move |key: ObjectKey| {
            let runs = counted.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if key.name == "flaky" && n < 2 {
                    return Err("not yet");
                }
                Ok(Action::AwaitChange)
            }
        });
        for _ in 0..10 {
            queue.add(key("a"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "ten adds of one key before it ran are one reconcile"
        );
        runs.store(0, Ordering::SeqCst);
        queue.add(key("flaky"));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "an error retries with back-off until it succeeds"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_reconcile_does_not_wedge_its_key() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let queue = spawn("test", move |key: ObjectKey| {
            let runs = counted.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                if key.name == "poisoned" && n == 0 {
                    panic!("poisoned object");
                }
                Ok::<_, String>(Action::AwaitChange)
            }
        });
        queue.add(key("poisoned"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "the panic was retried with back-off, and the retry ran"
        );
        queue.add(key("poisoned"));
        queue.add(key("other"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            4,
            "the key and the queue keep working after a panic"
        );
        assert!(!queue.is_pending(&key("poisoned")), "not left running");
    }

    #[tokio::test(start_paused = true)]
    async fn requeue_after_runs_again_and_concurrency_is_bounded() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let (r, p, n) = (running.clone(), peak.clone(), runs.clone());
        let queue = spawn("test", move |key: ObjectKey| {
            let (running, peak, runs) = (r.clone(), p.clone(), n.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, String>(if key.name == "timer" {
                    Action::RequeueAfter(Duration::from_secs(5))
                } else {
                    Action::AwaitChange
                })
            }
        });
        for i in 0..100 {
            queue.add(key(&format!("k{i}")));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 100);
        assert_eq!(peak.load(Ordering::SeqCst), MAX_CONCURRENT);
        queue.add(key("timer"));
        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 101, "not yet due");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 102, "requeued after 5 s");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_every_handle_stops_reconciles_and_timers() {
        let finished = Arc::new(AtomicUsize::new(0));
        let counted = finished.clone();
        let queue = spawn("test", move |_key: ObjectKey| {
            let finished = counted.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(Action::RequeueAfter(Duration::from_secs(1)))
            }
        });
        let probe = Arc::downgrade(&queue.state);
        queue.add(key("slow"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(queue);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "the reconcile in flight was aborted"
        );
        assert!(
            probe.upgrade().is_none(),
            "the runner and its state are gone"
        );
    }
}
