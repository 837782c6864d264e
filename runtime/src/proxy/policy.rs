//! NetworkPolicy (`networking.k8s.io/v1`) as the proxy enforces it, with Kubernetes'
//! semantics: a pod is isolated for ingress (egress) once a policy of its namespace selects it
//! with that policy type, and then only traffic some selecting policy's rule allows passes;
//! an unselected pod is open. Peers are pods (`podSelector`, in the policy's namespace),
//! namespaces (`namespaceSelector`), both, or IP blocks; ports are numbers, ranges or the
//! destination pod's named ports.
//!
//! Every request between pods goes through the source node's proxy, which knows both ends,
//! so both directions are checked there: the source's egress and the destination's ingress.
//! Requests from outside the cluster (ingress, node ports) have no source pod and match only
//! IP blocks by the client's address. Not covered: the API server's pod proxy and the agent's
//! probes (always allowed, as the kubelet's are), and a pod's calls to the API server.
//!
//! The outside network: a pod may leave the cluster only when its namespace carries
//! `shoal.dev/egress: allow` (a namespace annotation: only who may update Namespaces, cluster
//! admins, can set it) and, if the pod is isolated for egress, a rule allows any destination
//! (no `to`, or an `ipBlock` of `0.0.0.0/0`): the proxy does not resolve outside names, so
//! narrower blocks do not open it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use shoal_api::api::selector;
use shoal_api::client::WatcherEvent;

/// The namespace annotation that lets a namespace's pods reach the outside network.
pub const EGRESS_ANNOTATION: &str = "shoal.dev/egress";

/// What policy needs of a pod.
#[derive(Clone, Debug, Default)]
struct PodFacts {
    namespace: String,
    labels: BTreeMap<String, String>,
    ip: Option<IpAddr>,
    /// Container ports by name.
    named_ports: HashMap<String, u16>,
}

impl PodFacts {
    fn of(pod: &Pod) -> Self {
        let named_ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = u16::try_from(p.container_port).ok()?;
                Some((p.name.clone()?, port))
            })
            .collect();
        Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            named_ports,
        }
    }
}

