//! The RBAC objects every cluster starts with, as kube-apiserver's bootstrap policy makes
//! them: `cluster-admin` (bound to `system:masters`), the aggregated user-facing roles
//! `admin`, `edit` and `view` (with the `system:aggregate-to-*` roles they gather), the
//! discovery, basic-user and public-info roles every user gets, and `system:node`.
//! Created when missing; an object a user changed is left as it is.

use serde_json::{json, Value};

use super::rbac::{Rule, CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, GROUP};

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const AGGREGATE_TO: &str = "rbac.authorization.k8s.io/aggregate-to-";

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

fn urls(verbs: &[&str], urls: &[&str]) -> Value {
    json!({"verbs": verbs, "nonResourceURLs": urls})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {AUTOUPDATE: "true"},
        },
        "rules": rules,
    })
}

/// An aggregated role: its rules are those of every ClusterRole labelled
/// `aggregate-to-<name>`, kept by the aggregation controller; written here with them already
/// gathered so the role works before the controller's first pass.
fn aggregated(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    let mut role = cluster_role(name, labels, rules);
    role["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("{AGGREGATE_TO}{name}"): "true"}}
    ]});
    role
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"kind": "Group", "apiGroup": GROUP, "name": g}))
        .collect();
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": subjects,
    })
}

/// What `view` may read (no Secrets, as on Kubernetes).
/// Reading the resource metrics API (`kubectl top`).
fn metrics_rule() -> Value {
    rule(READ, &["metrics.k8s.io"], &["pods", "nodes"])
}

