//! Controllers: observe -> diff -> act loops that drive the cluster to its desired state
//! (DESIGN.md §3.4). Each controller is a `reconcile(key)` function run by the small runtime in
//! [`queue`]: triggers (watch events) enqueue object keys, duplicates collapse, one reconcile
//! runs per key at a time, and the result says when to look again. Reconcilers are
//! level-triggered: they read the whole current state and are never told why they run.
//! Controllers talk to the API only through the client.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod job;
pub mod nodelifecycle;
pub mod queue;
pub mod replicaset;
pub mod statefulset;

use crate::client::Client;

/// Whether a pod's Ready condition is True (what the workload controllers count).
pub fn pod_is_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Settings of the controller manager.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// How long a node may be unreachable before its pods are evicted (Kubernetes: 5 min).
    pub pod_eviction_timeout: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pod_eviction_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// Starts every controller; they stop when their tasks are aborted.
pub fn start(client: Client, options: Options) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(replicaset::run(client.clone())),
        tokio::spawn(deployment::run(client.clone())),
        tokio::spawn(replicaset::run_replication_controllers(client.clone())),
        tokio::spawn(statefulset::run(client.clone())),
        tokio::spawn(daemonset::run(client.clone())),
        tokio::spawn(endpoints::run(client.clone())),
        tokio::spawn(job::run(client.clone())),
        tokio::spawn(cronjob::run(client.clone())),
        tokio::spawn(nodelifecycle::run(
            client.clone(),
            options.pod_eviction_timeout,
        )),
        tokio::spawn(gc::run(client)),
    ]
}
