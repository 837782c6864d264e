//! Serving an axum router on one accepted TLS connection (the agent's gateway, the dev
//! ingress's TLS port): HTTP/1.1 with upgrades, the peer's address as axum's `ConnectInfo`.

use std::net::SocketAddr;

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
