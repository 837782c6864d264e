//! Where the API server may dial a node's agent (logs, the pod proxy): only at the address
//! and port the node itself published. A Node's status can be written by others too (an
//! admin, a controller), so the server keeps its own record, the annotation
//! [`AGENT_ENDPOINT_ANNOTATION`]: set from the status when the node itself (or an in-process
//! agent) writes it, kept while others leave the address alone, removed when someone else
//! changes it, and never taken from a request body.
//!
//! Also `nodes/{name}/proxy/{path}`: the read-only pages of a node's agent that users may
//! see through the API server ([`PROXIED_PATHS`]).

use serde_json::{json, Value};

use super::error::{ApiError, Result};
use super::request::Request;
use crate::api::object;

/// `address:port` of the agent, as the node itself last published it.
pub const AGENT_ENDPOINT_ANNOTATION: &str = "shoal.dev/agent-endpoint";
const POINTER: &str = "/metadata/annotations/shoal.dev~1agent-endpoint";

/// `host:port` of a node's agent in its status: its InternalIP and kubelet endpoint port.
fn endpoint_in_status(node: &Value) -> Option<String> {
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_i64)?;
    let address = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)?
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .map(|a| object::str_at(a, "/address").to_string())?;
    Some(format!("{address}:{port}"))
}

/// The agent endpoint the API server may dial for `node`.
pub fn agent_endpoint(node: &Value) -> Option<String> {
    node.pointer(POINTER)
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The agent endpoint of the node named `node_name`, for a request about one of its pods
/// (logs, the pod proxy, port-forward): 503 when the node has published none.
pub(super) fn agent_of(server: &super::ApiServer, node_name: &str) -> Result<String> {
    let node = server.get_object(&crate::store::ObjectKey::new("nodes", "", node_name))?;
    agent_endpoint(&node).ok_or_else(|| {
        ApiError::ServiceUnavailable(format!(
            "node {node_name} has no agent endpoint that the node itself published"
        ))
    })
}

/// What `nodes/{name}/proxy/` reaches on an agent, read-only. Kubernetes forwards anything
/// to the kubelet there (so `nodes/proxy` is as strong as exec into every pod); Shoal's agent
/// serves pods' traffic, exec and logs on the same gateway, so only these pages pass.
pub const PROXIED_PATHS: &[&str] = &["healthz", "modules"];

/// `GET nodes/{name}/proxy/{path}`: one of [`PROXIED_PATHS`] from the node's agent.
pub(super) async fn proxy(
    server: &std::sync::Arc<super::ApiServer>,
    request: &Request,
) -> Result<axum::response::Response> {
    use axum::response::IntoResponse;
    if request.method != http::Method::GET {
        return Err(ApiError::MethodNotAllowed(format!(
            "{} nodes/proxy: only GET",
            request.method
        )));
    }
    let path = request.path.rest.as_deref().unwrap_or("").trim_matches('/');
    if !PROXIED_PATHS.contains(&path) {
        return Err(ApiError::NotFound {
            resource: "nodes/proxy".into(),
            name: format!(
                "{}/{path} (a node serves {} here)",
                request.name(),
                PROXIED_PATHS.join(", ")
            ),
        });
    }
    let node_name = request.name();
    let endpoint = agent_of(server, node_name)?;
    let url = format!("https://{endpoint}/{path}");
    let forwarded = http::Request::get(&url)
        .body(axum::body::Body::empty())
        .map_err(|e| ApiError::BadRequest(format!("cannot forward to {url}: {e}")))?;
    let answer = server.agents.request(forwarded).await.map_err(|e| {
        ApiError::ServiceUnavailable(format!(
            "cannot reach the agent of node {node_name} at {endpoint}: {e}"
        ))
    })?;
    if !answer.status().is_success() {
        return Err(agent_refusal(answer, node_name).await);
    }
    Ok(answer.map(axum::body::Body::new).into_response())
}

/// What the API server answers when an agent refused a request with `answer`: the agent's
/// text, as a 400 when it does not have what was asked for (404: the pod or container is not
/// there), else as a 500 naming the node.
pub(super) async fn agent_refusal(
    answer: http::Response<hyper::body::Incoming>,
    node_name: &str,
) -> ApiError {
    use http_body_util::BodyExt;
    let code = answer.status();
    let text = answer
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_string();
    if code == http::StatusCode::NOT_FOUND {
        ApiError::BadRequest(message)
    } else {
        ApiError::Internal(format!("agent of node {node_name}: {message}"))
    }
}

/// Records (or drops) the trusted endpoint on a Node being written by `request`'s user;
/// `current` is the stored Node on an update.
pub(super) fn stamp_agent_endpoint(request: &Request, current: Option<&Value>, node: &mut Value) {
    let name = object::name(node).to_string();
    let writer = &request.user;
    let by_the_node = crate::auth::node::node_name(writer) == Some(name.as_str())
        || *writer.as_ref() == crate::auth::UserInfo::in_process();
    let published = endpoint_in_status(node);
    let trusted = if by_the_node {
        published
    } else if published.is_some() && published == current.and_then(endpoint_in_status) {
        current.and_then(agent_endpoint)
    } else {
        None
    };
    let annotations = object::metadata_mut(node)
        .entry("annotations")
        .or_insert_with(|| json!({}));
    if let Some(map) = annotations.as_object_mut() {
        match trusted {
            Some(endpoint) => {
                map.insert(AGENT_ENDPOINT_ANNOTATION.into(), json!(endpoint));
            }
            None => {
                map.remove(AGENT_ENDPOINT_ANNOTATION);
            }
        }
    }
}
