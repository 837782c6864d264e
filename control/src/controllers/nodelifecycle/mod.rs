//! Node lifecycle (self-healing in seconds). Each node's lease renewals are watched and judged
//! by this controller's clock ([`health`]): a node whose renewal is late by the grace period
//! is probed, and it is unreachable when its agent refuses the connection or its lease runs
//! out. An unreachable node is marked `Ready=Unknown` and tainted
//! `node.kubernetes.io/unreachable:NoExecute` (nothing new is scheduled there); its pods are
//! marked `Ready=False` with a `DisruptionTarget` condition (so they leave every Service's
//! endpoints), and those of controllers that may run twice for a moment (ReplicaSets, Jobs,
//! …) are deleted gracefully, so their controllers replace them at once while the deletion
//! waits for the node. Pods that must be unique (`crate::api::fencing`) are deleted only
//! once the node's agent has certainly fenced itself; everything else left (bare pods) once
//! the node has been unreachable for the eviction timeout. DaemonSet pods stay: their node is
//! their place. A node whose lease is renewed again is marked Ready and untainted, and its
//! agent finishes the deletions that waited for it. A deleted Node is known gone: all its
//! pods are deleted at once (Kubernetes' pod garbage collector does this for orphans).

mod health;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use tokio::sync::mpsc;

pub use health::Timing;
use health::{assess, Act, Health};

use crate::api::fencing::{
    controller_kind, must_be_unique, NODE_LEASE_NAMESPACE, NODE_UNREACHABLE_REASON,
};
use crate::client::{Client, DeleteParams, ListParams, Recorder, WatcherEvent};

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

/// The default `--node-monitor-grace-period`: how late a lease renewal may be before the
/// node's agent is probed. Agents renew every second by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// How long a probe waits for the agent to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How often the controller looks at every node; a look that comes much later than this means
/// the controller itself stood still.
const TICK: Duration = Duration::from_millis(200);

