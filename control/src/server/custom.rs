//! The custom resources this API server serves, kept from the CustomResourceDefinitions in
//! the store: one row of the kinds table per served version of each CRD
//! ([`crate::api::custom::CustomKind`]). Routing, discovery and the OpenAPI documents look
//! kinds up here after the built-in table.
//!
//! Every API server keeps its own copy from one store watch (as the RBAC policy cache does),
//! so a CRD created through one server is served by all of them within the watch's delay; the
//! server that stored a CRD waits until its copy has it before answering, so a client may
//! create custom resources right after the CRD (as kube-apiserver's, once `Established`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::api::custom::CustomKind;
use crate::api::resources::ResourceInfo;
use crate::store::{EventType, Store};

/// The store's name for CRDs.
pub const CRDS: &str = "customresourcedefinitions.apiextensions.k8s.io";

/// The served custom kinds of one API server.
pub struct CustomResources {
    served: RwLock<Arc<Vec<&'static ResourceInfo>>>,
    /// Rows already built, by the CRD spec they came from: a CRD that comes back unchanged
    /// (a status write, a relist, a re-created CRD) reuses its rows instead of leaking new
    /// ones (see [`crate::api::custom`]).
    interned: Mutex<HashMap<String, Vec<&'static ResourceInfo>>>,
    /// The store revision the served kinds are known up to.
    seen: tokio::sync::watch::Sender<u64>,
}

impl Default for CustomResources {
    fn default() -> Self {
        Self {
            served: RwLock::default(),
            interned: Mutex::default(),
            seen: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl CustomResources {
    /// Every served custom kind, at every served version.
    pub fn rows(&self) -> Arc<Vec<&'static ResourceInfo>> {
        self.served
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The custom kind served at `/apis/{group}/{version}/{plural}`.
    pub fn lookup(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<&'static ResourceInfo> {
        self.rows()
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .copied()
    }

    /// The custom kind of `apiVersion` and `kind`.
    pub fn lookup_kind(&self, api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
        self.rows()
            .iter()
            .find(|r| r.kind == kind && r.api_version() == api_version)
            .copied()
    }

    /// Serves exactly the kinds of `crds`.
    fn load<'a>(&self, crds: impl IntoIterator<Item = &'a Value>) {
        let mut interned = self
            .interned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut rows = Vec::new();
        for crd in crds {
            let Some(spec) = crd.get("spec") else {
                continue;
            };
            let built = interned.entry(spec.to_string()).or_insert_with(|| {
                CustomKind::all_of(crd)
                    .into_iter()
                    .map(ResourceInfo::of_custom)
                    .collect()
            });
            rows.extend(built.iter().copied());
        }
        *self
            .served
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(rows);
    }

    /// Waits (at most 2 s) until the served kinds are those of the store at `revision`.
    pub async fn wait_for(&self, revision: u64) {
        let mut seen = self.seen.subscribe();
        let _ =
            tokio::time::timeout(Duration::from_secs(2), seen.wait_for(|&r| r >= revision)).await;
    }

    /// Loads the CRDs from `store` and follows them until the watch ends; relists when it
    /// falls behind. Every change relists the CRDs (there are few, and they change rarely).
    pub async fn sync(&self, store: &dyn Store) {
        loop {
            let watched = store.list(CRDS, None).and_then(|listing| {
                let stream = store.watch(CRDS, None, listing.revision)?;
                Ok((listing, stream))
            });
            let (listing, mut events) = match watched {
                Ok(watched) => watched,
                Err(e) => {
                    tracing::warn!("custom resources: loading CRDs: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.load(&listing.objects);
            self.seen.send_replace(listing.revision);
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) if event.event_type == EventType::Bookmark => {
                        self.seen.send_replace(event.revision);
                    }
                    Ok(event) => match store.list(CRDS, None) {
                        Ok(listing) => {
                            self.load(&listing.objects);
                            self.seen.send_replace(event.revision.max(listing.revision));
                        }
                        Err(e) => {
                            tracing::warn!("custom resources: relisting CRDs: {e}");
                            break;
                        }
                    },
                    Err(e) => {
                        tracing::info!("custom resources: the CRD watch ended ({e}); relisting");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(versions: &[&str]) -> Value {
        let versions: Vec<Value> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                json!({"name": v, "served": true, "storage": i == 0,
                                 "schema": {"openAPIV3Schema": {"type": "object"}}})
            })
            .collect();
        json!({"metadata": {"name": "widgets.example.com"}, "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"}, "versions": versions}})
    }

    #[test]
    fn serves_what_the_crds_say_and_reuses_unchanged_rows() {
        let custom = CustomResources::default();
        custom.load([&crd(&["v1", "v1beta1"])]);
        let v1 = custom.lookup("example.com", "v1", "widgets").unwrap();
        assert!(custom.lookup("example.com", "v1beta1", "widgets").is_some());
        assert_eq!(
            custom
                .lookup_kind("example.com/v1beta1", "Widget")
                .unwrap()
                .version,
            "v1beta1"
        );
        custom.load([&crd(&["v1", "v1beta1"])]);
        assert!(std::ptr::eq(
            v1,
            custom.lookup("example.com", "v1", "widgets").unwrap()
        ));
        custom.load([&crd(&["v1"])]);
        assert!(custom.lookup("example.com", "v1beta1", "widgets").is_none());
        custom.load([]);
        assert!(custom.lookup("example.com", "v1", "widgets").is_none());
    }
}
