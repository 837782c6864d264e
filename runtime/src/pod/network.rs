//! A pod's in-process network: the HTTP loopback (DESIGN.md §3.3).
//!
//! Each HTTP container registers an [`HttpServer`] for the ports it declares. A request to
//! the pod (from the agent's gateway, a probe, or another module of the same pod calling
//! `localhost:PORT`) is served by instantiating the container's pre-linked component in a
//! fresh store: no socket is opened inside the pod. [`PodHooks`] is the guest's view of the
//! network: `localhost`/`127.0.0.1` go to this pod's servers, a port nobody serves is refused,
//! Service names and ClusterIPs go to the node's proxy (`crate::proxy`), and every other
//! destination is refused unless the pod's egress is open (the annotation
//! `shoal.dev/egress: allow`), in which case the request goes out to the network.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot, Notify};
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpHooks, WasiHttpView};

use super::run::{self, Exit, Launch};
use crate::engine::{Engine, P2Host};

/// How long a request may take to get its response head before it is cut off.
pub const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(30);

pub type Response = http::Response<HyperOutgoingBody>;

/// The body of requests and responses on a pod's network (wasi-http's).
pub use wasmtime_wasi_http::WasiBody;

/// Why a request got no answer from the pod.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("no container of this pod serves port {0}")]
    NoServer(u16),
    #[error("the pod's handler failed: {0}")]
    Failed(String),
    #[error("the pod's handler did not answer within {0:?}")]
    Timeout(Duration),
}

impl ServeError {
    /// The HTTP status a proxy answers with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::NoServer(_) | Self::Failed(_) => http::StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

/// The annotation that opens a pod's egress to the network.
pub const EGRESS_ANNOTATION: &str = "shoal.dev/egress";

/// The client a pod with open egress sends its outside requests through.
pub type EgressClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    WasiBody,
>;

/// The ports of one pod and who serves them, and the way out if egress is open.
#[derive(Default)]
pub struct PodNetwork {
    servers: RwLock<HashMap<u16, Arc<HttpServer>>>,
    egress: Option<EgressClient>,
    /// The pod's namespace (what a bare Service name is resolved in) and the node's proxy.
    namespace: String,
    proxy: Option<Arc<crate::proxy::Proxy>>,
}

impl PodNetwork {
    /// A pod network with egress closed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The network of a pod of `namespace`: Services through `proxy`, and the outside
    /// network over HTTP(S) if `egress` is open.
    pub fn for_pod(
        namespace: &str,
        proxy: Option<Arc<crate::proxy::Proxy>>,
        egress: bool,
    ) -> Result<Arc<Self>, String> {
        let egress = if egress {
            let connector = crate::engine::fetch::https_connector(None)?;
            Some(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(connector),
            )
        } else {
            None
        };
        Ok(Arc::new(Self {
            servers: RwLock::default(),
            egress,
            namespace: namespace.to_string(),
            proxy,
        }))
    }

    pub fn register(&self, port: u16, server: Arc<HttpServer>) {
        self.servers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port, server);
    }

    /// Stops routing new requests to `port`.
    pub fn unregister(&self, port: u16) {
        self.servers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&port);
    }

    pub fn server(&self, port: u16) -> Option<Arc<HttpServer>> {
        self.servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&port)
            .cloned()
    }

    /// Serves `request` on `port` in-process.
    pub async fn serve(
        &self,
        port: u16,
        request: http::Request<WasiBody>,
    ) -> Result<Response, ServeError> {
        let server = self.server(port).ok_or(ServeError::NoServer(port))?;
        server.serve(request).await
    }
}

/// One HTTP container: its pre-linked component and what each instance gets.
pub struct HttpServer {
    engine: Arc<Engine>,
    pre: ProxyPre<P2Host>,
    launch: Launch,
    deadline: Duration,
    in_flight: AtomicUsize,
    idle: Notify,
    /// Instances that ended badly (trap, out of memory, deadline) are reported here.
    failures: mpsc::UnboundedSender<Exit>,
}

