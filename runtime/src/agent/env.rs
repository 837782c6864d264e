//! A container's environment and memory limit, from its spec: `env` values, the downward API
//! (`fieldRef`), ConfigMap and Secret keys (`configMapKeyRef`, `secretKeyRef`) and whole
//! ConfigMaps and Secrets (`envFrom`, with `prefix`).

use k8s_openapi::api::core::v1::{Container, Pod};

use super::config::ConfigError;
use super::sources::Sources;

pub async fn container_env(
    pod: &Pod,
    container: &Container,
    pod_ip: &str,
    sources: &mut Sources,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut env: Vec<(String, String)> = Vec::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &source.config_map_ref {
            match sources.config_map(&cm.name).await? {
                Some(data) => data,
                None if cm.optional == Some(true) => Default::default(),
                None => {
                    return Err(ConfigError::NotFound {
                        context: "envFrom: ".into(),
                        kind: "configmap",
                        name: cm.name.clone(),
                    })
                }
            }
        } else if let Some(secret) = &source.secret_ref {
            match sources.secret(&secret.name).await? {
                Some(data) => data,
                None if secret.optional == Some(true) => Default::default(),
                None => {
                    return Err(ConfigError::NotFound {
                        context: "envFrom: ".into(),
                        kind: "secret",
                        name: secret.name.clone(),
                    })
                }
            }
        } else {
            continue;
        };
        for (key, value) in data {
            set(
                &mut env,
                format!("{prefix}{key}"),
                String::from_utf8_lossy(&value).into_owned(),
            );
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, None) => String::new(),
            (None, Some(source)) => {
                let what = |kind: &'static str, name: &str, key: &str| ConfigError::NoKey {
                    context: format!("env {:?}: ", var.name),
                    kind,
                    name: name.into(),
                    key: key.into(),
                };
                if let Some(field) = &source.field_ref {
                    field_value(pod, &field.field_path, pod_ip).ok_or_else(|| {
                        ConfigError::Unsupported {
                            var: var.name.clone(),
                            what: format!("fieldRef {:?}", field.field_path),
                        }
                    })?
                } else if let Some(key) = &source.config_map_key_ref {
                    match sources
                        .config_map(&key.name)
                        .await?
                        .and_then(|d| d.get(&key.key).cloned())
                    {
                        Some(value) => String::from_utf8_lossy(&value).into_owned(),
                        None if key.optional == Some(true) => continue,
                        None => return Err(what("configmap", &key.name, &key.key)),
                    }
                } else if let Some(key) = &source.secret_key_ref {
                    match sources
                        .secret(&key.name)
                        .await?
                        .and_then(|d| d.get(&key.key).cloned())
                    {
                        Some(value) => String::from_utf8_lossy(&value).into_owned(),
                        None if key.optional == Some(true) => continue,
                        None => return Err(what("secret", &key.name, &key.key)),
                    }
                } else {
                    return Err(ConfigError::Unsupported {
                        var: var.name.clone(),
                        what: "resourceFieldRef".into(),
                    });
                }
            }
        };
        set(&mut env, var.name.clone(), value);
    }
    Ok(env)
}

/// Later definitions win, as in Kubernetes (`env` over `envFrom`).
fn set(env: &mut Vec<(String, String)>, key: String, value: String) {
    env.retain(|(k, _)| *k != key);
    env.push((key, value));
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
pub fn memory_limit(container: &Container) -> Result<Option<usize>, ConfigError> {
    let Some(quantity) = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
    else {
        return Ok(None);
    };
    shoal_api::api::quantity::parse(&quantity.0)
        .map(|b| b as usize)
        .map(Some)
        .ok_or_else(|| ConfigError::MemoryLimit(quantity.0.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_definitions_win() {
        let mut env = Vec::new();
        set(&mut env, "A".into(), "1".into());
        set(&mut env, "B".into(), "2".into());
        set(&mut env, "A".into(), "3".into());
        assert_eq!(
            env,
            vec![("B".into(), "2".into()), ("A".into(), "3".into())]
        );
    }
}
