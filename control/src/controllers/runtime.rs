//! The reconcile runtime: every per-object controller is a [`Reconciler`], a
//! `kube::runtime::Controller` (its scheduler de-duplicates, runs one reconcile per object at a
//! time and at most [`MAX_CONCURRENT`] at once, and requeues) fed by the process's shared
//! watches ([`Client::shared_watch`]: one watch and one decode per kind for the scheduler and
//! every controller), plus what Shoal's controllers rely on and kube leaves to the caller:
//!
//! - a reconcile that panics is caught and retried like an error, so its object never stays
//!   "running" (kube would lose the whole controller);
//! - errors back off per object (50 ms doubling to 30 s, reset by a success);
//! - [`Reconciler::run_by_key`]: kube never reconciles an object that is gone from its cache,
//!   but some controllers must clean up after one (the endpoints of a deleted Service). A
//!   trigger for an object the cache no longer has is checked against the API and, when the
//!   object is really gone, reconciled by key.
//!
//! Triggers: the object's own changes, [`Reconciler::owns`] (a child's change or deletion
//! wakes the object that controls it), [`Reconciler::watches`] (any mapping), and
//! [`Reconciler::reconcile_all_on_change_of`]. Time-driven work asks for
//! [`Action::RequeueAfter`]: nothing polls.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, Stream};
use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use super::Error;
use crate::client::{ApiObject, Client, WatcherEvent};

/// What a reconcile asks for next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next change of a watched object.
    AwaitChange,
    /// Look again after this long (waiting on something no watch reports, such as time).
    RequeueAfter(Duration),
}

/// The reconciles one controller runs at once; more objects wait in the queue.
pub const MAX_CONCURRENT: u16 = 16;

/// Back-off after the n-th consecutive failure of an object: 50 ms doubling, at most 30 s.
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

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The `K` that controls an object (its controller owner reference), as a trigger.
pub fn controller_ref<K: ApiObject>(meta: &ObjectMeta) -> Option<ObjectRef<K>> {
    let owner = super::controller_of(meta).filter(|o| o.kind == K::KIND)?;
    let reference = ObjectRef::new(&owner.name);
    Some(match meta.namespace.as_deref() {
        Some(namespace) => reference.within(namespace),
        None => reference,
    })
}

/// Every `K` in the cache that lives in `namespace`, as triggers.
pub fn all_in_namespace<K: ApiObject>(store: &Store<K>, namespace: &str) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .filter(|o| o.metadata().namespace.as_deref() == Some(namespace))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

type Reconcile<K> = dyn Fn(Arc<K>) -> BoxFuture<'static, Result<Action, Error>> + Send + Sync;
type ReconcileKey = dyn Fn(ObjectKey) -> BoxFuture<'static, Result<Action, Error>> + Send + Sync;

/// A controller of kind `K` being assembled; [`Reconciler::run`] or
/// [`Reconciler::run_by_key`] runs it until its task is dropped.
pub struct Reconciler<K: ApiObject> {
    name: &'static str,
    client: Client,
    controller: Controller<K>,
}

impl<K: ApiObject> Reconciler<K> {
    /// A controller of every `K` in the cluster, its cache kept from the client's shared watch.
    pub fn new(name: &'static str, client: &Client) -> Self {
        let (reader, writer) = reflector::store::<K>();
        let own = reflect(client.shared_watch::<K>(), writer);
        Self::of_stream(name, client, own, reader)
    }

    /// Like [`Reconciler::new`], but a change of a `K` wakes it only when `key` of it
    /// changed (the cache still takes every change). The quota controller so ignores the
    /// status writes of admission's charges, as Kubernetes' does: each would otherwise cost
    /// a recount listing everything the quota counts.
    pub fn new_on_change_of(
        name: &'static str,
        client: &Client,
        key: fn(&K) -> Option<u64>,
    ) -> Self {
        use kube::runtime::WatchStreamExt;
        let (reader, writer) = reflector::store::<K>();
        let own = reflect(client.shared_watch::<K>(), writer)
            .predicate_filter(key, kube::runtime::PredicateConfig::default());
        Self::of_stream(name, client, own, reader)
    }

