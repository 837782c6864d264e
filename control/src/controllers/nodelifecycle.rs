//! Node lifecycle (self-healing): a node whose Lease has expired is marked `Ready=Unknown` and
//! tainted `node.kubernetes.io/unreachable:NoExecute` (so nothing new is scheduled there);
//! once it has been unreachable for the eviction timeout, its pods are deleted and their
//! controllers replace them on other nodes. A node whose Lease is renewed again is marked
//! Ready and untainted.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use crate::api::time;
use crate::client::{Client, DeleteParams, ListParams, Recorder};

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// What the controller does about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Its lease expired: Ready=Unknown and the unreachable taint.
    MarkUnreachable,
    /// Unreachable for the eviction timeout: delete its pods.
    Evict,
    /// Its lease is renewed again: Ready and untainted.
    MarkReachable,
}

/// Decides, at `now`, what each node needs, and when to look again (the next lease expiry or
/// eviction due). Pure: the clock is a parameter, so the rules are tested on made-up times.
/// `unreachable_since` remembers when each node was first seen with an expired lease.
pub fn assess(
    nodes: &HashMap<String, Node>,
    leases: &HashMap<String, Lease>,
    unreachable_since: &mut HashMap<String, DateTime<Utc>>,
    eviction_timeout: Duration,
    now: DateTime<Utc>,
) -> (Vec<(String, Act)>, Option<DateTime<Utc>>) {
    let mut acts = Vec::new();
    let mut next_due: Option<DateTime<Utc>> = None;
    let mut due_at = |t: Option<DateTime<Utc>>| {
        if let Some(t) = t.filter(|t| *t > now) {
            next_due = Some(next_due.map_or(t, |d| d.min(t)));
        }
    };
    let eviction = chrono::TimeDelta::from_std(eviction_timeout).unwrap_or(chrono::TimeDelta::MAX);
    for node in nodes.values() {
        let name = node.metadata.name.clone().unwrap_or_default();
        let lease = leases.get(&format!("kube-node-lease/{name}"));
        // No lease yet: the agent is still starting.
        let expires = lease.and_then(|l| l.spec.as_ref()).map(|spec| {
            let renewed = spec
                .renew_time
                .as_ref()
                .map(time::micro_instant)
                .unwrap_or(now);
            let valid = chrono::TimeDelta::try_seconds(i64::from(
                spec.lease_duration_seconds.unwrap_or(40).max(0),
            ))
            .unwrap_or_default();
            renewed
                .checked_add_signed(valid)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        });
        let tainted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == UNREACHABLE_TAINT));
        match expires {
            Some(expires) if now > expires => {
                let since = *unreachable_since.entry(name.clone()).or_insert(now);
                if !tainted {
                    acts.push((name.clone(), Act::MarkUnreachable));
                }
                match since.checked_add_signed(eviction) {
                    Some(evict_at) if now < evict_at => due_at(Some(evict_at)),
                    Some(_) => acts.push((name, Act::Evict)),
                    None => {}
                }
            }
            _ => {
                unreachable_since.remove(&name);
                if tainted {
                    acts.push((name, Act::MarkReachable));
                }
                // Checked again just after the lease runs out.
                due_at(
                    expires.and_then(|e| e.checked_add_signed(chrono::TimeDelta::milliseconds(1))),
                );
            }
        }
    }
    (acts, next_due)
}

