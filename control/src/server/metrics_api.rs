//! The resource metrics API, `metrics.k8s.io/v1beta1` (what metrics-server adds to a
//! Kubernetes cluster; Shoal's API server serves it itself): `NodeMetrics` and `PodMetrics`
//! for `kubectl top` and the HorizontalPodAutoscaler. Nothing is stored: each request asks
//! the agents of the nodes concerned (`/stats/resource` on their gateways, in parallel,
//! bounded in time) and keeps the pods and nodes the request selects. A node whose agent does
//! not answer is left out, as metrics-server leaves out a node it cannot scrape.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use super::error::ApiError;
use super::ApiServer;
use crate::api::object;
use crate::api::selector::{FieldSelector, LabelSelector};
use crate::api::usage::{self, NodeUsage};

/// How long an agent has to answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

type Params = Query<HashMap<String, String>>;

/// `GET /apis/metrics.k8s.io/v1beta1`.
pub async fn resource_list() -> Json<Value> {
    Json(usage::resource_list())
}

/// `GET .../nodes`.
pub async fn nodes(
    State(server): State<Arc<ApiServer>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let labels = label_selector(&params)?;
    let nodes: Vec<Value> = (server
        .store
        .list("nodes", None)
        .map_err(stored("nodes"))?
        .objects
        .into_iter())
    .filter(|n| labels.matches_object(n))
    .collect();
    let names: Vec<&str> = nodes.iter().map(object::name).collect();
    let reports = node_reports(&server, &names).await;
    let items = (nodes.iter())
        .filter_map(|node| {
            let report = reports.get(object::name(node))?;
            let labels = node.pointer("/metadata/labels");
            Some(usage::node_metrics(object::name(node), report, labels))
        })
        .collect();
    Ok(Json(usage::list("NodeMetrics", items)).into_response())
}

/// `GET .../nodes/{name}`.
pub async fn node(
    State(server): State<Arc<ApiServer>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound {
        resource: "nodemetrics.metrics.k8s.io".into(),
        name: name.clone(),
    };
    let node = (server
        .store
        .get(&crate::store::ObjectKey::new("nodes", "", &name)))
    .map_err(stored("nodes"))?
    .ok_or_else(not_found)?;
    let reports = node_reports(&server, &[name.as_str()]).await;
    let report = reports.get(name.as_str()).ok_or_else(not_found)?;
    let labels = node.pointer("/metadata/labels");
    Ok(Json(usage::node_metrics(&name, report, labels)).into_response())
}

/// `GET .../pods` (every namespace).
pub async fn all_pods(
    State(server): State<Arc<ApiServer>>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    pod_list(&server, None, &params).await
}

/// `GET .../namespaces/{namespace}/pods`.
pub async fn namespace_pods(
    State(server): State<Arc<ApiServer>>,
    Path(namespace): Path<String>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    pod_list(&server, Some(&namespace), &params).await
}

/// `GET .../namespaces/{namespace}/pods/{name}`.
pub async fn pod(
    State(server): State<Arc<ApiServer>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound {
        resource: "podmetrics.metrics.k8s.io".into(),
        name: format!("{namespace}/{name}"),
    };
    let key = crate::store::ObjectKey::new("pods", &namespace, &name);
    let pod = server
        .store
        .get(&key)
        .map_err(stored("pods"))?
        .ok_or_else(not_found)?;
    let items = pod_metrics(&server, vec![pod]).await;
    let item = items.into_iter().next().ok_or_else(not_found)?;
    Ok(Json(item).into_response())
}

async fn pod_list(
    server: &Arc<ApiServer>,
    namespace: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let labels = label_selector(params)?;
    let fields = match params.get("fieldSelector") {
        Some(text) => FieldSelector::parse(text)
            .map_err(|e| ApiError::BadRequest(format!("invalid field selector: {e}")))?,
        None => FieldSelector::default(),
    };
    let pods: Vec<Value> = (server
        .store
        .list("pods", namespace)
        .map_err(stored("pods"))?
        .objects
        .into_iter())
    .filter(|p| labels.matches_object(p) && fields.matches(p))
    .collect();
    let items = pod_metrics(server, pods).await;
    Ok(Json(usage::list("PodMetrics", items)).into_response())
}

