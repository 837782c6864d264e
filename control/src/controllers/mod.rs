//! Controllers: observe -> diff -> act loops that drive the cluster to its desired state
//! (DESIGN.md §3.4). Each per-object controller is a [`runtime::Reconciler`] (a
//! `kube::runtime::Controller` fed by the process's shared watches): triggers (the object's
//! own changes, its children's, related kinds') wake objects, duplicates collapse, one
//! reconcile runs per object at a time, and the result says when to look again. Reconcilers
//! are level-triggered: they read the whole current state through the API and are never told
//! why they run. The garbage collector and the node lifecycle controller are not per object:
//! each folds the shared watches it needs into its own view and wakes when the next thing is
//! due. Controllers talk to the API only through the client.

pub mod certificates;
pub mod cronjob;
pub mod customresources;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod expectations;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod podautoscaler;
pub mod replicaset;
pub mod resourcequota;
pub mod rootca;
pub mod runtime;
pub mod serviceaccount;
pub mod statefulset;
pub mod tokencleaner;

use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt};

use crate::client::Client;
use crate::task::Tasks;

/// Why a reconcile failed; the runtime logs it and retries with back-off.
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
    /// A workload's selector that does not parse (validation keeps these out of the store).
    #[error("invalid label selector: {0}")]
    Selector(String),
    /// The reconcile panicked (caught; retried with back-off like an error).
    #[error("panicked: {0}")]
    Panicked(String),
}

/// Waits until at least one `K` exists. Controllers of kinds most clusters have none of
/// (quotas, disruption budgets) start their watches of busy kinds (pods) only then: every
/// subscriber of the shared pod feed costs every pod event a copy.
pub async fn first_of<K: crate::client::ApiObject>(client: &Client) {
    let mut feed = client.shared_watch::<K>();
    while let Some(event) = feed.recv().await {
        if !event.into_objects().is_empty() {
            return;
        }
    }
}

