//! The scheduler: binds each pending pod to a ready, schedulable node where it fits (pod
//! count, CPU and memory requests against the node's allocatable), spreading pods by choosing
//! the node with the fewest active pods, through `pods/binding`. A pod that fits nowhere gets
//! `PodScheduled=False` with the reason. Taints, affinity and scoring profiles come with the
//! scheduler issue; [`choose_node`] is the seam.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::sync::Semaphore;

use crate::api::quantity;
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
        // Usage is computed once per round and kept current as pods are assigned.
        let mut usage = state.usage();
        for (key, pod) in state.pending() {
            let node = match choose_node(&state, &usage, &pod) {
                Ok(node) => node,
                Err(why) => {
                    if state.unschedulable.insert(key.clone()) {
                        let client = client.clone();
                        tokio::spawn(async move { mark_unschedulable(&client, &pod, &why).await });
                    }
                    continue;
                }
            };
            state.unschedulable.remove(&key);
            state.assign(&key, &node, Requests::of(&pod));
            usage
                .entry(node.clone())
                .or_default()
                .add(Requests::of(&pod));
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
    /// Pods the scheduler has sent a binding for but not yet seen bound, with their requests.
    assumed: HashMap<String, (String, Requests)>,
    /// Pods already reported as fitting nowhere.
    unschedulable: std::collections::HashSet<String>,
}

/// What a pod asks of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub cpu_millis: u64,
    pub memory: u64,
    pub pods: u64,
}

impl Requests {
    /// The sum of the containers' requests (an init container's, if larger, as they run alone).
    pub fn of(pod: &Pod) -> Self {
        let Some(spec) = pod.spec.as_ref() else {
            return Self {
                pods: 1,
                ..Default::default()
            };
        };
        fn request(c: &k8s_openapi::api::core::v1::Container, name: &str) -> Option<String> {
            let resources = c.resources.as_ref()?;
            let quantity = resources.requests.as_ref().and_then(|r| r.get(name));
            let quantity = quantity.or_else(|| resources.limits.as_ref().and_then(|l| l.get(name)));
            quantity.map(|q| q.0.clone())
        }
        let sum = |name: &str, parse: fn(&str) -> Option<u64>| -> u64 {
            let main: u64 = spec
                .containers
                .iter()
                .filter_map(|c| request(c, name))
                .filter_map(|q| parse(&q))
                .sum();
            let init = spec
                .init_containers
                .iter()
                .flatten()
                .filter_map(|c| request(c, name))
                .filter_map(|q| parse(&q))
                .max()
                .unwrap_or(0);
            main.max(init)
        };
        Self {
            cpu_millis: sum("cpu", quantity::parse_millis),
            memory: sum("memory", quantity::parse),
            pods: 1,
        }
    }

    fn add(&mut self, other: Requests) {
        self.cpu_millis += other.cpu_millis;
        self.memory += other.memory;
        self.pods += other.pods;
    }
}

/// A node's allocatable resources (unknown ones are unlimited).
fn allocatable(node: &Node) -> Requests {
    let get = |name: &str, parse: fn(&str) -> Option<u64>| {
        node.status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get(name))
            .and_then(|q| parse(&q.0))
            .unwrap_or(u64::MAX)
    };
    Requests {
        cpu_millis: get("cpu", quantity::parse_millis),
        memory: get("memory", quantity::parse),
        pods: get("pods", quantity::parse),
    }
}

/// Records on the pod why it cannot be scheduled (what `kubectl describe` shows).
async fn mark_unschedulable(client: &Client, pod: &Pod, why: &str) {
    let (namespace, name) = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    let condition = serde_json::json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why,
        "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
    let patch = serde_json::json!({"status": {"conditions": [condition]}});
    if let Err(e) = client
        .api::<Pod>(Some(&namespace))
        .patch_status(&name, &patch)
        .await
    {
        tracing::debug!("marking {namespace}/{name} unschedulable: {e}");
    }
    Recorder::new(client.clone(), "default-scheduler", None)
        .warning(pod, "FailedScheduling", why)
        .await;
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

    fn assign(&mut self, key: &str, node: &str, requests: Requests) {
        self.assumed
            .insert(key.to_string(), (node.to_string(), requests));
    }

    /// What active (non-terminal) pods use per node, counting assumed bindings.
    fn usage(&self) -> HashMap<String, Requests> {
        let mut usage: HashMap<String, Requests> = HashMap::new();
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
                usage
                    .entry(node.to_string())
                    .or_default()
                    .add(Requests::of(pod));
            }
        }
        for (node, requests) in self.assumed.values() {
            usage.entry(node.clone()).or_default().add(*requests);
        }
        usage
    }
}

/// Whether the node carries every label of the pod's `nodeSelector`.
fn matches_node_selector(pod: &Pod, node: &Node) -> bool {
    let Some(selector) = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref()) else {
        return true;
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The first NoSchedule or NoExecute taint of the node that the pod does not tolerate.
fn untolerated_taint<'n>(
    pod: &Pod,
    node: &'n Node,
) -> Option<&'n k8s_openapi::api::core::v1::Taint> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref())?;
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| {
            !tolerations.iter().any(|t| {
                let effect = t
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == taint.effect);
                let key = t.key.as_deref().unwrap_or("");
                let matches = match t.operator.as_deref().unwrap_or("Equal") {
                    "Exists" => key.is_empty() || key == taint.key,
                    _ => {
                        key == taint.key
                            && t.value.as_deref().unwrap_or("")
                                == taint.value.as_deref().unwrap_or("")
                    }
                };
                effect && matches
            })
        })
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

