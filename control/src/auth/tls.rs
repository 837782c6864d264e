//! Serving the API: HTTPS with rustls (ring), the serving certificate swapped in place when it
//! is rotated, client certificates requested but optional (checked against the client CA
//! after the handshake, so an untrusted one is a 401 naming why, as kube-apiserver answers,
//! not a failed handshake); and plain HTTP for the loopback-only insecure address. Each
//! request carries its [`Connection`] as an extension: what the authenticator reads.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::authn::ClientCertificate;
use super::pki::{CertAndKey, CertificateInfo};
use super::UserInfo;

/// How a request reached the server. In-process requests carry none.
#[derive(Clone, Debug)]
pub enum Connection {
    /// The loopback-only plain HTTP address (`--insecure-http-addr`).
    Insecure { peer: SocketAddr },
    /// HTTPS, with what the client's certificate (if any) says.
    Tls {
        peer: SocketAddr,
        certificate: Option<ClientCertificate>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what}: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    ClientCa(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls signing key and chain from PEM.
pub fn certified_key(pem: &CertAndKey) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "serving certificate",
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "serving certificate",
            reason: "no certificate in the PEM text".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(pem.key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "serving key",
        reason: e.to_string(),
    })?;
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The serving certificate, replaceable while serving.
#[derive(Debug)]
pub struct RotatingCertificate(RwLock<Arc<CertifiedKey>>);

impl RotatingCertificate {
    pub fn new(pem: &CertAndKey) -> Result<Self, TlsError> {
        Ok(Self(RwLock::new(certified_key(pem)?)))
    }

    /// New handshakes use `pem` from now on.
    pub fn replace(&self, pem: &CertAndKey) -> Result<(), TlsError> {
        let key = certified_key(pem)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

impl ResolvesServerCert for RotatingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Asks for a client certificate but accepts a connection without one or with an untrusted
/// one; the proof of key possession is still checked during the handshake.
#[derive(Debug)]
struct OptionalClientCertificate {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for OptionalClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What the HTTPS listener needs: the rustls configuration and the client CA check.
pub struct TlsServing {
    config: Arc<rustls::ServerConfig>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    pub certificate: Arc<RotatingCertificate>,
}

impl TlsServing {
    /// Serving `certificate`, trusting client certificates signed by any of `client_ca_pems`.
    pub fn new(
        certificate: Arc<RotatingCertificate>,
        client_ca_pems: &[&str],
    ) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for pem in client_ca_pems {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| TlsError::ClientCa(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            return Err(TlsError::ClientCa("no CA certificate to trust".into()));
        }
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::ClientCa(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(OptionalClientCertificate {
                inner: client_verifier.clone(),
            }))
            .with_cert_resolver(certificate.clone());
        // HTTP/2 first, as kube-apiserver: Go clients (kubectl, client-go controllers) then
        // multiplex all their requests and watches on one connection. kube-rs, the Python
        // client and upgrades (exec, port-forward) use HTTP/1.1.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            client_verifier,
            certificate,
        })
    }

    /// What a finished handshake says of the client's certificate, and when a verified one
    /// expires.
    fn client_certificate(
        &self,
        connection: &rustls::ServerConnection,
    ) -> (Option<ClientCertificate>, Option<time::OffsetDateTime>) {
        let Some((leaf, intermediates)) = connection
            .peer_certificates()
            .and_then(|chain| chain.split_first())
        else {
            return (None, None);
        };
        if let Err(e) =
            self.client_verifier
                .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            return (Some(ClientCertificate::Rejected(e.to_string())), None);
        }
        let info = CertificateInfo::from_der(leaf);
        let expires = info.as_ref().ok().map(|info| info.not_after);
        let certificate = match info {
            Ok(info) if !info.common_name.is_empty() => ClientCertificate::Verified(
                UserInfo::authenticated(info.common_name, info.organizations),
            ),
            Ok(_) => ClientCertificate::Rejected(
                "the certificate's subject has no common name (the user)".into(),
            ),
            Err(e) => ClientCertificate::Rejected(e),
        };
        (Some(certificate), expires)
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight get to finish once serving stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The next connection; an accept error (out of file descriptors and the like) waits a little
/// rather than spinning.
async fn accept(listener: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!("accepting an API connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves `router` over HTTPS on `listener` until `shutdown` resolves, then lets requests in
/// flight finish (at most [`DRAIN_TIMEOUT`]).
pub async fn serve_https(
    listener: TcpListener,
    router: Router,
    tls: Arc<TlsServing>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = tokio_util::task::TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let (acceptor, router, tls) = (acceptor.clone(), router.clone(), tls.clone());
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!("TLS handshake with {peer}: {e}");
                        return;
                    }
                    Err(_) => return,
                };
            let (certificate, expires) = tls.client_certificate(stream.get_ref().1);
            let connection = Connection::Tls { peer, certificate };
            let serving = serve_connection(stream, router, connection, watcher);
            match expires {
                // A connection does not outlive the certificate it was authenticated with:
                // the client reconnects with its renewed one.
                Some(expires) => {
                    let left = expires - time::OffsetDateTime::now_utc();
                    let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
                    let _ = tokio::time::timeout(left, serving).await;
                }
                None => serving.await,
            }
        });
    }
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    Ok(())
}

/// Serves `router` over plain HTTP (the insecure address, or an agent-side listener) until
/// `shutdown` resolves; each request carries [`Connection::Insecure`].
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection::Insecure { peer };
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            connection,
            graceful.watcher(),
        ));
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await;
    Ok(())
}

/// Serves one connection's requests (HTTP/2, or HTTP/1.1 with upgrades), each tagged with
/// `connection`, until it closes or a graceful shutdown ends it.
async fn serve_connection<S>(
    stream: S,
    router: Router,
    connection: Connection,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(connection.clone());
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
    // HTTP/1.1 or HTTP/2, as the client chose (ALPN on TLS, the preface in plain text).
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let _ = watcher
        .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service))
        .await;
}
