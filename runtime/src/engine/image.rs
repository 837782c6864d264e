//! Images: an image reference becomes a [`Program`], pre-instantiated and ready to start.
//! Bytes are fetched, hashed (sha256), compiled once per engine, and the compiled artifact is
//! kept on disk under the engine's cache directory keyed by digest, so a restart of a pod or
//! of the agent deserializes (an mmap) instead of compiling.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Module, Precompiled};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::{Engine, P1Host, P2Host};

/// A guest ready to instantiate.
pub enum Program {
    /// A WASI preview 1 core module, run through `_start`.
    Module(wasmtime::InstancePre<P1Host>),
    /// A WASI preview 2 command component, run through `wasi:cli/run`.
    Component(CommandPre<P2Host>),
    /// A component exporting `wasi:http/incoming-handler`: an HTTP workload, instantiated
    /// afresh for every request.
    Http(ProxyPre<P2Host>),
}

impl Program {
    pub fn is_http(&self) -> bool {
        matches!(self, Self::Http(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {image:?}: no such file {path:?}")]
    NotFound { image: String, path: PathBuf },
    #[error("image {image:?}: cannot read {path:?}: {error}")]
    Unreadable {
        image: String,
        path: PathBuf,
        error: String,
    },
    #[error("image {image:?}: {why}")]
    Unsupported { image: String, why: String },
    #[error("image {image:?}: file images are allowed only under {allowed:?} (the agent's --allow-image-dir)")]
    NotAllowed {
        image: String,
        allowed: Vec<PathBuf>,
    },
    #[error("image {image:?}: fetching it failed: {error}")]
    Fetch { image: String, error: String },
    #[error(transparent)]
    Pull(#[from] super::oci::PullError),
    #[error("image {image:?} is not a WebAssembly module or component: {why}")]
    NotWasm { image: String, why: String },
    #[error("image {image:?} failed to compile: {error}")]
    Compile { image: String, error: String },
    #[error("image {image:?} cannot be linked: {error}")]
    Link { image: String, error: String },
    #[error("image {image:?}: compiled artifact cache: {error}")]
    Cache { image: String, error: String },
}

impl ImageError {
    /// The container waiting reason Kubernetes users know for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. }
            | Self::Unreadable { .. }
            | Self::Unsupported { .. }
            | Self::NotAllowed { .. }
            | Self::Fetch { .. }
            | Self::Pull(super::oci::PullError::Failed(_)) => "ErrImagePull",
            Self::Pull(super::oci::PullError::NeverPull(_)) => "ErrImageNeverPull",
            Self::NotWasm { .. }
            | Self::Compile { .. }
            | Self::Link { .. }
            | Self::Cache { .. } => "CreateContainerError",
        }
    }
}

/// What this node holds of one module (by the sha256 of its bytes): what the pod page of
/// the dashboard shows beside a container's image digest.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRecord {
    /// `sha256:<hex>` of the Wasm bytes.
    pub digest: String,
    /// `module` (a WASI preview 1 core module), `command` or `http` (a component).
    pub kind: &'static str,
    /// The Wasm bytes, when this node had them (not when it loaded only its artifact).
    pub wasm_bytes: Option<u64>,
    /// The compiled artifact's bytes on disk.
    pub compiled_bytes: Option<u64>,
    /// `compiled` here, or `cached` (the artifact compiled earlier, loaded from disk).
    pub compile_state: &'static str,
    /// How long compiling (or loading the artifact) took, in milliseconds.
    pub compile_millis: f64,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// The images (as pods name them) that resolved to it, and their `imageID`s.
    pub images: std::collections::BTreeSet<String>,
    pub image_ids: std::collections::BTreeSet<String>,
}

/// A loaded image.
pub struct Loaded {
    pub program: Arc<Program>,
    /// What the container status shows as `imageID`: `registry/repo@sha256:…` for a
    /// registry image, `sha256:<content>` otherwise.
    pub image_id: String,
    /// The bytes downloaded from a registry for it, if it was pulled now.
    pub downloaded: Option<u64>,
}

impl Engine {
    /// Fetches, verifies, compiles (or loads from the cache) and links `image`.
    pub async fn load(self: &Arc<Self>, image: &str) -> Result<Arc<Program>, ImageError> {
        Ok(self
            .load_with(image, &super::oci::PullOptions::default())
            .await?
            .program)
    }

