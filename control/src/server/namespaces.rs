//! Namespace rules: the system namespaces always exist; a namespace being deleted accepts no
//! new content, loses everything in it, and then goes itself.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use http::StatusCode;
use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::resource::Request;
use super::{json_response, ApiServer};
use crate::api::object;
use crate::api::resources::RESOURCES;
use crate::store::{revision_of, ObjectKey};

/// Namespaces every cluster has; they cannot be deleted.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

pub async fn ensure_system_namespaces(server: &ApiServer) -> anyhow::Result<()> {
    for name in SYSTEM_NAMESPACES {
        let key = ObjectKey::new("namespaces", "", name);
        if server.store.get(&key)?.is_none() {
            let mut namespace = json!({"metadata": {"name": name}});
            crate::api::defaults::on_create(
                crate::api::resources::lookup("", "v1", "namespaces")
                    .expect("namespaces are served"),
                &mut namespace,
            );
            match server.store.create(key, namespace).await {
                Ok(_) | Err(crate::store::Error::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Restarts the clean-up of namespaces that were terminating when the server stopped.
pub fn resume_terminations(server: &Arc<ApiServer>) {
    let Ok(listing) = server.store.list("namespaces", None) else {
        return;
    };
    for namespace in listing.objects {
        if namespace.pointer("/metadata/deletionTimestamp").is_some() {
            spawn_cleanup(server.clone(), object::name(&namespace).to_string());
        }
    }
}

/// Fails unless `namespace` exists and is not being deleted.
pub fn check_accepts_content(server: &ApiServer, namespace: &str) -> Result<()> {
    let found = server
        .store
        .get(&ObjectKey::new("namespaces", "", namespace))
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
    let stored = server
        .store
        .update(request.key(), marked, revision_of(&current))
        .await
        .map_err(|e| ApiError::from_store(e, "namespaces", &name))?;
    spawn_cleanup(server.clone(), name);
    Ok(json_response(StatusCode::OK, &stored))
}

/// Deletes everything in a terminating namespace (pods gracefully, through their agents),
/// then the namespace once nothing is left.
fn spawn_cleanup(server: Arc<ApiServer>, namespace: String) {
    tokio::spawn(async move {
        loop {
            let mut remaining = 0;
            for resource in RESOURCES.iter().filter(|r| r.namespaced) {
                let Ok(listing) = server.store.list(&resource.store_name(), Some(&namespace))
                else {
                    continue;
                };
                remaining += listing.objects.len();
                for object in listing.objects {
                    let key =
                        ObjectKey::new(&resource.store_name(), &namespace, object::name(&object));
                    let bound = !object::str_at(&object, "/spec/nodeName").is_empty();
                    if resource.kind == "Pod" && bound {
                        super::pods::mark_for_deletion(&server, key, object, None)
                            .await
                            .ok();
                    } else {
                        server.store.delete(key, None).await.ok();
                    }
                }
            }
            if remaining == 0 {
                server
                    .store
                    .delete(ObjectKey::new("namespaces", "", &namespace), None)
                    .await
                    .ok();
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}
