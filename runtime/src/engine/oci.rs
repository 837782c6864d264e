//! Wasm images from OCI registries (crate `oci-client`, rustls with ring): a container image
//! such as `registry.example.com/team/app:1.2` or `…@sha256:…` names a Wasm artifact. Both
//! the CNCF Wasm layout (config `application/vnd.wasm.config.v0+json`, layer
//! `application/wasm`) and a plain single-layer artifact (as `oras push` makes one) are
//! accepted, if the layer is Wasm.
//!
//! Pull policy as on Kubernetes: `Always` asks the registry for the manifest every time (and
//! downloads the layer only when its digest is new to the node), `IfNotPresent` uses what this
//! node already resolved the reference to, `Never` only that. Each reference is pulled by one
//! caller at a time, and the engine compiles each layer digest once, so pods starting together
//! share one download and one compile. What a reference resolved to is kept in memory and in
//! the agent's data directory (`images.json`), and the compiled artifact on disk under its
//! digest, so after an agent restart `IfNotPresent` pods start without the registry, as a
//! kubelet's do from containerd's image store.
//!
//! Registries are reached over HTTPS (system roots plus the agent's `--image-ca`); plain HTTP
//! only for those listed in `--insecure-registry HOST:PORT`. Credentials come from the pod's
//! `imagePullSecrets`; a pull with credentials uses a client of its own, so one pod's
//! registry token is never another's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use sha2::{Digest, Sha256};

/// The layer media types that say "this is Wasm".
const WASM_LAYER_TYPES: [&str; 2] = [
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];
const WASM_MAGIC: &[u8] = b"\0asm";
/// The largest layer pulled unless the agent says otherwise.
pub const DEFAULT_MAX_LAYER_BYTES: u64 = 256 << 20;
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// When to ask the registry (`imagePullPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// Kubernetes' rule: the policy given, else `Always` for `:latest` or no tag (and no
    /// digest), else `IfNotPresent`.
    pub fn of(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => Self::Always,
            Some("Never") => Self::Never,
            Some("IfNotPresent") => Self::IfNotPresent,
            _ => match image.parse::<Reference>() {
                Ok(reference)
                    if reference.digest().is_none()
                        && reference.tag().is_none_or(|t| t == "latest") =>
                {
                    Self::Always
                }
                _ => Self::IfNotPresent,
            },
        }
    }
}

/// Registry credentials: (registry host[:port], user name, password).
pub type Credentials = Vec<(String, String, String)>;

/// How an image is pulled: the container's policy and the pod's pull secrets.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// `None`: Kubernetes' default for the reference.
    pub policy: Option<PullPolicy>,
    pub credentials: Credentials,
}

/// Why a pull failed; the message names the image's registry and what it said.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    Failed(String),
    /// `imagePullPolicy: Never` and the node does not have it.
    #[error("container image {0:?} is not present with pull policy of Never")]
    NeverPull(String),
}

/// A reference resolved on this node.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    /// `registry/repository@sha256:<manifest digest>` (the container status' `imageID`).
    pub image_id: String,
    /// The Wasm layer's sha256, hex (the engine's compile cache key).
    pub layer: String,
    pub size: u64,
}

/// What a pull brought: the resolution and, when it downloaded, the layer's bytes.
pub struct Pull {
    pub resolved: Resolved,
    pub bytes: Option<Vec<u8>>,
}

/// The node's registry settings and what it has resolved.
#[derive(Default)]
pub struct Registries {
    settings: OnceLock<RegistrySettings>,
    anonymous: OnceLock<oci_client::Client>,
    resolved: Mutex<HashMap<String, Resolved>>,
    /// One pull per reference at a time.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Set once by the agent (defaults otherwise).
#[derive(Clone, Debug)]
pub struct RegistrySettings {
    /// `HOST:PORT`s spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM file) trusted for registries.
    pub extra_ca: Option<PathBuf>,
    pub max_layer_bytes: u64,
    /// Where what references resolved to is kept across restarts (none: memory only).
    pub state_file: Option<PathBuf>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            extra_ca: None,
            max_layer_bytes: DEFAULT_MAX_LAYER_BYTES,
            state_file: None,
        }
    }
}

/// Whether an image string is a registry reference (not a path, URL or pushed digest). A
/// bare `name.wasm` is a relative file path gone wrong, not `docker.io/library/name.wasm`:
/// it gets the file path's error.
pub fn is_reference(image: &str) -> bool {
    let bare_file = !image.contains('/') && image.ends_with(".wasm");
    !bare_file
        && !image.starts_with('/')
        && !image.contains("://")
        && !image.starts_with("sha256:")
        && image.parse::<Reference>().is_ok()
}