    /// [`Engine::load`] with a pull policy and registry credentials; also says what the
    /// image resolved to and whether it was downloaded.
    pub async fn load_with(
        self: &Arc<Self>,
        image: &str,
        options: &super::oci::PullOptions,
    ) -> Result<Loaded, ImageError> {
        if super::oci::is_reference(image) {
            let pull = self
                .registries
                .pull(image, options, |digest| self.has_program(digest))
                .await?;
            let resolved = pull.resolved;
            let (program, downloaded) = match pull.bytes {
                Some(bytes) => (
                    self.compile_once(image, resolved.layer.clone(), Some(bytes))
                        .await?,
                    Some(resolved.size),
                ),
                // In memory, or the compiled artifact on disk (after a restart).
                None => match self.compile_once(image, resolved.layer.clone(), None).await {
                    Ok(program) => (program, None),
                    // The artifact went away since: download again.
                    Err(_) => {
                        let again = super::oci::PullOptions {
                            policy: Some(super::oci::PullPolicy::Always),
                            ..options.clone()
                        };
                        let pull = self.registries.pull(image, &again, |_| false).await?;
                        (
                            self.compile_once(image, resolved.layer.clone(), pull.bytes)
                                .await?,
                            Some(resolved.size),
                        )
                    }
                },
            };
            self.note_image(&resolved.layer, image, &resolved.image_id);
            return Ok(Loaded {
                program,
                image_id: resolved.image_id,
                downloaded,
            });
        }
        // A module already loaded needs neither its bytes nor their hash again.
        if let Some(digest) = self.known_digest(image).await? {
            if let Some(program) = self.cached(&digest) {
                let image_id = format!("sha256:{digest}");
                self.note_image(&digest, image, &image_id);
                return Ok(Loaded {
                    program,
                    image_id,
                    downloaded: None,
                });
            }
        }
        let fetched = self.fetch_stamped(image).await?;
        let digest = hex::encode(Sha256::digest(&fetched.bytes));
        self.remember_digest(fetched.file, &digest);
        let program = self
            .compile_once(image, digest.clone(), Some(fetched.bytes))
            .await?;
        let image_id = format!("sha256:{digest}");
        self.note_image(&digest, image, &image_id);
        Ok(Loaded {
            program,
            image_id,
            downloaded: None,
        })
    }

    /// Records that `image` (whose `imageID` is `image_id`) is the module of `digest`.
    fn note_image(&self, digest: &str, image: &str, image_id: &str) {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = modules.get_mut(digest) {
            // Bounded: a module named by endless references keeps its first few.
            if record.images.len() < 16 {
                record.images.insert(image.to_string());
                record.image_ids.insert(image_id.to_string());
            }
        }
    }

    /// The program of bytes built into the binary (the toolbox), named `image` in errors;
    /// `digest` is their sha256.
    pub async fn load_embedded(
        self: &Arc<Self>,
        image: &str,
        digest: &str,
        bytes: &'static [u8],
    ) -> Result<Arc<Program>, ImageError> {
        if let Some(program) = self.cached(digest) {
            return Ok(program);
        }
        self.compile_once(image, digest.to_string(), Some(bytes.to_vec()))
            .await
    }

