//! Projected volumes: ServiceAccount tokens bound to the pod (TokenRequest), ConfigMap and
//! Secret keys and downward-API fields, written together into one directory. They live in
//! the agent's tokens directory (memory, `/dev/shm`, where the host has it), as the kubelet
//! keeps them on tmpfs: tokens never reach the disk. The API server's ServiceAccount admission
//! gives every pod one (`kube-api-access-…`: token, `ca.crt`, `namespace`); users may write
//! their own (another audience, a shorter life).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, Pod, ProjectedVolumeSource};
use shoal_api::client::Client;

use super::config::ConfigError;
use super::sources::{present, select, Sources};
use crate::pod::volumes::write_files;

/// The ConfigMap the control plane publishes the cluster CA in, in every namespace.
const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// A token source's life when it names none (Kubernetes' default for `expirationSeconds`).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
/// The shortest life the API grants a token.
const MIN_TOKEN_SECONDS: i64 = 600;

/// What a projection reads besides ConfigMaps and Secrets.
pub struct Projection<'a> {
    pub pod: &'a Pod,
    pub client: &'a Client,
    /// The cluster CA, when the agent knows it: what `kube-root-ca.crt` holds, without asking
    /// the API at every pod start.
    pub cluster_ca: Option<&'a str>,
}

/// A token written into a projected volume, to renew while the pod runs.
#[derive(Clone, Debug)]
pub struct TokenFile {
    pub path: PathBuf,
    pub audience: Option<String>,
    pub expiration_seconds: i64,
    /// The life the API granted the token written.
    pub life: Duration,
}

/// Writes every source of `volume` into `dir`; returns the tokens written, to renew.
pub async fn prepare(
    volume: &ProjectedVolumeSource,
    dir: &Path,
    projection: &Projection<'_>,
    sources: &mut Sources,
) -> Result<Vec<TokenFile>, ConfigError> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut tokens = Vec::new();
    for source in volume.sources.iter().flatten() {
        if let Some(token) = &source.service_account_token {
            let expiration_seconds = token.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS);
            if expiration_seconds < MIN_TOKEN_SECONDS {
                return Err(ConfigError::Projection(format!(
                    "serviceAccountToken expirationSeconds {expiration_seconds} is below the minimum of {MIN_TOKEN_SECONDS}"
                )));
            }
            let audience = token.audience.clone().filter(|a| !a.is_empty());
            let (issued, life) = request_token(
                projection.client,
                projection.pod,
                audience.as_deref(),
                expiration_seconds,
            )
            .await
            .map_err(ConfigError::Projection)?;
            tokens.push(TokenFile {
                path: dir.join(&token.path),
                audience,
                expiration_seconds,
                life,
            });
            files.push((token.path.clone(), issued.into_bytes()));
        }
        if let Some(config_map) = &source.config_map {
            let data = match projection.cluster_ca {
                Some(ca) if config_map.name == ROOT_CA_CONFIG_MAP => Some(BTreeMap::from([(
                    "ca.crt".to_string(),
                    ca.as_bytes().to_vec(),
                )])),
                _ => sources.config_map(&config_map.name).await?,
            };
            let data = present(data, "configmap", &config_map.name, config_map.optional)?;
            let items = config_map.items.as_deref();
            files.extend(select(&data, items, "configmap", &config_map.name)?);
        }
        if let Some(secret) = &source.secret {
            let data = sources.secret(&secret.name).await?;
            let data = present(data, "secret", &secret.name, secret.optional)?;
            files.extend(select(
                &data,
                secret.items.as_deref(),
                "secret",
                &secret.name,
            )?);
        }
        if let Some(downward) = &source.downward_api {
            for item in downward.items.iter().flatten() {
                files.push((item.path.clone(), downward_value(projection.pod, item)?));
            }
        }
        if source.cluster_trust_bundle.is_some() {
            return Err(ConfigError::Projection(
                "clusterTrustBundle sources are not supported (supported: serviceAccountToken, configMap, secret, downwardAPI)".into(),
            ));
        }
    }
    write_files(dir, &files)?;
    Ok(tokens)
}

