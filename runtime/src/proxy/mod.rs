//! The built-in proxy (DESIGN.md §3.3): routes requests for Services to their ready endpoints.
//! Pods reach it through their outgoing wasi-http (`PodHooks`), the outside through the dev
//! ingress ([`ingress`]). A request is balanced over the Service's ready backends
//! ([`balance`]), then served in-process when the backend pod runs on this node, or sent to
//! the gateway of the node that runs it. A backend that refuses before any byte of the request
//! was sent (its pod left this node, its node's gateway is down) is retried once on another.
//!
//! The way down is a tower stack ([`stack`]: metrics, error answers, load shedding, a
//! concurrency limit, the deadline, the retry), with [`Dispatch`] at the bottom; what the
//! stack counts is served as `/metrics` ([`metrics`]). [`Dispatch`] also enforces
//! NetworkPolicy on the backend it picked ([`policy`]), and pods' calls outside the cluster
//! ask it first.

pub mod activator;
pub mod balance;
pub mod ingress;
pub mod ingress_tls;
pub mod metrics;
pub mod node_ports;
pub mod policy;
pub mod rates;
pub mod rules;
pub mod stack;
pub mod table;

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use shoal_api::client::Client;
use shoal_api::task::Tasks;
use tower::ServiceExt;
use wasmtime_wasi_http::WasiBody;

use futures::future::BoxFuture;

use crate::pod::network::{PodNetwork, ServeError, ServiceRoutes};
use table::{Backend, Route, Table};

