//! Which API servers are alive, and the `default/kubernetes` Endpoints that list them.
//!
//! Every API server (not only the leader) renews an identity Lease of its own in
//! `kube-system` (`apiserver-<hash of its address>`, labelled
//! `apiserver.kubernetes.io/identity=kube-apiserver` as kube-apiserver's are) carrying its
//! advertised address, and rewrites the Endpoints to the addresses of the Leases renewed within
//! their duration: a server that stops renewing drops out within a lease duration, one that
//! shuts down cleanly removes itself at once ([`leave`]). This is kube-apiserver's "lease"
//! endpoint reconciler, with the Lease objects in place of its TTL keys; liveness compares
//! the Lease's renew time with this server's clock, so servers' clocks must agree to within a
//! fraction of the lease duration (NTP).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use serde_json::json;
use sha2::{Digest, Sha256};
use shoal_api::client::{Client, DeleteParams, Error, ListParams};

const NAMESPACE: &str = "kube-system";
const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
const ADDRESS_ANNOTATION: &str = "shoal.dev/advertise-address";

/// How long a server's Lease stands without renewal, and how often it is renewed.
#[derive(Clone, Copy, Debug)]
pub struct PeerOptions {
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
        }
    }
}

/// The name of the identity Lease of the server advertised at `address`: stable across its
/// restarts, distinct for two servers on one machine.
pub fn lease_name(address: SocketAddr) -> String {
    let digest = Sha256::digest(address.to_string().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("apiserver-{hex}")
}

/// Renews this server's Lease and reconciles the Endpoints every `renew_interval`, forever.
pub async fn run(client: Client, address: SocketAddr, options: PeerOptions) {
    loop {
        if let Err(e) = renew(&client, address, options).await {
            tracing::warn!("renewing the API server Lease of {address}: {e}");
        }
        if let Err(e) = reconcile(&client).await {
            tracing::warn!("updating the kubernetes Endpoints: {e}");
        }
        tokio::time::sleep(options.renew_interval).await;
    }
}

/// Removes this server from the Endpoints (a clean shutdown): its Lease goes, the rest stay.
pub async fn leave(client: &Client, address: SocketAddr) {
    let leases = client.api::<Lease>(Some(NAMESPACE));
    match leases
        .delete(&lease_name(address), &DeleteParams::default())
        .await
    {
        Ok(()) | Err(Error::Api { code: 404, .. }) => {}
        Err(e) => tracing::warn!("removing the API server Lease of {address}: {e}"),
    }
    if let Err(e) = reconcile(client).await {
        tracing::warn!("updating the kubernetes Endpoints: {e}");
    }
}

async fn renew(client: &Client, address: SocketAddr, options: PeerOptions) -> Result<(), Error> {
    let leases = client.api::<Lease>(Some(NAMESPACE));
    let name = lease_name(address);
    let now = MicroTime(jiff::Timestamp::now());
    let seconds = i32::try_from(options.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {IDENTITY_LABEL: "kube-apiserver"},
            "annotations": {ADDRESS_ANNOTATION: address.to_string()},
        },
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": seconds,
            "renewTime": now,
        },
    }))
    .map_err(|e| Error::Decode(e.to_string()))?;
    match leases.get_opt(&name).await? {
        None => leases.create(&lease).await.map(drop),
        Some(current) => {
            let mut renewed = lease;
            renewed.metadata.resource_version = current.metadata.resource_version;
            leases.replace(&name, &renewed).await.map(drop)
        }
    }
}

/// The live servers' addresses, grouped by port (one Endpoints subset per port).
fn live_addresses(leases: &[Lease], now: jiff::Timestamp) -> BTreeMap<u16, Vec<String>> {
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for lease in leases {
        let Some(spec) = &lease.spec else { continue };
        let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
            continue;
        };
        if renewed.0.as_second().saturating_add(seconds.into()) < now.as_second() {
            continue;
        }
        let address = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ADDRESS_ANNOTATION))
            .and_then(|a| a.parse::<SocketAddr>().ok());
        if let Some(address) = address {
            by_port
                .entry(address.port())
                .or_default()
                .push(address.ip().to_string());
        }
    }
    for ips in by_port.values_mut() {
        ips.sort();
        ips.dedup();
    }
    by_port
}

async fn reconcile(client: &Client) -> Result<(), Error> {
    let leases = client
        .api::<Lease>(Some(NAMESPACE))
        .list(&ListParams::default().labels(&format!("{IDENTITY_LABEL}=kube-apiserver")))
        .await?;
    let live = live_addresses(&leases.items, jiff::Timestamp::now());
    let subsets: Vec<_> = live
        .iter()
        .map(|(port, ips)| {
            json!({
                "addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            })
        })
        .collect();
    let mut endpoints: Endpoints = serde_json::from_value(json!({
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets,
    }))
    .map_err(|e| Error::Decode(e.to_string()))?;
    let api = client.api::<Endpoints>(Some("default"));
    match api.get_opt("kubernetes").await? {
        None => api.create(&endpoints).await.map(drop),
        Some(current) if current.subsets == endpoints.subsets => Ok(()),
        Some(current) => {
            endpoints.metadata.resource_version = current.metadata.resource_version;
            api.replace("kubernetes", &endpoints).await.map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(address: &str, renewed_secs_ago: i64, duration: i32) -> Lease {
        let renewed =
            jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - renewed_secs_ago)
                .unwrap();
        serde_json::from_value(json!({
            "metadata": {"name": "x", "annotations": {ADDRESS_ANNOTATION: address}},
            "spec": {"renewTime": MicroTime(renewed), "leaseDurationSeconds": duration},
        }))
        .unwrap()
    }

    #[test]
    fn only_leases_renewed_within_their_duration_count_grouped_by_port() {
        let leases = [
            lease("10.0.0.2:6443", 1, 15),
            lease("10.0.0.1:6443", 3, 15),
            lease("10.0.0.3:6443", 20, 15),
            lease("127.0.0.1:7000", 0, 15),
            lease("not an address", 0, 15),
        ];
        let live = live_addresses(&leases, jiff::Timestamp::now());
        assert_eq!(
            live,
            BTreeMap::from([
                (6443, vec!["10.0.0.1".to_string(), "10.0.0.2".to_string()]),
                (7000, vec!["127.0.0.1".to_string()]),
            ])
        );
        assert_ne!(
            lease_name("127.0.0.1:1".parse().unwrap()),
            lease_name("127.0.0.1:2".parse().unwrap())
        );
    }
}
