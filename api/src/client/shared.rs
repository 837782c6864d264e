//! Shared watches: one cluster-wide watch per kind for every component of a process that uses
//! the same [`Client`] (its clones), in the manner of client-go's shared informers. The
//! objects are decoded once and handed to each subscriber, who sees exactly what a
//! [`watcher`] of its own would show: `Restarted` with the current set (from the shared
//! cache when it joins late), then `Applied`/`Deleted` in order.
//!
//! Why: the scheduler and a controller manager in one process each watching pods meant every
//! pod change was encoded and decoded seven times over; now it is once.
//!
//! A subscriber that stops reading slows the others (the feed waits for it), as one slow
//! informer handler does in client-go: subscribers are expected to hand work to a queue.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::{watcher, Client, ListParams, WatcherEvent};

/// A kind of API object as the client handles it: typed by k8s-openapi, known to kube-rs,
/// decodable, and cheap enough to clone to hand one watch to many.
pub trait ApiObject:
    kube::Resource<DynamicType = ()>
    + k8s_openapi::Resource<Scope: 'static>
    + Metadata<Ty = ObjectMeta>
    + serde::Serialize
    + DeserializeOwned
    + Clone
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> ApiObject for K where
    K: kube::Resource<DynamicType = ()>
        + k8s_openapi::Resource<Scope: 'static>
        + Metadata<Ty = ObjectMeta>
        + serde::Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// The shared watches of a client, by kind.
pub(crate) struct SharedWatches {
    by_kind: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// Cancelled when the last clone of the client is dropped: the feeds stop with it (they
    /// hold the kube client, not this, so they do not keep themselves alive).
    _stop_feeds: tokio_util::sync::DropGuard,
    feeds_stopped: tokio_util::sync::CancellationToken,
}

impl Default for SharedWatches {
    fn default() -> Self {
        let token = tokio_util::sync::CancellationToken::new();
        Self {
            by_kind: Mutex::default(),
            feeds_stopped: token.clone(),
            _stop_feeds: token.drop_guard(),
        }
    }
}

/// One kind's feed: the current objects (once listed) and who is subscribed.
struct Feed<K> {
    state: Mutex<FeedState<K>>,
}

struct FeedState<K> {
    /// `None` until the first list arrives. Shared, so that readers of [`Client::cached`]
    /// take references rather than copies (a pod with its managed fields is kilobytes).
    cache: Option<HashMap<String, Arc<K>>>,
    subscribers: Vec<mpsc::Sender<WatcherEvent<K>>>,
}

fn key_of(meta: &ObjectMeta) -> String {
    cache_key(
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

fn cache_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl<K> WatcherEvent<K>
where
    K: Clone,
{
    fn duplicate(&self) -> Self {
        match self {
            WatcherEvent::Restarted(all) => WatcherEvent::Restarted(all.clone()),
            WatcherEvent::Applied(o) => WatcherEvent::Applied(o.clone()),
            WatcherEvent::Deleted(o) => WatcherEvent::Deleted(o.clone()),
        }
    }
}

impl Client {
    /// Ends the shared watches of this client and every clone of it (a control plane that
    /// stops; they also end when the last clone is dropped).
    pub fn stop_shared_watches(&self) {
        self.shared.feeds_stopped.cancel();
    }

    /// A cluster-wide watch of kind `K` shared with every other subscriber of this client
    /// (and its clones); the same events as `watcher::<K>(&client, default)`.
    pub fn shared_watch<K: ApiObject>(&self) -> mpsc::Receiver<WatcherEvent<K>> {
        let (tx, rx) = mpsc::channel(1024);
        self.join_feed(Some(tx));
        rx
    }

    /// Starts the shared watch of `K` (if no one has) only to keep its cache, which
    /// [`Client::cached`] and [`Client::cached_object`] read: for components that read
    /// objects they are not woken by.
    pub fn keep_cache_of<K: ApiObject>(&self) {
        self.join_feed::<K>(None);
    }

    fn join_feed<K: ApiObject>(&self, subscriber: Option<mpsc::Sender<WatcherEvent<K>>>) {
        let (feed, started) = {
            let mut by_kind = self
                .shared
                .by_kind
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match by_kind.get(&TypeId::of::<K>()) {
                Some(feed) => (
                    feed.clone()
                        .downcast::<Feed<K>>()
                        .expect("feeds are stored under their own type"),
                    true,
                ),
                None => {
                    let feed = Arc::new(Feed::<K> {
                        state: Mutex::new(FeedState {
                            cache: None,
                            subscribers: Vec::new(),
                        }),
                    });
                    by_kind.insert(TypeId::of::<K>(), feed.clone());
                    (feed, false)
                }
            }
        };
        if let Some(tx) = subscriber {
            let mut state = feed.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(cache) = &state.cache {
                let all = cache.values().map(|o| K::clone(o)).collect();
                // A new channel has room: this is its first message.
                let _ = tx.try_send(WatcherEvent::Restarted(all));
            }
            state.subscribers.push(tx);
        }
        if !started {
            let (kube, stopped) = (self.kube.clone(), self.shared.feeds_stopped.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = feed_from(kube, feed) => {}
                    _ = stopped.cancelled() => {}
                }
            });
        }
    }
}

