//! `serviceaccounts/token` (TokenRequest, `kubectl create token`): a ServiceAccount token
//! signed by the cluster's key, for the asked audiences and lifetime (10 minutes to 48 hours,
//! 1 hour by default), optionally bound to a pod so it dies with it.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use http::StatusCode;
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::request::Request;
use super::{json_response, ApiServer};
use crate::api::validation::Cause;
use crate::auth::tokens::{self, KubernetesClaim, ObjectRef};
use crate::store::ObjectKey;

fn invalid(field: &str, value: &str, why: &str) -> ApiError {
    ApiError::Invalid {
        kind: "TokenRequest".into(),
        name: String::new(),
        causes: vec![Cause::invalid(field, value, why)],
    }
}

fn uid(object: &Value) -> &str {
    object
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub async fn token(server: &Arc<ApiServer>, request: &Request) -> Result<Response> {
    let mut review = request.decode_body()?;
    let (namespace, name) = (request.namespace(), request.name());
    let account = server.get_object(&ObjectKey::new("serviceaccounts", namespace, name))?;
    let spec = &review["spec"];
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let ttl = match &spec["expirationSeconds"] {
        Value::Null => tokens::DEFAULT_TOKEN_TTL,
        value => {
            let seconds = value.as_i64().ok_or_else(|| {
                invalid(
                    "spec.expirationSeconds",
                    &value.to_string(),
                    "must be a number of seconds",
                )
            })?;
            let seconds = u64::try_from(seconds).unwrap_or(0);
            if seconds < tokens::MIN_TOKEN_TTL.as_secs() {
                return Err(invalid(
                    "spec.expirationSeconds",
                    &seconds.to_string(),
                    "may not specify a duration less than 10 minutes",
                ));
            }
            // Longer requests are shortened to the longest allowed, as kube-apiserver does.
            Duration::from_secs(seconds).min(tokens::MAX_TOKEN_TTL)
        }
    };
    let mut claim = KubernetesClaim {
        namespace: namespace.into(),
        serviceaccount: ObjectRef {
            name: name.into(),
            uid: uid(&account).into(),
        },
        pod: None,
    };
    let bound = &spec["boundObjectRef"];
    // A node may ask only for tokens bound to pods it runs (NodeRestriction).
    if let Some(node) = crate::auth::node::node_name(&request.user) {
        let pod = bound["name"].as_str().unwrap_or("");
        let on = crate::auth::node::pod_node(server.store().as_ref(), namespace, pod);
        if bound["kind"] != "Pod" || on.as_deref() != Some(node) {
            return Err(ApiError::Forbidden(format!(
                "node \"{node}\" may only request tokens bound to pods it runs"
            )));
        }
    }
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or("");
        if kind != "Pod" {
            return Err(invalid(
                "spec.boundObjectRef.kind",
                kind,
                "tokens can be bound to a Pod only",
            ));
        }
        let pod_name = bound["name"].as_str().unwrap_or("");
        let pod = server.get_object(&ObjectKey::new("pods", namespace, pod_name))?;
        let wanted_uid = bound["uid"].as_str().unwrap_or("");
        if !wanted_uid.is_empty() && wanted_uid != uid(&pod) {
            return Err(ApiError::Conflict {
                resource: "pods".into(),
                name: pod_name.into(),
                why: format!("the UID in the bound object reference ({wanted_uid}) does not match the pod's ({})", uid(&pod)),
            });
        }
        claim.pod = Some(ObjectRef {
            name: pod_name.into(),
            uid: uid(&pod).into(),
        });
    }
    let (token, expires) = server
        .authenticator
        .tokens()
        .issue(claim, &audiences, ttl)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let expires: chrono::DateTime<chrono::Utc> = expires.into();
    review["apiVersion"] = json!("authentication.k8s.io/v1");
    review["kind"] = json!("TokenRequest");
    review["metadata"] = json!({"name": name, "namespace": namespace, "creationTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
    review["spec"]["expirationSeconds"] = json!(ttl.as_secs());
    review["status"] = json!({
        "token": token,
        "expirationTimestamp": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    Ok(json_response(StatusCode::CREATED, &review))
}
