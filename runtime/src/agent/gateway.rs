//! The agent's HTTP endpoint: what the API server calls for `kubectl logs` (the kubelet's
//! `/containerLogs`), and the gateway into pods: `/proxy/{namespace}/{pod}/{port}/{path}`
//! serves a request on the pod's loopback (the API server's pod proxy and other nodes come
//! in here); `/proxy-ip/{ip}/{port}/{path}` does the same for a pod named by its IP.
//! `/metrics` is what this node's Service proxy counted; `/stats/resource` and
//! `/stats/requests` are what its pods use and the requests its proxy routes, as JSON for the
//! API server's metrics APIs. `/portForward/{namespace}/{pod}` is
//! the kubelet's port-forward endpoint: a WebSocket the API server passes through from
//! `kubectl port-forward` ([`super::portforward`]); `/exec/{namespace}/{pod}/{container}`
//! is its exec endpoint and `/attach/…` its attach endpoint ([`super::exec`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use super::Shared;
use crate::pod::log::{ContainerLog, LogLine};
use crate::pod::network::ServeError;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/stats/resource", get(resource_stats))
        .route("/stats/requests", get(request_stats))
        .route("/modules", get(modules))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/portForward/{namespace}/{pod}", get(port_forward))
        .route("/exec/{namespace}/{pod}/{container}", get(exec))
        .route("/attach/{namespace}/{pod}/{container}", get(attach))
        .route("/proxy/{namespace}/{pod}/{port}", any(proxy_root))
        .route("/proxy/{namespace}/{pod}/{port}/", any(proxy_root))
        .route("/proxy/{namespace}/{pod}/{port}/{*path}", any(proxy))
        .route("/proxy-ip/{ip}/{port}", any(proxy_ip_root))
        .route("/proxy-ip/{ip}/{port}/", any(proxy_ip_root))
        .route("/proxy-ip/{ip}/{port}/{*path}", any(proxy_ip))
        .with_state(shared)
}