pub async fn run(client: Client, timing: Timing) {
    let recorder = Recorder::new(client.clone(), "node-controller", None);
    let (mut node_feed, mut lease_feed) = (
        client.shared_watch::<Node>(),
        client.shared_watch::<Lease>(),
    );
    let mut nodes: HashMap<String, Node> = HashMap::new();
    let mut leases: HashMap<String, Lease> = HashMap::new();
    let mut health: HashMap<String, Health> = HashMap::new();
    let (probes_tx, mut probes) = mpsc::channel::<(String, bool)>(64);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_look = Instant::now();
    // Probes and pod writes run beside the loop, and end with it (dropping the set aborts
    // them): nothing outlives the controller.
    let mut work = tokio::task::JoinSet::new();
    // Whether the nodes or the set of leases changed since `health` was last brought up to
    // date with them all. A lease renewal of a judged node is taken as it comes, without a
    // look at every node: a cluster of 5,000 nodes renews 5,000 times a second.
    let mut changed = true;
    loop {
        tokio::select! {
            Some(_) = work.join_next(), if !work.is_empty() => continue,
            Some(event) = node_feed.recv() => {
                let gone = deleted_nodes(&event, &nodes);
                event.apply_to(&mut nodes);
                for name in gone {
                    let (client, recorder) = (client.clone(), recorder.clone());
                    work.spawn(delete_pods(client, recorder, name, Reason::NodeDeleted));
                }
                changed = true;
                continue;
            }
            Some(event) = lease_feed.recv() => {
                let renewal = match &event {
                    WatcherEvent::Applied(lease) => Some(lease),
                    _ => None,
                };
                let judged = renewal
                    .is_some_and(|lease| renewal_seen(lease, &mut health, Instant::now()));
                changed |= !judged;
                event.apply_to(&mut leases);
                continue;
            }
            Some((name, answered)) = probes.recv() => {
                if let Some(node) = health.get_mut(&name) {
                    node.probed(answered, Instant::now());
                }
            }
            _ = tick.tick() => {}
        }
        // A look at every node: at each tick, and at once when a probe has answered.
        let now = Instant::now();
        if now.saturating_duration_since(last_look) > TICK * 5 {
            tracing::warn!(
                "node lifecycle controller stood still for {:?}: every node gets its grace again",
                now.saturating_duration_since(last_look)
            );
            health.values_mut().for_each(|h| h.forgive(now));
        }
        last_look = now;
        if std::mem::take(&mut changed) {
            observe_leases(&nodes, &leases, &mut health, now);
        }
        let tainted = |name: &str| nodes.get(&format!("/{name}")).is_some_and(is_tainted);
        let acts = assess(&mut health, tainted, timing, now);
        for (name, act) in acts {
            let Some(node) = nodes.get(&format!("/{name}")) else {
                continue;
            };
            match act {
                Act::Probe => {
                    let (probes, node) = (probes_tx.clone(), node.clone());
                    work.spawn(async move {
                        let answered = probe(&node).await;
                        let _ = probes.send((name, answered)).await;
                    });
                }
                Act::MarkUnreachable(why) => {
                    mark(&client, node, Some(&why)).await;
                    let message = format!("Node {name} status is now: NodeNotReady ({why})");
                    tracing::warn!("{message}");
                    recorder.warning(node, "NodeNotReady", &message);
                }
                // The pods' writes run beside the loop: a node may carry a thousand pods, and
                // the other nodes are judged meanwhile.
                Act::DisruptPods => {
                    work.spawn(disrupt_pods(client.clone(), recorder.clone(), name));
                }
                Act::ReplaceUniquePods => {
                    let (client, recorder) = (client.clone(), recorder.clone());
                    work.spawn(delete_pods(client, recorder, name, Reason::Fenced));
                }
                Act::Evict => {
                    let (client, recorder) = (client.clone(), recorder.clone());
                    work.spawn(delete_pods(client, recorder, name, Reason::Evicted));
                }
                Act::MarkReachable => {
                    mark(&client, node, None).await;
                    let message = format!("Node {name} status is now: NodeReady");
                    tracing::info!("{message}");
                    recorder.normal(node, "NodeReady", &message);
                    work.spawn(settle_pods(client.clone(), name));
                }
            }
        }
    }
}

/// The nodes an event of the node watch says are gone.
fn deleted_nodes(event: &WatcherEvent<Node>, nodes: &HashMap<String, Node>) -> Vec<String> {
    let name = |node: &Node| node.metadata.name.clone().unwrap_or_default();
    match event {
        WatcherEvent::Deleted(node) => vec![name(node)],
        WatcherEvent::Restarted(now) => {
            let kept: std::collections::HashSet<String> = now.iter().map(name).collect();
            nodes
                .values()
                .map(name)
                .filter(|n| !kept.contains(n))
                .collect()
        }
        WatcherEvent::Applied(_) => Vec::new(),
    }
}

/// Brings `health` up to date with the nodes and their leases: a new lease version is a
/// renewal seen now; a node without a lease (its agent is starting) is not judged.
fn observe_leases(
    nodes: &HashMap<String, Node>,
    leases: &HashMap<String, Lease>,
    health: &mut HashMap<String, Health>,
    now: Instant,
) {
    health.retain(|name, _| nodes.contains_key(&format!("/{name}")));
    for node in nodes.values() {
        let name = node.metadata.name.clone().unwrap_or_default();
        let Some(lease) = leases.get(&format!("{NODE_LEASE_NAMESPACE}/{name}")) else {
            health.remove(&name);
            continue;
        };
        let (version, duration) = version_and_duration(lease);
        health
            .entry(name)
            .and_modify(|h| h.lease_seen(version, duration, now))
            .or_insert_with(|| Health::new(now, version, duration));
    }
}

