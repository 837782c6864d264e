//! The scheduler: binds each pending pod to a node through `pods/binding`. Filters
//! ([`filters`]: ready and uncordoned, nodeSelector and required node affinity, taints and
//! tolerations; [`affinity`]: inter-pod affinity and anti-affinity; resource fit of pods,
//! CPU and memory requests against allocatable) decide where a pod may go; scoring
//! ([`score`]: stated preferences, then the spread or bin-packing profile) where it goes. A
//! pod that fits nowhere gets `PodScheduled=False` with Kubernetes' wording of the reasons.

pub mod affinity;
pub mod filters;
pub mod preemption;
pub mod score;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use tokio::sync::Semaphore;

use crate::api::{pod_requests, quantity};
use crate::client::{watcher, Client, ListParams, Recorder, WatcherEvent};
pub use filters::node_is_eligible;
use filters::{matches_node_selector, preferred_node_affinity, untolerated_taint};
pub use score::Profile;

/// Settings of the scheduler.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// The profile of pods that name no other (`schedulerName` unset or `default-scheduler`).
    pub default_profile: Profile,
}

/// Bindings this process's schedulers have had accepted by the API server (a counter, as
/// Kubernetes' `scheduler_schedule_attempts_total{result="scheduled"}`; the benchmark reads it).
pub static BINDINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many bindings may be in flight at once (they share the store's group commits).
const PARALLEL_BINDS: usize = 256;

/// Runs until the task is dropped.
pub async fn run(client: Client, options: Options) {
    let mut pods = client.shared_watch::<Pod>();
    let mut nodes = watcher::<Node>(&client, ListParams::default());
    // Budgets only weigh preemption's choice of victims; nothing waits for them to sync.
    let mut budgets = watcher::<PodDisruptionBudget>(&client, ListParams::default());
    let mut state = ClusterView::default();
    let binds = Arc::new(Semaphore::new(PARALLEL_BINDS));
    let recorder = Recorder::new(client.clone(), "default-scheduler", None);
    loop {
        tokio::select! {
            Some(event) = pods.recv() => state.apply_pod(event),
            Some(event) = nodes.recv() => state.apply_node(event),
            Some(event) = budgets.recv() => {
                state.apply_budget(event);
                continue;
            }
            else => return,
        }
        // Drain whatever else is already queued before deciding, so a burst is scheduled together.
        while let Ok(event) = pods.try_recv() {
            state.apply_pod(event);
        }
        // Most rounds are bindings coming back: nothing pending, nothing to compute.
        // Nothing is decided before both caches are filled (client-go's WaitForCacheSync): a
        // backlog judged against no nodes would all be marked unschedulable.
        if !(state.nodes_synced && state.pods_synced) {
            continue;
        }
        let pending = state.pending();
        if pending.is_empty() {
            continue;
        }
        // Usage is computed once per round and kept current as pods are assigned.
        let mut usage = state.usage();
        let mut repellers = state.pods.values().filter(|p| affinity::repels(p)).count();
        for (key, pod) in pending {
            let scheduler_name = pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref());
            let Some(profile) =
                Profile::for_scheduler_name(scheduler_name, options.default_profile)
            else {
                continue; // another scheduler's pod
            };
            // Inter-pod terms need every placed pod; most pods have none and skip that.
            let constraints = if affinity::has_terms(&pod) || repellers > 0 {
                affinity::Constraints::of(&pod, &state.placed(), &state.nodes)
            } else {
                affinity::Constraints::default()
            };
            let node = match choose_node(&state, &usage, &pod, profile, &constraints) {
                Ok(node) => node,
                Err(why) => {
                    let may_preempt = state
                        .nominated
                        .get(&key)
                        .is_none_or(|at| at.elapsed() > NOMINATION_TIMEOUT);
                    if may_preempt {
                        let plan = preemption::plan(
                            &state.nodes,
                            &state.allocatable,
                            &usage,
                            state.pods.iter().map(|(k, p)| (k, p, state.requests_of(k))),
                            &state.budget_index,
                            &pod,
                        );
                        if let Some(plan) = plan {
                            state
                                .nominated
                                .insert(key.clone(), std::time::Instant::now());
                            let (client, recorder, pod) =
                                (client.clone(), recorder.clone(), pod.clone());
                            tokio::spawn(
                                async move { preempt(&client, &recorder, &pod, plan).await },
                            );
                        }
                    }
                    if state.unschedulable.insert(key.clone()) {
                        let (client, recorder) = (client.clone(), recorder.clone());
                        tokio::spawn(async move {
                            mark_unschedulable(&client, &recorder, &pod, &why.0).await
                        });
                    }
                    continue;
                }
            };
            state.unschedulable.remove(&key);
            state.nominated.remove(&key);
            let requests = state.requests_of(&key);
            state.assign(&key, &node, requests);
            repellers += usize::from(affinity::repels(&pod));
            usage.entry(node.clone()).or_default().add(requests);
            let (client, binds, recorder) = (client.clone(), binds.clone(), recorder.clone());
            let (namespace, name) = (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
            );
            // The binding waits for its permit in its own task: the loop goes on reading the
            // pod feed meanwhile (a scheduler that stops reading stalls every other consumer
            // of the shared feed, and makes the store replay its log).
            tokio::spawn(async move {
                let permit = binds
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let bound = client.bind_pod(&namespace, &name, &node).await;
                // The permit bounds bindings only.
                drop(permit);
                match bound {
                    Ok(()) => {
                        BINDINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let message = format!("Successfully assigned {namespace}/{name} to {node}");
                        recorder.normal(&pod, "Scheduled", &message);
                    }
                    Err(e) => tracing::debug!("binding {namespace}/{name} to {node}: {e}"),
                }
            });
        }
    }
}

