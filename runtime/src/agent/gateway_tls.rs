//! mTLS on the agent's gateway, both ways:
//!
//! - **The gateway proves who it is.** It serves a certificate the cluster CA signed for this
//!   node (`system:node:<name>`, its name and gateway address as alternative names), asked for
//!   with a `kubernetes.io/kubelet-serving` CertificateSigningRequest at start (the kubelet's
//!   `serverTLSBootstrap`; the control plane approves a node's request for its own addresses)
//!   and renewed in place between 70% and 90% of its life. Its clients (the API server, other
//!   agents' proxies) verify it against the cluster CA and the address they dialed.
//! - **Its clients prove who they are.** It takes only clients whose certificate the cluster
//!   CA signed, checked in the handshake: a connection without one never gets an HTTP
//!   answer. Of those, only nodes (`system:nodes`: other agents' proxies) and the control
//!   plane (`system:masters`: the API server's logs and pod proxy) are served; any other
//!   cluster user gets 403, so a user's certificate cannot reach past RBAC into pods.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustls::server::WebPkiClientVerifier;
use shoal_api::client::certificates::{self, CertificateRequest, CsrError};
use shoal_api::client::Client;
use shoal_api::tls::{GatewayTls, ServingIdentity};
use tokio::net::TcpListener;

/// The groups whose members may use a gateway.
const ALLOWED_GROUPS: [&str; 2] = ["system:nodes", "system:masters"];
/// How long the agent waits for its serving certificate to be signed at start.
const SIGNING_WAIT: Duration = Duration::from_secs(60);
/// The usages of a gateway's certificate (an ECDSA key: no key encipherment).
const SERVING_USAGES: &[&str] = &["digital signature", "server auth"];

#[derive(Debug, thiserror::Error)]
pub enum GatewayTlsError {
    #[error("the cluster CA for the gateway: {0}")]
    ClientCa(String),
    #[error("the gateway's certificate request: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("the gateway's serving certificate: {0}")]
    Request(#[from] CsrError),
    #[error("the gateway's serving certificate: {0}")]
    Tls(#[from] shoal_api::tls::TlsError),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// The gateway's server configuration: presenting `serving`, clients required to present a
/// certificate from `tls.client_ca_pem`.
pub fn server_config(
    tls: &GatewayTls,
    serving: Arc<ServingIdentity>,
) -> Result<Arc<rustls::ServerConfig>, GatewayTlsError> {
    let roots = shoal_api::tls::root_store(&tls.client_ca_pem)
        .map_err(|e| GatewayTlsError::ClientCa(e.to_string()))?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), shoal_api::tls::provider())
            .build()
            .map_err(|e| GatewayTlsError::ClientCa(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(shoal_api::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The alternative names of node `node`'s gateway certificate: the node's name and the IP
/// address its gateway listens on (which its Node publishes as InternalIP).
pub fn serving_names(node: &str, gateway_ip: std::net::IpAddr) -> Vec<rcgen::SanType> {
    let mut names = vec![rcgen::SanType::IpAddress(gateway_ip)];
    if let Ok(dns) = node.to_string().try_into() {
        names.insert(0, rcgen::SanType::DnsName(dns));
    }
    names
}

/// A serving certificate for node `node`'s gateway, signed by the cluster: a new key, and a
/// `kubelet-serving` request for `names` that the control plane approves and signs.
/// Returns the certificate and key (PEM).
pub async fn request_serving_certificate(
    client: &Client,
    node: &str,
    names: &[rcgen::SanType],
) -> Result<(String, String), GatewayTlsError> {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params.subject_alt_names = names.to_vec();
    let key = rcgen::KeyPair::generate()?;
    let request_pem = params.serialize_request(&key)?.pem()?;
    let cert_pem = certificates::request_certificate(
        client,
        &CertificateRequest {
            name_prefix: &format!("node-serving-{node}"),
            request_pem: &request_pem,
            signer: certificates::KUBELET_SERVING_SIGNER,
            usages: SERVING_USAGES,
            wait: SIGNING_WAIT,
        },
    )
    .await?;
    Ok((cert_pem, key.serialize_pem()))
}

/// Renews the gateway's certificate between 70% and 90% of its life, for as long as the
/// agent runs; a failed renewal is retried every 30 s (the old certificate serves meanwhile).
pub async fn keep_renewed(
    client: Client,
    node: String,
    names: Vec<rcgen::SanType>,
    serving: Arc<ServingIdentity>,
) {
    loop {
        tokio::time::sleep(until_renewal(&serving)).await;
        let renewed = request_serving_certificate(&client, &node, &names)
            .await
            .and_then(|(cert, key)| Ok(serving.replace(&cert, &key)?));
        match renewed {
            Ok(()) => tracing::info!("renewed the gateway's serving certificate"),
            Err(e) => {
                tracing::warn!("renewing the gateway's serving certificate: {e}");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

/// How long until the certificate `serving` presents is due for renewal.
fn until_renewal(serving: &ServingIdentity) -> Duration {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = serving.certificate();
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return Duration::ZERO;
    };
    let validity = cert.validity();
    let (from, to) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let share = 0.7 + rand::random::<f64>() * 0.2;
    let due = from as f64 + (to.saturating_sub(from)) as f64 * share;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Duration::try_from_secs_f64(due - now).unwrap_or(Duration::ZERO)
}

/// Who the verified client certificate names, and whether it may use the gateway.
fn admitted(connection: &rustls::ServerConnection) -> Result<(), String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Some(leaf) = connection.peer_certificates().and_then(|c| c.first()) else {
        return Err("no client certificate".into());
    };
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| e.to_string())?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    let allowed = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .any(|group| ALLOWED_GROUPS.contains(&group));
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "user \"{user}\" may not use a node's gateway: only nodes and the control plane may"
        ))
    }
}

/// Serves `router` on `listener` over mTLS, until the task is dropped (with every connection).
pub async fn serve(listener: TcpListener, router: Router, config: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    crate::tls_serve::serve_tls(
        listener,
        acceptor,
        "gateway",
        move |connection| match admitted(connection) {
            Ok(()) => router.clone(),
            Err(why) => refusing(why),
        },
    )
    .await
}

/// A router answering 403 with `why` to everything.
fn refusing(why: String) -> Router {
    Router::new().fallback(move || {
        let why = why.clone();
        async move { (http::StatusCode::FORBIDDEN, format!("{why}\n")) }
    })
}