    /// The program of `bytes` (whose sha256 is `digest`): cached, or compiled once however
    /// many ask at the same time. Without bytes, only from the compiled artifact on disk.
    async fn compile_once(
        self: &Arc<Self>,
        image: &str,
        digest: String,
        bytes: Option<Vec<u8>>,
    ) -> Result<Arc<Program>, ImageError> {
        if let Some(program) = self.cached(&digest) {
            return Ok(program);
        }
        // One compile per digest: concurrent loads of a new image wait for the first.
        let gate = self
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.clone())
            .or_default()
            .clone();
        let _compiling = gate.lock().await;
        if let Some(program) = self.cached(&digest) {
            return Ok(program);
        }
        let engine = self.clone();
        let (image_owned, digest_owned) = (image.to_string(), digest.clone());
        let program = tokio::task::spawn_blocking(move || {
            engine.compile_cached(&image_owned, &digest_owned, bytes.as_deref())
        })
        .await
        .map_err(|e| ImageError::Compile {
            image: image.into(),
            error: format!("the compiler stopped: {e}"),
        })??;
        let program = Arc::new(program);
        self.programs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), program.clone());
        self.compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest);
        Ok(program)
    }

    /// Whether the program of `digest` is loaded, or compiled on disk.
    fn has_program(&self, digest: &str) -> bool {
        self.cached(digest).is_some()
            || wasmtime::Engine::detect_precompiled_file(
                self.cache_dir.join(format!("{digest}.cwasm")),
            )
            .ok()
            .flatten()
            .is_some()
    }

    fn cached(&self, digest: &str) -> Option<Arc<Program>> {
        self.programs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    fn compile_cached(
        &self,
        image: &str,
        digest: &str,
        bytes: Option<&[u8]>,
    ) -> Result<Program, ImageError> {
        let cached = self.cache_dir.join(format!("{digest}.cwasm"));
        let cache_error = |e: &dyn std::fmt::Display| ImageError::Cache {
            image: image.into(),
            error: e.to_string(),
        };
        let on_disk = wasmtime::Engine::detect_precompiled_file(&cached)
            .ok()
            .flatten();
        let flavour = match bytes {
            Some(bytes) => detect_flavour(bytes).map_err(|why| ImageError::NotWasm {
                image: image.into(),
                why: why.to_string(),
            })?,
            None => on_disk.ok_or_else(|| cache_error(&"no compiled artifact on disk"))?,
        };
        let began = std::time::Instant::now();
        let compiles = bytes.is_some() && on_disk != Some(flavour);
        if let (Some(bytes), true) = (bytes, compiles) {
            let compiled = match flavour {
                Precompiled::Component => self.wasmtime.precompile_component(bytes),
                Precompiled::Module => self.wasmtime.precompile_module(bytes),
            }
            .map_err(|e| ImageError::Compile {
                image: image.into(),
                error: format!("{e:#}"),
            })?;
            let partial = cached.with_extension(format!("partial-{}", std::process::id()));
            std::fs::write(&partial, &compiled).map_err(|e| cache_error(&e))?;
            std::fs::rename(&partial, &cached).map_err(|e| cache_error(&e))?;
        }
        let record = |kind: &'static str| ModuleRecord {
            digest: format!("sha256:{digest}"),
            kind,
            wasm_bytes: bytes.map(|b| b.len() as u64),
            compiled_bytes: std::fs::metadata(&cached).ok().map(|m| m.len()),
            compile_state: if compiles { "compiled" } else { "cached" },
            compile_millis: began.elapsed().as_secs_f64() * 1000.0,
            loaded_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            images: Default::default(),
            image_ids: Default::default(),
        };
        let program = self.link(image, flavour, &cached)?;
        let kind = match &program {
            Program::Module(_) => "module",
            Program::Component(_) => "command",
            Program::Http(_) => "http",
        };
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_string(), record(kind));
        Ok(program)
    }

    /// The program of the compiled artifact at `cached`, linked.
    fn link(
        &self,
        image: &str,
        flavour: Precompiled,
        cached: &std::path::Path,
    ) -> Result<Program, ImageError> {
        let cache_error = |e: &dyn std::fmt::Display| ImageError::Cache {
            image: image.into(),
            error: e.to_string(),
        };
        let link_error = |e: wasmtime::Error| ImageError::Link {
            image: image.into(),
            error: format!("{e:#}"),
        };
        // SAFETY: the file was written by this engine's own `precompile_*` into the agent's
        // private cache directory (named by the engine's compatibility hash), and is replaced
        // only by atomic renames, so it is a trusted artifact of this engine.
        match flavour {
            Precompiled::Module => {
                let module = unsafe { Module::deserialize_file(&self.wasmtime, cached) }
                    .map_err(|e| cache_error(&e))?;
                Ok(Program::Module(
                    self.p1_linker
                        .instantiate_pre(&module)
                        .map_err(link_error)?,
                ))
            }
            Precompiled::Component => {
                let component = unsafe { Component::deserialize_file(&self.wasmtime, cached) }
                    .map_err(|e| cache_error(&e))?;
                let pre = self
                    .p2_linker
                    .instantiate_pre(&component)
                    .map_err(link_error)?;
                if let Ok(proxy) = ProxyPre::new(pre.clone()) {
                    return Ok(Program::Http(proxy));
                }
                let command = CommandPre::new(pre).map_err(|_| ImageError::Link {
                    image: image.into(),
                    error: "the component exports neither wasi:cli/run (a command) nor wasi:http/incoming-handler (an HTTP workload)".into(),
                })?;
                Ok(Program::Component(command))
            }
        }
    }
}

/// Tells a core module from a component by the binary's preamble.
fn detect_flavour(bytes: &[u8]) -> Result<Precompiled, NotWasm> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(NotWasm::NoMagic);
    }
    match (bytes[4], bytes[5], bytes[6], bytes[7]) {
        (1, 0, 0, 0) => Ok(Precompiled::Module),
        (_, _, 1, 0) => Ok(Precompiled::Component),
        (a, b, c, d) => Err(NotWasm::UnknownVersion([a, b, c, d])),
    }
}

/// Why bytes are not WebAssembly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NotWasm {
    #[error("the file does not start with the \\0asm magic number")]
    NoMagic,
    #[error("unknown WebAssembly version/layer {:02x}{:02x}{:02x}{:02x}", .0[0], .0[1], .0[2], .0[3])]
    UnknownVersion([u8; 4]),
}

/// A directory name for this engine's compiled artifacts: artifacts of another wasmtime
/// version or configuration never load here.
pub(super) fn engine_key(engine: &wasmtime::Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavours() {
        assert_eq!(
            detect_flavour(b"\0asm\x01\0\0\0rest").unwrap(),
            Precompiled::Module
        );
        assert_eq!(
            detect_flavour(b"\0asm\x0d\0\x01\0rest").unwrap(),
            Precompiled::Component
        );
        assert!(detect_flavour(b"#!/bin/sh\necho")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        assert!(detect_flavour(b"\0as").is_err());
    }
}