impl Client {
    /// The objects of kind `K` that the shared watch holds and `keep` keeps, as client-go's
    /// listers read an informer's cache: as fresh as the watch (a subscriber woken by an
    /// event finds that event already here), and `None` until the shared watch of `K` has
    /// been started and has listed (callers then ask the API). The objects are shared with
    /// the cache, not copied: a controller reading a thousand pods at every change of one
    /// spent most of a busy cluster's CPU copying them.
    pub fn cached<K: ApiObject>(&self, keep: impl Fn(&K) -> bool) -> Option<Vec<Arc<K>>> {
        self.with_cache::<K, _>(|cache| cache.values().filter(|o| keep(o)).cloned().collect())
    }

    /// The object of kind `K` named `name` (in `namespace`, empty for cluster-scoped kinds)
    /// as the shared watch holds it: `Some(None)` when it holds none, `None` when the
    /// shared watch of `K` has not been started or has not listed (see [`Client::cached`]).
    pub fn cached_object<K: ApiObject>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Option<Arc<K>>> {
        self.with_cache::<K, _>(|cache| cache.get(&cache_key(namespace, name)).cloned())
    }

    fn with_cache<K: ApiObject, T>(
        &self,
        read: impl FnOnce(&HashMap<String, Arc<K>>) -> T,
    ) -> Option<T> {
        let feed = {
            let by_kind = (self.shared.by_kind.lock()).unwrap_or_else(|p| p.into_inner());
            by_kind.get(&TypeId::of::<K>())?.clone()
        };
        let feed = feed.downcast::<Feed<K>>().ok()?;
        let state = feed.state.lock().unwrap_or_else(|p| p.into_inner());
        state.cache.as_ref().map(read)
    }
}

/// Runs the kind's one watch and hands each event to every subscriber.
async fn feed_from<K: ApiObject>(kube: kube::Client, feed: Arc<Feed<K>>) {
    let mut events = watcher::watch::<K>(kube, ListParams::default());
    while let Some(event) = events.recv().await {
        // Cache and subscriber list change together, so a subscriber joining now gets either
        // this event or a snapshot that already holds it, never both or neither.
        let subscribers = {
            let mut state = feed.state.lock().unwrap_or_else(|p| p.into_inner());
            let cache = state.cache.get_or_insert_with(HashMap::new);
            match &event {
                WatcherEvent::Restarted(all) => {
                    *cache = all
                        .iter()
                        .map(|o| (key_of(o.metadata()), Arc::new(o.clone())))
                        .collect();
                }
                WatcherEvent::Applied(o) => {
                    cache.insert(key_of(o.metadata()), Arc::new(o.clone()));
                }
                WatcherEvent::Deleted(o) => {
                    cache.remove(&key_of(o.metadata()));
                }
            }
            state.subscribers.clone()
        };
        let mut gone = Vec::new();
        for (i, subscriber) in subscribers.iter().enumerate() {
            if subscriber.send(event.duplicate()).await.is_err() {
                gone.push(i);
            }
        }
        if !gone.is_empty() {
            let mut state = feed.state.lock().unwrap_or_else(|p| p.into_inner());
            state.subscribers.retain(|s| !s.is_closed());
        }
    }
}
