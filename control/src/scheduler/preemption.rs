//! Preemption: a pod that fits on no node may make room by evicting pods of lower priority,
//! as kube-scheduler's default preemption (`SelectVictimsOnNode`, `pickOneNodeForPreemption`)
//! does. For every node the pod could otherwise use (ready, uncordoned, matching its node
//! selector, taints tolerated), every pod of strictly lower priority is a possible victim; if
//! the pod does not fit even with all of them gone, the node is out. Otherwise the possible
//! victims are reprieved one by one, most important first (higher priority, then older), as
//! long as the pod still fits: first those whose eviction would break a PodDisruptionBudget,
//! then the others, so budgets are broken only where nothing else makes room. Among the
//! nodes, the one with the fewest budget violations wins, then the lowest highest victim
//! priority, the lowest sum of victim priorities, the fewest victims, and the first by name.
//! A pod with `preemptionPolicy: Never` preempts nothing, and pods of equal or higher
//! priority are never victims.
//!
//! Not yet: inter-pod (anti-)affinity is not re-evaluated on the emptied node.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::filters::{matches_node_selector, node_is_eligible, untolerated_taint};
use super::Requests;
use crate::api::selector::{query_of, LabelSelector};

/// Where a pod goes once the victims are gone.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub node: String,
    /// The victims' `namespace/name` keys.
    pub victims: Vec<String>,
    /// How many of the victims' evictions break a PodDisruptionBudget (0 when none had to).
    pub budget_violations: usize,
}

/// What preemption needs of a PodDisruptionBudget: whom it selects and how many more of them
/// may go.
#[derive(Clone, Debug)]
pub struct Budget {
    namespace: String,
    selector: LabelSelector,
    /// `status.disruptionsAllowed`.
    allowed: i32,
    /// `status.disruptedPods`: evictions the API server has granted but the disruption
    /// controller has not yet counted; evicting them again costs the budget nothing.
    disrupted: BTreeSet<String>,
}

impl Budget {
    /// `None` for a budget that selects nothing: one without a selector, or whose selector
    /// cannot be read. An empty selector selects every pod of its namespace, as policy/v1
    /// and the eviction API say (kube-scheduler's own filter still treats it as nothing).
    pub fn of(pdb: &PodDisruptionBudget) -> Option<Self> {
        let selector = pdb.spec.as_ref()?.selector.as_ref()?;
        let status = pdb.status.as_ref();
        Some(Self {
            namespace: pdb.metadata.namespace.clone().unwrap_or_default(),
            selector: LabelSelector::parse(&query_of(selector)).ok()?,
            allowed: status.map(|s| s.disruptions_allowed).unwrap_or(0),
            disrupted: status
                .and_then(|s| s.disrupted_pods.as_ref())
                .map(|d| d.keys().cloned().collect())
                .unwrap_or_default(),
        })
    }

    fn selects(&self, pod: &Pod) -> bool {
        pod.metadata.namespace.as_deref().unwrap_or("") == self.namespace
            && self
                .selector
                .matches(pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
    }
}

/// The budgets preemption weighs, indexed by a label each requires: a pod is checked only
/// against the budgets that could select it, so a decision over 10,000 pods and 100 budgets
/// makes about one selector match per candidate, not one hundred.
#[derive(Clone, Debug, Default)]
pub struct Budgets {
    budgets: Vec<Budget>,
    /// Budgets by a `(key, value)` label their selector requires.
    by_label: HashMap<(String, String), Vec<usize>>,
    /// Budgets whose selector requires no single label (`app in (a,b)`, empty): checked
    /// against every pod.
    unindexed: Vec<usize>,
}

impl Budgets {
    pub fn new(budgets: Vec<Budget>) -> Self {
        let mut by_label: HashMap<(String, String), Vec<usize>> = HashMap::new();
        let mut unindexed = Vec::new();
        for (i, budget) in budgets.iter().enumerate() {
            match budget.selector.required_label() {
                Some((key, value)) => by_label
                    .entry((key.to_string(), value.to_string()))
                    .or_default()
                    .push(i),
                None => unindexed.push(i),
            }
        }
        Self {
            budgets,
            by_label,
            unindexed,
        }
    }

