//! A pod's in-process network: the HTTP loopback (DESIGN.md §3.3).
//!
//! Each HTTP container registers an [`HttpServer`] for the ports it declares. A request to
//! the pod (from the agent's gateway, a probe, or another module of the same pod calling
//! `localhost:PORT`) is served by instantiating the container's pre-linked component in a
//! fresh store: no socket is opened inside the pod. [`PodHooks`] is the guest's view of the
//! network: `localhost`/`127.0.0.1` go to this pod's servers, a port nobody serves is refused,
//! Service names and ClusterIPs go to the node's proxy (`crate::proxy`), and every other
//! destination is refused unless the proxy lets the pod leave the cluster (its namespace is
//! annotated `shoal.dev/egress: allow` by an admin and NetworkPolicy allows it), in which
//! case the request goes out to the network.

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

use futures::future::BoxFuture;

use super::run::{self, Exit, Launch};
use crate::engine::admission::{Admission, Overloaded};
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
    /// No instance slot within the admission wait: not a failure of the container.
    #[error("the pod is overloaded: {0}")]
    Overloaded(#[from] Overloaded),
}

impl ServeError {
    /// The HTTP status a proxy answers with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::NoServer(_) | Self::Failed(_) => http::StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds a client should wait before trying again (`Retry-After`), if it should.
    pub fn retry_after(&self) -> Option<u64> {
        matches!(self, Self::Overloaded(_)).then_some(1)
    }
}

/// The client a pod with open egress sends its outside requests through.
pub type EgressClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    WasiBody,
>;

/// Where a pod's requests for Services go: the node's Service proxy implements it
/// (`crate::proxy`); the pod network does not know the proxy, the proxy knows pod networks.
pub trait ServiceRoutes: Send + Sync {
    /// Sends `request` to the Service `host:port` names as seen from `namespace` (a Service
    /// name or a ClusterIP) and returns its answer; gives the request back when `host:port`
    /// names no Service.
    /// `pod` (`namespace/name`) is the sender, as NetworkPolicy sees it.
    #[allow(clippy::result_large_err)] // the request goes on to the egress; boxing costs a copy
    fn forward_to_service(
        self: Arc<Self>,
        pod: &str,
        namespace: &str,
        host: &str,
        port: u16,
        request: http::Request<WasiBody>,
    ) -> Result<BoxFuture<'static, http::Response<WasiBody>>, http::Request<WasiBody>>;

    /// Whether pod `pod` of `namespace` may send a request outside the cluster (its
    /// namespace allows egress and NetworkPolicy does not forbid it), and if not, why.
    fn may_leave_cluster(&self, pod: &str, namespace: &str) -> Result<(), String>;
}

/// The names a pod reaches the API by: the `default/kubernetes` Service's.
const API_HOSTS: &[&str] = &[
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "10.96.0.1",
];

/// How pods reach the API server: a request for `https://kubernetes.default.svc` (or the
/// Service's other names and ClusterIP) goes to the API's address over TLS checked against
/// the cluster CA, carrying only the guest's own credentials (its ServiceAccount token),
/// never the agent's.
pub struct ApiRoute {
    client: EgressClient,
    base: http::Uri,
}

impl ApiRoute {
    pub fn new(url: &str, ca_pem: &str) -> Result<Self, crate::engine::TlsSetupError> {
        let connector = crate::engine::fetch::https_connector_trusting(ca_pem)?;
        let base = url.parse().map_err(|e: http::uri::InvalidUri| {
            crate::engine::TlsSetupError::CaFile {
                path: url.into(),
                why: e.to_string(),
            }
        })?;
        Ok(Self {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build(connector),
            base,
        })
    }

    fn serves(host: &str) -> bool {
        API_HOSTS.contains(&host)
    }

    async fn forward(
        &self,
        mut request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, wasmtime_wasi_http::Error> {
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query = path.parse().ok();
        *request.uri_mut() = http::Uri::from_parts(parts)
            .map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))?;
        request.headers_mut().remove(http::header::HOST);
        let response = tokio::time::timeout(DEFAULT_REQUEST_DEADLINE, self.client.request(request))
            .await
            .map_err(|_| wasmtime_wasi_http::Error::ConnectionTimeout)?
            .map_err(|e| {
                wasmtime_wasi_http::Error::InternalError(Some(format!("the API server: {e}")))
            })?;
        Ok(response.map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync()))
    }
}

