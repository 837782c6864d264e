//! Choosing a backend: least outstanding requests over a power of two random choices (two
//! backends drawn at random, the less loaded one wins), or, with `sessionAffinity: ClientIP`,
//! the backend a client went to before while it is still ready. Backends on a node whose
//! gateway just refused a connection are left out for [`EJECTION`] (unless nothing else is
//! left): a lost node's pods stay in the endpoints until the control plane finds it gone, and
//! meanwhile a retry must not land on another of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use super::table::Backend;

/// How long a node whose gateway refused is left out: about the time the control plane
/// takes to find a lost node (its pods then leave the endpoints); a node that was only
/// restarting gets requests again after it.
pub const EJECTION: Duration = Duration::from_secs(3);

/// Outstanding requests per backend, clients' sticky backends, and nodes left out.
#[derive(Default)]
pub struct Balancer {
    outstanding: Mutex<HashMap<Backend, Arc<AtomicUsize>>>,
    sticky: Mutex<HashMap<(String, String), Backend>>,
    /// Nodes whose gateway refused, and until when they are left out.
    ejected: Mutex<HashMap<String, Instant>>,
}

/// A request in flight to a backend; dropping it ends the request's count.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    fn counter(&self, backend: &Backend) -> Arc<AtomicUsize> {
        self.outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(backend.clone())
            .or_default()
            .clone()
    }

    /// Leaves the backends on `node` out for [`EJECTION`]: its gateway refused.
    pub fn eject_node(&self, node: &str) {
        let mut ejected = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        ejected.retain(|_, until| *until > now);
        ejected.insert(node.to_string(), now + EJECTION);
    }

    /// Picks a backend among `backends` (skipping `excluded`, and those on ejected nodes
    /// while any other is left), and counts the request.
    pub fn pick(
        &self,
        service: &str,
        backends: &[Backend],
        excluded: Option<&Backend>,
        client: Option<&str>,
    ) -> Option<(Backend, InFlight)> {
        let mut candidates: Vec<&Backend> =
            backends.iter().filter(|b| Some(*b) != excluded).collect();
        if candidates.is_empty() {
            return None;
        }
        {
            let ejected = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
            if !ejected.is_empty() {
                let now = Instant::now();
                let out = |b: &Backend| ejected.get(&b.node).is_some_and(|until| *until > now);
                if candidates.iter().any(|b| !out(b)) {
                    candidates.retain(|b| !out(b));
                }
            }
        }
        let sticky_key = client.map(|c| (service.to_string(), c.to_string()));
        let remembered = sticky_key.as_ref().and_then(|k| {
            let sticky = self.sticky.lock().unwrap_or_else(|p| p.into_inner());
            sticky.get(k).filter(|b| candidates.contains(b)).cloned()
        });
        let chosen = match remembered {
            Some(backend) => backend,
            None => {
                let mut rng = rand::thread_rng();
                let first = candidates[rng.gen_range(0..candidates.len())];
                let second = candidates[rng.gen_range(0..candidates.len())];
                let load = |b: &Backend| self.counter(b).load(Ordering::Relaxed);
                if load(second) < load(first) {
                    second.clone()
                } else {
                    first.clone()
                }
            }
        };
        if let Some(key) = sticky_key {
            self.sticky
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, chosen.clone());
        }
        let counter = self.counter(&chosen);
        counter.fetch_add(1, Ordering::Relaxed);
        Some((chosen, InFlight(counter)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(pod: &str) -> Backend {
        Backend {
            namespace: "default".into(),
            pod: pod.into(),
            ip: format!("10.0.0.{}", pod.len()),
            node: "n".into(),
            port: 8080,
        }
    }

    #[test]
    fn backends_on_a_node_that_refused_are_left_out_while_others_remain() {
        let balancer = Balancer::default();
        let on = |pod: &str, node: &str| Backend {
            node: node.into(),
            ..backend(pod)
        };
        let backends: Vec<Backend> = (0..10)
            .map(|i| on(&format!("lost-{i}"), "lost"))
            .chain([on("kept", "keeper")])
            .collect();
        balancer.eject_node("lost");
        for _ in 0..100 {
            let (picked, _) = balancer.pick("svc", &backends, None, None).unwrap();
            assert_eq!(picked.pod, "kept");
        }
        // With the only other one excluded (it refused too), the ejected ones are all left.
        let (picked, _) = balancer
            .pick("svc", &backends, Some(&backends[10]), None)
            .unwrap();
        assert_eq!(picked.node, "lost");
    }

    #[test]
    fn busy_backends_get_fewer_requests_and_clients_stick() {
        let balancer = Balancer::default();
        let backends = [backend("a"), backend("bb"), backend("ccc")];
        // Hold 10 requests on "a": two random choices almost never pick it again.
        let held: Vec<InFlight> = (0..10)
            .map(|_| {
                InFlight({
                    let c = balancer.counter(&backends[0]);
                    c.fetch_add(1, Ordering::Relaxed);
                    c
                })
            })
            .collect();
        let mut to_a = 0;
        for _ in 0..300 {
            let (chosen, _in_flight) = balancer.pick("s", &backends, None, None).unwrap();
            to_a += usize::from(chosen == backends[0]);
        }
        // "a" wins only when both draws are "a": about 1/9 of the time.
        assert!(to_a < 70, "{to_a} of 300 went to the busy backend");
        drop(held);
        let excluded = balancer.pick("s", &backends[..2], Some(&backends[0]), None);
        assert_eq!(excluded.unwrap().0, backends[1]);
        let (first, _) = balancer
            .pick("s", &backends, None, Some("1.2.3.4"))
            .unwrap();
        for _ in 0..20 {
            let (again, _) = balancer
                .pick("s", &backends, None, Some("1.2.3.4"))
                .unwrap();
            assert_eq!(again, first, "ClientIP affinity keeps the backend");
        }
    }
}
