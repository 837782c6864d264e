//! The custom metrics API, `custom.metrics.k8s.io/v1beta1` (what prometheus-adapter adds to a
//! Kubernetes cluster; Shoal's API server serves it itself): the requests per second and in
//! flight that the nodes' proxies route to each pod and Service, for the
//! HorizontalPodAutoscaler's Pods and Object metrics. Nothing is stored: each request asks
//! every node's agent (`/stats/requests`, in parallel, bounded in time) and adds up their
//! figures, since any node's proxy may route to any pod. A pod or Service no proxy has routed
//! to within the window has the value 0.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::error::ApiError;
use super::metrics_api::{agent_reports, label_selector, stored};
use super::ApiServer;
use crate::api::object;
use crate::api::request_metrics::{self, RequestReport, Totals, METRICS};

/// `GET /apis/custom.metrics.k8s.io/v1beta1`.
pub async fn resource_list() -> Json<Value> {
    Json(request_metrics::resource_list())
}

/// `GET .../namespaces/{namespace}/{resource}/{name}/{metric}`: `name` may be `*` (every
/// object the `labelSelector` picks).
pub async fn namespaced(
    State(server): State<Arc<ApiServer>>,
    Path((namespace, resource, name, metric)): Path<(String, String, String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let kind = match resource.as_str() {
        "pods" => "Pod",
        "services" => "Service",
        _ => return Err(unknown(&resource, &metric)),
    };
    if !METRICS.contains(&metric.as_str()) {
        return Err(unknown(&resource, &metric));
    }
    let objects: Vec<Value> = if name == "*" {
        let labels = label_selector(&params)?;
        (server.store.list(&resource, Some(&namespace)))
            .map_err(stored_as(&resource))?
            .objects
            .into_iter()
            .filter(|o| labels.matches_object(o))
            .filter(|o| !matches!(object::str_at(o, "/status/phase"), "Succeeded" | "Failed"))
            .collect()
    } else {
        let key = crate::store::ObjectKey::new(&resource, &namespace, &name);
        let found = server.store.get(&key).map_err(stored_as(&resource))?;
        vec![found.ok_or_else(|| ApiError::NotFound {
            resource: resource.clone(),
            name: name.clone(),
        })?]
    };
    let nodes = server.store.list("nodes", None).map_err(stored("nodes"))?;
    let names: Vec<&str> = nodes.objects.iter().map(object::name).collect();
    let reports: Vec<RequestReport> = agent_reports(&server, &names, "/stats/requests")
        .await
        .into_values()
        .collect();
    let totals = Totals::of(&reports);
    let items = (objects.iter())
        .map(|o| {
            let name = object::name(o);
            let value = totals.value(&resource, &namespace, name, &metric);
            request_metrics::metric_value(kind, &namespace, name, &metric, value, &totals)
        })
        .collect();
    Ok(Json(request_metrics::value_list(items)).into_response())
}

fn stored_as(resource: &str) -> impl Fn(crate::store::Error) -> ApiError + '_ {
    move |e| ApiError::from_store(e, resource, "")
}

/// A metric this API does not serve: 404 naming it, as prometheus-adapter answers.
fn unknown(resource: &str, metric: &str) -> ApiError {
    ApiError::NotFound {
        resource: format!("{resource}.{}", request_metrics::GROUP),
        name: metric.to_string(),
    }
}
