//! Garbage collection through ownerReferences.
//!
//! Background propagation (the default): when an owner is gone, what it owned is deleted (a
//! Deployment's ReplicaSets, whose deletion in turn takes their pods; a CronJob's Jobs; a
//! StatefulSet's pods and ControllerRevisions; the pods of DaemonSets, Jobs and
//! ReplicationControllers). Foreground: the API server leaves the owner in place, marked, with
//! the `foregroundDeletion` finalizer; the collector deletes its dependents (foreground too, so
//! the whole tree goes bottom-up) and removes the finalizer once none is left, which lets the
//! server delete the owner. Each step is driven by events, never a timer: an owner marked or
//! gone, a dependent deleted (pods, revisions and claims are watched only while an owner waits
//! in the foreground), or a retry a second after a step that failed. Orphan propagation is done by the API server at the owner's
//! deletion (it marks the owner and removes the references first).

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ReplicationController};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::{Metadata, Resource};
use serde_json::json;

use super::Error;
use crate::client::{Client, DeleteParams, ListParams, WatcherEvent};

use crate::api::object::FOREGROUND_FINALIZER;
use crate::api::resources::lookup_kind;

/// The uids of the owners of each tracked kind, once that kind has been listed, and the owners
/// being deleted in the foreground.
#[derive(Default)]
struct Owners {
    uids: HashMap<&'static str, HashSet<String>>,
    foreground: HashMap<String, Doomed>,
}

/// An owner waiting, in the foreground, for its dependents to go.
#[derive(Clone)]
struct Doomed {
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    uid: String,
}

impl Owners {
    /// Whether the object names an owner of a tracked kind that no longer exists.
    fn orphaned(&self, meta: &ObjectMeta) -> bool {
        meta.deletion_timestamp.is_none()
            && meta
                .owner_references
                .iter()
                .flatten()
                .any(|r| self.misses(r))
    }

    /// Whether the reference names an owner of a tracked kind that the cache does not know.
    fn misses(&self, reference: &OwnerReference) -> bool {
        self.uids
            .get(reference.kind.as_str())
            .is_some_and(|uids| !uids.contains(&reference.uid))
    }

    /// Applies a watch event of an owner kind: where to collect (see [`Owners::apply`]), and
    /// whether foreground deletions should take a step (an owner or dependent may have gone,
    /// or an owner was marked for foreground deletion).
    fn changed<K: Resource + Metadata<Ty = ObjectMeta>>(
        &mut self,
        event: WatcherEvent<K>,
    ) -> (Option<Option<String>>, bool) {
        let waiting = self.foreground.len();
        let collect_in = self.apply(event);
        (
            collect_in.clone(),
            collect_in.is_some() || self.foreground.len() != waiting,
        )
    }

    /// Applies a watch event of kind `K`; returns the namespace to collect in after a deletion
    /// (or `Some(None)`, everywhere, after a fresh list).
    fn apply<K: Resource + Metadata<Ty = ObjectMeta>>(
        &mut self,
        event: WatcherEvent<K>,
    ) -> Option<Option<String>> {
        let doomed = |o: &K| {
            let meta = o.metadata();
            let marked = meta.deletion_timestamp.is_some()
                && meta
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == FOREGROUND_FINALIZER);
            marked.then(|| Doomed {
                kind: K::KIND,
                namespace: meta.namespace.clone(),
                name: meta.name.clone().unwrap_or_default(),
                uid: meta.uid.clone().unwrap_or_default(),
            })
        };
        match &event {
            WatcherEvent::Restarted(all) => {
                self.foreground.retain(|_, d| d.kind != K::KIND);
                for d in all.iter().filter_map(doomed) {
                    self.foreground.insert(d.uid.clone(), d);
                }
            }
            WatcherEvent::Applied(o) => {
                if let Some(d) = doomed(o) {
                    self.foreground.insert(d.uid.clone(), d);
                }
            }
            WatcherEvent::Deleted(o) => {
                o.metadata()
                    .uid
                    .as_ref()
                    .map(|uid| self.foreground.remove(uid));
            }
        }
        let uids = self.uids.entry(K::KIND).or_default();
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
    // The owners' watches are the process's shared ones (the controllers read the same).
    let mut deployments = client.shared_watch::<Deployment>();
    let mut sets = client.shared_watch::<ReplicaSet>();
    let mut daemon_sets = client.shared_watch::<DaemonSet>();
    let mut cron_jobs = client.shared_watch::<CronJob>();
    let mut jobs = client.shared_watch::<Job>();
    let mut stateful_sets = client.shared_watch::<StatefulSet>();
    let mut controllers = client.shared_watch::<ReplicationController>();
    let mut owners = Owners::default();
    // Foreground deletions wait on dependents' deletions; the watches of the kinds no owner
    // watch here reports (pods, revisions, claims) are held only while one is in progress.
    let mut dependents: Option<DependentWatches> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let (collect_in, step) = tokio::select! {
            Some(event) = deployments.recv() => owners.changed(event),
            Some(event) = sets.recv() => owners.changed(event),
            Some(event) = daemon_sets.recv() => owners.changed(event),
            Some(event) = cron_jobs.recv() => owners.changed(event),
            Some(event) = jobs.recv() => owners.changed(event),
            Some(event) = stateful_sets.recv() => owners.changed(event),
            Some(event) = controllers.recv() => owners.changed(event),
            Some(()) = async { dependents.as_mut()?.gone().await } => (None, true),
            () = sleep_until_some(retry_at), if retry_at.is_some() => (None, true),
            else => return,
        };
        if let Some(namespace) = collect_in {
            collect(&client, &owners, namespace.as_deref()).await;
        }
        if owners.foreground.is_empty() {
            dependents = None;
            retry_at = None;
            continue;
        }
        if !step {
            continue;
        }
        if dependents.is_none() {
            dependents = Some(DependentWatches::new(&client));
        }
        retry_at = None;
        let doomed: Vec<Doomed> = owners.foreground.values().cloned().collect();
        for owner in doomed {
            if let Err(e) = delete_in_foreground(&client, &owner).await {
                tracing::debug!("foreground deletion of {} {}: {e}", owner.kind, owner.name);
                retry_at = Some(tokio::time::Instant::now() + FOREGROUND_RETRY);
            }
        }
    }
}

