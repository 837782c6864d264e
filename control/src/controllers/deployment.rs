//! The Deployment controller: one ReplicaSet per pod template (named by the template's hash,
//! carrying the `pod-template-hash` label and the `deployment.kubernetes.io/revision`
//! annotation), rolled from old to new with RollingUpdate (maxSurge / maxUnavailable over
//! available pods) or Recreate; a rollback is a template that matches an old ReplicaSet, which
//! is reused and given the next revision; paused Deployments only report status; old
//! ReplicaSets beyond `revisionHistoryLimit` are deleted; status and conditions are what
//! `kubectl rollout status` reads (kubectl-wire.md §5).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use super::controller_of;
use super::replicaset::selector_string;
use super::runtime::{Action, ObjectKey, Reconciler};
use super::Error;
use crate::api::{intstr, time};
use crate::client::{Api, Client, DeleteParams, ListParams, Recorder};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

pub async fn run(client: Client) {
    let recorder = Recorder::new(client.clone(), "deployment-controller", None);
    Reconciler::<Deployment>::new("deployment", &client)
        .owns::<ReplicaSet>()
        .run_by_key(move |key| reconcile(client.clone(), recorder.clone(), key))
        .await
}

/// A stable hash of a pod template, ignoring the hash label itself and empty fields (kubectl's
/// rollback sends `"creationTimestamp": null` and `"resources": {}`).
pub fn template_hash(template: &Value) -> String {
    fn prune(value: &mut Value) -> bool {
        match value {
            Value::Null => true,
            Value::Object(map) => {
                map.retain(|_, v| !prune(v));
                map.is_empty()
            }
            Value::Array(items) => {
                items.iter_mut().for_each(|v| {
                    prune(v);
                });
                false
            }
            _ => false,
        }
    }
    let mut template = template.clone();
    if let Some(labels) = template
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(HASH_LABEL);
    }
    prune(&mut template);
    // FNV-1a over the canonical JSON (serde_json maps are sorted), in Kubernetes' safe alphabet.
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in template.to_string().bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|i| ALPHABET[((hash >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// `maxSurge`/`maxUnavailable` as a number of pods (percentages of `replicas`; surge rounds up,
/// unavailable down, as Kubernetes does); `default` when unset or not a percentage.
fn resolve(value: Option<&IntOrString>, replicas: i32, round_up: bool, default: &str) -> i32 {
    let default = IntOrString::String(default.to_string());
    intstr::scaled(value.unwrap_or(&default), replicas, round_up)
        .or_else(|| intstr::scaled(&default, replicas, round_up))
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// A Deployment's pods that are not being deleted, by template hash: all, and the ready ones.
#[derive(Default)]
struct PodCounts {
    live: std::collections::HashMap<String, i32>,
    ready: std::collections::HashMap<String, i32>,
}

async fn reconcile(client: Client, recorder: Recorder, key: ObjectKey) -> Result<Action, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let deployments = client.api::<Deployment>(Some(namespace));
    let Some(d) = deployments.get_opt(name).await? else {
        return Ok(Action::AwaitChange);
    };
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::AwaitChange);
    }
    let spec = d.spec.clone().unwrap_or_default();
    let sets = client.api::<ReplicaSet>(Some(namespace));
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let mut owned: Vec<ReplicaSet> = sets
        .list(&ListParams::default().labels(&selector_string(&spec.selector)))
        .await?
        .items
        .into_iter()
        .filter(|rs| {
            controller_of(&rs.metadata).is_some_and(|o| o.uid == uid)
                && rs.metadata.deletion_timestamp.is_none()
        })
        .collect();
    let template = serde_json::to_value(&spec.template)?;
    let hash = template_hash(&template);
    let is_new = |rs: &ReplicaSet| {
        rs.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash)
    };
    let desired = spec.replicas.unwrap_or(1).max(0);

    if spec.paused != Some(true) {
        let max_revision = owned.iter().map(revision_of).max().unwrap_or(0);
        match owned.iter().position(is_new) {
            None => {
                let initial = if spec.strategy.as_ref().and_then(|s| s.type_.as_deref())
                    == Some("Recreate")
                    || owned.is_empty()
                {
                    desired
                } else {
                    0
                };
                let created = sets
                    .create(&new_replica_set(&d, &hash, max_revision + 1, initial))
                    .await?;
                let message = format!(
                    "Scaled up replica set {} from 0 to {initial}",
                    created.metadata.name.clone().unwrap_or_default()
                );
                recorder.normal(&d, "ScalingReplicaSet", &message);
                owned.push(created);
            }
            Some(i) if revision_of(&owned[i]) < max_revision => {
                // A rollback to this template: the old ReplicaSet becomes the newest revision.
                let rs_name = owned[i].metadata.name.clone().unwrap_or_default();
                let patch = json!({"metadata": {"annotations": {REVISION: (max_revision + 1).to_string()}}});
                owned[i] = sets.patch_merge(&rs_name, &patch).await?;
            }
            Some(_) => {}
        }
        let new_index = owned
            .iter()
            .position(is_new)
            .ok_or_else(|| Error::Vanished("the new replica set".into()))?;
        let revision = revision_of(&owned[new_index]).to_string();
        if d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION))
            != Some(&revision)
        {
            let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
            deployments.patch_merge(name, &patch).await?;
        }
        // Availability from the pods themselves: ReplicaSet statuses lag behind the scale
        // changes this controller just made, and acting on them could overshoot.
        let listed =
            super::selected_pods(&client, namespace, &selector_string(&spec.selector)).await?;
        let mut pods_by_hash = PodCounts::default();
        for pod in listed
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            if let Some(h) = pod.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) {
                *pods_by_hash.live.entry(h.clone()).or_default() += 1;
                if super::pod_is_ready(pod) {
                    *pods_by_hash.ready.entry(h.clone()).or_default() += 1;
                }
            }
        }
        roll(
            &sets,
            &recorder,
            &d,
            &mut owned,
            new_index,
            desired,
            &pods_by_hash,
        )
        .await?;
        prune_history(
            &sets,
            &owned,
            &hash,
            spec.revision_history_limit.unwrap_or(10),
        )
        .await;
    }
    write_status(&deployments, &d, &owned, &hash, desired).await
}