/// The ports of one pod and who serves them, and the way out.
#[derive(Default)]
pub struct PodNetwork {
    servers: RwLock<HashMap<u16, Arc<HttpServer>>>,
    /// The way to the outside network, for when the proxy lets the pod leave the cluster.
    egress: Option<EgressClient>,
    /// The way to the API server, for pods that mount a ServiceAccount token.
    api: Option<Arc<ApiRoute>>,
    /// The pod (`namespace/name`), its namespace (what a bare Service name is resolved in)
    /// and the node's proxy.
    pod: String,
    namespace: String,
    proxy: Option<Arc<dyn ServiceRoutes>>,
}

impl PodNetwork {
    /// A pod network with egress closed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The network of pod `pod` (`namespace/name`): Services through `proxy`, the outside
    /// network through `egress` when the proxy lets the pod leave the cluster, the API
    /// through `api`.
    pub fn for_pod(
        pod: &str,
        proxy: Option<Arc<dyn ServiceRoutes>>,
        egress: Option<EgressClient>,
        api: Option<Arc<ApiRoute>>,
    ) -> Arc<Self> {
        let namespace = pod.split_once('/').map_or("", |(ns, _)| ns);
        Arc::new(Self {
            servers: RwLock::default(),
            egress,
            api,
            pod: pod.to_string(),
            namespace: namespace.to_string(),
            proxy,
        })
    }

    /// The guest's outgoing HTTP through this network, for a [`Launch`]. Holds the network
    /// weakly: a running instance does not keep a stopped pod's network alive.
    pub fn outgoing(self: &Arc<Self>) -> run::OutgoingHttp {
        let network = Arc::downgrade(self);
        Arc::new(move || {
            Box::new(PodHooks {
                network: network.clone(),
            })
        })
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

/// The bounds of one HTTP container.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// How long a request may run.
    pub request_deadline: Duration,
    /// Instances of this container alive at once.
    pub max_instances: usize,
    /// Requests that may wait for a slot.
    pub max_waiting: usize,
    /// How long a request may wait for a slot before it is refused.
    pub admission_wait: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            request_deadline: DEFAULT_REQUEST_DEADLINE,
            max_instances: 64,
            max_waiting: 256,
            admission_wait: Duration::from_secs(1),
        }
    }
}