/// A port-forward WebSocket for a pod of this node: SPDY tunnelled (kubectl), or plain
/// channels for the ports of the query (kube-rs, the Python client).
async fn port_forward(
    State(shared): State<Arc<Shared>>,
    Path((namespace, pod)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    use super::portforward::{channels, PROTOCOL as SPDY};
    let key = format!("{namespace}/{pod}");
    let Some(network) = shared.networks.get(crate::proxy::LocalPod::Named(&key)) else {
        return (
            StatusCode::NOT_FOUND,
            format!("pod {key} is not running on this node\n"),
        )
            .into_response();
    };
    let upgrade = upgrade.protocols([SPDY, channels::PROTOCOL]);
    if upgrade.selected_protocol().is_some_and(|p| p == SPDY) {
        return upgrade.on_upgrade(move |socket| super::portforward::serve(socket, network, key));
    }
    let values: Vec<&str> = (query.iter())
        .filter(|(k, _)| k == "ports")
        .map(|(_, v)| v.as_str())
        .collect();
    match channels::ports_of(&values) {
        Ok(ports) => upgrade.on_upgrade(move |socket| channels::serve(socket, network, key, ports)),
        Err(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    }
}

/// An exec WebSocket: the command of the query, run in the pod's sandbox with the
/// settings of `container`.
async fn exec(
    State(shared): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    use super::exec::{self, ExecOptions, Session, V4, V5};
    let key = format!("{namespace}/{pod}");
    let Some(sandbox) = shared.sandboxes.get(&key) else {
        let message = format!("pod {key} is not running on this node\n");
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    if sandbox.container(&container).is_none() {
        let message = format!("container {container} is not valid for pod {pod}\n");
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let options = match ExecOptions::from_query(&query) {
        Ok(options) => options,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let program = match exec::program_for(&shared.engine, &sandbox, &options.command[0]).await {
        Ok(program) => program,
        Err(e) => {
            let message = format!("cannot load the toolbox: {e}\n");
            return (StatusCode::INTERNAL_SERVER_ERROR, message).into_response();
        }
    };
    let upgrade = upgrade.protocols([V5, V4]);
    let Some(protocol) = upgrade.selected_protocol().cloned() else {
        let message = format!("exec is served over a WebSocket with subprotocol {V5} or {V4}\n");
        return (StatusCode::BAD_REQUEST, message).into_response();
    };
    let session = Session {
        pod: key,
        sandbox,
        container,
        program,
        engine: shared.engine.clone(),
        options,
        close_signal: protocol == V5,
    };
    upgrade.on_upgrade(move |socket| {
        use futures::StreamExt;
        let (sink, source) = socket.split();
        exec::serve(sink, source, session)
    })
}

/// An attach WebSocket: an ephemeral container's console, or a command module's output.
async fn attach(
    State(shared): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    use super::exec::attach::{self, AttachOptions};
    use super::exec::{V4, V5};
    use futures::StreamExt;
    let key = format!("{namespace}/{pod}");
    let Some(sandbox) = shared.sandboxes.get(&key) else {
        let message = format!("pod {key} is not running on this node\n");
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    let options = AttachOptions::from_query(&query);
    let upgrade = upgrade.protocols([V5, V4]);
    if upgrade.selected_protocol().is_none() {
        let message = format!("attach is served over a WebSocket with subprotocol {V5} or {V4}\n");
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    if let Some(console) = sandbox.attachable(&container) {
        return upgrade.on_upgrade(move |socket| {
            let (sink, source) = socket.split();
            attach::console(sink, source, console, options)
        });
    }
    match sandbox.container(&container) {
        Some(c) if c.program.is_http() => {
            let message = format!("container {container} is an HTTP component: it has no console to attach to (kubectl logs shows its output)\n");
            (StatusCode::BAD_REQUEST, message).into_response()
        }
        Some(_) => match shared.logs.get(&key, &container, false) {
            Some(log) => upgrade.on_upgrade(move |socket| {
                let (sink, source) = socket.split();
                attach::log(sink, source, log, options)
            }),
            None => {
                let message = format!("container {container} is not running\n");
                (StatusCode::BAD_REQUEST, message).into_response()
            }
        },
        None => {
            let message = format!("container {container} is not valid for pod {pod}\n");
            (StatusCode::BAD_REQUEST, message).into_response()
        }
    }
}

/// The proxy's metrics and the pods' resource usage, as Prometheus text.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut usage = prometheus_client::registry::Registry::default();
    usage.register_collector(Box::new(super::usage::UsageCollector(shared.usage.clone())));
    crate::proxy::metrics::response(shared.proxy.metrics(), &[&usage])
}

/// What each pod here uses, for the API server's metrics API.
async fn resource_stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.usage.report()).into_response()
}

/// The requests this node's proxy routes, per Service and pod, for the API server's custom
/// metrics API.
/// The modules this node has loaded: digest, kind, sizes and how they were compiled (the
/// API server serves it as `nodes/{name}/proxy/modules`).
async fn modules(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(serde_json::json!({"modules": shared.engine.modules()})).into_response()
}

async fn request_stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.proxy.rates().report()).into_response()
}

async fn container_logs(
    State(shared): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let flag = |k: &str| matches!(query.get(k).map(String::as_str), Some("true" | "1"));
    let number = |k: &str| query.get(k).and_then(|v| v.parse::<u64>().ok());
    let previous = flag("previous");
    let pod_key = format!("{namespace}/{pod}");
    let Some(log) = shared.logs.get(&pod_key, &container, previous) else {
        let message = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            )
        };
        return (StatusCode::NOT_FOUND, message).into_response();
    };
    let start = number("tailLines").map_or(0, |n| log.tail_start(n));
    let options = StreamOptions {
        follow: flag("follow") && !previous,
        timestamps: flag("timestamps"),
        limit: number("limitBytes"),
    };
    let body = Body::from_stream(log_stream(log, start, options));
    ([(http::header::CONTENT_TYPE, "text/plain")], body).into_response()
}

#[derive(Clone, Copy)]
struct StreamOptions {
    follow: bool,
    timestamps: bool,
    limit: Option<u64>,
}