/// Moves replicas from the old ReplicaSets to the new one, as the strategy allows.
async fn roll(
    sets: &Api<ReplicaSet>,
    recorder: &Recorder,
    d: &Deployment,
    owned: &mut [ReplicaSet],
    new_index: usize,
    desired: i32,
    pods: &PodCounts,
) -> Result<(), Error> {
    let live = |rs: &ReplicaSet| {
        let hash = rs.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL));
        hash.and_then(|h| pods.live.get(h)).copied().unwrap_or(0)
    };
    let available = |rs: &ReplicaSet| {
        let hash = rs.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL));
        hash.and_then(|h| pods.ready.get(h)).copied().unwrap_or(0)
    };
    let strategy = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.clone())
        .unwrap_or_default();
    let scale = |rs: &ReplicaSet, to: i32| {
        let (rs_name, from) = (
            rs.metadata.name.clone().unwrap_or_default(),
            spec_replicas(rs),
        );
        async move {
            if from == to {
                return Ok(());
            }
            sets.patch_merge(&rs_name, &json!({"spec": {"replicas": to}}))
                .await?;
            let verb = if to > from { "up" } else { "down" };
            recorder.normal(
                d,
                "ScalingReplicaSet",
                &format!("Scaled {verb} replica set {rs_name} from {from} to {to}"),
            );
            Ok::<(), Error>(())
        }
    };
    let old_pods: i32 = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != new_index)
        .map(|(_, rs)| spec_replicas(rs).max(rs.status.as_ref().map_or(0, |s| s.replicas)))
        .sum();
    if strategy.type_.as_deref() == Some("Recreate") {
        for (i, rs) in owned.iter().enumerate() {
            if i != new_index {
                scale(rs, 0).await?;
            }
        }
        if old_pods == 0 {
            scale(&owned[new_index], desired).await?;
        }
        return Ok(());
    }
    let rolling = strategy.rolling_update.unwrap_or_default();
    let surge = resolve(rolling.max_surge.as_ref(), desired, true, "25%");
    let mut unavailable = resolve(rolling.max_unavailable.as_ref(), desired, false, "25%");
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    // Scale the new ReplicaSet up within desired + maxSurge pods in all.
    // Sums in i64: replicas and surge are each at most i32::MAX, their sum is not.
    let total: i64 = owned.iter().map(|rs| i64::from(spec_replicas(rs))).sum();
    // Room is counted against the pods that exist too: an old ReplicaSet just scaled down
    // may not have marked its surplus pods for deletion yet, and the new one must not create
    // pods until it has, or the pods alive would pass desired + maxSurge.
    let existing: i64 = owned
        .iter()
        .map(|rs| i64::from(spec_replicas(rs).max(live(rs))))
        .sum();
    let new_replicas = spec_replicas(&owned[new_index]);
    let room = i64::from(desired) + i64::from(surge) - existing;
    let target = if new_replicas > desired {
        desired
    } else {
        // At most `desired`, so it fits an i32.
        (i64::from(new_replicas) + room.max(0)).min(i64::from(desired)) as i32
    };
    if target != new_replicas {
        scale(&owned[new_index], target).await?;
    }
    // Scale old ones down while at least desired - maxUnavailable pods stay available;
    // old replicas that are not available can always go. As Kubernetes does, the total
    // removed is also capped by the pods that exist by spec (old ReplicaSets' statuses may
    // lag a scale-down this controller just made; spec counts do not).
    let min_available = i64::from(desired) - i64::from(unavailable);
    let all_pods = total - i64::from(new_replicas) + i64::from(target);
    let new_unavailable = (i64::from(target) - i64::from(available(&owned[new_index]))).max(0);
    let mut budget = (all_pods - min_available - new_unavailable).max(0);
    let all_available: i64 = owned.iter().map(|rs| i64::from(available(rs))).sum();
    let mut can_remove = (all_available - min_available).max(0);
    let mut olds: Vec<&ReplicaSet> = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != new_index)
        .map(|(_, rs)| rs)
        .collect();
    olds.sort_by_key(|rs| revision_of(rs));
    for rs in olds {
        let current = i64::from(spec_replicas(rs));
        let unhealthy = (current - i64::from(available(rs))).max(0);
        let remove = (unhealthy + can_remove).min(current).min(budget);
        if remove > 0 {
            can_remove -= (remove - unhealthy).max(0);
            budget -= remove;
            // Between 0 and `current`, so it fits an i32.
            scale(rs, (current - remove) as i32).await?;
        }
    }
    Ok(())
}