/// A pod on this node, as a backend names it.
pub enum LocalPod<'a> {
    /// `namespace/name`.
    Named(&'a str),
    /// The pod's IP.
    Ip(&'a str),
}

/// Finds the network of a pod running on this node.
pub type LocalPods = Arc<dyn Fn(LocalPod<'_>) -> Option<Arc<PodNetwork>> + Send + Sync>;

/// Other nodes' gateways are reached over mTLS, as this node.
type GatewayClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    WasiBody,
>;

pub struct Proxy {
    table: Arc<RwLock<Table>>,
    /// NetworkPolicies, namespaces and pods, as [`policy`] needs them.
    policies: Arc<RwLock<policy::Policies>>,
    policy_follower: tokio::task::JoinHandle<()>,
    stack: stack::ProxyService,
    metrics: Arc<metrics::Metrics>,
    rates: Arc<rates::RequestRates>,
    /// Samples `rates` once a second.
    sampler: tokio::task::JoinHandle<()>,
    follower: tokio::task::JoinHandle<()>,
    /// Ticks when a Service or an Ingress changes (node-port listeners and the ingress follow).
    routes_changed: tokio::sync::watch::Receiver<u64>,
    client: Client,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.follower.abort();
        self.policy_follower.abort();
        self.sampler.abort();
    }
}

/// A plain-text response (the proxy's own answers: 404, 502, 503, 504).
pub fn text_response(status: http::StatusCode, text: String) -> http::Response<WasiBody> {
    let mut response = http::Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Where the proxy's cluster-wide watches come from: the client's shared watches, or its own.
#[derive(Clone)]
pub(crate) struct Watches {
    client: Client,
    shared: bool,
}

impl Watches {
    fn of<K: shoal_api::client::ApiObject>(
        &self,
    ) -> tokio::sync::mpsc::Receiver<shoal_api::client::WatcherEvent<K>> {
        if self.shared {
            self.client.shared_watch::<K>()
        } else {
            shoal_api::client::watcher::<K>(&self.client, Default::default())
        }
    }
}

fn read(table: &RwLock<Table>) -> std::sync::RwLockReadGuard<'_, Table> {
    table.read().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    /// Starts following the cluster's Services, Endpoints and Nodes (in `tasks`: the follower
    /// stops when they shut down or the proxy is dropped). `gateway_tls` holds the certificate
    /// it presents to other nodes' gateways, and the cluster CA that must have signed theirs.
    pub fn start_with(
        client: Client,
        node_name: &str,
        local: LocalPods,
        gateway_tls: &shoal_api::tls::GatewayTls,
        options: stack::Options,
        share_watches: bool,
        tasks: &Tasks,
    ) -> Result<Arc<Self>, shoal_api::tls::TlsError> {
        let table = Arc::new(RwLock::new(Table::default()));
        let (changed, routes_changed) = tokio::sync::watch::channel(0);
        let watches = Watches {
            client: client.clone(),
            shared: share_watches,
        };
        let (endpoints_changed, endpoints_seen) = tokio::sync::watch::channel(0);
        let follower = tasks.spawn(table::follow(
            watches.clone(),
            table.clone(),
            changed,
            endpoints_changed,
        ));
        let policies = Arc::new(RwLock::new(policy::Policies::default()));
        let policy_follower = tasks.spawn(policy::follow(watches, policies.clone()));
        let rates = Arc::new(rates::RequestRates::new(options.rate_window));
        let dispatch = Dispatch(Arc::new(DispatchState {
            activator: activator::Activator::new(client.clone(), options.hold, endpoints_seen),
            rates: rates.clone(),
            node_name: node_name.to_string(),
            table: table.clone(),
            balancer: balance::Balancer::default(),
            local,
            gateways: shoal_api::tls::gateway_http_client(
                gateway_tls.identity.clone(),
                shoal_api::tls::root_store(&gateway_tls.client_ca_pem)?,
            )?,
            policies: policies.clone(),
        }));
        let metrics = Arc::new(metrics::Metrics::default());
        let sampler = tasks.spawn(rates.clone().run_sampler());
        Ok(Arc::new(Self {
            rates: rates.clone(),
            sampler,
            table,
            policies,
            policy_follower,
            stack: stack::build(dispatch, metrics.clone(), rates.clone(), options),
            metrics,
            follower,
            routes_changed,
            client,
        }))
    }

    /// The requests per second and in flight this proxy routes, per Service and pod.
    pub fn rates(&self) -> &Arc<rates::RequestRates> {
        &self.rates
    }

    /// What this proxy has counted, as Prometheus scrapes it (`/metrics`).
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// The route for `host:port` asked by a pod of `namespace`, if the host names a Service,
    /// a pod behind one, or a pod IP.
    pub fn resolve(&self, namespace: &str, host: &str, port: u16) -> Option<Route> {
        read(&self.table).resolve_host(namespace, host, port)
    }

    /// The route an Ingress rule gives `host` (without port) and `path`.
    pub fn resolve_ingress(&self, host: &str, path: &str) -> Option<Route> {
        read(&self.table).ingress_route(host, path)
    }

    /// The route for Service `key` (`namespace/name`) on service port `port`.
    pub fn resolve_port(&self, key: &str, port: u16) -> Option<Route> {
        read(&self.table).route(key, Some(port))
    }

    /// The route for Service `namespace/name` on its main port (the dev ingress).
    pub fn resolve_service(&self, namespace: &str, name: &str) -> Option<Route> {
        read(&self.table).route(&format!("{namespace}/{name}"), None)
    }

    /// Sends `request` down the stack to one of the route's ready backends and returns its
    /// answer, or the proxy's own: 503 when no endpoint is ready or the proxy is overloaded,
    /// 502 when the chosen ones failed, 504 past the deadline.
    pub async fn forward(
        &self,
        route: Route,
        request: http::Request<WasiBody>,
        client_ip: Option<&str>,
    ) -> http::Response<WasiBody> {
        self.send(route, request, client_ip, None).await
    }

    async fn send(
        &self,
        route: Route,
        request: http::Request<WasiBody>,
        client_ip: Option<&str>,
        source_pod: Option<String>,
    ) -> http::Response<WasiBody> {
        let request = stack::ProxyRequest {
            route,
            request,
            client_ip: client_ip.map(str::to_string),
            source_pod,
            refused_by: None,
        };
        match self.stack.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// The bottom of the stack: balances over the route's ready backends and serves on one,
/// in-process when its pod runs on this node, else through the gateway of the node that
/// runs it.
#[derive(Clone)]
struct Dispatch(Arc<DispatchState>);

struct DispatchState {
    /// Holds requests for a Service with no ready endpoint while its workload wakes.
    activator: activator::Activator,
    /// Counts each backend pod's requests.
    rates: Arc<rates::RequestRates>,
    node_name: String,
    table: Arc<RwLock<Table>>,
    balancer: balance::Balancer,
    local: LocalPods,
    gateways: GatewayClient,
    policies: Arc<RwLock<policy::Policies>>,
}

impl tower::Service<stack::ProxyRequest> for Dispatch {
    type Response = http::Response<WasiBody>;
    type Error = stack::Refused;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: stack::ProxyRequest) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let pick = |request: &stack::ProxyRequest| {
                let route = &request.route;
                let affinity = request
                    .client_ip
                    .as_deref()
                    .filter(|_| route.client_ip_affinity);
                state.balancer.pick(
                    &route.service,
                    &route.backends,
                    request.refused_by.as_ref(),
                    affinity,
                )
            };
            let mut picked = pick(&request);
            if picked.is_none() && request.refused_by.is_none() {
                // No endpoint ready: held while the workload wakes from zero, if it can.
                match state.activator.hold(&request.route, &state.table).await {
                    Ok(route) => {
                        request.route = route;
                        picked = pick(&request);
                    }
                    Err(answer) => return Ok(answer),
                }
            }
            let route = &request.route;
            let Some((backend, in_flight)) = picked else {
                let text = match &request.refused_by {
                    Some(refused) => format!(
                        "service {}: endpoint {} refused the connection and no other is ready\n",
                        route.service, refused.pod
                    ),
                    None => format!(
                        "service {} has no ready endpoints for port {}\n",
                        route.service, route.port
                    ),
                };
                return Ok(text_response(http::StatusCode::SERVICE_UNAVAILABLE, text));
            };
            let service = route.service.clone();
            if let Err(why) = state.policy_allows(&request, &backend) {
                return Ok(text_response(
                    http::StatusCode::FORBIDDEN,
                    format!("service {service}: {why}\n"),
                ));
            }
            let counting = (state.rates).pod(&format!("{}/{}", backend.namespace, backend.pod));
            match state.try_backend(&backend, request.request).await {
                Ok(response) => {
                    counting.answered(response.status());
                    Ok(with_guard(response, in_flight))
                }
                Err((Some(unsent), why)) => {
                    request.request = unsent;
                    request.refused_by = Some(backend);
                    Err(stack::Refused { request, why })
                }
                Err((None, why)) => Ok(text_response(
                    http::StatusCode::BAD_GATEWAY,
                    format!(
                        "service {service}: endpoint {} failed: {why}\n",
                        backend.pod
                    ),
                )),
            }
        })
    }
}

