//! A resilient watch, in kube-runtime's shape, made by kube-runtime: `kube::runtime::watcher`
//! lists, watches from the list's revision, resumes from the last revision seen and lists again
//! when that revision is gone (410), with its default back-off on errors. Consumers see
//! `Restarted` with the full set after every list, then `Applied`/`Deleted` per change, and
//! keep a cache from that.

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use kube::runtime::watcher::{self as kube_watcher, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::mpsc;

use super::{ApiObject, Client, ListParams};
#[derive(Debug)]
pub enum WatcherEvent<K> {
    /// A fresh list: the whole current set, replacing whatever the consumer had.
    Restarted(Vec<K>),
    Applied(K),
    Deleted(K),
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

impl<K: Metadata<Ty = ObjectMeta>> WatcherEvent<K> {
    /// Applies the event to a cache of objects by `namespace/name` (cluster-scoped: `/name`).
    pub fn apply_to(self, objects: &mut std::collections::HashMap<String, K>) {
        let key = |meta: &ObjectMeta| {
            format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            )
        };
        match self {
            WatcherEvent::Restarted(all) => {
                *objects = all.into_iter().map(|o| (key(o.metadata()), o)).collect();
            }
            WatcherEvent::Applied(object) => {
                objects.insert(key(object.metadata()), object);
            }
            WatcherEvent::Deleted(object) => {
                objects.remove(&key(object.metadata()));
            }
        }
    }
}

/// Starts a cluster-wide watch of kind `K`; the task stops when the receiver is dropped.
pub fn watcher<K>(client: &Client, params: ListParams) -> mpsc::Receiver<WatcherEvent<K>>
where
    K: ApiObject,
{
    watch(client.kube().clone(), params)
}

/// [`watcher`] over a bare kube client.
pub(super) fn watch<K>(kube: kube::Client, params: ListParams) -> mpsc::Receiver<WatcherEvent<K>>
where
    K: ApiObject,
{
    let (tx, rx) = mpsc::channel(1024);
    let config = kube_watcher::Config {
        label_selector: params.label_selector,
        field_selector: params.field_selector,
        ..Default::default()
    };
    let api = kube::Api::<K>::all(kube);
    // The task ends as soon as the receiver is gone, even while its watch is idle (an idle
    // in-process watch would otherwise keep it, and the API server it holds, alive forever).
    let receiver_gone = tx.clone();
    let watch = async move {
        let mut events = std::pin::pin!(kube_watcher::watcher(api, config).default_backoff());
        // A relist arrives as Init, InitApply per object, InitDone: handed on as one set.
        let mut relisting: Vec<K> = Vec::new();
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(Event::Init) => {
                    relisting.clear();
                    continue;
                }
                Ok(Event::InitApply(object)) => {
                    relisting.push(object);
                    continue;
                }
                Ok(Event::InitDone) => WatcherEvent::Restarted(std::mem::take(&mut relisting)),
                Ok(Event::Apply(object)) => WatcherEvent::Applied(object),
                Ok(Event::Delete(object)) => WatcherEvent::Deleted(object),
                Err(e) => {
                    tracing::debug!("watcher {}: {e}", K::kind(&()));
                    continue;
                }
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = watch => {}
            _ = receiver_gone.closed() => {}
        }
    });
    rx
}
