//! Kubeconfig files: `shoal dev` writes one kubectl can use; the client commands read the
//! server URL from one (`--kubeconfig`, `$KUBECONFIG`, or `~/.shoal/dev/kubeconfig`).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Writes an admin kubeconfig for the cluster at `server` (plain HTTP on loopback: kubectl
/// sends no credentials over http://, so none are written).
pub fn write(path: &Path, server: &str) -> anyhow::Result<()> {
    let config = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: shoal
  cluster:
    server: {server}
contexts:
- name: shoal
  context:
    cluster: shoal
    user: admin
    namespace: default
current-context: shoal
users:
- name: admin
  user: {{}}
"
    );
    std::fs::write(path, config).with_context(|| format!("writing {}", path.display()))
}

/// The default data directory of `shoal dev`: `~/.shoal/dev`.
pub fn default_data_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".shoal").join("dev")
}

/// Which kubeconfig to use: the flag, then `$KUBECONFIG`, then the dev cluster's.
pub fn locate(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    match std::env::var_os("KUBECONFIG") {
        Some(value) if !value.is_empty() => PathBuf::from(value),
        _ => default_data_dir().join("kubeconfig"),
    }
}

/// The server URL and default namespace of the current context.
pub fn read(path: &Path) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading kubeconfig {} (start a cluster with `shoal dev`, or pass --kubeconfig)",
            path.display()
        )
    })?;
    let config: serde_yaml::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("parsing kubeconfig {}", path.display()))?;
    let current = config["current-context"].as_str().unwrap_or("");
    let find = |list: &str, name: &str| {
        config[list].as_sequence().and_then(|items| {
            items
                .iter()
                .find(|i| i["name"].as_str() == Some(name))
                .cloned()
        })
    };
    let context = find("contexts", current)
        .ok_or_else(|| anyhow::anyhow!("kubeconfig {}: no context {current:?}", path.display()))?;
    let cluster_name = context["context"]["cluster"].as_str().unwrap_or("");
    let namespace = context["context"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let cluster = find("clusters", cluster_name).ok_or_else(|| {
        anyhow::anyhow!("kubeconfig {}: no cluster {cluster_name:?}", path.display())
    })?;
    let server = cluster["cluster"]["server"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("kubeconfig {}: cluster has no server", path.display()))?;
    if server.starts_with("https://") {
        anyhow::bail!(
            "kubeconfig {}: https servers are not supported by this client yet",
            path.display()
        );
    }
    Ok((server.to_string(), namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        write(&path, "http://127.0.0.1:1234").unwrap();
        assert_eq!(
            read(&path).unwrap(),
            ("http://127.0.0.1:1234".to_string(), "default".to_string())
        );
        assert!(read(&dir.path().join("missing"))
            .unwrap_err()
            .to_string()
            .contains("shoal dev"));
    }
}
