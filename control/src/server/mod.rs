//! The Kubernetes-compatible REST server (axum).
//!
//! Admission is one fixed chain for every resource (DESIGN.md §3.4): decode -> defaults ->
//! validation -> store. Status is written only through `/status`, spec only through the main
//! resource. Routing of resource URLs is by [`path::parse`], so one handler serves every
//! resource; kind-specific rules live in `api` and in the few modules here named for a kind.

mod apply;
mod certificates;
mod connect;
pub mod custom;
mod custom_metrics;
mod dashboard;
mod discovery;
pub mod error;
mod escalation;
mod guard;
mod list;
mod metrics_api;
mod modules;
mod namespaces;
mod node_cidrs;
pub mod nodes;
mod objects;
mod openapi;
mod path;
mod pods;
mod priority;
mod protobuf;
mod query;
mod quota;
mod request;
mod resource;
mod reviews;
mod routes;
mod scale;
mod schemas;
mod serviceaccounts;
mod services;
mod wake;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::{CancellationToken, DropGuard};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::header::CONTENT_TYPE;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::auth::authn::Authenticator;
use crate::auth::rbac::PolicyCache;
use crate::auth::tokens::ServiceAccountTokens;
use crate::auth::UserInfo;
use crate::store::Store;
pub use error::ApiError;

/// The HTTPS client the server reaches node agents' gateways with (logs, the pod proxy),
/// presenting its kubelet client certificate (mTLS).
pub type AgentClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

/// Shared state of the API server.
pub struct ApiServer {
    store: Arc<dyn Store>,
    agents: AgentClient,
    options: ServerOptions,
    /// Who a request is (x509, tokens, anonymous).
    authenticator: Authenticator,
    /// RBAC roles and bindings, kept from the store.
    policy: Arc<PolicyCache>,
    /// The custom kinds served, kept from the CRDs in the store.
    custom: Arc<custom::CustomResources>,
    /// Creates waiting to be charged to their namespace's quotas.
    quota_queues: quota::QuotaQueues,
    security: SecurityOptions,
    /// Serialises Service creations, which allocate cluster IPs and node ports.
    service_allocation: tokio::sync::Mutex<()>,
    /// Held while a new Node takes a pod CIDR and is stored.
    node_cidr_allocation: tokio::sync::Mutex<node_cidrs::Allocator>,
    /// Cancelled when the server stops ([`ApiServer::stop`]) or is dropped: open watches end
    /// (so a graceful HTTP shutdown completes) and background work stops.
    stopping: CancellationToken,
    _stop_on_drop: DropGuard,
}

/// Cluster-wide settings of the API server.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// The prefix length of each node's pod CIDR: /24 (254 pods per node, nodes in
    /// 10.244.0.0/16 as Kubernetes' default and on up to 10.255.255.0/24: 3,072 nodes) or
    /// shorter for dense nodes (/16: nodes in 10.0.0.0/8, 65534 pods each, 256 nodes).
    pub node_cidr_mask: u8,
}

/// How the API server authenticates.
#[derive(Clone, Debug)]
pub struct SecurityOptions {
    /// Whether requests without credentials may reach the public paths (`/healthz`,
    /// `/livez`, `/readyz`, `/version`); elsewhere they always get 401.
    pub anonymous_auth: bool,
    /// The ServiceAccount token signing key (PKCS#8 PEM) and its public key (PEM); a fresh
    /// pair when `None` (tokens then die with the server).
    pub service_account_keys: Option<(String, String)>,
    /// How the server calls agents' gateways; `None`: it presents no certificate and trusts
    /// none, so it reaches no gateway.
    pub kubelet_client: Option<KubeletClient>,
}

/// The server's side of the gateways' mTLS.
#[derive(Clone, Debug)]
pub struct KubeletClient {
    /// The client certificate and key (PEM) the server presents (`system:masters`, as
    /// kube-apiserver's `--kubelet-client-certificate`).
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA (PEM) gateways' serving certificates must come from (kube-apiserver's
    /// `--kubelet-certificate-authority`): the cluster CA.
    pub ca_pem: String,
}

impl Default for SecurityOptions {
    fn default() -> Self {
        Self {
            anonymous_auth: true,
            service_account_keys: None,
            kubelet_client: None,
        }
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self { node_cidr_mask: 24 }
    }
}

impl ApiServer {
    /// Builds the server over `store`, making sure the namespaces every cluster has exist.
    pub async fn new(store: Arc<dyn Store>) -> anyhow::Result<Arc<Self>> {
        Self::with_options(store, ServerOptions::default()).await
    }

