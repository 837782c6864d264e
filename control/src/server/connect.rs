//! The connect subresources of pods (`pods/portforward`, `pods/exec`, `pods/attach`): a client's
//! WebSocket upgrade is passed through, headers and then bytes, to the agent of the pod's
//! node, as kube-apiserver passes it to the kubelet. The protocols inside (SPDY-tunnelled
//! port-forward for kubectl, WebSocket channels for exec and client libraries) are spoken
//! by the agent; the API server only authorizes (`create` on the subresource, by the
//! guard), checks the pod and container, finds the node, and splices the two connections.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use hyper_util::rt::TokioIo;

use super::error::{ApiError, Result};
use super::request::Request;
use super::ApiServer;
use crate::api::object;

/// The headers of a WebSocket handshake, passed on both ways.
const HANDSHAKE: [header::HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_ACCEPT,
];

/// `pods/{name}/portforward`: the client's WebSocket, spliced to the agent's.
pub async fn port_forward(server: &Arc<ApiServer>, request: Request) -> Result<Response> {
    let pod = server.get_object(&request.key())?;
    if !is_running(&pod) {
        return Err(ApiError::BadRequest(format!(
            "unable to forward port because pod is not running. Current status={}",
            object::str_at(&pod, "/status/phase")
        )));
    }
    let path = format!("portForward/{}/{}", request.namespace(), request.name());
    splice(server, request, &pod, path, "port-forward is served over a WebSocket (SPDY/3.1+portforward.k8s.io or v4.channel.k8s.io)").await
}

/// `pods/{name}/exec`: the client's WebSocket, spliced to the agent's exec endpoint for
/// the container of the query (the pod's only container when it names none).
pub async fn exec(server: &Arc<ApiServer>, request: Request) -> Result<Response> {
    let pod = server.get_object(&request.key())?;
    let name = request.name().to_string();
    let container = container_of(&pod, &name, request.query.get("container"))?;
    let phase = object::str_at(&pod, "/status/phase");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::BadRequest(format!(
            "cannot exec into a container in a completed pod; current phase is {phase}"
        )));
    }
    if !is_running(&pod) {
        return Err(ApiError::BadRequest(format!(
            "unable to upgrade connection: container not found (\"{container}\")"
        )));
    }
    let path = format!("exec/{}/{name}/{container}", request.namespace());
    splice(
        server,
        request,
        &pod,
        path,
        "exec is served over a WebSocket (v5.channel.k8s.io or v4.channel.k8s.io)",
    )
    .await
}

/// `pods/{name}/attach`: the client's WebSocket, spliced to the agent's attach endpoint
/// (an ephemeral container's terminal, or a running container's output).
pub async fn attach(server: &Arc<ApiServer>, request: Request) -> Result<Response> {
    let pod = server.get_object(&request.key())?;
    let name = request.name().to_string();
    let container = container_of(&pod, &name, request.query.get("container"))?;
    let phase = object::str_at(&pod, "/status/phase");
    if matches!(phase, "Succeeded" | "Failed") {
        return Err(ApiError::BadRequest(format!(
            "cannot attach to a container in a completed pod; current phase is {phase}"
        )));
    }
    if !is_running(&pod) {
        return Err(ApiError::BadRequest(format!(
            "unable to upgrade connection: pod {name} is not running"
        )));
    }
    let path = format!("attach/{}/{name}/{container}", request.namespace());
    splice(
        server,
        request,
        &pod,
        path,
        "attach is served over a WebSocket (v5.channel.k8s.io or v4.channel.k8s.io)",
    )
    .await
}

fn is_running(pod: &serde_json::Value) -> bool {
    !object::str_at(pod, "/spec/nodeName").is_empty()
        && object::str_at(pod, "/status/phase") == "Running"
}

/// The container a connect request is for, as kube-apiserver picks it: the one named, or
/// the only one; a name that is none of the pod's is refused with the pod's choices.
fn container_of(pod: &serde_json::Value, pod_name: &str, named: Option<&str>) -> Result<String> {
    let names = |list: &str| -> Vec<String> {
        (pod.pointer(&format!("/spec/{list}"))
            .and_then(|v| v.as_array()))
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .collect()
    };
    let (containers, init, ephemeral) = (
        names("containers"),
        names("initContainers"),
        names("ephemeralContainers"),
    );
    match named.filter(|n| !n.is_empty()) {
        Some(name) => {
            if containers
                .iter()
                .chain(&init)
                .chain(&ephemeral)
                .any(|c| c == name)
            {
                Ok(name.to_string())
            } else {
                Err(ApiError::BadRequest(format!(
                    "container {name} is not valid for pod {pod_name}"
                )))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::BadRequest(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// Passes the client's WebSocket upgrade to `path` on the gateway of the pod's node (with
/// the request's query) and splices the two connections once both have switched.
async fn splice(
    server: &Arc<ApiServer>,
    mut request: Request,
    pod: &serde_json::Value,
    path: String,
    needs: &str,
) -> Result<Response> {
    let node_name = object::str_at(pod, "/spec/nodeName");
    let wants_websocket = request
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(client) = request.upgrade.take().filter(|_| wants_websocket) else {
        return Err(ApiError::BadRequest(format!(
            "Upgrade request required: {needs}"
        )));
    };
    let endpoint = super::nodes::agent_of(server, node_name)?;
    // The query says what to do: the ports (`ports=8080`), the command and its streams.
    let query = request
        .raw_query
        .as_deref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!("https://{endpoint}/{path}{query}");
    let mut forwarded = http::Request::builder().method("GET").uri(&url);
    for name in &HANDSHAKE {
        for value in request.headers.get_all(name) {
            forwarded = forwarded.header(name, value);
        }
    }
    let forwarded = forwarded
        .body(Body::empty())
        .map_err(|e| ApiError::BadRequest(format!("cannot forward to {url}: {e}")))?;
    let mut answer = server.agents.request(forwarded).await.map_err(|e| {
        ApiError::ServiceUnavailable(format!(
            "cannot reach the agent of node {node_name} at {endpoint}: {e}"
        ))
    })?;
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(super::nodes::agent_refusal(answer, node_name).await);
    }
    let mut switching = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for name in &HANDSHAKE {
        for value in answer.headers().get_all(name) {
            switching = switching.header(name, value);
        }
    }
    let agent = hyper::upgrade::on(&mut answer);
    tokio::spawn(async move {
        let (client, agent) = match tokio::try_join!(client, agent) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!("{path}: upgrading failed: {e}");
                return;
            }
        };
        let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
            tracing::debug!("{path} ended: {e}");
        }
    });
    Ok(switching
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(format!("the upgrade answer: {e}")))?
        .into_response())
}
