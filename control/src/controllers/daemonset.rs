//! The DaemonSet controller: one pod per eligible node (schedulable, matching the template's
//! nodeSelector), following nodes as they come and go. Pods are bound to their node directly
//! (`spec.nodeName`). RollingUpdate replaces pods of an older template at most
//! `maxUnavailable` at a time; OnDelete waits for the user to delete them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;

use super::controller_of;
use super::deployment::{template_hash, HASH_LABEL};
use super::pod_is_ready as is_ready;
use super::replicaset::selector_string;
use super::runtime::{Action, ObjectKey, Reconciler};
use super::Error;
use crate::api::intstr;
use crate::client::{Client, DeleteParams, ListParams, Recorder};

pub async fn run(client: Client) {
    let recorder = Recorder::new(client.clone(), "daemonset-controller", None);
    Reconciler::<DaemonSet>::new("daemonset", &client)
        .owns::<Pod>()
        // Any node change may add or remove a daemon pod of every DaemonSet.
        .reconcile_all_on_change_of::<Node>()
        .run_by_key(move |key| reconcile(client.clone(), recorder.clone(), key))
        .await
}

fn eligible(node: &Node, selector: Option<&BTreeMap<String, String>>) -> bool {
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let matches = selector
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    !cordoned && matches && node.metadata.deletion_timestamp.is_none()
}

async fn reconcile(client: Client, recorder: Recorder, key: ObjectKey) -> Result<Action, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let sets = client.api::<DaemonSet>(Some(namespace));
    let Some(ds) = sets.get_opt(name).await? else {
        return Ok(Action::AwaitChange);
    };
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::AwaitChange);
    }
    let spec = ds.spec.clone().unwrap_or_default();
    let template = serde_json::to_value(&spec.template)?;
    let hash = template_hash(&template);
    let node_selector = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone());
    let nodes = client
        .api::<Node>(None)
        .list(&ListParams::default())
        .await?
        .items;
    let wanted: Vec<String> = nodes
        .iter()
        .filter(|n| eligible(n, node_selector.as_ref()))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let pods_api = client.api::<Pod>(Some(namespace));
    let uid = ds.metadata.uid.clone().unwrap_or_default();
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&selector_string(&spec.selector)))
        .await?
        .items
        .into_iter()
        .filter(|p| controller_of(&p.metadata).is_some_and(|o| o.uid == uid))
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
        .collect();
    let node_of = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let node_names: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    // A pod on a node that no longer exists has no agent to finish its deletion: force it.
    let delete = |pod: &Pod| {
        let (api, name, uid) = (
            pods_api.clone(),
            pod.metadata.name.clone().unwrap_or_default(),
            pod.metadata.uid.clone(),
        );
        let grace_period_seconds = (!node_names.contains(&node_of(pod))).then_some(0);
        async move {
            match api
                .delete(
                    &name,
                    &DeleteParams {
                        uid,
                        grace_period_seconds,
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(()) => Ok(()),
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(Error::from(e)),
            }
        }
    };
    // Pods on nodes that are gone or no longer eligible, and duplicates on one node.
    let mut seen: Vec<String> = Vec::new();
    for pod in &pods {
        let node = node_of(pod);
        if !wanted.contains(&node) || seen.contains(&node) {
            delete(pod).await?;
        } else {
            seen.push(node);
        }
    }
    for node in wanted.iter().filter(|n| !seen.contains(n)) {
        let created = pods_api.create(&daemon_pod(&ds, node, &hash)).await?;
        let message = format!(
            "Created pod: {}",
            created.metadata.name.clone().unwrap_or_default()
        );
        recorder.normal(&ds, "SuccessfulCreate", &message);
    }
    // RollingUpdate: replace outdated pods, at most maxUnavailable not ready at a time.
    let placed: Vec<&Pod> = pods
        .iter()
        .filter(|p| wanted.contains(&node_of(p)))
        .collect();
    let outdated =
        |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) != Some(&hash);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() != Some("OnDelete") {
        let nodes = i32::try_from(wanted.len()).unwrap_or(i32::MAX);
        let max_unavailable = strategy
            .rolling_update
            .and_then(|r| r.max_unavailable)
            .and_then(|value| intstr::scaled(&value, nodes, false))
            .unwrap_or(1)
            .max(1);
        let ready = placed.iter().filter(|p| is_ready(p)).count();
        let unavailable = wanted.len().saturating_sub(ready);
        let budget = usize::try_from(max_unavailable)
            .unwrap_or(usize::MAX)
            .saturating_sub(unavailable);
        for pod in placed
            .iter()
            .filter(|p| outdated(p))
            .filter(|p| is_ready(p))
            .take(budget)
        {
            delete(pod).await?;
        }
    }
    let ready = placed.iter().filter(|p| is_ready(p)).count() as i32;
    let status = DaemonSetStatus {
        desired_number_scheduled: wanted.len() as i32,
        current_number_scheduled: placed.len() as i32,
        number_ready: ready,
        number_available: Some(ready),
        number_unavailable: Some((wanted.len() as i32 - ready).max(0)),
        updated_number_scheduled: Some(placed.iter().filter(|p| !outdated(p)).count() as i32),
        number_misscheduled: (pods.len() - placed.len()) as i32,
        observed_generation: ds.metadata.generation,
        ..Default::default()
    };
    if ds.status.as_ref() != Some(&status) {
        sets.patch_status(name, &json!({"status": status})).await?;
    }
    Ok(Action::AwaitChange)
}

fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = Some(node.into());
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.metadata.name.clone().unwrap_or_default())),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: ds.metadata.name.clone().unwrap_or_default(),
                uid: ds.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}
