//! NodePort and LoadBalancer listeners: every node port of a NodePort or LoadBalancer
//! Service is bound on the host address, and a LoadBalancer's own port too (the host is its
//! load balancer, as k3s' service load balancer does it). The listener's Service is looked up
//! per request, so a Service that changes ports moves without dropping other listeners.
//!
//! `shoal agent` runs this on its node address; `shoal dev`, whose nodes share one host,
//! runs it once on the ingress host. A port that cannot be bound (taken, privileged) is
//! logged and tried again at the next change of the Services.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::Proxy;

/// Listener port -> (`namespace/name` of the Service, service port).
type Bindings = Arc<RwLock<HashMap<u16, (String, u16)>>>;

/// Follows the Services and keeps their node ports bound on `host` until dropped.
pub async fn serve(proxy: Arc<Proxy>, host: IpAddr) {
    let bindings: Bindings = Arc::default();
    let mut listeners: HashMap<u16, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut changed = proxy.routes_changed.clone();
    let mut announced: HashSet<String> = HashSet::new();
    loop {
        let mut wanted: HashMap<u16, (String, u16)> = HashMap::new();
        let mut load_balancers = Vec::new();
        let mut ports = super::read(&proxy.table).node_ports();
        ports.sort();
        for (key, port, node_port, load_balancer) in ports {
            wanted.entry(node_port).or_insert((key.clone(), port));
            if load_balancer {
                wanted.entry(port).or_insert((key.clone(), port));
                load_balancers.push(key);
            }
        }
        *bindings.write().unwrap_or_else(|p| p.into_inner()) = wanted.clone();
        listeners.retain(|port, task| {
            let keep = wanted.contains_key(port) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, (key, _)) in &wanted {
            if listeners.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::new(host, *port);
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!("service {key}: listening on {addr}");
                    listeners.insert(
                        *port,
                        tokio::spawn(listen(listener, proxy.clone(), bindings.clone())),
                    );
                }
                Err(e) => tracing::warn!("service {key}: cannot listen on {addr}: {e}"),
            }
        }
        load_balancers.dedup();
        announced.retain(|key| load_balancers.contains(key));
        for key in load_balancers {
            if announced.insert(key.clone()) {
                announce(&proxy, &key, host).await;
            }
        }
        if changed.changed().await.is_err() {
            break;
        }
    }
    for task in listeners.values() {
        task.abort();
    }
}

/// Writes `host` as the LoadBalancer Service's ingress address (`kubectl get svc` shows it as
/// EXTERNAL-IP), unless it already has one.
async fn announce(proxy: &Proxy, key: &str, host: IpAddr) {
    let Some((namespace, name)) = key.split_once('/') else {
        return;
    };
    let services = proxy.client.api::<Service>(Some(namespace));
    let Ok(Some(service)) = services.get_opt(name).await else {
        return;
    };
    let has_address = service
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .is_some_and(|i| !i.is_empty());
    if !has_address {
        let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": host.to_string()}]}}});
        if let Err(e) = services.patch_status(name, &patch).await {
            tracing::warn!("service {key}: recording its load balancer address: {e}");
        }
    }
}

async fn listen(listener: tokio::net::TcpListener, proxy: Arc<Proxy>, bindings: Bindings) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let app = axum::Router::new()
        .fallback(route)
        .with_state((proxy, bindings, port));
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await;
    if let Err(e) = served {
        tracing::warn!("node port {port}: {e}");
    }
}

async fn route(
    State((proxy, bindings, port)): State<(Arc<Proxy>, Bindings, u16)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let binding = bindings
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&port)
        .cloned();
    let route = binding.and_then(|(key, service_port)| proxy.resolve_port(&key, service_port));
    let Some(route) = route else {
        return (
            http::StatusCode::NOT_FOUND,
            format!("no service listens on port {port} any more\n"),
        )
            .into_response();
    };
    super::ingress::forward(&proxy, route, request, peer).await
}
