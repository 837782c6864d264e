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

/// The digests of file images this engine has hashed, by canonical path, each with the stamp
/// of the file it was computed from: a pod start of an unchanged file neither reads nor hashes
/// it again (an 18 MB component is 18 MB read and ~12 ms of sha256 per pod otherwise).
#[derive(Default)]
pub(crate) struct FileDigests(
    std::sync::Mutex<std::collections::HashMap<PathBuf, (FileStamp, String)>>,
);

/// What changes when a file's content does: its identity, length, and modification and
/// change times (in nanoseconds), as git's index judges a file unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct FileStamp {
    device: u64,
    inode: u64,
    len: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let ns = |seconds: i64, nanos: i64| i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
        Self {
            device: meta.dev(),
            inode: meta.ino(),
            len: meta.len(),
            modified_ns: ns(meta.mtime(), meta.mtime_nsec()),
            changed_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether a write could still land within the same timestamps unseen: a file changed
    /// within the last 2 seconds is hashed again next time (git's "racily clean" rule).
    fn settled(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now - self.modified_ns.max(self.changed_ns) > 2_000_000_000
    }
}

/// A file image read for hashing: its bytes, and its path and stamp from before the read
/// when the file did not change while it was read.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub file: Option<(PathBuf, FileStamp)>,
}

impl FileDigests {
    fn get(&self, path: &Path, stamp: FileStamp) -> Option<String> {
        let digests = self.0.lock().unwrap_or_else(|p| p.into_inner());
        digests
            .get(path)
            .filter(|(known, _)| *known == stamp)
            .map(|(_, digest)| digest.clone())
    }

    /// Remembers `digest` for the file read as `file` (if it was settled when read).
    pub(crate) fn remember(&self, file: Option<(PathBuf, FileStamp)>, digest: &str) {
        if let Some((path, stamp)) = file.filter(|(_, stamp)| stamp.settled()) {
            let mut digests = self.0.lock().unwrap_or_else(|p| p.into_inner());
            digests.insert(path, (stamp, digest.to_string()));
        }
    }
}

/// The bytes of the file image `image`, at `path` (already allowed).
async fn read_file(image: &str, path: &Path) -> Result<Vec<u8>, ImageError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| ImageError::Unreadable {
            image: image.into(),
            path: path.to_path_buf(),
            error: e.to_string(),
        })
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

    /// The digest (hex) of `image` when it is known without fetching it: a `sha256:`
    /// reference names it, and a file hashed before keeps its digest while its stamp is
    /// unchanged. A file outside the allowed directories is refused here as in `fetch`.
    pub(crate) async fn known_digest(&self, image: &str) -> Result<Option<String>, ImageError> {
        match resolve(image)? {
            Source::Pushed(digest) => Ok(Some(digest)),
            Source::Url(_) => Ok(None),
            Source::File(path) => {
                let path = self.allowed_file(image, path).await?;
                Ok(match tokio::fs::metadata(&path).await {
                    Ok(meta) => self.file_digests.get(&path, FileStamp::of(&meta)),
                    Err(_) => None,
                })
            }
        }
    }

    /// Remembers the digest of a file image read by [`Engine::fetch_stamped`].
    pub(crate) fn remember_digest(&self, file: Option<(PathBuf, FileStamp)>, digest: &str) {
        self.file_digests.remember(file, digest);
    }

    /// [`Engine::fetch`], also returning a file image's path and stamp from before the read
    /// (none when the file changed while it was read, or for other sources).
    pub(crate) async fn fetch_stamped(&self, image: &str) -> Result<Fetched, ImageError> {
        let Ok(Source::File(path)) = resolve(image) else {
            let bytes = self.fetch(image).await?;
            return Ok(Fetched { bytes, file: None });
        };
        let path = self.allowed_file(image, path).await?;
        let stamp = |path: PathBuf| async move {
            let meta = tokio::fs::metadata(&path).await.ok()?;
            Some(FileStamp::of(&meta))
        };
        let before = stamp(path.clone()).await;
        let bytes = read_file(image, &path).await?;
        let after = stamp(path.clone()).await;
        let file = before
            .filter(|_| before == after)
            .map(|stamp| (path, stamp));
        Ok(Fetched { bytes, file })
    }

    pub(crate) async fn fetch(&self, image: &str) -> Result<Vec<u8>, ImageError> {
        let failed = |error: String| ImageError::Fetch {
            image: image.into(),
            error,
        };
        match resolve(image)? {
            Source::File(path) => {
                let path = self.allowed_file(image, path).await?;
                read_file(image, &path).await
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
    use std::sync::Arc;

    /// A file image is hashed once while it stays unchanged, and hashed again once it
    /// changes: a pod never runs the module a file held before it was rewritten.
    #[tokio::test]
    async fn a_file_image_is_hashed_again_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(&super::super::EngineOptions {
            cache_dir: dir.path().join("cache"),
            max_instances: 4,
        })
        .unwrap();
        let image = dir.path().join("app.wasm");
        std::fs::copy(shoal_examples::WEB_P2, &image).unwrap();
        let image = image.to_str().unwrap();
        let options = super::super::oci::PullOptions::default();

        // Written just now: not settled, so not remembered.
        let first = engine.load_with(image, &options).await.unwrap();
        assert_eq!(engine.known_digest(image).await.unwrap(), None);
        // Settled: remembered, and the next load takes the digest without reading.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        engine.load_with(image, &options).await.unwrap();
        let known = engine.known_digest(image).await.unwrap();
        assert_eq!(
            known.map(|d| format!("sha256:{d}")),
            Some(first.image_id.clone())
        );
        let again = engine.load_with(image, &options).await.unwrap();
        assert_eq!(again.image_id, first.image_id);
        assert!(Arc::ptr_eq(&again.program, &first.program));

        // Rewritten with other bytes: its stamp changed, so it is read and hashed again.
        std::fs::copy(shoal_examples::HELLO_P2, image).unwrap();
        assert_eq!(engine.known_digest(image).await.unwrap(), None);
        let changed = engine.load_with(image, &options).await.unwrap();
        assert_ne!(changed.image_id, first.image_id);
        let hello = hex::encode(Sha256::digest(
            std::fs::read(shoal_examples::HELLO_P2).unwrap(),
        ));
        assert_eq!(changed.image_id, format!("sha256:{hello}"));
    }

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