/// A downward-API file's content: Kubernetes' formats (labels and annotations one
/// `key="value"` per line, sorted).
fn downward_value(pod: &Pod, item: &DownwardAPIVolumeFile) -> Result<Vec<u8>, ConfigError> {
    let unsupported = |what: String| {
        ConfigError::Projection(format!(
            "downwardAPI {:?}: {what} is not supported (supported: metadata.name, metadata.namespace, metadata.uid, metadata.labels, metadata.annotations)",
            item.path
        ))
    };
    let Some(field) = &item.field_ref else {
        return Err(unsupported("resourceFieldRef".into()));
    };
    let meta = &pod.metadata;
    let pairs = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let value = match field.field_path.as_str() {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => pairs(&meta.labels),
        "metadata.annotations" => pairs(&meta.annotations),
        other => return Err(unsupported(format!("fieldPath {other:?}"))),
    };
    Ok(value.into_bytes())
}

/// A token for the pod's ServiceAccount, bound to the pod (TokenRequest), and how long it
/// lives (the API may grant less than asked).
pub async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration_seconds: i64,
) -> Result<(String, Duration), String> {
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    let meta = &pod.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let mut request = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": expiration_seconds,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                "name": meta.name.as_deref().unwrap_or(""), "uid": meta.uid.as_deref().unwrap_or("")},
        }
    });
    if let Some(audience) = audience {
        request["spec"]["audiences"] = serde_json::json!([audience]);
    }
    let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token");
    let answer = client
        .json(
            http::Method::POST,
            &path,
            "application/json",
            Some(&request),
        )
        .await
        .map_err(|e| format!("requesting a token for ServiceAccount {namespace}/{account}: {e}"))?;
    let token = answer
        .pointer("/status/token")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            format!("the token for ServiceAccount {namespace}/{account} came back empty")
        })?;
    let asked = Duration::from_secs(u64::try_from(expiration_seconds).unwrap_or(0));
    let granted = answer
        .pointer("/status/expirationTimestamp")
        .and_then(serde_json::Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .and_then(|expires| (expires.to_utc() - chrono::Utc::now()).to_std().ok())
        .map_or(asked, |left| left.min(asked));
    Ok((token, granted))
}

/// Replaces the token in `file` at 80% of its life (or every `at_most`, if sooner),
/// atomically: a guest reading it sees the old token or the new one, never part of either.
/// A failed renewal is retried after a tenth of the period; the old token stays valid
/// meanwhile. Runs until dropped.
pub async fn keep_fresh(client: Client, pod: Pod, file: TokenFile, at_most: Duration) {
    let period_for = |life: Duration| (life / 10 * 8).min(at_most).max(Duration::from_millis(100));
    let mut period = period_for(file.life);
    let mut wait = period;
    loop {
        tokio::time::sleep(wait).await;
        let renewed = match request_token(
            &client,
            &pod,
            file.audience.as_deref(),
            file.expiration_seconds,
        )
        .await
        {
            Ok((token, life)) => {
                period = period_for(life);
                let temporary = file.path.with_extension("new");
                std::fs::write(&temporary, token)
                    .and_then(|()| std::fs::rename(&temporary, &file.path))
                    .map_err(|e| format!("{}: {e}", file.path.display()))
            }
            Err(e) => Err(e),
        };
        wait = match renewed {
            Ok(()) => period,
            Err(e) => {
                let key = format!(
                    "{}/{}",
                    pod.metadata.namespace.as_deref().unwrap_or(""),
                    pod.metadata.name.as_deref().unwrap_or("")
                );
                tracing::warn!("pod {key}: renewing its ServiceAccount token: {e}");
                period / 10
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectFieldSelector;

    fn item(path: &str, field: &str) -> DownwardAPIVolumeFile {
        DownwardAPIVolumeFile {
            path: path.into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn downward_files_use_kubernetes_formats() {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("team".into());
        pod.metadata.labels = Some(BTreeMap::from([
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "say \"hi\"".to_string()),
        ]));
        let text = |field| String::from_utf8(downward_value(&pod, &item("f", field)).unwrap());
        assert_eq!(text("metadata.namespace").unwrap(), "team");
        assert_eq!(
            text("metadata.labels").unwrap(),
            "a=\"say \\\"hi\\\"\"\nb=\"2\""
        );
        let error = downward_value(&pod, &item("f", "spec.nodeName"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("spec.nodeName"), "{error}");
    }
}
