//! The networks of the pods running on this node, by `namespace/name` and by pod IP: what
//! the gateway and the node's Service proxy serve requests on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::pod::network::PodNetwork;
use crate::proxy::LocalPod;

#[derive(Default)]
pub struct LocalNetworks {
    inner: Mutex<Networks>,
}

#[derive(Default)]
struct Networks {
    by_key: HashMap<String, (String, Arc<PodNetwork>)>,
    key_by_ip: HashMap<String, String>,
}

impl LocalNetworks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Networks> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, key: &str, ip: &str, network: Arc<PodNetwork>) {
        let mut networks = self.lock();
        networks.key_by_ip.insert(ip.to_string(), key.to_string());
        networks
            .by_key
            .insert(key.to_string(), (ip.to_string(), network));
    }

    pub fn remove(&self, key: &str) {
        let mut networks = self.lock();
        if let Some((ip, _)) = networks.by_key.remove(key) {
            if networks.key_by_ip.get(&ip).is_some_and(|k| k == key) {
                networks.key_by_ip.remove(&ip);
            }
        }
    }

    /// `namespace/name` of the pod with `ip`.
    pub fn key_of_ip(&self, ip: &str) -> Option<String> {
        self.lock().key_by_ip.get(ip).cloned()
    }

    pub fn get(&self, pod: LocalPod<'_>) -> Option<Arc<PodNetwork>> {
        let networks = self.lock();
        let key = match pod {
            LocalPod::Named(key) => key,
            LocalPod::Ip(ip) => networks.key_by_ip.get(ip)?,
        };
        networks.by_key.get(key).map(|(_, n)| n.clone())
    }
}