/// The log from line `start` on, as chunks; with `follow`, it waits for new lines until the
/// run ends.
fn log_stream(
    log: Arc<ContainerLog>,
    start: u64,
    options: StreamOptions,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::unfold(
        (log, start, 0u64, false),
        move |(log, next, sent, finished)| async move {
            if finished {
                return None;
            }
            loop {
                let (lines, closed) = log.read_from(next);
                if let Some(last) = lines.last() {
                    let next = last.seq + 1;
                    let mut chunk = render(&lines, options.timestamps);
                    let mut finished = !options.follow;
                    if let Some(limit) = options.limit {
                        let room = limit.saturating_sub(sent) as usize;
                        if chunk.len() >= room {
                            chunk.truncate(room);
                            finished = true;
                        }
                    }
                    let sent = sent + chunk.len() as u64;
                    return Some((Ok(Bytes::from(chunk)), (log, next, sent, finished)));
                }
                if closed || !options.follow {
                    return None;
                }
                log.wait_past(next).await;
            }
        },
    )
}

fn render(lines: &[LogLine], timestamps: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        if timestamps {
            out.extend_from_slice(
                line.time
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                    .as_bytes(),
            );
            out.push(b' ');
        }
        out.extend_from_slice(line.text.as_bytes());
        out.push(b'\n');
    }
    out
}

async fn proxy_root(
    State(shared): State<Arc<Shared>>,
    Path((namespace, pod, port)): Path<(String, String, u16)>,
    request: axum::extract::Request,
) -> Response {
    forward(&shared, &namespace, &pod, port, "", request).await
}

async fn proxy(
    State(shared): State<Arc<Shared>>,
    Path((namespace, pod, port, path)): Path<(String, String, u16, String)>,
    request: axum::extract::Request,
) -> Response {
    forward(&shared, &namespace, &pod, port, &path, request).await
}

async fn proxy_ip_root(
    State(shared): State<Arc<Shared>>,
    Path((ip, port)): Path<(String, u16)>,
    request: axum::extract::Request,
) -> Response {
    forward_to_ip(&shared, &ip, port, "", request).await
}

async fn proxy_ip(
    State(shared): State<Arc<Shared>>,
    Path((ip, port, path)): Path<(String, u16, String)>,
    request: axum::extract::Request,
) -> Response {
    forward_to_ip(&shared, &ip, port, &path, request).await
}

/// A request for a pod IP (another node's proxy sends those here, as this node owns the IP).
async fn forward_to_ip(
    shared: &Shared,
    ip: &str,
    port: u16,
    path: &str,
    request: axum::extract::Request,
) -> Response {
    let Some(key) = shared.networks.key_of_ip(ip) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no pod has IP {ip} on this node\n"),
        )
            .into_response();
    };
    let (namespace, pod) = key.split_once('/').unwrap_or_default();
    forward(shared, namespace, pod, port, path, request).await
}

/// Serves a request on a pod's loopback and streams the answer back.
async fn forward(
    shared: &Shared,
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
    request: axum::extract::Request,
) -> Response {
    let key = format!("{namespace}/{pod}");
    let network = shared.networks.get(crate::proxy::LocalPod::Named(&key));
    let not_served = [(crate::proxy::NOT_SERVED_HEADER, "true")];
    let Some(network) = network else {
        return (
            StatusCode::NOT_FOUND,
            not_served,
            format!("pod {namespace}/{pod} is not running on this node\n"),
        )
            .into_response();
    };
    let (mut parts, body) = request.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.uri = match format!("http://localhost:{port}/{path}{query}").parse() {
        Ok(uri) => uri,
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("bad path {path:?}: {e}\n")).into_response()
        }
    };
    parts.headers.insert(
        http::header::HOST,
        http::HeaderValue::from_str(&format!("localhost:{port}")).expect("a valid host header"),
    );
    let request = crate::pod::network::request(http::Request::from_parts(parts, body));
    match network.serve(port, request).await {
        Ok(response) => response.map(Body::new).into_response(),
        Err(e @ ServeError::NoServer(_)) => {
            (e.status(), not_served, format!("{e}\n")).into_response()
        }
        Err(e) => {
            let retry_after = e.retry_after();
            let mut response = (e.status(), format!("{e}\n")).into_response();
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, seconds.into());
            }
            response
        }
    }
}
