//! Node lifecycle (self-healing): a node whose Lease has expired is marked `Ready=Unknown` and
//! tainted `node.kubernetes.io/unreachable:NoExecute` (so nothing new is scheduled there);
//! once it has been unreachable for the eviction timeout, its pods are deleted and their
//! controllers replace them on other nodes. A node whose Lease is renewed again is marked
//! Ready and untainted.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use crate::client::{Client, DeleteParams, ListParams, Recorder};

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// How often leases are checked.
const PERIOD: Duration = Duration::from_millis(500);

pub async fn run(client: Client, eviction_timeout: Duration) {
    let recorder = Recorder::new(client.clone(), "node-controller", None);
    // When each node was first seen unreachable.
    let mut unreachable_since: HashMap<String, tokio::time::Instant> = HashMap::new();
    // Nodes and node leases from the process's shared watches (a list of every node each
    // period cost more than the check itself in large clusters).
    let (mut node_feed, mut lease_feed) = (
        client.shared_watch::<Node>(),
        client.shared_watch::<Lease>(),
    );
    let (mut nodes, mut leases) = (HashMap::new(), HashMap::new());
    let mut period = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            Some(event) = node_feed.recv() => {
                event.apply_to(&mut nodes);
                continue;
            }
            Some(event) = lease_feed.recv() => {
                event.apply_to(&mut leases);
                continue;
            }
            _ = period.tick() => {}
        }
        let now = chrono::Utc::now();
        for node in nodes.values() {
            let name = node.metadata.name.clone().unwrap_or_default();
            let lease: Option<&Lease> = leases.get(&format!("kube-node-lease/{name}"));
            let expired = match lease.and_then(|l| l.spec.as_ref()) {
                Some(spec) => {
                    let renewed = spec.renew_time.as_ref().map(|t| t.0).unwrap_or(now);
                    let valid =
                        chrono::Duration::seconds(spec.lease_duration_seconds.unwrap_or(40) as i64);
                    now > renewed + valid
                }
                // No lease yet: the agent is still starting.
                None => false,
            };
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|ts| ts.iter().any(|t| t.key == UNREACHABLE_TAINT));
            if expired {
                let since = *unreachable_since
                    .entry(name.clone())
                    .or_insert_with(tokio::time::Instant::now);
                if !tainted {
                    mark(&client, node, false).await;
                    recorder
                        .warning(
                            node,
                            "NodeNotReady",
                            &format!("Node {name} status is now: NodeNotReady (its lease expired)"),
                        )
                        .await;
                }
                if since.elapsed() >= eviction_timeout {
                    evict(&client, &recorder, &name).await;
                }
            } else {
                unreachable_since.remove(&name);
                if tainted {
                    mark(&client, node, true).await;
                    recorder
                        .normal(
                            node,
                            "NodeReady",
                            &format!("Node {name} status is now: NodeReady"),
                        )
                        .await;
                }
            }
        }
    }
}

/// Sets the node's Ready condition and its unreachable taint.
async fn mark(client: &Client, node: &Node, reachable: bool) {
    let name = node.metadata.name.clone().unwrap_or_default();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut taints: Vec<serde_json::Value> = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != UNREACHABLE_TAINT)
        .map(|t| serde_json::to_value(t).unwrap_or_default())
        .collect();
    if !reachable {
        taints.push(json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": now}));
    }
    let nodes = client.api::<Node>(None);
    let _ = nodes
        .patch_merge(&name, &json!({"spec": {"taints": taints}}))
        .await;
    let condition = if reachable {
        json!({"type": "Ready", "status": "True", "reason": "AgentReady", "message": "the node's lease is renewed again", "lastHeartbeatTime": now, "lastTransitionTime": now})
    } else {
        json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "The node's agent stopped renewing its lease.", "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let _ = nodes
        .patch_status(&name, &json!({"status": {"conditions": [condition]}}))
        .await;
}

/// Deletes the pods of an unreachable node at once: its agent cannot finish a graceful
/// deletion, and their controllers replace them elsewhere.
async fn evict(client: &Client, recorder: &Recorder, node: &str) {
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let Ok(pods) = client.api::<Pod>(None).list(&params).await else {
        return;
    };
    for pod in pods.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api = client.api::<Pod>(pod.metadata.namespace.as_deref());
        let deleted = api
            .delete(
                &name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                },
            )
            .await;
        if deleted.is_ok() {
            recorder
                .warning(
                    &pod,
                    "TaintManagerEviction",
                    &format!("Evicting pod from unreachable node {node}"),
                )
                .await;
        }
    }
}
