//! A Service's EndpointSlices: at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints each, one group
//! of slices per port set, and an endpoint stays in the slice that holds it, as
//! kube-controller-manager's EndpointSlice controller keeps them. A pod change then rewrites
//! the one slice that holds the pod, not every endpoint of the Service: a thousand-pod
//! Service changing one pod at a time wrote (and every watcher decoded) a thousand-endpoint
//! slice per change.
//!
//! Placement ([`place`]): each existing slice keeps the wanted endpoints it already holds
//! (updated in place); endpoints new to the Service fill the slices being rewritten anyway,
//! then full new slices, and the last few go into the unchanged slice they fill the most (or
//! one more new slice). A slice left empty is deleted, except
//! one: a Service with no endpoints keeps one empty slice, as Kubernetes does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort as SlicePort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{write_against_cache, ResolvedPort, SERVICE_NAME_LABEL};
use crate::client::{Client, DeleteParams, ListParams};
use crate::controllers::Error;

/// How many endpoints one slice holds at most (kube-controller-manager's
/// `--max-endpoints-per-slice` default).
const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// What identifies an endpoint across reconciles: its addresses and the pod behind them.
type EndpointKey = (Vec<String>, Option<String>);

fn key_of(endpoint: &Endpoint) -> EndpointKey {
    let pod = (endpoint.target_ref.as_ref()).and_then(|r| r.uid.clone());
    (endpoint.addresses.clone(), pod)
}

/// One slice of a port set as placed: an existing slice (by name) or a new one, its
/// endpoints, and whether it differs from what is stored.
#[derive(Debug, PartialEq)]
pub(super) struct Placed {
    pub name: Option<String>,
    pub endpoints: Vec<Endpoint>,
    pub changed: bool,
}

/// Places `wanted` (one port set's endpoints) into `existing` (the slices that hold that port
/// set now, by name), at most `max` per slice; see the module doc.
pub(super) fn place(
    existing: Vec<(String, Vec<Endpoint>)>,
    wanted: Vec<Endpoint>,
    max: usize,
) -> Vec<Placed> {
    let max = max.max(1);
    let mut unplaced: BTreeMap<EndpointKey, Endpoint> =
        wanted.into_iter().map(|e| (key_of(&e), e)).collect();
    let mut placed: Vec<Placed> = existing
        .into_iter()
        .map(|(name, stored)| {
            let mut endpoints = Vec::new();
            for endpoint in &stored {
                if endpoints.len() == max {
                    break; // the rest (a slice over the limit) is placed elsewhere
                }
                if let Some(wanted) = unplaced.remove(&key_of(endpoint)) {
                    endpoints.push(wanted);
                }
            }
            let changed = endpoints != stored;
            Placed {
                name: Some(name),
                endpoints,
                changed,
            }
        })
        .collect();
    let mut unplaced = unplaced.into_values();
    // Slices written anyway take new endpoints first.
    for slice in placed.iter_mut().filter(|p| p.changed) {
        let room = max.saturating_sub(slice.endpoints.len());
        slice.endpoints.extend(unplaced.by_ref().take(room));
    }
    // The rest: full new slices, and what is left over into the unchanged slice it fills the
    // most (one write either way), else one more new slice.
    let rest: Vec<Endpoint> = unplaced.collect();
    let (full, left) = rest.split_at(rest.len() - rest.len() % max);
    let best_fit = (placed.iter_mut())
        .filter(|p| !p.changed && !left.is_empty() && p.endpoints.len() + left.len() <= max)
        .max_by_key(|p| p.endpoints.len());
    let left = match best_fit {
        Some(slice) => {
            slice.endpoints.extend_from_slice(left);
            slice.changed = true;
            &[][..]
        }
        None => left,
    };
    for chunk in full.chunks(max).chain((!left.is_empty()).then_some(left)) {
        placed.push(Placed {
            name: None,
            endpoints: chunk.to_vec(),
            changed: true,
        });
    }
    placed
}

/// A slice's ports (`None` for the empty slice of a Service with no endpoints).
type Ports = Option<Vec<SlicePort>>;

fn slice_ports(ports: Option<&Vec<ResolvedPort>>) -> Ports {
    ports.map(|ports| {
        (ports.iter())
            .map(|(name, port, protocol)| SlicePort {
                name: name.clone(),
                port: Some(*port),
                protocol: Some(protocol.clone()),
                app_protocol: None,
            })
            .collect()
    })
}

