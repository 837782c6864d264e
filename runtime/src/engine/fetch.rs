//! Fetching an image's bytes by its reference: a file path (`/x.wasm`, `file:///x.wasm`), an
//! `http://` or `https://` URL (TLS by rustls, trusting the system's roots plus any CA the
//! agent was given), or `sha256:<hex>` of a module pushed into the cluster (`shoal push`),
//! downloaded from the control plane and verified against its digest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use sha2::{Digest, Sha256};

use super::image::ImageError;
use super::Engine;

/// The largest image fetched.
const MAX_IMAGE_BYTES: usize = 256 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

enum Source {
    File(PathBuf),
    Url(http::Uri),
    Pushed(String),
}

fn resolve(image: &str) -> Result<Source, ImageError> {
    let unsupported = |why: &str| ImageError::Unsupported {
        image: image.into(),
        why: why.into(),
    };
    let image = image.trim();
    if let Some(path) = image.strip_prefix("file://") {
        return Ok(Source::File(PathBuf::from(path)));
    }
    if image.starts_with("http://") || image.starts_with("https://") {
        return image
            .parse()
            .map(Source::Url)
            .map_err(|e| unsupported(&format!("not a valid URL: {e}")));
    }
    if let Some(digest) = image.strip_prefix("sha256:") {
        if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(unsupported(
                "a pushed module's reference is sha256: and 64 hex digits",
            ));
        }
        return Ok(Source::Pushed(digest.to_ascii_lowercase()));
    }
    if !Path::new(image).is_absolute() {
        return Err(unsupported(
            "an image must be a registry reference (registry.example.com/team/app:1.2), an absolute file path (or file:// URL), an http:// URL, or a sha256: reference from `shoal push`",
        ));
    }
    Ok(Source::File(PathBuf::from(image)))
}

pub(crate) type ImageClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

/// Why a TLS client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("CA file {}: {why}", path.display())]
    CaFile { path: PathBuf, why: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// An HTTP and HTTPS client trusting the system's roots and the PEM certificates in `extra_ca`.
pub(crate) fn image_client(extra_ca: Option<&Path>) -> Result<ImageClient, TlsSetupError> {
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https_connector(extra_ca)?),
    )
}

/// A connector for `https://` trusting only the certificates of `ca_pem` (the cluster CA).
pub(crate) fn https_connector_trusting(
    ca_pem: &str,
) -> Result<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    TlsSetupError,
> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let bad = |why: String| TlsSetupError::CaFile {
            path: PathBuf::from("<cluster CA>"),
            why,
        };
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    connector_trusting(roots)
}

/// A connector for `http://` and `https://` trusting `roots` (rustls with ring).
fn connector_trusting(
    roots: rustls::RootCertStore,
) -> Result<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    TlsSetupError,
> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build())
}

/// A connector for `http://` and `https://` (rustls with the system's roots plus `extra_ca`).
pub(crate) fn https_connector(
    extra_ca: Option<&Path>,
) -> Result<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    TlsSetupError,
> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        use rustls::pki_types::pem::PemObject;
        let bad = |why: String| TlsSetupError::CaFile {
            path: path.to_path_buf(),
            why,
        };
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(format!("cannot read it: {e}")))?;
        for cert in certs {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    connector_trusting(roots)
}

impl Engine {
    /// The client for image URLs, made once.
    fn image_client(&self) -> Result<&ImageClient, TlsSetupError> {
        if let Some(client) = self.image_client.get() {
            return Ok(client);
        }
        let client = image_client(self.image_ca.get().map(PathBuf::as_path))?;
        Ok(self.image_client.get_or_init(|| client))
    }

    /// The file an image names, resolved (links followed), if it exists and lies under a
    /// directory file images may come from.
    async fn allowed_file(&self, image: &str, path: PathBuf) -> Result<PathBuf, ImageError> {
        let resolved = match tokio::fs::canonicalize(&path).await {
            Ok(resolved) => resolved,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound {
                    image: image.into(),
                    path,
                })
            }
            Err(e) => {
                return Err(ImageError::Unreadable {
                    image: image.into(),
                    path,
                    error: e.to_string(),
                })
            }
        };
        match self.image_dirs.get() {
            Some(dirs) if !dirs.iter().any(|dir| resolved.starts_with(dir)) => {
                Err(ImageError::NotAllowed {
                    image: image.into(),
                    allowed: dirs.clone(),
                })
            }
            _ => Ok(resolved),
        }
    }

    pub(crate) async fn fetch(&self, image: &str) -> Result<Vec<u8>, ImageError> {
        let failed = |error: String| ImageError::Fetch {
            image: image.into(),
            error,
        };
        match resolve(image)? {
            Source::File(path) => {
                let path = self.allowed_file(image, path).await?;
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(bytes),
                    Err(e) => Err(ImageError::Unreadable {
                        image: image.into(),
                        path,
                        error: e.to_string(),
                    }),
                }
            }
            Source::Url(uri) => {
                let client = self.image_client().map_err(|e| failed(e.to_string()))?;
                let response = tokio::time::timeout(FETCH_TIMEOUT, client.get(uri))
                    .await
                    .map_err(|_| failed(format!("no answer within {FETCH_TIMEOUT:?}")))?
                    .map_err(|e| failed(format!("cannot connect: {}", error_chain(&e))))?;
                if response.status() != http::StatusCode::OK {
                    return Err(failed(format!("the server answered {}", response.status())));
                }
                let body = tokio::time::timeout(
                    FETCH_TIMEOUT,
                    Limited::new(response.into_body(), MAX_IMAGE_BYTES).collect(),
                )
                .await
                .map_err(|_| failed(format!("the download took longer than {FETCH_TIMEOUT:?}")))?
                .map_err(|e| failed(format!("reading the body: {e}")))?;
                Ok(body.to_bytes().to_vec())
            }
            Source::Pushed(digest) => {
                let client = self.cluster.get().ok_or_else(|| {
                    failed("this engine is not connected to a cluster's module store".into())
                })?;
                let bytes = client.fetch_module(&format!("sha256:{digest}")).await.map_err(|e| match e.code() {
                    Some(404) => failed("no such module in the cluster's module store (push it with `shoal push`)".into()),
                    _ => failed(e.to_string()),
                })?;
                let actual = hex::encode(Sha256::digest(&bytes));
                if actual != digest {
                    return Err(failed(format!(
                        "the downloaded module's digest is sha256:{actual}, not the one asked for"
                    )));
                }
                Ok(bytes)
            }
        }
    }
}

/// An error with its causes (hyper's client error hides a TLS failure in its source).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert!(
            matches!(resolve("file:///x/y.wasm"), Ok(Source::File(p)) if p == Path::new("/x/y.wasm"))
        );
        assert!(matches!(resolve("/x/y.wasm"), Ok(Source::File(_))));
        assert!(matches!(
            resolve("http://127.0.0.1:9/m.wasm"),
            Ok(Source::Url(_))
        ));
        let digest = "ab".repeat(32);
        assert!(
            matches!(resolve(&format!("sha256:{digest}")), Ok(Source::Pushed(d)) if d == digest)
        );
        assert!(matches!(
            resolve("https://example.com/a.wasm"),
            Ok(Source::Url(_))
        ));
        for bad in ["nginx:1.27", "sha256:abc", "hello.wasm"] {
            let err = resolve(bad).err().unwrap();
            assert_eq!(err.reason(), "ErrImagePull", "{bad}");
        }
    }
}