    pub async fn with_options(
        store: Arc<dyn Store>,
        options: ServerOptions,
    ) -> anyhow::Result<Arc<Self>> {
        Self::with_security(store, options, SecurityOptions::default()).await
    }

    pub async fn with_security(
        store: Arc<dyn Store>,
        options: ServerOptions,
        security: SecurityOptions,
    ) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(
            (8..=30).contains(&options.node_cidr_mask),
            "the node CIDR mask must be between /8 and /30"
        );
        let (identity, roots): (Arc<dyn rustls::client::ResolvesClientCert>, _) =
            match &security.kubelet_client {
                Some(kubelet) => (
                    Arc::new(shoal_api::tls::ClientIdentity::from_pem(
                        &kubelet.cert_pem,
                        &kubelet.key_pem,
                    )?),
                    shoal_api::tls::root_store(&kubelet.ca_pem)?,
                ),
                None => (
                    Arc::new(NoClientCertificate),
                    rustls::RootCertStore::empty(),
                ),
            };
        let agents = shoal_api::tls::gateway_http_client(identity, roots)?;
        let stopping = CancellationToken::new();
        let (private, public) = match &security.service_account_keys {
            Some(keys) => keys.clone(),
            None => {
                let key = rcgen::KeyPair::generate()?;
                (key.serialize_pem(), key.public_key_pem())
            }
        };
        let authenticator =
            Authenticator::new(ServiceAccountTokens::new(&private, &public)?, store.clone());
        let server = Arc::new(Self {
            authenticator,
            policy: Arc::default(),
            custom: Arc::default(),
            quota_queues: quota::QuotaQueues::default(),
            security,
            store,
            agents,
            options,
            service_allocation: tokio::sync::Mutex::new(()),
            node_cidr_allocation: Default::default(),
            _stop_on_drop: stopping.clone().drop_guard(),
            stopping,
        });
        namespaces::ensure_system_namespaces(&server).await?;
        reviews::ensure_bootstrap_policy(&server).await?;
        priority::ensure_system_classes(&server).await?;
        spawn_event_expiry(&server);
        spawn_policy_sync(&server);
        spawn_custom_resource_sync(&server);
        Ok(server)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Ends every open watch and the server's background work; requests still answer.
    pub fn stop(&self) {
        self.stopping.cancel();
    }

    /// The axum router serving the whole API.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/version", get(|| async { Json(discovery::version()) }))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(|| async { "ok" }))
            .route("/livez", get(|| async { "ok" }))
            .route(
                "/api",
                get(|headers: HeaderMap| async move { discovery::root(&[], &headers, true) }),
            )
            .route(
                "/apis",
                get(
                    |State(server): State<Arc<ApiServer>>, headers: HeaderMap| async move {
                        discovery::root(&server.custom.rows(), &headers, false)
                    },
                ),
            )
            .route(
                "/api/{version}",
                get(
                    |State(server): State<Arc<ApiServer>>, Path(version): Path<String>| async move {
                        resource_list(&server.custom, "", &version)
                    },
                ),
            )
            .route(
                "/apis/{group}/{version}",
                get(
                    |State(server): State<Arc<ApiServer>>,
                     Path((group, version)): Path<(String, String)>| async move {
                        resource_list(&server.custom, &group, &version)
                    },
                ),
            )
            .route(
                "/apis/metrics.k8s.io/v1beta1",
                get(metrics_api::resource_list),
            )
            .route(
                "/apis/metrics.k8s.io/v1beta1/nodes",
                get(metrics_api::nodes),
            )
            .route(
                "/apis/metrics.k8s.io/v1beta1/nodes/{name}",
                get(metrics_api::node),
            )
            .route(
                "/apis/metrics.k8s.io/v1beta1/pods",
                get(metrics_api::all_pods),
            )
            .route(
                "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
                get(metrics_api::namespace_pods),
            )
            .route(
                "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}",
                get(metrics_api::pod),
            )
            .route(
                "/apis/custom.metrics.k8s.io/v1beta1",
                get(custom_metrics::resource_list),
            )
            .route(
                "/apis/custom.metrics.k8s.io/v1beta1/namespaces/{namespace}/{resource}/{name}/{metric}",
                get(custom_metrics::namespaced),
            )
            .route(
                "/shoal/v1/wake/{namespace}/{service}",
                axum::routing::post(wake::wake),
            )
            .route(
                "/shoal/v1/dashboard/token",
                axum::routing::post(dashboard::session),
            )
            .route("/openapi/v2", get(|| async { openapi::v2() }))
            .route(
                "/shoal/v1/modules",
                axum::routing::post(modules::push).layer(axum::extract::DefaultBodyLimit::max(
                    modules::MAX_MODULE_BYTES,
                )),
            )
            .route("/shoal/v1/modules/{reference}", get(modules::fetch))
            .route(
                "/openapi/v3",
                get(|State(server): State<Arc<ApiServer>>| async move {
                    Json(openapi::root(&server.custom.rows()))
                }),
            )
            .route(
                "/openapi/v3/{*path}",
                get(
                    |State(server): State<Arc<ApiServer>>, Path(path): Path<String>| async move {
                        openapi::group_version(&server.custom.rows(), &path)
                            .ok_or(ApiError::NoRoute)
                    },
                ),
            )
            .fallback(axum::handler::Handler::layer(
                handle_resource,
                axum::middleware::from_fn(protobuf::negotiate),
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                guard::guard,
            ))
            // After the guard: the dashboard's page and script need no credentials.
            .merge(dashboard::assets())
            .with_state(self.clone())
    }
}

