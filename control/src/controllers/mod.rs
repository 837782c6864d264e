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
pub mod namespace;
pub mod nodelifecycle;
pub mod queue;
pub mod replicaset;
pub mod statefulset;

use crate::client::Client;

/// Why a reconcile failed; the queue logs it and retries with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] crate::client::Error),
    #[error("cannot encode an object: {0}")]
    Encode(#[from] serde_json::Error),
    /// An object the reconcile had just written or read is gone (a racing delete).
    #[error("{0} vanished")]
    Vanished(String),
    #[error("unknown owner kind {0}")]
    UnknownKind(String),
}

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

/// Starts every controller, each restarted if it panics; they stop when their tasks are
/// aborted.
pub fn start(client: Client, options: Options) -> Vec<tokio::task::JoinHandle<()>> {
    let eviction = options.pod_eviction_timeout;
    vec![
        supervised("replicaset-controller", &client, replicaset::run),
        supervised("deployment-controller", &client, deployment::run),
        supervised(
            "replicationcontroller-controller",
            &client,
            replicaset::run_replication_controllers,
        ),
        supervised("statefulset-controller", &client, statefulset::run),
        supervised("daemonset-controller", &client, daemonset::run),
        supervised("endpoints-controller", &client, endpoints::run),
        supervised("job-controller", &client, job::run),
        supervised("cronjob-controller", &client, cronjob::run),
        supervised("node-lifecycle-controller", &client, move |client| {
            nodelifecycle::run(client, eviction)
        }),
        supervised("garbage-collector", &client, gc::run),
        supervised("namespace-controller", &client, namespace::run),
    ]
}

/// Runs `run(client)` under [`crate::task::supervise`].
fn supervised<F, Fut>(name: &'static str, client: &Client, run: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let client = client.clone();
    crate::task::supervise(name, move || run(client.clone()))
}
