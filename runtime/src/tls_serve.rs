//! Serving an axum router over TLS (the agent's gateway, the dev ingress's TLS port): the
//! accept loop, whose connections end with it, and each connection as HTTP/1.1 with
//! upgrades, the peer's address as axum's `ConnectInfo`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::ServiceExt;

pub(crate) async fn serve_connection<S>(stream: S, router: Router, peer: SocketAddr, what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!("{what} connection from {peer}: {e}");
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TLS connections on `listener` until dropped, serving each with the router
/// `route` picks for the finished handshake. Connections are this task's own: stopping it
/// (the agent or ingress stopping) ends them too, instead of a peer's keep-alive holding
/// the node's state alive.
pub(crate) async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    what: &'static str,
    route: impl Fn(&rustls::ServerConnection) -> Router + Send + Sync + Clone + 'static,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accepting a {what} connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let (acceptor, route) = (acceptor.clone(), route.clone());
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let router = route(stream.get_ref().1);
                    serve_connection(stream, router, peer, what).await
                }
                Ok(Err(e)) => tracing::debug!("{what} TLS handshake with {peer}: {e}"),
                Err(_) => {}
            }
        });
    }
}
