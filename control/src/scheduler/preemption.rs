//! Preemption: a pod that fits on no node may make room by evicting pods of lower priority,
//! as Kubernetes' default preemption does. For every node the pod could otherwise use (ready,
//! uncordoned, matching its node selector, taints tolerated), victims are taken from the
//! node's pods of strictly lower priority, lowest priority first (newest first among equals),
//! until the pod's requests fit; the node whose highest victim priority is lowest, then with
//! the fewest victims, wins. A pod with `preemptionPolicy: Never` preempts nothing, and pods
//! of equal or higher priority are never victims.
//!
//! Not yet: PodDisruptionBudgets are not weighed when choosing victims, and inter-pod
//! (anti-)affinity is not re-evaluated on the emptied node.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod};

use super::filters::{matches_node_selector, node_is_eligible, untolerated_taint};
use super::Requests;

/// Where a pod goes once the victims are gone.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub node: String,
    /// The victims' `namespace/name` keys.
    pub victims: Vec<String>,
}

/// A pod's priority (`spec.priority`, 0 when unset).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The best preemption for `pod`, or `None` when it may not preempt or no eviction of lower
/// priority pods makes it fit anywhere.
pub fn plan<'a>(
    nodes: &BTreeMap<String, Node>,
    allocatable: &HashMap<String, Requests>,
    usage: &HashMap<String, Requests>,
    placed: impl Iterator<Item = (&'a String, &'a Pod)>,
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
    let mut by_node: HashMap<&str, Vec<(&String, &Pod)>> = HashMap::new();
    for (key, placed) in placed {
        let node = placed.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let active = placed.metadata.deletion_timestamp.is_none()
            && !matches!(
                placed.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
        if let (Some(node), true) = (node, active) {
            if priority(placed) < mine {
                by_node.entry(node).or_default().push((key, placed));
            }
        }
    }
    let fits = |used: Requests, room: Requests| {
        let after = used.plus(wanted);
        used.pods.saturating_add(1) <= room.pods
            && after.cpu_millis <= room.cpu_millis
            && after.memory <= room.memory
    };
    // (highest victim priority, victims, node): the smallest wins.
    type Rank<'n> = (i32, usize, &'n String);
    let mut best: Option<(Rank, Vec<String>)> = None;
    for (name, node) in nodes {
        if !node_is_eligible(node)
            || !matches_node_selector(pod, node)
            || untolerated_taint(pod, node).is_some()
        {
            continue;
        }
        let room = allocatable.get(name).copied().unwrap_or_default();
        let mut used = usage.get(name).copied().unwrap_or_default();
        if fits(used, room) {
            // It fits already: what keeps it off this node is not resources.
            continue;
        }
        let mut candidates = by_node.remove(name.as_str()).unwrap_or_default();
        candidates.sort_by(|a, b| {
            priority(a.1).cmp(&priority(b.1)).then(
                b.1.metadata
                    .creation_timestamp
                    .cmp(&a.1.metadata.creation_timestamp),
            )
        });
        let mut victims = Vec::new();
        let mut highest = i32::MIN;
        for (key, victim) in candidates {
            if fits(used, room) {
                break;
            }
            used = used.minus(Requests::of(victim));
            highest = highest.max(priority(victim));
            victims.push(key.clone());
        }
        if victims.is_empty() || !fits(used, room) {
            continue;
        }
        let rank = (highest, victims.len(), name);
        if best.as_ref().is_none_or(|(b, _)| rank < *b) {
            best = Some((rank, victims));
        }
    }
    best.map(|((_, _, node), victims)| Plan {
        node: node.clone(),
        victims,
    })
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

    fn cluster(
        placed: &[(String, Pod)],
    ) -> (
        BTreeMap<String, Node>,
        HashMap<String, Requests>,
        HashMap<String, Requests>,
    ) {
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
        (nodes, allocatable, usage)
    }

    #[test]
    fn the_lowest_priority_victims_on_the_best_node_make_room() {
        let placed = vec![
            pod("a-low", Some("a"), 0, "1"),
            pod("a-mid", Some("a"), 50, "1"),
            pod("b-mid1", Some("b"), 50, "1"),
            pod("b-mid2", Some("b"), 50, "1"),
        ];
        let (nodes, allocatable, usage) = cluster(&placed);
        let (_, high) = pod("high", None, 100, "1");
        let chosen = plan(
            &nodes,
            &allocatable,
            &usage,
            placed.iter().map(|(k, p)| (k, p)),
            &high,
        )
        .unwrap();
        assert_eq!(
            chosen,
            Plan {
                node: "a".into(),
                victims: vec!["default/a-low".into()]
            }
        );
        // A pod of equal priority preempts nothing.
        let (_, equal) = pod("equal", None, 0, "1");
        assert!(plan(
            &nodes,
            &allocatable,
            &usage,
            placed.iter().map(|(k, p)| (k, p)),
            &equal
        )
        .is_none());
        // Nor does one whose policy says never.
        let (_, mut polite) = pod("polite", None, 100, "1");
        polite.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert!(plan(
            &nodes,
            &allocatable,
            &usage,
            placed.iter().map(|(k, p)| (k, p)),
            &polite
        )
        .is_none());
        // Two victims when one is not enough.
        let (_, big) = pod("big", None, 100, "2");
        let chosen = plan(
            &nodes,
            &allocatable,
            &usage,
            placed.iter().map(|(k, p)| (k, p)),
            &big,
        )
        .unwrap();
        assert_eq!(chosen.node, "a");
        assert_eq!(chosen.victims.len(), 2);
    }
}
