//! What the proxy knows of the cluster, kept current from watches: Services (by name and by
//! ClusterIP), their Endpoints (ready addresses only), Ingresses and the nodes' gateways.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{EndpointAddress, Endpoints, Node, Service};
use k8s_openapi::api::networking::v1::Ingress;
use shoal_api::client::WatcherEvent;

use super::rules::ServicePort;

/// One ready endpoint of a Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub namespace: String,
    /// The pod's name; empty for a request to a bare pod IP, which the node that owns the
    /// IP resolves (the proxy watches no pods).
    pub pod: String,
    pub ip: String,
    pub node: String,
    pub port: u16,
}

/// A Service port resolved to the ready backends behind it.
#[derive(Clone, Debug)]
pub struct Route {
    /// `namespace/name` of the Service.
    pub service: String,
    pub port: u16,
    pub backends: Vec<Backend>,
    pub client_ip_affinity: bool,
}

#[derive(Default)]
pub struct Table {
    services: HashMap<String, Service>,
    endpoints: HashMap<String, Endpoints>,
    by_cluster_ip: HashMap<String, String>,
    /// Node name -> `address:port` of its gateway.
    gateways: HashMap<String, String>,
    /// Node name -> its pod CIDR.
    pod_cidrs: HashMap<String, Ipv4Net>,
    ingresses: HashMap<String, Ingress>,
}

impl Table {
    fn apply_service(&mut self, event: WatcherEvent<Service>) {
        event.apply_to(&mut self.services);
        self.by_cluster_ip = self
            .services
            .iter()
            .filter_map(|(key, s)| {
                let ip = s.spec.as_ref()?.cluster_ip.clone()?;
                (ip != "None" && !ip.is_empty()).then(|| (ip, key.clone()))
            })
            .collect();
    }

    fn apply_endpoints(&mut self, event: WatcherEvent<Endpoints>) {
        event.apply_to(&mut self.endpoints);
    }

    fn apply_ingress(&mut self, event: WatcherEvent<Ingress>) {
        event.apply_to(&mut self.ingresses);
    }