/// How long a foreground deletion step that failed waits before it is tried again.
const FOREGROUND_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sleeps until the moment, or forever without one.
async fn sleep_until_some(moment: Option<tokio::time::Instant>) {
    match moment {
        Some(moment) => tokio::time::sleep_until(moment).await,
        None => std::future::pending().await,
    }
}

/// The watches of dependents that owners in the foreground wait for and that no owner watch
/// reports.
struct DependentWatches {
    pods: tokio::sync::mpsc::Receiver<WatcherEvent<Pod>>,
    revisions: tokio::sync::mpsc::Receiver<WatcherEvent<ControllerRevision>>,
    claims: tokio::sync::mpsc::Receiver<WatcherEvent<PersistentVolumeClaim>>,
}

impl DependentWatches {
    fn new(client: &Client) -> Self {
        Self {
            pods: client.shared_watch(),
            revisions: client.shared_watch(),
            claims: client.shared_watch(),
        }
    }

    /// Waits until a dependent may have gone: a deletion, or a relist (which may hide one).
    /// `None` once the feeds have stopped.
    async fn gone(&mut self) -> Option<()> {
        fn gone<K>(event: WatcherEvent<K>) -> bool {
            !matches!(event, WatcherEvent::Applied(_))
        }
        loop {
            let gone = tokio::select! {
                event = self.pods.recv() => gone(event?),
                event = self.revisions.recv() => gone(event?),
                event = self.claims.recv() => gone(event?),
            };
            if gone {
                return Some(());
            }
        }
    }
}

/// The kinds that have owners.
macro_rules! for_each_dependent_kind {
    ($f:ident, $($arg:expr),*) => {{
        $f::<ReplicaSet>($($arg),*).await;
        $f::<ReplicationController>($($arg),*).await;
        $f::<Job>($($arg),*).await;
        $f::<Pod>($($arg),*).await;
        $f::<ControllerRevision>($($arg),*).await;
        $f::<PersistentVolumeClaim>($($arg),*).await;
    }};
}

/// One step of a foreground deletion: deletes the owner's remaining dependents, or, when none
/// is left, removes the finalizer so the API server deletes the owner.
async fn delete_in_foreground(client: &Client, owner: &Doomed) -> Result<(), Error> {
    let mut remaining = 0;
    for_each_dependent_kind!(delete_dependents, client, owner, &mut remaining);
    if remaining > 0 {
        return Ok(());
    }
    let resource = crate::api::resources::RESOURCES
        .iter()
        .find(|r| r.kind == owner.kind)
        .ok_or_else(|| Error::UnknownKind(owner.kind.to_string()))?;
    let path = resource.item_path(owner.namespace.as_deref(), &owner.name);
    let current = client
        .json(http::Method::GET, &path, "application/json", None)
        .await?;
    if current.pointer("/metadata/uid").and_then(|u| u.as_str()) != Some(owner.uid.as_str()) {
        return Ok(());
    }
    let finalizers: Vec<String> = current
        .pointer("/metadata/finalizers")
        .and_then(|f| serde_json::from_value::<Vec<String>>(f.clone()).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != FOREGROUND_FINALIZER)
        .collect();
    let body = json!({"metadata": {"finalizers": finalizers}});
    client
        .json(
            http::Method::PATCH,
            &path,
            "application/merge-patch+json",
            Some(&body),
        )
        .await
        .map(drop)
        .map_err(Error::from)
}

