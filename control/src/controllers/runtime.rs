//! Controllers on kube-runtime: [`run`] drives a reconciler with `kube::runtime::Controller`
//! (its reflector is the cache the reconciler reads the object from; de-duplication, one
//! reconcile per object at a time, at most [`queue::MAX_CONCURRENT`] at once, requeues) and adds
//! what Shoal's controllers rely on and kube leaves to the caller: a reconcile that panics is
//! caught and retried like an error, and errors back off per object (50 ms doubling to 30 s,
//! reset by a success), as in [`queue`].
//!
//! Controllers move here from [`queue`] one by one (the namespace controller first); a
//! controller here receives the object itself, not a key to fetch.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use kube::runtime::controller::{self, Controller};
use kube::runtime::watcher;

use super::queue::{self, Action, ObjectKey};
use super::Error;
use crate::client::{ApiObject, Client};

struct Context<F> {
    name: &'static str,
    reconcile: F,
    /// Consecutive failures per object, for the back-off.
    failures: Mutex<HashMap<ObjectKey, u32>>,
}

impl<F> Context<F> {
    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reconciles every object of kind `K` (cluster-wide) with `reconcile` until the task is
/// dropped.
pub async fn run<K, F, Fut>(name: &'static str, client: &Client, reconcile: F)
where
    K: ApiObject,
    F: Fn(Arc<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let api = kube::Api::<K>::all(client.kube().clone());
    let context = Arc::new(Context {
        name,
        reconcile,
        failures: Mutex::default(),
    });
    let concurrency = u16::try_from(queue::MAX_CONCURRENT).unwrap_or(u16::MAX);
    Controller::new(api, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(concurrency))
        .run(reconcile_once, error_policy, context)
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile_once<K, F, Fut>(
    object: Arc<K>,
    context: Arc<Context<F>>,
) -> Result<controller::Action, Error>
where
    K: ApiObject,
    F: Fn(Arc<K>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let key = ObjectKey::of(object.metadata());
    let work = (context.reconcile)(object);
    let action = match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result?,
        Err(panic) => return Err(Error::Panicked(queue::panic_message(&panic).to_string())),
    };
    context.failures().remove(&key);
    Ok(match action {
        Action::AwaitChange => controller::Action::await_change(),
        Action::RequeueAfter(delay) => controller::Action::requeue(delay),
    })
}

fn error_policy<K, F>(object: Arc<K>, error: &Error, context: Arc<Context<F>>) -> controller::Action
where
    K: ApiObject,
{
    let key = ObjectKey::of(object.metadata());
    let count = {
        let mut failures = context.failures();
        let count = failures.entry(key.clone()).or_default();
        *count = count.saturating_add(1);
        *count
    };
    let name = context.name;
    if matches!(error, Error::Panicked(_)) {
        tracing::error!("{name}: reconciling {key} panicked ({count} times): {error}");
    } else {
        tracing::debug!("{name}: reconciling {key} failed ({count} times): {error}");
    }
    controller::Action::requeue(queue::backoff(count))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;
    use crate::server::ApiServer;

    #[tokio::test]
    async fn a_panicking_or_failing_reconcile_is_retried_and_wedges_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RedbStore::open(&dir.path().join("db")).unwrap();
        let server = ApiServer::new(Arc::new(store)).await.unwrap();
        let client = Client::in_process(server.router());
        let maps = client.api::<ConfigMap>(Some("default"));
        for name in ["poisoned", "flaky", "fine"] {
            let map: ConfigMap =
                serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
            maps.create(&map).await.unwrap();
        }
        let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let (counted, finished) = (runs.clone(), done.clone());
        let controller = tokio::spawn(async move {
            run::<ConfigMap, _, _>("test", &client, move |map| {
                let (runs, done) = (counted.clone(), finished.clone());
                async move {
                    let name = map.metadata.name.clone().unwrap_or_default();
                    let n = {
                        let mut runs = runs.lock().unwrap();
                        let n = runs.entry(name.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    match (name.as_str(), n) {
                        ("poisoned", 1) => panic!("poisoned object"),
                        ("flaky", 1 | 2) => Err(Error::Vanished("flaky".into())),
                        _ => {
                            done.fetch_add(1, Ordering::SeqCst);
                            Ok(Action::AwaitChange)
                        }
                    }
                }
            })
            .await
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "every object reconciled within 10 s: {:?}",
                runs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let runs = runs.lock().unwrap().clone();
        assert_eq!(runs["poisoned"], 2, "the panic was retried once");
        assert_eq!(runs["flaky"], 3, "two errors, then success");
        assert_eq!(runs["fine"], 1);
        controller.abort();
    }
}
