//! The ReplicaSet controller: keeps `spec.replicas` active pods that match the selector and
//! are controlled by the ReplicaSet; adopts matching orphans, creates from the template,
//! deletes the surplus (unscheduled, then not ready, then newest first), and writes the status.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use serde_json::json;

use super::pod_is_ready as is_ready;
use super::queue::{self, Action};
use crate::client::{watcher, Client, DeleteParams, ListParams, Recorder, WatcherEvent};

pub async fn run(client: Client) {
    let recorder = Recorder::new(client.clone(), "replicaset-controller", None);
    let reconciler = client.clone();
    let queue = queue::spawn("replicaset", move |key| {
        reconcile(reconciler.clone(), recorder.clone(), key)
    });
    // ReplicaSets by namespace, to wake the ones an orphan pod may belong to.
    let known: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let mut sets = watcher(client.api::<ReplicaSet>(None), ListParams::default());
    let mut pods = watcher(client.api::<Pod>(None), ListParams::default());
    loop {
        tokio::select! {
            Some(event) = sets.recv() => {
                let items = match event {
                    WatcherEvent::Restarted(all) => all,
                    WatcherEvent::Applied(rs) | WatcherEvent::Deleted(rs) => vec![rs],
                };
                let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
                for rs in items {
                    let (ns, name) = (rs.metadata.namespace.clone().unwrap_or_default(), rs.metadata.name.clone().unwrap_or_default());
                    let names = known.entry(ns.clone()).or_default();
                    if !names.contains(&name) {
                        names.push(name.clone());
                    }
                    queue.add(&format!("{ns}/{name}"));
                }
            }
            Some(event) = pods.recv() => {
                let items = match event {
                    WatcherEvent::Restarted(all) => all,
                    WatcherEvent::Applied(pod) | WatcherEvent::Deleted(pod) => vec![pod],
                };
                for pod in items {
                    let ns = pod.metadata.namespace.clone().unwrap_or_default();
                    match controller_of(&pod.metadata) {
                        Some(owner) if owner.kind == "ReplicaSet" => queue.add(&format!("{ns}/{}", owner.name)),
                        Some(_) => {}
                        None => {
                            let known = known.lock().unwrap_or_else(|p| p.into_inner());
                            for name in known.get(&ns).into_iter().flatten() {
                                queue.add(&format!("{ns}/{name}"));
                            }
                        }
                    }
                }
            }
            else => return,
        }
    }
}

/// The controller owner reference of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// A label selector in its query-string form.
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        terms.push(match expression.operator.as_str() {
            "In" => format!("{} in ({values})", expression.key),
            "NotIn" => format!("{} notin ({values})", expression.key),
            "Exists" => expression.key.clone(),
            _ => format!("!{}", expression.key),
        });
    }
    terms.join(",")
}

fn is_active(pod: &Pod) -> bool {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("");
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, "Succeeded" | "Failed")
}

async fn reconcile(client: Client, recorder: Recorder, key: String) -> Result<Action, String> {
    let (namespace, name) = key.split_once('/').ok_or("bad key")?;
    let sets = client.api::<ReplicaSet>(Some(namespace));
    let Some(rs) = sets.get_opt(name).await.map_err(|e| e.to_string())? else {
        return Ok(Action::AwaitChange);
    };
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::AwaitChange);
    }
    let spec = rs.spec.clone().unwrap_or_default();
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let pods_api = client.api::<Pod>(Some(namespace));
    let matching = pods_api
        .list(&ListParams::default().labels(&selector_string(&spec.selector)))
        .await
        .map_err(|e| e.to_string())?
        .items;
    let mut owned = Vec::new();
    for pod in matching {
        match controller_of(&pod.metadata) {
            Some(owner) if owner.uid == uid => owned.push(pod),
            Some(_) => {}
            None if pod.metadata.deletion_timestamp.is_none() => {
                // Adopt the orphan: it matches our selector and nobody controls it. Re-read the
                // ReplicaSet first: one being deleted (say with orphan propagation) must not.
                let fresh = sets.get_opt(name).await.map_err(|e| e.to_string())?;
                if fresh.is_none_or(|f| {
                    f.metadata.deletion_timestamp.is_some() || f.metadata.uid != rs.metadata.uid
                }) {
                    return Ok(Action::AwaitChange);
                }
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                let patch = json!({"metadata": {"ownerReferences": [owner_reference(&rs)], "resourceVersion": pod.metadata.resource_version}});
                if let Ok(adopted) = pods_api.patch_merge(&pod_name, &patch).await {
                    owned.push(adopted);
                }
            }
            None => {}
        }
    }
    let mut active: Vec<Pod> = owned.into_iter().filter(is_active).collect();
    let wanted = spec.replicas.unwrap_or(1).max(0) as usize;
    if active.len() < wanted {
        for _ in active.len()..wanted {
            let pod = pod_from_template(&rs).map_err(|e| e.to_string())?;
            let created = pods_api.create(&pod).await.map_err(|e| e.to_string())?;
            let message = format!(
                "Created pod: {}",
                created.metadata.name.clone().unwrap_or_default()
            );
            recorder.normal(&rs, "SuccessfulCreate", &message).await;
            active.push(created);
        }
    } else if active.len() > wanted {
        // Delete the pods that cost least to lose: unscheduled, then not ready, then newest.
        active.sort_by_key(|p| {
            let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            let created = p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| -t.0.timestamp_micros())
                .unwrap_or(0);
            (scheduled, is_ready(p), created)
        });
        let surplus: Vec<Pod> = active.drain(..active.len() - wanted).collect();
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
                    recorder
                        .normal(&rs, "SuccessfulDelete", &format!("Deleted pod: {pod_name}"))
                        .await
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    let ready = active.iter().filter(|p| is_ready(p)).count() as i32;
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(active.len() as i32),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        observed_generation: rs.metadata.generation,
        conditions: None,
    };
    if rs.status.as_ref() != Some(&status) {
        sets.patch_status(name, &json!({"status": status}))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(Action::AwaitChange)
}

fn owner_reference(rs: &ReplicaSet) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "ReplicaSet".into(),
        name: rs.metadata.name.clone().unwrap_or_default(),
        uid: rs.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn pod_from_template(rs: &ReplicaSet) -> Result<Pod, serde_json::Error> {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let labels: BTreeMap<String, String> = template_meta.labels.unwrap_or_default();
    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.metadata.name.clone().unwrap_or_default())),
            namespace: rs.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: Some(vec![owner_reference(rs)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_become_query_strings() {
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}, {"key": "canary", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        assert_eq!(selector_string(&selector), "app=web,tier in (a,b),!canary");
    }
}