/// One HTTP container: its pre-linked component and what each instance gets.
pub struct HttpServer {
    engine: Arc<Engine>,
    pre: ProxyPre<P2Host>,
    launch: Launch,
    deadline: Duration,
    /// This container's instance slots (the engine holds the node's).
    admission: Admission,
    /// How long a request may wait for a slot.
    admission_wait: Duration,
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
        limits: ServerLimits,
        failures: mpsc::UnboundedSender<Exit>,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine,
            pre,
            launch,
            deadline: limits.request_deadline,
            admission: Admission::new(limits.max_instances, limits.max_waiting),
            admission_wait: limits.admission_wait,
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
        // A slot of this container, then one of the node's pool: past either bound the
        // request waits a bounded time, then is refused (503), never instantiated.
        let admitted_by = tokio::time::Instant::now() + self.admission_wait;
        let container_slot = self.admission.admit_until(admitted_by).await?;
        let node_slot = self.engine.admission.admit_until(admitted_by).await?;
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
        let usage = self.launch.usage.clone();
        // The guest owns the store and ends with the guest (or at the deadline). It keeps
        // running after it sets the response, to stream the body.
        let guest = async move {
            let _guard = InFlight::enter(server.clone());
            // The instance holds its slots until it ends.
            let _slots = (container_slot, node_slot);
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            };
            let (outcome, failure) = match tokio::time::timeout(deadline, usage.metered(run)).await
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    let outcome = run::classify(e);
                    let failure = ServeError::Failed(describe(&outcome));
                    (outcome, failure)
                }
                Err(_) => (
                    Exit::Killed {
                        reason: "DeadlineExceeded",
                        message: format!("the request handler ran longer than {deadline:?}"),
                        code: 137,
                    },
                    // The caller's own wait ends at the same instant; whichever of the two
                    // is seen first, the caller answers 504.
                    ServeError::Timeout(deadline),
                ),
            };
            let message = describe(&outcome);
            if let super::run::Stdio::Log(log) = &server.launch.stdio {
                log.write(format!("request failed: {message}\n").as_bytes());
            }
            let _ = server.failures.send(outcome);
            Err(failure)
        };
        // The guest runs in the caller's task rather than a task of its own: most handlers
        // set their response, write a small body and return in one poll, and a hand-off to
        // another thread and back cost more than the whole instance (docs/performance.md).
        // Whatever is left of it when the caller stops waiting (a response streaming its
        // body, a caller gone, the deadline) runs on in a task of its own.
        let mut guest = Detachable::new(guest);
        let mut receiver = receiver;
        let waited = tokio::time::timeout(deadline, async {
            tokio::select! {
                biased;
                response = &mut receiver => response.map_err(|_| NoResponse::Dropped),
                ended = &mut guest => match ended {
                    // The handler returned: its response, if it set one, is there already.
                    Ok(()) => receiver.try_recv().map_err(|_| NoResponse::Dropped),
                    Err(failure) => Err(NoResponse::Failed(failure)),
                },
            }
        })
        .await;
        match waited {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(code))) => Err(ServeError::Failed(format!(
                "the handler answered with error {code:?}"
            ))),
            Ok(Err(NoResponse::Failed(failure))) => Err(failure),
            // The guest dropped the response without setting it: it failed.
            Ok(Err(NoResponse::Dropped)) => Err(match guest.finish().await {
                Some(Err(failure)) => failure,
                _ => ServeError::Failed("the handler returned without a response".into()),
            }),
            // The guest ends itself at the same deadline and reports the failure; dropping
            // it here would lose that report, so it runs on.
            Err(_) => Err(ServeError::Timeout(deadline)),
        }
    }
}

/// Why no response came from the guest.
enum NoResponse {
    /// The guest ended with this failure.
    Failed(ServeError),
    /// The guest dropped its response outparam without setting it.
    Dropped,
}

type GuestFuture = futures::future::BoxFuture<'static, Result<(), ServeError>>;

/// A guest driven by its caller until the caller stops polling it: dropped unfinished, it is
/// spawned to run to its end, so a request's instance never dies with the caller's wait.
struct Detachable(Option<GuestFuture>);

impl Detachable {
    fn new(guest: impl Future<Output = Result<(), ServeError>> + Send + 'static) -> Self {
        Self(Some(Box::pin(guest)))
    }

    /// Runs the guest to its end; `None` when it already ended.
    async fn finish(&mut self) -> Option<Result<(), ServeError>> {
        let guest = self.0.as_mut()?;
        let ended = guest.await;
        self.0 = None;
        Some(ended)
    }
}

impl Future for Detachable {
    type Output = Result<(), ServeError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(guest) = self.0.as_mut() else {
            return std::task::Poll::Pending;
        };
        let ended = std::task::ready!(guest.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(ended)
    }
}