/// Takes a lease as its watch delivers it: when it is the lease of a node being judged, its
/// new version is a renewal seen at `now`, and the answer is true; otherwise (another
/// namespace's lease, or a node not judged yet) nothing changes.
fn renewal_seen(lease: &Lease, health: &mut HashMap<String, Health>, now: Instant) -> bool {
    if lease.metadata.namespace.as_deref() != Some(NODE_LEASE_NAMESPACE) {
        return true;
    }
    let name = lease.metadata.name.as_deref().unwrap_or_default();
    let Some(node) = health.get_mut(name) else {
        return false;
    };
    let (version, duration) = version_and_duration(lease);
    node.lease_seen(version, duration, now);
    true
}

fn version_and_duration(lease: &Lease) -> (&str, Duration) {
    let version = lease.metadata.resource_version.as_deref().unwrap_or("");
    let seconds = (lease.spec.as_ref())
        .and_then(|s| s.lease_duration_seconds)
        .unwrap_or(40);
    (
        version,
        Duration::from_secs(u64::try_from(seconds).unwrap_or(0)),
    )
}

fn is_tainted(node: &Node) -> bool {
    (node.spec.as_ref())
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == UNREACHABLE_TAINT))
}

/// Whether the node's agent accepts a TCP connection on its gateway within [`PROBE_TIMEOUT`].
/// A node that does not say where its agent listens counts as answering: only the lease
/// judges it.
async fn probe(node: &Node) -> bool {
    let status = node.status.as_ref();
    let address = (status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten())
    .find(|a| a.type_ == "InternalIP")
    .and_then(|a| a.address.parse::<std::net::IpAddr>().ok());
    let port = (status.and_then(|s| s.daemon_endpoints.as_ref()))
        .and_then(|d| d.kubelet_endpoint.as_ref())
        .and_then(|e| u16::try_from(e.port).ok());
    let (Some(address), Some(port)) = (address, port) else {
        return true;
    };
    let connect = tokio::net::TcpStream::connect(SocketAddr::new(address, port));
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, connect).await,
        Ok(Ok(_))
    )
}

/// Sets the node's Ready condition and its unreachable taint: `unreachable` says why it is,
/// `None` that it is reachable again.
async fn mark(client: &Client, node: &Node, unreachable: Option<&str>) {
    let reachable = unreachable.is_none();
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
        json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": format!("The node is unreachable: {}.", unreachable.unwrap_or_default()), "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    // Merged by type: the node's other conditions stay.
    let _ = nodes
        .patch_status_strategic(&name, &json!({"status": {"conditions": [condition]}}))
        .await;
}

/// The pods bound to `node` that still count (not finished).
async fn pods_on(client: &Client, node: &str) -> Vec<Pod> {
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    match client.api::<Pod>(None).list(&params).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .collect(),
        Err(e) => {
            tracing::warn!("listing the pods of node {node}: {e}");
            Vec::new()
        }
    }
}

/// Marks every pod of an unreachable node `Ready=False` with a `DisruptionTarget` condition
/// (they leave the endpoints of their Services), and deletes those of controllers that may
/// run twice for a moment gracefully: their controllers count a terminating pod as gone and
/// replace it at once, and the deletion finishes when the node's agent is back, or at the
/// eviction timeout. Budgets are not consulted: these pods are no longer ready, so they no
/// longer count toward any budget's healthy pods.
async fn disrupt_pods(client: Client, recorder: Recorder, node: String) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let pods = pods_on(&client, &node).await;
    futures::stream::iter(pods)
        .for_each_concurrent(CONCURRENT_POD_WRITES, |pod| {
            disrupt_pod(
                client.clone(),
                recorder.clone(),
                node.clone(),
                now.clone(),
                pod,
            )
        })
        .await;
}