/// What the scheduler knows: nodes, and which pods are where.
#[derive(Default)]
struct ClusterView {
    nodes: BTreeMap<String, Node>,
    /// Each node's allocatable resources, parsed once per node update.
    allocatable: HashMap<String, Requests>,
    /// Pods by namespace/name.
    pods: HashMap<String, Pod>,
    /// What each pod of `pods` requests, parsed once when it arrives (a pod's requests do
    /// not change): usage and preemption add them up every round.
    requests: HashMap<String, Requests>,
    /// PodDisruptionBudgets that select something, by namespace/name: preemption spares
    /// the pods they guard where it can.
    budgets: BTreeMap<String, preemption::Budget>,
    /// `budgets` indexed for preemption, rebuilt when one changes.
    budget_index: preemption::Budgets,
    /// Pods the scheduler has sent a binding for but not yet seen bound, with their requests.
    assumed: HashMap<String, (String, Requests)>,
    /// Pods already reported as fitting nowhere.
    unschedulable: std::collections::HashSet<String>,
    /// Pods that preempted others, and when: they wait for their victims to go before
    /// preempting again (after [`NOMINATION_TIMEOUT`], room taken by others is retried).
    nominated: HashMap<String, std::time::Instant>,
    /// Where the next pod's search of a sampled large cluster starts.
    next_start: std::cell::Cell<usize>,
    /// Pods with no node that are not being deleted: what `pending` looks through, so a
    /// round does not walk every pod of the cluster.
    unbound: std::collections::HashSet<String>,
    /// Whether the first full list of nodes, and of pods, has arrived.
    nodes_synced: bool,
    pods_synced: bool,
}

/// What a pod asks of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub cpu_millis: u64,
    pub memory: u64,
    pub pods: u64,
}