impl HttpServer {
    pub fn new(
        engine: Arc<Engine>,
        pre: ProxyPre<P2Host>,
        launch: Launch,
        deadline: Duration,
        failures: mpsc::UnboundedSender<Exit>,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            pre,
            launch,
            deadline,
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            failures,
        })
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Waits until no request is in flight.
    pub async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Serves one request with a fresh instance.
    pub async fn serve(
        self: &Arc<Self>,
        request: http::Request<WasiBody>,
    ) -> Result<Response, ServeError> {
        let _guard = InFlight::enter(self.clone());
        let mut store = Store::new(
            &self.engine.wasmtime,
            run::p2_host(&self.launch).map_err(|e| ServeError::Failed(format!("{e:#}")))?,
        );
        store.limiter(|host| &mut host.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let (sender, receiver) = oneshot::channel();
        let failed = |e: wasmtime::Error| ServeError::Failed(format!("{e:#}"));
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(failed)?;
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(failed)?;
        let pre = self.pre.clone();
        let deadline = self.deadline;
        let server = self.clone();
        // The guest keeps running after it sets the response, to stream the body; the task
        // owns the store and ends with the guest (or at the deadline).
        let guest = tokio::spawn(async move {
            let _guard = InFlight::enter(server.clone());
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            };
            let outcome = match tokio::time::timeout(deadline, run).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => run::classify(e),
                Err(_) => Exit::Killed {
                    reason: "DeadlineExceeded",
                    message: format!("the request handler ran longer than {deadline:?}"),
                    code: 137,
                },
            };
            let message = describe(&outcome);
            server
                .launch
                .log
                .write(format!("request failed: {message}\n").as_bytes());
            let _ = server.failures.send(outcome);
            Err(message)
        });
        match tokio::time::timeout(deadline, receiver).await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(code))) => Err(ServeError::Failed(format!(
                "the handler answered with error {code:?}"
            ))),
            // The guest dropped the response without setting it: it failed.
            Ok(Err(_)) => match guest.await {
                Ok(Err(message)) => Err(ServeError::Failed(message)),
                _ => Err(ServeError::Failed(
                    "the handler returned without a response".into(),
                )),
            },
            // The guest task ends itself at the same deadline and reports the failure; aborting
            // it here would lose that report.
            Err(_) => Err(ServeError::Timeout(deadline)),
        }
    }
}

fn describe(exit: &Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exited with code {code}"),
        Exit::Killed {
            reason, message, ..
        } => format!("{reason}: {message}"),
    }
}

/// Counts a request in flight for draining.
struct InFlight(Arc<HttpServer>);

impl InFlight {
    fn enter(server: Arc<HttpServer>) -> Self {
        server.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(server)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The guest's outgoing HTTP: the pod loopback, and nothing else yet.
pub struct PodHooks {
    pub network: Weak<PodNetwork>,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for PodHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        let network = self.network.clone();
        Box::new(async move {
            let host = request.uri().host().unwrap_or("").to_string();
            let port = request.uri().port_u16().unwrap_or(80);
            let network = network
                .upgrade()
                .ok_or(wasmtime_wasi_http::Error::ConnectionRefused)?;
            if !is_loopback(&host) {
                if let Some(proxy) = network.proxy.clone() {
                    if let Some(route) = proxy.resolve(&network.namespace, &host, port) {
                        let response = proxy.forward(route, request, None).await;
                        return Ok((
                            response,
                            Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                        ));
                    }
                }
                let Some(egress) = network.egress.clone() else {
                    return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
                };
                let response =
                    tokio::time::timeout(DEFAULT_REQUEST_DEADLINE, egress.request(request))
                        .await
                        .map_err(|_| wasmtime_wasi_http::Error::ConnectionTimeout)?
                        .map_err(|e| {
                            wasmtime_wasi_http::Error::InternalError(Some(format!(
                                "egress to {host}:{port}: {e}"
                            )))
                        })?;
                let response = response
                    .map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync());
                return Ok((
                    response,
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                ));
            }
            match network.serve(port, request).await {
                Ok(response) => Ok((
                    response,
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                )),
                Err(ServeError::NoServer(_)) => Err(wasmtime_wasi_http::Error::ConnectionRefused),
                Err(ServeError::Timeout(_)) => Err(wasmtime_wasi_http::Error::HttpResponseTimeout),
                Err(ServeError::Failed(message)) => {
                    Err(wasmtime_wasi_http::Error::InternalError(Some(message)))
                }
            }
        })
    }
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1")
}

/// Builds a request for the pod's loopback from any body (gateway, probes).
pub fn request<B>(request: http::Request<B>) -> http::Request<WasiBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    request.map(|body| {
        body.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
            .boxed_unsync()
    })
}
