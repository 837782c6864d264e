//! The ReplicaSet (and ReplicationController) controller: keeps `spec.replicas` active pods that match the selector and
//! are controlled by the ReplicaSet; adopts matching orphans, creates from the template,
//! deletes the surplus (unscheduled, then not ready, then newest first), and writes the status.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, ReplicationController, ResourceQuota};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::json;

use super::controller_of;
use super::expectations::{Expectations, Seen};
use super::pod_is_ready as is_ready;
use super::runtime::{all_in_namespace, controller_ref, Action, ObjectKey, Reconciler};
use super::Error;
use crate::api::quantity::Quantity;
use crate::api::time;
use crate::client::{Client, DeleteParams, ListParams, Recorder};

/// The two kinds this controller runs: ReplicaSets and their predecessor, the
/// ReplicationController (a ReplicaSet whose selector is a plain label map).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ReplicaSet,
    ReplicationController,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ReplicaSet => "ReplicaSet",
            Kind::ReplicationController => "ReplicationController",
        }
    }
}

/// The object reconciled, as stored, with a ReplicaSet view of it.
enum Owner {
    Set(ReplicaSet),
    Controller(ReplicationController),
}

impl Owner {
    async fn get(
        client: &Client,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Self>, Error> {
        Ok(match kind {
            Kind::ReplicaSet => client
                .api::<ReplicaSet>(Some(namespace))
                .get_opt(name)
                .await?
                .map(Owner::Set),
            Kind::ReplicationController => client
                .api::<ReplicationController>(Some(namespace))
                .get_opt(name)
                .await?
                .map(Owner::Controller),
        })
    }

    /// The object as a ReplicaSet: its selector map becomes matchLabels.
    fn view(&self) -> ReplicaSet {
        match self {
            Owner::Set(rs) => rs.clone(),
            Owner::Controller(rc) => {
                let spec = rc.spec.clone().unwrap_or_default();
                let status = rc.status.clone().map(|s| ReplicaSetStatus {
                    replicas: s.replicas,
                    fully_labeled_replicas: s.fully_labeled_replicas,
                    ready_replicas: s.ready_replicas,
                    available_replicas: s.available_replicas,
                    observed_generation: s.observed_generation,
                    conditions: None,
                    terminating_replicas: None,
                });
                ReplicaSet {
                    metadata: rc.metadata.clone(),
                    spec: Some(ReplicaSetSpec {
                        replicas: spec.replicas,
                        min_ready_seconds: spec.min_ready_seconds,
                        selector: LabelSelector {
                            match_labels: spec.selector,
                            match_expressions: None,
                        },
                        template: spec.template,
                    }),
                    status,
                }
            }
        }
    }

    fn event(&self, recorder: &Recorder, reason: &str, message: &str) {
        match self {
            Owner::Set(rs) => recorder.normal(rs, reason, message),
            Owner::Controller(rc) => recorder.normal(rc, reason, message),
        }
    }

    fn warning(&self, recorder: &Recorder, reason: &str, message: &str) {
        match self {
            Owner::Set(rs) => recorder.warning(rs, reason, message),
            Owner::Controller(rc) => recorder.warning(rc, reason, message),
        }
    }

    async fn patch_status(&self, client: &Client, patch: &serde_json::Value) -> Result<(), Error> {
        let (namespace, name) = match self {
            Owner::Set(rs) => (&rs.metadata.namespace, &rs.metadata.name),
            Owner::Controller(rc) => (&rc.metadata.namespace, &rc.metadata.name),
        };
        let (namespace, name) = (namespace.as_deref(), name.as_deref().unwrap_or_default());
        match self {
            Owner::Set(_) => client
                .api::<ReplicaSet>(namespace)
                .patch_status(name, patch)
                .await
                .map(drop),
            Owner::Controller(_) => client
                .api::<ReplicationController>(namespace)
                .patch_status(name, patch)
                .await
                .map(drop),
        }
        .map_err(Error::from)
    }
}

pub async fn run(client: Client) {
    run_kind::<ReplicaSet>(client, Kind::ReplicaSet).await
}

pub async fn run_replication_controllers(client: Client) {
    run_kind::<ReplicationController>(client, Kind::ReplicationController).await
}

async fn run_kind<K>(client: Client, kind: Kind)
where
    K: crate::client::ApiObject,
{
    let component = match kind {
        Kind::ReplicaSet => "replicaset-controller",
        Kind::ReplicationController => "replication-controller",
    };
    let recorder = Recorder::new(client.clone(), component, None);
    let reconciler = Reconciler::<K>::new(component, &client);
    let owners = reconciler.store();
    let in_quota_namespace = owners.clone();
    let reconciler = reconciler.watches::<Pod, _>(move |pod| {
        // A pod wakes the owner that controls it; an orphan, every owner in its namespace
        // (one of them may adopt it).
        match controller_of(&pod.metadata) {
            Some(_) => controller_ref::<K>(&pod.metadata).into_iter().collect(),
            None => all_in_namespace(&owners, pod.metadata.namespace.as_deref().unwrap_or("")),
        }
    });
    // A quota that may have room again (raised, recounted after pods went, or deleted):
    // owners whose pods it refused try again at once instead of at the end of their
    // back-off. Not the charges admission writes at every create, which only take room.
    let room = QuotaRoom::default();
    let reconciler = reconciler.watches_releases::<ResourceQuota, _>(
        move |quota| room.may_have_grown(quota),
        move |quota| {
            all_in_namespace(
                &in_quota_namespace,
                quota.metadata.namespace.as_deref().unwrap_or(""),
            )
        },
    );
    let expectations = std::sync::Arc::new(Expectations::default());
    reconciler
        .run_by_key(move |key| {
            let expectations = expectations.clone();
            reconcile(client.clone(), recorder.clone(), kind, key, expectations)
        })
        .await
}

/// The limits and totals each quota had when last seen, by uid: tells a change that may
/// give room (a limit changed, a total went down) from a charge, which only takes room. Before
/// this, every charge (one per store commit of creates in the namespace) woke every owner
/// in the namespace.
#[derive(Default)]
struct QuotaRoom(std::sync::Mutex<HashMap<String, QuotaSeen>>);

/// How many quotas [`QuotaRoom`] remembers before it starts over.
const QUOTAS_REMEMBERED: usize = 4096;

#[derive(PartialEq)]
struct QuotaSeen {
    hard: BTreeMap<String, String>,
    used: BTreeMap<String, i128>,
}

impl QuotaRoom {
    fn may_have_grown(&self, quota: &ResourceQuota) -> bool {
        let hard = quota
            .spec
            .as_ref()
            .and_then(|spec| spec.hard.as_ref())
            .into_iter()
            .flatten()
            .map(|(name, amount)| (name.clone(), amount.0.clone()))
            .collect();
        let used = quota
            .status
            .as_ref()
            .and_then(|status| status.used.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|(name, amount)| {
                Some((name.clone(), Quantity::parse(&amount.0).ok()?.millis()))
            })
            .collect();
        let now = QuotaSeen { hard, used };
        let uid = quota.metadata.uid.clone().unwrap_or_default();
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let grown = match seen.get(&uid) {
            None => true,
            Some(before) => {
                before.hard != now.hard
                    || before
                        .used
                        .iter()
                        .any(|(name, was)| now.used.get(name).is_none_or(|is| is < was))
            }
        };
        if seen.len() >= QUOTAS_REMEMBERED && !seen.contains_key(&uid) {
            // Deleted quotas are never seen again: forget all (each then wakes once more).
            seen.clear();
        }
        seen.insert(uid, now);
        grown
    }
}

/// A label selector in its query-string form.
pub use crate::api::selector::query_of as selector_string;

fn is_active(pod: &Pod) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, "Succeeded" | "Failed")
}