/// A store failure while reading `resource`.
pub(super) fn stored(resource: &'static str) -> impl Fn(crate::store::Error) -> ApiError {
    move |e| ApiError::from_store(e, resource, "")
}

pub(super) fn label_selector(params: &HashMap<String, String>) -> Result<LabelSelector, ApiError> {
    match params.get("labelSelector") {
        Some(text) => LabelSelector::parse(text)
            .map_err(|e| ApiError::BadRequest(format!("invalid label selector: {e}"))),
        None => Ok(LabelSelector::default()),
    }
}

/// The metrics of those of `pods` their nodes report (a pod not running, or on a node that
/// did not answer, has none), in the order given.
async fn pod_metrics(server: &Arc<ApiServer>, pods: Vec<Value>) -> Vec<Value> {
    let mut nodes: Vec<&str> = (pods.iter())
        .map(|p| object::str_at(p, "/spec/nodeName"))
        .filter(|n| !n.is_empty())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    let reports = node_reports(server, &nodes).await;
    let mut by_pod = HashMap::new();
    for report in reports.values() {
        for pod in &report.pods {
            by_pod.insert((pod.namespace.as_str(), pod.name.as_str()), (pod, report));
        }
    }
    (pods.iter())
        .filter_map(|pod| {
            let key = (object::namespace(pod), object::name(pod));
            let (usage, report) = by_pod.get(&key)?;
            // The same name, another pod (recreated since): not this one's figures.
            if !usage.uid.is_empty() && usage.uid != object::str_at(pod, "/metadata/uid") {
                return None;
            }
            let labels = pod.pointer("/metadata/labels");
            Some(usage::pod_metrics(usage, labels, &report.timestamp))
        })
        .collect()
}

/// Each named node's report, from its agent; nodes that did not answer in time are missing.
async fn node_reports(server: &Arc<ApiServer>, names: &[&str]) -> HashMap<String, NodeUsage> {
    agent_reports(server, names, "/stats/resource").await
}

/// Each named node's answer to `GET path` on its agent's gateway, decoded; nodes that did
/// not answer in time, or answered something unreadable, are missing.
pub(super) async fn agent_reports<T: serde::de::DeserializeOwned>(
    server: &Arc<ApiServer>,
    names: &[&str],
    path: &str,
) -> HashMap<String, T> {
    let asks = names.iter().map(|name| async move {
        match agent_report(server, name, path).await {
            Ok(report) => Some((name.to_string(), report)),
            Err(why) => {
                tracing::debug!("no {path} from node {name}: {why}");
                None
            }
        }
    });
    (futures::future::join_all(asks).await)
        .into_iter()
        .flatten()
        .collect()
}

async fn agent_report<T: serde::de::DeserializeOwned>(
    server: &Arc<ApiServer>,
    name: &str,
    path: &str,
) -> Result<T, String> {
    use http_body_util::BodyExt;
    let endpoint = super::nodes::agent_of(server, name).map_err(|e| e.to_string())?;
    let uri: http::Uri = format!("https://{endpoint}{path}")
        .parse()
        .map_err(|e| format!("bad agent endpoint {endpoint:?}: {e}"))?;
    let ask = async {
        let answer = (server.agents.get(uri).await).map_err(|e| e.to_string())?;
        if !answer.status().is_success() {
            return Err(format!("the agent answered {}", answer.status()));
        }
        let body = (answer.into_body().collect().await).map_err(|e| e.to_string())?;
        serde_json::from_slice(&body.to_bytes()).map_err(|e| format!("unreadable report: {e}"))
    };
    tokio::time::timeout(AGENT_TIMEOUT, ask)
        .await
        .map_err(|_| format!("no answer within {AGENT_TIMEOUT:?}"))?
}