impl Requests {
    /// What the pod needs: its containers' requests as [`pod_requests::effective`] counts
    /// them (init containers one at a time, sidecars beside everything after them).
    pub fn of(pod: &Pod) -> Self {
        let Some(spec) = pod.spec.as_ref() else {
            return Self {
                pods: 1,
                ..Default::default()
            };
        };
        fn request<'c>(
            c: &'c k8s_openapi::api::core::v1::Container,
            name: &str,
        ) -> Option<&'c str> {
            let resources = c.resources.as_ref()?;
            let quantity = resources.requests.as_ref().and_then(|r| r.get(name));
            let quantity = quantity.or_else(|| resources.limits.as_ref().and_then(|l| l.get(name)));
            quantity.map(|q| q.0.as_str())
        }
        let sum = |name: &str, parse: fn(&str) -> Option<u64>| -> u64 {
            let amount = |c| request(c, name).and_then(parse).unwrap_or(0);
            pod_requests::effective(
                spec.init_containers
                    .iter()
                    .flatten()
                    .map(|c| (pod_requests::is_sidecar(c), amount(c))),
                spec.containers.iter().map(amount),
                u64::saturating_add,
            )
        };
        Self {
            cpu_millis: sum("cpu", quantity::parse_millis),
            memory: sum("memory", quantity::parse),
            pods: 1,
        }
    }

    /// Adds `other`, saturating: requests are user-given and may be absurdly large.
    fn add(&mut self, other: Requests) {
        *self = self.plus(other);
    }

    /// What is left once `other` goes, never below zero.
    fn minus(self, other: Requests) -> Requests {
        Requests {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory: self.memory.saturating_sub(other.memory),
            pods: self.pods.saturating_sub(other.pods),
        }
    }

    /// The sum, saturating at `u64::MAX` (which no node's allocatable can hold).
    pub fn plus(self, other: Requests) -> Requests {
        Requests {
            cpu_millis: self.cpu_millis.saturating_add(other.cpu_millis),
            memory: self.memory.saturating_add(other.memory),
            pods: self.pods.saturating_add(other.pods),
        }
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

/// How long a preempting pod waits for its victims' room before it may preempt again.
const NOMINATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Carries out a preemption, as kube-scheduler's `PrepareCandidate`: the pod is nominated
/// to the node (`status.nominatedNodeName`); each victim gets the `DisruptionTarget`
/// condition, is deleted gracefully, and gets an event saying who preempted it. The pod is
/// bound once the victims are gone (their deletion wakes the scheduler).
async fn preempt(client: &Client, recorder: &Recorder, pod: &Pod, plan: preemption::Plan) {
    let (namespace, name) = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    if plan.budget_violations > 0 {
        tracing::info!(
            "preemption for {namespace}/{name} breaks {} PodDisruptionBudget(s): no other way makes room",
            plan.budget_violations
        );
    }
    let patch = serde_json::json!({"status": {"nominatedNodeName": plan.node}});
    if let Err(e) = client
        .api::<Pod>(Some(&namespace))
        .patch_status(&name, &patch)
        .await
    {
        tracing::debug!("nominating {namespace}/{name} to {}: {e}", plan.node);
    }
    let target = serde_json::json!({"status": {"conditions": [{
        "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
        "message": "default-scheduler: preempting to accommodate a higher priority pod",
        "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}]}});
    for victim in &plan.victims {
        let (victim_namespace, victim_name) = victim.split_once('/').unwrap_or(("", victim));
        let pods = client.api::<Pod>(Some(victim_namespace));
        let Ok(Some(found)) = pods.get_opt(victim_name).await else {
            continue;
        };
        if let Err(e) = pods.patch_status_strategic(victim_name, &target).await {
            tracing::debug!("marking {victim} as a disruption target: {e}");
        }
        match pods
            .delete(
                victim_name,
                &crate::client::DeleteParams {
                    uid: found.metadata.uid.clone(),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) => {
                let message = format!(
                    "Preempted by pod {namespace}/{name} (priority {}) on node {}",
                    preemption::priority(pod),
                    plan.node
                );
                recorder.normal(&found, "Preempted", &message);
            }
            Err(e) => tracing::debug!("preempting {victim}: {e}"),
        }
    }
}

/// Records on the pod why it cannot be scheduled (what `kubectl describe` shows): the
/// `PodScheduled` condition, merged by type so the pod's other conditions stay.
async fn mark_unschedulable(client: &Client, recorder: &Recorder, pod: &Pod, why: &str) {
    let (namespace, name) = (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    let condition = serde_json::json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why,
        "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
    let patch = serde_json::json!({"status": {"conditions": [condition]}});
    if let Err(e) = client
        .api::<Pod>(Some(&namespace))
        .patch_status_strategic(&name, &patch)
        .await
    {
        tracing::debug!("marking {namespace}/{name} unschedulable: {e}");
    }
    recorder.warning(pod, "FailedScheduling", why);
}

/// A pod waiting for a node: none yet, and not being deleted.
fn is_unbound(pod: &Pod) -> bool {
    let no_node =
        (pod.spec.as_ref()).is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty());
    no_node && pod.metadata.deletion_timestamp.is_none()
}

impl ClusterView {
    fn apply_pod(&mut self, event: WatcherEvent<Pod>) {
        match event {
            WatcherEvent::Restarted(all) => {
                self.pods_synced = true;
                self.pods = all.into_iter().map(|p| (pod_key(&p), p)).collect();
                self.requests = (self.pods.iter())
                    .map(|(k, p)| (k.clone(), Requests::of(p)))
                    .collect();
                self.unbound = (self.pods.iter())
                    .filter(|(_, p)| is_unbound(p))
                    .map(|(k, _)| k.clone())
                    .collect();
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
                if is_unbound(&pod) {
                    self.unbound.insert(key.clone());
                } else {
                    self.unbound.remove(&key);
                }
                self.requests.insert(key.clone(), Requests::of(&pod));
                self.pods.insert(key, pod);
            }
            WatcherEvent::Deleted(pod) => {
                let key = pod_key(&pod);
                self.pods.remove(&key);
                self.requests.remove(&key);
                self.assumed.remove(&key);
                self.unbound.remove(&key);
            }
        }
    }

    fn apply_budget(&mut self, event: WatcherEvent<PodDisruptionBudget>) {
        let key = |pdb: &PodDisruptionBudget| {
            format!(
                "{}/{}",
                pdb.metadata.namespace.as_deref().unwrap_or(""),
                pdb.metadata.name.as_deref().unwrap_or("")
            )
        };
        match event {
            WatcherEvent::Restarted(all) => {
                self.budgets = all
                    .iter()
                    .filter_map(|pdb| Some((key(pdb), preemption::Budget::of(pdb)?)))
                    .collect();
            }
            WatcherEvent::Applied(pdb) => match preemption::Budget::of(&pdb) {
                Some(budget) => {
                    self.budgets.insert(key(&pdb), budget);
                }
                None => {
                    self.budgets.remove(&key(&pdb));
                }
            },
            WatcherEvent::Deleted(pdb) => {
                self.budgets.remove(&key(&pdb));
            }
        }
        self.budget_index = preemption::Budgets::new(self.budgets.values().cloned().collect());
    }

    fn apply_node(&mut self, event: WatcherEvent<Node>) {
        match event {
            WatcherEvent::Restarted(all) => {
                self.nodes_synced = true;
                self.nodes = all
                    .into_iter()
                    .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
                    .collect();
                self.allocatable = self
                    .nodes
                    .iter()
                    .map(|(name, node)| (name.clone(), allocatable(node)))
                    .collect();
            }
            WatcherEvent::Applied(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                self.allocatable.insert(name.clone(), allocatable(&node));
                self.nodes.insert(name, node);
            }
            WatcherEvent::Deleted(node) => {
                let name = node.metadata.name.as_deref().unwrap_or("");
                self.allocatable.remove(name);
                self.nodes.remove(name);
            }
        }
    }

    /// Pods with no node that are not being deleted and not already being bound.
    fn pending(&self) -> Vec<(String, Pod)> {
        let mut pending: Vec<(String, Pod)> = self
            .unbound
            .iter()
            .filter(|key| !self.assumed.contains_key(*key))
            .filter_map(|key| Some((key.clone(), self.pods.get(key)?.clone())))
            .collect();
        // Highest priority first (Kubernetes' queue sort), then oldest first, so scheduling
        // order follows creation order among equals.
        let priority = |pod: &Pod| pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        pending.sort_by(|a, b| {
            priority(&b.1)
                .cmp(&priority(&a.1))
                .then(
                    a.1.metadata
                        .creation_timestamp
                        .cmp(&b.1.metadata.creation_timestamp),
                )
                .then(a.0.cmp(&b.0))
        });
        pending
    }

    fn assign(&mut self, key: &str, node: &str, requests: Requests) {
        self.assumed
            .insert(key.to_string(), (node.to_string(), requests));
    }

    /// Active pods that are bound, or being bound, with their node.
    fn placed(&self) -> Vec<affinity::Placed<'_>> {
        self.pods
            .iter()
            .filter(|(_, pod)| {
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                pod.metadata.deletion_timestamp.is_none()
                    && !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .filter_map(|(key, pod)| {
                let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
                let node = bound
                    .filter(|n| !n.is_empty())
                    .or_else(|| self.assumed.get(key).map(|(n, _)| n.as_str()))?;
                Some(affinity::Placed { pod, node })
            })
            .collect()
    }

    /// What the pod under `key` requests (nothing if it is not known).
    fn requests_of(&self, key: &str) -> Requests {
        self.requests.get(key).copied().unwrap_or_default()
    }

    /// What active (non-terminal) pods use per node, counting assumed bindings.
    fn usage(&self) -> HashMap<String, Requests> {
        let mut usage: HashMap<String, Requests> = HashMap::new();
        for (key, pod) in &self.pods {
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
                    .add(self.requests_of(key));
            }
        }
        for (node, requests) in self.assumed.values() {
            usage.entry(node.clone()).or_default().add(*requests);
        }
        usage
    }
}

/// The best-scoring eligible node where `pod` fits (ties go to the first by name), or why
/// there is none, worded as Kubernetes' scheduler words it.
/// How many feasible nodes a pod's choice looks at, as Kubernetes' adaptive
/// percentageOfNodesToScore: every node of a cluster under 100; else 50 % less one point per
/// 125 nodes, at least 5 % and at least 100 nodes.
fn feasible_nodes_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percentage = 50usize.saturating_sub(nodes / 125).max(5);
    (nodes * percentage / 100).max(100)
}

/// Why no node fits a pod, in Kubernetes' words (`0/3 nodes are available: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unschedulable(pub String);

fn choose_node(
    view: &ClusterView,
    usage: &HashMap<String, Requests>,
    pod: &Pod,
    profile: Profile,
    constraints: &affinity::Constraints,
) -> Result<String, Unschedulable> {
    let wanted = Requests::of(pod);
    let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut best: Option<(&String, (i64, i64))> = None;
    // Large clusters: score only the first feasible nodes found, starting where the last pod
    // stopped (Kubernetes' percentageOfNodesToScore), so a pod costs less than a full pass.
    let to_find = feasible_nodes_to_find(view.nodes.len());
    let start = if to_find < view.nodes.len() {
        view.next_start.get() % view.nodes.len()
    } else {
        0
    };
    let (mut feasible, mut examined) = (0, 0);
    let rotated = view
        .nodes
        .iter()
        .skip(start)
        .chain(view.nodes.iter().take(start));
    for (name, node) in rotated {
        if feasible == to_find {
            break;
        }
        examined += 1;
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
        if let Some(reason) = constraints.violation(node) {
            *reasons.entry(reason).or_default() += 1;
            continue;
        }
        let used = usage.get(name).copied().unwrap_or_default();
        let room = view.allocatable.get(name).copied().unwrap_or_default();
        let after = used.plus(wanted);
        let misfit = if used.pods.saturating_add(1) > room.pods {
            Some("Too many pods")
        } else if after.cpu_millis > room.cpu_millis {
            Some("Insufficient cpu")
        } else if after.memory > room.memory {
            Some("Insufficient memory")
        } else {
            None
        };
        if let Some(reason) = misfit {
            *reasons.entry(reason).or_default() += 1;
            continue;
        }
        feasible += 1;
        let preference =
            preferred_node_affinity(pod, node).saturating_add(constraints.preference(node));
        let score = (preference, profile.score(used, wanted, room));
        if best.is_none_or(|(_, best_score)| score > best_score) {
            best = Some((name, score));
        }
    }
    view.next_start.set(start + examined);
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
            Err(Unschedulable(format!(
                "0/{} nodes are available:{detail}",
                view.nodes.len()
            )))
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    crate::api::object::key_of(&pod.metadata)
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

    fn none() -> affinity::Constraints {
        affinity::Constraints::default()
    }

    fn pod(name: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"containers": [], "nodeName": node}})).unwrap()
    }

    /// A scheduler that starts with a backlog decides nothing before it knows the nodes: the
    /// pods are bound, none is first marked unschedulable against an empty node list.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_waits_for_the_node_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::RedbStore::open(&dir.path().join("db")).unwrap();
        let server = crate::server::ApiServer::new(Arc::new(store))
            .await
            .unwrap();
        let client = Client::in_process(server.router());
        for i in 0..3 {
            let mut n = node(&format!("n{i}"), true, false);
            n.status.get_or_insert_default().allocatable = Some(
                [(
                    "pods".to_string(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity("110".into()),
                )]
                .into(),
            );
            client.api::<Node>(None).create(&n).await.unwrap();
        }
        // The controllers of a control plane hold the shared pod feed, so the scheduler gets
        // its pods from that cache at once, before its own node list arrives.
        let mut warm = client.shared_watch::<Pod>();
        assert!(matches!(
            warm.recv().await,
            Some(WatcherEvent::Restarted(_))
        ));
        let pods = client.api::<Pod>(Some("default"));
        for i in 0..40 {
            let p: Pod = serde_json::from_value(json!({"metadata": {"name": format!("p{i}")},
                "spec": {"containers": [{"name": "c", "image": "/x.wasm"}]}}))
            .unwrap();
            pods.create(&p).await.unwrap();
            assert!(matches!(warm.recv().await, Some(WatcherEvent::Applied(_))));
        }
        let scheduler = tokio::spawn(run(client.clone(), Options::default()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let all = loop {
            let all = pods.list(&ListParams::default()).await.unwrap().items;
            let bound = all
                .iter()
                .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
                .count();
            if bound == all.len() {
                break all;
            }
            assert!(std::time::Instant::now() < deadline, "{bound} of 40 bound");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        scheduler.abort();
        assert_eq!(all.len(), 40);
        // Marks are written off the loop: give any a moment to land, then look for them.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let events = client
            .api::<k8s_openapi::api::core::v1::Event>(Some("default"))
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        let marked: Vec<_> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
            .map(|e| e.message.clone().unwrap_or_default())
            .collect();
        assert!(marked.is_empty(), "marked unschedulable first: {marked:?}");
    }

    #[test]
    fn large_clusters_are_sampled_and_every_node_gets_its_turn() {
        assert_eq!(feasible_nodes_to_find(5), 5);
        assert_eq!(feasible_nodes_to_find(150), 100);
        assert_eq!(feasible_nodes_to_find(1000), 420);
        assert_eq!(feasible_nodes_to_find(5000), 500);
        assert_eq!(feasible_nodes_to_find(20000), 1000);

        let mut view = ClusterView::default();
        let nodes = (0..300)
            .map(|i| node(&format!("n{i:03}"), true, false))
            .collect();
        view.apply_node(WatcherEvent::Restarted(nodes));
        let mut usage = view.usage();
        let mut used = std::collections::HashSet::new();
        for i in 0..300 {
            let p = pod(&format!("p{i}"), None);
            let chosen = choose_node(&view, &usage, &p, Profile::Spread, &none()).unwrap();
            usage
                .entry(chosen.clone())
                .or_default()
                .add(Requests::of(&p));
            used.insert(chosen);
        }
        // 144 of 300 nodes are scored per pod, from a rotating start: the pods still spread.
        assert!(used.len() >= 280, "300 pods on {} nodes", used.len());
        // A pod that fits nowhere is still judged against every node.
        let picky: Pod = serde_json::from_value(
            json!({"metadata": {"name": "picky", "namespace": "default"},
            "spec": {"containers": [], "nodeSelector": {"disk": "ssd"}}}),
        )
        .unwrap();
        let why = choose_node(&view, &usage, &picky, Profile::Spread, &none())
            .unwrap_err()
            .0;
        assert_eq!(
            why,
            "0/300 nodes are available: 300 node(s) didn't match Pod's node affinity/selector."
        );
    }

    #[test]
    fn higher_priority_pods_are_scheduled_first() {
        let mut view = ClusterView::default();
        let with_priority = |name: &str, priority: i32| {
            let mut p = pod(name, None);
            p.spec.get_or_insert_with(Default::default).priority = Some(priority);
            p
        };
        view.apply_pod(WatcherEvent::Restarted(vec![
            with_priority("low", 0),
            with_priority("high", 1000),
            with_priority("mid", 10),
        ]));
        let order: Vec<String> = view.pending().into_iter().map(|(key, _)| key).collect();
        assert_eq!(order, ["default/high", "default/mid", "default/low"]);
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
        let first = choose_node(&view, &view.usage(), &p, Profile::Spread, &none()).unwrap();
        assert_eq!(first, "b");
        view.assign("default/p2", &first, Requests::of(&p));
        assert_eq!(view.pending().len(), 1);
        view.assign("default/p3", "a", Requests::of(&p));
        // a: p1 + assumed p3 = 2, b: assumed p2 = 1.
        assert_eq!(
            choose_node(&view, &view.usage(), &p, Profile::Spread, &none()).unwrap(),
            "b"
        );
        assert_eq!(
            choose_node(
                &ClusterView::default(),
                &HashMap::new(),
                &p,
                Profile::Spread,
                &none()
            )
            .unwrap_err()
            .0,
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
            choose_node(
                &view,
                &view.usage(),
                &wanting("500m", "512Mi"),
                Profile::Spread,
                &none()
            )
            .unwrap(),
            "small"
        );
        assert_eq!(
            choose_node(
                &view,
                &view.usage(),
                &wanting("2", "1Mi"),
                Profile::Spread,
                &none()
            )
            .unwrap_err()
            .0,
            "0/1 nodes are available: 1 Insufficient cpu."
        );
        assert_eq!(
            choose_node(
                &view,
                &view.usage(),
                &wanting("1", "2Gi"),
                Profile::Spread,
                &none()
            )
            .unwrap_err()
            .0,
            "0/1 nodes are available: 1 Insufficient memory."
        );
        view.assign("default/a", "small", Requests::of(&wanting("100m", "1Mi")));
        view.assign("default/b", "small", Requests::of(&wanting("100m", "1Mi")));
        assert_eq!(
            choose_node(
                &view,
                &view.usage(),
                &wanting("100m", "1Mi"),
                Profile::Spread,
                &none()
            )
            .unwrap_err()
            .0,
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
            choose_node(&view, &usage, &with(json!({})), Profile::Spread, &none()).unwrap(),
            "gpu",
            "the taint keeps plain pods off"
        );
        assert_eq!(
            choose_node(
                &view,
                &usage,
                &with(json!({"nodeSelector": {"accel": "yes"}})),
                Profile::Spread,
                &none()
            )
            .unwrap(),
            "gpu"
        );
        let tolerant = with(
            json!({"nodeSelector": {"kubernetes.io/hostname": "x"}, "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
        );
        assert_eq!(
            choose_node(&view, &usage, &tolerant, Profile::Spread, &none())
                .unwrap_err()
                .0,
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
            choose_node(&view, &view.usage(), &tolerant, Profile::Spread, &none()).unwrap(),
            "tainted",
            "tolerating everything, the emptier node wins"
        );
    }

    #[test]
    fn affinity_and_profiles_place_pods() {
        let mut view = ClusterView::default();
        let nodes = [("a", "z1"), ("b", "z1"), ("c", "z2")].map(|(name, zone)| {
            let mut n = node(name, true, false);
            n.status.as_mut().unwrap().allocatable = Some(
                [("cpu", "4"), ("memory", "8Gi"), ("pods", "110")]
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            k8s_openapi::apimachinery::pkg::api::resource::Quantity(v.into()),
                        )
                    })
                    .into(),
            );
            n.metadata.labels = Some(
                [("kubernetes.io/hostname", name), ("zone", zone)]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            );
            n
        });
        view.apply_node(WatcherEvent::Restarted(nodes.to_vec()));
        let with = |name: &str, labels: serde_json::Value, affinity: serde_json::Value| -> Pod {
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "default", "labels": labels},
                "spec": {"containers": [], "affinity": affinity}}),
            )
            .unwrap()
        };
        let place = |view: &ClusterView, pod: &Pod, profile: Profile| {
            let constraints = affinity::Constraints::of(pod, &view.placed(), &view.nodes);
            choose_node(view, &view.usage(), pod, profile, &constraints)
        };
        let zone_term = |op: &str, zone: &str| json!({"matchExpressions": [{"key": "zone", "operator": op, "values": [zone]}]});

        let required = with(
            "r",
            json!({}),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [zone_term("In", "z2")]}}}),
        );
        assert_eq!(place(&view, &required, Profile::Spread).unwrap(), "c");
        let nowhere = with(
            "n",
            json!({}),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [zone_term("In", "z9")]}}}),
        );
        assert_eq!(
            place(&view, &nowhere, Profile::Spread).unwrap_err().0,
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
        );
        let by_name = with(
            "f",
            json!({}),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}),
        );
        assert_eq!(place(&view, &by_name, Profile::Spread).unwrap(), "b");
        let preferred = with(
            "p",
            json!({}),
            json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 10, "preference": zone_term("In", "z2")}]}}),
        );
        view.apply_pod(WatcherEvent::Applied(pod("busy", Some("c"))));
        assert_eq!(
            place(&view, &preferred, Profile::Spread).unwrap(),
            "c",
            "a stated preference outranks spreading"
        );
        view.apply_pod(WatcherEvent::Deleted(pod("busy", Some("c"))));

        // Required anti-affinity by hostname: one db pod per node, then no room.
        let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}});
        let mut used = Vec::new();
        for i in 0..3 {
            let mut db = with(&format!("db-{i}"), json!({"app": "db"}), anti.clone());
            let chosen = place(&view, &db, Profile::BinPack).unwrap();
            assert!(
                !used.contains(&chosen),
                "db-{i} went to {chosen}, which has a db pod"
            );
            db.spec.as_mut().unwrap().node_name = Some(chosen.clone());
            view.apply_pod(WatcherEvent::Applied(db));
            used.push(chosen);
        }
        let fourth = with("db-3", json!({"app": "db"}), anti.clone());
        assert_eq!(
            place(&view, &fourth, Profile::Spread).unwrap_err().0,
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
        );
        // Symmetry: a pod matching the db pods' anti-affinity cannot join them either.
        let plain_db = with("plain", json!({"app": "db"}), json!(null));
        assert_eq!(
            place(&view, &plain_db, Profile::Spread).unwrap_err().0,
            "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
        );
        // Required affinity by zone: a cache goes where a db pod of zone z2 is... any zone
        // with a db pod; with the dbs only on z1 it must go to z1.
        view.apply_pod(WatcherEvent::Deleted(with("db-2", json!({}), json!(null))));
        let cache = with(
            "cache",
            json!({"app": "cache"}),
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}),
        );
        let zone_of = |n: &str| view.nodes[n].metadata.labels.as_ref().unwrap()["zone"].clone();
        let db_zones: Vec<String> = ["db-0", "db-1"]
            .iter()
            .map(|p| {
                zone_of(
                    view.pods[&format!("default/{p}")]
                        .spec
                        .as_ref()
                        .unwrap()
                        .node_name
                        .as_deref()
                        .unwrap(),
                )
            })
            .collect();
        let chosen = place(&view, &cache, Profile::Spread).unwrap();
        assert!(
            db_zones.contains(&zone_of(&chosen)),
            "cache on {chosen}, db zones {db_zones:?}"
        );

        // Profiles: with one pod on a, bin packing adds to a, spreading avoids it.
        let mut fresh = ClusterView::default();
        fresh.apply_node(WatcherEvent::Restarted(nodes.to_vec()));
        fresh.apply_pod(WatcherEvent::Applied(pod("first", Some("b"))));
        let next = pod("next", None);
        assert_eq!(place(&fresh, &next, Profile::BinPack).unwrap(), "b");
        assert_eq!(place(&fresh, &next, Profile::Spread).unwrap(), "a");
        assert_eq!(
            Profile::for_scheduler_name(Some(score::BIN_PACKING_SCHEDULER), Profile::Spread),
            Some(Profile::BinPack)
        );
        assert_eq!(
            Profile::for_scheduler_name(Some("other"), Profile::Spread),
            None
        );
    }
}
