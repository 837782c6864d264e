//! Why a pod's configuration (its volumes, environment and limits) cannot be made on this
//! node: each becomes its container's `CreateContainerConfigError` message, and the worker
//! retries, since most heal when the missing ConfigMap, Secret or claim appears.

use crate::pod::volumes::VolumeError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {kind} {name:?}: {source}")]
    Read {
        kind: &'static str,
        name: String,
        source: shoal_api::client::Error,
    },
    /// `context` says where the reference came from (`envFrom: `, or nothing for a volume).
    #[error("{context}{kind} {name:?} not found")]
    NotFound {
        context: String,
        kind: &'static str,
        name: String,
    },
    #[error("{context}{kind} {name:?} has no key {key:?}")]
    NoKey {
        context: String,
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("env {var:?}: {what} is not supported")]
    Unsupported { var: String, what: String },
    #[error("resources.limits.memory {0:?} is not a valid quantity")]
    MemoryLimit(String),
    #[error("volume {volume:?}: {source}")]
    Volume {
        volume: String,
        source: Box<ConfigError>,
    },
    #[error(transparent)]
    Files(#[from] VolumeError),
    #[error("hostPath {path:?} is not allowed on this node (allowed prefixes: {allowed})")]
    HostPathNotAllowed { path: String, allowed: String },
    #[error("hostPath {0:?} is not a directory")]
    NotADirectory(String),
    #[error("this volume type is not supported (supported: emptyDir, configMap, secret, persistentVolumeClaim, hostPath, projected)")]
    UnsupportedVolume,
    /// A projected volume's source that cannot be made (the reason names it).
    #[error("projected: {0}")]
    Projection(String),
}
