//! The Node authorizer, as kube-apiserver's: an agent (user `system:node:<name>` in group
//! `system:nodes`) may write only its own Node and Lease, the status of pods bound to it, and
//! delete those pods; it may read a Secret, ConfigMap or PersistentVolumeClaim only when a pod
//! bound to it uses it, and never list them. Everything else it may do comes from RBAC (the
//! `system:node` ClusterRole: reading nodes, pods, Services and the like).
//!
//! Where Kubernetes keeps a graph of pods and what they use, this reads the pods of the
//! object's namespace from the store when a node asks: nodes ask on a pod's start, not per
//! request served.

use serde_json::Value;

use super::request_info::RequestInfo;
use super::UserInfo;
use crate::store::{ObjectKey, Store};

pub const NODES_GROUP: &str = "system:nodes";

/// What the Node authorizer says of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum NodeDecision {
    Allow,
    /// Refused, with the reason appended to the denial.
    Deny(String),
    /// Not a node's special case: RBAC decides.
    NoOpinion,
}

/// The node a user is, if it is one.
pub fn node_name(user: &UserInfo) -> Option<&str> {
    let name = user.username.strip_prefix("system:node:")?;
    (!name.is_empty() && user.groups.iter().any(|g| g == NODES_GROUP)).then_some(name)
}

fn no_relationship(node: &str) -> NodeDecision {
    NodeDecision::Deny(format!(
        "no relationship found between node '{node}' and this object"
    ))
}

pub fn authorize(store: &dyn Store, node: &str, info: &RequestInfo) -> NodeDecision {
    use NodeDecision::*;
    if !info.resource_request {
        return NoOpinion;
    }
    let verb = info.verb.as_str();
    let reads = matches!(verb, "get" | "list" | "watch");
    let own = info.name == node;
    match (
        info.api_group.as_str(),
        info.resource.as_str(),
        info.subresource.as_str(),
    ) {
        ("", "nodes", "") if reads => NoOpinion,
        // The name of a created Node is checked by NodeRestriction (it is in the body).
        ("", "nodes", "") if verb == "create" => Allow,
        ("", "nodes", _) if own => Allow,
        ("", "nodes", _) => Deny(format!("node '{node}' may only change its own Node")),
        ("coordination.k8s.io", "leases", "")
            if info.namespace == crate::api::fencing::NODE_LEASE_NAMESPACE =>
        {
            if verb == "create" || own {
                Allow
            } else if reads {
                NoOpinion
            } else {
                Deny(format!("node '{node}' may only change its own Lease"))
            }
        }
        ("", "pods", "") if reads => NoOpinion,
        ("", "pods", sub) if (verb == "delete" && sub.is_empty()) || sub == "status" => {
            match pod_node(store, &info.namespace, &info.name) {
                Some(bound) if bound == node => Allow,
                _ => Deny(format!("node '{node}' may only change pods bound to it")),
            }
        }
        ("", "pods", _) => Deny(format!("node '{node}' may not {verb} pods")),
        ("", "secrets" | "configmaps" | "persistentvolumeclaims", "") => {
            if verb == "get" && uses(store, node, &info.namespace, &info.resource, &info.name) {
                Allow
            } else {
                no_relationship(node)
            }
        }
        // The token handler checks that the token is bound to a pod on this node.
        ("", "serviceaccounts", "token") if verb == "create" => Allow,
        _ => NoOpinion,
    }
}

/// The node a pod is bound to.
pub fn pod_node(store: &dyn Store, namespace: &str, name: &str) -> Option<String> {
    let pod = store.get(&ObjectKey::new("pods", namespace, name)).ok()??;
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Whether a pod bound to `node` in `namespace` uses the `resource` named `name`.
fn uses(store: &dyn Store, node: &str, namespace: &str, resource: &str, name: &str) -> bool {
    if name.is_empty() {
        return false;
    }
    let Ok(listing) = store.list("pods", Some(namespace)) else {
        return false;
    };
    listing
        .objects
        .iter()
        .filter(|pod| pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node))
        .any(|pod| references(pod, resource).iter().any(|r| r == name))
}

/// The names of `resource` (secrets, configmaps, persistentvolumeclaims) a pod uses.
pub fn references(pod: &Value, resource: &str) -> Vec<String> {
    let spec = &pod["spec"];
    let mut found = Vec::new();
    let mut add = |value: &Value| {
        if let Some(name) = value.as_str() {
            found.push(name.to_string());
        }
    };
    let volumes = spec["volumes"].as_array().into_iter().flatten();
    let containers = ["containers", "initContainers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().into_iter().flatten());
    match resource {
        "persistentvolumeclaims" => {
            for volume in volumes {
                add(&volume["persistentVolumeClaim"]["claimName"]);
            }
        }
        "secrets" | "configmaps" => {
            let (volume_key, volume_name, key_ref, from_ref, projected) = if resource == "secrets" {
                (
                    "secret",
                    "secretName",
                    "secretKeyRef",
                    "secretRef",
                    "secret",
                )
            } else {
                (
                    "configMap",
                    "name",
                    "configMapKeyRef",
                    "configMapRef",
                    "configMap",
                )
            };
            for volume in volumes {
                add(&volume[volume_key][volume_name]);
                for source in volume["projected"]["sources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    add(&source[projected]["name"]);
                }
            }
            for container in containers {
                for env in container["env"].as_array().into_iter().flatten() {
                    add(&env["valueFrom"][key_ref]["name"]);
                }
                for from in container["envFrom"].as_array().into_iter().flatten() {
                    add(&from[from_ref]["name"]);
                }
            }
            if resource == "secrets" {
                for pull in spec["imagePullSecrets"].as_array().into_iter().flatten() {
                    add(&pull["name"]);
                }
            }
        }
        _ => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_references_what_its_volumes_env_and_pull_secrets_name() {
        let pod = json!({"spec": {
            "volumes": [{"name": "a", "secret": {"secretName": "s1"}}, {"name": "b", "configMap": {"name": "c1"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "p1"}},
                {"name": "d", "projected": {"sources": [{"secret": {"name": "s2"}}, {"configMap": {"name": "c2"}}]}}],
            "containers": [{"name": "x", "env": [{"name": "E", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "k"}}},
                {"name": "F", "valueFrom": {"configMapKeyRef": {"name": "c3", "key": "k"}}}],
                "envFrom": [{"secretRef": {"name": "s4"}}, {"configMapRef": {"name": "c4"}}]}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s5"}}]}],
            "imagePullSecrets": [{"name": "s6"}]}});
        assert_eq!(
            references(&pod, "secrets"),
            ["s1", "s2", "s3", "s4", "s5", "s6"]
        );
        assert_eq!(references(&pod, "configmaps"), ["c1", "c2", "c3", "c4"]);
        assert_eq!(references(&pod, "persistentvolumeclaims"), ["p1"]);
    }

    #[test]
    fn only_nodes_are_nodes() {
        let node = UserInfo::authenticated("system:node:n1", vec![NODES_GROUP.into()]);
        assert_eq!(node_name(&node), Some("n1"));
        let pretender = UserInfo::authenticated("system:node:n1", vec![]);
        assert_eq!(node_name(&pretender), None);
        let empty = UserInfo::authenticated("system:node:", vec![NODES_GROUP.into()]);
        assert_eq!(node_name(&empty), None);
    }
}
