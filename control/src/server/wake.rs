//! Waking a workload scaled to zero: `POST /shoal/v1/wake/{namespace}/{service}` is what a
//! node's proxy calls when a request arrives for a Service with no ready endpoints (it holds
//! the request meanwhile). Every HorizontalPodAutoscaler of the namespace with
//! `minReplicas: 0` whose target is at zero replicas and whose pods the Service selects (its
//! selector is within the target's pod template labels) has its target set to one replica,
//! and is stamped with the time ([`WOKEN_AT_ANNOTATION`]), which the HPA controller honours
//! as a recommendation of at least one for its scale-down window, so the woken pod is not
//! taken away before it has served.
//!
//! The write is a compare-and-swap from zero: proxies on several nodes waking the same
//! Service at once still make one replica. Only nodes may call it (`system:node`), and all
//! it can do is take an autoscaled workload from zero to one.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::{ApiError, Result};
use super::ApiServer;
use crate::api::object;
use crate::api::resources::lookup_kind;
use crate::store::{revision_of, ObjectKey};

pub use crate::api::autoscaling::WOKEN_AT_ANNOTATION;

/// The answer: the targets woken (`Deployment/web`); empty when nothing behind the Service
/// scales from zero (the proxy then answers 503 at once).
pub async fn wake(
    State(server): State<Arc<ApiServer>>,
    Path((namespace, service)): Path<(String, String)>,
) -> Response {
    match wake_behind(&server, &namespace, &service).await {
        Ok(woken) => Json(json!({"woken": woken})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn wake_behind(
    server: &Arc<ApiServer>,
    namespace: &str,
    service: &str,
) -> Result<Vec<String>> {
    let found = server.get_object(&ObjectKey::new("services", namespace, service))?;
    let selector: Map<String, Value> = match found.pointer("/spec/selector") {
        Some(Value::Object(selector)) if !selector.is_empty() => selector.clone(),
        _ => return Ok(Vec::new()),
    };
    let Some(hpas) = lookup_kind("autoscaling/v2", "HorizontalPodAutoscaler") else {
        return Ok(Vec::new());
    };
    let listed = (server.store.list(&hpas.store_name(), Some(namespace)))
        .map_err(|e| ApiError::from_store(e, &hpas.qualified_plural(), ""))?;
    let mut woken = Vec::new();
    for hpa in listed.objects {
        if hpa.pointer("/spec/minReplicas").and_then(Value::as_i64) != Some(0) {
            continue;
        }
        let kind = object::str_at(&hpa, "/spec/scaleTargetRef/kind");
        let api_version = object::str_at(&hpa, "/spec/scaleTargetRef/apiVersion");
        let name = object::str_at(&hpa, "/spec/scaleTargetRef/name");
        let Some(resource) = lookup_kind(api_version, kind).filter(|r| r.has_subresource("scale"))
        else {
            continue;
        };
        let key = ObjectKey::new(&resource.store_name(), namespace, name);
        if wake_target(server, &key, &selector).await? {
            stamp(server, namespace, &hpas.store_name(), object::name(&hpa)).await;
            woken.push(format!("{kind}/{name}"));
        }
    }
    Ok(woken)
}

/// Sets the target to one replica if it is at zero and the Service selects its pods; whether
/// it is (now or already) waking.
async fn wake_target(
    server: &Arc<ApiServer>,
    key: &ObjectKey,
    selector: &Map<String, Value>,
) -> Result<bool> {
    for _attempt in 0..16 {
        let Some(target) = (server.store.get(key))
            .map_err(|e| ApiError::from_store(e, &key.resource, &key.name))?
        else {
            return Ok(false);
        };
        let labels = target
            .pointer("/spec/template/metadata/labels")
            .and_then(Value::as_object);
        let selected =
            labels.is_some_and(|labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
        if !selected {
            return Ok(false);
        }
        match target.pointer("/spec/replicas").and_then(Value::as_i64) {
            Some(0) => {}
            // Already waking (another node asked first) or awake.
            _ => return Ok(true),
        }
        let mut updated = target.clone();
        object::set_at(&mut updated, "/spec/replicas", json!(1));
        let generation = target
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        object::metadata_mut(&mut updated)
            .insert("generation".into(), json!(generation.saturating_add(1)));
        match server
            .store
            .update(key.clone(), updated, revision_of(&target))
            .await
        {
            Ok(_) => return Ok(true),
            Err(crate::store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, &key.resource, &key.name)),
        }
    }
    Ok(true)
}

/// Stamps the HPA with the wake's time (best effort: a lost stamp only means the controller
/// may take the replica away sooner).
async fn stamp(server: &Arc<ApiServer>, namespace: &str, store_name: &str, name: &str) {
    let key = ObjectKey::new(store_name, namespace, name);
    for _attempt in 0..4 {
        let Ok(Some(hpa)) = server.store.get(&key) else {
            return;
        };
        let mut updated = hpa.clone();
        let metadata = object::metadata_mut(&mut updated);
        let annotations = metadata.entry("annotations").or_insert_with(|| json!({}));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(WOKEN_AT_ANNOTATION.into(), json!(object::now_rfc3339()));
        }
        match server
            .store
            .update(key.clone(), updated, revision_of(&hpa))
            .await
        {
            Err(crate::store::Error::Conflict { .. }) => continue,
            Err(e) => {
                tracing::warn!("cannot stamp HPA {namespace}/{name} as woken: {e}");
                return;
            }
            Ok(_) => return,
        }
    }
}