impl Drop for Detachable {
    fn drop(&mut self) {
        if let Some(guest) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(guest);
                }
                // No runtime to finish it on (the node is shutting down): it ends here.
                Err(_) => tracing::debug!("a request's guest ended with its runtime"),
            }
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
            let mut request = request;
            let host = request.uri().host().unwrap_or("").to_string();
            let port = request.uri().port_u16().unwrap_or(80);
            let network = network
                .upgrade()
                .ok_or(wasmtime_wasi_http::Error::ConnectionRefused)?;
            if !is_loopback(&host) {
                if let Some(api) = network.api.clone().filter(|_| ApiRoute::serves(&host)) {
                    let response = api.forward(request).await?;
                    return Ok((
                        response,
                        Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                    ));
                }
                if let Some(proxy) = network.proxy.clone() {
                    match proxy.forward_to_service(
                        &network.pod,
                        &network.namespace,
                        &host,
                        port,
                        request,
                    ) {
                        Ok(answer) => {
                            return Ok((
                                answer.await,
                                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                            ));
                        }
                        Err(not_a_service) => request = not_a_service,
                    }
                }
                let Some(egress) = network.egress.clone() else {
                    return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
                };
                let allowed = network
                    .proxy
                    .as_ref()
                    .map(|proxy| proxy.may_leave_cluster(&network.pod, &network.namespace));
                if let Some(Err(why)) = allowed {
                    tracing::debug!("egress to {host}:{port} refused: {why}");
                    return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
                }
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
                // An overloaded sibling answers as a proxy would: 503, try again later.
                Err(e @ ServeError::Overloaded(_)) => {
                    let body = http_body_util::Full::new(Bytes::from(format!("{e}\n")))
                        .map_err(|never| match never {})
                        .boxed_unsync();
                    let mut response = http::Response::new(body);
                    *response.status_mut() = e.status();
                    if let Some(seconds) = e.retry_after() {
                        response
                            .headers_mut()
                            .insert(http::header::RETRY_AFTER, seconds.into());
                    }
                    Ok((
                        response,
                        Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineOptions, Program};
    use http_body_util::Empty;

    /// Past its instance bound a container queues a few requests for a bounded time and
    /// refuses the rest with 503 and `Retry-After`; none of that is a container failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_container_queues_briefly_then_refuses_without_failing() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(&EngineOptions {
            cache_dir: dir.path().to_path_buf(),
            max_instances: 16,
        })
        .unwrap();
        let program = engine.load(shoal_examples::WEB_P2).await.unwrap();
        let Program::Http(pre) = &*program else {
            panic!("web is an HTTP component")
        };
        let pod_network = PodNetwork::new();
        let launch = Launch {
            argv: vec!["web".into()],
            env: vec![],
            mounts: vec![],
            stdio: super::super::run::Stdio::Log(super::super::log::ContainerLog::new(1 << 16)),
            memory_limit: 64 << 20,
            outgoing: pod_network.outgoing(),
            usage: crate::engine::meter::Usage::new(),
        };
        let (failures, mut failed) = mpsc::unbounded_channel();
        let limits = ServerLimits {
            max_instances: 2,
            max_waiting: 2,
            admission_wait: Duration::from_millis(300),
            ..ServerLimits::default()
        };
        let server = HttpServer::new(engine, pre.clone(), launch, limits, failures);
        let calls = (0..8).map(|_| {
            let server = server.clone();
            tokio::spawn(async move {
                let request = http::Request::get("http://localhost:8080/sleep/800")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                match server.serve(request_of(request)).await {
                    Ok(response) => Ok(response.status().as_u16()),
                    Err(e) => Err((e.status().as_u16(), e.retry_after(), e.to_string())),
                }
            })
        });
        let outcomes: Vec<_> = futures::future::join_all(calls)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let served = outcomes.iter().filter(|o| **o == Ok(200)).count();
        let refused: Vec<_> = outcomes.iter().filter_map(|o| o.clone().err()).collect();
        assert_eq!(served, 2, "{outcomes:?}");
        assert_eq!(refused.len(), 6, "{outcomes:?}");
        assert!(refused
            .iter()
            .all(|(status, retry, _)| *status == 503 && *retry == Some(1)));
        let timed_out = refused
            .iter()
            .filter(|(_, _, m)| m.contains("within the admission wait"))
            .count();
        assert_eq!(
            timed_out, 2,
            "two waited their turn, then gave up: {refused:?}"
        );
        assert!(
            failed.try_recv().is_err(),
            "a full container is not a failed one"
        );
        // Once the slots free, the container serves again.
        let request = http::Request::get("http://localhost:8080/healthz")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(
            server.serve(request_of(request)).await.unwrap().status(),
            200
        );
    }

    fn request_of(request: http::Request<Empty<Bytes>>) -> http::Request<WasiBody> {
        super::request(request)
    }
}
