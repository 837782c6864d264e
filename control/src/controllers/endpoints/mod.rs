//! The endpoints controller: for each Service with a selector, the addresses of the pods it
//! selects, written as an Endpoints object (same name as the Service; ready pods under
//! `addresses`, others under `notReadyAddresses`) and as EndpointSlices (at most 100
//! endpoints each, with ready/serving/terminating conditions: [`slices`]). Named target ports
//! are resolved per pod through its containers' port names; a pod that lacks the name is left
//! out of that port's subset.
//! The proxy routes to the ready addresses only, so a pod that turns unready or is being
//! deleted gets no new requests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod_is_ready;
use super::runtime::{all_in_namespace, Action, ObjectKey, Reconciler};
use super::Error;
use crate::client::{Client, DeleteParams, ListParams};

mod slices;

/// The Service's own changes, and any pod change in its namespace, reconcile it; a deleted
/// Service is reconciled by key to remove its Endpoints and slices.
pub async fn run(client: Client) {
    // What is written is compared with the shared caches, not read from the API at each
    // change (a thousand-address Endpoints and slice, read twice per pod change, were most
    // of a thousand-pod heal's API work). A stale cache costs a conflict and a retry.
    client.keep_cache_of::<Endpoints>();
    client.keep_cache_of::<EndpointSlice>();
    let reconciler = Reconciler::<Service>::new("endpoints", &client);
    let services = reconciler.store();
    let pacing = Arc::new(Pacing::default());
    reconciler
        .watches::<Pod, _>(move |pod| {
            all_in_namespace(&services, pod.metadata.namespace.as_deref().unwrap_or(""))
        })
        .run_by_key(move |key| reconcile(client.clone(), pacing.clone(), key))
        .await
}

/// How soon after one write of a Service's endpoints the next may follow when it takes no
/// ready address away (kube-controller-manager's `--endpoint-updates-batch-period`, applied
/// from the second change of a burst on): a thousand pods replaced at once are written a
/// few times, each write carrying every change since the last, instead of one rewrite of a
/// thousand-address Endpoints per pod change.
///
/// A write that takes a ready address away goes at once, always: a Shoal agent stops a
/// deleted pod's guests at once, with no grace to drain, so a removal held back even 200 ms
/// routes requests to a pod that no longer serves (tried: a rolling update under load then
/// failed 2 of 2,345 requests). So does the first ready address of a Service that had none.
/// Held back are more ready addresses for a Service that has some, and not-ready ones
/// coming and going. Kubernetes' default period is 0 (every change written); Shoal's pods
/// change state in milliseconds, so a burst is many more writes.
pub const ENDPOINT_UPDATES_BATCH_PERIOD: Duration = Duration::from_millis(200);

/// When each Service's endpoints were last written, to space the writes that may wait by
/// [`ENDPOINT_UPDATES_BATCH_PERIOD`].
#[derive(Default)]
struct Pacing {
    last: Mutex<HashMap<ObjectKey, Instant>>,
}

impl Pacing {
    /// How long a write of `key` that may wait must wait, or `None` to write now (noted).
    /// A write that may not wait (`urgent`) is always `None`, and noted.
    fn wait_before(&self, key: &ObjectKey, urgent: bool, now: Instant) -> Option<Duration> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let since = |at: &Instant| now.saturating_duration_since(*at);
        let wait = last
            .get(key)
            .and_then(|at| ENDPOINT_UPDATES_BATCH_PERIOD.checked_sub(since(at)))
            .filter(|wait| !wait.is_zero());
        if wait.is_some() && !urgent {
            return wait;
        }
        if last.len() >= 1024 {
            // Services not written within a period need no entry.
            last.retain(|_, at| since(at) < ENDPOINT_UPDATES_BATCH_PERIOD);
        }
        last.insert(key.clone(), now);
        None
    }
}