pub async fn run(client: Client, eviction_timeout: Duration) {
    let recorder = Recorder::new(client.clone(), "node-controller", None);
    let mut unreachable_since: HashMap<String, DateTime<Utc>> = HashMap::new();
    // Nodes and node leases from the process's shared watches.
    let (mut node_feed, mut lease_feed) = (
        client.shared_watch::<Node>(),
        client.shared_watch::<Lease>(),
    );
    let (mut nodes, mut leases) = (HashMap::new(), HashMap::new());
    // No polling: look again on a change, or when the next lease expiry or eviction is due.
    let mut next_due: Option<DateTime<Utc>> = None;
    loop {
        let wait = async {
            match next_due {
                Some(due) => {
                    tokio::time::sleep((due - Utc::now()).to_std().unwrap_or_default()).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(event) = node_feed.recv() => event.apply_to(&mut nodes),
            Some(event) = lease_feed.recv() => event.apply_to(&mut leases),
            _ = wait => {}
        }
        let (acts, due) = assess(
            &nodes,
            &leases,
            &mut unreachable_since,
            eviction_timeout,
            Utc::now(),
        );
        next_due = due;
        for (name, act) in acts {
            let Some(node) = nodes.get(&format!("/{name}")) else {
                continue;
            };
            match act {
                Act::MarkUnreachable => {
                    mark(&client, node, false).await;
                    let message =
                        format!("Node {name} status is now: NodeNotReady (its lease expired)");
                    recorder.warning(node, "NodeNotReady", &message).await;
                }
                Act::Evict => evict(&client, &recorder, &name).await,
                Act::MarkReachable => {
                    mark(&client, node, true).await;
                    let message = format!("Node {name} status is now: NodeReady");
                    recorder.normal(node, "NodeReady", &message).await;
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
    // Merged by type: the node's other conditions stay.
    let _ = nodes
        .patch_status_strategic(&name, &json!({"status": {"conditions": [condition]}}))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    fn node(name: &str, tainted: bool) -> (String, Node) {
        let taints = if tainted {
            json!([{"key": UNREACHABLE_TAINT, "effect": "NoExecute"}])
        } else {
            json!([])
        };
        let node =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"taints": taints}}))
                .unwrap();
        (format!("/{name}"), node)
    }

    fn lease(name: &str, renewed: DateTime<Utc>) -> (String, Lease) {
        let lease = serde_json::from_value(json!({"metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"leaseDurationSeconds": 40, "renewTime": renewed.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)}}))
        .unwrap();
        (format!("kube-node-lease/{name}"), lease)
    }

    /// A node whose agent stops at t=0 (lease renewed then, valid 40 s), with a 60 s eviction
    /// timeout: nothing until 40 s, then the taint, then eviction at 100 s, and the timer is
    /// always set for the next of those moments. No sleeping: the clock is a parameter.
    #[test]
    fn leases_expire_taint_and_evict_on_time() {
        let timeout = Duration::from_secs(60);
        let leases = HashMap::from([lease("n1", at(0))]);
        let mut since = HashMap::new();
        let healthy = HashMap::from([node("n1", false)]);
        let (acts, due) = assess(&healthy, &leases, &mut since, timeout, at(39));
        assert!(acts.is_empty());
        assert_eq!(
            due,
            Some(at(40) + chrono::TimeDelta::milliseconds(1)),
            "look again as the lease runs out"
        );

        let (acts, due) = assess(&healthy, &leases, &mut since, timeout, at(41));
        assert_eq!(acts, [("n1".to_string(), Act::MarkUnreachable)]);
        assert_eq!(
            due,
            Some(at(101)),
            "eviction is due 60 s after it was first seen unreachable"
        );

        let tainted = HashMap::from([node("n1", true)]);
        let (acts, due) = assess(&tainted, &leases, &mut since, timeout, at(70));
        assert!(acts.is_empty(), "tainted already, not yet due");
        assert_eq!(due, Some(at(101)));
        let (acts, due) = assess(&tainted, &leases, &mut since, timeout, at(101));
        assert_eq!(acts, [("n1".to_string(), Act::Evict)]);
        assert_eq!(due, None);

        // The agent comes back: ready and untainted, and the clock restarts.
        let renewed = HashMap::from([lease("n1", at(120))]);
        let (acts, due) = assess(&tainted, &renewed, &mut since, timeout, at(121));
        assert_eq!(acts, [("n1".to_string(), Act::MarkReachable)]);
        assert_eq!(due, Some(at(160) + chrono::TimeDelta::milliseconds(1)));
        assert!(since.is_empty());
    }

    #[test]
    fn a_node_without_a_lease_and_absurd_timeouts_do_not_panic() {
        let mut since = HashMap::new();
        let nodes = HashMap::from([node("new", false)]);
        let (acts, due) = assess(&nodes, &HashMap::new(), &mut since, Duration::MAX, at(0));
        assert!(
            acts.is_empty() && due.is_none(),
            "a starting agent has no lease yet"
        );
        let leases = HashMap::from([lease("new", at(0))]);
        let (acts, _) = assess(&nodes, &leases, &mut since, Duration::MAX, at(1000));
        assert_eq!(
            acts,
            [("new".to_string(), Act::MarkUnreachable)],
            "never evicted"
        );
    }
}
