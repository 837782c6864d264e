//! How an agent joins a cluster with a bootstrap token, and keeps its identity current
//! (Kubernetes' TLS bootstrapping and client certificate rotation):
//!
//! 1. **Trust.** The server's CA comes from its own TLS handshake (no credential is sent yet),
//!    and is trusted only if the hash of its public key is the `--ca-cert-hash` pin; from
//!    then on every connection verifies the server against that CA.
//! 2. **Identity.** With the token, the agent asks for a client certificate for
//!    `system:node:<name>` in `system:nodes` (a `certificates.k8s.io/v1`
//!    CertificateSigningRequest, its key never leaving the node); the control plane approves and
//!    signs it. The result is written to `<data-dir>/node.kubeconfig` (0600) and reused on
//!    restart while it is valid.
//! 3. **Renewal.** Between 70% and 90% of the certificate's life, the agent asks for a new
//!    one as itself and swaps it into its TLS client in place (`ClientIdentity`): new
//!    connections present the new certificate, and the server closes old ones when the
//!    certificate they were opened with expires.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use kube::client::ConfigExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use shoal_api::tls::ClientIdentity;
use shoal_control::auth::pki::{self, CertAndKey, CertificateInfo};
use shoal_control::client::{certificates, Client};

/// The group every node is in.
const NODES_GROUP: &str = "system:nodes";
/// How long the agent waits for its certificate request to be signed.
const SIGNING_WAIT: Duration = Duration::from_secs(120);
/// The file a joined node keeps its identity in, under its data directory.
pub const NODE_KUBECONFIG: &str = "node.kubeconfig";

/// The CA certificate (PEM) in the chain the server at `server` presents whose public key
/// hashes to `pin` (`sha256:<hex>`); an error naming the hashes seen when none does.
pub async fn fetch_pinned_ca(server: &str, pin: &str) -> anyhow::Result<String> {
    let pin = pin.trim().to_ascii_lowercase();
    anyhow::ensure!(
        pin.strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())),
        "--ca-cert-hash {pin:?} is not sha256:<64 hex digits>"
    );
    let url: url::Url = server
        .parse()
        .with_context(|| format!("--server {server:?} is not a URL"))?;
    anyhow::ensure!(
        url.scheme() == "https",
        "--server {server} is not an https:// URL"
    );
    let host = url
        .host_str()
        .context("the server URL has no host")?
        .to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let config = rustls::ClientConfig::builder_with_provider(shoal_api::tls::provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            shoal_api::tls::UnverifiedServerCertificate::default(),
        ))
        .with_no_client_auth();
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .with_context(|| format!("{host:?} is not a server name"))?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    .with_context(|| format!("connecting to {server}: timed out"))?
    .with_context(|| format!("connecting to {server}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {server}"))?;
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    let mut seen = Vec::new();
    for cert in chain {
        let hash = pki::ca_cert_hash_der(cert).map_err(|e| anyhow::anyhow!("{e}"))?;
        if hash == pin {
            let pem = pem_of(cert);
            // The pinned certificate must be a CA that vouches for this server: the API
            // client verifies the server against it on every connection from here on.
            return Ok(pem);
        }
        seen.push(hash);
    }
    anyhow::bail!(
        "the server's certificate chain holds no certificate matching --ca-cert-hash {pin} (it presented {})",
        seen.join(", ")
    )
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

/// A kube client for `server`, trusting `ca_pem`, authenticating with a bearer token.
async fn token_client(server: &str, ca_pem: &str, token: &str) -> anyhow::Result<Client> {
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "shoal", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": "bootstrap", "user": {"token": token}}],
        "contexts": [{"name": "bootstrap", "context": {"cluster": "shoal", "user": "bootstrap"}}],
        "current-context": "bootstrap",
    });
    let kubeconfig: kube::config::Kubeconfig = serde_json::from_value(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::new(kube::Client::try_from(config)?))
}

/// A joined node's identity: where the API is, the CA it trusts, and its certificate.
pub struct NodeCredentials {
    pub server: String,
    pub ca_pem: String,
    name: String,
    identity: Arc<ClientIdentity>,
    current: RwLock<CertAndKey>,
    kubeconfig: PathBuf,
}

impl NodeCredentials {
    /// The node's identity in `data_dir` if it holds one still valid, else a new one from
    /// joining `server` with `token`, trusting the CA matching `pin`.
    pub async fn load_or_join(
        data_dir: &Path,
        name: &str,
        server: &str,
        token: Option<&str>,
        pin: Option<&str>,
    ) -> anyhow::Result<Self> {
        let kubeconfig = data_dir.join(NODE_KUBECONFIG);
        if let Some(kept) = Self::load(&kubeconfig, name)? {
            return Ok(kept);
        }
        let (Some(token), Some(pin)) = (token, pin) else {
            anyhow::bail!(
                "{} holds no valid identity for node {name}: join with --token and --ca-cert-hash (from `shoal token create --print-join-command`), or pass --kubeconfig",
                kubeconfig.display()
            );
        };
        anyhow::ensure!(
            shoal_control::auth::tokens::parse_bootstrap_token(token).is_some(),
            "--token is not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})"
        );
        let ca_pem = fetch_pinned_ca(server, pin).await?;
        let client = token_client(server, &ca_pem, token).await?;
        let credentials = request_certificate(&client, name).await?;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let user = node_user(name);
        crate::kubeconfig::write_private(
            &kubeconfig,
            &crate::kubeconfig::render(server, &ca_pem, &user, &credentials),
        )?;
        Ok(Self {
            server: server.to_string(),
            ca_pem,
            name: name.to_string(),
            identity: Arc::new(ClientIdentity::from_pem(
                &credentials.cert_pem,
                &credentials.key_pem,
            )?),
            current: RwLock::new(credentials),
            kubeconfig,
        })
    }

