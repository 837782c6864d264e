//! The typed client everything talks to the API through: the scheduler, controllers, node
//! agents, the CLI and tests. One interface, two transports: in-process (the API server's
//! router called directly, used by `shoal dev`) and HTTP (a separate `shoal server`), so one
//! code path serves both (DESIGN.md §2).

mod api;
mod events;
mod shared;
mod watcher;

use std::sync::Arc;

use axum::body::Body;
use axum::Router;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;
use tower::ServiceExt;

pub use api::{Api, DeleteParams, ListParams, ObjectList, WatchEvent};
pub use events::Recorder;
pub use watcher::{watcher, WatcherEvent};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a Status error.
    #[error("{message} ({code} {reason})")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("cannot reach the API server: {0}")]
    Transport(String),
    #[error("unexpected answer from the API server: {0}")]
    Decode(String),
}

impl Error {
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone)]
enum Transport {
    InProcess(Router),
    Http {
        base: String,
        http: Box<hyper_util::client::legacy::Client<HttpConnector, Body>>,
    },
}

fn json_request(
    method: Method,
    path: &str,
    content_type: &str,
    body: Option<&Value>,
) -> Result<Request<Body>> {
    let body = match body {
        Some(value) => {
            Body::from(serde_json::to_vec(value).map_err(|e| Error::Decode(e.to_string()))?)
        }
        None => Body::empty(),
    };
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "application/json")
        .body(body)
        .map_err(|e| Error::Transport(e.to_string()))
}

/// A handle on the API; cheap to clone.
#[derive(Clone)]
pub struct Client {
    transport: Arc<Transport>,
    /// Watches shared by every clone of this client ([`Client::shared_watch`]).
    shared: Arc<shared::SharedWatches>,
}

impl Client {
    /// A client that calls the API server's router in this process, with no socket.
    pub fn in_process(router: Router) -> Self {
        Self {
            transport: Arc::new(Transport::InProcess(router)),
            shared: Arc::default(),
        }
    }

    /// A client for the API server at `base_url` (such as `http://127.0.0.1:6443`).
    pub fn http(base_url: &str) -> Self {
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Self {
            transport: Arc::new(Transport::Http {
                base: base_url.trim_end_matches('/').to_string(),
                http: Box::new(http),
            }),
            shared: Arc::default(),
        }
    }

    /// Typed access to resources of kind `K`, in `namespace` (ignored for cluster-scoped kinds;
    /// `None` means all namespaces for lists and watches).
    pub fn api<K>(&self, namespace: Option<&str>) -> Api<K> {
        Api::new(self.clone(), namespace)
    }

    /// Sends a request whose URI is a path (`/api/v1/pods`) and returns the raw response.
    pub async fn send(&self, request: Request<Body>) -> Result<Response<Body>> {
        match &*self.transport {
            Transport::InProcess(router) => router
                .clone()
                .oneshot(request)
                .await
                .map_err(|e| Error::Transport(e.to_string())),
            Transport::Http { base, http } => {
                let (mut parts, body) = request.into_parts();
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                parts.uri = format!("{base}{path}")
                    .parse()
                    .map_err(|e| Error::Transport(format!("bad URL: {e}")))?;
                let response = http
                    .request(Request::from_parts(parts, body))
                    .await
                    .map_err(|e| Error::Transport(format!("{base}: {e}")))?;
                Ok(response.map(Body::new))
            }
        }
    }

    /// Sends a request and returns the body of a successful answer as a stream; an error
    /// status becomes [`Error::Api`].
    pub async fn send_ok(&self, request: Request<Body>) -> Result<Body> {
        let response = self.send(request).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Err(status_error(status, &bytes))
    }

    /// Like [`Client::send_ok`], with the whole body read.
    pub async fn send_bytes(&self, request: Request<Body>) -> Result<bytes::Bytes> {
        let body = self.send_ok(request).await?;
        Ok(body
            .collect()
            .await
            .map_err(|e| Error::Transport(e.to_string()))?
            .to_bytes())
    }

    /// Sends a JSON request and decodes the JSON answer, turning error statuses into [`Error::Api`].
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<Value> {
        let request = json_request(method, path, content_type, body)?;
        let bytes = self.send_bytes(request).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Decode(format!("{e}: {}", String::from_utf8_lossy(&bytes))))
    }

    /// Like [`Client::json`] for a caller that needs only success: the answer is not decoded.
    pub async fn json_ok(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Option<&Value>,
    ) -> Result<()> {
        let request = json_request(method, path, content_type, body)?;
        self.send_bytes(request).await.map(drop)
    }

    /// Streams a container's log (`follow` keeps it open while the container runs).
    pub async fn pod_logs(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        follow: bool,
    ) -> Result<Body> {
        let mut path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/log?follow={follow}");
        if let Some(container) = container {
            path.push_str(&format!("&container={container}"));
        }
        let request = Request::get(path)
            .body(Body::empty())
            .map_err(|e| Error::Transport(e.to_string()))?;
        self.send_ok(request).await
    }

    /// Uploads a Wasm module into the cluster's module store; returns its image reference
    /// (`sha256:<hex>`).
    pub async fn push_module(&self, bytes: Vec<u8>) -> Result<String> {
        let request = Request::post("/shoal/v1/modules")
            .header(http::header::CONTENT_TYPE, "application/wasm")
            .body(Body::from(bytes))
            .map_err(|e| Error::Transport(e.to_string()))?;
        let answer = self.send_bytes(request).await?;
        let answer: Value =
            serde_json::from_slice(&answer).map_err(|e| Error::Decode(e.to_string()))?;
        answer["image"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Decode("no image reference in the answer".into()))
    }

    /// Downloads a pushed module by its reference (`sha256:<hex>`).
    pub async fn fetch_module(&self, reference: &str) -> Result<Vec<u8>> {
        let request = Request::get(format!("/shoal/v1/modules/{reference}"))
            .body(Body::empty())
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(self.send_bytes(request).await?.to_vec())
    }

    /// Binds a pending pod to a node through `pods/binding`.
    pub async fn bind_pod(&self, namespace: &str, pod: &str, node: &str) -> Result<()> {
        let binding = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let path = format!("/api/v1/namespaces/{namespace}/pods/{pod}/binding");
        self.json_ok(Method::POST, &path, "application/json", Some(&binding))
            .await
    }
}

/// Decodes an error answer: a Status body when there is one, else the text.
pub(crate) fn status_error(status: StatusCode, bytes: &[u8]) -> Error {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) if value["kind"] == "Status" => Error::Api {
            code: value["code"].as_u64().unwrap_or(status.as_u16() as u64) as u16,
            reason: value["reason"].as_str().unwrap_or("").to_string(),
            message: value["message"].as_str().unwrap_or("").to_string(),
        },
        _ => Error::Api {
            code: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_string(),
            message: String::from_utf8_lossy(bytes).trim().to_string(),
        },
    }
}