    /// The indices of the budgets that select `pod`.
    fn selecting<'a>(&'a self, pod: &'a Pod) -> impl Iterator<Item = usize> + 'a {
        let labels = pod.metadata.labels.iter().flatten();
        let indexed = labels.flat_map(|(key, value)| {
            self.by_label
                .get(&(key.clone(), value.clone()))
                .into_iter()
                .flatten()
                .copied()
        });
        (self.unindexed.iter().copied())
            .chain(indexed)
            .filter(|&i| self.budgets[i].selects(pod))
    }
}

/// A pod's priority (`spec.priority`, 0 when unset).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Whether evicting each of `victims` (most important first) would break a budget, counting
/// the evictions before it against the same budgets (kube-scheduler's
/// `filterPodsWithPDBViolation`).
fn breaks_budget(victims: &[(&String, &Pod, Requests)], budgets: &Budgets) -> Vec<bool> {
    // What is left of each budget touched so far on this node.
    let mut left: HashMap<usize, i32> = HashMap::new();
    victims
        .iter()
        .map(|(_, pod, _)| {
            let name = pod.metadata.name.as_deref().unwrap_or("");
            let mut broken = false;
            for i in budgets.selecting(pod) {
                let budget = &budgets.budgets[i];
                if budget.disrupted.contains(name) {
                    continue;
                }
                let left = left.entry(i).or_insert(budget.allowed);
                *left = left.saturating_sub(1);
                broken |= *left < 0;
            }
            broken
        })
        .collect()
}

/// The victims on one node, or `None` when evicting every lower-priority pod there still
/// leaves no room.
struct NodeChoice {
    victims: Vec<String>,
    violations: usize,
    highest: i32,
    /// The victims' priorities summed, each offset to be non-negative (as Kubernetes does,
    /// so that more victims never lowers the sum).
    priority_sum: i64,
}

/// The best preemption for `pod`, or `None` when it may not preempt or no eviction of lower
/// priority pods makes it fit anywhere.
pub fn plan<'a>(
    nodes: &BTreeMap<String, Node>,
    allocatable: &HashMap<String, Requests>,
    usage: &HashMap<String, Requests>,
    placed: impl Iterator<Item = (&'a String, &'a Pod, Requests)>,
    budgets: &Budgets,
    pod: &Pod,
) -> Option<Plan> {
    let never = pod
        .spec
        .as_ref()
        .and_then(|s| s.preemption_policy.as_deref())
        == Some("Never");
    if never {
        return None;
    }
    let mine = priority(pod);
    let wanted = Requests::of(pod);
    let mut by_node: HashMap<&str, Vec<(&String, &Pod, Requests)>> = HashMap::new();
    for (key, placed, requests) in placed {
        let node = placed.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let active = placed.metadata.deletion_timestamp.is_none()
            && !matches!(
                placed.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
        if let (Some(node), true) = (node, active) {
            if priority(placed) < mine {
                by_node
                    .entry(node)
                    .or_default()
                    .push((key, placed, requests));
            }
        }
    }
    let fits = |used: Requests, room: Requests| {
        let after = used.plus(wanted);
        used.pods.saturating_add(1) <= room.pods
            && after.cpu_millis <= room.cpu_millis
            && after.memory <= room.memory
    };
    // (violations, highest victim priority, priority sum, victims, node): the smallest wins.
    type Rank<'n> = (usize, i32, i64, usize, &'n String);
    let mut best: Option<(Rank, NodeChoice)> = None;
    for (name, node) in nodes {
        if !node_is_eligible(node)
            || !matches_node_selector(pod, node)
            || untolerated_taint(pod, node).is_some()
        {
            continue;
        }
        let room = allocatable.get(name).copied().unwrap_or_default();
        let used = usage.get(name).copied().unwrap_or_default();
        if fits(used, room) {
            // It fits already: what keeps it off this node is not resources.
            continue;
        }
        let candidates = by_node.remove(name.as_str()).unwrap_or_default();
        let Some(choice) = victims_on_node(candidates, used, room, budgets, &fits) else {
            continue;
        };
        let rank = (
            choice.violations,
            choice.highest,
            choice.priority_sum,
            choice.victims.len(),
            name,
        );
        if best.as_ref().is_none_or(|(b, _)| rank < *b) {
            best = Some((rank, choice));
        }
    }
    best.map(|((.., node), choice)| Plan {
        node: node.clone(),
        victims: choice.victims,
        budget_violations: choice.violations,
    })
}