async fn disrupt_pod(client: Client, recorder: Recorder, node: String, now: String, pod: Pod) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api = client.api::<Pod>(pod.metadata.namespace.as_deref());
    let message = format!("the pod's node {node} is unreachable");
    let conditions = json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": NODE_UNREACHABLE_REASON,
            "message": message, "lastTransitionTime": now},
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
            "message": "Taint manager: deleting due to NoExecute taint", "lastTransitionTime": now},
    ]}});
    if let Err(e) = api.patch_status_strategic(&name, &conditions).await {
        if !e.is_not_found() {
            tracing::warn!("marking pod {name} of unreachable node {node}: {e}");
        }
        return;
    }
    let replaceable =
        !must_be_unique(&pod) && controller_kind(&pod).is_some_and(|kind| kind != "DaemonSet");
    if !replaceable || pod.metadata.deletion_timestamp.is_some() {
        return;
    }
    let params = DeleteParams {
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    };
    if api.delete(&name, &params).await.is_ok() {
        let message = format!(
            "Marking for deletion Pod {}: its node {node} is unreachable",
            key_of(&pod)
        );
        recorder.normal(&pod, "TaintManagerEviction", &message);
    }
}

/// How many of a lost node's pods are worked on at once: a node may carry a thousand, and
/// one after another their writes would take seconds.
const CONCURRENT_POD_WRITES: usize = 32;

/// Why pods of an unreachable node are deleted for good.
#[derive(Clone, Copy)]
enum Reason {
    /// The node's agent has stopped its unique pods (`crate::api::fencing`).
    Fenced,
    /// The eviction timeout passed: every pod but DaemonSets'.
    Evicted,
    /// The Node object was deleted: the node is known gone, and all its pods with it.
    NodeDeleted,
}

/// Deletes pods of an unreachable node at once (its agent cannot finish a graceful deletion),
/// so that their controllers replace them elsewhere.
async fn delete_pods(client: Client, recorder: Recorder, node: String, reason: Reason) {
    let pods = pods_on(&client, &node).await;
    futures::stream::iter(pods)
        .for_each_concurrent(CONCURRENT_POD_WRITES, |pod| {
            delete_pod(client.clone(), recorder.clone(), node.clone(), reason, pod)
        })
        .await;
}

async fn delete_pod(client: Client, recorder: Recorder, node: String, reason: Reason, pod: Pod) {
    let chosen = match reason {
        Reason::Fenced => must_be_unique(&pod),
        Reason::Evicted => controller_kind(&pod) != Some("DaemonSet"),
        Reason::NodeDeleted => true,
    };
    if !chosen {
        return;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api = client.api::<Pod>(pod.metadata.namespace.as_deref());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    };
    if api.delete(&name, &params).await.is_ok() {
        let pod_key = key_of(&pod);
        let message = match reason {
            Reason::Fenced => format!(
                "Deleting pod {pod_key}: node {node} has been unreachable past its lease, so its agent has stopped it"
            ),
            Reason::Evicted => format!("Evicting pod {pod_key} from unreachable node {node}"),
            Reason::NodeDeleted => format!("Deleting pod {pod_key}: its node {node} was deleted"),
        };
        recorder.warning(&pod, "TaintManagerEviction", &message);
    }
}

/// A node back from unreachability: the pods that were only marked (its DaemonSets', unique
/// ones whose node came back in time, bare pods) lose their `DisruptionTarget`; their agent
/// writes their readiness again.
async fn settle_pods(client: Client, node: String) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for pod in pods_on(&client, &node).await {
        let disrupted = (pod.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
            });
        if !disrupted || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let patch = json!({"status": {"conditions": [
            {"type": "DisruptionTarget", "status": "False", "reason": "NodeReachable",
                "message": format!("node {node} is reachable again"), "lastTransitionTime": now},
        ]}});
        let api = client.api::<Pod>(pod.metadata.namespace.as_deref());
        if let Err(e) = api.patch_status_strategic(&name, &patch).await {
            tracing::warn!("settling pod {name} of node {node}: {e}");
        }
    }
}

