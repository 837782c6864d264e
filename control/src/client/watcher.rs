//! A resilient watch, in kube-runtime's shape: list, then watch from the list's revision;
//! when the watch ends it resumes from the last revision seen, and when that revision is gone
//! (410) or anything fails it lists again. Consumers see `Restarted` with the full set after
//! every list, then `Applied`/`Deleted` per change, and keep a cache from that.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Api, ListParams, WatchEvent};

#[derive(Debug)]
pub enum WatcherEvent<K> {
    /// A fresh list: the whole current set, replacing whatever the consumer had.
    Restarted(Vec<K>),
    Applied(K),
    Deleted(K),
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

/// Starts watching; the task stops when the receiver is dropped.
pub fn watcher<K>(api: Api<K>, params: ListParams) -> mpsc::Receiver<WatcherEvent<K>>
where
    K: Resource + Metadata<Ty = ObjectMeta> + Serialize + DeserializeOwned + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1024);
    // The task ends as soon as the receiver is gone, even while its watch is idle (an idle
    // in-process watch would otherwise keep it, and the API server it holds, alive forever).
    let receiver_gone = tx.clone();
    let watch = async move {
        let mut backoff = Duration::from_millis(100);
        'relist: loop {
            let list = match api.list(&params).await {
                Ok(list) => list,
                Err(e) => {
                    tracing::debug!("watcher list {}: {e}", K::KIND);
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let mut revision = list.resource_version;
            if tx.send(WatcherEvent::Restarted(list.items)).await.is_err() {
                return;
            }
            loop {
                let mut stream = match api.watch(&params, &revision).await {
                    Ok(stream) => Box::pin(stream),
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        continue 'relist;
                    }
                };
                while let Some(event) = stream.next().await {
                    let event = match event {
                        Ok(WatchEvent::Added(o) | WatchEvent::Modified(o)) => {
                            revision = o.metadata().resource_version.clone().unwrap_or(revision);
                            WatcherEvent::Applied(o)
                        }
                        Ok(WatchEvent::Deleted(o)) => {
                            revision = o.metadata().resource_version.clone().unwrap_or(revision);
                            WatcherEvent::Deleted(o)
                        }
                        Ok(WatchEvent::Error(_)) | Err(_) => continue 'relist,
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                if tx.is_closed() {
                    return;
                }
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