/// The object at `path` read through the API as JSON, `None` once it is gone. Controllers
/// that write a status computed from a fresh read (quota, disruption) start here.
pub async fn read_fresh(client: &Client, path: &str) -> Result<Option<serde_json::Value>, Error> {
    match client
        .json(http::Method::GET, path, "application/json", None)
        .await
    {
        Ok(current) => Ok(Some(current)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes `status` to `path`'s `/status` only if the object is still the `read` one (its
/// resourceVersion as a precondition): a write made meanwhile (a quota charge, an eviction)
/// is never overwritten, and the controller looks again in 20 ms. `then` is what to do
/// after a landed write.
pub async fn write_status_if_unchanged(
    client: &Client,
    path: &str,
    read: &serde_json::Value,
    status: serde_json::Value,
    then: runtime::Action,
) -> Result<runtime::Action, Error> {
    let revision = read
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let patch = serde_json::json!({"metadata": {"resourceVersion": revision}, "status": status});
    match client
        .json(
            http::Method::PATCH,
            &format!("{path}/status"),
            "application/merge-patch+json",
            Some(&patch),
        )
        .await
    {
        Ok(_) => Ok(then),
        Err(e) if e.is_conflict() => Ok(runtime::Action::RequeueAfter(
            std::time::Duration::from_millis(20),
        )),
        Err(e) if e.is_not_found() => Ok(runtime::Action::AwaitChange),
        Err(e) => Err(e.into()),
    }
}

/// The controller owner reference of an object, if any.
pub fn controller_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The pods of `namespace` that the label selector `selector` selects: from the process's
/// shared pod watch ([`cached_pods`]), as Kubernetes' controllers read their informers'
/// listers, or from the API while that watch has not listed yet.
pub async fn selected_pods(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<Arc<k8s_openapi::api::core::v1::Pod>>, Error> {
    match cached_pods(client, namespace, selector)? {
        Some(pods) => Ok(pods),
        None => Ok(client
            .api::<k8s_openapi::api::core::v1::Pod>(Some(namespace))
            .list(&crate::client::ListParams::default().labels(selector))
            .await?
            .items
            .into_iter()
            .map(Arc::new)
            .collect()),
    }
}

/// The pods of `namespace` that `selector` selects, as the shared pod watch holds them
/// (`None` until it has listed). A list from the API decodes every pod of the namespace in
/// the server and the matching ones twice more: controllers reconciling a thousand-pod
/// ReplicaSet at every pod change made that the cluster's largest cost.
pub fn cached_pods(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Option<Vec<Arc<k8s_openapi::api::core::v1::Pod>>>, Error> {
    let parsed = crate::api::selector::LabelSelector::parse(selector)
        .map_err(|e| Error::Selector(format!("{selector:?}: {}", e.0)))?;
    let empty = std::collections::BTreeMap::new();
    Ok(client.cached::<k8s_openapi::api::core::v1::Pod>(|pod| {
        pod.metadata.namespace.as_deref() == Some(namespace)
            && parsed.matches(pod.metadata.labels.as_ref().unwrap_or(&empty))
    }))
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
    /// How late a node's lease renewal may be before its agent is probed; a refused probe
    /// makes it unreachable at once (`--node-monitor-grace-period`).
    pub node_monitor_grace_period: std::time::Duration,
    /// The longest client certificate the CSR signer issues (`--cluster-signing-duration`).
    pub cluster_signing_duration: std::time::Duration,
    /// How often each HorizontalPodAutoscaler is looked at
    /// (`--horizontal-pod-autoscaler-sync-period`, Kubernetes: 15 s).
    pub hpa_sync_period: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pod_eviction_timeout: std::time::Duration::from_secs(60),
            node_monitor_grace_period: nodelifecycle::DEFAULT_GRACE,
            cluster_signing_duration: certificates::DEFAULT_SIGNING_DURATION,
            hpa_sync_period: podautoscaler::DEFAULT_SYNC_PERIOD,
        }
    }
}

/// Starts every controller in `tasks`, each restarted if it panics; they stop when `tasks`
/// shuts down.
pub fn start(client: Client, options: Options, tasks: &Tasks) {
    let node_timing = nodelifecycle::Timing {
        grace: options.node_monitor_grace_period,
        eviction_timeout: options.pod_eviction_timeout,
    };
    let supervised = |name: &'static str, run: fn(Client) -> BoxFuture<'static, ()>| {
        let client = client.clone();
        tasks.supervise(name, move || run(client.clone()));
    };
    supervised("replicaset-controller", |c| replicaset::run(c).boxed());
    supervised("deployment-controller", |c| deployment::run(c).boxed());
    supervised("replicationcontroller-controller", |c| {
        replicaset::run_replication_controllers(c).boxed()
    });
    supervised("statefulset-controller", |c| statefulset::run(c).boxed());
    supervised("daemonset-controller", |c| daemonset::run(c).boxed());
    supervised("endpoints-controller", |c| endpoints::run(c).boxed());
    supervised("job-controller", |c| job::run(c).boxed());
    supervised("cronjob-controller", |c| cronjob::run(c).boxed());
    supervised("garbage-collector", |c| gc::run(c).boxed());
    supervised("namespace-controller", |c| namespace::run(c).boxed());
    supervised("resourcequota-controller", |c| {
        resourcequota::run(c).boxed()
    });
    supervised("disruption-controller", |c| disruption::run(c).boxed());
    supervised("customresourcecleanup-controller", |c| {
        customresources::run(c).boxed()
    });
    supervised("serviceaccount-controller", |c| {
        serviceaccount::run(c).boxed()
    });
    supervised("tokencleaner", |c| tokencleaner::run(c).boxed());
    let hpa_sync_period = options.hpa_sync_period;
    let hpa_client = client.clone();
    tasks.supervise("horizontal-pod-autoscaler", move || {
        podautoscaler::run(hpa_client.clone(), hpa_sync_period).boxed()
    });
    let client = client.clone();
    tasks.supervise("node-lifecycle-controller", move || {
        nodelifecycle::run(client.clone(), node_timing)
    });
}

/// Starts the root CA publisher: `ca_pem` (the CA pods verify the API with) in every
/// namespace's `kube-root-ca.crt`.
pub fn start_root_ca_publisher(client: Client, ca_pem: &str, tasks: &Tasks) {
    let ca_pem: std::sync::Arc<str> = ca_pem.into();
    tasks.supervise("root-ca-cert-publisher", move || {
        rootca::run(client.clone(), ca_pem.clone()).boxed()
    });
}

/// Starts the CertificateSigningRequest approver and signer, which sign with `pki`'s CA.
pub fn start_certificate_signer(
    client: Client,
    pki: std::sync::Arc<crate::auth::pki::Pki>,
    options: Options,
    tasks: &Tasks,
) {
    let duration = options.cluster_signing_duration;
    tasks.supervise("certificatesigningrequest-controller", move || {
        certificates::run(client.clone(), pki.clone(), duration).boxed()
    });
}
