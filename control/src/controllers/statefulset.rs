//! The StatefulSet controller: pods with stable identities. Pod `N` of StatefulSet `web` is
//! `web-N` (hostname `web-N`, subdomain `spec.serviceName`), with one PersistentVolumeClaim
//! per volumeClaimTemplate named `<template>-web-N` that outlives the pod, so a replaced or
//! rescheduled `web-N` finds its data again.
//!
//! OrderedReady creates pods in ordinal order, each once its predecessors are Running and
//! Ready, and removes them highest ordinal first; Parallel creates and removes them all at
//! once. Every pod template is recorded as a ControllerRevision (named `<set>-<hash>`, the
//! hash also on each pod as `controller-revision-hash`); RollingUpdate replaces pods of an old
//! revision from the highest ordinal down to `partition`, one at a time and only while every
//! pod is ready; OnDelete waits for the user to delete them. `kubectl rollout history|undo`
//! read and apply those revisions.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde_json::{json, Value};

use super::controller_of;
use super::deployment::template_hash;
use super::pod_is_ready as is_ready;
use super::replicaset::selector_string;
use super::runtime::{Action, ObjectKey, Reconciler};
use super::Error;
use crate::client::{Api, Client, DeleteParams, ListParams, Recorder};

/// The label naming the ControllerRevision a pod was made from.
pub const REVISION_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub async fn run(client: Client) {
    let recorder = Recorder::new(client.clone(), "statefulset-controller", None);
    Reconciler::<StatefulSet>::new("statefulset", &client)
        .owns::<Pod>()
        .run_by_key(move |key| reconcile(client.clone(), recorder.clone(), key))
        .await
}

fn revision_of(pod: &Pod) -> Option<&String> {
    pod.metadata.labels.as_ref()?.get(REVISION_LABEL)
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn has_ended(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

async fn reconcile(client: Client, recorder: Recorder, key: ObjectKey) -> Result<Action, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let sets = client.api::<StatefulSet>(Some(namespace));
    let Some(set) = sets.get_opt(name).await? else {
        return Ok(Action::AwaitChange);
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Ok(Action::AwaitChange);
    }
    let spec = set.spec.clone().unwrap_or_default();
    let uid = set.metadata.uid.clone().unwrap_or_default();
    let selector = selector_string(&spec.selector);
    let owned = |meta: &ObjectMeta| controller_of(meta).is_some_and(|o| o.uid == uid);

    // Revisions: make sure the current template is recorded, as the newest revision.
    let revisions_api = client.api::<ControllerRevision>(Some(namespace));
    let mut revisions: Vec<ControllerRevision> = revisions_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|r| owned(&r.metadata))
        .collect();
    let template = serde_json::to_value(&spec.template)?;
    let update_revision = format!("{name}-{}", template_hash(&template));
    let newest = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    match revisions
        .iter_mut()
        .find(|r| r.metadata.name.as_deref() == Some(update_revision.as_str()))
    {
        // Back to an older template (`rollout undo`): that revision becomes the newest.
        Some(revision) if revision.revision < newest => {
            *revision = revisions_api
                .patch_merge(&update_revision, &json!({"revision": newest + 1}))
                .await?;
        }
        Some(_) => {}
        None => {
            let revision = new_revision(&set, &update_revision, &template, newest + 1);
            revisions.push(revisions_api.create(&revision).await?);
        }
    }
    let status = set.status.clone().unwrap_or_default();
    let current_revision = status
        .current_revision
        .clone()
        .filter(|r| {
            revisions
                .iter()
                .any(|k| k.metadata.name.as_ref() == Some(r))
        })
        .unwrap_or_else(|| update_revision.clone());

    let pods_api = client.api::<Pod>(Some(namespace));
    let mut pods: BTreeMap<i32, Pod> = BTreeMap::new();
    for pod in pods_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let ordinal = pod
            .metadata
            .name
            .as_deref()
            .and_then(|n| n.strip_prefix(&format!("{name}-")))
            .and_then(|n| n.parse::<i32>().ok());
        if let (Some(ordinal), true) = (ordinal, owned(&pod.metadata)) {
            pods.insert(ordinal, pod);
        }
    }

    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = strategy
        .rolling_update
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let context = Context {
        client: &client,
        recorder: &recorder,
        set: &set,
        pods_api: &pods_api,
    };

    // 1. Ordinals below `replicas` exist and run; in order unless Parallel.
    let mut blocked = false;
    for ordinal in 0..replicas {
        let proceed = match pods.get(&ordinal) {
            None => {
                let revision = if !on_delete && ordinal < partition {
                    &current_revision
                } else {
                    &update_revision
                };
                let template = template_of(&revisions, revision, &spec.template);
                context.create_pod(ordinal, revision, template).await?;
                false
            }
            Some(pod) if is_terminating(pod) => false,
            Some(pod) if has_ended(pod) => {
                // A pod that ended is replaced, with the same name and claims.
                context.delete_pod(pod).await?;
                false
            }
            Some(pod) => is_ready(pod),
        };
        if !proceed && !parallel {
            blocked = true;
            break;
        }
    }

    // 2. Ordinals at or above `replicas` go, the highest first (all at once if Parallel).
    let condemned: Vec<&Pod> = pods.range(replicas..).rev().map(|(_, p)| p).collect();
    let any_terminating = pods.values().any(is_terminating);
    for pod in &condemned {
        if parallel {
            if !is_terminating(pod) {
                context.delete_pod(pod).await?;
            }
        } else {
            if !blocked && !any_terminating {
                context.delete_pod(pod).await?;
            }
            break;
        }
    }
    if spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p.when_scaled.as_deref())
        == Some("Delete")
    {
        context.delete_scaled_claims(replicas, &pods).await?;
    }

    // 3. RollingUpdate: one pod of an old revision at a time, highest ordinal first, down to
    //    the partition, and only while every pod is running and ready.
    let healthy =
        pods.len() == replicas as usize && pods.values().all(|p| is_ready(p) && !is_terminating(p));
    if !on_delete && healthy && condemned.is_empty() {
        let outdated = (partition..replicas)
            .rev()
            .filter_map(|ordinal| pods.get(&ordinal))
            .find(|p| revision_of(p) != Some(&update_revision));
        if let Some(pod) = outdated {
            context.delete_pod(pod).await?;
        }
    }

    // Status, as `kubectl rollout status` and `get` read it.
    let count = |f: &dyn Fn(&Pod) -> bool| pods.values().filter(|p| f(p)).count() as i32;
    let ready = count(&is_ready);
    let updated = count(&|p| revision_of(p) == Some(&update_revision));
    let rolled_out = updated == replicas && ready == replicas && pods.len() as i32 == replicas;
    let current_revision = if rolled_out {
        update_revision.clone()
    } else {
        current_revision
    };
    let new_status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: pods.len() as i32,
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        current_replicas: Some(count(&|p| revision_of(p) == Some(&current_revision))),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision.clone()),
        update_revision: Some(update_revision.clone()),
        collision_count: Some(0),
        conditions: None,
    };
    if set.status.as_ref() != Some(&new_status) {
        sets.patch_status(name, &json!({"status": new_status}))
            .await?;
    }
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    prune_history(
        &revisions_api,
        revisions,
        &[&current_revision, &update_revision],
        &pods,
        limit,
    )
    .await;
    Ok(Action::AwaitChange)
}

