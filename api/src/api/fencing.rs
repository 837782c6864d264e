//! The rule that keeps a pod which must be unique from ever running twice while its node is
//! lost, shared by the agent (which fences itself) and the node lifecycle controller (which
//! replaces pods of unreachable nodes).
//!
//! A pod *must be unique* when it belongs to a StatefulSet (its ordinal is an identity) or
//! mounts a PersistentVolumeClaim (whose data two writers would corrupt); every claim counts,
//! not only `ReadWriteOnce` ones, so that the agent can decide from the pod alone.
//!
//! The timing, with `D` the lease's `leaseDurationSeconds`:
//! - the agent remembers when it *sent* its last successful lease renewal, `s`. At `s + D`
//!   without a newer success it stops its unique pods (and says so in its log); it starts them
//!   again once a renewal succeeds;
//! - the controller remembers when it *saw* the last renewal, `o`, by its own clock. A
//!   renewal is seen after it was sent, so `o >= s` (clocks of different machines are never
//!   compared: both are intervals on each side's monotonic clock). It replaces a unique pod of
//!   an unreachable node only at `o + D + FENCE_MARGIN`, when the agent, if it still runs,
//!   has stopped that pod for at least [`FENCE_MARGIN`] (the time a stop takes, and what
//!   separates two clocks' rates over `D`).
//!
//! Every other pod of a controller (ReplicaSet, Job, …) is replaced as soon as its node is
//! unreachable: a second copy for a few seconds is what Kubernetes allows them too.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

/// How long after the agent's own fencing bound the controller waits before replacing a
/// unique pod.
pub const FENCE_MARGIN: Duration = Duration::from_secs(1);

/// The namespace of the nodes' Leases: what agents renew and the node lifecycle controller
/// judges.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The reason of the `Ready=False` condition the node lifecycle controller puts on the pods
/// of an unreachable node; an agent that sees it on a pod it runs writes the pod's status
/// again (it was unreachable, not its pods).
pub const NODE_UNREACHABLE_REASON: &str = "NodeUnreachable";

/// Whether `pod` must never run twice (a StatefulSet's pod, or one with a claim).
pub fn must_be_unique(pod: &Pod) -> bool {
    let of_stateful_set = (pod.metadata.owner_references.iter().flatten())
        .any(|o| o.controller == Some(true) && o.kind == "StatefulSet");
    let has_claim = (pod.spec.iter())
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| v.persistent_volume_claim.is_some());
    of_stateful_set || has_claim
}

/// The kind of `pod`'s controller, if it has one.
pub fn controller_kind(pod: &Pod) -> Option<&str> {
    (pod.metadata.owner_references.iter().flatten())
        .find(|o| o.controller == Some(true))
        .map(|o| o.kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn stateful_set_pods_and_pods_with_claims_are_unique() {
        let owned = |kind: &str| {
            pod(json!({"metadata": {"name": "p", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": kind, "name": "o", "uid": "u", "controller": true}]}}))
        };
        assert!(must_be_unique(&owned("StatefulSet")));
        assert!(!must_be_unique(&owned("ReplicaSet")));
        assert_eq!(controller_kind(&owned("Job")), Some("Job"));
        let claimed = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "c"}}]}}));
        assert!(must_be_unique(&claimed));
        assert_eq!(controller_kind(&claimed), None);
        let scratch = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "volumes": [{"name": "tmp", "emptyDir": {}}]}}));
        assert!(!must_be_unique(&scratch));
    }
}