/// The registry (`host[:port]`) an image reference names.
pub fn registry_of(image: &str) -> Result<String, String> {
    image
        .parse::<Reference>()
        .map(|r| r.resolve_registry().to_string())
        .map_err(|e| format!("{image:?} is not a valid image reference: {e}"))
}

impl Registries {
    /// Applies the agent's settings; call before the first pull.
    pub fn configure(&self, settings: RegistrySettings) {
        if let Some(path) = &settings.state_file {
            match std::fs::read(path) {
                Ok(json) => match serde_json::from_slice::<HashMap<String, Resolved>>(&json) {
                    Ok(known) => *self.resolved.lock().unwrap_or_else(|p| p.into_inner()) = known,
                    Err(e) => {
                        tracing::warn!("{}: ignored ({e}); images resolve again", path.display())
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("{}: {e}; images resolve again", path.display()),
            }
        }
        let _ = self.settings.set(settings);
    }

    /// Records what `image` resolved to, in memory and in the state file (atomically).
    fn remember(&self, image: &str, resolved: &Resolved) {
        let snapshot = {
            let mut known = self.resolved.lock().unwrap_or_else(|p| p.into_inner());
            known.insert(image.to_string(), resolved.clone());
            serde_json::to_vec(&*known)
        };
        let Some(path) = &self.settings().state_file else {
            return;
        };
        let written = snapshot.map_err(std::io::Error::other).and_then(|json| {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, json)?;
            std::fs::rename(&partial, path)
        });
        if let Err(e) = written {
            tracing::warn!("{}: {e}", path.display());
        }
    }

    fn settings(&self) -> &RegistrySettings {
        self.settings.get_or_init(RegistrySettings::default)
    }

    fn client_config(&self) -> Result<ClientConfig, String> {
        let settings = self.settings();
        let mut extra = Vec::new();
        if let Some(path) = &settings.extra_ca {
            let pem =
                std::fs::read(path).map_err(|e| format!("the image CA {}: {e}", path.display()))?;
            extra.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem,
            });
        }
        Ok(ClientConfig {
            protocol: if settings.insecure.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(settings.insecure.clone())
            },
            extra_root_certificates: extra,
            platform_resolver: Some(Box::new(wasm_platform)),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        })
    }

    fn client_for(&self, auth: &RegistryAuth) -> Result<oci_client::Client, String> {
        if matches!(auth, RegistryAuth::Anonymous) {
            if let Some(client) = self.anonymous.get() {
                return Ok(client.clone());
            }
            let client = self.new_client()?;
            return Ok(self.anonymous.get_or_init(|| client).clone());
        }
        self.new_client()
    }

    fn new_client(&self) -> Result<oci_client::Client, String> {
        // reqwest (under oci-client) takes the process' default rustls provider: ring, as
        // everywhere in Shoal. Installing it again is refused, harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        oci_client::Client::try_from(self.client_config()?)
            .map_err(|e| format!("setting up the registry client: {e}"))
    }

    /// Resolves `image` by `options.policy`; downloads the layer unless `known(layer)` says
    /// the node has it compiled already.
    pub async fn pull(
        &self,
        image: &str,
        options: &PullOptions,
        known: impl Fn(&str) -> bool,
    ) -> Result<Pull, PullError> {
        let failed = |why: String| PullError::Failed(format!("pulling {image:?}: {why}"));
        let reference: Reference = image
            .parse()
            .map_err(|e| failed(format!("not a valid image reference: {e}")))?;
        let policy = options
            .policy
            .unwrap_or_else(|| PullPolicy::of(None, image));
        let gate = self
            .gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(image.to_string())
            .or_default()
            .clone();
        let _pulling = gate.lock().await;
        let have = self
            .resolved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(image)
            .cloned()
            .filter(|r| known(&r.layer));
        match (policy, have) {
            (PullPolicy::IfNotPresent | PullPolicy::Never, Some(resolved)) => {
                return Ok(Pull {
                    resolved,
                    bytes: None,
                })
            }
            (PullPolicy::Never, None) => return Err(PullError::NeverPull(image.into())),
            _ => {}
        }
        let auth = auth_for(&reference, &options.credentials);
        let client = self.client_for(&auth).map_err(failed)?;
        let work = async {
            let (manifest, digest) = client
                .pull_image_manifest(&reference, &auth)
                .await
                .map_err(|e| {
                    failed(format!(
                        "the registry {}: {e}",
                        reference.resolve_registry()
                    ))
                })?;
            if let Some(asked) = reference.digest() {
                if asked != digest {
                    return Err(failed(format!(
                        "the registry's manifest has digest {digest}, not the {asked} asked for"
                    )));
                }
            }
            let layer = wasm_layer(&manifest).map_err(&failed)?;
            let max = self.settings().max_layer_bytes;
            let size = u64::try_from(layer.size).unwrap_or(0);
            if size > max {
                return Err(failed(format!(
                    "its layer is {size} bytes, more than the {max} allowed (the agent's --max-image-size)"
                )));
            }
            let hex = layer
                .digest
                .strip_prefix("sha256:")
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| {
                    failed(format!(
                        "its layer's digest {:?} is not a sha256 digest",
                        layer.digest
                    ))
                })?
                .to_ascii_lowercase();
            let resolved = Resolved {
                image_id: by_digest(&reference, &digest),
                layer: hex.clone(),
                size,
            };
            if known(&hex) {
                return Ok(Pull {
                    resolved,
                    bytes: None,
                });
            }
            let mut stream = client
                .pull_blob_stream(&reference, layer)
                .await
                .map_err(|e| failed(format!("downloading its layer: {e}")))?;
            let mut bytes = Vec::with_capacity(usize::try_from(size.min(max)).unwrap_or(0));
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| failed(format!("downloading its layer: {e}")))?;
                if (bytes.len() + chunk.len()) as u64 > max {
                    return Err(failed(format!(
                        "its layer is larger than the {max} bytes allowed (the agent's --max-image-size)"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            let actual = hex::encode(Sha256::digest(&bytes));
            if actual != hex {
                return Err(failed(format!(
                    "the downloaded layer's digest is sha256:{actual}, not the sha256:{hex} its manifest names"
                )));
            }
            if !bytes.starts_with(WASM_MAGIC) {
                return Err(failed(
                    "its layer is not WebAssembly (no \\0asm header)".into(),
                ));
            }
            Ok(Pull {
                resolved,
                bytes: Some(bytes),
            })
        };
        let pull = tokio::time::timeout(PULL_TIMEOUT, work)
            .await
            .map_err(|_| failed(format!("no answer within {PULL_TIMEOUT:?}")))??;
        self.remember(image, &pull.resolved);
        Ok(pull)
    }
}

/// The config media type of the CNCF Wasm OCI layout.
const WASM_CONFIG_TYPE: &str = "application/vnd.wasm.config.v0+json";

/// Pushes `wasm` (a module or component) to `image` as a Wasm OCI artifact in the CNCF
/// layout; returns the reference by digest (`registry/repo@sha256:…`).
pub async fn push(
    wasm: Vec<u8>,
    image: &str,
    credentials: &Credentials,
    settings: &RegistrySettings,
) -> Result<String, PullError> {
    let failed = |why: String| PullError::Failed(format!("pushing to {image:?}: {why}"));
    let reference: Reference = image
        .parse()
        .map_err(|e| failed(format!("not a valid image reference: {e}")))?;
    if !wasm.starts_with(WASM_MAGIC) || wasm.len() < 8 {
        return Err(failed(
            "the file is not WebAssembly (no \\0asm header)".into(),
        ));
    }
    // A component's version field is 0x0d (layer 1); a core module's is 1.
    let os = if wasm[4] == 0x0d { "wasip2" } else { "wasip1" };
    let layer_digest = format!("sha256:{}", hex::encode(Sha256::digest(&wasm)));
    let config = serde_json::json!({
        "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "architecture": "wasm",
        "os": os,
        "layerDigests": [layer_digest],
    });
    let config = oci_client::client::Config::new(
        bytes::Bytes::from(config.to_string()),
        WASM_CONFIG_TYPE.into(),
        None,
    );
    let layer = oci_client::client::ImageLayer::new(
        bytes::Bytes::from(wasm),
        WASM_LAYER_TYPES[0].into(),
        None,
    );
    let registries = Registries::default();
    registries.configure(settings.clone());
    let auth = auth_for(&reference, credentials);
    let client = registries.client_for(&auth).map_err(&failed)?;
    let work = async {
        client
            .push(&reference, &[layer], config, &auth, None)
            .await
            .map_err(|e| {
                failed(format!(
                    "the registry {}: {e}",
                    reference.resolve_registry()
                ))
            })?;
        client
            .fetch_manifest_digest(&reference, &auth)
            .await
            .map_err(|e| failed(format!("reading back the manifest's digest: {e}")))
    };
    let digest = tokio::time::timeout(PULL_TIMEOUT, work)
        .await
        .map_err(|_| failed(format!("no answer within {PULL_TIMEOUT:?}")))??;
    Ok(by_digest(&reference, &digest))
}

/// `registry/repository@digest`: how Kubernetes shows a resolved image.
fn by_digest(reference: &Reference, digest: &str) -> String {
    format!(
        "{}/{}@{digest}",
        reference.resolve_registry(),
        reference.repository()
    )
}

/// The one Wasm layer of a manifest: the layer with a Wasm media type, or the only layer of
/// a plain artifact (checked for the Wasm header once downloaded).
fn wasm_layer(manifest: &OciImageManifest) -> Result<&OciDescriptor, String> {
    let typed: Vec<&OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|l| WASM_LAYER_TYPES.contains(&l.media_type.as_str()))
        .collect();
    match (typed.as_slice(), manifest.layers.as_slice()) {
        ([one], _) => Ok(one),
        ([], [only]) if !only.media_type.contains("tar") && !only.media_type.contains("gzip") => {
            Ok(only)
        }
        ([], [only]) if only.media_type == "application/vnd.oci.image.layer.v1.tar" => {
            // `oras push file.wasm` labels the raw file so; the header check decides.
            Ok(only)
        }
        ([], layers) => Err(format!(
            "it is not a Wasm artifact: its manifest (config {:?}) has {} layer(s) of types {:?}, none of them application/wasm",
            manifest.config.media_type,
            layers.len(),
            layers.iter().map(|l| l.media_type.as_str()).collect::<Vec<_>>()
        )),
        (many, _) => Err(format!(
            "its manifest has {} Wasm layers; a Wasm image has one",
            many.len()
        )),
    }
}