    fn of_stream(
        name: &'static str,
        client: &Client,
        own: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
        reader: Store<K>,
    ) -> Self {
        let controller = Controller::for_stream(own, reader)
            .with_config(controller::Config::default().concurrency(MAX_CONCURRENT));
        Self {
            name,
            client: client.clone(),
            controller,
        }
    }

    /// The cache of `K`s (for mappers that wake several).
    pub fn store(&self) -> Store<K> {
        self.controller.store()
    }

    /// A `C` that changes or is deleted wakes the `K` that controls it.
    pub fn owns<C: ApiObject>(self) -> Self {
        self.watches::<C, _>(|child| controller_ref::<K>(child.metadata()))
    }

    /// A `C` that changes or is deleted wakes the `K`s `map` names.
    pub fn watches<C, I>(mut self, map: impl Fn(C) -> I + Send + Sync + 'static) -> Self
    where
        C: ApiObject,
        I: IntoIterator<Item = ObjectRef<K>> + 'static,
        I::IntoIter: Send,
    {
        let changes = objects(self.client.shared_watch::<C>());
        self.controller = self.controller.watches_stream(changes, map);
        self
    }

    /// A `C` that is deleted, or changes so that `released` says it gives something back,
    /// wakes the `K`s `map` names. (Quota recounts: what is created was charged at
    /// admission, so only what goes away needs a recount.)
    pub fn watches_releases<C, I>(
        mut self,
        released: impl Fn(&C) -> bool + Send + 'static,
        map: impl Fn(C) -> I + Send + Sync + 'static,
    ) -> Self
    where
        C: ApiObject,
        I: IntoIterator<Item = ObjectRef<K>> + 'static,
        I::IntoIter: Send,
    {
        let changes = ReceiverStream::new(self.client.shared_watch::<C>()).flat_map(move |event| {
            let objects = match event {
                WatcherEvent::Deleted(object) => vec![object],
                WatcherEvent::Applied(object) if released(&object) => vec![object],
                _ => Vec::new(),
            };
            stream::iter(objects.into_iter().map(Ok))
        });
        self.controller = self.controller.watches_stream(changes, map);
        self
    }

    /// Any change of an `O` (a fresh list counts once) wakes every `K`.
    pub fn reconcile_all_on_change_of<O: ApiObject>(mut self) -> Self {
        let changes = ReceiverStream::new(self.client.shared_watch::<O>()).map(|_| ());
        self.controller = self.controller.reconcile_all_on(changes);
        self
    }

    /// Runs `reconcile` with each object from the cache that needs it.
    pub async fn run<F, Fut>(self, reconcile: F)
    where
        F: Fn(Arc<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, Error>> + Send + 'static,
    {
        let reconcile: Arc<Reconcile<K>> = Arc::new(move |object| reconcile(object).boxed());
        self.drive(reconcile, None).await
    }

    /// Runs `reconcile` with the key of each object that needs it, including objects that
    /// were deleted (confirmed gone through the API), so it can clean up after them.
    pub async fn run_by_key<F, Fut>(self, reconcile: F)
    where
        F: Fn(ObjectKey) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, Error>> + Send + 'static,
    {
        let by_key: Arc<ReconcileKey> = Arc::new(move |key| reconcile(key).boxed());
        let of_key = by_key.clone();
        let by_object: Arc<Reconcile<K>> =
            Arc::new(move |object: Arc<K>| of_key(ObjectKey::of(object.metadata())));
        self.drive(by_object, Some(by_key)).await
    }

    async fn drive(self, reconcile: Arc<Reconcile<K>>, gone: Option<Arc<ReconcileKey>>) {
        let Self {
            name,
            client,
            controller,
        } = self;
        let context = Arc::new(Context {
            name,
            reconcile,
            failures: Mutex::default(),
        });
        let results = controller.run(reconcile_once, error_policy, context);
        let mut results = std::pin::pin!(results);
        // Clean-ups of deleted objects; dropped (aborted) with this future.
        let mut clean_ups = JoinSet::new();
        let mut cleaning: HashSet<ObjectKey> = HashSet::new();
        loop {
            tokio::select! {
                result = results.next() => match result {
                    None => return,
                    Some(Err(controller::Error::ObjectNotFound(reference))) => {
                        let Some(gone) = &gone else { continue };
                        let key = ObjectKey::new(
                            reference.namespace.as_deref().unwrap_or_default(),
                            &reference.name,
                        );
                        if cleaning.insert(key.clone()) {
                            let namespace = Some(key.namespace.as_str()).filter(|n| !n.is_empty());
                            let api = client.api::<K>(namespace);
                            clean_ups.spawn(clean_up(name, api, gone.clone(), key));
                        }
                    }
                    Some(_) => {}
                },
                Some(done) = clean_ups.join_next() => {
                    if let Ok(key) = done {
                        cleaning.remove(&key);
                    }
                }
            }
        }
    }
}

/// Reconciles a deleted object by key once the API confirms it is gone (a trigger can also
/// name an object the cache has not seen yet: that one is left to its own watch event);
/// retried with back-off a few times.
async fn clean_up<K: ApiObject>(
    name: &'static str,
    api: crate::client::Api<K>,
    reconcile: Arc<ReconcileKey>,
    key: ObjectKey,
) -> ObjectKey {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        let outcome = match api.get_opt(&key.name).await {
            Ok(Some(_)) => return key,
            Ok(None) => AssertUnwindSafe(reconcile(key.clone()))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(Error::Panicked(panic_message(&panic).into()))),
            Err(e) => Err(Error::Api(e)),
        };
        match outcome {
            Ok(_) => return key,
            Err(e) => {
                tracing::debug!("{name}: cleaning up after {key} failed ({attempt} times): {e}");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    key
}

/// The objects of a shared watch (a fresh list yields each; deletions included), as a
/// controller's trigger stream.
fn objects<K: ApiObject>(
    feed: mpsc::Receiver<WatcherEvent<K>>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    ReceiverStream::new(feed)
        .flat_map(|event| stream::iter(event.into_objects().into_iter().map(Ok)))
}

/// A shared watch kept in `writer`'s cache as it passes, as the controller's own trigger
/// stream (a deleted object triggers too, after it left the cache).
fn reflect<K: ApiObject>(
    feed: mpsc::Receiver<WatcherEvent<K>>,
    mut writer: reflector::store::Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    ReceiverStream::new(feed).flat_map(move |event| {
        let objects = match event {
            WatcherEvent::Restarted(all) => {
                writer.apply_watcher_event(&watcher::Event::Init);
                let mut kept = Vec::with_capacity(all.len());
                for object in all {
                    let event = watcher::Event::InitApply(object);
                    writer.apply_watcher_event(&event);
                    if let watcher::Event::InitApply(object) = event {
                        kept.push(object);
                    }
                }
                writer.apply_watcher_event(&watcher::Event::InitDone);
                kept
            }
            WatcherEvent::Applied(object) => {
                let event = watcher::Event::Apply(object);
                writer.apply_watcher_event(&event);
                match event {
                    watcher::Event::Apply(object) => vec![object],
                    _ => Vec::new(),
                }
            }
            WatcherEvent::Deleted(object) => {
                let event = watcher::Event::Delete(object);
                writer.apply_watcher_event(&event);
                match event {
                    watcher::Event::Delete(object) => vec![object],
                    _ => Vec::new(),
                }
            }
        };
        stream::iter(objects.into_iter().map(Ok))
    })
}

struct Context<K> {
    name: &'static str,
    reconcile: Arc<Reconcile<K>>,
    /// Consecutive failures per object, for the back-off.
    failures: Mutex<HashMap<ObjectKey, u32>>,
}

impl<K> Context<K> {
    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn reconcile_once<K: ApiObject>(
    object: Arc<K>,
    context: Arc<Context<K>>,
) -> Result<controller::Action, Error> {
    let key = ObjectKey::of(object.metadata());
    let work = (context.reconcile)(object);
    let action = match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result?,
        Err(panic) => return Err(Error::Panicked(panic_message(&panic).to_string())),
    };
    context.failures().remove(&key);
    Ok(match action {
        Action::AwaitChange => controller::Action::await_change(),
        Action::RequeueAfter(delay) => controller::Action::requeue(delay),
    })
}

fn error_policy<K: ApiObject>(
    object: Arc<K>,
    error: &Error,
    context: Arc<Context<K>>,
) -> controller::Action {
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
    controller::Action::requeue(backoff(count))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;
    use crate::client::DeleteParams;
    use crate::server::ApiServer;

    async fn client() -> (tempfile::TempDir, Client) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RedbStore::open(&dir.path().join("db")).unwrap();
        let server = ApiServer::new(Arc::new(store)).await.unwrap();
        (dir, Client::in_process(server.router()))
    }

    fn config_map(name: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
    }

    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what} within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_panicking_or_failing_reconcile_is_retried_and_wedges_nothing() {
        let (_dir, client) = client().await;
        let maps = client.api::<ConfigMap>(Some("default"));
        for name in ["poisoned", "flaky", "fine"] {
            maps.create(&config_map(name)).await.unwrap();
        }
        let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let done = Arc::new(AtomicUsize::new(0));
        let (counted, finished) = (runs.clone(), done.clone());
        let reconciler = Reconciler::<ConfigMap>::new("test", &client);
        let controller = tokio::spawn(reconciler.run(move |map| {
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
        }));
        wait_until("every object reconciled", || {
            done.load(Ordering::SeqCst) >= 3
        })
        .await;
        let runs = runs.lock().unwrap().clone();
        assert_eq!(runs["poisoned"], 2, "the panic was retried once");
        assert_eq!(runs["flaky"], 3, "two errors, then success");
        assert_eq!(runs["fine"], 1);
        controller.abort();
    }

    /// Children wake their controller, a deleted object is reconciled by key once it is gone,
    /// and a requeue comes back by itself.
    #[tokio::test]
    async fn children_deletions_and_requeues_trigger_reconciles() {
        let (_dir, client) = client().await;
        let maps = client.api::<ConfigMap>(Some("default"));
        let parent = maps.create(&config_map("parent")).await.unwrap();
        let calls: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let seen = calls.clone();
        let reader = client.clone();
        // Config maps own config maps here: the simplest kind the test server serves.
        let reconciler = Reconciler::<ConfigMap>::new("test", &client).owns::<ConfigMap>();
        let controller = tokio::spawn(reconciler.run_by_key(move |key| {
            let (seen, reader) = (seen.clone(), reader.clone());
            async move {
                let maps = reader.api::<ConfigMap>(Some(&key.namespace));
                let exists = maps.get_opt(&key.name).await?.is_some();
                seen.lock().unwrap().push((key.name.clone(), exists));
                Ok(if key.name == "ticking" {
                    Action::RequeueAfter(Duration::from_millis(100))
                } else {
                    Action::AwaitChange
                })
            }
        }));
        let count = |name: &str, exists: bool| {
            calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(n, e)| n == name && *e == exists)
                .count()
        };
        wait_until("the parent reconciled", || count("parent", true) >= 1).await;
        let before = count("parent", true);
        let mut child = config_map("child");
        child.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "parent".into(),
                uid: parent.metadata.uid.clone().unwrap(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        maps.create(&child).await.unwrap();
        wait_until("the child's creation woke its parent", || {
            count("parent", true) > before
        })
        .await;
        maps.delete("parent", &DeleteParams::default())
            .await
            .unwrap();
        wait_until("the deleted parent reconciled by key", || {
            count("parent", false) >= 1
        })
        .await;
        maps.create(&config_map("ticking")).await.unwrap();
        wait_until("a requeue came back three times", || {
            count("ticking", true) >= 3
        })
        .await;
        controller.abort();
    }
}
