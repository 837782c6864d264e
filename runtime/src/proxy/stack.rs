//! The proxy's tower stack: what happens to a request for a Service between its arrival (from
//! a pod, the dev ingress or a node port) and the backend chosen to serve it, one layer per
//! concern, outermost first:
//!
//! 1. metrics: counts every request and its answer per Service, the proxy's own errors too,
//!    and each Service's requests per second and in flight ([`super::rates`]);
//! 2. error answers: turns what the layers below fail with into a response a client can read
//!    (503 overloaded, 504 timed out), so that the stack as a whole never fails;
//! 3. load shedding over a concurrency limit: past `max_in_flight` requests a new one is
//!    refused at once rather than queued without bound;
//! 4. timeout: the per-request deadline, until the response head;
//! 5. retry: a backend that refused before any byte was sent gets the request once more,
//!    on another endpoint, and so does an idempotent bodiless request whose connection broke
//!    before an answer (its node died under it);
//! 6. the dispatch service at the bottom ([`super::Dispatch`]) balances over the ready
//!    endpoints and serves on one.
//!
//! The dispatch service is the only one that knows about pods and nodes; these layers know
//! only requests, answers and time.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use wasmtime_wasi_http::WasiBody;

use super::metrics::Metrics;
use super::rates::RequestRates;
use super::table::{Backend, Route};
use super::text_response;

/// A request for a Service, as it travels down the stack.
pub struct ProxyRequest {
    pub route: Route,
    pub request: http::Request<WasiBody>,
    /// The caller's address, for `sessionAffinity: ClientIP`.
    pub client_ip: Option<String>,
    /// The pod that sent it (`namespace/name`), when a pod did: what NetworkPolicy checks.
    pub source_pod: Option<String>,
    /// A backend that already refused this request: not to be chosen again.
    pub refused_by: Option<Backend>,
}

/// The dispatch service's only failure: a backend refused before anything of the request was
/// sent, so it can be retried elsewhere. Every other failure is an answer (502, 503).
pub struct Refused {
    pub request: ProxyRequest,
    pub why: String,
}

pub type Response = http::Response<WasiBody>;

/// The whole stack: cheap to clone, shareable between threads, never fails.
pub type ProxyService = BoxCloneSyncService<ProxyRequest, Response, Infallible>;

/// Settings of the stack.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How long a request may wait for its response head (Kubernetes has none by default;
    /// 30 s matches the agent's per-request deadline for HTTP guests).
    pub request_timeout: Duration,
    /// Requests in flight through one proxy before new ones get a 503.
    pub max_in_flight: usize,
    /// The window request rates average over.
    pub rate_window: Duration,
    /// How requests for a Service at zero are held while it wakes.
    pub hold: super::activator::HoldOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_in_flight: 4096,
            rate_window: Duration::from_secs(10),
            hold: Default::default(),
        }
    }
}

/// Builds the stack over `dispatch`.
pub fn build<D>(
    dispatch: D,
    metrics: Arc<Metrics>,
    rates: Arc<RequestRates>,
    options: Options,
) -> ProxyService
where
    D: Service<ProxyRequest, Response = Response, Error = Refused> + Clone + Send + Sync + 'static,
    D::Future: Send + 'static,
{
    let stack = ServiceBuilder::new()
        // Counts every request and its answer per Service, so /metrics shows what clients saw.
        .layer_fn(|inner| Record {
            inner,
            metrics: metrics.clone(),
            rates: rates.clone(),
        })
        // Gives every failure below a readable answer: the stack itself never fails.
        .layer_fn(|inner| AnswerErrors {
            inner,
            timeout: options.request_timeout,
        })
        // Refuses new requests at once when the limit below is reached, instead of queueing.
        .load_shed()
        // Bounds the requests in flight, so a flood cannot exhaust the node.
        .concurrency_limit(options.max_in_flight)
        // The per-request deadline, over both tries.
        .timeout(options.request_timeout)
        // One more try on another endpoint for a request that no backend has seen yet.
        .layer(RetryRefusedLayer)
        .service(dispatch);
    BoxCloneSyncService::new(stack)
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The metrics layer.
#[derive(Clone)]
struct Record<S> {
    inner: S,
    metrics: Arc<Metrics>,
    rates: Arc<RequestRates>,
}

impl<S> Service<ProxyRequest> for Record<S>
where
    S: Service<ProxyRequest, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ProxyRequest) -> Self::Future {
        let (service, started) = (request.route.service.clone(), Instant::now());
        let metrics = self.metrics.clone();
        let counting = self.rates.service(&service);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            counting.answered(response.status());
            metrics.record(&service, response.status(), started.elapsed());
            Ok(response)
        })
    }
}

/// The layer that turns failures into answers.
#[derive(Clone)]
struct AnswerErrors<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Service<ProxyRequest> for AnswerErrors<S>
where
    S: Service<ProxyRequest, Response = Response, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is decided per request below (load shedding answers at once).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ProxyRequest) -> Self::Future {
        let (service, timeout) = (request.route.service.clone(), self.timeout);
        let inner = self.inner.clone();
        Box::pin(async move {
            Ok(match inner.oneshot(request).await {
                Ok(response) => response,
                Err(e) if e.is::<tower::timeout::error::Elapsed>() => text_response(
                    http::StatusCode::GATEWAY_TIMEOUT,
                    format!("service {service} did not answer within {timeout:?}\n"),
                ),
                Err(e) if e.is::<tower::load_shed::error::Overloaded>() => text_response(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    format!("the proxy is overloaded: too many requests in flight, {service} not tried\n"),
                ),
                Err(e) => text_response(
                    http::StatusCode::BAD_GATEWAY,
                    format!("service {service}: {e}\n"),
                ),
            })
        })
    }
}