async fn reconcile(
    client: Client,
    recorder: Recorder,
    kind: Kind,
    key: ObjectKey,
    expectations: std::sync::Arc<Expectations>,
) -> Result<Action, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let Some(owner) = Owner::get(&client, kind, namespace, name).await? else {
        return Ok(Action::AwaitChange);
    };
    let rs = owner.view();
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::AwaitChange);
    }
    let spec = rs.spec.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pods_api = client.api::<Pod>(Some(namespace));
    // The pods from the shared cache; while it does not show yet what this controller last
    // did to them, they are only counted for the status (see `expectations`).
    let selector = selector_string(&spec.selector);
    let list_from_api = async || -> Result<Vec<Arc<Pod>>, Error> {
        let listed = pods_api
            .list(&ListParams::default().labels(&selector))
            .await?;
        Ok(listed.items.into_iter().map(Arc::new).collect())
    };
    let (matching, awaited) = match super::cached_pods(&client, namespace, &selector)? {
        Some(cached) => match expectations.seen_in(&uid, &cached) {
            Seen::Met => (cached, None),
            Seen::Awaited(wait) => (cached, Some(wait)),
            Seen::Overdue => (list_from_api().await?, None),
        },
        None => (list_from_api().await?, None),
    };
    let may_act = awaited.is_none();
    let mut owned = Vec::new();
    for pod in matching {
        match controller_of(&pod.metadata) {
            Some(owner) if owner.uid == uid => owned.push(pod),
            Some(_) => {}
            None if may_act && pod.metadata.deletion_timestamp.is_none() => {
                // Adopt the orphan: it matches our selector and nobody controls it. Re-read the
                // ReplicaSet first: one being deleted (say with orphan propagation) must not.
                let fresh = Owner::get(&client, kind, namespace, name)
                    .await?
                    .map(|o| o.view());
                if fresh.is_none_or(|f| {
                    f.metadata.deletion_timestamp.is_some() || f.metadata.uid != rs.metadata.uid
                }) {
                    return Ok(Action::AwaitChange);
                }
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                let patch = json!({"metadata": {"ownerReferences": [owner_reference(&rs, kind)], "resourceVersion": pod.metadata.resource_version}});
                if let Ok(adopted) = pods_api.patch_merge(&pod_name, &patch).await {
                    expectations.controlled(&uid, [pod_name]);
                    owned.push(Arc::new(adopted));
                }
            }
            None => {}
        }
    }
    let mut active: Vec<Arc<Pod>> = owned.into_iter().filter(|p| is_active(p)).collect();
    let wanted = spec.replicas.unwrap_or(1).max(0) as usize;
    if !may_act {
        // Counts from a cache behind this controller's own work: none acted on.
    } else if active.len() < wanted {
        // Kubernetes' slow start: batches of 1, 2, 4, … creates at once, stopping at the
        // first refusal (a quota, an admission rule), so that a thousand missing pods take a
        // few round trips while a template every create refuses costs one.
        let mut missing = wanted - active.len();
        let mut batch = 1usize;
        while missing > 0 {
            let size = batch.min(missing);
            let creates = (0..size).map(|_| {
                let pod = pod_from_template(&rs, kind);
                let pods_api = pods_api.clone();
                async move { pods_api.create(&pod).await }
            });
            let results = futures::future::join_all(creates).await;
            let mut refused = None;
            let mut created = Vec::with_capacity(size);
            for result in results {
                match result {
                    Ok(pod) => created.push(pod),
                    Err(e) => refused = refused.or(Some(e)),
                }
            }
            for pod in &created {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                owner.event(
                    &recorder,
                    "SuccessfulCreate",
                    &format!("Created pod: {name}"),
                );
            }
            let names = created.iter().filter_map(|p| p.metadata.name.clone());
            expectations.controlled(&uid, names);
            active.extend(created.into_iter().map(Arc::new));
            if let Some(e) = refused {
                // A quota or admission refusal: say so on the owner; the runtime retries
                // with back-off (a freed slot or a raised quota wakes it sooner).
                owner.warning(&recorder, "FailedCreate", &format!("Error creating: {e}"));
                return Err(e.into());
            }
            missing -= size;
            batch = batch.saturating_mul(2);
        }
    } else if active.len() > wanted {
        // Delete the pods that cost least to lose: unscheduled, then not ready, then newest.
        active.sort_by_key(|p| {
            let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            let created = p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| -t.0.as_microsecond())
                .unwrap_or(0);
            (scheduled, is_ready(p), created)
        });
        let surplus: Vec<Arc<Pod>> = active.drain(..active.len() - wanted).collect();
        for pod in surplus {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            match pods_api
                .delete(
                    &pod_name,
                    &DeleteParams {
                        uid: pod.metadata.uid.clone(),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(()) => {
                    expectations.deleted(&uid, pod.metadata.uid.clone().unwrap_or_default());
                    let message = format!("Deleted pod: {pod_name}");
                    owner.event(&recorder, "SuccessfulDelete", &message)
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let now = Utc::now();
    let mut available = 0;
    let mut next_check: Option<Duration> = None;
    for pod in &active {
        match available_in(pod, min_ready, now) {
            Some(Duration::ZERO) => available += 1,
            Some(wait) => next_check = Some(next_check.map_or(wait, |n| n.min(wait))),
            None => {}
        }
    }
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(active.len() as i32),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: None,
        // Behind the DeploymentReplicaSetTerminatingReplicas gate (alpha in 1.33, off).
        terminating_replicas: None,
    };
    if rs.status.as_ref() != Some(&status) {
        owner
            .patch_status(&client, &json!({"status": status}))
            .await?;
    }
    // A pod turning available is a change of time, not of any object: look again then; and
    // when the cache is overdue, even if no event comes.
    let next_check = match (next_check, awaited) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(next_check.map_or(Action::AwaitChange, Action::RequeueAfter))
}

/// How long until a pod counts as available: ready for `min_ready` without a break, measured
/// from its Ready condition's `lastTransitionTime`. `Some(ZERO)` when it already is, `None`
/// when it is not ready at all.
fn available_in(pod: &Pod, min_ready: Duration, now: DateTime<Utc>) -> Option<Duration> {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))?;
    if min_ready.is_zero() {
        return Some(Duration::ZERO);
    }
    let Some(since) = ready.last_transition_time.as_ref() else {
        return Some(Duration::ZERO);
    };
    let ready_for = (now - time::instant(since)).to_std().unwrap_or_default();
    Some(min_ready.saturating_sub(ready_for))
}

