//! The scheduler, minimal for now: binds each pending pod to a ready, schedulable node,
//! spreading pods by choosing the node with the fewest active pods, through `pods/binding`.
//! Filters (taints, affinity, resource fit) and scoring profiles come with the scheduler issue;
//! [`choose_node`] is the seam.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::sync::Semaphore;

use crate::client::{watcher, Client, ListParams, Recorder, WatcherEvent};

/// How many bindings may be in flight at once (they share the store's group commits).
const PARALLEL_BINDS: usize = 64;

/// Runs until the task is dropped.
pub async fn run(client: Client) {
    let mut pods = watcher(client.api::<Pod>(None), ListParams::default());
    let mut nodes = watcher(client.api::<Node>(None), ListParams::default());
    let mut state = ClusterView::default();
    let binds = Arc::new(Semaphore::new(PARALLEL_BINDS));
    let recorder = Recorder::new(client.clone(), "default-scheduler", None);
    loop {
        tokio::select! {
            Some(event) = pods.recv() => state.apply_pod(event),
            Some(event) = nodes.recv() => state.apply_node(event),
            else => return,
        }
        // Drain whatever else is already queued before deciding, so a burst is scheduled together.
        while let Ok(event) = pods.try_recv() {
            state.apply_pod(event);
        }
        for (key, pod) in state.pending() {
            let Some(node) = choose_node(&state) else {
                break;
            };
            state.assign(&key, &node);
            let (client, binds, recorder) = (client.clone(), binds.clone(), recorder.clone());
            let (namespace, name) = (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            let permit = binds
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            tokio::spawn(async move {
                match client.bind_pod(&namespace, &name, &node).await {
                    Ok(()) => {
                        let message = format!("Successfully assigned {namespace}/{name} to {node}");
                        recorder.normal(&pod, "Scheduled", &message).await;
                    }
                    Err(e) => tracing::debug!("binding {namespace}/{name} to {node}: {e}"),
                }
                drop(permit);
            });
        }
    }
}

/// What the scheduler knows: nodes, and which pods are where.
#[derive(Default)]
struct ClusterView {
    nodes: BTreeMap<String, Node>,
    /// Pods by namespace/name.
    pods: HashMap<String, Pod>,
    /// Pods the scheduler has sent a binding for but not yet seen bound.
    assumed: HashMap<String, String>,
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

impl ClusterView {
    fn apply_pod(&mut self, event: WatcherEvent<Pod>) {
        match event {
            WatcherEvent::Restarted(all) => {
                self.pods = all.into_iter().map(|p| (pod_key(&p), p)).collect();
                self.assumed.retain(|k, _| self.pods.contains_key(k));
            }
            WatcherEvent::Applied(pod) => {
                let key = pod_key(&pod);
                if pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some()
                {
                    self.assumed.remove(&key);
                }
                self.pods.insert(key, pod);
            }
            WatcherEvent::Deleted(pod) => {
                let key = pod_key(&pod);
                self.pods.remove(&key);
                self.assumed.remove(&key);
            }
        }
    }

    fn apply_node(&mut self, event: WatcherEvent<Node>) {
        match event {
            WatcherEvent::Restarted(all) => {
                self.nodes = all
                    .into_iter()
                    .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
                    .collect();
            }
            WatcherEvent::Applied(node) => {
                self.nodes
                    .insert(node.metadata.name.clone().unwrap_or_default(), node);
            }
            WatcherEvent::Deleted(node) => {
                self.nodes
                    .remove(node.metadata.name.as_deref().unwrap_or(""));
            }
        }
    }

    /// Pods with no node that are not being deleted and not already being bound.
    fn pending(&self) -> Vec<(String, Pod)> {
        let mut pending: Vec<(String, Pod)> = self
            .pods
            .iter()
            .filter(|(key, pod)| {
                let unbound = pod
                    .spec
                    .as_ref()
                    .is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty());
                unbound
                    && pod.metadata.deletion_timestamp.is_none()
                    && !self.assumed.contains_key(*key)
            })
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        // Oldest first, so scheduling order follows creation order.
        pending.sort_by(|a, b| {
            a.1.metadata
                .creation_timestamp
                .cmp(&b.1.metadata.creation_timestamp)
                .then(a.0.cmp(&b.0))
        });
        pending
    }

    fn assign(&mut self, key: &str, node: &str) {
        self.assumed.insert(key.to_string(), node.to_string());
    }

    /// Active (non-terminal) pods per node, counting assumed bindings.
    fn load(&self) -> HashMap<&str, usize> {
        let mut load: HashMap<&str, usize> = HashMap::new();
        for pod in self.pods.values() {
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("");
            if matches!(phase, "Succeeded" | "Failed") {
                continue;
            }
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                *load.entry(node).or_default() += 1;
            }
        }
        for node in self.assumed.values() {
            *load.entry(node.as_str()).or_default() += 1;
        }
        load
    }
}

/// A node is eligible when its Ready condition is True and it is not cordoned.
pub fn node_is_eligible(node: &Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    ready && !cordoned
}

/// The eligible node with the fewest active pods (ties go to the first by name).
fn choose_node(view: &ClusterView) -> Option<String> {
    let load = view.load();
    view.nodes
        .iter()
        .filter(|(_, node)| node_is_eligible(node))
        .min_by_key(|(name, _)| load.get(name.as_str()).copied().unwrap_or(0))
        .map(|(name, _)| name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ready: bool, cordoned: bool) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"unschedulable": cordoned},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    fn pod(name: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"containers": [], "nodeName": node}})).unwrap()
    }

    #[test]
    fn spreads_over_eligible_nodes_only() {
        let mut view = ClusterView::default();
        view.apply_node(WatcherEvent::Restarted(vec![
            node("a", true, false),
            node("b", true, false),
            node("c", false, false),
            node("d", true, true),
        ]));
        view.apply_pod(WatcherEvent::Restarted(vec![
            pod("p1", Some("a")),
            pod("p2", None),
            pod("p3", None),
        ]));
        assert_eq!(view.pending().len(), 2);
        let first = choose_node(&view).unwrap();
        assert_eq!(first, "b");
        view.assign("default/p2", &first);
        assert_eq!(view.pending().len(), 1);
        view.assign("default/p3", "a");
        // a: p1 + assumed p3 = 2, b: assumed p2 = 1.
        assert_eq!(choose_node(&view).unwrap(), "b");
        assert!(choose_node(&ClusterView::default()).is_none());
    }
}