/// Deletes (in the foreground) the objects of kind `K` that `owner` owns, counting those that
/// still exist.
async fn delete_dependents<K>(client: &Client, owner: &Doomed, remaining: &mut usize)
where
    K: crate::client::ApiObject,
{
    let api = client.api::<K>(owner.namespace.as_deref());
    let Ok(list) = api.list(&ListParams::default()).await else {
        *remaining += 1;
        return;
    };
    for object in list.items {
        let meta = object.metadata();
        let owned = meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == owner.uid);
        if !owned {
            continue;
        }
        *remaining += 1;
        if meta.deletion_timestamp.is_none() {
            let params = DeleteParams {
                uid: meta.uid.clone(),
                propagation_policy: (K::KIND != "Pod").then_some("Foreground"),
                ..Default::default()
            };
            let _ = api
                .delete(meta.name.as_deref().unwrap_or_default(), &params)
                .await;
        }
    }
}

/// Deletes, in `namespace` (or everywhere), the dependents whose owner is gone.
async fn collect(client: &Client, owners: &Owners, namespace: Option<&str>) {
    for_each_dependent_kind!(collect_kind, client, owners, namespace);
}

/// Whether an owner the cache misses is really gone. The owners' cache can lag behind a fresh
/// list of dependents (a Deployment created a moment ago, whose ReplicaSet is already listed):
/// as Kubernetes' collector does, each missing owner is looked up in the API before its
/// dependent is deleted. Anything but a clear answer (404, or a namesake with another uid)
/// keeps the dependent.
async fn owner_confirmed_gone(client: &Client, owners: &Owners, meta: &ObjectMeta) -> bool {
    for reference in meta.owner_references.iter().flatten() {
        if !owners.misses(reference) {
            continue;
        }
        let Some(resource) = lookup_kind(&reference.api_version, &reference.kind) else {
            continue;
        };
        let path = match meta.namespace.as_deref() {
            Some(ns) if resource.namespaced => format!(
                "{}/namespaces/{ns}/{}/{}",
                resource.group_version_path(),
                resource.plural,
                reference.name
            ),
            _ => format!(
                "{}/{}/{}",
                resource.group_version_path(),
                resource.plural,
                reference.name
            ),
        };
        match client
            .json(http::Method::GET, &path, "application/json", None)
            .await
        {
            Ok(owner) if owner["metadata"]["uid"] != reference.uid.as_str() => return true,
            Err(e) if e.is_not_found() => return true,
            _ => {}
        }
    }
    false
}

async fn collect_kind<K>(client: &Client, owners: &Owners, namespace: Option<&str>)
where
    K: crate::client::ApiObject,
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
        if !owner_confirmed_gone(client, owners, meta).await {
            continue;
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::server::ApiServer;

    async fn replica_sets(client: &Client) -> Vec<String> {
        let list = client
            .api::<ReplicaSet>(Some("default"))
            .list(&ListParams::default())
            .await
            .unwrap();
        list.items
            .into_iter()
            .filter_map(|rs| rs.metadata.name)
            .collect()
    }

    /// The owners' cache lags (Deployments were listed before this one was created): the
    /// ReplicaSet it owns must survive a collection; once the Deployment is really gone, the
    /// ReplicaSet goes.
    #[tokio::test]
    async fn a_lagging_owner_cache_never_deletes_a_dependent_whose_owner_exists() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RedbStore::open(&dir.path().join("db")).unwrap();
        let server = ApiServer::new(Arc::new(store)).await.unwrap();
        let client = Client::in_process(server.router());
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "x.wasm"}]}}},
        }))
        .unwrap();
        let deployment = client
            .api::<Deployment>(Some("default"))
            .create(&deployment)
            .await
            .unwrap();
        let uid = deployment.metadata.uid.clone().unwrap();
        let replica_set: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default", "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": uid,
                "controller": true}]},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "x.wasm"}]}}},
        }))
        .unwrap();
        client
            .api::<ReplicaSet>(Some("default"))
            .create(&replica_set)
            .await
            .unwrap();

        let mut owners = Owners::default();
        owners.uids.insert("Deployment", HashSet::new());
        collect(&client, &owners, Some("default")).await;
        assert_eq!(replica_sets(&client).await, ["web-1"], "its owner exists");

        let orphan = DeleteParams {
            propagation_policy: Some("Orphan"),
            ..Default::default()
        };
        client
            .api::<Deployment>(Some("default"))
            .delete("web", &orphan)
            .await
            .unwrap();
        // Orphan propagation strips the reference: put one back to a Deployment that is gone.
        client
            .api::<ReplicaSet>(Some("default"))
            .patch_merge(
                "web-1",
                &json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1",
                    "kind": "Deployment", "name": "web", "uid": uid, "controller": true}]}}),
            )
            .await
            .unwrap();
        collect(&client, &owners, Some("default")).await;
        assert!(
            replica_sets(&client).await.is_empty(),
            "its owner is gone, so it goes"
        );
    }
}