    fn apply_node(&mut self, event: WatcherEvent<Node>) {
        if let WatcherEvent::Restarted(_) = &event {
            self.gateways.clear();
            self.pod_cidrs.clear();
        }
        let deleted = matches!(event, WatcherEvent::Deleted(_));
        for node in event.into_objects() {
            let name = node.metadata.name.clone().unwrap_or_default();
            let cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref());
            match cidr
                .and_then(|c| c.parse::<Ipv4Net>().ok())
                .filter(|_| !deleted)
            {
                Some(net) => {
                    self.pod_cidrs.insert(name.clone(), net);
                }
                None => {
                    self.pod_cidrs.remove(&name);
                }
            }
            let status = node.status.unwrap_or_default();
            let address = status
                .addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone());
            let port = status
                .daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|e| e.port);
            match (deleted, address, port) {
                (false, Some(address), Some(port)) => {
                    self.gateways.insert(name, format!("{address}:{port}"));
                }
                _ => {
                    self.gateways.remove(&name);
                }
            }
        }
    }

    /// The gateway (`address:port`) of a node.
    pub fn gateway(&self, node: &str) -> Option<String> {
        self.gateways.get(node).cloned()
    }

    /// The route a pod of `namespace` means by `host:port`: a ClusterIP, a pod IP,
    /// `svc[.ns[.svc[.cluster.local]]]`, or `pod.svc[.ns[.svc[.cluster.local]]]` for a pod of a
    /// Service by its hostname (a StatefulSet's pods behind their headless Service).
    pub fn resolve_host(&self, namespace: &str, host: &str, port: u16) -> Option<Route> {
        if let Some(key) = self.by_cluster_ip.get(host) {
            return self.route(key, Some(port));
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return self.pod_ip_route(ip, port);
        }
        let name = host
            .strip_suffix(".svc.cluster.local")
            .or_else(|| host.strip_suffix(".svc"))
            .unwrap_or(host);
        match name.split('.').collect::<Vec<_>>()[..] {
            [service] => self.service_route(&format!("{namespace}/{service}"), port),
            [service, ns] => self
                .service_route(&format!("{ns}/{service}"), port)
                .or_else(|| self.hostname_route(namespace, ns, service, port)),
            [pod, service, ns] => self.hostname_route(ns, service, pod, port),
            _ => None,
        }
    }

    /// A Service's route; a headless one (clusterIP None) has no ports of its own to map, so
    /// the port asked is the pods' port, as when a client connects to the pod IPs its DNS gives.
    fn service_route(&self, key: &str, port: u16) -> Option<Route> {
        let spec = self.services.get(key)?.spec.as_ref()?;
        if spec.cluster_ip.as_deref() != Some("None") {
            return self.route(key, Some(port));
        }
        Some(Route {
            service: key.to_string(),
            port,
            backends: self.ready_backends(key, |_| true, port),
            client_ip_affinity: false,
        })
    }

    /// The pod with `hostname` among Service `namespace/service`'s endpoints.
    fn hostname_route(
        &self,
        namespace: &str,
        service: &str,
        hostname: &str,
        port: u16,
    ) -> Option<Route> {
        let key = format!("{namespace}/{service}");
        self.services.get(&key)?;
        let known = self.endpoints.get(&key)?.subsets.iter().flatten().any(|s| {
            let all = s
                .addresses
                .iter()
                .flatten()
                .chain(s.not_ready_addresses.iter().flatten());
            all.clone().any(|a| a.hostname.as_deref() == Some(hostname))
        });
        known.then(|| Route {
            service: format!("{hostname}.{key}"),
            port,
            backends: self.ready_backends(&key, |a| a.hostname.as_deref() == Some(hostname), port),
            client_ip_affinity: false,
        })
    }

    /// The ready addresses of Service `key` that `keep` keeps, all on `port`.
    fn ready_backends(
        &self,
        key: &str,
        keep: impl Fn(&EndpointAddress) -> bool,
        port: u16,
    ) -> Vec<Backend> {
        let (namespace, _) = key.split_once('/').unwrap_or_default();
        let subsets = self.endpoints.get(key).and_then(|e| e.subsets.as_ref());
        let addresses = subsets
            .into_iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten());
        addresses
            .filter(|a| keep(a))
            .filter_map(|a| {
                Some(Backend {
                    namespace: namespace.to_string(),
                    pod: a.target_ref.as_ref()?.name.clone()?,
                    ip: a.ip.clone(),
                    node: a.node_name.clone()?,
                    port,
                })
            })
            .collect()
    }

    /// A pod IP: the node whose pod CIDR holds it serves it, on the port asked. The pod
    /// itself is found by that node ([`Backend::pod`] stays empty).
    fn pod_ip_route(&self, ip: Ipv4Addr, port: u16) -> Option<Route> {
        let node = self
            .pod_cidrs
            .iter()
            .find(|(_, net)| net.contains(&ip))
            .map(|(node, _)| node.clone())?;
        Some(Route {
            service: format!("pod {ip}"),
            port,
            backends: vec![Backend {
                namespace: String::new(),
                pod: String::new(),
                ip: ip.to_string(),
                node,
                port,
            }],
            client_ip_affinity: false,
        })
    }

    /// The route an Ingress rule gives a request for `host` (without port) and `path`.
    pub fn ingress_route(&self, host: &str, path: &str) -> Option<Route> {
        let target = super::rules::choose(self.ingresses.values(), host, path)?;
        let key = format!("{}/{}", target.namespace, target.service);
        match target.port {
            ServicePort::Number(n) => self.route(&key, Some(n)),
            ServicePort::Name(name) => {
                let spec = self.services.get(&key)?.spec.as_ref()?;
                let port = spec
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(&name))?;
                self.route(&key, Some(port.port as u16))
            }
        }
    }

    /// `namespace/name` of the TLS Secret an Ingress names for `host` in its `spec.tls`: an
    /// entry listing the host (or a `*.` wildcard matching one label) first, else an entry
    /// listing no hosts (it covers all); Ingresses in name order, so the choice is stable.
    pub fn tls_secret_for(&self, host: &str) -> Option<String> {
        let mut ingresses: Vec<(&String, &Ingress)> = self.ingresses.iter().collect();
        ingresses.sort_by(|a, b| a.0.cmp(b.0));
        let entries = || {
            ingresses.iter().flat_map(|(_, ingress)| {
                let namespace = ingress.metadata.namespace.clone().unwrap_or_default();
                let tls = ingress.spec.as_ref().and_then(|s| s.tls.as_ref());
                tls.into_iter().flatten().filter_map(move |entry| {
                    let secret = entry.secret_name.as_ref()?;
                    Some((format!("{namespace}/{secret}"), entry.hosts.clone()))
                })
            })
        };
        let matches = |pattern: &str| match pattern.strip_prefix("*.") {
            Some(domain) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == domain),
            None => pattern.eq_ignore_ascii_case(host),
        };
        entries()
            .find(|(_, hosts)| hosts.iter().flatten().any(|h| matches(h)))
            .or_else(|| entries().find(|(_, hosts)| hosts.as_ref().is_none_or(Vec::is_empty)))
            .map(|(secret, _)| secret)
    }

    /// `namespace/name` of the Ingresses whose status shows no address yet.
    pub fn ingresses_without_address(&self) -> Vec<String> {
        let has_address = |i: &Ingress| {
            let lb = i.status.as_ref().and_then(|s| s.load_balancer.as_ref());
            lb.and_then(|lb| lb.ingress.as_ref())
                .is_some_and(|a| !a.is_empty())
        };
        (self.ingresses.iter())
            .filter(|(_, i)| !has_address(i))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Services of type NodePort and LoadBalancer: `(namespace/name, service port, node
    /// port, load balancer)` for each of their ports.
    pub fn node_ports(&self) -> Vec<(String, u16, u16, bool)> {
        let mut ports = Vec::new();
        for (key, service) in &self.services {
            let Some(spec) = service.spec.as_ref() else {
                continue;
            };
            let load_balancer = spec.type_.as_deref() == Some("LoadBalancer");
            if !load_balancer && spec.type_.as_deref() != Some("NodePort") {
                continue;
            }
            for port in spec.ports.iter().flatten() {
                if let Some(node_port) = port.node_port {
                    ports.push((
                        key.clone(),
                        port.port as u16,
                        node_port as u16,
                        load_balancer,
                    ));
                }
            }
        }
        ports
    }

    /// The ready backends of Service `key` on service port `port` (`None`: the port of a
    /// single-port Service, or the one named `http`, as the dev ingress asks).
    pub fn route(&self, key: &str, port: Option<u16>) -> Option<Route> {
        let service = self.services.get(key)?;
        let spec = service.spec.as_ref()?;
        let ports = spec.ports.as_deref().unwrap_or_default();
        let service_port = match port {
            Some(port) => ports.iter().find(|p| p.port == port as i32)?,
            None => ports
                .iter()
                .find(|p| p.name.as_deref() == Some("http"))
                .or_else(|| ports.first())?,
        };
        let (namespace, _) = key.split_once('/')?;
        let mut backends = Vec::new();
        for subset in self
            .endpoints
            .get(key)
            .and_then(|e| e.subsets.as_ref())
            .into_iter()
            .flatten()
        {
            let subset_ports = subset.ports.as_deref().unwrap_or_default();
            let Some(port) = subset_ports
                .iter()
                .find(|p| p.name == service_port.name || subset_ports.len() == 1)
            else {
                continue;
            };
            for address in subset.addresses.iter().flatten() {
                let pod = address.target_ref.as_ref().and_then(|r| r.name.clone());
                let (Some(pod), Some(node)) = (pod, address.node_name.clone()) else {
                    continue;
                };
                backends.push(Backend {
                    namespace: namespace.to_string(),
                    pod,
                    ip: address.ip.clone(),
                    node,
                    port: port.port as u16,
                });
            }
        }
        Some(Route {
            service: key.to_string(),
            port: service_port.port as u16,
            backends,
            client_ip_affinity: spec.session_affinity.as_deref() == Some("ClientIP"),
        })
    }
}