/// How long Events are kept (Kubernetes' default `--event-ttl`).
const EVENT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes Events older than [`EVENT_TTL`] every minute, so a long-lived cluster's event log
/// stays bounded. Holds only a weak reference, and ends when the server stops or is dropped.
fn spawn_event_expiry(server: &Arc<ApiServer>) {
    let stopping = server.stopping.clone();
    let server = Arc::downgrade(server);
    tokio::spawn(stopping.run_until_cancelled_owned(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            let Some(server) = server.upgrade() else {
                return;
            };
            let Ok(listing) = server.store.list("events", None) else {
                continue;
            };
            let cutoff =
                chrono::Utc::now() - chrono::Duration::from_std(EVENT_TTL).expect("an hour fits");
            for event in listing.objects {
                let stamp = crate::api::object::str_at(&event, "/metadata/creationTimestamp");
                let old = chrono::DateTime::parse_from_rfc3339(stamp).is_ok_and(|t| t < cutoff);
                if old {
                    let key = crate::store::ObjectKey::new(
                        "events",
                        crate::api::object::namespace(&event),
                        crate::api::object::name(&event),
                    );
                    let _ = server.store.delete(key, None).await;
                }
            }
        }
    }));
}

/// Keeps the RBAC policy cache current from the store until the server stops. Holds the
/// store and the cache, not the server.
fn spawn_policy_sync(server: &Arc<ApiServer>) {
    let (store, policy) = (server.store.clone(), server.policy.clone());
    tokio::spawn(
        server
            .stopping
            .clone()
            .run_until_cancelled_owned(async move {
                policy.sync(store.as_ref()).await;
            }),
    );
}

/// Keeps the served custom kinds current from the CRDs in the store until the server stops.
fn spawn_custom_resource_sync(server: &Arc<ApiServer>) {
    let (store, custom) = (server.store.clone(), server.custom.clone());
    tokio::spawn(
        server
            .stopping
            .clone()
            .run_until_cancelled_owned(async move {
                custom.sync(store.as_ref()).await;
            }),
    );
}

fn resource_list(
    custom: &custom::CustomResources,
    group: &str,
    version: &str,
) -> Result<Json<serde_json::Value>, ApiError> {
    discovery::resource_list(custom, group, version)
        .map(Json)
        .ok_or(ApiError::NoRoute)
}

async fn handle_resource(
    State(server): State<Arc<ApiServer>>,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    // The guard always sets the user; a route added without it runs as no one.
    let Some(user) = parts.extensions.get::<Arc<UserInfo>>().cloned() else {
        return ApiError::Unauthorized.into_response();
    };
    // A connection the client asks to upgrade (exec, port-forward) is taken before the
    // body is read; the handler of such a subresource passes it on.
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let (method, uri, headers) = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    let body = match <Bytes as axum::extract::FromRequest<()>>::from_request(
        axum::extract::Request::from_parts(parts, body),
        &(),
    )
    .await
    {
        Ok(body) => body,
        Err(rejection) => return rejection.into_response(),
    };
    let request = request::Request::new(&method, &uri, &headers, body, user, &server.custom)
        .map(|request| request.with_upgrade(upgrade));
    match request {
        Ok(request) => server
            .serve(request)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(e) => e.into_response(),
    }
}

/// A JSON response with `code`.
pub(crate) fn json_response(code: http::StatusCode, body: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("a JSON value always serializes");
    (code, [(CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Presents no client certificate (a server without a kubelet client certificate).
#[derive(Debug)]
struct NoClientCertificate;

impl rustls::client::ResolvesClientCert for NoClientCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}