/// The eligible node where `pod` fits with the fewest active pods (ties go to the first by
/// name), or why there is none, worded as Kubernetes' scheduler words it.
fn choose_node(
    view: &ClusterView,
    usage: &HashMap<String, Requests>,
    pod: &Pod,
) -> Result<String, String> {
    let wanted = Requests::of(pod);
    let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut best: Option<(&String, u64)> = None;
    for (name, node) in &view.nodes {
        if !node_is_eligible(node) {
            *reasons
                .entry("node(s) were not ready or were cordoned")
                .or_default() += 1;
            continue;
        }
        if !matches_node_selector(pod, node) {
            *reasons
                .entry("node(s) didn't match Pod's node affinity/selector")
                .or_default() += 1;
            continue;
        }
        if untolerated_taint(pod, node).is_some() {
            *reasons
                .entry("node(s) had untolerated taint(s)")
                .or_default() += 1;
            continue;
        }
        let used = usage.get(name).copied().unwrap_or_default();
        let room = allocatable(node);
        let misfit = if used.pods + 1 > room.pods {
            Some("Too many pods")
        } else if used.cpu_millis + wanted.cpu_millis > room.cpu_millis {
            Some("Insufficient cpu")
        } else if used.memory + wanted.memory > room.memory {
            Some("Insufficient memory")
        } else {
            None
        };
        if let Some(reason) = misfit {
            *reasons.entry(reason).or_default() += 1;
            continue;
        }
        if best.is_none_or(|(_, pods)| used.pods < pods) {
            best = Some((name, used.pods));
        }
    }
    match best {
        Some((name, _)) => Ok(name.clone()),
        None => {
            let detail: Vec<String> = reasons
                .iter()
                .map(|(reason, count)| format!("{count} {reason}"))
                .collect();
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(" {}.", detail.join(", "))
            };
            Err(format!(
                "0/{} nodes are available:{detail}",
                view.nodes.len()
            ))
        }
    }
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
        let p = pod("p2", None);
        let first = choose_node(&view, &view.usage(), &p).unwrap();
        assert_eq!(first, "b");
        view.assign("default/p2", &first, Requests::of(&p));
        assert_eq!(view.pending().len(), 1);
        view.assign("default/p3", "a", Requests::of(&p));
        // a: p1 + assumed p3 = 2, b: assumed p2 = 1.
        assert_eq!(choose_node(&view, &view.usage(), &p).unwrap(), "b");
        assert_eq!(
            choose_node(&ClusterView::default(), &HashMap::new(), &p).unwrap_err(),
            "0/0 nodes are available:"
        );
    }

    #[test]
    fn pods_go_only_where_they_fit() {
        let mut small = node("small", true, false);
        small.status.as_mut().unwrap().allocatable = Some(
            [("cpu", "1"), ("memory", "1Gi"), ("pods", "2")]
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity(v.to_string()),
                    )
                })
                .collect(),
        );
        let mut view = ClusterView::default();
        view.apply_node(WatcherEvent::Restarted(vec![small]));
        let wanting = |cpu: &str, memory: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}}))
            .unwrap()
        };
        assert_eq!(
            choose_node(&view, &view.usage(), &wanting("500m", "512Mi")).unwrap(),
            "small"
        );
        assert_eq!(
            choose_node(&view, &view.usage(), &wanting("2", "1Mi")).unwrap_err(),
            "0/1 nodes are available: 1 Insufficient cpu."
        );
        assert_eq!(
            choose_node(&view, &view.usage(), &wanting("1", "2Gi")).unwrap_err(),
            "0/1 nodes are available: 1 Insufficient memory."
        );
        view.assign("default/a", "small", Requests::of(&wanting("100m", "1Mi")));
        view.assign("default/b", "small", Requests::of(&wanting("100m", "1Mi")));
        assert_eq!(
            choose_node(&view, &view.usage(), &wanting("100m", "1Mi")).unwrap_err(),
            "0/1 nodes are available: 1 Too many pods."
        );
    }

    #[test]
    fn node_selectors_and_taints_filter_nodes() {
        let mut gpu = node("gpu", true, false);
        gpu.metadata.labels = Some([("accel".to_string(), "yes".to_string())].into());
        let mut tainted = node("tainted", true, false);
        tainted.spec.as_mut().unwrap().taints = Some(vec![serde_json::from_value(
            json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"}),
        )
        .unwrap()]);
        let mut view = ClusterView::default();
        view.apply_node(WatcherEvent::Restarted(vec![gpu, tainted]));
        let with = |extra: serde_json::Value| -> Pod {
            let mut spec = json!({"containers": []});
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value(
                json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}),
            )
            .unwrap()
        };
        let usage = view.usage();
        assert_eq!(
            choose_node(&view, &usage, &with(json!({}))).unwrap(),
            "gpu",
            "the taint keeps plain pods off"
        );
        assert_eq!(
            choose_node(
                &view,
                &usage,
                &with(json!({"nodeSelector": {"accel": "yes"}}))
            )
            .unwrap(),
            "gpu"
        );
        let tolerant = with(
            json!({"nodeSelector": {"kubernetes.io/hostname": "x"}, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
        );
        assert_eq!(
            choose_node(&view, &usage, &tolerant).unwrap_err(),
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
        );
        let tolerant = with(json!({"tolerations": [{"operator": "Exists"}], "nodeSelector": {}}));
        view.assign(
            "default/x",
            "gpu",
            Requests {
                pods: 1,
                ..Default::default()
            },
        );
        assert_eq!(
            choose_node(&view, &view.usage(), &tolerant).unwrap(),
            "tainted",
            "tolerating everything, the emptier node wins"
        );
    }
}