/// Keeps `table` current until the watches end; `changed` ticks after each change of a
/// Service or an Ingress (what the node-port listeners and the ingress follow).
pub(crate) async fn follow(
    watches: super::Watches,
    table: Arc<RwLock<Table>>,
    changed: tokio::sync::watch::Sender<u64>,
    endpoints_changed: tokio::sync::watch::Sender<u64>,
) {
    let mut services = watches.of::<Service>();
    let mut endpoints = watches.of::<Endpoints>();
    let mut nodes = watches.of::<Node>();
    let mut ingresses = watches.of::<Ingress>();
    loop {
        let write = || table.write().unwrap_or_else(|p| p.into_inner());
        tokio::select! {
            Some(event) = services.recv() => {
                write().apply_service(event);
                changed.send_modify(|n| *n += 1);
            }
            Some(event) = endpoints.recv() => {
                write().apply_endpoints(event);
                endpoints_changed.send_modify(|n| *n += 1);
            }
            Some(event) = nodes.recv() => write().apply_node(event),
            Some(event) = ingresses.recv() => {
                write().apply_ingress(event);
                changed.send_modify(|n| *n += 1);
            }
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(namespace: &str, name: &str, tls: serde_json::Value) -> WatcherEvent<Ingress> {
        WatcherEvent::Applied(
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": namespace, "name": name},
                "spec": {"tls": tls},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn a_host_gets_the_secret_that_names_it_then_a_wildcard_then_a_catch_all() {
        let mut table = Table::default();
        table.apply_ingress(ingress(
            "shop",
            "a",
            serde_json::json!([{"hosts": ["shop.test"], "secretName": "exact"},
                               {"hosts": ["*.shop.test"], "secretName": "wild"}]),
        ));
        table.apply_ingress(ingress(
            "web",
            "b",
            serde_json::json!([{"secretName": "everything"}]),
        ));
        assert_eq!(
            table.tls_secret_for("shop.test").as_deref(),
            Some("shop/exact")
        );
        assert_eq!(
            table.tls_secret_for("api.shop.test").as_deref(),
            Some("shop/wild")
        );
        // A wildcard covers one label only.
        assert_eq!(
            table.tls_secret_for("a.b.shop.test").as_deref(),
            Some("web/everything")
        );
        assert_eq!(
            table.tls_secret_for("other.test").as_deref(),
            Some("web/everything")
        );
        let mut without_catch_all = Table::default();
        without_catch_all.apply_ingress(ingress(
            "shop",
            "a",
            serde_json::json!([{"hosts": ["shop.test"], "secretName": "exact"}]),
        ));
        assert_eq!(without_catch_all.tls_secret_for("other.test"), None);
    }
}