/// From an image index, the Wasm entry (`wasm` architecture or a `wasi*` OS), else the
/// first.
fn wasm_platform(entries: &[oci_client::manifest::ImageIndexEntry]) -> Option<String> {
    entries
        .iter()
        .find(|e| {
            e.platform.as_ref().is_some_and(|p| {
                let (arch, os) = (p.architecture.to_string(), p.os.to_string());
                arch == "wasm" || os.starts_with("wasi")
            })
        })
        .or_else(|| entries.first())
        .map(|e| e.digest.clone())
}

/// The credentials for the reference's registry, if the pod has them.
fn auth_for(reference: &Reference, credentials: &Credentials) -> RegistryAuth {
    let registry = reference.resolve_registry();
    credentials
        .iter()
        .find(|(host, _, _)| {
            host == registry || (registry == "index.docker.io" && host == "docker.io")
        })
        .map_or(RegistryAuth::Anonymous, |(_, user, password)| {
            RegistryAuth::Basic(user.clone(), password.clone())
        })
}

/// The registries and credentials of a `kubernetes.io/dockerconfigjson` Secret's
/// `.dockerconfigjson` (`auths`: `username`/`password`, or `auth` = base64 of
/// `user:password`); keys are reduced to `host[:port]` (`https://index.docker.io/v1/` →
/// `index.docker.io`).
pub fn docker_config_credentials(json: &[u8]) -> Result<Credentials, String> {
    use base64::Engine as _;
    let config: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let auths = config
        .get("auths")
        .and_then(serde_json::Value::as_object)
        .ok_or("no \"auths\" object")?;
    let mut credentials = Vec::new();
    for (key, entry) in auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let text = |field: &str| entry.get(field).and_then(serde_json::Value::as_str);
        let (user, password) = match (text("username"), text("password"), text("auth")) {
            (Some(user), Some(password), _) => (user.to_string(), password.to_string()),
            (_, _, Some(auth)) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth)
                    .map_err(|e| format!("{key}: auth is not base64: {e}"))?;
                let decoded =
                    String::from_utf8(decoded).map_err(|_| format!("{key}: auth is not text"))?;
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| format!("{key}: auth is not user:password"))?;
                (user.to_string(), password.to_string())
            }
            _ => return Err(format!("{key}: neither username/password nor auth")),
        };
        credentials.push((host, user, password));
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_default_pull_policies() {
        assert_eq!(PullPolicy::of(None, "r.io/a/b"), PullPolicy::Always);
        assert_eq!(PullPolicy::of(None, "r.io/a/b:latest"), PullPolicy::Always);
        assert_eq!(
            PullPolicy::of(None, "r.io/a/b:1.2"),
            PullPolicy::IfNotPresent
        );
        let pinned = format!("r.io/a/b@sha256:{}", "a".repeat(64));
        assert_eq!(PullPolicy::of(None, &pinned), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::of(Some("Never"), "r.io/a/b"), PullPolicy::Never);
    }

    #[test]
    fn references_are_told_from_paths_urls_and_pushed_digests() {
        assert!(is_reference("127.0.0.1:5000/team/kv:1"));
        assert!(is_reference(&format!(
            "ghcr.io/org/app@sha256:{}",
            "b".repeat(64)
        )));
        for not in [
            "/x/y.wasm",
            "file:///x.wasm",
            "http://h/x.wasm",
            "sha256:abc",
            "two words",
            "hello.wasm",
        ] {
            assert!(!is_reference(not), "{not}");
        }
    }

    fn manifest(config: &str, layers: &[&str]) -> OciImageManifest {
        let descriptor = |media_type: &str| OciDescriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{}", "c".repeat(64)),
            size: 10,
            ..Default::default()
        };
        OciImageManifest {
            config: descriptor(config),
            layers: layers.iter().map(|t| descriptor(t)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_wasm_layer_is_found_or_the_manifest_is_named() {
        let cncf = manifest(WASM_CONFIG_TYPE, &["application/wasm"]);
        assert_eq!(wasm_layer(&cncf).unwrap().media_type, "application/wasm");
        let oras = manifest(
            "application/vnd.oci.empty.v1+json",
            &["application/vnd.oci.image.layer.v1.tar"],
        );
        assert!(
            wasm_layer(&oras).is_ok(),
            "a single raw layer: the header decides"
        );
        let container = manifest(
            "application/vnd.oci.image.config.v1+json",
            &[
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ],
        );
        let why = wasm_layer(&container).unwrap_err();
        assert!(
            why.contains("not a Wasm artifact") && why.contains("tar+gzip"),
            "{why}"
        );
        let gzip = manifest(
            "application/vnd.oci.image.config.v1+json",
            &["application/vnd.oci.image.layer.v1.tar+gzip"],
        );
        assert!(wasm_layer(&gzip).is_err());
        let two = manifest(WASM_CONFIG_TYPE, &["application/wasm", "application/wasm"]);
        assert!(wasm_layer(&two).unwrap_err().contains("2 Wasm layers"));
    }

    /// What a node resolved survives a restart: an `IfNotPresent` pull of a known reference
    /// needs no registry (this one is unreachable), `Always` does.
    #[tokio::test]
    async fn resolved_references_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let settings = RegistrySettings {
            state_file: Some(dir.path().join("images.json")),
            ..Default::default()
        };
        let image = "127.0.0.1:1/team/app:1";
        let resolved = Resolved {
            image_id: format!("127.0.0.1:1/team/app@sha256:{}", "d".repeat(64)),
            layer: "e".repeat(64),
            size: 42,
        };
        let before = Registries::default();
        before.configure(settings.clone());
        before.remember(image, &resolved);
        let after = Registries::default();
        after.configure(settings);
        let cached = PullOptions {
            policy: Some(PullPolicy::IfNotPresent),
            ..Default::default()
        };
        let pull = after.pull(image, &cached, |_| true).await.unwrap();
        assert_eq!(pull.resolved.image_id, resolved.image_id);
        assert!(pull.bytes.is_none());
        // Known, but its program is gone: the registry is asked (and is unreachable).
        assert!(after.pull(image, &cached, |_| false).await.is_err());
        let always = PullOptions {
            policy: Some(PullPolicy::Always),
            ..Default::default()
        };
        let error = after.pull(image, &always, |_| true).await.err().unwrap();
        assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
    }

    #[test]
    fn docker_config_secrets_give_credentials() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "127.0.0.1:5000": {"username": "u", "password": "p:w"}}}"#;
        let mut found = docker_config_credentials(json).unwrap();
        found.sort();
        assert_eq!(
            found,
            vec![
                ("127.0.0.1:5000".into(), "u".into(), "p:w".into()),
                ("index.docker.io".into(), "user".into(), "pass".into()),
            ]
        );
        for bad in [&b"[]"[..], br#"{"auths": {"x": {}}}"#, b"{"] {
            assert!(docker_config_credentials(bad).is_err());
        }
    }
}