async fn prune_history(sets: &Api<ReplicaSet>, owned: &[ReplicaSet], hash: &str, limit: i32) {
    let mut retired: Vec<&ReplicaSet> = owned
        .iter()
        .filter(|rs| {
            rs.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(HASH_LABEL))
                .map(String::as_str)
                != Some(hash)
        })
        .filter(|rs| spec_replicas(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    retired.sort_by_key(|rs| revision_of(rs));
    let excess = retired.len().saturating_sub(limit.max(0) as usize);
    for rs in retired.into_iter().take(excess) {
        let _ = sets
            .delete(
                rs.metadata.name.as_deref().unwrap_or(""),
                &DeleteParams::default(),
            )
            .await;
    }
}

async fn write_status(
    deployments: &Api<Deployment>,
    d: &Deployment,
    owned: &[ReplicaSet],
    hash: &str,
    desired: i32,
) -> Result<Action, Error> {
    let sum = |f: fn(&ReplicaSet) -> i32| owned.iter().map(f).sum::<i32>();
    let replicas = sum(|rs| rs.status.as_ref().map_or(0, |s| s.replicas));
    let ready = sum(|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let available_now = sum(available);
    let new = owned.iter().find(|rs| {
        rs.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(HASH_LABEL))
            .map(String::as_str)
            == Some(hash)
    });
    let updated = new.map_or(0, |rs| rs.status.as_ref().map_or(0, |s| s.replicas));
    let spec = d.spec.clone().unwrap_or_default();
    let unavailable_allowed = match spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) {
        Some("Recreate") => 0,
        _ => resolve(
            spec.strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_unavailable.as_ref()),
            desired,
            false,
            "25%",
        ),
    };
    let complete = updated == desired && replicas == desired && available_now == desired;
    let clock = chrono::Utc::now();
    let now = time::time(clock);
    let previous = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let deadline = Duration::from_secs(spec.progress_deadline_seconds.unwrap_or(600).max(0) as u64);
    let (progressing, deadline_due_in) = progress(
        complete,
        previous.iter().find(|c| c.type_ == "Progressing"),
        deadline,
        clock,
    );
    let available_condition = condition(
        "Available",
        available_now >= desired - unavailable_allowed,
        if available_now >= desired - unavailable_allowed {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
        "Deployment has minimum availability.",
        &now,
        previous.iter().find(|c| c.type_ == "Available"),
    );
    let status = DeploymentStatus {
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available_now),
        unavailable_replicas: Some((desired - available_now).max(0)),
        observed_generation: d.metadata.generation,
        conditions: Some(vec![available_condition, progressing]),
        collision_count: None,
        // Behind the DeploymentReplicaSetTerminatingReplicas gate (alpha in 1.33, off).
        terminating_replicas: None,
    };
    let changed = {
        let strip = |s: &DeploymentStatus| {
            let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
            for c in v
                .pointer_mut("/conditions")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                c.as_object_mut().map(|m| m.remove("lastUpdateTime"));
            }
            v
        };
        d.status.as_ref().map(strip) != Some(strip(&status))
    };
    if changed {
        let name = d.metadata.name.clone().unwrap_or_default();
        deployments
            .patch_status(&name, &json!({"status": status}))
            .await?;
    }
    // A rollout in progress is looked at again when its progress deadline is due.
    Ok(deadline_due_in.map_or(Action::AwaitChange, Action::RequeueAfter))
}

