//! What a controller has just done to its pods that the shared pod cache may not show yet,
//! as Kubernetes' `ControllerExpectations`: a controller that counts its pods in the cache
//! (`Client::cached`) must not count again before its own creates and deletes are in it, or
//! it would create a second replacement for every pod it has just made. As in Kubernetes,
//! an owner whose expectations the cache does not meet yet is not acted on: the pod events
//! still to come wake it again ([`Seen::Awaited`]). Kubernetes counts each pod event as it
//! passes; here the cache is compared with what the owner expects, so a pod deleted before
//! the cache ever showed it is never seen: after [`OVERDUE`] such an owner's pods are read
//! from the API, which is always current ([`Seen::Overdue`]), and after [`LAPSE`] the
//! expectation is forgotten.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::controller_of;

/// How long an expectation is waited for before it is forgotten: Kubernetes'
/// `ExpectationsTimeout`. Under load the shared watch can lag the store by many seconds;
/// an expectation that lapsed sooner would let a stale cache count too few pods (5 s let
/// a thousand-pod heal make 1,787 replacements).
pub const LAPSE: Duration = Duration::from_secs(300);

/// How long the cache may lag what an owner did before its pods are read from the API.
/// Under load (a thousand replacements at once) the shared watch lags by seconds, and a
/// list of a thousand pods from the API at every wake-up was the cluster's largest cost.
pub const OVERDUE: Duration = Duration::from_secs(5);

/// What the cache shows of what an owner did.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// Everything (or nothing was expected): the cache may be counted and acted on.
    Met,
    /// Not yet: the owner waits (at most this long) for the rest to reach the cache.
    Awaited(Duration),
    /// Not for [`OVERDUE`]: the owner's pods are to be read from the API.
    Overdue,
}

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

    /// What `pods` (what the cache shows of the pods `owner`'s selector selects) show of
    /// what `owner` expects; what they show is no longer expected.
    pub fn seen_in(&self, owner: &str, pods: &[Arc<Pod>]) -> Seen {
        self.seen_at(owner, pods, Instant::now())
    }

    fn seen_at(&self, owner: &str, pods: &[Arc<Pod>], now: Instant) -> Seen {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pending) = all.get_mut(owner) else {
            return Seen::Met;
        };
        let age = pending
            .since
            .map_or(LAPSE, |since| now.saturating_duration_since(since));
        if age >= LAPSE {
            all.remove(owner);
            return Seen::Met;
        }
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
        if pending.controlled.is_empty() && pending.deleted.is_empty() {
            all.remove(owner);
            Seen::Met
        } else if age >= OVERDUE {
            Seen::Overdue
        } else {
            Seen::Awaited(OVERDUE - age)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str, owner: &str, terminating: bool) -> Arc<Pod> {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": uid, "ownerReferences": [{"apiVersion": "apps/v1",
                "kind": "ReplicaSet", "name": "rs", "uid": owner, "controller": true}]}}))
        .unwrap();
        if terminating {
            pod.metadata.deletion_timestamp = Some(crate::api::time::time(chrono::Utc::now()));
        }
        Arc::new(pod)
    }

    #[test]
    fn the_cache_counts_once_it_shows_what_the_owner_did() {
        let expectations = Expectations::default();
        let t0 = Instant::now();
        assert_eq!(
            expectations.seen_at("rs-1", &[], t0),
            Seen::Met,
            "nothing expected"
        );

        expectations.controlled("rs-1", ["a".to_string(), "b".to_string()]);
        expectations.deleted("rs-1", "old-uid".into());
        let old = pod("old", "old-uid", "rs-1", false);
        let a = pod("a", "a-uid", "rs-1", false);
        let t1 = Instant::now();
        assert!(matches!(
            expectations.seen_at("rs-1", &[old.clone(), a.clone()], t1),
            Seen::Awaited(wait) if wait <= OVERDUE
        ));
        // "a" was seen: only "b" and the deletion are still expected.
        assert!(matches!(
            expectations.seen_at("rs-1", std::slice::from_ref(&old), t1),
            Seen::Awaited(_)
        ));
        assert_eq!(
            expectations.seen_at("rs-1", &[old], t1 + OVERDUE),
            Seen::Overdue,
            "a cache this late is not waited for"
        );
        let b = pod("b", "b-uid", "rs-1", false);
        let old_terminating = pod("old", "old-uid", "rs-1", true);
        assert_eq!(
            expectations.seen_at("rs-1", &[old_terminating, b], t1),
            Seen::Met
        );
        assert_eq!(
            expectations.seen_at("rs-1", &[], t1),
            Seen::Met,
            "met expectations are forgotten"
        );
    }

    #[test]
    fn a_pod_controlled_by_another_owner_does_not_count_and_expectations_lapse() {
        let expectations = Expectations::default();
        expectations.controlled("rs-1", ["a".to_string()]);
        let t1 = Instant::now();
        let other = [pod("a", "u", "rs-2", false)];
        assert!(matches!(
            expectations.seen_at("rs-1", &other, t1),
            Seen::Awaited(_)
        ));
        assert_eq!(
            expectations.seen_at("rs-2", &[], t1),
            Seen::Met,
            "each owner has its own"
        );
        assert_eq!(expectations.seen_at("rs-1", &[], t1 + LAPSE), Seen::Met);
    }
}
