//! The connect subresources of pods (`pods/portforward` for now): a client's WebSocket
//! upgrade is passed through, headers and then bytes, to the agent of the pod's node, as
//! kube-apiserver passes it to the kubelet. The protocols inside (SPDY-tunnelled
//! port-forward for kubectl, WebSocket channels for client libraries) are spoken by the agent; the API server only authorizes (`create` on the
//! subresource, by the guard), finds the node, and splices the two connections.

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
pub async fn port_forward(server: &Arc<ApiServer>, mut request: Request) -> Result<Response> {
    let pod = server.get_object(&request.key())?;
    let name = request.name().to_string();
    let node_name = object::str_at(&pod, "/spec/nodeName");
    if node_name.is_empty() || object::str_at(&pod, "/status/phase") != "Running" {
        return Err(ApiError::BadRequest(format!(
            "unable to forward port because pod is not running. Current status={}",
            object::str_at(&pod, "/status/phase")
        )));
    }
    let wants_websocket = request
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(client) = request.upgrade.take().filter(|_| wants_websocket) else {
        return Err(ApiError::BadRequest(
            "Upgrade request required: port-forward is served over a WebSocket (SPDY/3.1+portforward.k8s.io or v4.channel.k8s.io)".into(),
        ));
    };
    let endpoint = super::nodes::agent_of(server, node_name)?;
    // The query names the ports for clients of the channel protocol (`ports=8080`).
    let query = request
        .raw_query
        .as_deref()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let url = format!(
        "https://{endpoint}/portForward/{}/{name}{query}",
        request.namespace()
    );
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
    let key = format!("{}/{name}", request.namespace());
    tokio::spawn(async move {
        let (client, agent) = match tokio::try_join!(client, agent) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!("port-forward to {key}: upgrading failed: {e}");
                return;
            }
        };
        let (mut client, mut agent) = (TokioIo::new(client), TokioIo::new(agent));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut agent).await {
            tracing::debug!("port-forward to {key} ended: {e}");
        }
    });
    Ok(switching
        .body(Body::empty())
        .map_err(|e| ApiError::Internal(format!("the upgrade answer: {e}")))?
        .into_response())
}
