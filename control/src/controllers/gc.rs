//! Garbage collection through ownerReferences (background propagation): when an owner is
//! deleted, what it owned is deleted (a Deployment's ReplicaSets, whose deletion in turn takes
//! their pods; a CronJob's Jobs; the pods of DaemonSets and Jobs). Orphan propagation is done
//! by the API server at the owner's deletion (it marks the owner and removes the references
//! first); foreground is treated as background.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};

use crate::client::{watcher, Client, DeleteParams, ListParams, WatcherEvent};

/// The uids of the owners of each tracked kind, once that kind has been listed.
#[derive(Default)]
struct Owners(HashMap<&'static str, HashSet<String>>);

impl Owners {
    /// Whether the object names an owner of a tracked kind that no longer exists.
    fn orphaned(&self, meta: &ObjectMeta) -> bool {
        meta.deletion_timestamp.is_none()
            && meta.owner_references.iter().flatten().any(|r| {
                self.0
                    .get(r.kind.as_str())
                    .is_some_and(|uids| !uids.contains(&r.uid))
            })
    }

    /// Applies a watch event of kind `K`; returns the namespace to collect in after a deletion
    /// (or `Some(None)`, everywhere, after a fresh list).
    fn apply<K: Resource + Metadata<Ty = ObjectMeta>>(
        &mut self,
        event: WatcherEvent<K>,
    ) -> Option<Option<String>> {
        let uids = self.0.entry(K::KIND).or_default();
        match event {
            WatcherEvent::Restarted(all) => {
                *uids = all
                    .iter()
                    .filter_map(|o| o.metadata().uid.clone())
                    .collect();
                Some(None)
            }
            WatcherEvent::Applied(o) => {
                uids.extend(o.metadata().uid.clone());
                None
            }
            WatcherEvent::Deleted(o) => {
                o.metadata().uid.as_ref().map(|uid| uids.remove(uid));
                Some(o.metadata().namespace.clone())
            }
        }
    }
}

pub async fn run(client: Client) {
    let params = ListParams::default;
    let mut deployments = watcher(client.api::<Deployment>(None), params());
    let mut sets = watcher(client.api::<ReplicaSet>(None), params());
    let mut daemon_sets = watcher(client.api::<DaemonSet>(None), params());
    let mut cron_jobs = watcher(client.api::<CronJob>(None), params());
    let mut jobs = watcher(client.api::<Job>(None), params());
    let mut owners = Owners::default();
    loop {
        let collect_in = tokio::select! {
            Some(event) = deployments.recv() => owners.apply(event),
            Some(event) = sets.recv() => owners.apply(event),
            Some(event) = daemon_sets.recv() => owners.apply(event),
            Some(event) = cron_jobs.recv() => owners.apply(event),
            Some(event) = jobs.recv() => owners.apply(event),
            else => return,
        };
        if let Some(namespace) = collect_in {
            collect(&client, &owners, namespace.as_deref()).await;
        }
    }
}

/// Deletes, in `namespace` (or everywhere), the dependents whose owner is gone.
async fn collect(client: &Client, owners: &Owners, namespace: Option<&str>) {
    collect_kind::<ReplicaSet>(client, owners, namespace).await;
    collect_kind::<Job>(client, owners, namespace).await;
    collect_kind::<Pod>(client, owners, namespace).await;
}

async fn collect_kind<K>(client: &Client, owners: &Owners, namespace: Option<&str>)
where
    K: Resource
        + Metadata<Ty = ObjectMeta>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    let Ok(list) = client
        .api::<K>(namespace)
        .list(&ListParams::default())
        .await
    else {
        return;
    };
    for object in list
        .items
        .into_iter()
        .filter(|o| owners.orphaned(o.metadata()))
    {
        let meta = object.metadata();
        let api = client.api::<K>(meta.namespace.as_deref());
        let _ = api
            .delete(
                meta.name.as_deref().unwrap_or(""),
                &DeleteParams {
                    uid: meta.uid.clone(),
                    ..Default::default()
                },
            )
            .await;
    }
}
