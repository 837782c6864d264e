//! TLS termination for the dev ingress (`shoal dev --ingress-tls-addr`): a connection gets the
//! certificate of the `kubernetes.io/tls` Secret that an Ingress names for the requested host
//! (SNI) in its `spec.tls`, as ingress controllers do, and its requests are then routed exactly
//! as on the plain ingress. A host no Ingress lists (or whose Secret is missing or unreadable)
//! gets no certificate: its handshake fails. Secrets are followed by a watch and parsed once
//! per change; a bad one is logged with its name and skipped.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use shoal_api::client::{watcher, Client, ListParams, WatcherEvent};

use super::table::Table;
use super::Proxy;

const TLS_SECRET: &str = "kubernetes.io/tls";

/// The certificates of the cluster's TLS Secrets, and the Ingresses that choose among them.
pub struct IngressCertificates {
    table: Arc<RwLock<Table>>,
    /// By `namespace/name`.
    certificates: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for IngressCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IngressCertificates")
    }
}

/// A Secret's certificate chain and key, if it is a readable TLS Secret.
fn certified_key(secret: &Secret) -> Option<Result<Arc<CertifiedKey>, String>> {
    if secret.type_.as_deref() != Some(TLS_SECRET) {
        return None;
    }
    let field = |key: &str| -> Result<String, String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or(format!("no {key}"))?;
        String::from_utf8(bytes.0.clone()).map_err(|_| format!("{key} is not PEM text"))
    };
    Some(
        field("tls.crt")
            .and_then(|cert| Ok((cert, field("tls.key")?)))
            .and_then(|(cert, key)| {
                shoal_api::tls::certified_key(&cert, &key).map_err(|e| e.to_string())
            }),
    )
}

fn key_of(secret: &Secret) -> String {
    format!(
        "{}/{}",
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default()
    )
}

impl IngressCertificates {
    pub fn new(proxy: &Proxy) -> Arc<Self> {
        Arc::new(Self {
            table: proxy.table.clone(),
            certificates: RwLock::default(),
        })
    }

    fn store(&self, secret: &Secret, into: &mut HashMap<String, Arc<CertifiedKey>>) {
        match certified_key(secret) {
            None => {}
            Some(Ok(key)) => {
                into.insert(key_of(secret), key);
            }
            Some(Err(why)) => {
                tracing::warn!("TLS Secret {}: {why}; not served", key_of(secret));
                into.remove(&key_of(secret));
            }
        }
    }

    /// Keeps the certificates current from a watch of Secrets, until the task is dropped.
    pub async fn follow(self: Arc<Self>, client: Client) {
        let mut secrets = watcher::<Secret>(&client, ListParams::default());
        while let Some(event) = secrets.recv().await {
            let mut certificates = self.certificates.write().unwrap_or_else(|p| p.into_inner());
            match event {
                WatcherEvent::Restarted(all) => {
                    certificates.clear();
                    for secret in &all {
                        self.store(secret, &mut certificates);
                    }
                }
                WatcherEvent::Applied(secret) => self.store(&secret, &mut certificates),
                WatcherEvent::Deleted(secret) => {
                    certificates.remove(&key_of(&secret));
                }
            }
        }
    }
}

impl ResolvesServerCert for IngressCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello.server_name()?;
        let secret = super::read(&self.table).tls_secret_for(host)?;
        let certificates = self.certificates.read().unwrap_or_else(|p| p.into_inner());
        certificates.get(&secret).cloned()
    }
}

/// Serves the ingress over TLS on `listener`, with `certificates`, until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    proxy: Arc<Proxy>,
    certificates: Arc<IngressCertificates>,
) {
    let config = match rustls::ServerConfig::builder_with_provider(shoal_api::tls::provider())
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => builder
            .with_no_client_auth()
            .with_cert_resolver(certificates),
        Err(e) => {
            tracing::error!("the ingress's TLS configuration: {e}");
            return;
        }
    };
    let mut config = config;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let router = super::ingress::router(proxy);
    crate::tls_serve::serve_tls(listener, acceptor, "ingress TLS", move |_| router.clone()).await
}