/// The retry layer: a refused request goes down once more, avoiding the backend that refused.
#[derive(Clone, Copy)]
struct RetryRefusedLayer;

impl<S> Layer<S> for RetryRefusedLayer {
    type Service = RetryRefused<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryRefused { inner }
    }
}

#[derive(Clone)]
struct RetryRefused<S> {
    inner: S,
}

impl<S> Service<ProxyRequest> for RetryRefused<S>
where
    S: Service<ProxyRequest, Response = Response, Error = Refused> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner
            .poll_ready(cx)
            .map(|ready| ready.map_err(|_| unreachable!("dispatch is always ready")))
    }

    fn call(&mut self, request: ProxyRequest) -> Self::Future {
        let first = self.inner.call(request);
        let inner = self.inner.clone();
        Box::pin(async move {
            let Refused { request, why } = match first.await {
                Ok(response) => return Ok(response),
                Err(refused) => refused,
            };
            let (service, backend) = (
                request.route.service.clone(),
                request.refused_by.as_ref().map(|b| b.pod.clone()),
            );
            let backend = backend.unwrap_or_default();
            tracing::debug!("{service}: {backend} refused: {why}; retrying");
            Ok(match inner.oneshot(request).await {
                Ok(response) => response,
                Err(again) => text_response(
                    http::StatusCode::BAD_GATEWAY,
                    format!(
                        "service {service}: endpoints {backend} and then {} refused: {why}; {}\n",
                        again.request.refused_by.map(|b| b.pod).unwrap_or_default(),
                        again.why
                    ),
                ),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};

    fn request(service: &str) -> ProxyRequest {
        ProxyRequest {
            source_pod: None,
            route: Route {
                service: service.to_string(),
                port: 80,
                backends: vec![],
                client_ip_affinity: false,
            },
            request: http::Request::new(
                Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
            client_ip: None,
            refused_by: None,
        }
    }

    fn backend(pod: &str) -> Backend {
        Backend {
            namespace: "default".into(),
            pod: pod.into(),
            ip: "10.0.0.1".into(),
            node: "n".into(),
            port: 8080,
        }
    }

    async fn body(response: Response) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A dispatch that answers by the service's name: `slow` sleeps, `refuses` refuses every
    /// try (naming the pod by the try), anything else refuses once and then answers.
    #[derive(Clone, Default)]
    struct Fake {
        tries: Arc<AtomicUsize>,
    }

    impl Service<ProxyRequest> for Fake {
        type Response = Response;
        type Error = Refused;
        type Future = BoxFuture<Result<Response, Refused>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Refused>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, mut request: ProxyRequest) -> Self::Future {
            let attempt = self.tries.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match request.route.service.as_str() {
                    "default/slow" => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(text_response(http::StatusCode::OK, "late".into()))
                    }
                    "default/refuses" => {
                        request.refused_by = Some(backend(&format!("pod-{attempt}")));
                        Err(Refused {
                            request,
                            why: "connection refused".into(),
                        })
                    }
                    _ if request.refused_by.is_none() => {
                        request.refused_by = Some(backend("first"));
                        Err(Refused {
                            request,
                            why: "gone".into(),
                        })
                    }
                    _ => Ok(text_response(http::StatusCode::OK, "second try".into())),
                }
            })
        }
    }

    fn stack(options: Options) -> (ProxyService, Arc<Metrics>, Fake) {
        let (metrics, fake) = (Arc::new(Metrics::default()), Fake::default());
        let rates = Arc::new(RequestRates::new(Duration::from_secs(10)));
        (
            build(fake.clone(), metrics.clone(), rates, options),
            metrics,
            fake,
        )
    }

    #[tokio::test]
    async fn a_refused_request_is_retried_once_on_another_endpoint() {
        let (stack, metrics, fake) = stack(Options::default());
        let response = stack.clone().oneshot(request("default/web")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(body(response).await, "second try");
        assert_eq!(fake.tries.swap(0, Ordering::SeqCst), 2);

        let response = stack.oneshot(request("default/refuses")).await.unwrap();
        assert_eq!(response.status(), 502);
        let text = body(response).await;
        assert!(text.contains("pod-0 and then pod-1 refused"), "{text}");
        assert_eq!(fake.tries.load(Ordering::SeqCst), 2, "only one retry");
        let text = metrics.render(&[]);
        assert!(
            text.contains(r#"shoal_proxy_requests_total{service="default/refuses",code="502"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"shoal_proxy_errors_total{service="default/refuses"} 1"#),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_deadline_gets_a_504_naming_the_service() {
        let (stack, metrics, _) = stack(Options {
            request_timeout: Duration::from_secs(2),
            ..Options::default()
        });
        let response = stack.oneshot(request("default/slow")).await.unwrap();
        assert_eq!(response.status(), 504);
        assert_eq!(
            body(response).await,
            "service default/slow did not answer within 2s\n"
        );
        assert!(metrics
            .render(&[])
            .contains(r#"shoal_proxy_requests_total{service="default/slow",code="504"} 1"#));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_past_the_in_flight_limit_get_a_503_at_once() {
        let (stack, _, _) = stack(Options {
            max_in_flight: 2,
            ..Options::default()
        });
        let held: Vec<_> = (0..2)
            .map(|_| tokio::spawn(stack.clone().oneshot(request("default/slow"))))
            .collect();
        tokio::task::yield_now().await;
        let started = tokio::time::Instant::now();
        let response = stack.clone().oneshot(request("default/web")).await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(body(response).await.contains("overloaded"));
        assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");
        for h in held {
            h.abort();
        }
    }
}
