//! Node filters: whether a pod may go on a node at all, judged from the node alone (ready and
//! uncordoned, nodeSelector, required node affinity, taints), and the preferred node affinity
//! score.

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint};

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

/// Whether the node carries every label of the pod's `nodeSelector` and satisfies its
/// required node affinity (any one of the `nodeSelectorTerms`).
pub fn matches_node_selector(pod: &Pod, node: &Node) -> bool {
    let spec = pod.spec.as_ref();
    let no_labels = Default::default();
    let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
    let selected = spec
        .and_then(|s| s.node_selector.as_ref())
        .is_none_or(|selector| selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let required = spec
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selected
        && required.is_none_or(|r| {
            r.node_selector_terms
                .iter()
                .any(|term| term_matches(term, node))
        })
}

/// The sum of the weights of the preferred node affinity terms the node satisfies.
pub fn preferred_node_affinity(pod: &Pod, node: &Node) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .into_iter()
        .flatten()
        .filter(|p| term_matches(&p.preference, node))
        .map(|p| p.weight as i64)
        .sum()
}

/// A term holds when all its expressions (over labels) and fields (`metadata.name`) hold; an
/// empty term matches nothing, as in Kubernetes.
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let no_labels = Default::default();
    let labels = node.metadata.labels.as_ref().unwrap_or(&no_labels);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    expressions
        .iter()
        .all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(name);
            requirement_holds(r, value)
        })
}

fn requirement_holds(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|v| number(v)),
            ) else {
                return false;
            };
            if requirement.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

/// The first NoSchedule or NoExecute taint of the node that the pod does not tolerate.
pub fn untolerated_taint<'n>(pod: &Pod, node: &'n Node) -> Option<&'n Taint> {
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref())?;
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
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
