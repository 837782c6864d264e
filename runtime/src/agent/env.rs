//! A container's environment and memory limit, from its spec. `env` values and the downward
//! API (`fieldRef`) are served; ConfigMap and Secret references come with those resources.

use k8s_openapi::api::core::v1::{Container, Pod};

pub fn container_env(
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, None) => String::new(),
            (None, Some(source)) => match &source.field_ref {
                Some(field) => field_value(pod, &field.field_path, pod_ip).ok_or_else(|| {
                    format!(
                        "env {:?}: fieldRef {:?} is not supported",
                        var.name, field.field_path
                    )
                })?,
                None => {
                    return Err(format!(
                        "env {:?}: only value and fieldRef sources are supported by this agent yet",
                        var.name
                    ))
                }
            },
        };
        env.push((var.name.clone(), value));
    }
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err("envFrom is not supported by this agent yet".into());
    }
    Ok(env)
}

fn field_value(pod: &Pod, path: &str, pod_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone().unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()?
            .service_account_name
            .clone()
            .unwrap_or_default(),
        "status.podIP" => pod_ip.to_string(),
        _ => return None,
    })
}

/// `resources.limits.memory` in bytes, if set.
pub fn memory_limit(container: &Container) -> Result<Option<usize>, String> {
    let Some(quantity) = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
    else {
        return Ok(None);
    };
    parse_bytes(&quantity.0).map(Some).ok_or_else(|| {
        format!(
            "resources.limits.memory {:?} is not a valid quantity",
            quantity.0
        )
    })
}

/// Parses a Kubernetes byte quantity (`128Mi`, `1G`, `500000`).
pub fn parse_bytes(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    Some((number * factor) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        assert_eq!(parse_bytes("128Mi"), Some(128 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("1.5Ki"), Some(1536));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("5Xi"), None);
    }

    #[test]
    fn env_with_downward_api() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "env": [
                {"name": "A", "value": "1"},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
            ]}]}
        }))
        .unwrap();
        let env = container_env(
            &pod,
            &pod.spec.as_ref().unwrap().containers[0],
            "10.244.0.2",
        )
        .unwrap();
        assert_eq!(
            env,
            vec![
                ("A".into(), "1".into()),
                ("NODE".into(), "n1".into()),
                ("IP".into(), "10.244.0.2".into())
            ]
        );
        let mut bad = pod.spec.as_ref().unwrap().containers[0].clone();
        bad.env = Some(
            serde_json::from_value(
                json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
            )
            .unwrap(),
        );
        assert!(container_env(&pod, &bad, "").unwrap_err().contains("\"X\""));
    }
}
