//! What a node's agent reports of the resources its pods use (`GET /stats/resource` on its
//! gateway), and how the API server turns it into the `metrics.k8s.io/v1beta1` objects
//! `kubectl top` reads. CPU is a rate (nanocores, averaged over `window_seconds`), memory
//! the bytes held now, as metrics-server reports them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The group and version of the resource metrics API.
pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";

/// One node's report.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeUsage {
    /// When the figures were taken (RFC 3339).
    pub timestamp: String,
    /// The node's totals: the sum over its pods.
    pub usage: Figures,
    pub pods: Vec<PodUsage>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The seconds the CPU rates average over.
    pub window_seconds: f64,
    pub containers: Vec<ContainerUsage>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerUsage {
    pub name: String,
    #[serde(flatten)]
    pub usage: Figures,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// CPU in billionths of a core, averaged over the window.
    pub cpu_nanocores: u64,
    /// Bytes held now.
    pub memory_bytes: u64,
    /// The seconds the CPU rate averages over.
    #[serde(default)]
    pub window_seconds: f64,
}

/// The usage map of a metrics object: CPU in nanocores, memory in KiB, as metrics-server
/// writes them.
fn usage_map(figures: &Figures) -> Value {
    json!({
        "cpu": format!("{}n", figures.cpu_nanocores),
        "memory": format!("{}Ki", figures.memory_bytes / 1024),
    })
}

/// `1.5s`, the form of metav1.Duration.
fn window(seconds: f64) -> String {
    let millis = (seconds * 1000.0).round().max(0.0) as u64;
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{}ms", millis)
    }
}

/// A `PodMetrics` object for `pod` (with the labels of the pod object).
pub fn pod_metrics(pod: &PodUsage, labels: Option<&Value>, timestamp: &str) -> Value {
    let containers: Vec<Value> = (pod.containers.iter())
        .map(|c| json!({"name": c.name, "usage": usage_map(&c.usage)}))
        .collect();
    let mut metadata = json!({
        "name": pod.name,
        "namespace": pod.namespace,
        "creationTimestamp": timestamp,
    });
    if let Some(labels) = labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
        metadata["labels"] = labels.clone();
    }
    json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata,
        "timestamp": timestamp,
        "window": window(pod.window_seconds),
        "containers": containers,
    })
}

/// A `NodeMetrics` object for the node `name`.
pub fn node_metrics(name: &str, node: &NodeUsage, labels: Option<&Value>) -> Value {
    let mut metadata = json!({"name": name, "creationTimestamp": node.timestamp});
    if let Some(labels) = labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
        metadata["labels"] = labels.clone();
    }
    json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": metadata,
        "timestamp": node.timestamp,
        "window": window(node.usage.window_seconds),
        "usage": usage_map(&node.usage),
    })
}

/// A list of metrics objects (`PodMetricsList`, `NodeMetricsList`).
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    })
}

/// Discovery of `metrics.k8s.io/v1beta1`.
pub fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_written_as_metrics_server_writes_them() {
        let pod = PodUsage {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u".into(),
            window_seconds: 10.0,
            containers: vec![ContainerUsage {
                name: "web".into(),
                usage: Figures {
                    cpu_nanocores: 2_500_000,
                    memory_bytes: 3 << 20,
                    window_seconds: 10.0,
                },
            }],
        };
        let object = pod_metrics(&pod, Some(&json!({"app": "web"})), "2026-12-06T00:00:00Z");
        assert_eq!(object["containers"][0]["usage"]["cpu"], "2500000n");
        assert_eq!(object["containers"][0]["usage"]["memory"], "3072Ki");
        assert_eq!(object["window"], "10s");
        assert_eq!(object["metadata"]["labels"]["app"], "web");
        let parsed: k8s_openapi::apimachinery::pkg::api::resource::Quantity =
            serde_json::from_value(object["containers"][0]["usage"]["cpu"].clone()).unwrap();
        assert_eq!(crate::api::quantity::parse_millis(&parsed.0), Some(3));
        assert_eq!(window(1.5), "1500ms");
    }
}
