//! Inter-pod affinity and anti-affinity: where a pod may go, and prefers to go, relative to
//! the pods already placed. A term names pods (label selector, namespaces) and a topology key;
//! two nodes are in the same domain when they carry the same value of that label
//! (`kubernetes.io/hostname`: each node its own domain).
//!
//! Each term is resolved once per pod into the set of domains holding a matching pod, so
//! judging a node is a lookup (the scheduler stays O(nodes) per pod).

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm};

use crate::api::selector::{self, LabelSelector};

/// A placed pod (bound, or being bound) and its node.
pub struct Placed<'a> {
    pub pod: &'a Pod,
    pub node: &'a str,
}

/// One term resolved against the placed pods: the topology key and the domains (label
/// values) that hold a matching pod.
struct Resolved {
    topology_key: String,
    domains: HashSet<String>,
    weight: i64,
}

/// The inter-pod constraints of one pod, resolved.
#[derive(Default)]
pub struct Constraints {
    /// Required affinity terms. A term that selects no placed pod but selects the pod itself
    /// is left out: the first pod of a group may go anywhere (Kubernetes' rule).
    required_affinity: Vec<Resolved>,
    required_anti_affinity: Vec<Resolved>,
    /// Existing pods' required anti-affinity that the incoming pod matches (symmetry).
    repelled_by: Vec<Resolved>,
    preferred: Vec<Resolved>,
}

fn topology_value<'n>(node: &'n Node, key: &str) -> Option<&'n String> {
    node.metadata.labels.as_ref()?.get(key)
}

/// Whether `term` (declared by a pod in `owner_namespace`) selects `candidate`.
fn term_selects(term: &PodAffinityTerm, owner_namespace: &str, candidate: &Pod) -> bool {
    let namespace = candidate.metadata.namespace.as_deref().unwrap_or_default();
    let all_namespaces = term
        .namespace_selector
        .as_ref()
        .is_some_and(|s| s.match_labels.is_none() && s.match_expressions.is_none());
    let in_namespace = all_namespaces
        || match term.namespaces.as_deref() {
            Some(list) if !list.is_empty() => list.iter().any(|n| n == namespace),
            _ => namespace == owner_namespace,
        };
    if !in_namespace {
        return false;
    }
    // A term without a selector selects no pod.
    let Some(label_selector) = &term.label_selector else {
        return false;
    };
    let Ok(parsed) = LabelSelector::parse(&selector::query_of(label_selector)) else {
        return false;
    };
    parsed.matches(&candidate.metadata.labels.clone().unwrap_or_default())
}

fn resolve(
    term: &PodAffinityTerm,
    owner_namespace: &str,
    weight: i64,
    placed: &[Placed],
    nodes: &BTreeMap<String, Node>,
) -> Resolved {
    let domains = placed
        .iter()
        .filter(|p| term_selects(term, owner_namespace, p.pod))
        .filter_map(|p| topology_value(nodes.get(p.node)?, &term.topology_key).cloned())
        .collect();
    Resolved {
        topology_key: term.topology_key.clone(),
        domains,
        weight,
    }
}

impl Constraints {
    /// Resolves `pod`'s terms, and the anti-affinity of placed pods against it.
    pub fn of(pod: &Pod, placed: &[Placed], nodes: &BTreeMap<String, Node>) -> Self {
        let mut constraints = Self::default();
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        if let Some(a) = affinity.and_then(|a| a.pod_affinity.as_ref()) {
            for term in a
                .required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
            {
                let resolved = resolve(term, namespace, 0, placed, nodes);
                let first_of_its_group =
                    resolved.domains.is_empty() && term_selects(term, namespace, pod);
                if !first_of_its_group {
                    constraints.required_affinity.push(resolved);
                }
            }
            for p in a
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
            {
                let weight = p.weight as i64;
                constraints.preferred.push(resolve(
                    &p.pod_affinity_term,
                    namespace,
                    weight,
                    placed,
                    nodes,
                ));
            }
        }
        if let Some(a) = affinity.and_then(|a| a.pod_anti_affinity.as_ref()) {
            for term in a
                .required_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
            {
                constraints
                    .required_anti_affinity
                    .push(resolve(term, namespace, 0, placed, nodes));
            }
            for p in a
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
            {
                let weight = -(p.weight as i64);
                constraints.preferred.push(resolve(
                    &p.pod_affinity_term,
                    namespace,
                    weight,
                    placed,
                    nodes,
                ));
            }
        }
        // Symmetry: a placed pod's required anti-affinity keeps this pod out of its domain.
        for other in placed {
            let terms = other
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                });
            let other_namespace = other.pod.metadata.namespace.as_deref().unwrap_or_default();
            for term in terms.into_iter().flatten() {
                if !term_selects(term, other_namespace, pod) {
                    continue;
                }
                if let Some(value) = nodes
                    .get(other.node)
                    .and_then(|n| topology_value(n, &term.topology_key))
                {
                    constraints.repelled_by.push(Resolved {
                        topology_key: term.topology_key.clone(),
                        domains: HashSet::from([value.clone()]),
                        weight: 0,
                    });
                }
            }
        }
        constraints
    }

    /// Why `node` is ruled out, if it is.
    pub fn violation(&self, node: &Node) -> Option<&'static str> {
        let in_domain = |r: &Resolved| {
            topology_value(node, &r.topology_key).is_some_and(|v| r.domains.contains(v))
        };
        if !self.required_affinity.iter().all(in_domain) {
            return Some("node(s) didn't match pod affinity rules");
        }
        if self.required_anti_affinity.iter().any(in_domain) {
            return Some("node(s) didn't match pod anti-affinity rules");
        }
        if self.repelled_by.iter().any(in_domain) {
            return Some("node(s) didn't satisfy existing pods anti-affinity rules");
        }
        None
    }

    /// The preferred terms' weights that `node` earns (anti-affinity counts negative).
    pub fn preference(&self, node: &Node) -> i64 {
        self.preferred
            .iter()
            .filter(|r| {
                topology_value(node, &r.topology_key).is_some_and(|v| r.domains.contains(v))
            })
            .map(|r| r.weight)
            .sum()
    }
}

/// Whether the pod declares inter-pod affinity or anti-affinity.
pub fn has_terms(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

/// Whether the pod has required anti-affinity (which other pods must respect).
pub fn repels(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .is_some_and(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
                .is_some_and(|t| !t.is_empty())
        })
}