fn view_rules() -> Vec<Value> {
    vec![
        metrics_rule(),
        rule(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "replicationcontrollers/status",
                "serviceaccounts",
                "services",
                "services/status",
                "events",
                "namespaces",
                "namespaces/status",
            ],
        ),
        rule(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        rule(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        rule(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
        rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
        rule(READ, &["coordination.k8s.io"], &["leases"]),
        rule(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
    ]
}

/// What `edit` adds to `view`: writing workloads and their config, Secrets included.
fn edit_rules() -> Vec<Value> {
    vec![
        rule(READ, &[""], &["secrets"]),
        rule(
            WRITE,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        rule(
            &["create"],
            &[""],
            &["pods/eviction", "serviceaccounts/token"],
        ),
        rule(
            WRITE,
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
        rule(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        rule(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
        rule(WRITE, &["coordination.k8s.io"], &["leases"]),
        rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
    ]
}

/// What `admin` adds to `edit`: roles and bindings in its namespace, and access reviews.
fn admin_rules() -> Vec<Value> {
    vec![
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        rule(
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            &[GROUP],
            &["rolebindings", "roles"],
        ),
    ]
}

/// Every bootstrap token's user is in this group.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
const DASHBOARD_SESSION_ROLE: &str = "shoal:dashboard-session";
const NODE_CLIENT_ROLE: &str = "system:certificates.k8s.io:certificatesigningrequests:nodeclient";
const SELF_NODE_CLIENT_ROLE: &str =
    "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient";

/// The bootstrap objects as (store resource, object).
pub fn bootstrap_objects() -> Vec<(&'static str, Value)> {
    let label = |to: &str| json!({format!("{AGGREGATE_TO}{to}"): "true", "kubernetes.io/bootstrapping": "rbac-defaults"});
    let defaults = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let view = view_rules();
    let edit: Vec<Value> = edit_rules();
    let admin: Vec<Value> = admin_rules();
    let all = |parts: &[&Vec<Value>]| {
        parts
            .iter()
            .flat_map(|p| p.iter().cloned())
            .collect::<Vec<_>>()
    };
    let roles = vec![
        cluster_role(
            "cluster-admin",
            defaults.clone(),
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        cluster_role("system:aggregate-to-view", label("view"), view.clone()),
        // metrics-server's role: reading resource metrics comes with view, edit and admin.
        cluster_role(
            "system:aggregated-metrics-reader",
            label("view"),
            vec![metrics_rule()],
        ),
        cluster_role("system:aggregate-to-edit", label("edit"), edit.clone()),
        cluster_role("system:aggregate-to-admin", label("admin"), admin.clone()),
        // view and edit aggregate upward, as on Kubernetes.
        aggregated("view", label("edit"), view.clone()),
        aggregated("edit", label("admin"), all(&[&view, &edit])),
        aggregated("admin", defaults.clone(), all(&[&view, &edit, &admin])),
        cluster_role(
            "system:discovery",
            defaults.clone(),
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            defaults.clone(),
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        // Anyone authenticated may open a dashboard session as themselves
        // (`server/dashboard.rs`); deleting this role or its binding turns that off.
        cluster_role(
            DASHBOARD_SESSION_ROLE,
            defaults.clone(),
            vec![urls(&["post"], &["/shoal/v1/dashboard/token"])],
        ),
        cluster_role(
            "system:basic-user",
            defaults.clone(),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:node",
            defaults.clone(),
            // Reads only: a node's writes (its Node, Lease, pods' status) and its reads of
            // Secrets, ConfigMaps and claims are the Node authorizer's (`auth/node.rs`).
            vec![
                rule(
                    READ,
                    &[""],
                    &["nodes", "pods", "services", "endpoints", "namespaces"],
                ),
                rule(&["create", "patch", "update"], &[""], &["events"]),
                rule(READ, &["coordination.k8s.io"], &["leases"]),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                rule(
                    &["patch", "update"],
                    &["networking.k8s.io"],
                    &["ingresses/status"],
                ),
                rule(
                    &["create", "get", "list", "watch"],
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                ),
                rule(&["get"], &["shoal.dev"], &["modules"]),
                // A proxy holding requests for a Service at zero wakes its workload.
                urls(&["post"], &["/shoal/v1/wake/*"]),
            ],
        ),
        // Joining nodes: a bootstrap token may ask for a node client certificate, which is
        // approved on its own; a node may renew its own (`controllers/certificates.rs`).
        cluster_role(
            "system:node-bootstrapper",
            defaults.clone(),
            vec![rule(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        cluster_role(
            NODE_CLIENT_ROLE,
            defaults.clone(),
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/nodeclient"],
            )],
        ),
        cluster_role(
            SELF_NODE_CLIENT_ROLE,
            defaults.clone(),
            vec![rule(
                &["create"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests/selfnodeclient"],
            )],
        ),
    ];
    let bindings = vec![
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding(
            DASHBOARD_SESSION_ROLE,
            DASHBOARD_SESSION_ROLE,
            &[crate::auth::AUTHENTICATED_GROUP],
        ),
        binding(
            "shoal:node-bootstrapper",
            "system:node-bootstrapper",
            &[BOOTSTRAPPERS_GROUP],
        ),
        binding(
            "shoal:node-autoapprove-bootstrap",
            NODE_CLIENT_ROLE,
            &[BOOTSTRAPPERS_GROUP],
        ),
        binding(
            "shoal:node-autoapprove-certificate-rotation",
            SELF_NODE_CLIENT_ROLE,
            &["system:nodes"],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &["system:authenticated"],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
        binding("system:node", "system:node", &["system:nodes"]),
    ];
    roles
        .into_iter()
        .map(|r| (CLUSTER_ROLES, r))
        .chain(bindings.into_iter().map(|b| (CLUSTER_ROLE_BINDINGS, b)))
        .collect()
}

/// The rules of the ClusterRoles among `roles` that `aggregation_rule` selects, in name
/// order, without repeats (what the aggregation controller writes into an aggregated role).
pub fn aggregate(aggregation_rule: &Value, roles: &[Value], own_name: &str) -> Vec<Rule> {
    let selectors = aggregation_rule["clusterRoleSelectors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut selected: Vec<&Value> = roles
        .iter()
        .filter(|role| role.pointer("/metadata/name").and_then(Value::as_str) != Some(own_name))
        .filter(|role| {
            selectors.iter().any(|selector| {
                let Ok(selector) = serde_json::from_value(selector.clone()) else {
                    return false;
                };
                let text = crate::api::selector::query_of(&selector);
                // An empty selector selects nothing here (Kubernetes: no role aggregates all).
                !text.is_empty()
                    && crate::api::selector::LabelSelector::parse(&text)
                        .is_ok_and(|s| s.matches_object(role))
            })
        })
        .collect();
    selected.sort_by_key(|role| {
        role.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    });
    let mut rules: Vec<Rule> = Vec::new();
    for role in selected {
        for rule in Rule::of_role(role) {
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::rbac::{uncovered, Decision, Policy, CLUSTER_ROLES};
    use crate::auth::request_info;
    use crate::auth::UserInfo;

    #[test]
    fn aggregated_roles_are_written_with_what_they_gather() {
        let objects = bootstrap_objects();
        let roles: Vec<Value> = objects
            .iter()
            .filter(|(r, _)| *r == CLUSTER_ROLES)
            .map(|(_, o)| o.clone())
            .collect();
        for name in ["view", "edit", "admin"] {
            let role = roles
                .iter()
                .find(|r| r["metadata"]["name"] == name)
                .unwrap();
            let gathered = aggregate(&role["aggregationRule"], &roles, name);
            let written = Rule::of_role(role);
            assert!(uncovered(&written, &gathered).is_empty(), "{name}");
            assert!(uncovered(&gathered, &written).is_empty(), "{name}");
        }
    }

    #[test]
    fn every_user_may_discover_and_review_itself_and_no_more() {
        let mut policy = Policy::default();
        for (resource, object) in bootstrap_objects() {
            policy.apply(resource, &object, false);
        }
        let alice = UserInfo::authenticated("alice", vec![]);
        let can = |user: &UserInfo, method: http::Method, path: &str| {
            policy.authorize(user, &request_info::parse(&method, path, None)) == Decision::Allow
        };
        assert!(can(&alice, http::Method::GET, "/apis"));
        assert!(can(&alice, http::Method::GET, "/api/v1"));
        assert!(can(
            &alice,
            http::Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        ));
        assert!(!can(&alice, http::Method::GET, "/api/v1/pods"));
        assert!(!can(
            &alice,
            http::Method::GET,
            "/api/v1/namespaces/default/secrets"
        ));
        assert!(can(&UserInfo::anonymous(), http::Method::GET, "/version"));
        assert!(!can(&UserInfo::anonymous(), http::Method::GET, "/apis"));
        let node = UserInfo::authenticated("system:node:n1", vec!["system:nodes".into()]);
        assert!(can(&node, http::Method::GET, "/api/v1/pods"));
        assert!(
            !can(&node, http::Method::GET, "/api/v1/namespaces/a/secrets/s"),
            "the Node authorizer's"
        );
        assert!(!can(
            &node,
            http::Method::POST,
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
        ));
    }
}