/// One end of a request as policy sees it.
#[derive(Clone, Copy, Debug)]
pub enum Peer<'a> {
    /// A pod, by `namespace/name`.
    Pod(&'a str),
    /// A pod known only by its IP (a request for a bare pod IP).
    PodIp(&'a str),
    /// Something outside the cluster, by its address if known.
    Outside(Option<&'a str>),
}

/// The cluster's policies, namespaces and pods, as far as policy needs them.
#[derive(Default)]
pub struct Policies {
    policies: HashMap<String, NetworkPolicy>,
    namespaces: HashMap<String, Namespace>,
    pods: HashMap<String, PodFacts>,
    /// Pod IP -> `namespace/name`.
    by_ip: HashMap<IpAddr, String>,
}

fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let text = selector::query_of(selector);
    // An empty selector selects everything; one that does not parse, nothing.
    text.is_empty() || selector::LabelSelector::parse(&text).is_ok_and(|s| s.matches(labels))
}

fn in_block(block: &k8s_openapi::api::networking::v1::IPBlock, ip: Option<IpAddr>) -> bool {
    let Some(ip) = ip else {
        return false;
    };
    let contains = |cidr: &str| cidr.parse::<IpNet>().is_ok_and(|net| net.contains(&ip));
    contains(&block.cidr) && !block.except.iter().flatten().any(|e| contains(e))
}

/// Whether `ports` (a rule's; none means all) allow `port` on the destination pod.
fn port_allowed(ports: Option<&Vec<NetworkPolicyPort>>, port: u16, destination: &PodFacts) -> bool {
    let Some(ports) = ports.filter(|p| !p.is_empty()) else {
        return true;
    };
    ports.iter().any(|allowed| {
        if allowed.protocol.as_deref().is_some_and(|p| p != "TCP") {
            return false;
        }
        match &allowed.port {
            None => true,
            Some(IntOrString::Int(first)) => {
                let last = allowed.end_port.unwrap_or(*first);
                (*first..=last).contains(&i32::from(port))
            }
            Some(IntOrString::String(name)) => destination.named_ports.get(name) == Some(&port),
        }
    })
}

impl Policies {
    fn policy_types(policy: &NetworkPolicy) -> (bool, bool) {
        let spec = policy.spec.as_ref();
        match spec.and_then(|s| s.policy_types.as_ref()) {
            Some(types) => (
                types.iter().any(|t| t == "Ingress"),
                types.iter().any(|t| t == "Egress"),
            ),
            // Kubernetes' default: Ingress always, Egress when there are egress rules.
            None => (true, spec.and_then(|s| s.egress.as_ref()).is_some()),
        }
    }

    /// The policies of `pod`'s namespace that select it for ingress or egress.
    fn selecting<'a>(
        &'a self,
        pod: &'a PodFacts,
        ingress: bool,
    ) -> impl Iterator<Item = &'a NetworkPolicy> + 'a {
        self.policies.values().filter(move |policy| {
            let (for_ingress, for_egress) = Self::policy_types(policy);
            policy.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                && if ingress { for_ingress } else { for_egress }
                && matches(
                    policy.spec.as_ref().and_then(|s| s.pod_selector.as_ref()),
                    &pod.labels,
                )
        })
    }

    /// Namespaces are kept by `/name`, as the watch cache keys cluster-scoped objects.
    fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(&format!("/{name}"))
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespace(namespace)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    /// Whether `peer` (a rule's) names `other` (a pod, or an address outside), for a policy
    /// of `policy_namespace`.
    fn peer_matches(
        &self,
        peer: &NetworkPolicyPeer,
        policy_namespace: &str,
        other: Option<&PodFacts>,
        address: Option<IpAddr>,
    ) -> bool {
        if let Some(block) = &peer.ip_block {
            return in_block(block, other.and_then(|p| p.ip).or(address));
        }
        let Some(other) = other else {
            return false;
        };
        let namespace_ok = match &peer.namespace_selector {
            Some(selector) => matches(Some(selector), &self.namespace_labels(&other.namespace)),
            None => other.namespace == policy_namespace,
        };
        namespace_ok
            && peer
                .pod_selector
                .as_ref()
                .is_none_or(|selector| matches(Some(selector), &other.labels))
    }

    fn facts(&self, peer: Peer<'_>) -> (Option<&PodFacts>, Option<IpAddr>) {
        match peer {
            Peer::Pod(key) => (self.pods.get(key), None),
            Peer::PodIp(ip) => {
                let parsed: Option<IpAddr> = ip.parse().ok();
                let pod = parsed
                    .and_then(|ip| self.by_ip.get(&ip))
                    .and_then(|key| self.pods.get(key));
                (pod, parsed)
            }
            Peer::Outside(address) => (None, address.and_then(|a| a.parse().ok())),
        }
    }

    /// Whether no NetworkPolicy exists (everything is open: nothing to look up).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Whether a request from `source` may reach `destination` on `port`: the source's
    /// egress rules, then the destination's ingress rules. The error says which refused.
    pub fn check(&self, source: Peer<'_>, destination: Peer<'_>, port: u16) -> Result<(), String> {
        if self.policies.is_empty() {
            return Ok(());
        }
        let (from, from_address) = self.facts(source);
        let (to, _) = self.facts(destination);
        let describe = |peer: Peer<'_>| match peer {
            Peer::Pod(key) => format!("pod {key}"),
            Peer::PodIp(ip) => format!("pod IP {ip}"),
            Peer::Outside(Some(address)) => address.to_string(),
            Peer::Outside(None) => "outside the cluster".to_string(),
        };
        if let (Some(from), Some(to)) = (from, to) {
            let mut selecting = self.selecting(from, false).peekable();
            if selecting.peek().is_some() {
                let allowed = selecting.any(|policy| {
                    let namespace = policy.metadata.namespace.as_deref().unwrap_or("");
                    policy
                        .spec
                        .iter()
                        .flat_map(|s| s.egress.iter().flatten())
                        .any(|rule| {
                            let peers_ok = rule.to.as_ref().is_none_or(|peers| {
                                peers.is_empty()
                                    || peers.iter().any(|peer| {
                                        self.peer_matches(peer, namespace, Some(to), None)
                                    })
                            });
                            peers_ok && port_allowed(rule.ports.as_ref(), port, to)
                        })
                });
                if !allowed {
                    return Err(format!(
                        "{} may not reach {} on port {port}: no egress rule of a NetworkPolicy selecting it allows it",
                        describe(source),
                        describe(destination)
                    ));
                }
            }
        }
        let Some(to) = to else {
            return Ok(());
        };
        let mut selecting = self.selecting(to, true).peekable();
        if selecting.peek().is_none() {
            return Ok(());
        }
        let allowed = selecting.any(|policy| {
            let namespace = policy.metadata.namespace.as_deref().unwrap_or("");
            policy
                .spec
                .iter()
                .flat_map(|s| s.ingress.iter().flatten())
                .any(|rule| {
                    let peers_ok = rule.from.as_ref().is_none_or(|peers| {
                        peers.is_empty()
                            || peers
                                .iter()
                                .any(|peer| self.peer_matches(peer, namespace, from, from_address))
                    });
                    peers_ok && port_allowed(rule.ports.as_ref(), port, to)
                })
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "{} may not reach {} on port {port}: no ingress rule of a NetworkPolicy selecting it allows it",
                describe(source),
                describe(destination)
            ))
        }
    }

    /// Whether pod `source` (`namespace/name`) may reach the network outside the cluster.
    pub fn check_outside(&self, namespace: &str, source: &str) -> Result<(), String> {
        let open = self
            .namespace(namespace)
            .and_then(|n| n.metadata.annotations.as_ref())
            .and_then(|a| a.get(EGRESS_ANNOTATION))
            .is_some_and(|v| v == "allow");
        if !open {
            return Err(format!(
                "namespace {namespace} does not allow egress outside the cluster (an admin annotates it {EGRESS_ANNOTATION}: allow)"
            ));
        }
        let Some(pod) = self.pods.get(source) else {
            return Ok(());
        };
        let mut selecting = self.selecting(pod, false).peekable();
        if selecting.peek().is_none() {
            return Ok(());
        }
        let anywhere = selecting.any(|policy| {
            policy
                .spec
                .iter()
                .flat_map(|s| s.egress.iter().flatten())
                .any(|rule| {
                    rule.to.as_ref().is_none_or(|peers| {
                        peers.is_empty()
                            || peers.iter().any(|peer| {
                                peer.ip_block.as_ref().is_some_and(|b| {
                                    b.cidr == "0.0.0.0/0"
                                        && b.except.as_ref().is_none_or(Vec::is_empty)
                                })
                            })
                    })
                })
        });
        if anywhere {
            Ok(())
        } else {
            Err(format!(
                "pod {source} may not reach outside the cluster: no egress rule of a NetworkPolicy selecting it allows 0.0.0.0/0"
            ))
        }
    }

    fn apply_pod(&mut self, event: WatcherEvent<Pod>) {
        let key_of = |pod: &Pod| {
            format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or(""),
                pod.metadata.name.as_deref().unwrap_or("")
            )
        };
        match event {
            WatcherEvent::Applied(pod) => {
                let key = key_of(&pod);
                self.forget(&key);
                let facts = PodFacts::of(&pod);
                if let Some(ip) = facts.ip {
                    self.by_ip.insert(ip, key.clone());
                }
                self.pods.insert(key, facts);
            }
            WatcherEvent::Deleted(pod) => self.forget(&key_of(&pod)),
            WatcherEvent::Restarted(all) => {
                self.pods.clear();
                self.by_ip.clear();
                for pod in all {
                    self.apply_pod(WatcherEvent::Applied(pod));
                }
            }
        }
    }

    fn forget(&mut self, key: &str) {
        if let Some(old) = self.pods.remove(key) {
            if let Some(ip) = old.ip {
                if self.by_ip.get(&ip).is_some_and(|k| k == key) {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }
}

/// Keeps `policies` current from watches until the task is dropped.
pub(crate) async fn follow(watches: super::Watches, policies: Arc<RwLock<Policies>>) {
    let mut network_policies = watches.of::<NetworkPolicy>();
    let mut namespaces = watches.of::<Namespace>();
    let mut pods = watches.of::<Pod>();
    loop {
        let write = || policies.write().unwrap_or_else(|p| p.into_inner());
        tokio::select! {
            Some(event) = network_policies.recv() => event.apply_to(&mut write().policies),
            Some(event) = namespaces.recv() => event.apply_to(&mut write().namespaces),
            Some(event) = pods.recv() => write().apply_pod(event),
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(namespace: &str, name: &str, labels: serde_json::Value, ip: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"namespace": namespace, "name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip}}))
        .unwrap()
    }

    fn policies(objects: Vec<serde_json::Value>) -> Policies {
        let mut p = Policies::default();
        for (i, object) in objects.into_iter().enumerate() {
            let policy: NetworkPolicy = serde_json::from_value(object).unwrap();
            p.policies.insert(i.to_string(), policy);
        }
        for (ns, name, labels, ip) in [
            ("a", "backend", json!({"app": "backend"}), "10.244.0.2"),
            ("a", "frontend", json!({"role": "frontend"}), "10.244.0.3"),
            ("a", "other", json!({}), "10.244.0.4"),
            ("b", "frontend", json!({"role": "frontend"}), "10.244.1.2"),
        ] {
            p.apply_pod(WatcherEvent::Applied(pod(ns, name, labels, ip)));
        }
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": "b", "labels": {"team": "web"}}}))
                .unwrap();
        WatcherEvent::Applied(namespace).apply_to(&mut p.namespaces);
        p
    }

    #[test]
    fn an_ingress_policy_admits_only_its_peers_and_ports() {
        let p = policies(vec![
            json!({"metadata": {"namespace": "a", "name": "backend"},
            "spec": {"podSelector": {"matchLabels": {"app": "backend"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}},
                                      {"namespaceSelector": {"matchLabels": {"team": "web"}}}],
                             "ports": [{"port": "http"}]}]}}),
        ]);
        let backend = Peer::Pod("a/backend");
        assert!(p.check(Peer::Pod("a/frontend"), backend, 8080).is_ok());
        assert!(
            p.check(Peer::Pod("b/frontend"), backend, 8080).is_ok(),
            "by namespace"
        );
        let refused = p.check(Peer::Pod("a/other"), backend, 8080).unwrap_err();
        assert!(refused.contains("no ingress rule"), "{refused}");
        assert!(
            p.check(Peer::Pod("a/frontend"), backend, 9090).is_err(),
            "port"
        );
        assert!(p
            .check(Peer::Outside(Some("1.2.3.4")), backend, 8080)
            .is_err());
        // Unselected pods stay open.
        assert!(p
            .check(Peer::Pod("a/other"), Peer::Pod("a/frontend"), 8080)
            .is_ok());
        assert!(p
            .check(Peer::Pod("a/other"), Peer::PodIp("10.244.0.2"), 8080)
            .is_err());
    }

    #[test]
    fn an_egress_policy_limits_where_its_pods_go() {
        let p = policies(vec![
            json!({"metadata": {"namespace": "a", "name": "frontend-out"},
            "spec": {"podSelector": {"matchLabels": {"role": "frontend"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "backend"}}}]},
                           {"to": [{"ipBlock": {"cidr": "10.244.1.0/24", "except": ["10.244.1.2/32"]}}]}]}}),
        ]);
        assert!(p
            .check(Peer::Pod("a/frontend"), Peer::Pod("a/backend"), 8080)
            .is_ok());
        let refused = p
            .check(Peer::Pod("a/frontend"), Peer::Pod("a/other"), 8080)
            .unwrap_err();
        assert!(refused.contains("no egress rule"), "{refused}");
        assert!(
            p.check(Peer::Pod("a/frontend"), Peer::Pod("b/frontend"), 8080)
                .is_err(),
            "excepted from the block"
        );
        assert!(p
            .check(Peer::Pod("a/other"), Peer::Pod("a/other"), 8080)
            .is_ok());
        assert!(
            p.check_outside("a", "a/frontend").is_err(),
            "namespace closed"
        );
    }

    #[test]
    fn the_outside_is_open_only_to_annotated_namespaces() {
        let mut p = policies(vec![]);
        assert!(p.check_outside("a", "a/other").is_err());
        let open: Namespace = serde_json::from_value(
            json!({"metadata": {"name": "a", "annotations": {"shoal.dev/egress": "allow"}}}),
        )
        .unwrap();
        WatcherEvent::Applied(open).apply_to(&mut p.namespaces);
        assert!(p.check_outside("a", "a/other").is_ok());
        let deny_all: NetworkPolicy =
            serde_json::from_value(json!({"metadata": {"namespace": "a", "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}))
            .unwrap();
        p.policies.insert("deny".into(), deny_all);
        assert!(p.check_outside("a", "a/other").is_err());
    }
}
