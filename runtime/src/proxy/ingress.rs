//! The dev ingress: one HTTP listener (`shoal dev --ingress-addr`) that routes by the
//! cluster's Ingress rules ([`super::rules`]) first, and otherwise serves every Service at
//! `http://<service>.<namespace>.localhost:<port>/`, choosing the Service by the Host header.
//! An unknown host gets 404, a Service without ready endpoints 503. `/metrics` on a host that
//! names no Service (`http://127.0.0.1:8080/metrics`) is what the proxy counted.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::Proxy;

/// The ingress's routes (what plain HTTP and the TLS port serve).
pub fn router(proxy: Arc<Proxy>) -> axum::Router {
    axum::Router::new().fallback(route).with_state(proxy)
}

/// Serves the ingress on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, proxy: Arc<Proxy>) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(proxy).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Writes `host` as the address of every Ingress that shows none (`kubectl get ingress`
/// ADDRESS), as an ingress controller does, until dropped.
pub async fn announce(proxy: Arc<Proxy>, host: std::net::IpAddr) {
    let mut changed = proxy.routes_changed.clone();
    loop {
        let unannounced = super::read(&proxy.table).ingresses_without_address();
        for key in unannounced {
            let Some((namespace, name)) = key.split_once('/') else {
                continue;
            };
            let ingresses = proxy
                .client
                .api::<k8s_openapi::api::networking::v1::Ingress>(Some(namespace));
            let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": host.to_string()}]}}});
            if let Err(e) = ingresses.patch_status(name, &patch).await {
                tracing::debug!("ingress {key}: recording its address: {e}");
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// `<service>.<namespace>` from a Host of the form `<service>.<namespace>.localhost[:port]`.
pub fn service_of_host(host: &str) -> Option<(&str, &str)> {
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let rest = host.strip_suffix(".localhost")?;
    let (service, namespace) = rest.split_once('.')?;
    (!service.is_empty() && !namespace.is_empty() && !namespace.contains('.'))
        .then_some((service, namespace))
}

async fn route(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bare_host = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
    if let Some(route) = proxy.resolve_ingress(bare_host, request.uri().path()) {
        return forward(&proxy, route, request, peer).await;
    }
    let Some((service, namespace)) = service_of_host(&host) else {
        if request.uri().path() == "/metrics" {
            return super::metrics::response(proxy.metrics(), &[]);
        }
        return (
            StatusCode::NOT_FOUND,
            format!("no service for host {host:?}: use http://<service>.<namespace>.localhost:<port>/\n"),
        )
            .into_response();
    };
    let Some(route) = proxy.resolve_service(namespace, service) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no service {namespace}/{service}\n"),
        )
            .into_response();
    };
    forward(&proxy, route, request, peer).await
}

/// Sends an outside request down the proxy's stack; its peer address is the client IP that
/// `sessionAffinity: ClientIP` sticks to.
pub(super) async fn forward(
    proxy: &Proxy,
    route: super::table::Route,
    request: axum::extract::Request,
    peer: SocketAddr,
) -> Response {
    let request = crate::pod::network::request(request);
    let client = peer.ip().to_string();
    proxy
        .forward(route, request, Some(&client))
        .await
        .map(Body::new)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::service_of_host;

    #[test]
    fn hosts_name_services() {
        assert_eq!(
            service_of_host("web.default.localhost:8080"),
            Some(("web", "default"))
        );
        assert_eq!(
            service_of_host("web.team-a.localhost"),
            Some(("web", "team-a"))
        );
        assert_eq!(service_of_host("localhost:8080"), None);
        assert_eq!(service_of_host("web.localhost"), None);
        assert_eq!(service_of_host("example.com"), None);
    }
}
