//! What a controller has just done to its pods that the shared pod cache may not show yet,
//! as Kubernetes' `ControllerExpectations`: a controller that counts its pods in the cache
//! (`Client::cached`) must not count again before its own creates and deletes are in it, or
//! it would create a second replacement for every pod it has just made. Here the answer to
//! "is the cache caught up?" decides where the pods are read: the cache when it shows every
//! pod this owner created (or adopted) and every deletion it made, else the API, which is
//! always current. An expectation the cache never meets (a pod someone else deleted at
//! once) lapses after [`LAPSE`]; until then that owner's pods are read from the API.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::controller_of;

/// How long an expectation is waited for before it is forgotten: Kubernetes'
/// `ExpectationsTimeout`. Under load the shared watch can lag the store by many seconds;
/// an expectation that lapsed sooner would let a stale cache count too few pods (5 s let
/// a thousand-pod heal make 1,787 replacements).
pub const LAPSE: Duration = Duration::from_secs(300);

/// What one owner expects to see.
#[derive(Default)]
struct Pending {
    /// Names of pods it created or adopted, to be seen controlled by it.
    controlled: HashSet<String>,
    /// Uids of pods it deleted, to be seen gone or terminating.
    deleted: HashSet<String>,
    /// When the last expectation was added.
    since: Option<Instant>,
}

/// The expectations of one controller, by owner uid.
#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, Pending>>);

impl Expectations {
    /// `owner` created or adopted the pods named `names`.
    pub fn controlled(&self, owner: &str, names: impl IntoIterator<Item = String>) {
        self.with(owner, |p| p.controlled.extend(names));
    }

    /// `owner` deleted the pod whose uid is `uid`.
    pub fn deleted(&self, owner: &str, uid: String) {
        self.with(owner, |p| {
            p.deleted.insert(uid);
        });
    }

    fn with(&self, owner: &str, add: impl FnOnce(&mut Pending)) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let pending = all.entry(owner.to_string()).or_default();
        add(pending);
        pending.since = Some(Instant::now());
    }

    /// Whether `pods` (what the cache shows of the pods `owner`'s selector selects) show
    /// everything `owner` expects; what they show is no longer expected.
    pub fn met_by(&self, owner: &str, pods: &[Pod]) -> bool {
        self.met_at(owner, pods, Instant::now())
    }

    fn met_at(&self, owner: &str, pods: &[Pod], now: Instant) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pending) = all.get_mut(owner) else {
            return true;
        };
        let lapsed = pending
            .since
            .is_none_or(|since| now.saturating_duration_since(since) >= LAPSE);
        if !lapsed {
            for pod in pods {
                let ours = controller_of(&pod.metadata).is_some_and(|o| o.uid == owner);
                if ours {
                    pending
                        .controlled
                        .remove(pod.metadata.name.as_deref().unwrap_or_default());
                }
            }
            let live: HashSet<&str> = (pods.iter())
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.uid.as_deref())
                .collect();
            pending.deleted.retain(|uid| live.contains(uid.as_str()));
        }
        let met = lapsed || (pending.controlled.is_empty() && pending.deleted.is_empty());
        if met {
            all.remove(owner);
        }
        met
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str, owner: &str, terminating: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": uid, "ownerReferences": [{"apiVersion": "apps/v1",
                "kind": "ReplicaSet", "name": "rs", "uid": owner, "controller": true}]}}))
        .unwrap();
        if terminating {
            pod.metadata.deletion_timestamp = Some(crate::api::time::time(chrono::Utc::now()));
        }
        pod
    }

    #[test]
    fn the_cache_counts_once_it_shows_what_the_owner_did() {
        let expectations = Expectations::default();
        let t0 = Instant::now();
        assert!(expectations.met_at("rs-1", &[], t0), "nothing expected");

        expectations.controlled("rs-1", ["a".to_string(), "b".to_string()]);
        expectations.deleted("rs-1", "old-uid".into());
        let old = pod("old", "old-uid", "rs-1", false);
        let a = pod("a", "a-uid", "rs-1", false);
        assert!(!expectations.met_at("rs-1", &[old.clone(), a.clone()], t0));
        // "a" was seen: only "b" and the deletion are still expected.
        assert!(!expectations.met_at("rs-1", &[old], t0));
        let b = pod("b", "b-uid", "rs-1", false);
        let old_terminating = pod("old", "old-uid", "rs-1", true);
        assert!(expectations.met_at("rs-1", &[old_terminating, b], t0));
        assert!(
            expectations.met_at("rs-1", &[], t0),
            "met expectations are forgotten"
        );
    }

    #[test]
    fn a_pod_controlled_by_another_owner_does_not_count_and_expectations_lapse() {
        let expectations = Expectations::default();
        let t0 = Instant::now();
        expectations.controlled("rs-1", ["a".to_string()]);
        assert!(!expectations.met_at("rs-1", &[pod("a", "u", "rs-2", false)], t0));
        assert!(
            expectations.met_at("rs-2", &[], t0),
            "each owner has its own"
        );
        assert!(expectations.met_at("rs-1", &[], Instant::now() + LAPSE));
    }
}
