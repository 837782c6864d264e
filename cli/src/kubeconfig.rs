//! Kubeconfig files: `shoal dev` and `shoal server` write an admin one (a client certificate
//! from the cluster CA), `shoal kubeconfig` one for any user; the client commands read the
//! server and credentials from one (`--kubeconfig`, `$KUBECONFIG`, or `~/.shoal/dev/kubeconfig`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use kube::config::{KubeConfigOptions, Kubeconfig};
use shoal_control::auth::pki::CertAndKey;
use shoal_control::client::Client;

/// A kubeconfig for the API at `server` (HTTPS), trusting `ca_pem`, as `user` with a client
/// certificate. Certificates and key are embedded (`*-data`), so the file stands alone.
pub fn render(server: &str, ca_pem: &str, user: &str, credentials: &CertAndKey) -> String {
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let user_entry = serde_json::json!({
        "name": user,
        "user": {
            "client-certificate-data": b64(&credentials.cert_pem),
            "client-key-data": b64(&credentials.key_pem),
        }
    });
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "shoal", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "contexts": [{"name": format!("{user}@shoal"), "context": {"cluster": "shoal", "user": user, "namespace": "default"}}],
        "current-context": format!("{user}@shoal"),
        "preferences": {},
        "users": [user_entry],
    });
    serde_yaml::to_string(&config).expect("a kubeconfig always serializes")
}

/// Writes a kubeconfig (it holds a private key: mode 0600).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    shoal_control::auth::pki::write_private(path, text)
        .with_context(|| format!("writing {}", path.display()))
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

/// A client for the kubeconfig at `path`, talking to `server` if given (else the
/// kubeconfig's): the client, the URL it talks to, and the CA (PEM) it trusts, if the
/// kubeconfig names one.
pub async fn connect_to(
    path: &Path,
    server: Option<&str>,
) -> anyhow::Result<(Client, String, Option<String>)> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let ca_pem = embedded_ca(&kubeconfig);
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .with_context(|| format!("kubeconfig {}", path.display()))?;
    if let Some(server) = server {
        config.cluster_url = server
            .parse()
            .with_context(|| format!("{server:?} is not a URL"))?;
    }
    let url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .with_context(|| format!("kubeconfig {}: making a client", path.display()))?;
    Ok((
        Client::new(client),
        url.trim_end_matches('/').to_string(),
        ca_pem,
    ))
}

/// The CA certificate (PEM) the kubeconfig's first cluster embeds, if any.
fn embedded_ca(kubeconfig: &Kubeconfig) -> Option<String> {
    kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.certificate_authority_data.as_deref())
        .and_then(|data| base64::engine::general_purpose::STANDARD.decode(data).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// The server URL and embedded CA (PEM) of the kubeconfig at `path`'s first cluster.
pub fn cluster_of(path: &Path) -> anyhow::Result<(String, Option<String>)> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let server = kubeconfig
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .with_context(|| format!("kubeconfig {} names no server", path.display()))?;
    Ok((server, embedded_ca(&kubeconfig)))
}

/// The client certificate and key (PEM) embedded in the kubeconfig at `path`'s first user,
/// if it has them.
pub fn client_certificate(path: &Path) -> anyhow::Result<Option<(String, String)>> {
    use secrecy::ExposeSecret;
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let decode = |data: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
    };
    let user = kubeconfig
        .auth_infos
        .first()
        .and_then(|a| a.auth_info.as_ref());
    let cert = user
        .and_then(|u| u.client_certificate_data.as_deref())
        .and_then(decode);
    let key = user
        .and_then(|u| u.client_key_data.as_ref())
        .and_then(|k| decode(k.expose_secret()));
    Ok(cert.zip(key))
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
        let pki = shoal_control::auth::pki::Pki::load_or_create(&dir.path().join("pki")).unwrap();
        let credentials = pki
            .issue_client("alice", &[], std::time::Duration::from_secs(60))
            .unwrap();
        let path = dir.path().join("kubeconfig");
        write_private(
            &path,
            &render(
                "https://127.0.0.1:1234",
                pki.ca_pem(),
                "alice",
                &credentials,
            ),
        )
        .unwrap();
        let (_, namespace) = connect(&path).await.unwrap();
        assert_eq!(namespace, "default");
        let Err(missing) = connect(&dir.path().join("missing")).await else {
            panic!("a missing kubeconfig connects nowhere");
        };
        assert!(missing.to_string().contains("shoal dev"));
    }
}