/// Whether writing `next` over `current` may not wait: it takes away an address that
/// `current` routes to (ready, on a port), or `current` routes nowhere and `next` does (a
/// Service with no ready pod has requests waiting for one, say a pod woken from zero).
fn must_write_now(current: Option<&[EndpointSubset]>, next: &[EndpointSubset]) -> bool {
    let routed = |subsets: &[EndpointSubset]| -> HashSet<(String, i32, String)> {
        let mut routed = HashSet::new();
        for subset in subsets {
            for address in subset.addresses.iter().flatten() {
                for port in subset.ports.iter().flatten() {
                    let protocol = port.protocol.clone().unwrap_or_default();
                    routed.insert((address.ip.clone(), port.port, protocol));
                }
            }
        }
        routed
    };
    let (was, will) = (routed(current.unwrap_or_default()), routed(next));
    (was.is_empty() && !will.is_empty()) || was.iter().any(|route| !will.contains(route))
}

/// One resolved port of a service: (name, number on the pod, protocol).
type ResolvedPort = (Option<String>, i32, String);

/// The port numbers `pod` serves the Service's ports on, or `None` for a named target port
/// the pod does not declare.
fn resolve_ports(service: &Service, pod: &Pod) -> Vec<Option<ResolvedPort>> {
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    ports
        .iter()
        .map(|port| {
            let number = match &port.target_port {
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(name)) => pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| p.container_port),
                None => Some(port.port),
            }?;
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            Some((port.name.clone(), number, protocol))
        })
        .collect()
}

fn address(pod: &Pod) -> Option<EndpointAddress> {
    let ip = pod.status.as_ref()?.pod_ip.clone()?;
    Some(EndpointAddress {
        ip,
        hostname: pod.spec.as_ref().and_then(|s| s.hostname.clone()),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
    })
}