/// The Progressing condition of a rollout at `now`, and how long until its progress deadline
/// is due (`None`: complete, or already timed out; only a change wakes it then). The deadline
/// runs from when the rollout started progressing (the condition's `lastUpdateTime` while its
/// reason stays `ReplicaSetUpdated`).
fn progress(
    complete: bool,
    previous: Option<&DeploymentCondition>,
    deadline: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> (DeploymentCondition, Option<Duration>) {
    let stamp = time::time(now);
    if complete {
        let done = condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            "has successfully progressed",
            &stamp,
            previous,
        );
        return (done, None);
    }
    let since = previous
        .filter(|c| c.reason.as_deref() == Some("ReplicaSetUpdated"))
        .and_then(|c| c.last_update_time.clone())
        .unwrap_or(stamp.clone());
    let due = chrono::Duration::from_std(deadline)
        .ok()
        .and_then(|d| time::instant(&since).checked_add_signed(d));
    if due.is_some_and(|due| now > due) {
        let stuck = condition(
            "Progressing",
            false,
            "ProgressDeadlineExceeded",
            "has timed out progressing",
            &stamp,
            previous,
        );
        return (stuck, None);
    }
    let mut progressing = condition(
        "Progressing",
        true,
        "ReplicaSetUpdated",
        "is progressing",
        &stamp,
        previous,
    );
    progressing.last_update_time = Some(since);
    // Just past the due moment, so that the deadline has passed when it runs again; a
    // deadline beyond the calendar is never due.
    let wait = due.map(|due| (due - now).to_std().unwrap_or_default() + Duration::from_millis(1));
    (progressing, wait)
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: &Time,
    previous: Option<&DeploymentCondition>,
) -> DeploymentCondition {
    let status = if ok { "True" } else { "False" };
    let transition = previous
        .filter(|p| p.status == status)
        .and_then(|p| p.last_transition_time.clone())
        .unwrap_or(now.clone());
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(transition),
    }
}

fn new_replica_set(d: &Deployment, hash: &str, revision: i64, replicas: i32) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let mut labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels = Some(labels.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.into());
    let name = d.metadata.name.clone().unwrap_or_default();
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                REVISION.to_string(),
                revision.to_string(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name,
                uid: d.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            selector,
            template: Some(template),
            min_ready_seconds: spec.min_ready_seconds,
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_deadline_is_due_at_its_moment_and_then_times_out() {
        let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let deadline = Duration::from_secs(600);
        let (first, due) = progress(false, None, deadline, start);
        assert_eq!(first.reason.as_deref(), Some("ReplicaSetUpdated"));
        assert_eq!(
            due,
            Some(Duration::from_secs(600) + Duration::from_millis(1))
        );

        let later = start + chrono::Duration::seconds(599);
        let (still, due) = progress(false, Some(&first), deadline, later);
        assert_eq!(still.status, "True");
        assert_eq!(
            still.last_update_time, first.last_update_time,
            "runs from the start"
        );
        assert_eq!(due, Some(Duration::from_secs(1) + Duration::from_millis(1)));

        let past = start + chrono::Duration::seconds(601);
        let (stuck, due) = progress(false, Some(&still), deadline, past);
        assert_eq!(stuck.status, "False");
        assert_eq!(stuck.reason.as_deref(), Some("ProgressDeadlineExceeded"));
        assert_eq!(due, None, "a timed-out rollout waits for a change");

        let (done, due) = progress(true, Some(&stuck), deadline, past);
        assert_eq!(done.reason.as_deref(), Some("NewReplicaSetAvailable"));
        assert_eq!(due, None);

        let (_, due) = progress(false, None, Duration::from_secs(u64::MAX), start);
        assert_eq!(
            due, None,
            "an absurd deadline never comes due and does not panic"
        );
    }

    #[test]
    fn hashes_ignore_empty_fields_and_the_hash_label() {
        let a = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "a.wasm"}]}});
        let b = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "web", "pod-template-hash": "x"}},
            "spec": {"containers": [{"name": "c", "image": "a.wasm", "resources": {}}]}});
        assert_eq!(template_hash(&a), template_hash(&b));
        let c = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "b.wasm"}]}});
        assert_ne!(template_hash(&a), template_hash(&c));
        assert_eq!(template_hash(&a).len(), 10);
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let quarter = IntOrString::String("25%".into());
        assert_eq!(resolve(Some(&quarter), 3, true, "25%"), 1);
        assert_eq!(resolve(Some(&quarter), 3, false, "25%"), 0);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 10, true, "25%"), 2);
        assert_eq!(resolve(None, i32::MAX, true, "25%"), 536_870_912);
        assert_eq!(
            resolve(Some(&IntOrString::String("lots".into())), 8, true, "25%"),
            2,
            "not a percentage: the default"
        );
    }
}
