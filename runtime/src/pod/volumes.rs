//! A pod's volumes on the node's disk, and each container's view of them as WASI preopens.
//! `emptyDir` lives under the pod's directory and goes with the pod. The other volume kinds
//! (persistentVolumeClaim, configMap, secret, hostPath) come with the pods issue; until then a
//! pod that asks for one gets a clear error instead of a silently missing mount.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::run::Mount;

/// Creates the pod's volumes under `pod_dir` and returns their host directories by name.
pub fn prepare(spec: &PodSpec, pod_dir: &Path) -> Result<HashMap<String, PathBuf>, String> {
    let mut volumes = HashMap::new();
    for volume in spec.volumes.iter().flatten() {
        if volume.empty_dir.is_none() {
            let kind = describe_kind(volume);
            return Err(format!(
                "volume {:?}: {kind} volumes are not supported by this agent yet (only emptyDir)",
                volume.name
            ));
        }
        let dir = pod_dir.join("volumes").join(&volume.name);
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "volume {:?}: cannot create {}: {e}",
                volume.name,
                dir.display()
            )
        })?;
        volumes.insert(volume.name.clone(), dir);
    }
    Ok(volumes)
}

/// The preopens of one container, from its `volumeMounts`.
pub fn mounts(
    container: &Container,
    volumes: &HashMap<String, PathBuf>,
) -> Result<Vec<Mount>, String> {
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(dir) = volumes.get(&mount.name) else {
            return Err(format!(
                "volumeMount {:?} names no volume of the pod",
                mount.name
            ));
        };
        if mount.sub_path.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(format!(
                "volumeMount {:?}: subPath is not supported yet",
                mount.name
            ));
        }
        mounts.push(Mount {
            host_path: dir.clone(),
            guest_path: mount.mount_path.clone(),
            read_only: mount.read_only.unwrap_or(false),
        });
    }
    Ok(mounts)
}

fn describe_kind(volume: &k8s_openapi::api::core::v1::Volume) -> &'static str {
    if volume.persistent_volume_claim.is_some() {
        "persistentVolumeClaim"
    } else if volume.config_map.is_some() {
        "configMap"
    } else if volume.secret.is_some() {
        "secret"
    } else if volume.host_path.is_some() {
        "hostPath"
    } else {
        "this kind of"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dirs_become_mounts() {
        let dir = tempfile::tempdir().unwrap();
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "c", "volumeMounts": [{"name": "scratch", "mountPath": "/data", "readOnly": true}]}],
            "volumes": [{"name": "scratch", "emptyDir": {}}]
        }))
        .unwrap();
        let volumes = prepare(&spec, dir.path()).unwrap();
        assert!(volumes["scratch"].is_dir());
        let mounts = mounts(&spec.containers[0], &volumes).unwrap();
        assert_eq!(mounts[0].guest_path, "/data");
        assert!(mounts[0].read_only);
    }

    #[test]
    fn unsupported_kinds_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let spec: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [], "volumes": [{"name": "cfg", "configMap": {"name": "x"}}]
        }))
        .unwrap();
        assert!(prepare(&spec, dir.path())
            .unwrap_err()
            .contains("configMap"));
    }
}
