//! The typed client everything talks to the API through: the scheduler, controllers, node
//! agents, the CLI and tests. It is a [`kube::Client`] (kube-rs) with Shoal's conveniences on
//! top; one interface, two transports: in-process (the API server's axum router as the
//! client's tower `Service`, no socket, used by `shoal dev`) and kube's own HTTP(S) client for a
//! separate `shoal server` (a URL or a kubeconfig: TLS, tokens and client certificates come with
//! it), so one code path serves both (DESIGN.md §2).

mod api;
pub mod certificates;
mod events;
pub mod failover;
mod shared;
mod watcher;

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

pub use api::{Api, DeleteParams, ListParams, ObjectList, WatchEvent};
pub use events::{Pace as EventPace, Recorder, QUEUED as EVENTS_QUEUED};
pub use kube::client::Body;
pub use shared::ApiObject;
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
    /// Boxed: kube's error is large, and this one travels in every `Result` of the client.
    #[error("cannot reach the API server: {0}")]
    Transport(#[source] Box<kube::Error>),
    #[error("unexpected answer from the API server: {0}")]
    Decode(String),
    #[error("cannot make a client for {url}: {source}")]
    Config {
        url: String,
        #[source]
        source: Box<kube::Error>,
    },
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

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Self {
        match error {
            kube::Error::Api(status) => Self::Api {
                code: status.code,
                reason: status.reason,
                message: status.message,
            },
            kube::Error::SerdeError(e) => Self::Decode(e.to_string()),
            kube::Error::FromUtf8(e) => Self::Decode(e.to_string()),
            other => Self::Transport(Box::new(other)),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn json_request(
    method: Method,
    path: &str,
    content_type: &str,
    body: Option<&Value>,
) -> Result<Request<Vec<u8>>> {
    let body = match body {
        Some(value) => serde_json::to_vec(value).map_err(|e| Error::Decode(e.to_string()))?,
        None => Vec::new(),
    };
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::ACCEPT, "application/json")
        .body(body)
        .map_err(|e| Error::Transport(Box::new(kube::Error::HttpError(e))))
}

/// A handle on the API; cheap to clone.
#[derive(Clone)]
pub struct Client {
    kube: kube::Client,
    /// Watches shared by every clone of this client ([`Client::shared_watch`]).
    shared: Arc<shared::SharedWatches>,
}

impl Client {
    /// A client that calls a service in this process (the API server's router), with no
    /// socket: requests take exactly the path (handlers, admission) they take over HTTP.
    pub fn in_process<S, B>(service: S) -> Self
    where
        S: tower::Service<Request<Body>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<tower::BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<tower::BoxError>,
    {
        Self::new(kube::Client::new(service, "default"))
    }

    /// A client over a kube client (from a kubeconfig, or any other transport).
    pub fn new(kube: kube::Client) -> Self {
        Self {
            kube,
            shared: Arc::default(),
        }
    }

    /// One client over several API servers, each reached through its own kube client:
    /// requests go to the one that answered last and fail over to the next
    /// ([`failover::Failover`]). `servers` are (URL, client) pairs, at least one.
    pub fn failover(servers: Vec<(String, kube::Client)>) -> Self {
        match <[_; 1]>::try_from(servers) {
            // One server: its client as it is, with nothing in between.
            Ok([(_, only)]) => Self::new(only),
            Err(servers) => Self::new(kube::Client::new(
                failover::Failover::new(servers),
                "default",
            )),
        }
    }

    /// A client for the API server at `base_url` (such as `http://127.0.0.1:6443`), with no
    /// credentials.
    pub fn http(base_url: &str) -> Result<Self> {
        let config_error = |source| Error::Config {
            url: base_url.to_string(),
            source: Box::new(source),
        };
        let uri: http::Uri = base_url
            .parse()
            .map_err(|e| config_error(kube::Error::HttpError(http::Error::from(e))))?;
        let kube = kube::Client::try_from(kube::Config::new(uri)).map_err(config_error)?;
        Ok(Self::new(kube))
    }

    /// The kube-rs client underneath, for `kube::Api` and `kube::runtime`.
    pub fn kube(&self) -> &kube::Client {
        &self.kube
    }

    /// Typed access to resources of kind `K`, in `namespace` (ignored for cluster-scoped kinds;
    /// `None` means all namespaces for lists and watches).
    pub fn api<K>(&self, namespace: Option<&str>) -> Api<K>
    where
        K: k8s_openapi::Resource<Scope: 'static>,
    {
        Api::new(self.clone(), namespace)
    }

    /// Sends a request whose URI is a path (`/api/v1/pods`) and returns the raw response.
    pub async fn send(&self, request: Request<Vec<u8>>) -> Result<Response<Body>> {
        let request = request.map(Body::from);
        self.kube.send(request).await.map_err(Error::from)
    }

    /// Sends a request and returns the body of a successful answer as a stream; an error
    /// status becomes [`Error::Api`].
    pub async fn send_ok(&self, request: Request<Vec<u8>>) -> Result<Body> {
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
    pub async fn send_bytes(&self, request: Request<Vec<u8>>) -> Result<Bytes> {
        let body = self.send_ok(request).await?;
        body.collect_bytes().await.map_err(Error::from)
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
            .body(Vec::new())
            .map_err(|e| Error::Transport(Box::new(kube::Error::HttpError(e))))?;
        self.send_ok(request).await
    }

    /// Uploads a Wasm module into the cluster's module store; returns its image reference
    /// (`sha256:<hex>`).
    pub async fn push_module(&self, bytes: Vec<u8>) -> Result<String> {
        let request = Request::post("/shoal/v1/modules")
            .header(http::header::CONTENT_TYPE, "application/wasm")
            .body(bytes)
            .map_err(|e| Error::Transport(Box::new(kube::Error::HttpError(e))))?;
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
            .body(Vec::new())
            .map_err(|e| Error::Transport(Box::new(kube::Error::HttpError(e))))?;
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
