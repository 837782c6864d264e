//! mTLS on the agent's gateway: it serves HTTPS with a self-signed certificate made at start
//! (as the kubelet does when given none) and takes only clients whose certificate the cluster
//! CA signed, checked in the handshake: a connection without one never gets an HTTP answer.
//! Of those, only nodes (`system:nodes`: other agents' proxies) and the control plane
//! (`system:masters`: the API server's logs and pod proxy) are served; any other cluster user
//! gets 403, so a user's certificate cannot reach past RBAC into pods.

use std::sync::Arc;

use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;

/// The groups whose members may use a gateway.
const ALLOWED_GROUPS: [&str; 2] = ["system:nodes", "system:masters"];

/// How a gateway is secured: whom it trusts and who it is when it calls other gateways.
#[derive(Clone, Debug)]
pub struct GatewayTls {
    /// The cluster CA (PEM): only clients with certificates it signed are served.
    pub client_ca_pem: String,
    /// The certificate this agent presents to other nodes' gateways (its node certificate,
    /// renewed in place).
    pub identity: Arc<dyn rustls::client::ResolvesClientCert>,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayTlsError {
    #[error("the cluster CA for the gateway: {0}")]
    ClientCa(String),
    #[error("making the gateway's certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// The gateway's server configuration: a new self-signed certificate for `names`, clients
/// required to present a certificate from `tls.client_ca_pem`.
pub fn server_config(
    tls: &GatewayTls,
    names: Vec<String>,
) -> Result<Arc<rustls::ServerConfig>, GatewayTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.client_ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| GatewayTlsError::ClientCa(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| GatewayTlsError::ClientCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(GatewayTlsError::ClientCa("no certificate in it".into()));
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), shoal_api::tls::provider())
            .build()
            .map_err(|e| GatewayTlsError::ClientCa(e.to_string()))?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(names)?.self_signed(&key)?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let mut config = rustls::ServerConfig::builder_with_provider(shoal_api::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key.into())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
