//! Garbage collection through ownerReferences (background propagation): when an owner is
//! deleted, what it owned is deleted (a Deployment's ReplicaSets, whose deletion in turn takes
//! their pods). Orphan propagation is done by the API server at the owner's deletion (it marks
//! the owner and removes the references first); foreground is treated as background.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::client::{watcher, Client, DeleteParams, ListParams, WatcherEvent};

/// Owner uids by kind, as last seen.
#[derive(Default)]
struct Owners {
    replica_sets: HashSet<String>,
    deployments: HashSet<String>,
    daemon_sets: HashSet<String>,
    jobs: HashSet<String>,
    synced: (bool, bool, bool, bool),
}

impl Owners {
    /// Whether the object names an owner of a kind we track that no longer exists.
    fn orphaned(&self, meta: &ObjectMeta) -> bool {
        meta.deletion_timestamp.is_none()
            && meta
                .owner_references
                .iter()
                .flatten()
                .any(|r| match r.kind.as_str() {
                    "ReplicaSet" => self.synced.0 && !self.replica_sets.contains(&r.uid),
                    "Deployment" => self.synced.1 && !self.deployments.contains(&r.uid),
                    "DaemonSet" => self.synced.2 && !self.daemon_sets.contains(&r.uid),
                    "Job" => self.synced.3 && !self.jobs.contains(&r.uid),
                    _ => false,
                })
    }
}

pub async fn run(client: Client) {
    let mut sets = watcher(client.api::<ReplicaSet>(None), ListParams::default());
    let mut deployments = watcher(client.api::<Deployment>(None), ListParams::default());
    let mut daemon_sets = watcher(client.api::<DaemonSet>(None), ListParams::default());
    let mut jobs = watcher(client.api::<Job>(None), ListParams::default());
    let mut owners = Owners::default();
    loop {
        let namespace = tokio::select! {
            Some(event) = sets.recv() => match event {
                WatcherEvent::Restarted(all) => {
                    owners.replica_sets = all.iter().filter_map(|rs| rs.metadata.uid.clone()).collect();
                    owners.synced.0 = true;
                    None
                }
                WatcherEvent::Applied(rs) => {
                    owners.replica_sets.extend(rs.metadata.uid.clone());
                    continue;
                }
                WatcherEvent::Deleted(rs) => {
                    rs.metadata.uid.as_ref().map(|uid| owners.replica_sets.remove(uid));
                    rs.metadata.namespace.clone()
                }
            },
            Some(event) = deployments.recv() => match event {
                WatcherEvent::Restarted(all) => {
                    owners.deployments = all.iter().filter_map(|d| d.metadata.uid.clone()).collect();
                    owners.synced.1 = true;
                    None
                }
                WatcherEvent::Applied(d) => {
                    owners.deployments.extend(d.metadata.uid.clone());
                    continue;
                }
                WatcherEvent::Deleted(d) => {
                    d.metadata.uid.as_ref().map(|uid| owners.deployments.remove(uid));
                    d.metadata.namespace.clone()
                }
            },
            Some(event) = daemon_sets.recv() => match event {
                WatcherEvent::Restarted(all) => {
                    owners.daemon_sets = all.iter().filter_map(|d| d.metadata.uid.clone()).collect();
                    owners.synced.2 = true;
                    None
                }
                WatcherEvent::Applied(d) => {
                    owners.daemon_sets.extend(d.metadata.uid.clone());
                    continue;
                }
                WatcherEvent::Deleted(d) => {
                    d.metadata.uid.as_ref().map(|uid| owners.daemon_sets.remove(uid));
                    d.metadata.namespace.clone()
                }
            },
            Some(event) = jobs.recv() => match event {
                WatcherEvent::Restarted(all) => {
                    owners.jobs = all.iter().filter_map(|j| j.metadata.uid.clone()).collect();
                    owners.synced.3 = true;
                    None
                }
                WatcherEvent::Applied(j) => {
                    owners.jobs.extend(j.metadata.uid.clone());
                    continue;
                }
                WatcherEvent::Deleted(j) => {
                    j.metadata.uid.as_ref().map(|uid| owners.jobs.remove(uid));
                    j.metadata.namespace.clone()
                }
            },
            else => return,
        };
        collect(&client, &owners, namespace.as_deref()).await;
    }
}

/// Deletes, in `namespace` (or everywhere), the ReplicaSets and pods whose owner is gone.
async fn collect(client: &Client, owners: &Owners, namespace: Option<&str>) {
    if let Ok(list) = client
        .api::<ReplicaSet>(namespace)
        .list(&ListParams::default())
        .await
    {
        for rs in list
            .items
            .into_iter()
            .filter(|rs| owners.orphaned(&rs.metadata))
        {
            let api = client.api::<ReplicaSet>(rs.metadata.namespace.as_deref());
            let _ = api
                .delete(
                    rs.metadata.name.as_deref().unwrap_or(""),
                    &DeleteParams {
                        uid: rs.metadata.uid.clone(),
                        ..Default::default()
                    },
                )
                .await;
        }
    }
    if let Ok(list) = client
        .api::<Pod>(namespace)
        .list(&ListParams::default())
        .await
    {
        for pod in list
            .items
            .into_iter()
            .filter(|p| owners.orphaned(&p.metadata))
        {
            let api = client.api::<Pod>(pod.metadata.namespace.as_deref());
            let _ = api
                .delete(
                    pod.metadata.name.as_deref().unwrap_or(""),
                    &DeleteParams {
                        uid: pod.metadata.uid.clone(),
                        ..Default::default()
                    },
                )
                .await;
        }
    }
}