/// Writes the Service's slices for `wanted` (its endpoints by resolved port set): only the
/// slices whose endpoints or ports changed are written; slices left empty are deleted.
pub(super) async fn write_slices(
    client: &Client,
    api: &crate::client::Api<EndpointSlice>,
    service: &Service,
    wanted: BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>>,
) -> Result<(), Error> {
    let service_name = service.metadata.name.clone().unwrap_or_default();
    let namespace = service.metadata.namespace.as_deref().unwrap_or_default();
    let of_service = |slice: &EndpointSlice| {
        slice.metadata.namespace.as_deref() == Some(namespace)
            && (slice.metadata.labels.as_ref()).and_then(|l| l.get(SERVICE_NAME_LABEL))
                == Some(&service_name)
    };
    let mut stored: Vec<Arc<EndpointSlice>> = match client.cached::<EndpointSlice>(of_service) {
        Some(cached) => cached,
        None => (api
            .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={service_name}"))))
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect(),
    };
    stored.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let taken: BTreeSet<String> = (stored.iter())
        .filter_map(|s| s.metadata.name.clone())
        .collect();

    // A Service with no endpoints keeps one empty slice (no ports).
    let mut wanted: Vec<(Ports, Vec<Endpoint>)> = (wanted.into_iter())
        .map(|(ports, endpoints)| (slice_ports(Some(&ports)), endpoints))
        .collect();
    if wanted.is_empty() {
        wanted.push((None, Vec::new()));
    }
    // (existing name or a new slice, ports, endpoints) of each slice to write.
    let mut writes: Vec<(Option<String>, Ports, Vec<Endpoint>)> = Vec::new();
    // Slices of port sets no longer served go, as do slices left empty.
    let mut unwanted: Vec<String> = (stored.iter())
        .filter(|s| !wanted.iter().any(|(ports, _)| s.ports == *ports))
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    for (ports, endpoints) in wanted {
        let existing = (stored.iter())
            .filter(|s| s.ports == ports)
            .map(|s| {
                let name = s.metadata.name.clone().unwrap_or_default();
                (name, s.endpoints.clone())
            })
            .collect();
        let mut keep_one_empty = endpoints.is_empty();
        for slice in place(existing, endpoints, MAX_ENDPOINTS_PER_SLICE) {
            match slice.name {
                Some(name) if slice.endpoints.is_empty() && !keep_one_empty => unwanted.push(name),
                name if slice.changed => {
                    keep_one_empty = false;
                    writes.push((name, ports.clone(), slice.endpoints));
                }
                _ => keep_one_empty = false,
            }
        }
        if keep_one_empty {
            writes.push((None, ports, Vec::new()));
        }
    }

    let base = format!("{service_name}-{}", uid_prefix(service));
    let mut names = NewNames::new(&base, taken);
    for (name, ports, endpoints) in writes {
        let name = name.unwrap_or_else(|| names.next());
        write_against_cache(client, api, namespace, &name, async |current| {
            write_slice(
                api,
                service,
                current,
                &name,
                endpoints.clone(),
                ports.clone(),
            )
            .await
        })
        .await?;
    }
    for name in unwanted {
        let _ = api.delete(&name, &DeleteParams::default()).await;
    }
    Ok(())
}

fn uid_prefix(service: &Service) -> String {
    let uid = service.metadata.uid.as_deref().unwrap_or_default();
    uid.chars().take(5).collect()
}

/// Names for new slices: `<service>-<uid prefix>` first (a small Service's one slice), then
/// `…-1`, `…-2`, skipping names in use.
struct NewNames {
    base: String,
    taken: BTreeSet<String>,
    next: usize,
}

impl NewNames {
    fn new(base: &str, taken: BTreeSet<String>) -> Self {
        Self {
            base: base.to_string(),
            taken,
            next: 0,
        }
    }

    fn next(&mut self) -> String {
        loop {
            let name = match self.next {
                0 => self.base.clone(),
                n => format!("{}-{n}", self.base),
            };
            self.next += 1;
            if self.taken.insert(name.clone()) {
                return name;
            }
        }
    }
}

async fn write_slice(
    api: &crate::client::Api<EndpointSlice>,
    service: &Service,
    current: Option<EndpointSlice>,
    name: &str,
    endpoints: Vec<Endpoint>,
    ports: Ports,
) -> Result<(), crate::client::Error> {
    let service_name = service.metadata.name.clone().unwrap_or_default();
    let uid = service.metadata.uid.clone().unwrap_or_default();
    match current {
        Some(current) if current.endpoints == endpoints && current.ports == ports => Ok(()),
        Some(mut current) => {
            current.endpoints = endpoints;
            current.ports = ports;
            api.replace(name, &current).await.map(drop)
        }
        None => {
            let slice = EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: service.metadata.namespace.clone(),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME_LABEL.to_string(), service_name.clone()),
                        (
                            "endpointslice.kubernetes.io/managed-by".to_string(),
                            "endpointslice-controller.k8s.io".to_string(),
                        ),
                    ])),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Service".into(),
                        name: service_name,
                        uid,
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints,
                ports,
            };
            api.create(&slice).await.map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::EndpointConditions;

    fn endpoint(i: usize, ready: bool) -> Endpoint {
        Endpoint {
            addresses: vec![format!("10.0.{}.{}", i / 250, i % 250)],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                uid: Some(format!("uid-{i}")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn endpoints(range: std::ops::Range<usize>, ready: bool) -> Vec<Endpoint> {
        range.map(|i| endpoint(i, ready)).collect()
    }

    fn written(placed: &[Placed]) -> Vec<(Option<&str>, usize)> {
        (placed.iter())
            .filter(|p| p.changed)
            .map(|p| (p.name.as_deref(), p.endpoints.len()))
            .collect()
    }

    #[test]
    fn a_new_service_gets_full_slices_and_one_for_the_rest() {
        let placed = place(Vec::new(), endpoints(0..250, true), 100);
        assert_eq!(written(&placed), [(None, 100), (None, 100), (None, 50)]);
    }

    #[test]
    fn one_pod_changing_rewrites_only_the_slice_that_holds_it() {
        let existing = vec![
            ("a".to_string(), endpoints(0..100, true)),
            ("b".to_string(), endpoints(100..200, true)),
            ("c".to_string(), endpoints(200..250, true)),
        ];
        let mut wanted = endpoints(0..250, true);
        wanted[150] = endpoint(150, false);
        let placed = place(existing.clone(), wanted, 100);
        assert_eq!(written(&placed), [(Some("b"), 100)]);
        let b = &placed[1].endpoints;
        assert_eq!(b[50], endpoint(150, false), "updated where it was");

        // Unchanged: nothing to write.
        let placed = place(existing, endpoints(0..250, true), 100);
        assert_eq!(written(&placed), []);
    }

    #[test]
    fn new_endpoints_fill_slices_being_written_then_new_ones_then_the_slice_they_fill_most() {
        let existing = vec![
            ("a".to_string(), endpoints(0..100, true)),
            ("b".to_string(), endpoints(100..190, true)),
            ("c".to_string(), endpoints(200..280, true)),
        ];
        // Pod 0 leaves "a"; five new pods: one fills "a"'s hole, the next four go to the
        // fullest other slice they fit in ("b"), not to a new slice.
        let mut wanted = endpoints(1..190, true);
        wanted.extend(endpoints(200..280, true));
        wanted.extend(endpoints(500..505, true));
        let placed = place(existing, wanted, 100);
        assert_eq!(written(&placed), [(Some("a"), 100), (Some("b"), 94)]);
        assert!(placed[0].endpoints.contains(&endpoint(500, true)));

        // More new pods than any slice has room for: a new slice, and "a" is left alone.
        let existing = vec![("a".to_string(), endpoints(0..95, true))];
        let placed = place(existing, endpoints(0..110, true), 100);
        assert_eq!(written(&placed), [(None, 15)]);
    }

    #[test]
    fn a_slice_over_the_limit_is_split_and_gone_endpoints_leave() {
        // A slice from before the limit, with 250 endpoints.
        let existing = vec![("old".to_string(), endpoints(0..250, true))];
        let placed = place(existing, endpoints(0..250, true), 100);
        assert_eq!(
            written(&placed),
            [(Some("old"), 100), (None, 100), (None, 50)]
        );
        let all: usize = placed.iter().map(|p| p.endpoints.len()).sum();
        assert_eq!(all, 250, "every endpoint once");

        let existing = vec![
            ("a".to_string(), endpoints(0..100, true)),
            ("b".to_string(), endpoints(100..200, true)),
        ];
        let placed = place(existing, endpoints(0..100, true), 100);
        assert_eq!(written(&placed), [(Some("b"), 0)], "emptied, for deletion");
    }

    #[test]
    fn new_slice_names_skip_names_in_use() {
        let taken = BTreeSet::from(["web-abcde".to_string(), "web-abcde-2".to_string()]);
        let mut names = NewNames::new("web-abcde", taken);
        assert_eq!(
            [names.next(), names.next(), names.next()],
            ["web-abcde-1", "web-abcde-3", "web-abcde-4"]
        );
    }

    /// The controller against a real API server: 150 ready pods make slices of at most 100;
    /// one pod turning unready rewrites only its slice; with no pods left, one empty slice
    /// stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_service_is_sliced_and_a_change_rewrites_one_slice() {
        use k8s_openapi::api::core::v1::Pod;
        use serde_json::json;

        let (_dir, client) = crate::client_tests::in_process_server().await;
        let controller = tokio::spawn(super::super::run(client.clone()));
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
        .unwrap();
        client
            .api::<Service>(Some("default"))
            .create(&service)
            .await
            .unwrap();
        let pods = client.api::<Pod>(Some("default"));
        let ready = |i: usize, ready: bool| {
            json!({"status": {"phase": "Running", "podIP": format!("10.1.{}.{}", i / 200, i % 200),
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
        };
        for i in 0..150 {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("web-{i}"), "namespace": "default", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web.wasm"}]}}))
            .unwrap();
            pods.create(&pod).await.unwrap();
            pods.patch_status_strategic(&format!("web-{i}"), &ready(i, true))
                .await
                .unwrap();
        }
        let slices = client.api::<EndpointSlice>(Some("default"));
        let listed = async || {
            let mut list = slices.list(&ListParams::default()).await.unwrap().items;
            list.sort_by_key(|s| std::cmp::Reverse(s.endpoints.len()));
            list
        };
        let until = async |what: &str, test: &dyn Fn(&[EndpointSlice]) -> bool| {
            for _ in 0..500 {
                let list = listed().await;
                if test(&list) {
                    return list;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let sizes: Vec<_> = (listed().await.iter())
                .map(|s| (s.metadata.name.clone(), s.endpoints.len()))
                .collect();
            panic!("{what}: not within 10 s; slices and their sizes: {sizes:?}");
        };
        let sizes =
            |list: &[EndpointSlice]| list.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>();
        // How the 150 are split depends on how the pods' changes were batched: two or more
        // slices of at most 100, each endpoint in one.
        let sliced = |l: &[EndpointSlice]| {
            let sizes = sizes(l);
            sizes.len() >= 2
                && sizes.iter().sum::<usize>() == 150
                && sizes.iter().all(|n| *n <= 100)
        };
        let before = until("150 endpoints in slices of at most 100", &sliced).await;

        pods.patch_status_strategic("web-7", &ready(7, false))
            .await
            .unwrap();
        let unready = |s: &EndpointSlice| {
            s.endpoints.iter().any(|e| {
                e.addresses == ["10.1.0.7"]
                    && e.conditions.as_ref().and_then(|c| c.ready) == Some(false)
            })
        };
        let after = until("web-7 unready", &|l| l.iter().any(unready)).await;
        let versions = |l: &[EndpointSlice]| {
            l.iter()
                .map(|s| (s.metadata.name.clone(), s.metadata.resource_version.clone()))
                .collect::<BTreeSet<_>>()
        };
        let moved: Vec<_> = versions(&after)
            .difference(&versions(&before))
            .cloned()
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "only the slice holding web-7 is written: {moved:?}"
        );
        assert_eq!(sizes(&after), sizes(&before));

        for i in 0..150 {
            pods.delete(&format!("web-{i}"), &DeleteParams::default())
                .await
                .unwrap();
        }
        let empty = until("one empty slice", &|l| sizes(l) == [0]).await;
        assert_eq!(empty[0].ports, None);
        controller.abort();
    }
}
