//! Making a pod's volumes on this node: `emptyDir` (under the pod's directory, gone with the
//! pod), `configMap` and `secret` (their data written as read-only files, `items` mapping keys
//! to paths), `persistentVolumeClaim` (a directory per claim under the agent's data directory,
//! outliving pods), `hostPath` (only under a prefix the agent was started with) and
//! `projected` (tokens and the rest, in memory: [`super::projected`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodSpec, Volume};
use shoal_api::client::Client;

use super::config::ConfigError;
use super::projected::{Projection, TokenFile};
use super::sources::{present, select, Sources};
use crate::pod::volumes::{write_files, PreparedVolume};

/// Where volumes live on this node and what the node allows.
pub struct VolumeHost<'a> {
    pub pod_dir: &'a Path,
    pub claims_dir: &'a Path,
    pub host_path_allow: &'a [PathBuf],
    pub client: &'a Client,
    pub namespace: &'a str,
    /// Where this pod's projected volumes are written (in memory, removed with the pod).
    pub projected_dir: &'a Path,
    pub projection: Projection<'a>,
}

/// A pod's volumes, ready to mount, and the tokens in them to renew while it runs.
#[derive(Default)]
pub struct PreparedVolumes {
    pub volumes: HashMap<String, PreparedVolume>,
    pub tokens: Vec<TokenFile>,
}

/// Prepares every volume of `spec`; the error names the volume and the problem.
pub async fn prepare(
    spec: &PodSpec,
    host: &VolumeHost<'_>,
    sources: &mut Sources,
) -> Result<PreparedVolumes, ConfigError> {
    let mut prepared = PreparedVolumes::default();
    for volume in spec.volumes.iter().flatten() {
        let ready = prepare_one(volume, host, sources, &mut prepared.tokens)
            .await
            .map_err(|why| ConfigError::Volume {
                volume: volume.name.clone(),
                source: Box::new(why),
            })?;
        prepared.volumes.insert(volume.name.clone(), ready);
    }
    Ok(prepared)
}

async fn prepare_one(
    volume: &Volume,
    host: &VolumeHost<'_>,
    sources: &mut Sources,
    tokens: &mut Vec<TokenFile>,
) -> Result<PreparedVolume, ConfigError> {
    if let Some(projected) = &volume.projected {
        let dir = host.projected_dir.join(&volume.name);
        tokens.extend(super::projected::prepare(projected, &dir, &host.projection, sources).await?);
        return Ok(PreparedVolume {
            dir,
            read_only: true,
        });
    }
    let own_dir = host.pod_dir.join("volumes").join(&volume.name);
    if volume.empty_dir.is_some() {
        create_dir(&own_dir)?;
        return Ok(PreparedVolume {
            dir: own_dir,
            read_only: false,
        });
    }
    if let Some(source) = &volume.config_map {
        let data = sources.config_map(&source.name).await?;
        let data = present(data, "configmap", &source.name, source.optional)?;
        write_files(
            &own_dir,
            &select(&data, source.items.as_deref(), "configmap", &source.name)?,
        )?;
        return Ok(PreparedVolume {
            dir: own_dir,
            read_only: true,
        });
    }
    if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let data = sources.secret(&name).await?;
        let data = present(data, "secret", &name, source.optional)?;
        write_files(
            &own_dir,
            &select(&data, source.items.as_deref(), "secret", &name)?,
        )?;
        return Ok(PreparedVolume {
            dir: own_dir,
            read_only: true,
        });
    }
    if let Some(source) = &volume.persistent_volume_claim {
        let claims = host
            .client
            .api::<PersistentVolumeClaim>(Some(host.namespace));
        let found = claims
            .get_opt(&source.claim_name)
            .await
            .map_err(|source_error| ConfigError::Read {
                kind: "persistentvolumeclaim",
                name: source.claim_name.clone(),
                source: source_error,
            })?;
        if found.is_none() {
            return Err(ConfigError::NotFound {
                context: String::new(),
                kind: "persistentvolumeclaim",
                name: source.claim_name.clone(),
            });
        }
        let dir = host
            .claims_dir
            .join(host.namespace)
            .join(&source.claim_name);
        create_dir(&dir)?;
        return Ok(PreparedVolume {
            dir,
            read_only: source.read_only.unwrap_or(false),
        });
    }
    if let Some(source) = &volume.host_path {
        let path = PathBuf::from(&source.path);
        let allowed = path.is_absolute()
            && !path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            && host
                .host_path_allow
                .iter()
                .any(|prefix| path.starts_with(prefix));
        if !allowed {
            let prefixes: Vec<String> = host
                .host_path_allow
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(ConfigError::HostPathNotAllowed {
                path: source.path.clone(),
                allowed: if prefixes.is_empty() {
                    "none; start the agent with --allow-host-path".to_string()
                } else {
                    prefixes.join(", ")
                },
            });
        }
        if matches!(source.type_.as_deref(), Some("DirectoryOrCreate")) {
            create_dir(&path)?;
        }
        if !path.is_dir() {
            return Err(ConfigError::NotADirectory(source.path.clone()));
        }
        return Ok(PreparedVolume {
            dir: path,
            read_only: false,
        });
    }
    Err(ConfigError::UnsupportedVolume)
}

fn create_dir(path: &Path) -> Result<(), ConfigError> {
    std::fs::create_dir_all(path).map_err(|source| {
        ConfigError::Files(crate::pod::volumes::VolumeError::Create {
            path: path.to_path_buf(),
            source,
        })
    })
}
