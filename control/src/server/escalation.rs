//! NodeRestriction ([`node_restriction`]) and RBAC's escalation prevention, checked before a Role, ClusterRole, RoleBinding or
//! ClusterRoleBinding is written: a user may grant only rules it already holds where the grant
//! applies, unless it may `escalate` (roles) or `bind` (the referenced role), as on
//! Kubernetes. And after such a write, the policy cache is waited for, so the grant is in
//! force when the client gets its answer.

use serde_json::Value;

use super::error::{ApiError, Result};
use super::request::Request;
use super::ApiServer;
use crate::auth::rbac::{self, uncovered, Decision, Rule};
use crate::auth::request_info::RequestInfo;

/// Whether `request`'s user may write `object` (of an RBAC kind) without escalating.
pub(super) fn check(server: &ApiServer, request: &Request, object: &Value) -> Result<()> {
    let resource = request.resource();
    if resource.group != rbac::GROUP || request.user.is_superuser() {
        return Ok(());
    }
    let user = &*request.user;
    let namespace = request.namespace();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let policy = server.policy.read();
    let may = |verb: &str, resource: &str, name: &str| {
        let info = RequestInfo {
            resource_request: true,
            verb: verb.into(),
            api_group: rbac::GROUP.into(),
            namespace: namespace.into(),
            resource: resource.into(),
            name: name.into(),
            ..RequestInfo::default()
        };
        policy.authorize(user, &info) == Decision::Allow
    };
    let requested = match resource.builtin_kind() {
        "Role" | "ClusterRole" => {
            if may("escalate", resource.plural, name) {
                return Ok(());
            }
            Rule::of_role(object)
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let kind = object
                .pointer("/roleRef/kind")
                .and_then(Value::as_str)
                .unwrap_or("");
            let role = object
                .pointer("/roleRef/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let plural = if kind == "Role" {
                "roles"
            } else {
                "clusterroles"
            };
            if may("bind", plural, role) {
                return Ok(());
            }
            policy.role_rules(kind, role, namespace).ok_or_else(|| {
                ApiError::Forbidden(format!(
                    "{} \"{name}\" is forbidden: {kind} \"{role}\" not found",
                    resource.qualified_plural()
                ))
            })?
        }
        _ => return Ok(()),
    };
    let missing = uncovered(&policy.rules_for(user, namespace), &requested);
    if missing.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = missing
        .iter()
        .map(|rule| serde_json::to_string(rule).unwrap_or_default())
        .collect();
    Err(ApiError::Forbidden(format!(
        "{} \"{name}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
        resource.qualified_plural(),
        user.username,
        user.groups,
        missing.join("\n")
    )))
}

/// NodeRestriction: a node may create and change only its own Node and Lease (their names are
/// in the body, where the authorizer cannot see them on a create).
pub(super) fn node_restriction(request: &Request, object: &Value) -> Result<()> {
    let Some(node) = crate::auth::node::node_name(&request.user) else {
        return Ok(());
    };
    let kind = request.resource().builtin_kind();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if matches!(kind, "Node" | "Lease") && name != node {
        return Err(ApiError::Forbidden(format!(
            "node \"{node}\" is not allowed to modify {} \"{name}\"",
            kind.to_lowercase()
        )));
    }
    Ok(())
}

/// After a write of an RBAC object: wait until the policy cache has it.
pub(super) async fn settle(server: &ApiServer, request: &Request, stored: &Value) {
    if request.resource().group == rbac::GROUP {
        if let Some(revision) = crate::store::revision_of(stored) {
            server
                .policy
                .wait_for(&request.resource().store_name(), revision)
                .await;
        }
    }
}