impl DispatchState {
    /// Whether NetworkPolicy lets the request's source reach `backend`.
    fn policy_allows(
        &self,
        request: &stack::ProxyRequest,
        backend: &Backend,
    ) -> Result<(), String> {
        let policies = self.policies.read().unwrap_or_else(|p| p.into_inner());
        if policies.is_empty() {
            return Ok(());
        }
        let source = match &request.source_pod {
            Some(pod) => policy::Peer::Pod(pod),
            None => policy::Peer::Outside(request.client_ip.as_deref()),
        };
        let key;
        let destination = if backend.pod.is_empty() {
            policy::Peer::PodIp(&backend.ip)
        } else {
            key = format!("{}/{}", backend.namespace, backend.pod);
            policy::Peer::Pod(&key)
        };
        policies.check(source, destination, backend.port)
    }

    /// Serves on one backend. On failure, the request comes back when nothing of it was sent
    /// (so it may be retried elsewhere).
    async fn try_backend(
        &self,
        backend: &Backend,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<WasiBody>, (Option<http::Request<WasiBody>>, String)> {
        if backend.node == self.node_name {
            let key = format!("{}/{}", backend.namespace, backend.pod);
            let pod = match backend.pod.is_empty() {
                true => LocalPod::Ip(&backend.ip),
                false => LocalPod::Named(&key),
            };
            let Some(network) = (self.local)(pod).filter(|n| n.server(backend.port).is_some())
            else {
                let key = if backend.pod.is_empty() {
                    &backend.ip
                } else {
                    &key
                };
                return Err((
                    Some(request),
                    format!("pod {key} serves no port {} here", backend.port),
                ));
            };
            // The server may go between the check above and the call (the pod stopping).
            let replay = bodiless_copy(&request);
            return match network.serve(backend.port, request).await {
                Ok(response) => Ok(response),
                Err(ServeError::NoServer(port)) => {
                    Err((replay, format!("no server on port {port}")))
                }
                Err(e) => {
                    let mut response = text_response(e.status(), format!("{e}\n"));
                    if let Some(seconds) = e.retry_after() {
                        response
                            .headers_mut()
                            .insert(http::header::RETRY_AFTER, seconds.into());
                    }
                    Ok(response)
                }
            };
        }
        let Some(gateway) = read(&self.table).gateway(&backend.node) else {
            return Err((
                Some(request),
                format!("node {} has no gateway", backend.node),
            ));
        };
        let replay = bodiless_copy(&request);
        let (mut parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = match backend.pod.is_empty() {
            true => format!(
                "https://{gateway}/proxy-ip/{}/{}{path}",
                backend.ip, backend.port
            ),
            false => format!(
                "https://{gateway}/proxy/{}/{}/{}{path}",
                backend.namespace, backend.pod, backend.port
            ),
        };
        parts.uri = match uri.parse() {
            Ok(uri) => uri,
            Err(e) => return Err((None, format!("bad path {path:?}: {e}"))),
        };
        match self
            .gateways
            .request(http::Request::from_parts(parts, body))
            .await
        {
            // The pod left that node, or stopped serving, before our table heard of it.
            Ok(response)
                if response.headers().contains_key(NOT_SERVED_HEADER) && replay.is_some() =>
            {
                Err((
                    replay,
                    format!(
                        "pod {} no longer serves port {} on {}",
                        backend.pod, backend.port, backend.node
                    ),
                ))
            }
            Ok(response) => Ok(response.map(|b| {
                b.map_err(|e| wasmtime_wasi_http::Error::InternalError(Some(e.to_string())))
                    .boxed_unsync()
            })),
            Err(e) if e.is_connect() => {
                self.balancer.eject_node(&backend.node);
                Err((replay, format!("gateway {gateway}: {e}")))
            }
            // The connection broke with no answer (its node died mid-request): the guest may
            // have seen the request, so only an idempotent one is sent again elsewhere.
            Err(e) => {
                self.balancer.eject_node(&backend.node);
                Err((
                    replay.filter(|r| r.method().is_idempotent()),
                    format!("gateway {gateway}: {e}"),
                ))
            }
        }
    }
}

/// Marks a gateway's answer for a pod that is not there or serves nothing on the port: the
/// request reached no guest, so the proxy may send it to another endpoint.
pub const NOT_SERVED_HEADER: &str = "x-shoal-not-served";

/// A copy of a request without a body (GET, HEAD, DELETE, most probes and calls), to send
/// again when its first backend turned out not to serve it; `None` for a request with a body,
/// which cannot be sent twice.
fn bodiless_copy(request: &http::Request<WasiBody>) -> Option<http::Request<WasiBody>> {
    use hyper::body::Body as _;
    if request.body().size_hint().exact() != Some(0) {
        return None;
    }
    let mut copy = http::Request::new(
        http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// Keeps the backend's in-flight count until the response body is done.
fn with_guard(
    response: http::Response<WasiBody>,
    in_flight: balance::InFlight,
) -> http::Response<WasiBody> {
    response.map(|body| {
        let guarded = GuardedBody {
            body,
            _in_flight: in_flight,
        };
        guarded.boxed_unsync()
    })
}

struct GuardedBody {
    body: WasiBody,
    _in_flight: balance::InFlight,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Pods' requests for Services come here (their networks know only the trait).
impl ServiceRoutes for Proxy {
    fn forward_to_service(
        self: Arc<Self>,
        pod: &str,
        namespace: &str,
        host: &str,
        port: u16,
        request: http::Request<WasiBody>,
    ) -> Result<BoxFuture<'static, http::Response<WasiBody>>, http::Request<WasiBody>> {
        match self.resolve(namespace, host, port) {
            Some(route) => {
                let pod = pod.to_string();
                Ok(Box::pin(async move {
                    self.send(route, request, None, Some(pod)).await
                }))
            }
            None => Err(request),
        }
    }

    fn may_leave_cluster(&self, pod: &str, namespace: &str) -> Result<(), String> {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .check_outside(namespace, pod)
    }
}
