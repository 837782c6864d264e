//! The access review resources, answered and never stored: `authorization.k8s.io/v1`
//! SelfSubjectAccessReview (`kubectl auth can-i`), SelfSubjectRulesReview (`can-i --list`),
//! SubjectAccessReview and LocalSubjectAccessReview (asking for someone else), and
//! `authentication.k8s.io/v1` SelfSubjectReview (`kubectl auth whoami`). Also the bootstrap
//! RBAC policy every cluster starts with.

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::request::Request;
use super::{json_response, ApiServer};
use crate::api::validation::Cause;
use crate::auth::rbac::{Decision, Rule};
use crate::auth::request_info::RequestInfo;
use crate::auth::{policy, UserInfo};
use crate::store::ObjectKey;

/// Creates the bootstrap ClusterRoles and ClusterRoleBindings that are missing.
pub(super) async fn ensure_bootstrap_policy(server: &ApiServer) -> anyhow::Result<()> {
    for (resource, mut object) in policy::bootstrap_objects() {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let key = ObjectKey::new(resource, "", &name);
        if server.store.get(&key)?.is_some() {
            continue;
        }
        crate::api::defaults::metadata_on_create(
            &mut object,
            "rbac.authorization.k8s.io/v1".into(),
            if resource == crate::auth::rbac::CLUSTER_ROLES {
                "ClusterRole"
            } else {
                "ClusterRoleBinding"
            },
        );
        match server.store.create(key, object).await {
            Ok(_) | Err(crate::store::Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// POST on a review resource: the review with its `status` filled in.
pub(super) async fn create(server: &Arc<ApiServer>, request: &Request) -> Result<Response> {
    let mut review = request.decode_body()?;
    let resource = request.resource();
    let spec = review["spec"].clone();
    let status = match resource.kind {
        "SelfSubjectReview" => json!({"userInfo": &*request.user}),
        "SelfSubjectAccessReview" => access(server, &request.user, &spec)?,
        "SubjectAccessReview" => access(server, &subject_of(&spec), &spec)?,
        "LocalSubjectAccessReview" => {
            let namespace = spec
                .pointer("/resourceAttributes/namespace")
                .and_then(Value::as_str);
            if namespace.is_some_and(|ns| ns != request.namespace()) {
                return Err(invalid(
                    resource.kind,
                    "spec.resourceAttributes.namespace",
                    "must match the namespace of the request",
                ));
            }
            let mut spec = spec.clone();
            spec["resourceAttributes"]["namespace"] = json!(request.namespace());
            access(server, &subject_of(&spec), &spec)?
        }
        "SelfSubjectRulesReview" => rules(server, &request.user, &spec),
        other => {
            return Err(ApiError::MethodNotAllowed(format!("create {other}")));
        }
    };
    review["status"] = status;
    review["apiVersion"] = json!(resource.api_version());
    review["kind"] = json!(resource.kind);
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    Ok(json_response(StatusCode::CREATED, &review))
}

fn invalid(kind: &str, field: &str, message: &str) -> ApiError {
    ApiError::Invalid {
        kind: kind.into(),
        name: String::new(),
        causes: vec![Cause {
            reason: "FieldValueInvalid",
            message: message.to_string(),
            field: field.to_string(),
        }],
    }
}

/// The user a SubjectAccessReview asks about.
fn subject_of(spec: &Value) -> UserInfo {
    let strings = |key: &str| -> Vec<String> {
        spec[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    UserInfo {
        username: spec["user"].as_str().unwrap_or("").to_string(),
        uid: spec["uid"].as_str().unwrap_or("").to_string(),
        groups: strings("groups"),
        extra: Default::default(),
    }
}

/// The status of an access review of `spec` for `user`.
fn access(server: &ApiServer, user: &UserInfo, spec: &Value) -> Result<Value> {
    let info = if let Some(attributes) = spec.get("resourceAttributes").filter(|a| a.is_object()) {
        let text = |key: &str| attributes[key].as_str().unwrap_or("").to_string();
        RequestInfo {
            resource_request: true,
            verb: text("verb"),
            api_group: text("group"),
            api_version: text("version"),
            namespace: text("namespace"),
            resource: text("resource"),
            subresource: text("subresource"),
            name: text("name"),
            path: String::new(),
        }
    } else if let Some(attributes) = spec.get("nonResourceAttributes").filter(|a| a.is_object()) {
        RequestInfo {
            resource_request: false,
            path: attributes["path"].as_str().unwrap_or("").to_string(),
            verb: attributes["verb"].as_str().unwrap_or("").to_string(),
            ..RequestInfo::default()
        }
    } else {
        return Err(invalid(
            "SelfSubjectAccessReview",
            "spec.resourceAttributes",
            "exactly one of resourceAttributes and nonResourceAttributes must be set",
        ));
    };
    let allowed = server.policy.read().authorize(user, &info) == Decision::Allow;
    Ok(if allowed {
        json!({"allowed": true, "reason": "allowed by RBAC"})
    } else {
        json!({"allowed": false})
    })
}

/// What `user` may do in the namespace a SelfSubjectRulesReview names.
fn rules(server: &ApiServer, user: &UserInfo, spec: &Value) -> Value {
    let namespace = spec["namespace"].as_str().unwrap_or("");
    let held = server.policy.read().rules_for(user, namespace);
    let (mut resource_rules, mut non_resource_rules) = (Vec::new(), Vec::new());
    for Rule {
        verbs,
        api_groups,
        resources,
        resource_names,
        non_resource_urls,
    } in held
    {
        if non_resource_urls.is_empty() {
            let mut rule = json!({"verbs": verbs, "apiGroups": api_groups, "resources": resources});
            if !resource_names.is_empty() {
                rule["resourceNames"] = json!(resource_names);
            }
            resource_rules.push(rule);
        } else {
            non_resource_rules.push(json!({"verbs": verbs, "nonResourceURLs": non_resource_urls}));
        }
    }
    json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    })
}
