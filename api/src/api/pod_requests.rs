//! What a pod asks of its node, as Kubernetes' `PodRequests` counts it: the main containers
//! run together, init containers one at a time before them, and native sidecars (init
//! containers with `restartPolicy: Always`) from their turn on beside everything after them.
//! So a pod needs the larger of
//! - the main containers plus every sidecar, and
//! - for each init container, its own amount plus the sidecars started before it (a sidecar's
//!   own turn counts the sidecars up to and including it).
//!
//! The scheduler (typed pods, `u64`), quota and LimitRange admission (JSON, milli-units in
//! `i128`) all count through [`effective`], so they cannot disagree.

use k8s_openapi::api::core::v1::Container;
use serde_json::Value;

/// A native sidecar: an init container with `restartPolicy: Always` (Kubernetes 1.29+).
pub fn is_sidecar(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

/// [`is_sidecar`] of a container as JSON.
pub fn is_sidecar_json(container: &Value) -> bool {
    container.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

/// The effective amount of one resource: `init` yields (is a sidecar, amount) in order, `main`
/// the main containers' amounts; `add` must saturate (amounts are user-given).
pub fn effective<T: Copy + Ord + Default>(
    init: impl IntoIterator<Item = (bool, T)>,
    main: impl IntoIterator<Item = T>,
    add: impl Fn(T, T) -> T,
) -> T {
    let mut steady = main.into_iter().fold(T::default(), &add);
    let mut sidecars = T::default();
    let mut init_peak = T::default();
    for (sidecar, amount) in init {
        let during_turn = if sidecar {
            steady = add(steady, amount);
            sidecars = add(sidecars, amount);
            sidecars
        } else {
            add(amount, sidecars)
        };
        init_peak = init_peak.max(during_turn);
    }
    steady.max(init_peak)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(init: &[(bool, u64)], main: &[u64]) -> u64 {
        effective(
            init.iter().copied(),
            main.iter().copied(),
            u64::saturating_add,
        )
    }

    #[test]
    fn init_containers_run_alone_and_sidecars_stay() {
        // No init containers: the main containers' sum.
        assert_eq!(sum(&[], &[100, 200]), 300);
        // A large regular init container runs alone: its amount if larger.
        assert_eq!(sum(&[(false, 500)], &[100, 200]), 500);
        assert_eq!(sum(&[(false, 50)], &[100, 200]), 300);
        // A sidecar adds to the steady state.
        assert_eq!(sum(&[(true, 100)], &[100, 200]), 400);
        // A regular init container after a sidecar runs beside it: 100 + 450 = 550.
        assert_eq!(sum(&[(true, 100), (false, 450)], &[100, 200]), 550);
        // ...but one before it runs alone: max(450, 100 + 300).
        assert_eq!(sum(&[(false, 450), (true, 100)], &[100, 200]), 450);
        // Sidecars 50 and 100 with a regular init container of 500 between them: its turn
        // (50 + 500) beats the steady state (100 + 50 + 100).
        assert_eq!(sum(&[(true, 50), (false, 500), (true, 100)], &[100]), 550);
    }

    #[test]
    fn amounts_saturate() {
        assert_eq!(sum(&[(true, u64::MAX)], &[u64::MAX, 1]), u64::MAX);
    }

    #[test]
    fn a_sidecar_is_an_init_container_that_always_restarts() {
        let mut container = Container::default();
        assert!(!is_sidecar(&container));
        container.restart_policy = Some("Always".into());
        assert!(is_sidecar(&container));
        assert!(is_sidecar_json(
            &serde_json::json!({"restartPolicy": "Always"})
        ));
        assert!(!is_sidecar_json(
            &serde_json::json!({"restartPolicy": "Never"})
        ));
    }
}