fn owner_reference(rs: &ReplicaSet, kind: Kind) -> OwnerReference {
    OwnerReference {
        api_version: match kind {
            Kind::ReplicaSet => "apps/v1".into(),
            Kind::ReplicationController => "v1".into(),
        },
        kind: kind.name().into(),
        name: rs.metadata.name.clone().unwrap_or_default(),
        uid: rs.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn pod_from_template(rs: &ReplicaSet, kind: Kind) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let labels: BTreeMap<String, String> = template_meta.labels.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.metadata.name.clone().unwrap_or_default())),
            namespace: rs.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: Some(vec![owner_reference(rs, kind)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_quota_changes_that_may_give_room_wake_owners() {
        let quota = |hard: &str, used: &str| -> ResourceQuota {
            serde_json::from_value(json!({
                "metadata": {"name": "q", "namespace": "team", "uid": "u1"},
                "spec": {"hard": {"pods": hard}},
                "status": {"hard": {"pods": hard}, "used": {"pods": used}}
            }))
            .unwrap()
        };
        let room = QuotaRoom::default();
        assert!(room.may_have_grown(&quota("5", "1")), "first seen");
        assert!(
            !room.may_have_grown(&quota("5", "2")),
            "a charge takes room"
        );
        assert!(!room.may_have_grown(&quota("5", "2000m")), "the same total");
        assert!(
            room.may_have_grown(&quota("5", "1")),
            "a recount gave room back"
        );
        assert!(
            room.may_have_grown(&quota("8", "1")),
            "the limit was raised"
        );
        assert!(!room.may_have_grown(&quota("8", "3")));
    }

    #[test]
    fn selectors_become_query_strings() {
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}, {"key": "canary", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert_eq!(selector_string(&selector), "app=web,tier in (a,b),!canary");
    }

    #[test]
    fn pods_are_available_after_min_ready_seconds_of_readiness() {
        // Whole seconds, as the timestamps are serialised.
        let now = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
        let pod = |ready: &str, since_secs: i64| -> Pod {
            serde_json::from_value(json!({"status": {"conditions": [{
                "type": "Ready", "status": ready,
                "lastTransitionTime": (now - chrono::Duration::seconds(since_secs)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }]}}))
            .unwrap()
        };
        let ten = Duration::from_secs(10);
        assert_eq!(available_in(&pod("False", 60), ten, now), None);
        assert_eq!(
            available_in(&pod("True", 60), ten, now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            available_in(&pod("True", 4), ten, now),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            available_in(&pod("True", 0), Duration::ZERO, now),
            Some(Duration::ZERO)
        );
    }
}
