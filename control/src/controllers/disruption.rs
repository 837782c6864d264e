//! The disruption controller: keeps each PodDisruptionBudget's status (healthy pods, how many
//! must stay healthy, how many may be evicted) from the pods it selects, as Kubernetes'
//! does. The pods' controllers say how many are expected (a ReplicaSet's or StatefulSet's
//! `spec.replicas`; a pod without one counts itself). A pod an eviction has just taken a
//! disruption for (`status.disruptedPods`, kept [`DISRUPTION_TIMEOUT`]) is not counted
//! healthy even before its deletion shows, so a recount in between never hands the same
//! disruption out twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{json, Value};

use super::runtime::{all_in_namespace, Action, Reconciler};
use super::Error;
use crate::api::disruption;
use crate::api::object::{self, str_at};
use crate::api::resources::lookup_kind;
use crate::client::Client;

/// How long an eviction's entry in `disruptedPods` holds its pod out of the healthy count
/// (Kubernetes' `DeletionTimeout`).
const DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(client: Client) {
    super::first_of::<PodDisruptionBudget>(&client).await;
    let reconciler = Reconciler::<PodDisruptionBudget>::new("disruption", &client);
    let budgets = reconciler.store();
    reconciler
        .watches::<Pod, _>(move |pod| {
            all_in_namespace(&budgets, pod.metadata.namespace.as_deref().unwrap_or(""))
        })
        .run(move |budget| reconcile(client.clone(), budget))
        .await
}

async fn reconcile(client: Client, budget: Arc<PodDisruptionBudget>) -> Result<Action, Error> {
    let namespace = budget.metadata.namespace.clone().unwrap_or_default();
    let name = budget.metadata.name.clone().unwrap_or_default();
    let path = format!("/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}");
    let Some(current) = super::read_fresh(&client, &path).await? else {
        return Ok(Action::AwaitChange);
    };
    let pods = client
        .json(
            Method::GET,
            &format!("/api/v1/namespaces/{namespace}/pods"),
            "application/json",
            None,
        )
        .await?;
    let selector = disruption::selector_of(&current);
    let selected: Vec<&Value> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| selector.as_ref().is_some_and(|s| s.matches_object(p)))
        .filter(|p| !matches!(str_at(p, "/status/phase"), "Succeeded" | "Failed"))
        .collect();
    // Evictions still under way: their pods are not healthy, whatever they say.
    let now = chrono::Utc::now();
    let disrupted: BTreeMap<String, Value> = current
        .pointer("/status/disruptedPods")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(pod, since)| {
            let recent = since
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| {
                    (now - t.with_timezone(&chrono::Utc))
                        .to_std()
                        .is_ok_and(|age| age < DISRUPTION_TIMEOUT)
                });
            let still_there = selected.iter().any(|p| {
                object::name(p) == pod.as_str()
                    && p.pointer("/metadata/deletionTimestamp").is_none()
            });
            recent && still_there
        })
        .map(|(pod, since)| (pod.clone(), since.clone()))
        .collect();
    let counted: Vec<&Value> = selected
        .iter()
        .copied()
        .filter(|p| !disrupted.contains_key(object::name(p)))
        .collect();
    let expected = expected_pods(&client, &namespace, &selected).await?;
    let mut status = disruption::status_of(&current, &counted, expected);
    if !disrupted.is_empty() {
        status["disruptedPods"] = json!(disrupted);
    }
    if current.get("status") == Some(&status) {
        return Ok(Action::AwaitChange);
    }
    // An eviction that took a disruption meanwhile makes this count again.
    super::write_status_if_unchanged(&client, &path, &current, status, Action::AwaitChange).await
}

/// How many pods the selected pods' controllers want: the sum of each distinct controller's
/// `spec.replicas`, plus one for each pod without a controller.
async fn expected_pods(client: &Client, namespace: &str, pods: &[&Value]) -> Result<i32, Error> {
    let mut owners: BTreeMap<(String, String, String), ()> = BTreeMap::new();
    let mut alone = 0i32;
    for pod in pods {
        let owner = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|r| r["controller"] == true);
        match owner {
            Some(r) => {
                owners.insert(
                    (
                        str_at(r, "/apiVersion").to_string(),
                        str_at(r, "/kind").to_string(),
                        str_at(r, "/name").to_string(),
                    ),
                    (),
                );
            }
            None => alone = alone.saturating_add(1),
        }
    }
    let mut expected = alone;
    for (api_version, kind, name) in owners.keys() {
        let replicas = match lookup_kind(api_version, kind) {
            Some(resource) => {
                let path = resource.item_path(Some(namespace), name);
                match client
                    .json(Method::GET, &path, "application/json", None)
                    .await
                {
                    Ok(owner) => owner
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .map(|r| r.clamp(0, i64::from(i32::MAX)) as i32),
                    Err(e) if e.is_not_found() => Some(0),
                    Err(e) => return Err(e.into()),
                }
            }
            None => None,
        };
        // A controller without replicas (a DaemonSet, a Job): its selected pods count.
        let replicas = replicas.unwrap_or_else(|| {
            pods.iter()
                .filter(|p| {
                    p.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|refs| {
                            refs.iter()
                                .any(|r| r["name"] == name.as_str() && r["kind"] == kind.as_str())
                        })
                })
                .count() as i32
        });
        expected = expected.saturating_add(replicas);
    }
    Ok(expected)
}