async fn reconcile(client: Client, pacing: Arc<Pacing>, key: ObjectKey) -> Result<Action, Error> {
    let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
    let endpoints_api = client.api::<Endpoints>(Some(namespace));
    let slices_api = client.api::<EndpointSlice>(Some(namespace));
    let service = match client.cached_object::<Service>(namespace, name) {
        Some(Some(service)) => Some(Service::clone(&service)),
        // Not (yet) in the cache: the API says whether it is gone.
        _ => client.api::<Service>(Some(namespace)).get_opt(name).await?,
    };
    let Some(service) = service else {
        let _ = endpoints_api.delete(name, &DeleteParams::default()).await;
        let slices = slices_api
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}")))
            .await?;
        for slice in slices.items {
            let slice_name = slice.metadata.name.unwrap_or_default();
            let _ = slices_api
                .delete(&slice_name, &DeleteParams::default())
                .await;
        }
        return Ok(Action::AwaitChange);
    };
    let spec = service.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else {
        return Ok(Action::AwaitChange); // endpoints of a selector-less Service are the user's
    };
    let query: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let pods = super::selected_pods(&client, namespace, &query.join(",")).await?;

    // Subsets group the addresses that serve the same resolved ports.
    let mut subsets: BTreeMap<Vec<ResolvedPort>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    // Slices group the endpoints that serve the same resolved ports, as Endpoints subsets do.
    let mut slices: BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> = BTreeMap::new();
    for pod in &pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(address) = address(pod) else {
            continue;
        };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ready = pod_is_ready(pod) && !terminating;
        let ports: Vec<ResolvedPort> = resolve_ports(&service, pod).into_iter().flatten().collect();
        if ports.is_empty() {
            continue;
        }
        slices.entry(ports.clone()).or_default().push(Endpoint {
            addresses: vec![address.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                serving: Some(pod_is_ready(pod)),
                terminating: Some(terminating),
            }),
            hostname: address.hostname.clone(),
            node_name: address.node_name.clone(),
            target_ref: address.target_ref.clone(),
            ..Default::default()
        });
        let entry = subsets.entry(ports).or_default();
        if ready {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let subsets: Vec<EndpointSubset> = subsets
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name,
                            port,
                            protocol: Some(protocol),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    let current = client.cached_object::<Endpoints>(namespace, name);
    let unchanged = matches!(&current, Some(Some(current))
        if current.subsets.as_deref().unwrap_or_default() == subsets.as_slice());
    if !unchanged {
        // Not in the cache (or the cache not listed yet): written at once.
        let urgent = match &current {
            Some(Some(current)) => must_write_now(current.subsets.as_deref(), &subsets),
            _ => true,
        };
        if let Some(wait) = pacing.wait_before(&key, urgent, Instant::now()) {
            return Ok(Action::RequeueAfter(wait));
        }
    }
    write_endpoints(&client, &endpoints_api, &service, subsets).await?;
    slices::write_slices(&client, &slices_api, &service, slices).await?;
    Ok(Action::AwaitChange)
}

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Runs `write` against the object as the shared cache holds it (from the API while that
/// has not listed) and, when the cache was behind (409: a conflict, or an object already
/// there), once more against the API's.
async fn write_against_cache<K, Fut>(
    client: &Client,
    api: &crate::client::Api<K>,
    namespace: &str,
    name: &str,
    write: impl Fn(Option<K>) -> Fut,
) -> Result<(), Error>
where
    K: crate::client::ApiObject,
    Fut: std::future::Future<Output = Result<(), crate::client::Error>>,
{
    let cached = match client.cached_object::<K>(namespace, name) {
        Some(cached) => cached.map(|o| K::clone(&o)),
        None => api.get_opt(name).await?,
    };
    match write(cached).await {
        Err(e) if e.is_conflict() => Ok(write(api.get_opt(name).await?).await?),
        written => Ok(written?),
    }
}

async fn write_endpoints(
    client: &Client,
    api: &crate::client::Api<Endpoints>,
    service: &Service,
    subsets: Vec<EndpointSubset>,
) -> Result<(), Error> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let subsets = (!subsets.is_empty()).then_some(subsets);
    write_against_cache(
        client,
        api,
        namespace,
        &name,
        async |current| match current {
            Some(current) if current.subsets == subsets => Ok(()),
            Some(mut current) => {
                current.subsets = subsets.clone();
                api.replace(&name, &current).await.map(drop)
            }
            None => {
                let endpoints = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: service.metadata.namespace.clone(),
                        labels: service.metadata.labels.clone(),
                        ..Default::default()
                    },
                    subsets: subsets.clone(),
                };
                api.create(&endpoints).await.map(drop)
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subset(ready: &[&str], not_ready: &[&str]) -> EndpointSubset {
        let addresses = |ips: &[&str]| {
            let all: Vec<EndpointAddress> = ips
                .iter()
                .map(|ip| EndpointAddress {
                    ip: ip.to_string(),
                    ..Default::default()
                })
                .collect();
            (!all.is_empty()).then_some(all)
        };
        EndpointSubset {
            addresses: addresses(ready),
            not_ready_addresses: addresses(not_ready),
            ports: Some(vec![EndpointPort {
                port: 8080,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        }
    }

    #[test]
    fn only_writes_that_take_routes_away_or_give_the_first_go_at_once() {
        let now = |ready: &[&str], not_ready: &[&str]| vec![subset(ready, not_ready)];
        let current = now(&["10.0.0.1", "10.0.0.2"], &["10.0.0.3"]);
        let urgent = |next: Vec<EndpointSubset>| must_write_now(Some(&current), &next);
        assert!(
            urgent(now(&["10.0.0.1"], &["10.0.0.3"])),
            "a ready pod gone"
        );
        assert!(
            urgent(now(&["10.0.0.1"], &["10.0.0.2", "10.0.0.3"])),
            "turned unready"
        );
        assert!(
            !urgent(now(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], &[])),
            "one more ready"
        );
        assert!(
            !urgent(now(&["10.0.0.1", "10.0.0.2"], &[])),
            "a not-ready pod gone"
        );
        assert!(!urgent(now(
            &["10.0.0.1", "10.0.0.2"],
            &["10.0.0.3", "10.0.0.4"]
        )));
        let mut other_port = now(&["10.0.0.1", "10.0.0.2"], &[]);
        other_port[0].ports.as_mut().unwrap()[0].port = 9090;
        assert!(urgent(other_port), "the routes' port changed");
        // A Service that routes nowhere: its first ready pod goes at once.
        assert!(must_write_now(None, &now(&["10.0.0.1"], &[])));
        assert!(must_write_now(
            Some(&now(&[], &["10.0.0.1"])),
            &now(&["10.0.0.1"], &[])
        ));
        assert!(!must_write_now(
            Some(&now(&[], &["10.0.0.1"])),
            &now(&[], &["10.0.0.1", "10.0.0.2"])
        ));
    }

    #[test]
    fn writes_that_may_wait_are_spaced_by_the_batch_period() {
        let pacing = Pacing::default();
        let web = ObjectKey::new("default", "web");
        let start = Instant::now();
        assert_eq!(
            pacing.wait_before(&web, false, start),
            None,
            "the first: at once"
        );
        let soon = start + Duration::from_millis(50);
        assert_eq!(
            pacing.wait_before(&web, false, soon),
            Some(ENDPOINT_UPDATES_BATCH_PERIOD - Duration::from_millis(50))
        );
        let other = ObjectKey::new("default", "api");
        assert_eq!(
            pacing.wait_before(&other, false, soon),
            None,
            "each Service has its own"
        );
        assert_eq!(
            pacing.wait_before(&web, true, soon),
            None,
            "urgent: at once"
        );
        // The urgent write counts as the last one.
        let later = soon + Duration::from_millis(100);
        assert_eq!(
            pacing.wait_before(&web, false, later),
            Some(ENDPOINT_UPDATES_BATCH_PERIOD - Duration::from_millis(100))
        );
        let after = soon + ENDPOINT_UPDATES_BATCH_PERIOD;
        assert_eq!(pacing.wait_before(&web, false, after), None);
    }

    /// The cache is behind the store (its feed stopped after a write it never saw): the
    /// write it is compared with fails with 409 and is made once more against the API's copy.
    #[tokio::test]
    async fn a_write_compared_with_a_stale_cache_is_retried_against_the_api() {
        let (_dir, client) = crate::client_tests::in_process_server().await;
        let api = client.api::<Endpoints>(Some("default"));
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"}}))
        .unwrap();
        api.create(&endpoints).await.unwrap();
        client.keep_cache_of::<Endpoints>();
        for _ in 0..250 {
            if client
                .cached_object::<Endpoints>("default", "web")
                .is_some_and(|e| e.is_some())
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        client.stop_shared_watches();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut moved = api.get_opt("web").await.unwrap().unwrap();
        moved.metadata.labels = Some(BTreeMap::from([("moved".into(), "yes".into())]));
        let moved = api.replace("web", &moved).await.unwrap();
        let stale = client
            .cached_object::<Endpoints>("default", "web")
            .unwrap()
            .unwrap();
        assert_ne!(
            stale.metadata.resource_version,
            moved.metadata.resource_version
        );

        let attempts = std::sync::atomic::AtomicUsize::new(0);
        write_against_cache(&client, &api, "default", "web", async |current| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut current = current.expect("the object exists");
            current.subsets = Some(vec![EndpointSubset::default()]);
            api.replace("web", &current).await.map(drop)
        })
        .await
        .unwrap();
        assert_eq!(
            attempts.into_inner(),
            2,
            "the stale write, then the fresh one"
        );
        let written = api.get_opt("web").await.unwrap().unwrap();
        assert!(written.subsets.is_some());
        let labels = written.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels.get("moved").map(String::as_str),
            Some("yes"),
            "nothing lost"
        );
    }
}
