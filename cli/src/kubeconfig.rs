//! Kubeconfig files: `shoal dev` writes one kubectl can use; the client commands read the
//! server and credentials from one (`--kubeconfig`, `$KUBECONFIG`, or `~/.shoal/dev/kubeconfig`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use shoal_control::client::Client;

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

/// A client for the current context of the kubeconfig at `path`, and its default namespace.
/// kube-rs reads the file: every server (http or https), certificate authority, client
/// certificate, token or exec plugin kubectl accepts works here too.
pub async fn connect(path: &Path) -> anyhow::Result<(Client, String)> {
    if !path.exists() {
        anyhow::bail!(
            "reading kubeconfig {}: no such file (start a cluster with `shoal dev`, or pass --kubeconfig)",
            path.display()
        );
    }
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {}", path.display()))?;
    let namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config)
        .with_context(|| format!("kubeconfig {}: making a client", path.display()))?;
    Ok((Client::new(client), namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn written_kubeconfigs_are_read_by_kube() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        write(&path, "http://127.0.0.1:1234").unwrap();
        let (_, namespace) = connect(&path).await.unwrap();
        assert_eq!(namespace, "default");
        let Err(missing) = connect(&dir.path().join("missing")).await else {
            panic!("a missing kubeconfig connects nowhere");
        };
        assert!(missing.to_string().contains("shoal dev"));
    }
}
