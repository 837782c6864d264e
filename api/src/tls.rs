//! TLS pieces the API server, the agents and the CLI share for talking to the agents'
//! gateways (mTLS) and for a node's identity: a client certificate from PEM that can be
//! replaced while in use ([`ClientIdentity`]), and the server-certificate check a gateway
//! client makes.
//!
//! Gateways serve a self-signed certificate made at agent start, as the kubelet does when it
//! is given none; their clients present a cluster certificate but do not verify the
//! gateway's (kube-apiserver's default toward kubelets, without
//! `--kubelet-certificate-authority`): [`GatewayServerCertificate`] checks only the
//! handshake's signatures.

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

/// The client certificate a process presents, replaceable while connections are made with it
/// (a node's renewed certificate).
#[derive(Debug)]
pub struct ClientIdentity {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ClientIdentity {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Ok(Self {
            current: RwLock::new(certified_key(cert_pem, key_pem)?),
        })
    }

    /// New connections present this certificate from now on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let key = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts the server's certificate whatever it is, checking only that the server holds its
/// key (the handshake signatures). For gateways (self-signed), and for reading a server's
/// chain before a CA pin is checked.
#[derive(Debug)]
pub struct GatewayServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl Default for GatewayServerCertificate {
    fn default() -> Self {
        Self(provider())
    }
}

impl ServerCertVerifier for GatewayServerCertificate {
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

/// A rustls client configuration for calling gateways as `identity`.
pub fn gateway_client_config(
    identity: Arc<dyn rustls::client::ResolvesClientCert>,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(GatewayServerCertificate::default()))
        .with_client_cert_resolver(identity);
    // A resumed session keeps the certificate it was made with; a renewed one must be shown.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// An HTTP client for gateways (`https://` URLs) presenting `identity`.
pub fn gateway_http_client<B>(
    identity: Arc<dyn rustls::client::ResolvesClientCert>,
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
        .with_tls_config(gateway_client_config(identity)?)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}
