//! The `scale` subresource (`kubectl scale`): an `autoscaling/v1` Scale view of a workload's
//! `spec.replicas`, read and written through the main object. A custom kind's scale reads and
//! writes the paths its CRD names (`specReplicasPath`, `statusReplicasPath`,
//! `labelSelectorPath`).

use std::sync::Arc;

use axum::response::Response;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::request::Request;
use super::{json_response, ApiServer};
use crate::api::custom::{pointer_of, ScalePaths};
use crate::api::resources::ResourceInfo;
use crate::api::{object, patch};
use crate::store::revision_of;

/// Where `resource`'s scale lives.
fn paths_of(resource: &ResourceInfo) -> ScalePaths {
    resource
        .custom
        .and_then(|custom| custom.scale.clone())
        .unwrap_or_else(ScalePaths::workload)
}

fn scale_of(workload: &Value, paths: &ScalePaths) -> Value {
    let selector = match &paths.label_selector {
        Some(path) => json!(workload
            .pointer(&pointer_of(path))
            .and_then(Value::as_str)
            .unwrap_or("")),
        None => json!(crate::api::selector::match_labels_of(workload)),
    };
    let replicas = |path: &str| {
        workload
            .pointer(&pointer_of(path))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object::name(workload),
            "namespace": object::namespace(workload),
            "uid": object::uid(workload),
            "resourceVersion": object::str_at(workload, "/metadata/resourceVersion"),
            "creationTimestamp": object::str_at(workload, "/metadata/creationTimestamp"),
        },
        "spec": {"replicas": replicas(&paths.spec_replicas)},
        "status": {"replicas": replicas(&paths.status_replicas), "selector": selector},
    })
}

pub fn get(server: &ApiServer, request: &Request) -> Result<Response> {
    let workload = server.get_object(&request.key())?;
    Ok(json_response(
        StatusCode::OK,
        &scale_of(&workload, &paths_of(request.resource())),
    ))
}

/// `PUT` (a whole Scale; `kubectl scale --current-replicas` sends no Content-Type) or `PATCH`.
pub async fn update(server: &Arc<ApiServer>, request: &Request) -> Result<Response> {
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|e| ApiError::BadRequest(format!("the Scale is not valid JSON: {e}")))?;
    let paths = paths_of(request.resource());
    for _attempt in 0..16 {
        let workload = server.get_object(&request.key())?;
        let mut scale = scale_of(&workload, &paths);
        if request.method == Method::PUT {
            if let Some(expected) = body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
            {
                if expected != object::str_at(&workload, "/metadata/resourceVersion") {
                    return Err(ApiError::Conflict { resource: request.resource().qualified_plural(), name: request.name().into(), why: "the object has been modified; please apply your changes to the latest version and try again".into() });
                }
            }
            scale = body.clone();
        } else if request.content_type.contains("json-patch") {
            patch::json_patch(&mut scale, &body)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        } else {
            patch::merge_patch(&mut scale, &body);
        }
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::Invalid {
                kind: "Scale".into(),
                name: request.name().into(),
                causes: vec![crate::api::validation::Cause::invalid(
                    "spec.replicas",
                    &replicas.to_string(),
                    "must be greater than or equal to 0",
                )],
            });
        }
        let mut updated = workload.clone();
        object::set_at(
            &mut updated,
            &pointer_of(&paths.spec_replicas),
            json!(replicas),
        );
        let causes = request.resource().validate(&updated);
        if !causes.is_empty() {
            return Err(ApiError::Invalid {
                kind: request.resource().kind.into(),
                name: request.name().into(),
                causes,
            });
        }
        let generation = workload
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if updated.get("spec") != workload.get("spec") {
            object::metadata_mut(&mut updated).insert("generation".into(), json!(generation + 1));
        }
        match server
            .store
            .update(request.key(), updated, revision_of(&workload))
            .await
        {
            Ok(stored) => return Ok(json_response(StatusCode::OK, &scale_of(&stored, &paths))),
            Err(crate::store::Error::Conflict { .. }) => continue,
            Err(e) => {
                return Err(ApiError::from_store(
                    e,
                    &request.resource().qualified_plural(),
                    request.name(),
                ))
            }
        }
    }
    Err(ApiError::Conflict {
        resource: request.resource().qualified_plural(),
        name: request.name().into(),
        why: "too many concurrent writers".into(),
    })
}
