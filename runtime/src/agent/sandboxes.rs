//! What an exec session needs of each pod running on this node: per container, its program
//! and how its instances are launched (environment, mounts, memory limit), and the pod's
//! loopback. A pod's worker registers its sandbox once the pod is prepared and withdraws it
//! when it ends (the [`Registration`] is dropped with the worker), which also ends every exec
//! session still running in it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::launch::LaunchTemplate;
use crate::engine::Program;
use crate::pod::network::PodNetwork;

/// One container of a sandbox.
pub struct SandboxContainer {
    pub name: String,
    pub program: Arc<Program>,
    pub template: LaunchTemplate,
}

/// A running pod, as exec sees it.
pub struct Sandbox {
    pub containers: Vec<SandboxContainer>,
    pub network: Arc<PodNetwork>,
    /// Cancelled when the pod's worker ends.
    pub ended: CancellationToken,
    /// The pod's ephemeral containers (`kubectl debug`), by name, once started.
    pub ephemeral: Mutex<HashMap<String, Arc<super::console::Attachable>>>,
    /// Their statuses, written whole (the list has no merge key) one write at a time.
    pub ephemeral_statuses: tokio::sync::Mutex<Vec<serde_json::Value>>,
}

impl Sandbox {
    pub fn new(containers: Vec<SandboxContainer>, network: Arc<PodNetwork>) -> Self {
        Self {
            containers,
            network,
            ended: CancellationToken::new(),
            ephemeral: Mutex::default(),
            ephemeral_statuses: tokio::sync::Mutex::default(),
        }
    }

    /// The ephemeral container `name`, if it was started.
    pub fn attachable(&self, name: &str) -> Option<Arc<super::console::Attachable>> {
        (self.ephemeral.lock().unwrap_or_else(|p| p.into_inner()))
            .get(name)
            .cloned()
    }

    pub fn container(&self, name: &str) -> Option<&SandboxContainer> {
        self.containers.iter().find(|c| c.name == name)
    }
}

/// The sandboxes of this node, by `namespace/name`.
#[derive(Default)]
pub struct Sandboxes {
    by_pod: Mutex<HashMap<String, Arc<Sandbox>>>,
}

impl Sandboxes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Sandbox>>> {
        self.by_pod.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `sandbox` for the pod `key` until the returned registration is dropped.
    pub fn register(self: &Arc<Self>, key: String, sandbox: Sandbox) -> Registration {
        let sandbox = Arc::new(sandbox);
        self.lock().insert(key.clone(), sandbox.clone());
        Registration {
            sandboxes: self.clone(),
            key,
            sandbox,
        }
    }

    pub fn get(&self, key: &str) -> Option<Arc<Sandbox>> {
        self.lock().get(key).cloned()
    }
}

/// A sandbox's place in the registry; dropping it withdraws the sandbox and ends its exec
/// sessions.
pub struct Registration {
    sandboxes: Arc<Sandboxes>,
    key: String,
    sandbox: Arc<Sandbox>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut by_pod = self.sandboxes.lock();
        // A newer registration for the same pod (prepared again) stays.
        if by_pod
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.sandbox))
        {
            by_pod.remove(&self.key);
        }
        drop(by_pod);
        self.sandbox.ended.cancel();
    }
}
