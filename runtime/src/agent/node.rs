//! The agent's Node object and its Lease: registration (create, or take over the status of an
//! existing Node of the same name after a restart) and the heartbeat that renews the Lease in
//! `kube-node-lease`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use shoal_api::api::time;
use shoal_api::client::{Client, Result};

/// How long a lease is valid; the agent renews it every [`LEASE_RENEW`].
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const LEASE_RENEW: Duration = Duration::from_secs(10);

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

/// Renews the node's Lease every `renew` (valid for `duration`) until the task is dropped.
pub async fn heartbeat(client: Client, node_name: String, duration: Duration, renew: Duration) {
    let duration_seconds = duration.as_secs().max(1) as i32;
    let leases = client.api::<Lease>(Some("kube-node-lease"));
    loop {
        let now = time::micro_time(chrono::Utc::now());
        let renewed = match leases.get_opt(&node_name).await {
            Ok(Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.renew_time = Some(now);
                spec.holder_identity = Some(node_name.clone());
                spec.lease_duration_seconds = Some(duration_seconds);
                leases.replace(&node_name, &lease).await.map(|_| ())
            }
            Ok(None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(node_name.clone()),
                        namespace: Some("kube-node-lease".into()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(node_name.clone()),
                        lease_duration_seconds: Some(duration_seconds),
                        renew_time: Some(now.clone()),
                        acquire_time: Some(now),
                        ..Default::default()
                    }),
                };
                leases.create(&lease).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = renewed {
            tracing::warn!("node {node_name}: renewing the lease failed: {e}");
        }
        tokio::time::sleep(renew).await;
    }
}
