//! The reconcile runtime, in kube-runtime's shape: a work queue of object keys with
//! de-duplication, at most one reconcile per key at a time (a key added while it is being
//! reconciled runs once more afterwards), requeue after a delay on request, and exponential
//! back-off on errors.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use tokio::sync::mpsc;

use crate::client::{watcher, Client, ListParams, WatcherEvent};

/// What a reconcile asks for next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next change of a watched object.
    AwaitChange,
    /// Look again after this long (waiting on something no watch reports, such as time).
    RequeueAfter(Duration),
}

#[derive(Default)]
struct State {
    queued: HashSet<String>,
    running: HashSet<String>,
    /// Keys added while running: they run again when the current reconcile ends.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
}

/// A handle to add keys to a controller's queue; cheap to clone.
#[derive(Clone)]
pub struct WorkQueue {
    state: Arc<Mutex<State>>,
    sender: mpsc::UnboundedSender<String>,
}

impl WorkQueue {
    pub fn add(&self, key: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.running.contains(key) {
            state.dirty.insert(key.to_string());
        } else if state.queued.insert(key.to_string()) {
            let _ = self.sender.send(key.to_string());
        }
    }

    fn add_after(&self, key: String, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(&key);
        });
    }
}

/// Creates a queue and runs `reconcile` for its keys until the task is dropped.
pub fn spawn<F, Fut>(name: &'static str, reconcile: F) -> WorkQueue
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, String>> + Send + 'static,
{
    let (sender, mut receiver) = mpsc::unbounded_channel::<String>();
    let queue = WorkQueue {
        state: Arc::default(),
        sender,
    };
    let runner = queue.clone();
    let reconcile = Arc::new(reconcile);
    tokio::spawn(async move {
        while let Some(key) = receiver.recv().await {
            {
                let mut state = runner.state.lock().unwrap_or_else(|p| p.into_inner());
                state.queued.remove(&key);
                state.running.insert(key.clone());
            }
            let (queue, reconcile) = (runner.clone(), reconcile.clone());
            tokio::spawn(async move {
                let outcome = reconcile(key.clone()).await;
                let again = {
                    let mut state = queue.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.running.remove(&key);
                    let delay = match &outcome {
                        Ok(_) => {
                            state.failures.remove(&key);
                            None
                        }
                        Err(e) => {
                            let failures = state.failures.entry(key.clone()).or_default();
                            *failures += 1;
                            tracing::debug!(
                                "{name}: reconciling {key} failed ({failures} times): {e}"
                            );
                            Some(
                                Duration::from_millis(50)
                                    .saturating_mul(1 << (*failures).min(10))
                                    .min(Duration::from_secs(30)),
                            )
                        }
                    };
                    (state.dirty.remove(&key), delay)
                };
                match (again, outcome) {
                    ((true, _), _) => queue.add(&key),
                    ((false, Some(delay)), _) => queue.add_after(key, delay),
                    ((false, None), Ok(Action::RequeueAfter(delay))) => queue.add_after(key, delay),
                    _ => {}
                }
            });
        }
    });
    queue
}

impl<K> WatcherEvent<K> {
    /// The objects an event carries (all of them after a fresh list).
    pub fn into_objects(self) -> Vec<K> {
        match self {
            WatcherEvent::Restarted(all) => all,
            WatcherEvent::Applied(object) | WatcherEvent::Deleted(object) => vec![object],
        }
    }
}

/// The `namespace/name` key of an object.
pub fn key_of(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The triggers of a controller of pods: enqueues every object of kind `K` that changes and
/// the `K` that controls every pod that changes. Runs until the watches end.
pub async fn watch_owners_and_pods<K>(client: Client, queue: WorkQueue)
where
    K: Resource
        + Metadata<Ty = ObjectMeta>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + Send
        + 'static,
{
    let mut owners = watcher(client.api::<K>(None), ListParams::default());
    let mut pods = client.shared_watch::<Pod>();
    loop {
        tokio::select! {
            Some(event) = owners.recv() => {
                for owner in event.into_objects() {
                    queue.add(&key_of(owner.metadata()));
                }
            }
            Some(event) = pods.recv() => {
                for pod in event.into_objects() {
                    let owner = super::replicaset::controller_of(&pod.metadata).filter(|o| o.kind == K::KIND);
                    if let Some(owner) = owner {
                        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
                        queue.add(&format!("{namespace}/{}", owner.name));
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

    #[tokio::test]
    async fn duplicates_collapse_and_errors_retry() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let queue = spawn("test", move |key: String| {
            let runs = counted.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if key == "flaky" && n < 2 {
                    return Err("not yet".into());
                }
                Ok(Action::AwaitChange)
            }
        });
        for _ in 0..10 {
            queue.add("a");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "ten adds of one key before it ran are one reconcile"
        );
        runs.store(0, Ordering::SeqCst);
        queue.add("flaky");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "an error retries with back-off until it succeeds"
        );
    }
}