/// kube-scheduler's `SelectVictimsOnNode`: all candidates go, then the most important come
/// back while the pod still fits, budget-breaking ones first.
fn victims_on_node(
    mut candidates: Vec<(&String, &Pod, Requests)>,
    used: Requests,
    room: Requests,
    budgets: &Budgets,
    fits: &impl Fn(Requests, Requests) -> bool,
) -> Option<NodeChoice> {
    let mut left = candidates
        .iter()
        .fold(used, |left, (.., requests)| left.minus(*requests));
    if !fits(left, room) {
        return None;
    }
    // Most important first: higher priority, then older (Kubernetes' `MoreImportantPod`
    // orders by start time; a pod's creation is what every pod here has).
    candidates.sort_by(|a, b| {
        priority(b.1).cmp(&priority(a.1)).then(
            a.1.metadata
                .creation_timestamp
                .cmp(&b.1.metadata.creation_timestamp),
        )
    });
    let breaks = breaks_budget(&candidates, budgets);
    let (violating, keeping): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .zip(breaks)
        .partition(|(_, breaks)| *breaks);
    let mut choice = NodeChoice {
        victims: Vec::new(),
        violations: 0,
        highest: i32::MIN,
        priority_sum: 0,
    };
    for ((key, pod, requests), breaks) in violating.into_iter().chain(keeping) {
        let back = left.plus(requests);
        if fits(back, room) {
            left = back; // reprieved
            continue;
        }
        choice.victims.push(key.clone());
        choice.violations += usize::from(breaks);
        choice.highest = choice.highest.max(priority(pod));
        choice.priority_sum += i64::from(priority(pod)) + i64::from(i32::MAX) + 1;
    }
    // Every candidate was reprieved: the node had room after all (an assumed binding may
    // have gone meanwhile); it takes no preemption.
    (!choice.victims.is_empty()).then_some(choice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, NodeStatus, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn node(name: &str) -> Node {
        Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                conditions: Some(vec![k8s_openapi::api::core::v1::NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(name: &str, node: Option<&str>, priority: i32, cpu: &str) -> (String, Pod) {
        let pod = Pod {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                priority: Some(priority),
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        (format!("default/{name}"), pod)
    }

    /// The plan for `pod` on two nodes of 2 CPUs, `a` and `b`, holding `placed`.
    fn plan_on(placed: &[(String, Pod)], budgets: &[Budget], pod: &Pod) -> Option<Plan> {
        let budgets = Budgets::new(budgets.to_vec());
        let nodes: BTreeMap<String, Node> = ["a", "b"]
            .iter()
            .map(|n| (n.to_string(), node(n)))
            .collect();
        let room = Requests {
            cpu_millis: 2000,
            memory: u64::MAX,
            pods: 110,
        };
        let allocatable = nodes.keys().map(|n| (n.clone(), room)).collect();
        let mut usage: HashMap<String, Requests> = HashMap::new();
        for (_, p) in placed {
            let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
            usage.entry(node).or_default().add(Requests::of(p));
        }
        let placed = placed.iter().map(|(k, p)| (k, p, Requests::of(p)));
        plan(&nodes, &allocatable, &usage, placed, &budgets, pod)
    }

    #[test]
    fn the_lowest_priority_victims_on_the_best_node_make_room() {
        let placed = vec![
            pod("a-low", Some("a"), 0, "1"),
            pod("a-mid", Some("a"), 50, "1"),
            pod("b-mid1", Some("b"), 50, "1"),
            pod("b-mid2", Some("b"), 50, "1"),
        ];
        let (_, high) = pod("high", None, 100, "1");
        let chosen = plan_on(&placed, &[], &high).unwrap();
        assert_eq!(
            chosen,
            Plan {
                node: "a".into(),
                victims: vec!["default/a-low".into()],
                budget_violations: 0,
            }
        );
        // A pod of equal priority preempts nothing.
        let (_, equal) = pod("equal", None, 0, "1");
        assert!(plan_on(&placed, &[], &equal).is_none());
        // Nor does one whose policy says never.
        let (_, mut polite) = pod("polite", None, 100, "1");
        polite.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert!(plan_on(&placed, &[], &polite).is_none());
        // Two victims when one is not enough.
        let (_, big) = pod("big", None, 100, "2");
        let chosen = plan_on(&placed, &[], &big).unwrap();
        assert_eq!(chosen.node, "a");
        assert_eq!(chosen.victims.len(), 2);
    }

    fn labelled(name: &str, node: &str, priority: i32, app: &str) -> (String, Pod) {
        let (key, mut pod) = pod(name, Some(node), priority, "1");
        pod.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        (key, pod)
    }

    fn budget(app: &str, allowed: i32, disrupted: &[&str]) -> Budget {
        let pdb: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
            "metadata": {"name": app, "namespace": "default"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}},
            "status": {"disruptionsAllowed": allowed, "currentHealthy": 1, "desiredHealthy": 1,
                       "expectedPods": 1,
                       "disruptedPods": disrupted.iter().map(|d| (d.to_string(), "2026-12-06T00:00:00Z")).collect::<BTreeMap<_, _>>()}
        }))
        .unwrap();
        Budget::of(&pdb).unwrap()
    }

    #[test]
    fn victims_whose_eviction_breaks_no_budget_are_preferred() {
        // Node a's victim is guarded by a budget with no disruption left; node b's victim,
        // of higher priority, is not guarded: b wins, although a's victim is cheaper.
        let placed = vec![
            labelled("a-guarded", "a", 0, "db"),
            labelled("a-other", "a", 500, "x"),
            labelled("b-free", "b", 10, "web"),
            labelled("b-other", "b", 500, "x"),
        ];
        let (_, high) = pod("high", None, 100, "1");
        let choose = |budgets: &[Budget]| plan_on(&placed, budgets, &high).unwrap();
        let without = choose(&[]);
        assert_eq!(without.node, "a", "lowest priority victim without budgets");
        let guarded = choose(&[budget("db", 0, &[])]);
        assert_eq!(
            guarded,
            Plan {
                node: "b".into(),
                victims: vec!["default/b-free".into()],
                budget_violations: 0,
            }
        );
        // A budget with a disruption left, or whose pod's eviction is already granted, is
        // not broken by it.
        assert_eq!(choose(&[budget("db", 1, &[])]).node, "a");
        assert_eq!(choose(&[budget("db", 0, &["a-guarded"])]).node, "a");
        // When every way breaks a budget, the budget is broken, and the plan says so.
        let both = choose(&[budget("db", 0, &[]), budget("web", 0, &[])]);
        assert_eq!((both.node.as_str(), both.budget_violations), ("a", 1));
    }

    #[test]
    fn the_most_important_candidates_are_reprieved_first() {
        // Node a holds a 500m pod of priority 0 and a 1500m pod of priority 50; a 1500m pod
        // of priority 100 fits once the big one goes, and the small one is reprieved (taking
        // the lowest priority first would have evicted both).
        let placed = vec![
            pod("small-low", Some("a"), 0, "500m"),
            pod("big-mid", Some("a"), 50, "1500m"),
            pod("b-full", Some("b"), 500, "2"),
        ];
        let (_, high) = pod("high", None, 100, "1500m");
        let chosen = plan_on(&placed, &[], &high).unwrap();
        assert_eq!(chosen.node, "a");
        assert_eq!(chosen.victims, vec!["default/big-mid".to_string()]);
    }
}
