//! Request metrics: what each node's proxy reports of the requests it routed (`GET
//! /stats/requests` on its agent's gateway: requests per second and in flight, per Service and
//! per backend pod), and how the API server serves their sums over all nodes as the custom
//! metrics API, `custom.metrics.k8s.io/v1beta1` (what prometheus-adapter adds to a Kubernetes
//! cluster), for the HorizontalPodAutoscaler's Pods and Object metrics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The group and version of the custom metrics API.
pub const GROUP: &str = "custom.metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// Requests answered per second, averaged over the window.
pub const REQUESTS_PER_SECOND: &str = "requests_per_second";
/// Requests received and not yet answered (their response head not yet sent), now.
pub const REQUESTS_IN_FLIGHT: &str = "requests_in_flight";
/// Requests answered per second with a 5xx status (the proxy's own 502 and 503 included),
/// averaged over the window.
pub const ERRORS_PER_SECOND: &str = "errors_per_second";
/// Every metric served, for each of pods and services.
pub const METRICS: &[&str] = &[REQUESTS_PER_SECOND, REQUESTS_IN_FLIGHT, ERRORS_PER_SECOND];

/// One node's proxy's report.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestReport {
    /// When the figures were taken (RFC 3339).
    pub timestamp: String,
    /// The seconds the rates average over.
    pub window_seconds: f64,
    pub services: Vec<RequestRate>,
    pub pods: Vec<RequestRate>,
}

/// The requests of one Service or pod, as one proxy saw them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestRate {
    pub namespace: String,
    pub name: String,
    pub per_second: f64,
    /// Of `per_second`, the answers with a 5xx status (absent from older agents' reports).
    #[serde(default)]
    pub errors_per_second: f64,
    pub in_flight: u64,
}

/// The figures of every node added up, per `(namespace, name)`.
#[derive(Debug, Default)]
pub struct Totals {
    pub services: BTreeMap<(String, String), RequestRate>,
    pub pods: BTreeMap<(String, String), RequestRate>,
    pub timestamp: String,
    pub window_seconds: f64,
}

impl Totals {
    /// Sums `reports` (a pod or Service reached through several nodes' proxies has each
    /// one's share).
    pub fn of(reports: &[RequestReport]) -> Self {
        let mut totals = Totals::default();
        for report in reports {
            for (rates, into) in [
                (&report.services, &mut totals.services),
                (&report.pods, &mut totals.pods),
            ] {
                for rate in rates {
                    let entry = into
                        .entry((rate.namespace.clone(), rate.name.clone()))
                        .or_insert_with(|| RequestRate {
                            namespace: rate.namespace.clone(),
                            name: rate.name.clone(),
                            ..Default::default()
                        });
                    entry.per_second += rate.per_second;
                    entry.errors_per_second += rate.errors_per_second;
                    entry.in_flight = entry.in_flight.saturating_add(rate.in_flight);
                }
            }
            totals.timestamp = totals.timestamp.max(report.timestamp.clone());
            totals.window_seconds = totals.window_seconds.max(report.window_seconds);
        }
        if totals.timestamp.is_empty() {
            totals.timestamp = super::object::now_rfc3339();
        }
        totals
    }

    /// The value of `metric` for a Service (`services`) or pod (`pods`), 0 when no proxy has
    /// seen a request for it within the window.
    pub fn value(&self, resource: &str, namespace: &str, name: &str, metric: &str) -> f64 {
        let map = if resource == "services" {
            &self.services
        } else {
            &self.pods
        };
        let Some(rate) = map.get(&(namespace.to_string(), name.to_string())) else {
            return 0.0;
        };
        match metric {
            REQUESTS_IN_FLIGHT => rate.in_flight as f64,
            ERRORS_PER_SECOND => rate.errors_per_second,
            _ => rate.per_second,
        }
    }
}

/// A value as a quantity in thousandths (`1500m`, `3`), as the custom metrics API writes one.
fn quantity(value: f64) -> String {
    let millis = (value * 1000.0).round();
    let millis = if millis.is_finite() {
        millis.clamp(0.0, i64::MAX as f64) as i64
    } else {
        0
    };
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// One `MetricValue`: `metric` of the object `kind` `namespace/name`.
pub fn metric_value(
    kind: &str,
    namespace: &str,
    name: &str,
    metric: &str,
    value: f64,
    totals: &Totals,
) -> Value {
    json!({
        "describedObject": {"kind": kind, "namespace": namespace, "name": name, "apiVersion": "/v1"},
        "metric": {"name": metric, "selector": null},
        "timestamp": totals.timestamp,
        "windowSeconds": totals.window_seconds.round() as u64,
        "value": quantity(value),
    })
}

/// A `MetricValueList`.
pub fn value_list(items: Vec<Value>) -> Value {
    json!({
        "kind": "MetricValueList",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    })
}

/// Discovery of `custom.metrics.k8s.io/v1beta1`: each metric of pods and services.
pub fn resource_list() -> Value {
    let resources: Vec<Value> = ["pods", "services"]
        .iter()
        .flat_map(|resource| {
            METRICS.iter().map(move |metric| {
                json!({"name": format!("{resource}/{metric}"), "singularName": "", "namespaced": true,
                       "kind": "MetricValueList", "verbs": ["get"]})
            })
        })
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(name: &str, per_second: f64, in_flight: u64) -> RequestRate {
        RequestRate {
            namespace: "default".into(),
            name: name.into(),
            per_second,
            // A tenth of the answers were errors.
            errors_per_second: per_second / 10.0,
            in_flight,
        }
    }

    #[test]
    fn nodes_reports_add_up() {
        let a = RequestReport {
            timestamp: "2026-12-06T12:00:00Z".into(),
            window_seconds: 10.0,
            services: vec![rate("web", 10.5, 2)],
            pods: vec![rate("web-1", 10.5, 2)],
        };
        let b = RequestReport {
            timestamp: "2026-12-06T12:00:01Z".into(),
            window_seconds: 10.0,
            services: vec![rate("web", 4.0, 1)],
            pods: vec![rate("web-2", 4.0, 1)],
        };
        let totals = Totals::of(&[a, b]);
        assert_eq!(
            totals.value("services", "default", "web", REQUESTS_PER_SECOND),
            14.5
        );
        assert_eq!(
            totals.value("services", "default", "web", REQUESTS_IN_FLIGHT),
            3.0
        );
        assert_eq!(
            totals.value("pods", "default", "web-2", REQUESTS_PER_SECOND),
            4.0
        );
        assert_eq!(
            totals.value("services", "default", "web", ERRORS_PER_SECOND),
            1.05 + 0.4
        );
        // A report from an agent that does not count errors yet still reads.
        let old: RequestRate = serde_json::from_value(
            json!({"namespace": "default", "name": "web", "per_second": 1.0, "in_flight": 0}),
        )
        .unwrap();
        assert_eq!(old.errors_per_second, 0.0);
        assert_eq!(
            totals.value("pods", "default", "idle", REQUESTS_PER_SECOND),
            0.0
        );
        assert_eq!(totals.timestamp, "2026-12-06T12:00:01Z");
        let value = metric_value(
            "Service",
            "default",
            "web",
            REQUESTS_PER_SECOND,
            14.5,
            &totals,
        );
        assert_eq!(value["value"], "14500m");
        assert_eq!(value["windowSeconds"], 10);
        assert_eq!(quantity(3.0), "3");
        assert_eq!(quantity(f64::NAN), "0");
        assert_eq!(resource_list()["resources"].as_array().unwrap().len(), 6);
    }
}