    /// The identity kept at `path`, if there is one for `name` that has not expired.
    fn load(path: &Path, name: &str) -> anyhow::Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let (server, ca_pem) = crate::kubeconfig::cluster_of(path)?;
        let certificate = crate::kubeconfig::client_certificate(path)?;
        let (Some(ca_pem), Some((cert_pem, key_pem))) = (ca_pem, certificate) else {
            return Ok(None);
        };
        let info = CertificateInfo::parse(&cert_pem).map_err(|e| anyhow::anyhow!("{e}"))?;
        if info.common_name != node_user(name) || info.not_after <= time::OffsetDateTime::now_utc()
        {
            return Ok(None);
        }
        let credentials = CertAndKey { cert_pem, key_pem };
        Ok(Some(Self {
            server,
            ca_pem,
            name: name.to_string(),
            identity: Arc::new(ClientIdentity::from_pem(
                &credentials.cert_pem,
                &credentials.key_pem,
            )?),
            current: RwLock::new(credentials),
            kubeconfig: path.to_path_buf(),
        }))
    }

    /// The node's certificate, as its gateway client presents it to other nodes.
    pub fn identity(&self) -> Arc<ClientIdentity> {
        self.identity.clone()
    }

    /// A client that presents the node's current certificate on every new connection.
    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.kube_client(&self.server)?))
    }

    /// A kube client for the API server at `server` with these credentials (an agent given
    /// several servers has one per server).
    pub fn kube_client(&self, server: &str) -> anyhow::Result<kube::Client> {
        let mut config = kube::Config::new(
            server
                .parse()
                .with_context(|| format!("{server:?} is not a URL"))?,
        );
        config.root_cert = Some(
            CertificateDer::pem_slice_iter(self.ca_pem.as_bytes())
                .map(|c| c.map(|c| c.as_ref().to_vec()))
                .collect::<Result<Vec<_>, _>>()
                .context("the cluster CA is not PEM")?,
        );
        let mut tls = config.rustls_client_config()?;
        tls.client_auth_cert_resolver = self.identity.clone();
        // A resumed TLS session keeps the certificate it was first made with: after a
        // renewal, new connections must present the new one, so every handshake is full.
        tls.resumption = rustls::client::Resumption::disabled();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        // As kube-rs sets them: a silent peer ends a request rather than hanging it.
        let mut connector = hyper_timeout::TimeoutConnector::new(https);
        connector.set_connect_timeout(config.connect_timeout);
        connector.set_read_timeout(config.read_timeout);
        connector.set_write_timeout(config.write_timeout);
        let http: hyper_util::client::legacy::Client<_, kube::client::Body> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        let service = tower::ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .service(http);
        Ok(kube::Client::new(service, "default"))
    }

    /// Renews the certificate between 70% and 90% of its life, for as long as the agent runs.
    pub async fn keep_renewed(self: Arc<Self>, client: Client) {
        loop {
            let wait = self.until_renewal();
            tokio::time::sleep(wait).await;
            match request_certificate(&client, &self.name)
                .await
                .and_then(|c| {
                    self.install(&c)?;
                    Ok(c)
                }) {
                Ok(_) => tracing::info!("renewed the node's client certificate"),
                Err(e) => {
                    tracing::warn!("renewing the node's client certificate: {e:#}");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    /// How long until the current certificate is due for renewal.
    fn until_renewal(&self) -> Duration {
        let cert_pem = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .cert_pem
            .clone();
        let Ok(info) = CertificateInfo::parse(&cert_pem) else {
            return Duration::ZERO;
        };
        let life = info.not_after - info.not_before;
        let share = 0.7 + rand::random::<f64>() * 0.2;
        let due = info.not_before + life * share;
        Duration::try_from(due - time::OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
    }

    /// Uses `credentials` from now on, and keeps them for restarts.
    fn install(&self, credentials: &CertAndKey) -> anyhow::Result<()> {
        self.identity
            .replace(&credentials.cert_pem, &credentials.key_pem)?;
        crate::kubeconfig::write_private(
            &self.kubeconfig,
            &crate::kubeconfig::render(
                &self.server,
                &self.ca_pem,
                &node_user(&self.name),
                credentials,
            ),
        )?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = credentials.clone();
        Ok(())
    }
}

fn node_user(name: &str) -> String {
    format!("system:node:{name}")
}

/// Asks the cluster to sign a new client certificate for node `name` and waits for it.
async fn request_certificate(client: &Client, name: &str) -> anyhow::Result<CertAndKey> {
    let (request_pem, key_pem) = pki::certificate_request(&node_user(name), &[NODES_GROUP.into()])?;
    let cert_pem = certificates::request_certificate(
        client,
        &certificates::CertificateRequest {
            name_prefix: &format!("node-csr-{name}"),
            request_pem: &request_pem,
            signer: certificates::KUBELET_CLIENT_SIGNER,
            usages: &["digital signature", "client auth"],
            wait: SIGNING_WAIT,
        },
    )
    .await?;
    Ok(CertAndKey { cert_pem, key_pem })
}
