//! One client over several API servers (`shoal agent --server URL,URL…`): requests go to the
//! server that answered last, and move on to the next when it cannot be reached.
//!
//! Each server has its own kube client (TLS, credentials); this is the tower service under
//! the one [`super::Client`] the caller holds. A request is sent to another server only when
//! that cannot repeat it: a read (GET, HEAD) after any transport failure, any other request
//! only when it never reached the server (the connection was not made). An answer, even an
//! error status, is the server's answer and is returned as it is. Watches need nothing more:
//! when a server dies its watch streams break, and the watcher resumes from the last revision
//! it saw through the next request, which goes to a live server (on etcd every server shares
//! the revisions).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Method, Request, Response};
use kube::client::Body;

/// The servers and which one is in use.
#[derive(Clone)]
pub struct Failover {
    servers: Arc<[(String, kube::Client)]>,
    current: Arc<AtomicUsize>,
}

impl Failover {
    /// `servers` as (URL, client), in order of preference; at least one.
    pub fn new(servers: Vec<(String, kube::Client)>) -> Self {
        Self {
            servers: servers.into(),
            current: Arc::default(),
        }
    }
}

/// Whether a failed request certainly never reached the server: the connection was refused
/// or could not be made.
fn never_sent(error: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(client_error) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            if client_error.is_connect() {
                return true;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}

impl tower::Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Response<Body>, kube::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            // Kept, to send again: the API's request bodies are small objects and patches.
            let body = body.collect_bytes().await?;
            let replayable = matches!(parts.method, Method::GET | Method::HEAD);
            let count = this.servers.len();
            if count == 0 {
                return Err(kube::Error::Service("no API server to send to".into()));
            }
            let first = this.current.load(Ordering::Relaxed) % count;
            let mut attempt = 0;
            loop {
                let index = (first + attempt) % count;
                let (url, client) = &this.servers[index];
                let mut request = Request::builder()
                    .method(parts.method.clone())
                    .uri(parts.uri.clone())
                    .version(parts.version)
                    .body(Body::from(body.clone()))
                    .map_err(kube::Error::HttpError)?;
                *request.headers_mut() = parts.headers.clone();
                match client.send(request).await {
                    Ok(response) => {
                        if index != first
                            && this
                                .current
                                .compare_exchange(
                                    first,
                                    index,
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                )
                                .is_ok()
                        {
                            tracing::info!("API server {url} answers: using it from now on");
                        }
                        return Ok(response);
                    }
                    Err(e) if attempt + 1 < count && (replayable || never_sent(&e)) => {
                        tracing::warn!("API server {url}: {e}; trying the next");
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn client_for(url: &str) -> kube::Client {
        kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
    }

    /// A port nothing listens on: bound, then closed.
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn a_refused_server_is_skipped_and_the_one_that_answers_is_kept() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_url = format!("http://{}", live.local_addr().unwrap());
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = live.accept().await.unwrap();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async {
                            Ok::<_, std::convert::Infallible>(Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let dead_url = format!("http://127.0.0.1:{}", closed_port());
        let failover = Failover::new(vec![
            (dead_url.clone(), client_for(&dead_url)),
            (live_url.clone(), client_for(&live_url)),
        ]);
        let client = kube::Client::new(failover.clone(), "default");
        for method in [Method::POST, Method::GET] {
            let request = Request::builder()
                .method(method)
                .uri("/api/v1/namespaces/default/configmaps")
                .body(b"{}".to_vec())
                .unwrap();
            let response = client.send(request.map(Body::from)).await.unwrap();
            assert!(response.status().is_success());
        }
        assert_eq!(served.load(Ordering::SeqCst), 2);
        assert_eq!(
            failover.current.load(Ordering::SeqCst),
            1,
            "the live one is kept"
        );

        // Every server down: the error comes back, nothing hangs.
        let other_dead = format!("http://127.0.0.1:{}", closed_port());
        let none = kube::Client::new(
            Failover::new(vec![
                (dead_url.clone(), client_for(&dead_url)),
                (other_dead.clone(), client_for(&other_dead)),
            ]),
            "default",
        );
        let request = Request::builder()
            .uri("/version")
            .body(Body::empty())
            .unwrap();
        let error = none.send(request).await.unwrap_err();
        assert!(never_sent(&error), "{error}");
    }
}
