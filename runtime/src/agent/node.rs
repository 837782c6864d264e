//! The agent's Node object and its Lease: registration (create, or take over the status of an
//! existing Node of the same name after a restart) and the heartbeat that renews the Lease in
//! `kube-node-lease`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use shoal_api::api::fencing::NODE_LEASE_NAMESPACE;
use shoal_api::api::time;
use shoal_api::client::{Client, Result};

/// How long a lease is valid; the agent renews it every [`LEASE_RENEW`]. Far shorter than the
/// kubelet's 40 s and 10 s: a renewal is one small write, and the control plane probes a
/// node whose renewal is late, so a lost agent is found within about two seconds while a
/// slow one that still accepts connections keeps its lease for all of it.
pub const LEASE_DURATION_SECONDS: i32 = 4;
pub const LEASE_RENEW: Duration = Duration::from_secs(1);

pub struct NodeIdentity {
    pub name: String,
    /// The address other parts of the cluster reach this agent at.
    pub address: String,
    pub gateway_port: u16,
    pub max_pods: u32,
}

/// Creates or refreshes the Node and returns it as stored (with its pod CIDR).
pub async fn register(client: &Client, identity: &NodeIdentity) -> Result<Node> {
    let nodes = client.api::<Node>(None);
    let status = node_status(identity);
    match nodes.get_opt(&identity.name).await? {
        None => {
            let labels = BTreeMap::from([
                ("kubernetes.io/hostname".to_string(), identity.name.clone()),
                ("kubernetes.io/os".to_string(), "wasi".to_string()),
                ("kubernetes.io/arch".to_string(), "wasm32".to_string()),
            ]);
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(identity.name.clone()),
                    labels: Some(labels),
                    ..Default::default()
                },
                spec: None,
                status: Some(status),
            };
            match nodes.create(&node).await {
                Ok(node) => Ok(node),
                Err(e) if e.is_conflict() => refresh_status(client, identity).await,
                Err(e) => Err(e),
            }
        }
        Some(_) => refresh_status(client, identity).await,
    }
}

async fn refresh_status(client: &Client, identity: &NodeIdentity) -> Result<Node> {
    let patch = serde_json::json!({"status": node_status(identity)});
    client
        .api::<Node>(None)
        .patch_status(&identity.name, &patch)
        .await
}

fn node_status(identity: &NodeIdentity) -> NodeStatus {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpus.to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", total_memory_kib())),
        ),
        ("pods".to_string(), Quantity(identity.max_pods.to_string())),
    ]);
    let now = time::time(chrono::Utc::now());
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: identity.address.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: identity.name.clone(),
            },
        ]),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("AgentReady".into()),
            message: Some("shoal agent is posting ready status".into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now),
        }]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: identity.gateway_port.into(),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "wasm32".into(),
            operating_system: "wasi".into(),
            os_image: "Shoal (WASI preview 1 and 2)".into(),
            kernel_version: std::env::consts::OS.into(),
            container_runtime_version: "wasmtime://48.0.8".into(),
            kubelet_version: format!(
                "{}-shoal-{}",
                shoal_api::api::kubernetes_version(),
                env!("CARGO_PKG_VERSION")
            ),
            kube_proxy_version: String::new(),
            machine_id: String::new(),
            system_uuid: String::new(),
            boot_id: String::new(),
            // Pods cannot swap: a module's memory is its linear memory.
            swap: None,
        }),
        ..Default::default()
    }
}

fn total_memory_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(4 * 1024 * 1024)
}

/// Renews the node's Lease every `renew` (valid for `duration`) until the task is dropped,
/// and keeps `fenced` saying whether the agent has gone a whole lease without a successful
/// renewal (counted from the moment the last successful one was sent, so that the control
/// plane, which counts from when it saw it, never counts less; see `shoal_api::api::fencing`).
pub async fn heartbeat(
    client: Client,
    node_name: String,
    duration: Duration,
    renew: Duration,
    fenced: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
) {
    let duration_seconds = i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let leases = client.api::<Lease>(Some(NODE_LEASE_NAMESPACE));
    // Registration has just succeeded: the lease's bound starts now at the latest.
    let mut last_renewed = Instant::now();
    let fence_at = |last: Instant| last.checked_add(duration);
    loop {
        let sent = Instant::now();
        // At most one renewal interval per attempt (at least a second: a slow API answers
        // late, but a renewal that hangs must not hold the next one back for long).
        let attempt = tokio::time::timeout(
            renew.max(Duration::from_secs(1)),
            renew_lease(&leases, &node_name, duration_seconds),
        );
        let renewed = watch_fence(
            attempt,
            fence_at(last_renewed),
            &fenced,
            &node_name,
            duration,
        )
        .await;
        match renewed {
            Ok(Ok(())) => {
                last_renewed = sent;
                if fenced.send_replace(false) {
                    tracing::info!(
                        "node {node_name}: the lease is renewed again; starting the pods that must be unique"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!("node {node_name}: renewing the lease failed: {e}"),
            Err(_) => tracing::warn!("node {node_name}: renewing the lease timed out"),
        }
        let next = tokio::time::sleep_until((sent + renew).into());
        watch_fence(next, fence_at(last_renewed), &fenced, &node_name, duration).await;
    }
}

/// Runs `work`, and if `fence_at` passes meanwhile, fences the agent (once).
async fn watch_fence<T>(
    work: impl std::future::Future<Output = T>,
    fence_at: Option<Instant>,
    fenced: &tokio::sync::watch::Sender<bool>,
    node_name: &str,
    duration: Duration,
) -> T {
    tokio::pin!(work);
    loop {
        let deadline = async {
            match fence_at {
                Some(at) if !*fenced.borrow() => tokio::time::sleep_until(at.into()).await,
                _ => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            done = &mut work => return done,
            _ = deadline => {
                fenced.send_replace(true);
                tracing::warn!(
                    "node {node_name}: the lease has not been renewed for {duration:?}; stopping \
                     the pods that must be unique (StatefulSets', and those with claims): the \
                     control plane may now start them elsewhere"
                );
            }
        }
    }
}

/// One renewal: a merge patch of the lease (one write), or its creation.
async fn renew_lease(
    leases: &shoal_api::client::Api<Lease>,
    node_name: &str,
    duration_seconds: i32,
) -> Result<()> {
    let now = time::micro_time(chrono::Utc::now());
    let patch = serde_json::json!({"spec": {
        "holderIdentity": node_name,
        "leaseDurationSeconds": duration_seconds,
        "renewTime": now,
    }});
    match leases.patch_merge(node_name, &patch).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node_name.to_string()),
                    namespace: Some(NODE_LEASE_NAMESPACE.into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(node_name.to_string()),
                    lease_duration_seconds: Some(duration_seconds),
                    renew_time: Some(now.clone()),
                    acquire_time: Some(now),
                    ..Default::default()
                }),
            };
            leases.create(&lease).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}
