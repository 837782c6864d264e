//! Namespace rules: the system namespaces always exist; a namespace being deleted accepts no
//! new content and stays (Terminating) until its `spec.finalizers` are gone. The namespace
//! controller (`controllers/namespace.rs`) empties it and removes the `kubernetes` finalizer
//! through `namespaces/{name}/finalize`; others' finalizers are theirs to remove. The server
//! deletes the namespace when no finalizer is left.

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::request::Request;
use super::{json_response, ApiServer};
use crate::api::object;
use crate::store::{revision_of, ObjectKey};

/// Namespaces every cluster has; they cannot be deleted.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

pub async fn ensure_system_namespaces(server: &ApiServer) -> anyhow::Result<()> {
    for name in SYSTEM_NAMESPACES {
        let key = ObjectKey::new("namespaces", "", name);
        if server.store.get(&key)?.is_none() {
            let mut namespace = json!({"metadata": {"name": name}});
            crate::api::resources::lookup("", "v1", "namespaces")
                .expect("namespaces are served")
                .prepare_for_create(&mut namespace);
            match server.store.create(key, namespace).await {
                Ok(_) | Err(crate::store::Error::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Restarts the clean-up of namespaces that were terminating when the server stopped.
/// Fails unless `namespace` exists and is not being deleted.
pub fn check_accepts_content(server: &ApiServer, namespace: &str) -> Result<()> {
    let found = server
        .store
        .get_shared(&ObjectKey::new("namespaces", "", namespace))
        .map_err(|e| ApiError::from_store(e, "namespaces", namespace))?;
    match found {
        None => Err(ApiError::NotFound {
            resource: "namespaces".into(),
            name: namespace.into(),
        }),
        Some(ns) if ns.pointer("/metadata/deletionTimestamp").is_some() => {
            Err(ApiError::Forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        )))
        }
        Some(_) => Ok(()),
    }
}

pub async fn delete(
    server: &Arc<ApiServer>,
    request: &Request,
    current: Value,
) -> Result<Response> {
    let name = request.name().to_string();
    if SYSTEM_NAMESPACES.contains(&name.as_str()) {
        return Err(ApiError::Forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    if current.pointer("/metadata/deletionTimestamp").is_some() {
        return Ok(json_response(StatusCode::OK, &current));
    }
    let mut marked = current.clone();
    object::metadata_mut(&mut marked)
        .insert("deletionTimestamp".into(), json!(object::now_rfc3339()));
    object::set_at(&mut marked, "/status/phase", json!("Terminating"));
    // Namespaces stored before finalizers were defaulted still get emptied first.
    if marked.pointer("/spec/finalizers").is_none() {
        object::set_at(&mut marked, "/spec/finalizers", json!(["kubernetes"]));
    }
    let stored = if finalized(&marked) {
        // Nothing holds it: gone at once.
        server
            .store
            .delete(request.key(), revision_of(&current))
            .await
            .map_err(|e| ApiError::from_store(e, "namespaces", &name))?;
        marked
    } else {
        server
            .store
            .update(request.key(), marked, revision_of(&current))
            .await
            .map_err(|e| ApiError::from_store(e, "namespaces", &name))?
    };
    Ok(json_response(StatusCode::OK, &stored))
}

/// `PUT namespaces/{name}/finalize`: sets `spec.finalizers` from the body (nothing else); a
/// terminating namespace with no finalizer left is deleted.
pub async fn finalize(server: &Arc<ApiServer>, request: &Request) -> Result<Response> {
    let name = request.name().to_string();
    let body: Value = serde_json::from_slice(&request.body)
        .map_err(|e| ApiError::BadRequest(format!("the Namespace is not valid JSON: {e}")))?;
    let finalizers = match body.pointer("/spec/finalizers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|f| f.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| invalid_finalizers(&name))?,
        Some(_) => return Err(invalid_finalizers(&name)),
    };
    // Without a resourceVersion in the body the last writer wins, as on Kubernetes: retry
    // over concurrent changes (the namespace controller finalizing at the same moment).
    for _attempt in 0..16 {
        let current = server.get_object(&request.key())?;
        let mut updated = current.clone();
        object::set_at(&mut updated, "/spec/finalizers", json!(finalizers));
        let terminating = updated.pointer("/metadata/deletionTimestamp").is_some();
        let result = if terminating && finalized(&updated) {
            server
                .store
                .delete(request.key(), revision_of(&current))
                .await
                .map(|_| updated)
        } else {
            server
                .store
                .update(request.key(), updated, revision_of(&current))
                .await
        };
        match result {
            Ok(stored) => return Ok(json_response(StatusCode::OK, &stored)),
            Err(crate::store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, "namespaces", &name)),
        }
    }
    Err(ApiError::Conflict {
        resource: "namespaces".into(),
        name,
        why: "too many concurrent writers".into(),
    })
}

fn invalid_finalizers(name: &str) -> ApiError {
    ApiError::Invalid {
        kind: "Namespace".into(),
        name: name.into(),
        causes: vec![crate::api::validation::Cause::invalid(
            "spec.finalizers",
            "",
            "must be a list of strings",
        )],
    }
}

/// Whether nothing holds the namespace: no `spec.finalizers`, no `metadata.finalizers`.
fn finalized(namespace: &Value) -> bool {
    let empty = |pointer: &str| {
        namespace
            .pointer(pointer)
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    };
    empty("/spec/finalizers") && empty("/metadata/finalizers")
}
