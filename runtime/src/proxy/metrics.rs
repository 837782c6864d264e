//! The proxy's metrics, per Service: requests by status code, errors, and the latency to the
//! response head, kept by the metrics layer of the stack ([`super::stack`]) and served as
//! Prometheus (OpenMetrics) text at `/metrics` by each node's gateway and the dev ingress.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    /// `namespace/name` of the Service.
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    service: String,
    code: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<ResponseLabels, Counter>,
    errors: Family<ServiceLabels, Counter>,
    latency: Family<ServiceLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shoal_proxy");
        let requests = Family::<ResponseLabels, Counter>::default();
        let errors = Family::<ServiceLabels, Counter>::default();
        // 100 us to about 3.3 s in doublings: the proxy's own cost sits at the low end,
        // guests that do real work at the high end.
        let latency = Family::<ServiceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register(
            "requests",
            "Requests proxied to a Service, by response status code",
            requests.clone(),
        );
        registry.register(
            "errors",
            "Requests to a Service answered with a 5xx status (by the backend or the proxy)",
            errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head",
            latency.clone(),
        );
        Self {
            registry,
            requests,
            errors,
            latency,
        }
    }
}

impl Metrics {
    /// Counts one request to `service` answered with `status` after `elapsed`.
    pub fn record(&self, service: &str, status: http::StatusCode, elapsed: Duration) {
        let labels = ServiceLabels {
            service: service.to_string(),
        };
        self.requests
            .get_or_create(&ResponseLabels {
                service: service.to_string(),
                code: status.as_u16().to_string(),
            })
            .inc();
        if status.is_server_error() {
            self.errors.get_or_create(&labels).inc();
        }
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Everything recorded, in the OpenMetrics text format Prometheus scrapes, followed by
    /// the metrics of `others` (the node's resource usage).
    pub fn render(&self, others: &[&Registry]) -> String {
        use prometheus_client::encoding::text;
        let mut out = String::new();
        // Writing to a String cannot fail.
        for registry in std::iter::once(&self.registry).chain(others.iter().copied()) {
            let _ = text::encode_registry(&mut out, registry);
        }
        let _ = text::encode_eof(&mut out);
        out
    }
}

/// `/metrics` as an HTTP answer.
pub fn response(metrics: &Metrics, others: &[&Registry]) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
        metrics.render(others),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_errors_and_latency_are_counted_per_service() {
        let metrics = Metrics::default();
        let ms = Duration::from_millis;
        metrics.record("default/web", http::StatusCode::OK, ms(2));
        metrics.record("default/web", http::StatusCode::OK, ms(3));
        metrics.record("default/web", http::StatusCode::SERVICE_UNAVAILABLE, ms(0));
        metrics.record("team/api", http::StatusCode::NOT_FOUND, ms(1));
        let text = metrics.render(&[]);
        for line in [
            r#"shoal_proxy_requests_total{service="default/web",code="200"} 2"#,
            r#"shoal_proxy_requests_total{service="default/web",code="503"} 1"#,
            r#"shoal_proxy_requests_total{service="team/api",code="404"} 1"#,
            r#"shoal_proxy_errors_total{service="default/web"} 1"#,
            r#"shoal_proxy_request_duration_seconds_count{service="default/web"} 3"#,
            r#"shoal_proxy_request_duration_seconds_bucket{le="0.0032",service="default/web"} 3"#,
            r#"shoal_proxy_request_duration_seconds_bucket{le="0.0016",service="default/web"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(
            !text.contains(r#"shoal_proxy_errors_total{service="team/api"}"#),
            "a 404 is not an error of the proxy or the backend:\n{text}"
        );
    }
}
