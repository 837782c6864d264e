//! Choosing a backend: least outstanding requests over a power of two random choices (two
//! backends drawn at random, the less loaded one wins), or, with `sessionAffinity: ClientIP`,
//! the backend a client went to before while it is still ready.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng;

use super::table::Backend;

/// Outstanding requests per backend, and clients' sticky backends.
#[derive(Default)]
pub struct Balancer {
    outstanding: Mutex<HashMap<Backend, Arc<AtomicUsize>>>,
    sticky: Mutex<HashMap<(String, String), Backend>>,
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

    /// Picks a backend among `backends` (skipping `excluded`), and counts the request.
    pub fn pick(
        &self,
        service: &str,
        backends: &[Backend],
        excluded: Option<&Backend>,
        client: Option<&str>,
    ) -> Option<(Backend, InFlight)> {
        let candidates: Vec<&Backend> = backends.iter().filter(|b| Some(*b) != excluded).collect();
        if candidates.is_empty() {
            return None;
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
