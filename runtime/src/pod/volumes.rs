//! A pod's volumes as its containers see them: each volume is a directory on the node, and
//! each `volumeMount` a WASI preopen of it. Which directory a volume is (and what is written
//! into it) is decided by the agent (`agent::volumes`); this module only maps and writes.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::Container;

use super::run::Mount;

/// A volume made ready on the node.
#[derive(Clone, Debug)]
pub struct PreparedVolume {
    pub dir: PathBuf,
    /// ConfigMap and Secret volumes are read-only whatever the mount says.
    pub read_only: bool,
}

/// Why a volume cannot be laid out or mounted; each variant names the volume, mount or path.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volumeMount {0:?} names no volume of the pod")]
    NoSuchVolume(String),
    #[error("{what} {path:?} must be a relative path without '..'")]
    LeavesVolume { what: String, path: String },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn create_dir(path: &Path) -> Result<(), VolumeError> {
    std::fs::create_dir_all(path).map_err(|source| VolumeError::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// The preopens of one container, from its `volumeMounts`.
pub fn mounts(
    container: &Container,
    volumes: &HashMap<String, PreparedVolume>,
) -> Result<Vec<Mount>, VolumeError> {
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(volume) = volumes.get(&mount.name) else {
            return Err(VolumeError::NoSuchVolume(mount.name.clone()));
        };
        let mut host_path = volume.dir.clone();
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host_path = host_path.join(relative(sub).ok_or_else(|| VolumeError::LeavesVolume {
                what: format!("volumeMount {:?}: subPath", mount.name),
                path: sub.to_string(),
            })?);
            create_dir(&host_path)?;
        }
        mounts.push(Mount {
            host_path,
            guest_path: mount.mount_path.clone(),
            read_only: volume.read_only || mount.read_only.unwrap_or(false),
        });
    }
    Ok(mounts)
}

/// Writes `files` (relative path, content) under `dir`, refusing paths that leave it.
pub fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), VolumeError> {
    create_dir(dir)?;
    for (path, content) in files {
        let target = dir.join(relative(path).ok_or_else(|| VolumeError::LeavesVolume {
            what: "item path".into(),
            path: path.clone(),
        })?);
        if let Some(parent) = target.parent() {
            create_dir(parent)?;
        }
        std::fs::write(&target, content).map_err(|source| VolumeError::Write {
            path: target.clone(),
            source,
        })?;
    }
    Ok(())
}

/// A path that stays inside the directory it is joined to.
fn relative(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    (path.components().all(|c| matches!(c, Component::Normal(_)))
        && path.components().next().is_some())
    .then(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_follow_volume_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let container: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "volumeMounts": [
                {"name": "scratch", "mountPath": "/data", "readOnly": true},
                {"name": "config", "mountPath": "/etc/app"},
                {"name": "scratch", "mountPath": "/sub", "subPath": "inner"}
            ]
        }))
        .unwrap();
        let volumes = HashMap::from([
            (
                "scratch".to_string(),
                PreparedVolume {
                    dir: dir.path().join("s"),
                    read_only: false,
                },
            ),
            (
                "config".to_string(),
                PreparedVolume {
                    dir: dir.path().join("c"),
                    read_only: true,
                },
            ),
        ]);
        let mounts = mounts(&container, &volumes).unwrap();
        assert_eq!(mounts[0].guest_path, "/data");
        assert!(mounts[0].read_only);
        assert!(mounts[1].read_only, "a read-only volume stays read-only");
        assert!(mounts[2].host_path.ends_with("s/inner") && mounts[2].host_path.is_dir());
        let missing: Container = serde_json::from_value(
            serde_json::json!({"name": "c", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}),
        )
        .unwrap();
        assert!(super::mounts(&missing, &volumes)
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    #[test]
    fn files_cannot_leave_their_volume() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path(), &[("a/b.txt".into(), b"x".to_vec())]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b.txt")).unwrap(), b"x");
        for bad in ["../escape", "/etc/passwd", "a/../../b", ""] {
            assert!(
                write_files(dir.path(), &[(bad.into(), b"x".to_vec())]).is_err(),
                "{bad}"
            );
        }
    }
}