/// What the steps of one reconcile share.
struct Context<'a> {
    client: &'a Client,
    recorder: &'a Recorder,
    set: &'a StatefulSet,
    pods_api: &'a Api<Pod>,
}

impl Context<'_> {
    fn set_name(&self) -> &str {
        self.set.metadata.name.as_deref().unwrap_or_default()
    }

    /// Creates pod `ordinal` at `revision`, after the claims it mounts.
    async fn create_pod(
        &self,
        ordinal: i32,
        revision: &str,
        template: PodTemplateSpec,
    ) -> Result<(), Error> {
        let set_name = self.set_name();
        let pod_name = format!("{set_name}-{ordinal}");
        let spec = self.set.spec.clone().unwrap_or_default();
        let mut pod_spec = template.spec.unwrap_or_default();
        pod_spec.hostname = Some(pod_name.clone());
        if let Some(service) = spec.service_name.filter(|s| !s.is_empty()) {
            pod_spec.subdomain = Some(service);
        }
        let claims_api = self
            .client
            .api::<PersistentVolumeClaim>(self.set.metadata.namespace.as_deref());
        for claim_template in spec.volume_claim_templates.iter().flatten() {
            let volume_name = claim_template.metadata.name.clone().unwrap_or_default();
            let claim_name = format!("{volume_name}-{pod_name}");
            if claims_api.get_opt(&claim_name).await?.is_none() {
                let claim = self.claim(claim_template, &claim_name);
                match claims_api.create(&claim).await {
                    Ok(_) => {
                        let message = format!(
                            "create Claim {claim_name} Pod {pod_name} in StatefulSet {set_name} success"
                        );
                        self.recorder.normal(self.set, "SuccessfulCreate", &message);
                    }
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
            volumes.retain(|v| v.name != volume_name);
            volumes.push(Volume {
                name: volume_name,
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name,
                    read_only: None,
                }),
                ..Default::default()
            });
        }
        let template_meta = template.metadata.unwrap_or_default();
        let mut labels = template_meta.labels.unwrap_or_default();
        labels.insert(REVISION_LABEL.into(), revision.into());
        labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(pod_name.clone()),
                namespace: self.set.metadata.namespace.clone(),
                labels: Some(labels),
                annotations: template_meta.annotations,
                owner_references: Some(vec![owner_reference(self.set)]),
                ..Default::default()
            },
            spec: Some(pod_spec),
            status: None,
        };
        match self.pods_api.create(&pod).await {
            Ok(_) => {
                let message = format!("create Pod {pod_name} in StatefulSet {set_name} successful");
                self.recorder.normal(self.set, "SuccessfulCreate", &message);
                Ok(())
            }
            // The previous pod of that name is still going away: the next event retries.
            Err(e) if e.is_conflict() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The claim for one ordinal: the template's spec, the set's selector labels, and the set
    /// as owner only when claims go with it (`whenDeleted: Delete`).
    fn claim(&self, template: &PersistentVolumeClaim, name: &str) -> PersistentVolumeClaim {
        let spec = self.set.spec.clone().unwrap_or_default();
        let owned = spec
            .persistent_volume_claim_retention_policy
            .and_then(|p| p.when_deleted)
            .as_deref()
            == Some("Delete");
        let mut labels = template.metadata.labels.clone().unwrap_or_default();
        labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: self.set.metadata.namespace.clone(),
                labels: Some(labels),
                annotations: template.metadata.annotations.clone(),
                owner_references: owned.then(|| vec![owner_reference(self.set)]),
                ..Default::default()
            },
            spec: template.spec.clone(),
            status: None,
        }
    }

    async fn delete_pod(&self, pod: &Pod) -> Result<(), Error> {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        };
        match self.pods_api.delete(&pod_name, &params).await {
            Ok(()) => {
                let message = format!(
                    "delete Pod {pod_name} in StatefulSet {} successful",
                    self.set_name()
                );
                self.recorder.normal(self.set, "SuccessfulDelete", &message);
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `whenScaled: Delete`: the claims of ordinals scaled away go once their pod is gone.
    async fn delete_scaled_claims(
        &self,
        replicas: i32,
        pods: &BTreeMap<i32, Pod>,
    ) -> Result<(), Error> {
        let spec = self.set.spec.clone().unwrap_or_default();
        let claims_api = self
            .client
            .api::<PersistentVolumeClaim>(self.set.metadata.namespace.as_deref());
        let claims = claims_api
            .list(&ListParams::default().labels(&selector_string(&spec.selector)))
            .await?
            .items;
        for claim_template in spec.volume_claim_templates.iter().flatten() {
            let prefix = format!(
                "{}-{}-",
                claim_template.metadata.name.as_deref().unwrap_or_default(),
                self.set_name()
            );
            for claim in &claims {
                let name = claim.metadata.name.as_deref().unwrap_or_default();
                let ordinal = name
                    .strip_prefix(&prefix)
                    .and_then(|o| o.parse::<i32>().ok());
                if ordinal.is_some_and(|o| o >= replicas && !pods.contains_key(&o)) {
                    let _ = claims_api.delete(name, &DeleteParams::default()).await;
                }
            }
        }
        Ok(())
    }
}

/// The pod template recorded in `revision`, or `fallback` if it is not found.
fn template_of(
    revisions: &[ControllerRevision],
    revision: &str,
    fallback: &PodTemplateSpec,
) -> PodTemplateSpec {
    revisions
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(revision))
        .and_then(|r| r.data.as_ref())
        .and_then(|data| data.0.pointer("/spec/template"))
        .and_then(|t| {
            let mut t = t.clone();
            t.as_object_mut().map(|m| m.remove("$patch"));
            serde_json::from_value(t).ok()
        })
        .unwrap_or_else(|| fallback.clone())
}

