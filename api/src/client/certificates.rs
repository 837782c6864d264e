//! A node's side of `certificates.k8s.io/v1` CertificateSigningRequests: the signers it asks,
//! and [`request_certificate`], which submits a request and waits until the control plane has
//! signed it (or refused it). A joining agent asks this way for its client certificate
//! (`kube-apiserver-client-kubelet`), and every agent for its gateway's serving certificate
//! (`kubelet-serving`); the approving and signing side is `controllers/certificates.rs` in
//! shoal-control.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use serde_json::json;

use super::Client;

/// Client certificates of nodes (`system:node:<name>` in `system:nodes`).
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Client certificates of anyone else.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// Serving certificates of nodes' gateways (the kubelet's serving certificate).
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("submitting certificate signing request {name}: {source}")]
    Submit {
        name: String,
        #[source]
        source: super::Error,
    },
    #[error("reading certificate signing request {name}: {source}")]
    Read {
        name: String,
        #[source]
        source: super::Error,
    },
    #[error("certificate signing request {name} was {outcome}: {message}")]
    Refused {
        name: String,
        outcome: String,
        message: String,
    },
    #[error("certificate signing request {name} was not signed within {}s (is it approved? `kubectl certificate approve {name}`)", .waited.as_secs())]
    NotSigned { name: String, waited: Duration },
    #[error("certificate signing request {name} cannot be made: {why}")]
    Invalid { name: String, why: String },
}

/// What to ask a signer for.
pub struct CertificateRequest<'a> {
    /// The request's object name is this with a random suffix.
    pub name_prefix: &'a str,
    /// The PEM `CERTIFICATE REQUEST`.
    pub request_pem: &'a str,
    pub signer: &'a str,
    /// Kubernetes' usage names (`digital signature`, `client auth`, `server auth`, ...).
    pub usages: &'a [&'a str],
    /// How long to wait for the signature.
    pub wait: Duration,
}

/// The certificate an issued request carries, as PEM text.
pub fn issued_certificate(csr: &CertificateSigningRequest) -> Option<String> {
    let bytes = &csr.status.as_ref()?.certificate.as_ref()?.0;
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes).to_string())
}

/// Submits `request` and returns the signed certificate (PEM) once the control plane has
/// issued it; a denied or failed request is an error carrying the signer's message.
pub async fn request_certificate(
    client: &Client,
    request: &CertificateRequest<'_>,
) -> Result<String, CsrError> {
    let name = format!("{}-{:08x}", request.name_prefix, rand::random::<u32>());
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(request.request_pem),
            "signerName": request.signer,
            "usages": request.usages,
        },
    });
    let csr: CertificateSigningRequest =
        serde_json::from_value(csr).map_err(|e| CsrError::Invalid {
            name: name.clone(),
            why: e.to_string(),
        })?;
    let api = client.api::<CertificateSigningRequest>(None);
    api.create(&csr).await.map_err(|source| CsrError::Submit {
        name: name.clone(),
        source,
    })?;
    let deadline = tokio::time::Instant::now() + request.wait;
    loop {
        let current = api.get(&name).await.map_err(|source| CsrError::Read {
            name: name.clone(),
            source,
        })?;
        if let Some(cert_pem) = issued_certificate(&current) {
            return Ok(cert_pem);
        }
        let refused = current
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True");
        if let Some(condition) = refused {
            return Err(CsrError::Refused {
                name,
                outcome: condition.type_.to_lowercase(),
                message: condition
                    .message
                    .clone()
                    .unwrap_or_else(|| "no reason given".into()),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CsrError::NotSigned {
                name,
                waited: request.wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
