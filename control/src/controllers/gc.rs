//! Garbage collection through ownerReferences (background propagation): when an owner is
//! deleted, the pods it owned are deleted. Orphan propagation is done by the API server at the
//! owner's deletion (it removes the references first); foreground is treated as background.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;

use crate::client::{watcher, Client, DeleteParams, ListParams, WatcherEvent};

pub async fn run(client: Client) {
    let mut sets = watcher(client.api::<ReplicaSet>(None), ListParams::default());
    let mut owners: HashSet<String> = HashSet::new();
    let mut synced = false;
    while let Some(event) = sets.recv().await {
        match event {
            WatcherEvent::Restarted(all) => {
                owners = all
                    .iter()
                    .filter_map(|rs| rs.metadata.uid.clone())
                    .collect();
                synced = true;
                collect(&client, &owners, None).await;
            }
            WatcherEvent::Applied(rs) => {
                owners.extend(rs.metadata.uid.clone());
            }
            WatcherEvent::Deleted(rs) => {
                if let Some(uid) = rs.metadata.uid.clone() {
                    owners.remove(&uid);
                    if synced {
                        collect(&client, &owners, rs.metadata.namespace.as_deref()).await;
                    }
                }
            }
        }
    }
}

/// Deletes pods (in `namespace`, or all) whose ReplicaSet owner no longer exists.
async fn collect(client: &Client, owners: &HashSet<String>, namespace: Option<&str>) {
    let Ok(pods) = client
        .api::<Pod>(namespace)
        .list(&ListParams::default())
        .await
    else {
        return;
    };
    for pod in pods.items {
        let orphaned = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.kind == "ReplicaSet" && !owners.contains(&r.uid));
        if orphaned && pod.metadata.deletion_timestamp.is_none() {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api = client.api::<Pod>(pod.metadata.namespace.as_deref());
            let _ = api
                .delete(
                    &name,
                    &DeleteParams {
                        uid: pod.metadata.uid.clone(),
                        ..Default::default()
                    },
                )
                .await;
        }
    }
}