fn owner_reference(set: &StatefulSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "StatefulSet".into(),
        name: set.metadata.name.clone().unwrap_or_default(),
        uid: set.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A ControllerRevision recording `template`, in the form `kubectl rollout undo` applies as a
/// strategic merge patch (the template replaced whole).
fn new_revision(
    set: &StatefulSet,
    name: &str,
    template: &Value,
    number: i64,
) -> ControllerRevision {
    let mut labels: BTreeMap<String, String> = set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let hash = name.rsplit('-').next().unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), hash.into());
    let mut recorded = template.clone();
    if let Some(map) = recorded.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![owner_reference(set)]),
            ..Default::default()
        },
        data: Some(RawExtension(json!({"spec": {"template": recorded}}))),
        revision: number,
    }
}

/// Deletes the oldest revisions beyond `limit`, keeping those named in `keep` and those a
/// pod still runs.
async fn prune_history(
    api: &Api<ControllerRevision>,
    mut revisions: Vec<ControllerRevision>,
    keep: &[&String],
    pods: &BTreeMap<i32, Pod>,
    limit: usize,
) {
    revisions.sort_by_key(|r| r.revision);
    let in_use = |r: &ControllerRevision| {
        let name = r.metadata.name.clone().unwrap_or_default();
        keep.contains(&&name) || pods.values().any(|p| revision_of(p) == Some(&name))
    };
    let prunable: Vec<&ControllerRevision> = revisions.iter().filter(|r| !in_use(r)).collect();
    let surplus = prunable.len().saturating_sub(limit);
    for revision in prunable.into_iter().take(surplus) {
        let name = revision.metadata.name.clone().unwrap_or_default();
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
}