fn key_of(pod: &Pod) -> String {
    crate::api::object::key_of(&pod.metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> (String, Node) {
        let node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        (format!("/{name}"), node)
    }

    fn lease(name: &str, version: &str, renew_time: &str) -> (String, Lease) {
        let lease = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "kube-node-lease", "resourceVersion": version},
            "spec": {"leaseDurationSeconds": 4, "renewTime": renew_time}}))
        .unwrap();
        (format!("kube-node-lease/{name}"), lease)
    }

    /// Renewals count when they are seen, whatever time the agent's clock wrote: an agent whose
    /// clock is an hour behind, or ahead, is judged like any other.
    #[test]
    fn renewals_are_judged_by_the_controllers_clock_not_the_agents() {
        let t0 = Instant::now();
        let nodes = HashMap::from([node("behind"), node("ahead"), node("starting")]);
        let mut leases = HashMap::from([
            lease("behind", "1", "2026-01-01T00:00:00.000000Z"),
            lease("ahead", "2", "2036-01-01T00:00:00.000000Z"),
        ]);
        let mut health = HashMap::new();
        observe_leases(&nodes, &leases, &mut health, t0);
        assert_eq!(health.len(), 2, "a node without a lease is not judged");
        let later = t0 + Duration::from_millis(1500);
        leases.extend([lease("behind", "3", "2026-01-01T00:00:01.000000Z")]);
        observe_leases(&nodes, &leases, &mut health, later);
        assert_eq!(health["behind"].late(later), Duration::ZERO);
        assert_eq!(health["ahead"].late(later), Duration::from_millis(1500));
        let timing = Timing {
            grace: Duration::from_secs(2),
            eviction_timeout: Duration::from_secs(60),
        };
        let acts = assess(&mut health, |_| false, timing, later);
        assert!(acts.is_empty(), "{acts:?}");

        // A node that is gone takes its health with it.
        let fewer = HashMap::from([node("ahead")]);
        observe_leases(&fewer, &leases, &mut health, later);
        assert_eq!(health.keys().collect::<Vec<_>>(), ["ahead"]);
    }

    /// A renewal of a judged node is taken as it comes; any other lease asks for a look at
    /// every node (a new node's) or is none of the controller's business.
    #[test]
    fn renewals_are_taken_one_by_one_between_looks() {
        let t0 = Instant::now();
        let nodes = HashMap::from([node("a")]);
        let leases = HashMap::from([lease("a", "1", "2026-01-01T00:00:00.000000Z")]);
        let mut health = HashMap::new();
        observe_leases(&nodes, &leases, &mut health, t0);
        let later = t0 + Duration::from_secs(1);

        let (_, same) = lease("a", "1", "2026-01-01T00:00:00.000000Z");
        assert!(renewal_seen(&same, &mut health, later));
        assert_eq!(
            health["a"].late(later),
            Duration::from_secs(1),
            "no new version"
        );
        let (_, renewed) = lease("a", "2", "2026-01-01T00:00:01.000000Z");
        assert!(renewal_seen(&renewed, &mut health, later));
        assert_eq!(health["a"].late(later), Duration::ZERO);

        let (_, newcomer) = lease("b", "3", "2026-01-01T00:00:01.000000Z");
        assert!(!renewal_seen(&newcomer, &mut health, later));
        assert!(!health.contains_key("b"));
        let mut elsewhere = renewed.clone();
        elsewhere.metadata.namespace = Some("kube-system".into());
        elsewhere.metadata.resource_version = Some("4".into());
        let before = health["a"].late(later + Duration::from_secs(1));
        assert!(renewal_seen(
            &elsewhere,
            &mut health,
            later + Duration::from_secs(1)
        ));
        assert_eq!(health["a"].late(later + Duration::from_secs(1)), before);
    }

    #[test]
    fn deleted_nodes_are_told_by_deletions_and_fresh_lists() {
        let known = HashMap::from([node("a"), node("b")]);
        let (_, a) = node("a");
        assert_eq!(
            deleted_nodes(&WatcherEvent::Deleted(a.clone()), &known),
            ["a"]
        );
        assert!(deleted_nodes(&WatcherEvent::Applied(a.clone()), &known).is_empty());
        assert_eq!(
            deleted_nodes(&WatcherEvent::Restarted(vec![a]), &known),
            ["b"]
        );
    }
}
