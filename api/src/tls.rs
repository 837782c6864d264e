//! TLS pieces the API server, the agents and the CLI share for talking to the agents'
//! gateways (mTLS) and for a node's identity: certificates from PEM that can be replaced
//! while in use (a node's client certificate, [`ClientIdentity`], and its gateway's serving
//! certificate, [`ServingIdentity`], both renewed in place), and the gateway client, which
//! presents a cluster certificate and verifies the gateway's against the cluster CA (as
//! kube-apiserver does toward kubelets given `--kubelet-certificate-authority`).

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} is not usable PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider everywhere in Shoal: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key (PEM) as rustls signs with them.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "the certificate",
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "the certificate",
            reason: "no certificate in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "the private key",
        reason: e.to_string(),
    })?;
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// A certificate and its key, replaceable while in use (renewed in place): new handshakes
/// present the new one. As a client certificate it is a [`ClientIdentity`] (a node's), as a
/// server's a [`ServingIdentity`] (a node gateway's).
#[derive(Debug)]
pub struct LiveCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

/// The client certificate a process presents (a node's, renewed in place).
pub type ClientIdentity = LiveCertificate;
/// The certificate a server presents (a node gateway's, renewed in place).
pub type ServingIdentity = LiveCertificate;

impl LiveCertificate {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(certified_key(cert_pem, key_pem)?),
        })
    }

    /// New handshakes present this certificate from now on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let key = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The leaf certificate presented now (DER).
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.current().cert[0].clone()
    }
}

impl rustls::client::ResolvesClientCert for LiveCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for LiveCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// How a node's gateway is secured: whom it trusts and who it is when it calls other
/// gateways.
#[derive(Clone, Debug)]
pub struct GatewayTls {
    /// The cluster CA (PEM): only clients with certificates it signed are served, and only
    /// gateways whose certificates it signed are called.
    pub client_ca_pem: String,
    /// The certificate this agent presents to other nodes' gateways (its node certificate,
    /// renewed in place).
    pub identity: Arc<dyn rustls::client::ResolvesClientCert>,
}

/// The certificates of a PEM text as a root store (a cluster CA); an error when it holds none.
pub fn root_store(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Pem {
            what: "the cluster CA",
            reason: e.to_string(),
        })?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem {
            what: "the cluster CA",
            reason: "no certificate in it".into(),
        });
    }
    Ok(roots)
}

/// Accepts the server's certificate whatever it is, checking only that the server holds its
/// key (the handshake signatures). Only for reading a server's chain before a CA pin is
/// checked against it (a joining node), never for a connection that carries credentials.
#[derive(Debug)]
pub struct UnverifiedServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl Default for UnverifiedServerCertificate {
    fn default() -> Self {
        Self(provider())
    }
}

impl ServerCertVerifier for UnverifiedServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A rustls client configuration for calling gateways as `identity`, trusting gateways whose
/// certificate a CA in `roots` (the cluster CA, [`root_store`]) signed for the address dialed.
pub fn gateway_client_config(
    identity: Arc<dyn rustls::client::ResolvesClientCert>,
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_cert_resolver(identity);
    // A resumed session keeps the certificate it was made with; a renewed one must be shown.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// An HTTP client for gateways (`https://` URLs) presenting `identity`, trusting the
/// gateways a CA in `roots` (the cluster CA) vouches for.
pub fn gateway_http_client<B>(
    identity: Arc<dyn rustls::client::ResolvesClientCert>,
    roots: rustls::RootCertStore,
) -> Result<
    hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        B,
    >,
    TlsError,
>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    // No Nagle: a tunnel through the gateway (port-forward) carries many small writes, which
    // Nagle's algorithm and the peer's delayed ACKs would hold back by 40 ms each.
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(gateway_client_config(identity, roots)?)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}
